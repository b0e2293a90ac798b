"""The demo's series comparison (steps 9-10): how it lists labelled incidents and decides which a model
found. A flagged step counts only if the model does not flag it on the same rows without the anomaly,
so a false-alarm run that happens to overlap an incident is not a find."""

import numpy as np
import pandas as pd

from anomaly_ae.demo import incidents_found, labelled_incidents


def frame():
    ts = pd.date_range("2026-01-05", periods=6, freq="5min")
    kinds = {"host-0": ["none", "spike", "none", "stuck_value", "stuck_value", "none"],
             "host-1": ["stuck_value", "none", "none", "none", "decoupling", "decoupling"]}
    return pd.DataFrame([{"ts": t, "host": host, "anomaly_kind": kind}
                         for host, ks in kinds.items() for t, kind in zip(ts, ks)])


def test_incidents_are_listed_per_host_in_time_order():
    incidents = labelled_incidents(frame())
    ts = pd.date_range("2026-01-05", periods=6, freq="5min")
    assert incidents == [(ts[0], "host-1", "stuck_value", 6, 6), (ts[1], "host-0", "spike", 1, 1),
                         (ts[3], "host-0", "stuck_value", 3, 4), (ts[4], "host-1", "decoupling", 10, 11)]


def test_a_flag_that_is_there_without_the_anomaly_does_not_find_it():
    incidents = labelled_incidents(frame())
    flagged = np.zeros(12, dtype=bool)
    flagged[[4, 10, 11]] = True  # inside host-0's stuck value and host-1's decoupling
    without = np.zeros(12, dtype=bool)
    without[[9, 10, 11]] = True  # host-1's run of flags was there anyway: a false alarm
    assert incidents_found(incidents, flagged) == {0: False, 1: False, 2: True, 3: True}
    assert incidents_found(incidents, flagged, without) == {0: False, 1: False, 2: True, 3: False}
