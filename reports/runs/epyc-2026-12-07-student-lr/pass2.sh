# The second pass at 1e-4 and 2e-4 (seed 1, the shipped pass's), then the dev report dev_p2.md.
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
B=/work/artifacts_e1207b
for lr in 1e-4 2e-4; do
python -m training.distill --precision bf16 --distill $B/distill.tsv --init $B/twin_pass1 --out /work/exp/lr/p2_$lr --keyword-max-len 48 --epochs 1 --max-minutes 11 --eval-every 500 --seed 1 --sources labelled,random,bm25,student,perturbed --lr $lr > /work/exp/lr/p2_$lr.log 2>&1
done
python -m training.evaluate --dataset homedepot:dev --out /work/exp/lr/dev_p2 --cache-dir $B/cache --bootstrap 1000 --baseline "lr 5e-5 (shipped)" --model BM25=bm25 --model teacher=teacher:$B/teacher --model "lr 5e-5 (shipped)=twin:$B/twin" --model "lr 1e-4=twin:/work/exp/lr/p2_1e-4" --model "lr 2e-4=twin:/work/exp/lr/p2_2e-4" > /work/exp/lr/dev_p2.log 2>&1
