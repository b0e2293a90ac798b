"""Deterministic synthetic server telemetry over time, with labelled temporal anomalies.

One row per (host, time step). Traffic follows a day curve, is lower at weekends and trends
slowly; the other metrics follow it (CPU and net_in follow requests, latency and errors follow
CPU) with AR(1) noise. A nightly batch window is a recurring, normal regime in which disk I/O
jumps and CPU follows the batch job instead of requests. Hosts are alike but differ in scale.

Anomalies are contiguous ranges of steps, all after the first :data:`CLEAN_FRACTION` of each
host's series, so that prefix can train a detector (:func:`split_history`). Three kinds are
invisible row by row by construction: every row of a stuck_value range is a normal row again,
every row of broken_seasonality is a normal row of another hour, and every row of variance_change
is drawn from the same law as a normal row at that time; only a window of rows shows them, which is
what a time-series detector must add over a row-by-row one. decoupling keeps every value plausible
on its own but loosens a link between metrics, which a row can show a little.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

from .synthetic import LABEL_COLUMNS, METRIC_COLUMNS

SERIES_METRIC_COLUMNS: tuple[str, ...] = METRIC_COLUMNS
SERIES_LABEL_COLUMNS: tuple[str, ...] = LABEL_COLUMNS
TEMPORAL_ANOMALY_KINDS: tuple[str, ...] = (
    "level_shift", "spike", "stuck_value", "slow_drift", "broken_seasonality", "variance_change",
    "decoupling",
)
# Kinds that keep every reading in its normal range, so only a window of rows shows them; the first
# three are invisible row by row by construction (see the module docstring).
WINDOW_ONLY_KINDS: tuple[str, ...] = ("stuck_value", "broken_seasonality", "variance_change", "decoupling")
CLEAN_FRACTION = 0.4  # each host's first 40% of steps never holds an anomaly

# AR(1) noise channels: (stationary sd, phi). "req" and "alt" multiply traffic (log scale); "alt"
# has req's law but its own path, and drives a metric only while it is decoupled from requests.
_NOISE: dict[str, tuple[float, float]] = {
    "req": (0.08, 0.8), "alt": (0.08, 0.8), "cpu": (0.3, 0.5), "mem": (0.8, 0.9),
    "mem_slow": (2.0, 0.995), "lat": (3.0, 0.6), "err": (0.15, 0.7), "disk": (2.0, 0.6),
    "net": (0.4, 0.5), "temp": (0.5, 0.9), "batch": (25.0, 0.8),
}
# Anomaly durations in hours; spikes last 1-3 steps whatever the step.
_DURATION_H = {"level_shift": (2, 5), "stuck_value": (2, 4), "slow_drift": (6, 10),
               "broken_seasonality": (6, 9), "variance_change": (2, 4), "decoupling": (3, 5)}
_COL = {name: i for i, name in enumerate(METRIC_COLUMNS)}
# Spikes go upwards, so only metrics without an upper bound spike (as in synthetic.py).
_SPIKE = ("requests_per_s", "latency_ms", "error_rate_pct", "disk_io_mb_s", "net_in_mb_s")
_DRIFT = ("mem_util_pct", "latency_ms", "temperature_c", "disk_io_mb_s")  # leaks, slow degradation
_DECOUPLED = ("cpu_util_pct", "net_in_mb_s")  # the metrics that follow requests
_PERCENT = [_COL[c] for c in ("cpu_util_pct", "mem_util_pct", "error_rate_pct")]
# variance_change: the metric whose own noise channel starts to flap (requests carry the metrics
# that follow them along), chosen among those whose noise is a visible part of their movement.
_FLAPPING = {"requests_per_s": "req", "mem_util_pct": "mem_slow"}


def make_series_telemetry(n_steps: int = 2880, n_hosts: int = 3, *, step: str = "5min",
                          anomalies: bool = True, start: str = "2026-01-05",
                          seed: int = 0) -> pd.DataFrame:
    """Generate telemetry series; the same arguments always give a bitwise identical frame.

    Columns: ``ts`` (a regular grid of ``n_steps`` times from ``start``, every ``step``),
    ``host`` ("host-0", ...; zero-padded so text order is host order), the metrics in
    :data:`SERIES_METRIC_COLUMNS`, then ``is_anomaly`` (0/1) and ``anomaly_kind`` ("none" or one
    of :data:`TEMPORAL_ANOMALY_KINDS`). Rows are sorted by host, then time. Drop
    :data:`SERIES_LABEL_COLUMNS` before fitting a model.

    With ``anomalies=True`` every host gets one range of each kind, in random order, after its
    first :data:`CLEAN_FRACTION` of steps; rows outside those ranges are exactly the rows of
    ``anomalies=False``. A host's series depends on ``seed`` and its number, not on ``n_hosts``.

    Anomaly kinds (``sd``: the metric's standard deviation over the host's clean prefix):
        level_shift: one metric is multiplied or divided by 1.3-1.6 for 2-5 hours.
        spike: one unbounded metric jumps 5-8 sd for 1-3 steps.
        stuck_value: for 2-4 hours the host's exporter repeats its last reading: every metric
            keeps the values of the normal step before the range, so each row is a normal row.
        slow_drift: one metric ramps up to 1.5-2.5 sd over 6-10 hours, then drops back (a leak
            and a restart).
        variance_change: for 2-4 hours traffic or memory flaps: its noise keeps its usual size
            but swings against itself from step to step (AR(1) with coefficient -0.6 to -0.9
            instead of wandering slowly), so each reading is as likely as ever while the
            step-to-step changes are 2-10 times their usual size; the metrics that follow
            requests flap with them.
        broken_seasonality: for 6-9 hours the host's daily pattern (traffic, the cooling
            schedule) follows the clock of 11-13 hours later (night traffic by day or the
            reverse) and the batch job does not run; every metric follows, so each row is a
            normal row of another hour and only the time of day is wrong.
        decoupling: for 3-5 hours CPU or net_in follows its usual level at that time but no
            longer the actual requests: each row is plausible, their movements are unrelated.
    """
    step_delta = _validate(n_steps, n_hosts, step)
    ts = pd.date_range(pd.Timestamp(start), periods=n_steps, freq=step_delta)
    per_hour = pd.Timedelta(hours=1) / step_delta
    width = len(str(n_hosts - 1))
    frames = []
    for host in range(n_hosts):
        # Separate streams: the anomaly plan draws nothing from the normal series' generator.
        rng, rng_anomaly = (np.random.default_rng([seed, host, part]) for part in (0, 1))
        plan = _plan(rng_anomaly, n_steps, per_hour, step) if anomalies else []
        kinds = np.full(n_steps, "none", dtype=object)
        for kind, lo, hi in plan:
            kinds[lo:hi] = kind
        frame = pd.DataFrame(_host_values(rng, rng_anomaly, ts, plan), columns=list(METRIC_COLUMNS))
        frame.insert(0, "ts", ts)
        frame.insert(1, "host", f"host-{host:0{width}d}")
        frame["is_anomaly"] = (kinds != "none").astype(np.int64)
        frame["anomaly_kind"] = kinds.astype(str)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def split_history(frame: pd.DataFrame, fraction: float = CLEAN_FRACTION
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split each host's series in time: its first ``floor(fraction * steps)`` rows, and the rest.

    For a frame from :func:`make_series_telemetry` and ``fraction <= CLEAN_FRACTION`` the first
    part holds no anomaly, so it can train a detector that is then evaluated on the second.
    """
    if not (isinstance(fraction, numbers.Real) and 0 < fraction < 1):
        raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r}")
    ordered = frame.sort_values(["host", "ts"], kind="stable").reset_index(drop=True)
    by_host = ordered.groupby("host", sort=False)
    early = by_host.cumcount().to_numpy() < np.floor(fraction * by_host["ts"].transform("size").to_numpy())
    return ordered[early].reset_index(drop=True), ordered[~early].reset_index(drop=True)


