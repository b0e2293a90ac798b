# Every target creates and uses the virtualenv in .venv. torch is installed first, pinned, so pip
# takes the CPU wheel and never the multi-GB CUDA build; see README "GPU install" for CUDA.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-serve bench-cli clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test,bench,spark]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m anomaly_ae.demo

# Test files run in two processes (the suite waits on servers and Spark much of the time); the few
# tests that assert latencies run afterwards on their own, so the other process cannot slow them.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial

bench: $(STAMP)
	$(BIN)/anomaly-ae benchmark --data-dir ../shared/data/adbench

# anomaly-ae serve vs mlflow models serve on one registered model (needs mlflow; installs hey via apt)
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py --traps

# anomaly-ae --help, this checkout vs the commit before the light package root (needs hyperfine)
bench-cli: $(STAMP)
	bash benchmarks/cli_help.sh

clean:
	rm -rf $(VENV) demo-output mlruns mlflow.db .pytest_cache
