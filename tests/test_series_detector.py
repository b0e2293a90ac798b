"""SeriesDetector: windows in time, causality, series kept apart, bad input, calibration, persistence."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import pandas as pd
import pytest
from sklearn.base import clone

from anomaly_ae import Detector, SeriesDetector
from anomaly_ae.calibration import AlertRule
from anomaly_ae.data.windows import calendar_covariates, dominant_period
from anomaly_ae.exceptions import DataError, InvalidParameterError, ModelLoadError, SchemaError

PERIOD = 48


def wave(n: int, seed: int, phase: float = 0.0) -> np.ndarray:
    """Two coupled metrics with a daily-like cycle and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) + phase
    base = np.sin(2 * np.pi * t / PERIOD)
    return np.column_stack([base + 0.1 * rng.normal(size=n), 0.8 * base + 0.1 * rng.normal(size=n)])


def frame(n: int, hosts: tuple[str, ...] = ("a", "b"), seed: int = 0) -> pd.DataFrame:
    parts = []
    for i, host in enumerate(hosts):
        x = wave(n, seed + i, phase=7 * i)
        parts.append(pd.DataFrame({"ts": pd.date_range("2026-01-05", periods=n, freq="5min"), "host": host,
                                   "cpu": x[:, 0], "load": x[:, 1]}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def fitted() -> SeriesDetector:
    return SeriesDetector("pca", window=16, time_col="ts", series_col="host", random_state=0).fit(frame(1500))


def test_estimator_contract():
    det = SeriesDetector("tcn", window=24, time_col="ts")
    params = det.get_params()
    assert params["window"] == 24 and params["time_col"] == "ts" and params["model"] == "tcn"
    copy = clone(det).set_params(window=8)
    assert copy.window == 8 and det.window == 24
    with pytest.raises(ValueError, match="unknown model"):
        SeriesDetector("hybrid").fit(wave(200, 0))
    with pytest.raises(ValueError, match="window"):
        SeriesDetector("pca", window=0).fit(wave(200, 0))


def test_scores_are_causal_and_in_input_order(fitted):
    test = frame(300, seed=5)
    full = fitted.decision_function(test)
    assert full.shape == (len(test),) and np.isfinite(full).all()
    # the score at t uses rows up to t only: cutting the future off changes nothing before it
    cut = test.groupby("host").head(200)
    np.testing.assert_allclose(fitted.decision_function(cut), full[cut.index.to_numpy()], rtol=1e-6)
    # shuffling the series' interleaving (each series still in time order) keeps every row's score
    interleaved = test.iloc[np.argsort(test.groupby("host").cumcount().to_numpy(), kind="stable")]
    np.testing.assert_allclose(fitted.decision_function(interleaved), full[interleaved.index.to_numpy()], rtol=1e-6)


def test_windows_never_cross_series(fitted):
    test = frame(200, seed=6)
    alone = fitted.decision_function(test[test.host == "b"])
    np.testing.assert_allclose(fitted.decision_function(test)[test.host.to_numpy() == "b"], alone, rtol=1e-6)


def test_warm_up_rows_get_finite_scores_and_a_note(fitted):
    out = fitted.score_frame(frame(40, seed=7))
    assert np.isfinite(out["score"]).all()
    first = out.groupby(frame(40, seed=7)["host"]).head(15)
    assert first["notes"].str.contains("warm-up").all()
    assert not out.iloc[20:40]["notes"].str.contains("warm-up").any()


def test_a_clipped_value_is_noted_on_its_own_row_only(fitted):
    test = frame(60, seed=7)
    test.loc[50, test.columns[2]] = 1e12
    out = fitted.score_frame(test)
    clipped = out["notes"].str.contains(f"'{test.columns[2]}' lies more than 10,000 standard deviations")
    assert clipped.tolist() == (test.index == 50).tolist()
    # a stream's new rows (scored with their context) carry the same note
    new_rows = fitted.inference_.score(test, rows=np.array([49, 50, 51]))
    assert [any("lies more than" in n for n in row) for row in new_rows.notes] == [False, True, False]


def test_detects_a_stuck_metric_that_stays_in_range(fitted):
    test = frame(600, seed=8)
    rows = test.index[(test.host == "a")][300:360]
    test.loc[rows, "cpu"] = 0.2  # frozen inside the normal range
    scores = fitted.decision_function(test)
    flags = fitted.predict(test)
    assert flags[rows[16:]].mean() > 0.8
    # normal: rows whose window (16 steps) holds no frozen value
    affected = test.index[(test.host == "a")][300:360 + 15].to_numpy()
    normal = np.setdiff1d(np.arange(len(test)), affected)
    assert flags[normal].mean() < 0.05
    assert scores[rows[16:]].min() > np.quantile(scores[normal], 0.99)
    # a level shift in one metric: the explanation names it
    shifted = frame(600, seed=8)
    shifted.loc[rows, "load"] += 2.0
    top = fitted.explain(shifted, top_k=1).loc[rows[16:]]
    assert (top["feature_1"] == "load").mean() > 0.8
    # per step: a spike in the newest step of a window carries most of that row's misfit
    spiked = frame(200, seed=8)
    last = spiked.index[spiked.host == "a"][150]
    spiked.loc[last, "cpu"] += 6.0
    steps = fitted.explain_steps(spiked)
    assert steps.shape == (len(spiked), 16, 2)
    np.testing.assert_allclose(steps.sum(axis=(1, 2)), 1.0, atol=1e-6)
    assert steps[last, -1, 0] > 0.5


def test_calibration_on_the_contiguous_tail_holds_on_fresh_normal_data(fitted):
    fresh = frame(3000, seed=11)
    assert fitted.predict(fresh).mean() < 0.04  # target 1%; windows overlap, so the check is loose
    assert fitted.alert_stats_["held_out_steps"] > 0 and "alerts_per_day" in fitted.alert_stats_
    p = fitted.p_values(fresh)
    assert ((p > 0) & (p <= 1)).all()


def test_bad_time_input_gets_clear_errors_and_notes(fitted):
    test = frame(100, seed=9)
    with pytest.raises(DataError, match="not in time order"):
        fitted.decision_function(test.iloc[::-1])
    with pytest.raises(DataError, match="not in time order at row 1; sort the rows"):  # not "two distinct"
        SeriesDetector(model="pca", window=8, time_col="ts").fit(test[["ts", "cpu"]].iloc[::-1])
    # a timestamp twice (a reading sent again, corrected): both rows scored, the first as it came, the
    # second then stands for the step (noted), so later rows score as if only the second had been sent
    again = test.iloc[4:5].assign(cpu=test.cpu.iloc[4] + 1.0)
    twice = fitted.score_frame(pd.concat([test.iloc[:5], again, test.iloc[5:]]))
    assert "at the same timestamp as the reading before it" in twice.notes.iloc[5]
    assert twice.score.iloc[4] == pytest.approx(fitted.score_frame(test).score.iloc[4], rel=1e-9)
    replaced = fitted.score_frame(pd.concat([test.iloc[:4], again, test.iloc[5:]]))
    np.testing.assert_allclose(twice.score.to_numpy()[5:], replaced.score.to_numpy()[4:], rtol=1e-9)
    # sampled finer than the model's 5-minute step: readings that land on one step are each scored when
    # they come (causally: as if the stream ended there), and the last one stands for the step afterwards
    fine = test[test.host == "a"].copy()
    fine["ts"] = pd.date_range("2026-01-05", periods=len(fine), freq="2min")
    full = fitted.score_frame(fine)
    assert np.isfinite(full["score"]).all()
    assert full["notes"].str.contains("within the same 5 min step as the reading before").sum() >= len(fine) // 3
    for i in (10, 11, 12, 37):
        assert fitted.decision_function(fine.iloc[: i + 1])[-1] == pytest.approx(full["score"].iloc[i], rel=1e-9)
    with pytest.raises(DataError, match="'ts' is missing"):
        fitted.decision_function(test.drop(columns=["ts"]))
    with pytest.raises(SchemaError, match="missing column"):
        fitted.decision_function(test.drop(columns=["load"]))
    with pytest.raises(DataError, match="needs a table"):
        fitted.decision_function(test[["cpu", "load"]].to_numpy())
    # short gaps are filled and noted; long ones restart the window
    gappy = test[test.host == "a"].drop(index=test.index[(test.host == "a")][[30, 31, 60, 61, 62, 63, 64, 65]])
    out = fitted.score_frame(gappy)
    assert np.isfinite(out["score"]).all()
    assert out["notes"].str.contains("gap of 2 steps before this row filled").sum() == 1
    assert out["notes"].str.contains("gap of 6 steps .* restarts", regex=True).sum() == 1
    one_missing = test[test.host == "a"].drop(index=test.index[(test.host == "a")][[40]])
    assert fitted.score_frame(one_missing)["notes"].str.contains("gap of 1 step before this row filled").sum() == 1
    # a series never seen in training: scored, noted
    other = test[test.host == "a"].assign(host="zzz")
    notes = fitted.score_frame(other)["notes"]
    assert notes.str.contains("series 'zzz' was not in the training data").all()


def test_local_times_across_the_end_of_daylight_saving_get_that_advice(fitted):
    """Sorting them, as the old message advised, would interleave two different hours."""
    test = frame(60, hosts=("a",), seed=9)
    local = pd.date_range("2026-10-25 00:00", periods=60, freq="5min", tz="UTC").tz_convert("Europe/Paris")
    with pytest.raises(DataError, match=r"go back by 55 minutes, as local times do when daylight saving time ends: "
                                        r"send UTC times, or times with their offset"):
        fitted.decision_function(test.assign(ts=local.tz_localize(None)))
    assert np.isfinite(fitted.decision_function(test.assign(ts=local))).all()  # with their offset: fine


def test_alerts_per_day_count_the_time_the_held_out_rows_span():
    """A feed sparser than the step (every other reading) or denser (two per step) was counted by rows:
    the same alerts over the same week read as about twice or half the rate."""
    history = frame(2000, hosts=("a",))
    det = SeriesDetector("pca", window=16, time_col="ts", series_col="host", target_fpr=0.05).fit(history)
    new = frame(2000, hosts=("a",), seed=5).assign(ts=lambda f: f.ts + pd.Timedelta(days=10))
    days = (new.ts.max() - new.ts.min()) / pd.Timedelta("1D")
    denser = pd.concat([new, new.assign(ts=new.ts + pd.Timedelta("150s"))]).sort_values("ts", kind="stable")
    for feed in (new, new.iloc[::2], denser):
        det.recalibrate(feed, target_fpr=0.05)
        stats = det.alert_stats_
        assert stats["alerts"] > 0 and stats["held_out_rows"] != 0
        assert stats["alerts_per_day"] == pytest.approx(stats["alerts"] / days, rel=0.02)


def test_time_and_series_values_pandas_would_misread_are_refused(fitted):
    """Each of these was scored without a word before: numbers read as nanoseconds since 1970, "now",
    dates nanoseconds cannot hold (wrapped into another century), a missing id read as a series "nan"."""
    test = frame(60, seed=9)
    cases = [(test.assign(ts=np.arange(len(test)) * 300 + 1_767_571_200), "holds numbers, not timestamps"),
             (test.assign(ts=["now"] + test.ts.astype(str).tolist()[1:]), "holds 'now' at row 0"),
             (test.assign(ts=test.ts.astype(str).str.cat(["\x00"] * len(test))), "not timestamps"),
             (test.assign(ts=["1600-01-01T00:00:00Z"] + test.ts.astype(str).tolist()[1:]),
              "holds '1600-01-01T00:00:00Z' at row 0; timestamps must lie between"),  # as sent, not as parsed
             (test.assign(host=[np.nan] + test.host.tolist()[1:]), "'host' is missing at row 0"),
             (pd.concat([test, test[["host"]]], axis=1), "duplicate column names"),
             (test.head(0), "no rows"),
             # pandas' "mixed" parsing read '10:20' as today, and '07/01/2026' as July but '13/01/2026' as January
             (test.assign(ts=test.ts.dt.strftime("%H:%M")), "holds '.*' at row 0, not an ISO 8601 timestamp"),
             (test.assign(ts=test.ts.dt.strftime("%d/%m/%Y %H:%M")), "day/month orders and times without a date")]
    for data, message in cases:
        with pytest.raises(DataError, match=message):
            fitted.decision_function(data)
    with pytest.raises(DataError, match="holds numbers"):  # training refuses them too
        SeriesDetector("pca", window=8, time_col="ts").fit(frame(200, hosts=("a",)).assign(ts=np.arange(200)))
    # what it does take: datetime values, text, time zones
    expected = fitted.decision_function(test)
    for ts in (test.ts.astype(str), test.ts.dt.tz_localize("UTC").dt.tz_convert("Europe/Paris")):
        np.testing.assert_allclose(fitted.decision_function(test.assign(ts=ts)), expected, rtol=1e-9)


@pytest.mark.parametrize("params, message", [
    (dict(window=True), "window must be a positive number"),
    (dict(alert_min_steps=6, alert_within=5), "alert_min_steps <= alert_within"),
    (dict(alert_within=0), "alert_min_steps <= alert_within"),
    (dict(alert_cooldown=-1), "alert_cooldown must be >= 0"),
    (dict(alert_cooldown=2.5), "alert_cooldown must be a whole number of steps, got 2.5"),
    (dict(max_gap=None), "max_gap must be a whole number of steps, got None"),
    (dict(max_gap=float("inf")), "max_gap must be a whole number"),
    (dict(max_gap=1.5), "max_gap must be a whole number"),
    (dict(time_col="ts", series_col="ts"), "time_col and series_col are both 'ts'")])
def test_bad_series_parameters_are_refused(params, message):
    with pytest.raises(InvalidParameterError, match=message):
        SeriesDetector("pca", **params).fit(np.random.default_rng(0).normal(size=(200, 2)))


def test_a_window_longer_than_the_history_is_refused():
    with pytest.raises(DataError, match="window 50 is longer than the longest training stretch"):
        SeriesDetector("pca", window=50).fit(np.random.default_rng(0).normal(size=(30, 2)))
    # as long as the history, but its last 20% calibrates: no training window would be complete
    with pytest.raises(DataError, match=r"window 16 is longer than the longest training stretch \(13 steps"):
        SeriesDetector("knn", window=16).fit(np.random.default_rng(0).normal(size=(16, 2)))
    for empty in (frame(10).head(0), np.empty((0, 3))):
        with pytest.raises(DataError, match="the training history has no rows; pass at least a few hundred"):
            SeriesDetector("pca", window=8, time_col="ts" if isinstance(empty, pd.DataFrame) else None).fit(empty)


def test_array_input_is_one_series_in_row_order():
    x = wave(1200, 0)
    det = SeriesDetector("knn", window=8, random_state=0).fit(x[:1000])
    scores = det.decision_function(x)
    assert scores.shape == (1200,) and np.isfinite(scores).all()
    np.testing.assert_allclose(det.decision_function(x[:600]), scores[:600], rtol=1e-6)
    with pytest.raises(DataError, match="longer normal history"):
        SeriesDetector("pca", window=8).fit(x[:6])


@pytest.mark.parametrize("model", ["tcn", "gru", "vae", "aae", "ae"])
def test_every_family_fits_scores_and_explains(model):
    x = wave(700, 1)
    det = SeriesDetector(model, window=12, epochs=3, random_state=0).fit(x[:500])
    out = det.score_frame(x, top_k=2)
    assert np.isfinite(out["score"]).all() and out["is_anomaly"].dtype == bool
    shares = det.explain(x[:50], top_k=None)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-6)


def test_save_load_round_trip_and_kinds(fitted, tmp_path):
    test = frame(120, seed=10)
    fitted.save(tmp_path / "m")
    loaded = SeriesDetector.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.decision_function(test), fitted.decision_function(test))
    assert loaded.window_ == 16 and loaded.alert_stats_ == fitted.alert_stats_
    # loaded through the row detector's loader (as the registry and the service do): still a series model
    assert isinstance(Detector.load(tmp_path / "m"), SeriesDetector)
    Detector("pca").fit(wave(300, 0)).save(tmp_path / "rows")
    with pytest.raises(ModelLoadError, match="holds a Detector"):
        SeriesDetector.load(tmp_path / "rows")


