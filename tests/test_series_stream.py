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
    assert contract.context_rows == WINDOW - 1 + 5 - 1 == 11
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
    context sent, their flags must not fire an alert whose cooldown would silence a real one among the new rows.
    With less context than asked, the request holds the series' start, and every row counts (as offline)."""
    data = one_series(12)
    flags = np.zeros(12, dtype=bool)
    flags[:WINDOW - 1] = True      # cut windows: would alert at row 2 and stay quiet for 12 steps
    flags[[9, 10, 11]] = True      # 3 of the last 5 steps: an alert at row 11
    result = SimpleNamespace(is_anomaly=flags)
    full_context = select_new_rows(detector.inference_, data, result, 1)  # 11 rows before the new one
    assert full_context.rows.tolist() == [11] and full_context.alerts.tolist() == [True]
    series_start = select_new_rows(detector.inference_, data, result, 2)  # 10 before: the series' start
    assert series_start.alerts.tolist() == [False, False]
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
