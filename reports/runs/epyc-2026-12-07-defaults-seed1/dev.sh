# The seed-1 run's models and the baselines on the dev queries (dev.md), as the pipeline's evaluation scores test,
# with the seed-0 run's TwinBERT (../epyc-2026-12-07-defaults-full) beside them for a paired comparison.
export TWINBERT_DATA=/work/shared/data/homedepot HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
cd /work/main
A=/work/artifacts_seed1
A0=/work/artifacts_s1207c
python -m training.evaluate --dataset homedepot:dev --out reports/runs/epyc-2026-12-07-defaults-seed1/dev --cache-dir $A/cache --bootstrap 1000 --reference teacher --model BM25=bm25 --model "MiniLM-L6 zero-shot=minilm" --model teacher=teacher:$A/teacher --model TwinBERT=twin:$A/twin --model BiLSTM=bilstm:$A/bilstm --model "BiLSTM re-ranks TwinBERT cos top-30=rerank:bilstm:$A/bilstm@$A/twin@30" --model "TwinBERT, seed 0 run=twin:$A0/twin" > /work/exp/q/dev_seed1.log 2>&1