def test_alert_rule_k_of_n_and_cooldown():
    rule = AlertRule(min_steps=2, within=3, cooldown=4)
    flags = np.array([1, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, 1])
    alerts = rule.apply(flags)
    # 2 of 3 holds at 5-12, 18-20 and 27: one alert per incident, a new one after 4 clear steps
    assert np.flatnonzero(alerts).tolist() == [5, 18, 27]
    assert AlertRule(2, 3, 6).apply(flags).nonzero()[0].tolist() == [5, 27]  # 18 is 6 steps after 12
    assert AlertRule(2, 3, 7).apply(flags).nonzero()[0].tolist() == [5]  # 27 is 7 steps after 20
    assert AlertRule(2, 3, 0).apply(flags).sum() == 12  # no cooldown: every step where 2 of 3 hold
    # each alert is decided by the rule's lookback (within - 1 + cooldown) steps before it
    for t in range(rule.lookback, len(flags)):
        assert rule.apply(flags[t - rule.lookback:t + 1])[-1] == alerts[t]
    state = rule.start()
    assert [state.step(bool(f)) for f in flags] == alerts.tolist()
    assert not AlertRule(3, 5, 0).apply(np.array([1, 0, 0, 0, 1, 0, 0, 0, 1])).any()
    with pytest.raises(ValueError):
        AlertRule(min_steps=4, within=3)


