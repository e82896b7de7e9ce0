# The second TwinBERT pass at batch sizes 32 and 128 (the shipped pass: 64), everything else as the
# pipeline's full-profile command (lr 1e-4), from the same first pass; then the dev report dev_p2.md.
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
B=/work/artifacts_e1207b
P1=/work/exp/lr/p1_1e-4
for bs in 32 128; do
  python -m training.distill --precision bf16 --distill $B/distill.tsv --init $P1 --out /work/exp/bs/p2_b$bs --keyword-max-len 48 --epochs 1 --max-minutes 11 --eval-every 500 --seed 1 --sources labelled,random,bm25,student,perturbed --lr 1e-4 --batch-size $bs > /work/exp/bs/p2_b$bs.log 2>&1
done
python -m training.evaluate --dataset homedepot:dev --out /work/exp/bs/dev_p2 --cache-dir $B/cache --bootstrap 1000 --baseline "batch 64 (shipped)" --reference teacher --model BM25=bm25 --model teacher=teacher:$B/teacher --model "batch 64 (shipped)=twin:/work/exp/lr/p1p2_1e-4" --model "batch 32=twin:/work/exp/bs/p2_b32" --model "batch 128=twin:/work/exp/bs/p2_b128" > /work/exp/bs/dev_p2.log 2>&1
echo done > /work/exp/bs/pass2.done