def _validate(n_steps: int, n_hosts: int, step: str) -> pd.Timedelta:
    for name, value in (("n_steps", n_steps), ("n_hosts", n_hosts)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    try:
        delta = pd.Timedelta(step)
    except ValueError as error:
        raise ValueError(f"step must be a fixed duration such as '5min' or '1h', got {step!r}") from error
    if delta <= pd.Timedelta(0):
        raise ValueError(f"step must be a positive duration, got {step!r}")
    return delta


def _plan(rng: np.random.Generator, n_steps: int, per_hour: float, step: str) -> list[tuple[str, int, int]]:
    """(kind, first step, end step) per anomaly: one of each kind, each in its own slot of the
    series after the clean prefix, with at least one normal step between two anomalies."""
    first = math.ceil(CLEAN_FRACTION * n_steps)
    slot = (n_steps - first) // len(TEMPORAL_ANOMALY_KINDS)
    longest = max(3, round(max(hi for _, hi in _DURATION_H.values()) * per_hour))
    if slot < longest + 2:
        need = math.ceil(len(TEMPORAL_ANOMALY_KINDS) * (longest + 2) / (1 - CLEAN_FRACTION)) + 1
        raise ValueError(f"n_steps={n_steps} is too short for one anomaly of each kind at step "
                         f"{step!r}; use n_steps >= {need} or anomalies=False")
    plan = []
    for i, kind in enumerate(rng.permutation(TEMPORAL_ANOMALY_KINDS)):
        if kind == "spike":
            length = int(rng.integers(1, 4))
        else:
            length = max(1, round(rng.uniform(*_DURATION_H[kind]) * per_hour))
        begin = first + i * slot + 1 + int(rng.integers(slot - length - 1))
        plan.append((str(kind), begin, begin + length))
    return plan


def _ar1(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    sd, phi = (np.array(column) for column in zip(*_NOISE.values()))
    shocks = rng.standard_normal((n, len(_NOISE))) * sd * np.sqrt(1 - phi ** 2)
    noise = np.empty_like(shocks)
    noise[0] = rng.standard_normal(len(_NOISE)) * sd  # start in the stationary law: no burn-in
    for t in range(1, n):
        noise[t] = phi * noise[t - 1] + shocks[t]
    return dict(zip(_NOISE, noise.T))


def _host_values(rng: np.random.Generator, rng_anomaly: np.random.Generator,
                 ts: pd.DatetimeIndex, plan: list[tuple[str, int, int]]) -> np.ndarray:
    n = len(ts)
    hours = ((ts - ts.normalize()) / pd.Timedelta(hours=1)).to_numpy()
    day = ((ts.normalize() - ts[0].normalize()) // pd.Timedelta(days=1)).to_numpy()
    elapsed_days = ((ts - ts[0]) / pd.Timedelta(days=1)).to_numpy()
    weekend = ts.day_of_week.to_numpy() >= 5
    # Hosts of one kind: same shape, scale within about 20%.
    scale, cpu_gain, mem_level, latency_level = rng.uniform([0.8, 0.9, 0.85, 0.85], [1.2, 1.1, 1.15, 1.15])
    peak_hour, slope = rng.uniform(13.0, 16.0), rng.uniform(-0.004, 0.006)
    noise = _ar1(rng, n)
    # The batch job starts between 1 and 4 am, a little later or earlier each day, for 1-2 hours.
    batch_start = rng.uniform(1.0, 4.0) + rng.normal(0.0, 0.25, day.max() + 1)
    batch_end = batch_start + rng.uniform(1.0, 2.0, day.max() + 1)
    batch = ((hours >= batch_start[day]) & (hours < batch_end[day])).astype(float)

    # Temporal anomalies that act on causes, before the metrics are derived from them.
    # The clock the host's daily pattern follows (traffic, the batch job, the cooling schedule).
    traffic_hours = hours.copy()
    for kind, lo, hi in plan:
        if kind == "variance_change":
            # Same stationary law, negative memory: each reading is as likely as ever, consecutive
            # ones swing against each other (step-to-step changes 3-14 times the usual size).
            channel = _FLAPPING[list(_FLAPPING)[rng_anomaly.integers(len(_FLAPPING))]]
            sd, phi = _NOISE[channel][0], -rng_anomaly.uniform(0.6, 0.9)
            shocks = rng_anomaly.standard_normal(hi - lo) * sd * math.sqrt(1 - phi ** 2)
            for t in range(lo + 1, hi):
                noise[channel][t] = phi * noise[channel][t - 1] + shocks[t - lo]
    follow = {column: noise["req"].copy() for column in _DECOUPLED}
    for kind, lo, hi in plan:
        if kind == "broken_seasonality":
            traffic_hours[lo:hi] = (hours[lo:hi] + rng_anomaly.uniform(11.0, 13.0)) % 24
            # No batch job then: batch work on top of day traffic would make rows unlike any normal row.
            batch[lo:hi] = 0.0
        elif kind == "decoupling":
            follow[_DECOUPLED[rng_anomaly.integers(len(_DECOUPLED))]][lo:hi] = noise["alt"][lo:hi]

    day_curve = 0.25 + 0.75 * ((1 + np.cos(2 * np.pi * (traffic_hours - peak_hour) / 24)) / 2) ** 2
    expected = 900 * scale * day_curve * np.where(weekend, 0.75, 1.0) * np.exp(slope * elapsed_days)
    requests = expected * np.exp(noise["req"])
    # Each host is sized for its traffic: load is requests over the host's own peak capacity.
    load, cpu_load = (expected * np.exp(x) / (900 * scale) for x in (noise["req"], follow["cpu_util_pct"]))
    batch_work = batch * (200 + noise["batch"])
    cpu = 8 + 45 * cpu_gain * cpu_load + 0.15 * batch_work + noise["cpu"]
    metrics = {
        "cpu_util_pct": cpu,
        "mem_util_pct": 35 * mem_level + 10 * load + 15 * batch + noise["mem"] + noise["mem_slow"],
        "requests_per_s": requests,
        "latency_ms": 40 * latency_level * (1 + 3 * (cpu / 100) ** 2) + noise["lat"],
        "error_rate_pct": (0.1 + 0.8 * (cpu / 100) ** 3) * np.exp(noise["err"]),
        "disk_io_mb_s": 25 * scale + 12 * load + batch_work + noise["disk"],
        "net_in_mb_s": 0.09 * expected * np.exp(follow["net_in_mb_s"]) + noise["net"],
        "temperature_c": 28 + 1.5 * np.cos(2 * np.pi * (traffic_hours - 15) / 24) + 0.25 * cpu + noise["temp"],
    }
    values = np.column_stack([metrics[column] for column in METRIC_COLUMNS])

    # Anomalies that act on one metric's readings, sized by that metric's spread in the clean prefix.
    clean = values[: math.ceil(CLEAN_FRACTION * n)]
    spread = clean.std(axis=0)
    for kind, lo, hi in plan:
        if kind in ("broken_seasonality", "decoupling", "stuck_value", "variance_change"):
            continue
        pick = _SPIKE if kind == "spike" else _DRIFT if kind == "slow_drift" else METRIC_COLUMNS
        col = _COL[pick[rng_anomaly.integers(len(pick))]]
        if kind == "level_shift":
            # A relative change (a traffic drop, a slower release) that cannot push a reading below 0.
            values[lo:hi, col] *= rng_anomaly.uniform(1.3, 1.6) ** rng_anomaly.choice([-1.0, 1.0])
        elif kind == "spike":
            values[lo:hi, col] += rng_anomaly.uniform(5.0, 8.0) * spread[col]
        elif kind == "slow_drift":
            values[lo:hi, col] += np.linspace(0.0, rng_anomaly.uniform(1.5, 2.5) * spread[col], hi - lo)
    for kind, lo, hi in plan:
        if kind == "stuck_value":
            # The exporter repeats its last reading, every metric: each row is that normal row again.
            values[lo:hi] = values[lo - 1]

    values = np.clip(values, 0.0, None)
    values[:, _PERCENT] = np.clip(values[:, _PERCENT], 0.0, 100.0)
    # Three decimals is realistic sensor precision and makes CSV round trips exact.
    return np.round(values, 3)
