import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_ae.data.synthetic import (ANOMALY_KINDS, LABEL_COLUMNS, METRIC_COLUMNS, MODES,
                                       make_telemetry)

METRICS = list(METRIC_COLUMNS)


def test_columns_dtypes_and_index():
    df = make_telemetry(200, 0.1, seed=1)
    assert list(df.columns) == ["mode", *METRICS, *LABEL_COLUMNS]
    assert df.index.equals(pd.RangeIndex(200))
    assert all(pd.api.types.is_float_dtype(df[c]) for c in METRICS)
    assert df["is_anomaly"].dtype == np.int64
    assert set(df["mode"]) <= set(MODES)


def test_same_seed_is_bitwise_identical_and_other_seed_differs():
    a, b = make_telemetry(500, 0.1, seed=7), make_telemetry(500, 0.1, seed=7)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert a[METRICS].to_numpy().tobytes() == b[METRICS].to_numpy().tobytes()
    c = make_telemetry(500, 0.1, seed=8)
    assert not np.array_equal(a[METRICS].to_numpy(), c[METRICS].to_numpy())


@pytest.mark.parametrize("n, fraction", [(1000, 0.05), (997, 0.1), (10, 0.25), (50, 0.0)])
def test_anomaly_count_and_labels(n, fraction):
    df = make_telemetry(n, fraction, seed=3)
    assert df["is_anomaly"].sum() == round(n * fraction)
    assert ((df["anomaly_kind"] == "none") == (df["is_anomaly"] == 0)).all()
    assert set(df["anomaly_kind"]) <= {"none", *ANOMALY_KINDS}


def test_anomaly_kinds_balanced_and_shuffled_in():
    df = make_telemetry(2000, 0.1, seed=0)
    counts = df.loc[df["is_anomaly"] == 1, "anomaly_kind"].value_counts()
    assert set(counts.index) == set(ANOMALY_KINDS) and len(ANOMALY_KINDS) >= 4
    assert counts.max() - counts.min() <= 1
    positions = np.flatnonzero(df["is_anomaly"])
    assert positions.min() < 200 and positions.max() > 1800  # spread over the frame, not a block


def test_values_in_plausible_ranges():
    df = make_telemetry(3000, 0.1, seed=2)
    values = df[METRICS].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    assert (df[["cpu_util_pct", "mem_util_pct", "error_rate_pct"]] <= 100).all().all()
    normal = df[df["is_anomaly"] == 0]
    assert normal["temperature_c"].between(20, 100).all()
    assert normal["latency_ms"].median() > 10


def test_correlations_depend_on_mode():
    df = make_telemetry(6000, seed=4, mode_weights={"day": 1, "batch": 1})
    day, batch = (df[df["mode"] == m] for m in ("day", "batch"))
    # By day CPU follows traffic; in batch it follows disk I/O and ignores traffic.
    assert day["cpu_util_pct"].corr(day["requests_per_s"]) > 0.8
    assert abs(batch["cpu_util_pct"].corr(batch["requests_per_s"])) < 0.3
    assert batch["cpu_util_pct"].corr(batch["disk_io_mb_s"]) > 0.8
    assert day["cpu_util_pct"].mean() < batch["cpu_util_pct"].mean()


def test_mode_weights():
    df = make_telemetry(4000, seed=5)
    share = df["mode"].value_counts(normalize=True)
    assert share["day"] > share["night"] > share["batch"] > share["maintenance"] > 0
    only_night = make_telemetry(300, 0.1, seed=5, mode_weights={"night": 2.0})
    assert set(only_night.loc[only_night["is_anomaly"] == 0, "mode"]) == {"night"}


def test_stuck_sensor_reads_zero():
    df = make_telemetry(800, 0.2, seed=6)
    stuck = df[df["anomaly_kind"] == "stuck_sensor"]
    assert len(stuck) > 0 and ((stuck[METRICS] == 0).sum(axis=1) >= 1).all()


def test_every_kind_is_detectable_by_a_per_mode_gaussian():
    train = make_telemetry(4000, seed=10)
    test = make_telemetry(4000, 0.1, seed=11)
    score = np.zeros(len(test))
    for mode in MODES:
        ref = train.loc[train["mode"] == mode, METRICS].to_numpy()
        inv = np.linalg.inv(np.cov(ref.T))
        rows = (test["mode"] == mode).to_numpy()
        diff = test.loc[rows, METRICS].to_numpy() - ref.mean(axis=0)
        score[rows] = np.einsum("ij,jk,ik->i", diff, inv, diff)
    for kind in ANOMALY_KINDS:
        rows = test["anomaly_kind"].isin(["none", kind]).to_numpy()
        assert roc_auc_score(test["is_anomaly"][rows], score[rows]) > 0.95, kind


@pytest.mark.parametrize("kwargs, message", [
    ({"n_samples": 0}, "n_samples must be an integer >= 1"),
    ({"n_samples": 2.5}, "n_samples must be an integer >= 1"),
    ({"anomaly_fraction": 1.0}, "anomaly_fraction must be a number in [0, 1)"),
    ({"anomaly_fraction": -0.1}, "anomaly_fraction must be a number in [0, 1)"),
    ({"mode_weights": {}}, "must name at least one mode"),
    ({"mode_weights": {"weekend": 1.0}}, "unknown mode(s) ['weekend']"),
    ({"mode_weights": {"day": 1.0, "night": 0}}, "must be finite numbers > 0"),
    ({"mode_weights": {"day": float("nan")}}, "must be finite numbers > 0"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        make_telemetry(**kwargs)
    assert message in str(info.value)