def test_auto_window_finds_the_period():
    assert abs(dominant_period(wave(2000, 3)) - PERIOD) <= 1
    assert dominant_period(np.random.default_rng(0).normal(size=(2000, 2))) is None
    det = SeriesDetector("pca", window="auto").fit(wave(2000, 3))
    assert abs(det.window_ - PERIOD) <= 1
    with pytest.warns(UserWarning, match="window='auto' found no period of 16-128 steps .* so the window is 32"):
        det = SeriesDetector("pca", window="auto").fit(np.random.default_rng(0).normal(size=(2000, 2)))
    assert det.window_ == 32


def test_event_metrics_count_found_ranges_and_false_alarm_runs():
    from anomaly_ae.evaluation import event_metrics

    labels = np.array([0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0])
    flags = np.array([0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
    report = event_metrics(flags, labels)
    assert (report.n_events, report.events_found, report.flagged_runs, report.false_alarm_runs) == (2, 1, 2, 1)
    assert report.event_recall == 0.5 and report.event_precision == 0.5 and report.mean_delay_steps == 1.0
    # ranges never join across series
    split = event_metrics(np.array([1, 1, 1, 1]), np.array([0, 1, 1, 0]), np.array(["a", "a", "b", "b"]))
    assert (split.n_events, split.flagged_runs, split.false_alarm_runs) == (2, 2, 0)


def test_on_off_flags_stay_indicators_in_series_models():
    """A rarely set 0/1 flag is left as 0/1 (like a one-hot category), not divided by its tiny
    standard deviation, so one toggle does not outweigh the metrics of a whole window."""
    x = wave(600, 2)
    flag = np.zeros(600)
    flag[[100, 300]] = 1.0
    det = SeriesDetector("pca", window=8).fit(np.column_stack([x, flag]))
    params = det.preprocessor_.numeric["x2"]
    assert (params["mean"], params["scale"]) == (0.0, 1.0)
    assert det.preprocessor_.numeric["x0"]["scale"] != 1.0  # real metrics are still standardised


# ---------------------------------------------------------------------------- knn: windows from their rows
@pytest.mark.parametrize("max_reference", [10_000, 1_500, 100])
def test_knn_scores_windows_as_the_flattened_windows_do(monkeypatch, max_reference):
    """Windows are scored without flattening them, by products of rows with the reference's base rows
    (windows sliding along one series share them): the same scores, flags and explanations as the
    flattened windows, to float rounding, and both within 1e-6 of float64 distances. Two series, a restart after a
    long gap and warm-up windows; a reference sampled down to a few windows shares no rows and takes the
    flattened path."""
    det = SeriesDetector("knn", window=16, time_col="ts", series_col="host", max_reference=max_reference,
                         random_state=0).fit(frame(1500))
    data = frame(300, seed=5)
    data.loc[data.index[150:170], "cpu"] += 2.0  # an anomaly to flag
    data = data.drop(index=range(40, 70)).reset_index(drop=True)  # 30 steps missing: the window restarts
    rows = np.r_[0:3, 35:60, 130:170, 400:420]
    fast = det.inference_.score(data, top_k=2, rows=rows, step_shares=True)
    monkeypatch.setattr(det.scorer_, "score_windows", lambda x, windows: None)  # the flattened path
    flat = det.inference_.score(data, top_k=2, rows=rows, step_shares=True)
    np.testing.assert_allclose(fast.scores, flat.scores, rtol=3e-5)
    assert fast.is_anomaly.tolist() == flat.is_anomaly.tolist() and fast.is_anomaly.any()
    assert fast.top_features == flat.top_features
    np.testing.assert_allclose(fast.step_shares, flat.step_shares, atol=1e-6)
    sliding = det.scorer_.neighbors._sliding(16)
    assert (sliding is None) == (max_reference == 100)
    if sliding is not None:  # float64 distances
        from anomaly_ae.inference import model_input

        metrics, layout = det.framing_.split(data)
        x = model_input(det.preprocessor_, det.schema_, det.schema_.check(metrics)[0]).astype(np.float64)
        queries = x[layout.windows(16)[rows]].reshape(len(rows), -1)
        reference = det.scorer_.neighbors.reference.numpy().astype(np.float64)
        d2 = (queries ** 2).sum(1)[:, None] + (reference ** 2).sum(1)[None] - 2 * queries @ reference.T
        exact = np.sqrt(np.sort(np.maximum(d2, 0), 1)[:, :5]).mean(1)
        assert np.abs(fast.scores / exact - 1).max() <= 1e-6
        assert np.abs(flat.scores / exact - 1).max() <= 1e-6


def test_slide_base_rebuilds_every_window():
    from anomaly_ae.models.neighbors import slide_base

    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 3))
    starts = np.sort(rng.choice(190, 60, replace=False))  # steps of 1 and more, some beyond max_shift
    windows = np.stack([rows[s:s + 8] for s in starts] + [rows[:8]])  # and one that starts over
    base, first = slide_base(windows, max_shift=4)
    assert all((base[f:f + 8] == w).all() for f, w in zip(first, windows))
    assert len(base) < len(windows) * 8


