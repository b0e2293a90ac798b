"""Deterministic synthetic server telemetry with labelled anomalies, for the demo, tests and docs.

Each row is one host snapshot. Its metrics come from three latent factors (user traffic, batch
workload, ambient heat) whose effect depends on the operating mode, so correlations are real and
differ between modes: in "day" CPU follows requests, in "batch" CPU follows disk I/O instead.
Anomalies are built so that a good density or reconstruction model can find them: each one is
either far out of range or clearly inconsistent with the mode it is labelled with.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

METRIC_COLUMNS: tuple[str, ...] = (
    "cpu_util_pct", "mem_util_pct", "requests_per_s", "latency_ms",
    "error_rate_pct", "disk_io_mb_s", "net_in_mb_s", "temperature_c",
)
LABEL_COLUMNS: tuple[str, ...] = ("is_anomaly", "anomaly_kind")
MODES: tuple[str, ...] = ("day", "night", "batch", "maintenance")
DEFAULT_MODE_WEIGHTS: dict[str, float] = {"day": 0.5, "night": 0.3, "batch": 0.15, "maintenance": 0.05}
ANOMALY_KINDS: tuple[str, ...] = ("spike", "correlation_break", "mode_mismatch", "stuck_sensor")

_FACTORS = ("traffic", "batch", "heat")
_PERCENT_COLUMNS = ("cpu_util_pct", "mem_util_pct", "error_rate_pct")
# Spikes go upwards, so only metrics without an upper bound can spike: a percentage clipped at
# 100 would land only a few standard deviations out and be hard to call an anomaly.
_SPIKE_COLUMNS = ("requests_per_s", "latency_ms", "error_rate_pct", "disk_io_mb_s", "net_in_mb_s",
                  "temperature_c")

# Per mode and metric: mean, loadings on (traffic, batch, heat), independent noise sd.
_MODE_SPECS: dict[str, dict[str, tuple[float, float, float, float, float]]] = {
    "day": {
        "cpu_util_pct": (55, 12, 2, 1, 3), "mem_util_pct": (60, 6, 2, 0, 3),
        "requests_per_s": (800, 200, 0, 0, 40), "latency_ms": (120, 30, 5, 0, 10),
        "error_rate_pct": (0.5, 0.15, 0, 0, 0.05), "disk_io_mb_s": (40, 8, 6, 0, 5),
        "net_in_mb_s": (80, 20, 0, 0, 5), "temperature_c": (55, 4, 1, 3, 1.5),
    },
    "night": {
        "cpu_util_pct": (20, 5, 2, 0, 2), "mem_util_pct": (45, 3, 1, 0, 2),
        "requests_per_s": (150, 50, 0, 0, 10), "latency_ms": (60, 8, 0, 0, 4),
        "error_rate_pct": (0.2, 0.05, 0, 0, 0.03), "disk_io_mb_s": (20, 2, 6, 0, 3),
        "net_in_mb_s": (15, 5, 0, 0, 1.5), "temperature_c": (42, 1.5, 0.5, 2, 1),
    },
    "batch": {
        "cpu_util_pct": (80, 1, 8, 0, 2), "mem_util_pct": (75, 0, 8, 0, 2),
        "requests_per_s": (100, 25, 0, 0, 8), "latency_ms": (90, 5, 15, 0, 6),
        "error_rate_pct": (0.3, 0.02, 0.1, 0, 0.05), "disk_io_mb_s": (300, 0, 60, 0, 15),
        "net_in_mb_s": (30, 5, 8, 0, 3), "temperature_c": (68, 0, 3, 2, 1),
    },
    "maintenance": {
        "cpu_util_pct": (10, 0, 3, 0, 1.5), "mem_util_pct": (30, 0, 4, 0, 2),
        "requests_per_s": (10, 3, 0, 0, 1.5), "latency_ms": (40, 2, 0, 0, 4),
        "error_rate_pct": (2.0, 0.3, 0.4, 0, 0.2), "disk_io_mb_s": (150, 0, 40, 0, 10),
        "net_in_mb_s": (5, 1, 1, 0, 0.8), "temperature_c": (38, 0, 1.5, 2, 1),
    },
}


class _Mode:
    """One mode's spec as arrays, plus the derived facts the anomaly recipes need."""

    def __init__(self, spec: dict[str, tuple[float, float, float, float, float]]) -> None:
        table = np.array([spec[c] for c in METRIC_COLUMNS], dtype=float)
        self.mean = table[:, 0]
        self.loadings = table[:, 1:4]  # metrics x factors
        self.noise_sd = table[:, 4]
        self.sd = np.sqrt((self.loadings ** 2).sum(axis=1) + self.noise_sd ** 2)
        corr = self.loadings / self.sd[:, None]
        # The factor that explains most variance is the structure a correlation break must violate.
        self.dominant = int(np.argmax((corr ** 2).sum(axis=0)))
        self.strong = np.flatnonzero(np.abs(corr[:, self.dominant]) >= 0.6)
        # A reading of zero is only suspicious where zero is far below the normal range.
        self.stuckable = np.flatnonzero(self.mean >= 4 * self.sd)


