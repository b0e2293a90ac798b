"""The time-series telemetry generator: shape, grid, labels, seasonality, and that the
window-only anomaly kinds are plausible row by row (three of them by construction) yet visible
over a window."""

import numpy as np
import pandas as pd
import pytest

from anomaly_ae.data.synthetic_series import (
    CLEAN_FRACTION,
    SERIES_LABEL_COLUMNS,
    SERIES_METRIC_COLUMNS,
    TEMPORAL_ANOMALY_KINDS,
    WINDOW_ONLY_KINDS,
    make_series_telemetry,
    split_history,
)

METRICS = list(SERIES_METRIC_COLUMNS)
DAY = 288  # 5-minute steps per day


@pytest.fixture(scope="module")
def frame():
    return make_series_telemetry(seed=0)


@pytest.fixture(scope="module")
def clean():
    return make_series_telemetry(seed=0, anomalies=False)


def hosts(frame):
    return [g.reset_index(drop=True) for _, g in frame.groupby("host", sort=True)]


def segments(series, kind):
    """(first, end) row positions of each contiguous run of `kind` in one host's frame."""
    hit = np.r_[False, (series["anomaly_kind"] == kind).to_numpy(), False]
    edges = np.flatnonzero(np.diff(hit.astype(int)))
    return list(zip(edges[::2], edges[1::2]))


def normal_range(series):
    normal = series.loc[series["is_anomaly"] == 0, METRICS]
    return normal.quantile(0.01), normal.quantile(0.99)


def test_columns_dtypes_and_shape(frame):
    assert list(frame.columns) == ["ts", "host", *METRICS, *SERIES_LABEL_COLUMNS]
    assert SERIES_LABEL_COLUMNS == ("is_anomaly", "anomaly_kind")
    assert len(frame) == 2880 * 3 and frame.index.equals(pd.RangeIndex(len(frame)))
    assert pd.api.types.is_datetime64_dtype(frame["ts"])
    assert pd.api.types.is_string_dtype(frame["host"])
    assert set(frame["host"]) == {"host-0", "host-1", "host-2"}
    assert all(pd.api.types.is_float_dtype(frame[c]) for c in METRICS)
    assert frame["is_anomaly"].dtype == np.int64 and pd.api.types.is_string_dtype(frame["anomaly_kind"])
    values = frame[METRICS].to_numpy()
    assert np.isfinite(values).all() and (values > 0).all()
    assert (frame[["cpu_util_pct", "mem_util_pct", "error_rate_pct"]] <= 100).all().all()


@pytest.mark.parametrize("n_hosts, step", [(3, "5min"), (12, "15min")])
def test_sorted_by_host_then_time_on_a_regular_grid(n_hosts, step):
    df = make_series_telemetry(200, n_hosts, step=step, anomalies=False, start="2026-03-02 06:00")
    assert df.equals(df.sort_values(["host", "ts"]).reset_index(drop=True))
    names = list(dict.fromkeys(df["host"]))
    assert names == sorted(names) and len(names) == n_hosts  # zero-padded: host-02 before host-10
    for _, g in df.groupby("host"):
        assert len(g) == 200 and g["ts"].iloc[0] == pd.Timestamp("2026-03-02 06:00")
        assert (g["ts"].diff().iloc[1:] == pd.Timedelta(step)).all()


def test_deterministic_per_seed_and_different_across_seeds(frame):
    pd.testing.assert_frame_equal(frame, make_series_telemetry(seed=0), check_exact=True)
    other = make_series_telemetry(seed=1)
    assert not np.array_equal(frame[METRICS].to_numpy(), other[METRICS].to_numpy())
    assert not frame["anomaly_kind"].equals(other["anomaly_kind"])


def test_every_kind_present_on_every_host_as_contiguous_ranges(frame):
    assert ((frame["anomaly_kind"] == "none") == (frame["is_anomaly"] == 0)).all()
    assert set(frame["anomaly_kind"]) == {"none", *TEMPORAL_ANOMALY_KINDS}
    for series in hosts(frame):
        for kind in TEMPORAL_ANOMALY_KINDS:
            runs = segments(series, kind)
            assert len(runs) == 1, (kind, runs)  # one range per host: three of each kind in all
            length = runs[0][1] - runs[0][0]
            assert (1 <= length <= 3) if kind == "spike" else (length >= 12), (kind, length)


