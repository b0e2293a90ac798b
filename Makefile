# Every target creates and uses the virtualenv in .venv. torch is installed first, pinned, so pip
# takes the CPU wheel and never the multi-GB CUDA build; see README "GPU install" for CUDA.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-serve bench-cli bench-ts-env bench-ts bench-watch reliability clean

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
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not serial" --durations=20
	$(BIN)/python -m pytest -q -m serial

bench: $(STAMP)
	$(BIN)/anomaly-ae benchmark --data-dir ../shared/data/adbench

# anomaly-ae serve vs mlflow models serve on one registered model (needs mlflow; installs hey via apt)
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py --traps

# anomaly-ae --help, this checkout vs the commit before the light package root (needs hyperfine)
bench-cli: $(STAMP)
	bash benchmarks/cli_help.sh

# Time-series benchmark (benchmarks/timeseries/README.md). Its own venv: TSB-AD's metrics are
# installed there without their dependencies (TSB-AD pins numpy<2), never into .venv.
BENCH_VENV := .venv-bench
TS := benchmarks/timeseries
TS_METHODS ?= ours:knn_multiscale ours:knn@32 ours:pca@32 random window_pca tsbad_pca tsbad_kmeansad tsbad_iforest \
  tsbad_usad tsbad_omnianomaly tsbad_autoencoder tsbad_cnn tsbad_lstmad
TS_SEEDS ?= 0 1 2

$(BENCH_VENV)/.installed: pyproject.toml $(TS)/setup_env.sh
	PY=$(PY) VENV=$(BENCH_VENV) TORCH=$(TORCH) bash $(TS)/setup_env.sh
	touch $@

bench-ts-env: $(BENCH_VENV)/.installed

# Resumable: rows already in benchmarks/results/timeseries_<suite>.csv are skipped.
bench-ts: $(BENCH_VENV)/.installed
	for suite in msl skab nab; do \
	  $(BENCH_VENV)/bin/python $(TS)/run.py --suite $$suite --methods $(TS_METHODS) --seeds $(TS_SEEDS) \
	  && $(BENCH_VENV)/bin/python $(TS)/report.py --suite $$suite || exit 1; \
	done

# Reliability under load and faults, against real processes on 127.0.0.1 (7-10 min on 2 cores; needs mlflow
# and hey, installed via apt if missing): writes benchmarks/results/reliability.{md,json}, exits 1 if a check fails.
# A smoke run: $(BIN)/python benchmarks/reliability.py --quick
# the Prometheus watcher: 1,000 and 3,000 series x 10 metrics at a 15 s step, one torch thread
# (needs prometheus + promtool: deployment/scripts/install-prometheus.sh)
bench-watch: $(STAMP)
	$(BIN)/python benchmarks/watch_throughput.py --series 1000 3000 --steps 30

reliability: $(STAMP)
	$(BIN)/python benchmarks/reliability.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) demo-output mlruns mlflow.db .pytest_cache