_MODE_ARRAYS = {name: _Mode(spec) for name, spec in _MODE_SPECS.items()}
_SPIKE_IDX = np.array([METRIC_COLUMNS.index(c) for c in _SPIKE_COLUMNS])
_PERCENT_IDX = np.array([METRIC_COLUMNS.index(c) for c in _PERCENT_COLUMNS])


def make_telemetry(n_samples: int = 5000, anomaly_fraction: float = 0.0, seed: int = 0,
                   mode_weights: dict[str, float] | None = None) -> pd.DataFrame:
    """Generate a telemetry table; the same arguments always give a bitwise identical frame.

    Columns: ``mode`` (one of :data:`MODES`), the metrics in :data:`METRIC_COLUMNS`, then the
    labels ``is_anomaly`` (0/1) and ``anomaly_kind`` ("none" or one of :data:`ANOMALY_KINDS`).
    Drop :data:`LABEL_COLUMNS` before fitting a model.

    Args:
        n_samples: number of rows (>= 1).
        anomaly_fraction: share of anomalous rows in [0, 1); ``round(n_samples * anomaly_fraction)``
            anomalies, spread evenly over the kinds and shuffled among the normal rows.
        seed: seed of the random generator.
        mode_weights: relative frequency of each mode (a subset of :data:`MODES`, positive values);
            defaults to :data:`DEFAULT_MODE_WEIGHTS`.

    Anomaly kinds:
        spike: one or two unbounded metrics 6 to 10 standard deviations above normal.
        correlation_break: every value plausible alone, but metrics that move together in this
            mode move in opposite directions (e.g. many requests with near-idle CPU by day).
        mode_mismatch: a normal row of one mode labelled as another mode.
        stuck_sensor: one metric reads exactly 0 where 0 is far below its normal range.
    """
    weights = _validate(n_samples, anomaly_fraction, mode_weights)
    rng = np.random.default_rng(seed)
    n_anomalies = round(n_samples * anomaly_fraction)
    active = list(weights)

    true_mode = rng.choice(active, size=n_samples, p=list(weights.values()))
    # Rows 0..n_anomalies-1 are the anomalies until the final shuffle; kinds are spread evenly.
    kinds = np.full(n_samples, "none", dtype=object)
    kinds[:n_anomalies] = rng.permutation(np.resize(rng.permutation(ANOMALY_KINDS), n_anomalies))

    values = np.empty((n_samples, len(METRIC_COLUMNS)))
    for name in MODES:
        rows = np.flatnonzero(true_mode == name)
        if rows.size:
            values[rows] = _sample_mode(rng, _MODE_ARRAYS[name], kinds[rows])

    labelled_mode = true_mode.astype(object)
    mismatched = np.flatnonzero(kinds == "mode_mismatch")
    for row in mismatched:
        # With a single active mode the wrong label must come from the inactive ones.
        others = [m for m in (active if len(active) > 1 else MODES) if m != true_mode[row]]
        labelled_mode[row] = others[rng.integers(len(others))]

    values = np.clip(values, 0.0, None)
    values[:, _PERCENT_IDX] = np.clip(values[:, _PERCENT_IDX], 0.0, 100.0)
    # Three decimals is realistic sensor precision and makes CSV round trips exact.
    values = np.round(values, 3)

    order = rng.permutation(n_samples)
    frame = pd.DataFrame(values[order], columns=list(METRIC_COLUMNS))
    frame.insert(0, "mode", labelled_mode[order].astype(str))
    frame["is_anomaly"] = (kinds[order] != "none").astype(np.int64)
    frame["anomaly_kind"] = kinds[order].astype(str)
    return frame


