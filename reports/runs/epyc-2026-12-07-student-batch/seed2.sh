# A second seed for the second pass at batch 32: from B's first pass (5e-5), seed 2, against the same pass at
# batch 64 and seed 2 of reports/runs/epyc-2026-12-07-student-lr/ (p2s2_1e-4); then dev_seed2.md.
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
B=/work/artifacts_e1207b
python -m training.distill --precision bf16 --distill $B/distill.tsv --init $B/twin_pass1 --out /work/exp/bs/p2s2_b32 --keyword-max-len 48 --epochs 1 --max-minutes 11 --eval-every 500 --seed 2 --sources labelled,random,bm25,student,perturbed --lr 1e-4 --batch-size 32 > /work/exp/bs/p2s2_b32.log 2>&1
python -m training.evaluate --dataset homedepot:dev --out /work/exp/bs/dev_seed2 --cache-dir $B/cache --bootstrap 1000 --baseline "batch 64, seed 2" --reference teacher --model BM25=bm25 --model teacher=teacher:$B/teacher --model "batch 64, seed 2=twin:/work/exp/lr/p2s2_1e-4" --model "batch 32, seed 2=twin:/work/exp/bs/p2s2_b32" > /work/exp/bs/dev_seed2.log 2>&1
echo done > /work/exp/bs/seed2.done
