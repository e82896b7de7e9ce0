# The second TwinBERT pass at batch 32 with a queue of the last 64 keyword vectors as extra InfoNCE negatives
# (training.distill --negative-queue), everything else as the pipeline's full-profile command (lr 1e-4), from
# the same first pass as the batch-size runs (../epyc-2026-12-07-student-batch); then dev_q.md beside the
# shipped batch 64 and the plain batch 32 of those runs. A queue of 192 was started after it and stopped at
# step 1,000, its dev sample (0.6679, 0.6808 at steps 500 and 1,000) already below the queue of 64's
# (train_runs.json).
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
B=/work/artifacts_e1207b
P1=/work/exp/lr/p1_1e-4
python -m training.distill --precision bf16 --distill $B/distill.tsv --init $P1 --out /work/exp/q/p2_b32_q64 --keyword-max-len 48 --epochs 1 --max-minutes 11 --eval-every 500 --seed 1 --sources labelled,random,bm25,student,perturbed --lr 1e-4 --batch-size 32 --negative-queue 64 > /work/exp/q/p2_b32_q64.log 2>&1
python -m training.evaluate --dataset homedepot:dev --out /work/exp/q/dev_q --cache-dir $B/cache --bootstrap 1000 --baseline "batch 64 (shipped)" --reference teacher --model BM25=bm25 --model teacher=teacher:$B/teacher --model "batch 64 (shipped)=twin:/work/exp/lr/p1p2_1e-4" --model "batch 32=twin:/work/exp/bs/p2_b32" --model "batch 32, queue 64=twin:/work/exp/q/p2_b32_q64" > /work/exp/q/dev_q.log 2>&1
