# Every target creates and uses the virtualenv in .venv. torch is installed first, pinned, so pip
# takes the CPU wheel and never the multi-GB CUDA build; see README "GPU install" for CUDA.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-serve bench-cli reliability clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,bench,spark]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m anomaly_ae.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/anomaly-ae benchmark --data-dir ../shared/data/adbench

# anomaly-ae serve vs mlflow models serve on one registered model (needs mlflow; installs hey via apt)
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py --traps

# anomaly-ae --help, this checkout vs the commit before the light package root (needs hyperfine)
bench-cli: $(STAMP)
	bash benchmarks/cli_help.sh

# Reliability under load and faults, against real processes on 127.0.0.1 (~15 min on 2 cores; needs mlflow
# and hey, installed via apt if missing): writes benchmarks/results/reliability.{md,json}, exits 1 if a check fails.
# A smoke run: $(BIN)/python benchmarks/reliability.py --quick
reliability: $(STAMP)
	$(BIN)/python benchmarks/reliability.py

clean:
	rm -rf $(VENV) demo-output mlruns mlflow.db .pytest_cache