def test_knn_windows_of_many_series_are_scored_in_parts(monkeypatch):
    """Windows that share no rows (one new row of each of many series) need a query row per window step:
    past MAX_CROSS products they are scored in halves, with the same result."""
    import anomaly_ae.models.neighbors as neighbors

    det = SeriesDetector("knn", window=16, time_col="ts", series_col="host", random_state=0).fit(frame(600))
    data = frame(200, hosts=tuple("ab"), seed=3)
    rows = np.r_[20:60:3, 220:260:3]
    whole = det.inference_.score(data, top_k=2, rows=rows)
    monkeypatch.setattr(neighbors, "MAX_CROSS", 40 * len(det.scorer_.neighbors._sliding(16)[0].T))
    monkeypatch.setattr(neighbors, "BOUNDED_MAX_WINDOWS", 0)  # halves of a few windows: still by products
    parts = det.inference_.score(data, top_k=2, rows=rows)
    np.testing.assert_allclose(parts.scores, whole.scores, rtol=1e-9)
    assert parts.top_features == whole.top_features


def test_knn_a_window_scores_the_same_alone_or_among_others():
    """A stream's new row scored alone (as the service and the watcher do) and inside a whole history
    (as an offline pass does): the same score to float32 rounding. Alone, the window's distances are
    measured directly to the reference windows its lower bounds leave (float64 sums of float32
    differences); among others, through float32 products of rows."""
    det = SeriesDetector("knn", window=16, time_col="ts", series_col="host", random_state=0).fit(frame(1500))
    data = frame(400, seed=5)
    data.loc[data.index[240:250], "cpu"] += 3.0  # and rows of an incident
    every = det.inference_.score(data).scores
    rows = (17, 245, 250, 399, 650, 799)
    alone = [det.inference_.score(data, rows=np.array([i])).scores[0] for i in rows]
    np.testing.assert_allclose(alone, every[list(rows)], rtol=2e-6)