def test_no_anomalies_when_disabled_and_normal_rows_unchanged_by_them(frame, clean):
    assert (clean["is_anomaly"] == 0).all() and (clean["anomaly_kind"] == "none").all()
    # The anomalies touch only the rows they label: every other row is the anomaly-free series.
    normal = frame["is_anomaly"] == 0
    pd.testing.assert_frame_equal(frame.loc[normal, ["ts", "host", *METRICS]],
                                  clean.loc[normal, ["ts", "host", *METRICS]], check_exact=True)
    assert not np.array_equal(frame.loc[~normal, METRICS].to_numpy(), clean.loc[~normal, METRICS].to_numpy())


def test_training_prefix_is_clean_and_split_history_splits_in_time(frame):
    for series in hosts(frame):
        assert np.flatnonzero(series["is_anomaly"]).min() >= CLEAN_FRACTION * len(series)
    history, rest = split_history(frame.sample(frac=1.0, random_state=0))  # order of rows does not matter
    assert history["is_anomaly"].sum() == 0 and rest["is_anomaly"].sum() == frame["is_anomaly"].sum()
    assert len(history) == 3 * 1152 and len(rest) == 3 * (2880 - 1152)
    for (_, h), (_, r) in zip(history.groupby("host"), rest.groupby("host")):
        assert h["ts"].is_monotonic_increasing and h["ts"].max() < r["ts"].min()
    with pytest.raises(ValueError, match="fraction"):
        split_history(frame, 1.0)


