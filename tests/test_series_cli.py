"""The CLI with series models: train --time-col/--series-col/--window, chunked score equal to one pass,
evaluate with event metrics and one plot per series."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from anomaly_ae.cli import app
from anomaly_ae.data.synthetic_series import make_series_telemetry, split_history


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("series_cli")
    history, rest = split_history(make_series_telemetry(1500, 2, seed=3))
    history.drop(columns=["is_anomaly", "anomaly_kind"]).to_csv(root / "history.csv", index=False)
    rest.drop(columns=["anomaly_kind"]).to_csv(root / "rest.csv", index=False)
    result = CliRunner().invoke(app, ["train", str(root / "history.csv"), "--time-col", "ts", "--series-col", "host",
                                      "--window", "16", "--model", "pca", "-o", str(root / "model"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "window 16 steps" in result.output and "alert rule fired" in result.output
    return root


def test_chunked_scoring_equals_one_pass(files):
    runner = CliRunner()
    for name, chunk in (("tiny", "7"), ("small", "333"), ("one", "1000000")):
        result = runner.invoke(app, ["score", str(files / "model"), str(files / "rest.csv"), "-o",
                                     str(files / f"{name}.csv"), "--chunk-rows", chunk,
                                     "--keep-cols", "ts,host,is_anomaly"])
        assert result.exit_code == 0, result.output
    one = pd.read_csv(files / "one.csv")
    assert one["alert"].sum() >= 5  # incidents long enough to re-alert after the cooldown
    for name in ("tiny", "small"):
        chunked = pd.read_csv(files / f"{name}.csv")
        assert len(chunked) == len(pd.read_csv(files / "rest.csv"))
        np.testing.assert_array_equal(chunked["score"].to_numpy(), one["score"].to_numpy())
        assert (chunked["notes"].fillna("") == one["notes"].fillna("")).all()
        # the alert rule's state (recent flags, cooldown) crosses chunk boundaries too
        np.testing.assert_array_equal(chunked["alert"].to_numpy(), one["alert"].to_numpy())
        assert {"alert", "ts", "host", "input_is_anomaly"} <= set(chunked.columns)


def test_evaluate_reports_events_and_plots_each_series(files):
    out = files / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(files / "model"), str(files / "rest.csv"),
                                      "--label-col", "is_anomaly", "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    events = metrics["events_by_flagged_step"]
    assert events["n_events"] == 14  # 7 kinds on each of 2 hosts
    assert 0 <= events["events_found"] <= events["n_events"]
    assert sorted(p.name for p in out.glob("*.png")) == ["series_000_host-0.png", "series_001_host-1.png"]


def test_bad_window_and_augment_are_refused(files):
    result = CliRunner().invoke(app, ["train", str(files / "history.csv"), "--time-col", "ts", "--window", "ten",
                                      "-o", str(files / "x")])
    assert result.exit_code != 0 and "--window takes a number of steps or 'auto'" in result.output
    result = CliRunner().invoke(app, ["evaluate", str(files / "model"), str(files / "rest.csv"),
                                      "--synthetic-anomalies"])
    assert result.exit_code == 2 and "for a series model, pass a labelled series with --label-col" in result.output


def test_covariates_train_a_model_that_scores_by_the_clock_and_bad_ones_get_one_line(files):
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(files / "history.csv"), "--time-col", "ts", "--series-col", "host",
                                 "--window", "8", "--model", "knn", "--covariates", "time_of_day,day_of_week",
                                 "-o", str(files / "timed"), "--no-progress"])
    assert result.exit_code == 0, result.output
    config = json.loads((files / "timed" / "config.json").read_text())
    assert config["series"]["framing"]["covariates"] == ["time_of_day", "day_of_week"]
    for name, chunk in (("timed_small", "500"), ("timed_one", "1000000")):
        result = runner.invoke(app, ["score", str(files / "timed"), str(files / "rest.csv"), "-o",
                                     str(files / f"{name}.csv"), "--chunk-rows", chunk, "--keep-cols", "is_anomaly"])
        assert result.exit_code == 0, result.output
    small, one = (pd.read_csv(files / f"{name}.csv")["score"].to_numpy() for name in ("timed_small", "timed_one"))
    assert np.isfinite(small).all()
    np.testing.assert_allclose(small, one, rtol=1e-6)  # the clock per chunk as in one pass; knn rounds
    for args, message in ((["--covariates", "hour"], "unknown covariate(s) 'hour'; choose from time_of_day"),
                          (["--model", "knn", "--covariates", "time_of_day", "--time-col", "ts", "--model",
                            "nonsense"], "unknown model 'nonsense'")):
        result = runner.invoke(app, ["train", str(files / "history.csv"), "--time-col", "ts", *args,
                                     "-o", str(files / "bad")])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def _in_chunks_and_whole(model, data, chunk_rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`anomaly-ae score` of `data` in chunks of `chunk_rows`, and in one chunk."""
    out = []
    for chunk in (chunk_rows, 1_000_000):
        target = data.with_name(f"{data.stem}-scored-{chunk}.csv")
        result = CliRunner().invoke(app, ["score", str(model), str(data), "-o", str(target), "--chunk-rows", str(chunk)])
        assert result.exit_code == 0, result.output
        out.append(pd.read_csv(target))
    return out[0], out[1]


