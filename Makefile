# TwinBERT on Triton. `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
ARTIFACTS ?= $(or $(TWINBERT_ARTIFACTS),artifacts)

.PHONY: setup demo build serve test train train-quick eval eval-depth agreement bench bench-bilstm bench-kernels bench-store bench-update loadtest clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup:  ## create .venv with pinned dependencies (idempotent)
	@./scripts/setup.sh

demo: setup  ## build model + index (or reuse), serve with tritonserver, query over gRPC
	$(PY) -m serving.demo --artifacts $(ARTIFACTS)

build: setup  ## build or reuse all serving artifacts under $(ARTIFACTS)
	$(PY) -m serving.build --artifacts $(ARTIFACTS)

serve: setup  ## run tritonserver in the foreground on the built repository
	$(PY) -m serving.server --repository $(ARTIFACTS)/model_repository

test: setup  ## unit and integration tests (real tritonserver), CPU only
	$(PY) -m pytest -q tests

train: setup  ## full offline pipeline: teacher, distillation, students, evaluation (66.1 min from scratch on an AVX512-BF16 host, 71.7 on an AMX bf16 one, 81.3 on an fp32 one; 87-min deadline)
	$(PY) -m training.pipeline --profile full --artifacts $(ARTIFACTS) --reports reports

train-quick: setup  ## every pipeline step on small budgets, into $(ARTIFACTS)/quick (smoke run)
	$(PY) -m training.pipeline --profile quick --artifacts $(ARTIFACTS)/quick --reports reports

eval: setup  ## evaluate the trained models and baselines on held-out queries -> reports/eval.{md,json}
	$(PY) -m training.evaluate --out reports/eval --cache-dir $(ARTIFACTS)/cache --model BM25=bm25 --model "MiniLM-L6 zero-shot=minilm" \
		--model "teacher (cross-encoder)=teacher:$(ARTIFACTS)/teacher" --model TwinBERT=twin:$(ARTIFACTS)/twin \
		--model "TwinBERT, no augmentation=twin:$(ARTIFACTS)/twin_noaug" --model BiLSTM=bilstm:$(ARTIFACTS)/bilstm \
		--model "BiLSTM, LSTM in bf16=bilstm-bf16:$(ARTIFACTS)/bilstm" \
		--model "BiLSTM, no augmentation=bilstm:$(ARTIFACTS)/bilstm_noaug" \
		--model "teacher re-ranks TwinBERT cos top-30=rerank:teacher:$(ARTIFACTS)/teacher@$(ARTIFACTS)/twin@30" \
		--model "BiLSTM re-ranks TwinBERT cos top-100=rerank:bilstm:$(ARTIFACTS)/bilstm@$(ARTIFACTS)/twin" \
		--model "BiLSTM re-ranks TwinBERT cos top-30 (retrieve_rerank, DEPTH 30)=rerank:bilstm:$(ARTIFACTS)/bilstm@$(ARTIFACTS)/twin@30"

eval-depth: setup  ## how deep retrieve_rerank should read: BiLSTM re-ranking the cos top 10..100 on the dev queries -> reports/rerank_depth_dev.{md,json}
	$(PY) -m training.evaluate --dataset homedepot:dev --out reports/rerank_depth_dev --cache-dir $(ARTIFACTS)/cache --model TwinBERT=twin:$(ARTIFACTS)/twin \
		$(foreach d,10 20 30 50 100,--model "BiLSTM re-ranks the cos top-$(d)=rerank:bilstm:$(ARTIFACTS)/bilstm@$(ARTIFACTS)/twin@$(d)")

agreement: setup  ## how far the human grades agree with themselves (pairs graded more than once), the teacher and students beside them, and ROC-AUC split into between- and within-query, on the dev and test queries -> reports/agreement.{md,json}
	$(PY) -m training.agreement --out reports/agreement --model BM25=bm25 --model "MiniLM-L6 zero-shot=minilm" \
		--model "teacher (cross-encoder)=teacher:$(ARTIFACTS)/teacher" --model TwinBERT=twin:$(ARTIFACTS)/twin \
		--model BiLSTM=bilstm:$(ARTIFACTS)/bilstm

bench: build  ## served relevance vs teacher; served retrieve and retrieve_rerank vs in-process, one run -> reports/bench.{md,json}
	$(PY) -m client.suite bench --repository $(ARTIFACTS)/model_repository --teacher $(ARTIFACTS)/teacher

loadtest: build  ## start the server, sweep concurrency with perf_analyzer and the own generator -> reports/loadtest.*
	$(PY) -m client.suite loadtest --repository $(ARTIFACTS)/model_repository

bench-store: build  ## 1M keyword vectors: build time, memory, top-100 latency and recall, indexing throughput -> reports/bench_store.*; float16 vs float32 cached vectors -> reports/vector_dtype.*
	$(PY) -m serving.bench_store --artifacts $(ARTIFACTS)

bench-update: build  ## keyword-store updates at full size under retrieve traffic (partial, then the whole catalogue under new ids) -> reports/live_update.{md,json}
	$(PY) -m client.suite update --export $(ARTIFACTS)/export --store $(ARTIFACTS)/keyword_store

bench-kernels: setup  ## pool_cross: fused vs eager (GPU if present, else CPU paths) -> reports/bench_kernels_*.{json,md}
	$(PY) -m benchmarks.bench_kernels --out reports

bench-bilstm: setup  ## BiLSTM student: training module vs its inference form (fp32, and its LSTM in bf16), per pair and per re-rank request -> reports/bench_bilstm.{json,md}
	$(PY) -m benchmarks.bench_bilstm --checkpoint $(ARTIFACTS)/bilstm --out reports

clean:  ## remove built artifacts (keeps .venv)
	rm -rf $(ARTIFACTS)