def test_daily_and_weekly_seasonality_and_correlated_metrics(clean):
    for series in hosts(clean):
        requests = series["requests_per_s"]
        assert requests.autocorr(DAY) > 0.8  # the same time a day earlier
        assert requests.autocorr(DAY // 2) < -0.3  # half a day earlier: the other side of the curve
        weekend = series["ts"].dt.day_of_week >= 5
        assert requests[weekend].mean() < 0.9 * requests[~weekend].mean()
        # Outside the nightly batch window CPU and net_in follow requests, latency follows CPU.
        batch = series["disk_io_mb_s"] > 3 * series["disk_io_mb_s"].median()
        day = series[~batch]
        assert day["cpu_util_pct"].corr(day["requests_per_s"]) > 0.9
        assert day["net_in_mb_s"].corr(day["requests_per_s"]) > 0.9
        assert series["latency_ms"].corr(series["cpu_util_pct"]) > 0.8
        # The batch window is a recurring regime, once a day, in which CPU follows the batch job's
        # disk I/O rather than requests.
        starts = series["ts"][batch & ~batch.shift(fill_value=False)]
        assert len(starts) == pytest.approx(len(series) / DAY, abs=1)
        assert (starts.dt.hour < 6).all()
        night = series[batch]
        assert night["cpu_util_pct"].corr(night["disk_io_mb_s"]) > 0.8
        assert night["cpu_util_pct"].corr(night["requests_per_s"]) < 0.8
    means = clean.groupby("host")["requests_per_s"].mean()
    assert 1.05 < means.max() / means.min() < 1.6  # hosts of one kind, different scales


def test_window_only_kinds_push_no_value_out_of_the_normal_range(frame, clean):
    """Row by row these kinds look normal: compared with the same rows without the anomaly, they add
    (almost) no value outside the host's normal 1st-99th percentile range. Spikes, which a row-wise
    detector should catch, add one on every row."""
    outside, outside_clean, kinds = [], [], []
    for series, control in zip(hosts(frame), hosts(clean)):
        lo, hi = normal_range(series)
        outside.append(((series[METRICS] < lo) | (series[METRICS] > hi)).to_numpy())
        outside_clean.append(((control[METRICS] < lo) | (control[METRICS] > hi)).to_numpy())
        kinds.append(series["anomaly_kind"].to_numpy())
    outside, outside_clean, kinds = map(np.concatenate, (outside, outside_clean, kinds))
    for kind in WINDOW_ONLY_KINDS:
        rows = kinds == kind
        assert outside[rows].mean() <= outside_clean[rows].mean() + 0.03, kind
    spikes = kinds == "spike"
    assert outside[spikes].any(axis=1).all() and not outside_clean[spikes].any(axis=1).all()


def test_stuck_value_repeats_a_normal_row_and_is_flat_over_a_window(frame):
    for series in hosts(frame):
        (first, end), = segments(series, "stuck_value")
        # The exporter repeats its last reading: every row of the range is the normal row before it,
        # so a row-by-row model scores each exactly as that normal row.
        assert series.loc[first - 1, "is_anomaly"] == 0
        stuck = series.loc[first:end - 1, METRICS].to_numpy()
        assert (stuck == series.loc[first - 1, METRICS].to_numpy(dtype=float)).all()
        # Windowed: the range over 6 steps is exactly 0 in the stuck range, never on normal rows.
        spread = series[METRICS].rolling(6).max() - series[METRICS].rolling(6).min()
        assert (spread.iloc[first + 5:end] == 0).all().all()
        normal_windows = series["is_anomaly"].rolling(6).max() == 0
        assert (spread[normal_windows] > 0).all().all()


def test_variance_change_flaps_step_to_step(frame, clean):
    """Traffic or memory swings against itself: its step-to-step changes at least double, against
    the same steps without the anomaly, while (test above) its values stay in the normal range."""
    for series, control in zip(hosts(frame), hosts(clean)):
        (first, end), = segments(series, "variance_change")
        rows = slice(first + 1, end)
        changed = {c: not np.array_equal(series[c].iloc[rows], control[c].iloc[rows]) for c in METRICS}
        # Requests carry what follows them (memory among it); flapping memory moves nothing else.
        metric = "requests_per_s" if changed["requests_per_s"] else "mem_util_pct"
        assert changed[metric] and (metric == "requests_per_s" or sum(changed.values()) == 1)
        step = series[metric].diff().abs().iloc[rows].median()
        assert step > 2 * control[metric].diff().abs().iloc[rows].median(), metric


def test_broken_seasonality_shows_against_the_previous_day(frame):
    for series in hosts(frame):
        ratio = np.log(series["requests_per_s"] / series["requests_per_s"].shift(DAY))
        stat = ratio.rolling(24, center=True).mean().abs()  # 2 h against the same 2 h a day earlier
        anomalous = series["is_anomaly"].astype(float)
        both_normal = (anomalous.rolling(24, center=True).max() == 0) & \
                      (anomalous.shift(DAY).rolling(24, center=True).max() == 0)
        assert stat[both_normal].max() < 0.6  # weekends vs weekdays included
        (first, end), = segments(series, "broken_seasonality")
        assert stat.iloc[first:end].max() > 0.7


def co_movement(steps, rows):
    """The weaker correlation of step-to-step changes, CPU or net_in with requests, over `rows`."""
    return min(steps.loc[rows, c].corr(steps.loc[rows, "requests_per_s"])
               for c in ("cpu_util_pct", "net_in_mb_s"))


def test_decoupling_shows_as_lost_co_movement(frame):
    for series in hosts(frame):
        steps = series[["cpu_util_pct", "net_in_mb_s", "requests_per_s"]].diff()
        (first, end), = segments(series, "decoupling")
        assert co_movement(steps, range(first + 1, end)) < 0.5
        # The same statistic on 3-hour chunks of normal rows outside the batch window.
        batch = (series["disk_io_mb_s"] > 3 * series["disk_io_mb_s"].median()).to_numpy()
        anomalous = series["is_anomaly"].to_numpy()
        chunks = [range(i + 1, i + 36) for i in range(0, len(series) - 36, 36)
                  if not (anomalous[i:i + 36].any() or batch[i:i + 36].any())]
        assert len(chunks) > 40 and min(co_movement(steps, rows) for rows in chunks) > 0.55


def test_argument_checks():
    with pytest.raises(ValueError, match="n_steps"):
        make_series_telemetry(0)
    with pytest.raises(ValueError, match="n_hosts"):
        make_series_telemetry(100, 0)
    with pytest.raises(ValueError, match="step"):
        make_series_telemetry(100, step="-5min")
    with pytest.raises(ValueError, match="too short"):
        make_series_telemetry(500)
    assert len(make_series_telemetry(500, anomalies=False)) == 1500