def test_chunked_scoring_equals_one_pass_when_readings_share_steps(files, tmp_path):
    """Irregular sampling (2-minute readings for a 5-minute model): several rows share a grid step.
    The grid is anchored at a training timestamp, so every chunk sees the one-pass grid, and the
    carried context covers window - 1 steps, not rows."""
    rest = pd.read_csv(files / "rest.csv").drop(columns=["is_anomaly"])
    parts = []
    for _, rows in rest.groupby("host"):
        rows = rows.copy()
        start = pd.Timestamp(rows["ts"].iloc[0])
        rows["ts"] = [(start + pd.Timedelta(minutes=2 * i + (i % 3) * 0.25)).isoformat() for i in range(len(rows))]
        parts.append(rows)
    (tmp_path / "irregular.csv").write_text(pd.concat(parts).to_csv(index=False))
    small, one = _in_chunks_and_whole(files / "model", tmp_path / "irregular.csv", 173)
    np.testing.assert_array_equal(small["score"].to_numpy(), one["score"].to_numpy())
    assert (small["notes"].fillna("") == one["notes"].fillna("")).all()
    assert one["notes"].fillna("").str.contains("within the same 5 min step").sum() > len(one) // 4


def test_a_new_series_with_jittered_times_scores_in_chunks_as_in_one_pass(files, tmp_path):
    """A series the model never saw has its grid anchored at its first row: a later chunk anchored it at
    its first carried row, and times jittered around the step rounded to other steps there."""
    rest = pd.read_csv(files / "rest.csv").drop(columns=["is_anomaly"])
    rows = rest[rest["host"] == "host-0"].head(400).copy()
    jitter = np.random.default_rng(0).integers(-140, 141, len(rows))  # seconds, around a 5-minute step
    rows["ts"] = [(pd.Timestamp(t) + pd.Timedelta(seconds=int(j))).isoformat() for t, j in zip(rows["ts"], jitter)]
    rows["host"] = "host-new"
    rows.to_csv(tmp_path / "new.csv", index=False)
    small, one = _in_chunks_and_whole(files / "model", tmp_path / "new.csv", 100)
    assert one["notes"].str.contains("was not in the training data").all()
    assert one["notes"].str.contains("within the same 5 min step").any()  # the jitter moves rows across steps
    np.testing.assert_array_equal(small["score"].to_numpy(), one["score"].to_numpy())
    assert (small["notes"] == one["notes"]).all()