def test_knn_reference_holds_the_whole_history_once_the_tail_has_calibrated():
    """knn's threshold comes from the held-out tail scored against the head's windows; then the
    reference takes every window of the history, tail included (the rows scored next follow it in
    time): fresh normal data is still flagged near the 1% target, and the history's own windows are
    their own nearest neighbours."""
    history = frame(1500)
    det = SeriesDetector("knn", window=16, time_col="ts", series_col="host", random_state=0).fit(history)
    assert det.scorer_.neighbors.reference.shape[0] == len(history)
    assert det.predict(frame(3000, seed=11)).mean() < 0.04
    tail = history.groupby("host").tail(100)
    assert (det.decision_function(history)[tail.index] < det.threshold_).mean() > 0.99


def test_knn_bounded_search_finds_the_brute_force_neighbours():
    """A few windows are searched with lower bounds from the reference's main directions: the same
    mean distances and nearest-window gaps as measuring every reference window, or None (brute force)
    when the bounds rule out too little: on isotropic noise, and allowed on a reference of a few rows
    or with no spread at all."""
    from anomaly_ae.models.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    t = np.arange(3000)
    rows = np.column_stack([np.sin(2 * np.pi * t / 200), np.cos(2 * np.pi * t / 90)]) + 0.05 * rng.normal(size=(3000, 2))
    windows = np.stack([rows[i:i + 16].reshape(-1) for i in range(len(rows) - 16)]).astype(np.float32)
    for reference in (windows, windows[:40], np.zeros((50, 32), dtype=np.float32)):
        knn = NearestNeighbors((32,), len(reference), k=5)
        knn.set_reference(torch.from_numpy(reference))
        queries = np.concatenate([windows[[7, 1500]] + 0.01, 3 + windows[[9]]]).astype(np.float32)
        d2 = ((queries[:2, None].astype(np.float64) - reference[None]) ** 2).sum(-1)  # float64 brute force
        nearest = d2.argmin(1)
        bounded = knn._bounded_distances(queries[:2])
        if bounded is None:  # allowed where the bounds rule out too little: not on the long reference
            assert len(reference) < len(windows)
            continue
        np.testing.assert_allclose(bounded[0], np.sqrt(np.sort(d2, 1)[:, :5]).mean(1), rtol=1e-4)
        np.testing.assert_allclose(bounded[1], (queries[:2] - reference[nearest]) ** 2, atol=1e-6)
    # near-ties that float32 products cannot order: the float64 measure decides, as brute force does
    crowded = (np.repeat(windows[1000:1200], 8, axis=0) + 1e-5 * rng.normal(size=(1600, 32))).astype(np.float32)
    knn = NearestNeighbors((32,), len(crowded), k=5)
    knn.set_reference(torch.from_numpy(crowded))
    queries = (crowded[[5, 20, 37]] + 1e-5 * rng.normal(size=(3, 32))).astype(np.float32)
    d2 = ((queries[:, None].astype(np.float64) - crowded[None]) ** 2).sum(-1)
    bounded = knn._bounded_distances(queries)
    assert bounded is not None
    np.testing.assert_allclose(bounded[0], np.sqrt(np.sort(d2, 1)[:, :5]).mean(1), rtol=1e-6)
    np.testing.assert_array_equal(bounded[1], ((queries - crowded[d2.argmin(1)]) ** 2).astype(np.float64))
    knn = NearestNeighbors((32,), len(windows), k=40)  # more neighbours than the rows ranked first
    knn.set_reference(torch.from_numpy(windows))
    d2 = ((windows[[7, 8]].astype(np.float64)[:, None] - windows[None]) ** 2).sum(-1)
    bounded = knn._bounded_distances(windows[[7, 8]])
    assert bounded is not None
    np.testing.assert_allclose(bounded[0], np.sqrt(np.sort(d2, 1)[:, :40]).mean(1), rtol=1e-6)
    noise = rng.normal(size=(2000, 32)).astype(np.float32)  # no main directions: the bounds rule out little
    knn = NearestNeighbors((32,), len(noise), k=5)
    knn.set_reference(torch.from_numpy(noise))
    assert knn._bounded_distances(rng.normal(size=(1, 32)).astype(np.float32)) is None


