# TwinBERT on Triton. `make demo` and `make test` work from a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
ARTIFACTS ?= $(or $(TWINBERT_ARTIFACTS),artifacts)

.PHONY: setup demo build serve test bench-kernels clean help

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

bench-kernels: setup  ## pool_cross: fused vs eager (GPU if present, else CPU paths) -> reports/bench_kernels_*.{json,md}
	$(PY) -m benchmarks.bench_kernels --out reports

clean:  ## remove built artifacts (keeps .venv)
	rm -rf $(ARTIFACTS)