def test_series_ids_with_leading_zeros_are_the_same_series_when_scored_in_chunks(files, tmp_path):
    runner = CliRunner()
    padded = {"host-0": "007", "host-1": "010"}  # "010" read as a number would be series 10, never seen
    for name in ("history", "rest"):
        frame = pd.read_csv(files / f"{name}.csv")
        frame.assign(host=frame["host"].map(padded)).to_csv(tmp_path / f"{name}.csv", index=False)
    result = runner.invoke(app, ["train", str(tmp_path / "history.csv"), "--time-col", "ts", "--series-col", "host",
                                 "--window", "16", "--model", "pca", "-o", str(tmp_path / "model"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "model" / "config.json").read_text())["series"]["framing"]["known_series"] == \
        ["007", "010"]
    for name, chunk in (("small", "100"), ("one", "1000000")):
        result = runner.invoke(app, ["score", str(tmp_path / "model"), str(tmp_path / "rest.csv"), "-o",
                                     str(tmp_path / f"{name}.csv"), "--chunk-rows", chunk,
                                     "--keep-cols", "host,is_anomaly"])
        assert result.exit_code == 0, result.output
    small, one = (pd.read_csv(tmp_path / f"{name}.csv", dtype={"host": str}) for name in ("small", "one"))
    assert set(small["host"]) == {"007", "010"}
    assert not small["notes"].fillna("").str.contains("was not in the training data").any()
    np.testing.assert_array_equal(small["score"].to_numpy(), one["score"].to_numpy())


def test_rows_without_the_time_and_series_columns_are_told_the_model_is_a_series_model(files, tmp_path):
    rows = pd.read_csv(files / "rest.csv").drop(columns=["ts", "host", "is_anomaly"]).head(20)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = CliRunner().invoke(app, ["score", str(files / "model"), str(tmp_path / "rows.csv"), "-o",
                                      str(tmp_path / "out.csv")])
    assert result.exit_code == 2 and "is a series model, which reads 'ts' and 'host'" in result.output \
        and "lacks 'ts', 'host'" in " ".join(result.output.split()), result.output


def test_errors_in_a_later_chunk_name_the_files_row(files, tmp_path):
    """A chunk is scored after the rows carried from the one before: an error's row counted from there."""
    rest = pd.read_csv(files / "rest.csv").drop(columns=["is_anomaly"])
    host = rest[rest["host"] == "host-0"].reset_index(drop=True)
    host.loc[250, "cpu_util_pct"] = np.nan
    host.to_csv(tmp_path / "bad.csv", index=False)
    for chunk in ("100", "1000000"):
        result = CliRunner().invoke(app, ["score", str(files / "model"), str(tmp_path / "bad.csv"), "-o",
                                          str(tmp_path / "out.csv"), "--chunk-rows", chunk])
        assert result.exit_code == 2 and "in rows [250]" in result.output, result.output


def test_a_nullable_label_with_a_missing_value_is_refused_with_its_row():
    from anomaly_ae.evaluation import evaluate_scores
    from anomaly_ae.exceptions import DataError

    labels = pd.array([True, False, None, True], dtype="boolean")  # a Parquet boolean column with a null
    with pytest.raises(DataError, match="labels must be 0 .normal. or 1 .anomaly.; row 2 holds <NA>"):
        evaluate_scores(np.arange(4.0), labels, 1.0)


def test_an_alert_just_after_a_short_incident_finds_it():
    """A k-of-n rule fires up to n - 1 steps after the flag that starts it: with 3 of 5, a 2-step incident
    flagged from its first step alerts the step after it ends, which counted as a miss and a false alarm."""
    from anomaly_ae.evaluation import event_metrics

    labels = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    alerts = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)  # and one far after: false
    by_alert = event_metrics(alerts, labels, grace=4)
    assert (by_alert.events_found, by_alert.false_alarm_runs, by_alert.event_precision) == (1, 1, 0.5)
    assert (event_metrics(alerts, labels).events_found, event_metrics(alerts, labels).false_alarm_runs) == (0, 2)


def test_the_alert_rule_and_max_gap_are_set_from_the_command_line(files, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(files / "history.csv"), "--time-col", "ts", "--series-col", "host",
                                 "--window", "16", "--model", "pca", "--alert-min-steps", "2", "--alert-within", "4",
                                 "--alert-cooldown", "6", "--max-gap", "1", "-o", str(tmp_path / "m"), "--no-progress"])
    assert result.exit_code == 0, result.output
    from anomaly_ae import SeriesDetector

    loaded = SeriesDetector.load(tmp_path / "m")
    assert loaded.alert_rule_.to_dict() == {"min_steps": 2, "within": 4, "cooldown": 6} and loaded.framing_.max_gap == 1
    bad = runner.invoke(app, ["train", str(files / "history.csv"), "--time-col", "ts", "--alert-min-steps", "6",
                              "-o", str(tmp_path / "x"), "--no-progress"])
    assert bad.exit_code == 2 and "1 <= alert_min_steps <= alert_within, got 6 of 5" in bad.output, bad.output
    rows = runner.invoke(app, ["train", str(files / "history.csv"), "--alert-cooldown", "3", "-o", str(tmp_path / "y")])
    assert rows.exit_code == 2 and "--alert-cooldown apply to series models" in rows.output, rows.output


def test_evaluate_on_normal_history_alone_reports_its_false_alarms(files, tmp_path):
    """All labels 0: the row metrics need both kinds, but the flags and alerts on normal history are the
    answer to 'how noisy is it'; the advice to use --synthetic-anomalies led to a refusal for series."""
    rest = pd.read_csv(files / "rest.csv")
    rest.assign(is_anomaly=0).to_csv(tmp_path / "normal.csv", index=False)
    result = CliRunner().invoke(app, ["evaluate", str(files / "model"), str(tmp_path / "normal.csv"),
                                      "--label-col", "is_anomaly", "--out-dir", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "every row is labelled normal" in " ".join(result.output.split())
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["rows"]["n_anomalous"] == 0 and metrics["rows"]["flagged_share"] > 0
    events = metrics["events_by_flagged_step"]
    assert events["n_events"] == 0 and events["false_alarm_runs"] == events["flagged_runs"] > 0
    assert events["event_recall"] is None  # undefined without a labelled range: null in strict JSON