def test_calendar_covariates_are_points_on_the_unit_circle():
    times = pd.to_datetime(["2026-01-05 00:00", "2026-01-05 06:00", "2026-01-11 23:59", "2026-01-12 00:00"])
    cov = calendar_covariates(times.to_numpy(), ["time_of_day", "day_of_week"])
    assert cov.shape == (4, 4)
    np.testing.assert_allclose(cov[0], [0, 1, 0, 1], atol=1e-12)  # Monday 00:00: both at angle 0
    np.testing.assert_allclose(cov[1, :2], [1, 0], atol=1e-12)  # 06:00: a quarter turn of the day
    np.testing.assert_allclose(cov[2], cov[3], atol=1e-2)  # Sunday 23:59 lies next to Monday 00:00
    np.testing.assert_allclose(np.hypot(cov[:, 0::2], cov[:, 1::2]), 1.0)


def daily_traffic(days: int, seed: int, shift_hours: float = 0.0, shifted: slice = slice(0)) -> pd.DataFrame:
    """Hourly traffic high by day and low by night; `shifted` steps follow a clock `shift_hours` later."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2026-01-05", periods=24 * days, freq="h")
    hours = ts.hour.to_numpy().astype(float)
    hours[shifted] = (hours[shifted] + shift_hours) % 24
    level = np.cos(2 * np.pi * (hours - 14) / 24)
    return pd.DataFrame({"ts": ts, "requests": level + 0.05 * rng.normal(size=len(ts)),
                         "cpu": 0.8 * level + 0.05 * rng.normal(size=len(ts))})


def test_time_of_day_covariate_catches_a_night_pattern_by_day(tmp_path):
    history = daily_traffic(40, seed=0)
    # the last 3 days: 10:00-16:00 of day 2 follows the clock of 12 hours later (night traffic by day)
    test = daily_traffic(43, seed=1, shift_hours=12, shifted=slice(24 * 41 + 10, 24 * 41 + 16)).iloc[24 * 40:]
    incident = np.zeros(len(test), dtype=bool)
    incident[24 + 10 + 3: 24 + 16] = True  # a few steps in, so the 4-step window mostly holds shifted steps
    plain = SeriesDetector("knn", window=4, time_col="ts", random_state=0).fit(history)
    timed = SeriesDetector("knn", window=4, time_col="ts", covariates=["time_of_day"], random_state=0).fit(history)
    # every shifted row is a normal row of another hour: without the clock nothing is wrong
    assert not plain.predict(test)[incident].any()
    assert timed.predict(test)[incident].all()
    clean = np.ones(len(test), dtype=bool)
    clean[:3] = False  # warm-up: the first rows' windows are cut
    clean[24 + 10: 24 + 16 + 3] = False  # windows holding a shifted step
    assert timed.predict(test)[clean].mean() < 0.1
    top = timed.explain(test, top_k=1)
    assert (top["feature_1"].to_numpy()[incident] == "time_of_day").any()
    assert timed.feature_names_ == ["requests", "cpu", "time_of_day"] and timed.n_features_in_ == 2
    shares = timed.explain(test, top_k=None)
    assert list(shares.columns) == ["requests", "cpu", "time_of_day"]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    loaded = SeriesDetector.load(timed.save(tmp_path / "timed"))
    assert loaded.covariates == ("time_of_day",)  # JSON keeps no tuple or list: loaded as the default, a tuple
    np.testing.assert_allclose(loaded.decision_function(test), timed.decision_function(test), rtol=1e-12)


def test_covariates_need_a_time_column_and_known_names():
    history = daily_traffic(3, seed=0)
    with pytest.raises(InvalidParameterError, match="time column"):
        SeriesDetector("knn", covariates=["time_of_day"]).fit(history.drop(columns="ts"))
    with pytest.raises(ValueError, match="unknown covariate.*'hour'.*time_of_day, day_of_week"):
        SeriesDetector("knn", time_col="ts", covariates=["hour"]).fit(history)


def test_epoch_windows_reaches_the_training_loop(monkeypatch):
    import anomaly_ae.detector as detector_module

    seen = []
    real_train = detector_module.train

    def spy(model, x_train, x_val, config, **kwargs):
        seen.append(config.epoch_samples)
        return real_train(model, x_train, x_val, config, **kwargs)

    monkeypatch.setattr(detector_module, "train", spy)
    history = np.random.default_rng(0).normal(size=(300, 2))
    SeriesDetector("tcn", window=8, epochs=2, epoch_windows=64, random_state=0).fit(history)
    SeriesDetector("tcn", window=8, epochs=2, random_state=0).fit(history)
    assert seen == [64, None]


@pytest.mark.parametrize("bad", [0, -5, 2.5, "all"])
def test_epoch_windows_must_be_a_positive_count_or_none(bad):
    with pytest.raises(InvalidParameterError, match="epoch_windows must be a positive number"):
        SeriesDetector("tcn", epoch_windows=bad).fit(np.zeros((100, 2)))


def test_each_series_keeps_its_own_phase_on_the_grid():
    """Hosts scraped at different offsets within the step: each keeps its grid from training, so a
    host half a step off another, with a second of jitter, gets one step per reading (no shared
    steps, no gaps) in any later request, cut anywhere."""
    rng = np.random.default_rng(3)
    parts = []
    for host, offset, jitter in (("a", 0.0, 0.0), ("b", 150.0, 1.0)):
        x = wave(900, seed=len(parts))
        seconds = offset + 300.0 * np.arange(900) + rng.uniform(-jitter, jitter, 900)
        parts.append(pd.DataFrame({"ts": pd.Timestamp("2026-01-05") + pd.to_timedelta(seconds, unit="s"),
                                   "host": host, "cpu": x[:, 0], "load": x[:, 1]}))
    data = pd.concat(parts, ignore_index=True)
    history = data.groupby("host").head(600)
    det = SeriesDetector("pca", window=8, time_col="ts", series_col="host", random_state=0).fit(history)
    later = data.groupby("host").tail(300)
    for cut in (0, 1, 117):
        notes = det.score_frame(later.groupby("host").nth(slice(cut, None)))["notes"]
        assert not notes.str.contains("within the same|gap of", regex=True).any()
    assert det.framing_.origins_ns.keys() == {"a", "b"}


def test_recalibrate_uses_rows_with_a_whole_window_and_updates_the_alert_statistics():
    full = frame(3000)
    det = SeriesDetector("knn", window=16, time_col="ts", series_col="host", random_state=0).fit(
        full.groupby("host").head(1500))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # later normal history: no "rows it trained on" warning
        det.recalibrate(full.groupby("host").tail(1500))
    assert det.alert_stats_["held_out_steps"] == 2 * (1500 - 15)
    # the history it trained on, told by its timestamps however short it is
    with pytest.warns(UserWarning, match=r"2970 of the 2970 recalibrating rows lie within the training history "
                                         r"\(which ends at 20"):
        det.recalibrate(full.groupby("host").head(1500))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a window of context from the history before new rows is no reason
        det.recalibrate(pd.concat([full.groupby("host").head(1500).groupby("host").tail(15),
                                   full.groupby("host").tail(1500)]).sort_values(["host", "ts"]))
    one = full[full.host == full.host.iloc[0]].drop(columns=["ts", "host"]).to_numpy()
    plain = SeriesDetector("knn", window=16, random_state=0).fit(one[:1500])
    with pytest.warns(UserWarning, match="score lower than the held-out normal rows"):  # no times: the scores tell
        plain.recalibrate(one[:1500])
    det = SeriesDetector("knn", window=8, time_col="ts", series_col="host", random_state=0).fit(frame(600))
    recent = frame(300, seed=9)
    det.recalibrate(recent.assign(ts=recent.ts + pd.Timedelta(days=3)))  # after the 600 steps of history
    assert det.alert_stats_["held_out_steps"] == 2 * (300 - 7)  # warm-up rows do not calibrate
    assert len(det.calibration_.reference_scores) == 2 * (300 - 7) and "alerts_per_day" in det.alert_stats_
    with pytest.raises(DataError, match="has 7 steps of its series before it"):
        det.recalibrate(frame(5, seed=9))
    no_period = SeriesDetector("knn", window=8, time_col="ts", series_col="host", random_state=0).fit(frame(600))
    no_period.framing_.ends_ns = {}  # a model saved before the training period was kept: the scores tell
    assert not no_period.framing_.in_training_period(frame(600)).any()
    saved = det.framing_.to_dict()  # the training period is saved with the model
    assert saved["ends_ns"] == {"a": saved["origins_ns"]["a"] + 599 * 300 * 10**9,
                                "b": saved["origins_ns"]["b"] + 599 * 300 * 10**9}


def test_several_series_read_as_one_are_refused_and_repeated_steps_warned():
    both = frame(200).sort_values(["ts", "host"], kind="stable").drop(columns="host")  # no series column
    with pytest.raises(DataError, match="200 of 400 training rows share a time step.*series_col"):
        SeriesDetector("knn", window=8, time_col="ts").fit(both)
    with pytest.raises(DataError, match="not in time order at row 200; sort the rows by 'ts' first \\(or, if the "
                                        "rows hold several series one after another"):
        SeriesDetector("knn", window=8, time_col="ts").fit(frame(200).drop(columns="host"))
    with pytest.raises(DataError, match="series column 'cpu' gives 400 series for 400 rows"):
        SeriesDetector("knn", window=8, time_col="ts", series_col="cpu").fit(frame(200))  # a metric, not an id
    once = frame(200, hosts=("a",))
    sent_twice = pd.concat([once, once.iloc[[50, 90]]]).sort_values("ts", kind="stable")
    with pytest.warns(UserWarning, match="2 of 202 training rows share a time step"):
        SeriesDetector("knn", window=8, time_col="ts").fit(sent_twice)


def test_a_time_zone_on_one_side_only_is_noted_when_the_time_of_day_is_an_input(tmp_path):
    history = frame(400)
    det = SeriesDetector("knn", window=8, time_col="ts", series_col="host", covariates=["time_of_day"],
                         random_state=0).fit(history)
    later = frame(420).groupby("host").tail(20)
    zoned = later.assign(ts=later.ts.dt.tz_localize("America/New_York"))
    noted = det.score_frame(zoned)["notes"].str.contains("carry a time zone, which the training ones did not")
    assert noted.all() and not det.score_frame(later)["notes"].str.contains("time zone").any()
    # UTC said out loud is what naive timestamps are read as: no note
    utc = later.assign(ts=later.ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert not det.score_frame(utc)["notes"].str.contains("time zone").any()
    loaded = SeriesDetector.load(det.save(tmp_path / "model"))
    assert loaded.framing_.zone == "naive" and loaded.score_frame(zoned)["notes"].str.contains("time zone").all()
    without = SeriesDetector("knn", window=8, time_col="ts", series_col="host", random_state=0).fit(history)
    assert not without.score_frame(zoned)["notes"].str.contains("time zone").any()  # no calendar input: no shift


def test_dates_without_a_time_are_refused_by_a_model_with_a_shorter_step():
    det = SeriesDetector("pca", window=8, time_col="ts", series_col="host", random_state=0).fit(frame(400))
    dated = frame(20).assign(ts="2026-01-07")
    with pytest.raises(DataError, match="'ts' holds the date '2026-01-07' without a time of day, but the model's "
                                        "step is 300 s"):
        det.score_frame(dated)
    daily = frame(400, hosts=("a",)).assign(ts=[f"{d:%Y-%m-%d}" for d in pd.date_range("2020-01-01", periods=400)])
    model = SeriesDetector("pca", window=8, time_col="ts", random_state=0).fit(daily)  # a daily step: dates are enough
    assert np.isfinite(model.decision_function(daily.tail(30))).all()


def test_a_calibration_tail_shorter_than_the_historys_cycle_is_warned_of():
    """The threshold is set on each series' last 20%: 1500 five-minute steps hold five daily cycles, and their
    tail (300 steps) not quite one, so the rest of the day may be flagged far above target_fpr."""
    from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, make_series_telemetry

    def history(steps: int) -> pd.DataFrame:
        return make_series_telemetry(steps, 2, seed=3, anomalies=False).drop(columns=list(SERIES_LABEL_COLUMNS))

    with pytest.warns(UserWarning, match=r"last 285 steps .* less than one cycle of the history \(288 steps\)"):
        SeriesDetector("pca", window=16, time_col="ts", series_col="host").fit(history(1500))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SeriesDetector("pca", window=16, time_col="ts", series_col="host").fit(history(288 * 7))


def test_series_ids_that_read_the_same_as_text_are_refused_not_merged(fitted):
    """Ids are matched as text (a CSV's "7" is a JSON client's 7), so 7 and "7" in one input would have
    merged two hosts' windows; a model trained on "7" still scores 7."""
    test = frame(100, seed=5)
    test["host"] = pd.Series([7 if h == "a" else "7" for h in test["host"]], dtype=object)
    with pytest.raises(DataError, match="series ids 7 and '7' in 'host' read as one series"):
        fitted.decision_function(test)
    ints = frame(100, hosts=("a",), seed=5).assign(host=7)
    assert fitted.score_frame(ints)["notes"].str.contains("series '7' was not in the training data").all()


def test_explain_holds_the_top_features_only(fitted):
    """Not the series models' `alert` column, which score_frame also has."""
    out = fitted.explain(frame(60, seed=5), top_k=2)
    assert list(out.columns) == ["feature_1", "contribution_1", "feature_2", "contribution_2"]
