# The test reports: against BM25 (test_bm25.md) and paired against the shipped student (test_paired.md).
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
python -m training.evaluate --dataset homedepot:test --out /work/exp/lr/test_bm25 --cache-dir /work/artifacts_e1207b/cache --bootstrap 1000 --model BM25=bm25 --model "MiniLM-L6 zero-shot=minilm" --model teacher=teacher:/work/artifacts_e1207b/teacher --model "lr 5e-5 (shipped)=twin:/work/artifacts_e1207b/twin" --model "pass 2 at 1e-4=twin:/work/exp/lr/p2_1e-4" --model "both passes at 1e-4=twin:/work/exp/lr/p1p2_1e-4" > /work/exp/lr/test_bm25.log 2>&1
python -m training.evaluate --dataset homedepot:test --out /work/exp/lr/test_paired --cache-dir /work/artifacts_e1207b/cache --bootstrap 1000 --baseline "lr 5e-5 (shipped)" --model BM25=bm25 --model teacher=teacher:/work/artifacts_e1207b/teacher --model "lr 5e-5 (shipped)=twin:/work/artifacts_e1207b/twin" --model "pass 2 at 1e-4=twin:/work/exp/lr/p2_1e-4" --model "both passes at 1e-4=twin:/work/exp/lr/p1p2_1e-4" > /work/exp/lr/test_paired.log 2>&1
echo done > /work/exp/lr/test.done
