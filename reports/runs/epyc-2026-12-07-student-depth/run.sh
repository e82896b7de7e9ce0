# Is the res crossing's gap to 97% of the teacher the student's depth? The pipeline's second-pass command
# (lr 1e-4, 48 title tokens, every source) run from the pretrained MiniLM layers with no first pass, at 6 layers
# (the teacher's depth), at 2 (the student's), and with a 2-layer query tower over a 6-layer keyword tower
# (asym.py); and the shipped second pass (seed 2, from the run's first pass) with its pooled vectors pulled to the
# 6-layer model's (embed_teacher.patch, not kept). All over the seed-1 make train's set and teacher
# (../epyc-2026-12-07-defaults-seed1); then the whole dev split beside that run's shipped student: dev.md (depth),
# dev_embed.md (the pull), dev_asym.md (the towers of two depths).
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
A=/work/artifacts_seed1
E=/work/exp/depth
R=reports/runs/epyc-2026-12-07-student-depth
PASS2="--precision bf16 --distill $A/distill.tsv --keyword-max-len 48 --epochs 1 --max-minutes 40 --eval-every 500 --sources labelled,random,bm25,student,perturbed --lr 1e-4"
for L in 6 2; do
  python -m training.distill $PASS2 --num-layers $L --seed 1 --out $E/L$L > $E/L$L.log 2>&1
done
python -m training.evaluate --dataset homedepot:dev --out $R/dev --cache-dir $A/cache --bootstrap 1000 --baseline "2 layers, two passes (shipped)" --reference teacher --model BM25=bm25 --model teacher=teacher:$A/teacher --model "2 layers, two passes (shipped)=twin:$A/twin" --model "6 layers, second pass only=twin:$E/L6" --model "2 layers, second pass only=twin:$E/L2" > $E/dev.log 2>&1

git apply $R/embed_teacher.patch
python -m training.distill $PASS2 --init $A/twin_pass1 --seed 2 --embed-teacher $E/L6 --embed-weight 10 --out $E/E10 > $E/E10.log 2>&1
git apply -R $R/embed_teacher.patch
python -m training.evaluate --dataset homedepot:dev --out $R/dev_embed --cache-dir $A/cache --bootstrap 1000 --baseline "2 layers, two passes (shipped)" --reference teacher --model teacher=teacher:$A/teacher --model "2 layers, two passes (shipped)=twin:$A/twin" --model "6 layers, second pass only=twin:$E/L6" --model "2 layers, second pass pulled to the 6-layer vectors=twin:$E/E10" > $E/dev_embed.log 2>&1

python $R/asym.py 2 distill $PASS2 --num-layers 6 --separate-encoders --seed 1 --out $E/Q2K6 > $E/Q2K6.log 2>&1
python $R/asym.py 2 evaluate --dataset homedepot:dev --out $R/dev_asym --cache-dir $A/cache --bootstrap 1000 --baseline "2 layers, two passes (shipped)" --reference teacher --model teacher=teacher:$A/teacher --model "2 layers, two passes (shipped)=twin:$A/twin" --model "6 layers, second pass only=twin:$E/L6" --model "2 layers, second pass only=twin:$E/L2" --model "2-layer query tower, 6-layer keyword tower, second pass only=twin:$E/Q2K6" > $E/dev_asym.log 2>&1

# The towers of two depths with a first pass of their own (the pipeline's first-pass command, from the pretrained
# layers, the cap raised for the deeper tower), then the second pass from it; then dev_asym2.md.
python $R/asym.py 2 distill --precision bf16 --distill $A/distill.tsv --num-layers 6 --separate-encoders --epochs 1 --max-minutes 24 --eval-every 500 --lr 1e-4 --seed 1 --out $E/Q2K6_p1 > $E/Q2K6_p1.log 2>&1
python $R/asym.py 2 distill $PASS2 --init $E/Q2K6_p1 --separate-encoders --seed 2 --out $E/Q2K6_p1p2 > $E/Q2K6_p1p2.log 2>&1
python $R/asym.py 2 evaluate --dataset homedepot:dev --out $R/dev_asym2 --cache-dir $A/cache --bootstrap 1000 --baseline "2 layers, two passes (shipped)" --reference teacher --model teacher=teacher:$A/teacher --model "2 layers, two passes (shipped)=twin:$A/twin" --model "2-layer query tower, 6-layer keyword tower, second pass only=twin:$E/Q2K6" --model "2-layer query tower, 6-layer keyword tower, two passes=twin:$E/Q2K6_p1p2" > $E/dev_asym2.log 2>&1
python $R/train_runs.py $E
