"""series_stream: which rows of a request are new, and how the alert rule counts the context rows."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from anomaly_ae import SeriesDetector
from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, make_series_telemetry
from anomaly_ae.series_stream import StreamContract, select_new_rows

WINDOW = 8


@pytest.fixture(scope="module")
def detector():
    history = make_series_telemetry(300, 2, seed=0, anomalies=False).drop(columns=list(SERIES_LABEL_COLUMNS))
    return SeriesDetector("pca", window=WINDOW, time_col="ts", series_col="host", alert_min_steps=3,
                          alert_within=5, alert_cooldown=12).fit(history)


def one_series(n: int, host: str = "host-0", start: str = "2026-01-09") -> pd.DataFrame:
    frame = make_series_telemetry(300, 2, seed=3, anomalies=False, start=start)
    return frame[frame.host == host].drop(columns=list(SERIES_LABEL_COLUMNS)).head(n).reset_index(drop=True)


def test_contract(detector):
    contract = StreamContract.of(detector.inference_)
    assert contract.context_rows == WINDOW - 1 + 5 - 1 + 12 == 23  # a window, and the alert rule's lookback
    assert contract.to_dict()["step_seconds"] == 300.0 and contract.to_dict()["n_known_series"] == 2


def test_the_last_rows_of_each_series_in_input_order(detector):
    a, b = one_series(6, "host-0"), one_series(4, "host-1")
    data = pd.concat([a.iloc[:3], b.iloc[:2], a.iloc[3:], b.iloc[2:]], ignore_index=True)  # interleaved
    result = detector.inference_.score(data)
    picked = select_new_rows(detector.inference_, data, result, 2)
    assert picked.rows.tolist() == [6, 7, 8, 9] and picked.n_context == 6
    assert picked.series.tolist() == ["host-0", "host-0", "host-1", "host-1"]
    everything = select_new_rows(detector.inference_, data, result, None)
    assert everything.rows.tolist() == list(range(10)) and everything.n_context == 0
    np.testing.assert_array_equal(everything.alerts, result.alerts)


def test_cut_windows_in_the_context_do_not_count_for_alerts(detector):
    """Context rows whose window reaches back before the request were scored on a cut window: with the full
    context sent they lie before the alert rule's lookback, so their flags cannot change a new row's alert;
    the flags within it decide it as offline (an incident already alerted on stays quiet). With less
    context than asked, the request holds the series' start, and every row counts (as offline)."""
    data = one_series(24)
    flags = np.zeros(24, dtype=bool)
    flags[:WINDOW - 1] = True      # cut windows: 3 of 5 would hold at rows 2-8
    flags[[21, 22, 23]] = True     # 3 of the last 5 steps: an alert at row 23
    result = SimpleNamespace(is_anomaly=flags)
    full_context = select_new_rows(detector.inference_, data, result, 1)  # 23 rows before the new one
    assert full_context.rows.tolist() == [23] and full_context.alerts.tolist() == [True]
    flags[[12, 13, 14]] = True     # the same incident alerted at row 14, 9 steps before: no second page
    assert select_new_rows(detector.inference_, data, result, 1).alerts.tolist() == [False]
    assert not detector.alert_rule_.apply(flags[WINDOW - 1:])[-1]  # as offline, over the counted rows
    flags[[12, 13, 14]] = False
    flags[[19, 20]] = True         # 3 of 5 from row 19 (the alert) to 23: one incident, one page
    series_start = select_new_rows(detector.inference_, data, result, 5)  # 19 before: the series' start
    np.testing.assert_array_equal(series_start.alerts, detector.alert_rule_.apply(flags)[19:])
    assert series_start.alerts.tolist() == [False, False, True, False, False]
    np.testing.assert_array_equal(select_new_rows(detector.inference_, data, result, None).alerts,
                                  detector.alert_rule_.apply(flags))


def test_a_restart_after_a_long_gap_counts(detector):
    """After a gap longer than max_gap the window restarts: those rows are warm-up offline too, and count."""
    data = one_series(40)
    data = pd.concat([data.iloc[:12], data.iloc[30:]], ignore_index=True)  # 18 steps missing before row 12
    flags = np.zeros(len(data), dtype=bool)
    flags[[12, 13, 14]] = True  # the first rows after the restart
    result = SimpleNamespace(is_anomaly=flags)
    picked = select_new_rows(detector.inference_, data, result, len(data) - 12)
    assert picked.alerts[:3].tolist() == [False, False, True]


def test_score_new_rows_scores_only_what_the_new_rows_need(detector, scored_windows):
    """score_new_rows gives the returned rows the scores, flags, severity, notes, explanations and alerts
    of a full pass (path.score then select_new_rows), for requests cut anywhere in a stream with anomalies
    (cooldown 12), with the full context or less; and scores only the new rows' windows and the
    `within - 1` rows before them, unless a new row may alert (k of n flagged): then the rule's lookback."""
    from anomaly_ae.series_stream import score_new_rows

    stream = make_series_telemetry(1500, 2, seed=1).drop(columns=list(SERIES_LABEL_COLUMNS))
    stream = stream.groupby("host").nth(slice(600, 1100)).reset_index(drop=True)
    path = detector.inference_
    scored = scored_windows
    rng = np.random.default_rng(0)
    full_passes = quiet = 0
    for end in range(20, 500, 7):
        context, score_last = int(rng.choice([23, 23, 40, 5])), int(rng.choice([1, 1, 3]))
        part = stream.groupby("host").nth(slice(max(0, end - context - score_last), end)).reset_index(drop=True)
        full = path.score(part, top_k=2)
        expected = select_new_rows(path, part, full, score_last)
        scored.clear()
        result, picked = score_new_rows(path, part, score_last, top_k=2)
        assert picked.rows.tolist() == expected.rows.tolist() and picked.n_context == expected.n_context
        assert picked.alerts.tolist() == expected.alerts.tolist()
        rows = expected.rows
        np.testing.assert_allclose(result.scores, full.scores[rows], rtol=1e-6)
        assert result.is_anomaly.tolist() == full.is_anomaly[rows].tolist()
        assert result.severity.tolist() == full.severity[rows].tolist()
        assert result.top_features == [full.top_features[i] for i in rows]
        assert (result.notes or [[]] * len(rows)) == [(full.notes or [[]] * len(part))[i] for i in rows]
        np.testing.assert_array_equal(result.model_input, full.model_input[rows])
        if len(scored) == 1:
            assert scored[0] <= 2 * (score_last + 4)  # per series: the new rows and within - 1 before them
            quiet += 1
        else:  # then the rest of the lookback: cooldown (12) more rows per series, not the whole context
            assert len(scored) == 2 and scored[1] <= 2 * 12
            full_passes += 1
    assert quiet >= 5 and full_passes > 20  # both kinds of request occur (the stream is mostly flagged)