def _validate(n_samples: int, anomaly_fraction: float,
              mode_weights: dict[str, float] | None) -> dict[str, float]:
    """Check the arguments and return normalised mode weights in :data:`MODES` order."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if not (isinstance(anomaly_fraction, numbers.Real) and 0 <= anomaly_fraction < 1):
        raise ValueError(f"anomaly_fraction must be a number in [0, 1), got {anomaly_fraction!r}")
    weights = DEFAULT_MODE_WEIGHTS if mode_weights is None else mode_weights
    if not weights:
        raise ValueError(f"mode_weights must name at least one mode of {list(MODES)}")
    unknown = sorted(set(weights) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown} in mode_weights; use modes from {list(MODES)}")
    bad = {m: w for m, w in weights.items()
           if not isinstance(w, numbers.Real) or not math.isfinite(w) or w <= 0}
    if bad:
        raise ValueError(f"mode weights must be finite numbers > 0, got {bad}; "
                         "leave a mode out of mode_weights to exclude it")
    total = float(sum(weights.values()))
    return {m: weights[m] / total for m in MODES if m in weights}


def _sample_mode(rng: np.random.Generator, mode: _Mode, kinds: np.ndarray) -> np.ndarray:
    """Rows of one mode, with the value-level anomaly recipes applied to the rows that need them."""
    n, n_metrics = len(kinds), len(METRIC_COLUMNS)
    z = rng.standard_normal((n, len(_FACTORS)))
    noise = rng.standard_normal((n, n_metrics))

    breaks = np.flatnonzero(kinds == "correlation_break")
    # A strong push on the dominant factor makes the flipped metrics disagree clearly, while each
    # stays within about three standard deviations of its mode mean.
    z[breaks, mode.dominant] = rng.choice([-1.0, 1.0], size=breaks.size) * rng.uniform(2.0, 3.0, breaks.size)

    values = mode.mean + z @ mode.loadings.T + noise * mode.noise_sd

    if breaks.size:
        # Flip about half of the strongly coupled metrics, chosen per row.
        n_flip = max(1, mode.strong.size // 2)
        flip_cols = mode.strong[np.argsort(rng.random((breaks.size, mode.strong.size)), axis=1)[:, :n_flip]]
        contribution = z[breaks, mode.dominant][:, None] * mode.loadings[flip_cols, mode.dominant]
        rows = np.repeat(breaks, n_flip).reshape(breaks.size, n_flip)
        values[rows, flip_cols] -= 2 * contribution

    spikes = np.flatnonzero(kinds == "spike")
    if spikes.size:
        n_spiked = rng.integers(1, 3, size=spikes.size)
        ranks = np.argsort(np.argsort(rng.random((spikes.size, _SPIKE_IDX.size)), axis=1), axis=1)
        chosen = ranks < n_spiked[:, None]
        jump = rng.uniform(6.0, 10.0, (spikes.size, _SPIKE_IDX.size)) * mode.sd[_SPIKE_IDX]
        values[np.ix_(spikes, _SPIKE_IDX)] += np.where(chosen, jump, 0.0)

    stuck = np.flatnonzero(kinds == "stuck_sensor")
    if stuck.size:
        values[stuck, rng.choice(mode.stuckable, size=stuck.size)] = 0.0
    return values
