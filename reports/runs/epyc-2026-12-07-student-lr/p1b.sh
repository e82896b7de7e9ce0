# The first pass at 2e-4 (seed 0, from the quick student), the second at 1e-4 as now shipped, then dev_p1b.md.
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
B=/work/artifacts_e1207b
python -m training.distill --precision bf16 --distill $B/distill.tsv --init $B/model --out /work/exp/lr/p1_2e-4 --epochs 1 --max-minutes 11 --eval-every 500 --lr 2e-4 > /work/exp/lr/p1_2e-4.log 2>&1
python -m training.distill --precision bf16 --distill $B/distill.tsv --init /work/exp/lr/p1_2e-4 --out /work/exp/lr/p1b_p2 --keyword-max-len 48 --epochs 1 --max-minutes 11 --eval-every 500 --seed 1 --sources labelled,random,bm25,student,perturbed --lr 1e-4 > /work/exp/lr/p1b_p2.log 2>&1
python -m training.evaluate --dataset homedepot:dev --out /work/exp/lr/dev_p1b --cache-dir $B/cache --bootstrap 1000 --baseline "both passes at 1e-4" --model BM25=bm25 --model teacher=teacher:$B/teacher --model "lr 5e-5 (shipped)=twin:$B/twin" --model "both passes at 1e-4=twin:/work/exp/lr/p1p2_1e-4" --model "first pass at 2e-4, second at 1e-4=twin:/work/exp/lr/p1b_p2" > /work/exp/lr/dev_p1b.log 2>&1
echo done > /work/exp/lr/p1b.done
