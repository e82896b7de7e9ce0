# The fresh run's BiLSTM (32 units, 40 pieces) timed beside the earlier run's 64-unit, 40-piece model in the same blocks, twice (the first is
# reports/bench_bilstm.{md,json}, the second bench_bilstm2/ here). The first ran on 2026-12-07 with --out $R/bench1
# and its files were copied to reports/ byte for byte; the copy in the run folder is gone.
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
R=reports/runs/epyc-2026-12-07-defaults-full
python -m benchmarks.bench_bilstm --checkpoint /work/artifacts_s1207c/bilstm --compare "64 units (epyc-2026-12-07-max40-full)=/work/artifacts_e1207b/bilstm" --out reports > /work/exp/bs/bench1.log 2>&1
python -m benchmarks.bench_bilstm --checkpoint /work/artifacts_s1207c/bilstm --compare "64 units (epyc-2026-12-07-max40-full)=/work/artifacts_e1207b/bilstm" --out $R/bench_bilstm2 > /work/exp/bs/bench2.log 2>&1
