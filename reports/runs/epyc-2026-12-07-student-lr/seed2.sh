# The second pass at 5e-5 and 1e-4 with seed 2, then the dev report dev_p2s2.md.
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
B=/work/artifacts_e1207b
for lr in 5e-5 1e-4; do
python -m training.distill --precision bf16 --distill $B/distill.tsv --init $B/twin_pass1 --out /work/exp/lr/p2s2_$lr --keyword-max-len 48 --epochs 1 --max-minutes 11 --eval-every 500 --seed 2 --sources labelled,random,bm25,student,perturbed --lr $lr > /work/exp/lr/p2s2_$lr.log 2>&1
done
python -m training.evaluate --dataset homedepot:dev --out /work/exp/lr/dev_p2s2 --cache-dir $B/cache --bootstrap 1000 --baseline "lr 5e-5, seed 2" --model BM25=bm25 --model teacher=teacher:$B/teacher --model "lr 5e-5, seed 2=twin:/work/exp/lr/p2s2_5e-5" --model "lr 1e-4, seed 2=twin:/work/exp/lr/p2s2_1e-4" > /work/exp/lr/dev_p2s2.log 2>&1
echo done > /work/exp/lr/seed2.done
