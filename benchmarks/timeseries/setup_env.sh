#!/usr/bin/env bash
# Creates .venv-bench: the project plus TSB-AD 1.5's evaluation code and reference models.
# TSB-AD pins numpy<2 and a long list of deep-learning packages; it is installed with --no-deps
# into this separate venv so that pin never reaches the project's own .venv.
set -euo pipefail
PY=${PY:-python3}
VENV=${VENV:-.venv-bench}
TORCH=${TORCH:-torch==2.13.0}
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --quiet "$@"; }
pip install --upgrade pip
pip install "$TORCH"          # first and pinned, so pip takes the CPU wheel
pip install -e .
# What TSB-AD's metrics (statsmodels) and its PCA / KMeansAD / IForest models (hurst, imported at
# the top of TSB_AD/models/feature.py) need beyond the project's own packages; neither pins numpy.
# Installed before TSB-AD so pip has no unmet TSB-AD requirements to complain about.
pip install statsmodels hurst
# What its deep references (USAD, OmniAnomaly, AutoEncoder, CNN, LSTMAD) import beyond torch.
pip install tqdm torchinfo numba
pip install --no-deps tsb-ad==1.5
"$VENV/bin/python" -c "import numpy, anomaly_ae, TSB_AD.evaluation.metrics, TSB_AD.models.PCA, TSB_AD.models.IForest, TSB_AD.models.KMeansAD, TSB_AD.models.USAD, TSB_AD.models.OmniAnomaly, TSB_AD.models.AE, TSB_AD.models.CNN, TSB_AD.models.LSTMAD; print('numpy', numpy.__version__, '- TSB_AD and anomaly_ae import')"
