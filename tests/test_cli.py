"""CLI round trip on a temporary directory: train, score (chunked, atomic), evaluate; clean errors."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from anomaly_ae.cli import app
from anomaly_ae.data.io import read_table, write_table
from anomaly_ae.data.synthetic import make_telemetry

runner = CliRunner()


def test_train_score_evaluate_round_trip(tmp_path):
    train = make_telemetry(1500, 0.0, seed=1)
    test = make_telemetry(600, 0.1, seed=2)
    write_table(train, tmp_path / "train.csv")
    write_table(test, tmp_path / "test.parquet")
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "model"),
                                 "--model", "ae", "--epochs", "60", "--drop-cols", "is_anomaly,anomaly_kind",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model" / "manifest.json").exists()

    result = runner.invoke(app, ["score", str(tmp_path / "model"), str(tmp_path / "test.parquet"),
                                 "-o", str(tmp_path / "scored.csv"), "--chunk-rows", "128",
                                 "--keep-cols", "is_anomaly,anomaly_kind"])
    assert result.exit_code == 0, result.output
    scored = read_table(tmp_path / "scored.csv")
    assert len(scored) == 600
    assert {"score", "p_value", "is_anomaly", "severity", "feature_1", "anomaly_kind", "input_is_anomaly"} <= set(scored.columns)
    assert "scored 600 rows" in result.output

    result = runner.invoke(app, ["evaluate", str(tmp_path / "model"), str(tmp_path / "test.parquet"),
                                 "--label-col", "is_anomaly", "--drop-cols", "anomaly_kind",
                                 "--out-dir", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = pd.read_json(tmp_path / "eval" / "metrics.json", typ="series")
    assert metrics["auroc"] > 0.95
    assert {"score_histogram.png", "roc.png", "pr.png"} <= {p.name for p in (tmp_path / "eval").iterdir()}


def test_errors_are_one_line_without_traceback(tmp_path):
    write_table(make_telemetry(300, seed=1), tmp_path / "train.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output

    (tmp_path / "empty.csv").write_text("")
    result = runner.invoke(app, ["train", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "no rows" in result.output

    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"),
                                 "--drop-cols", "nope"])
    assert result.exit_code == 2 and "nope" in result.output

    result = runner.invoke(app, ["score", str(tmp_path / "no-model"), str(tmp_path / "train.csv"),
                                 "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 2 and "no saved model" in result.output


def test_scoring_refuses_to_write_over_its_input_and_bad_options_are_one_line(tmp_path):
    train = make_telemetry(300, seed=1).drop(columns=["is_anomaly", "anomaly_kind"])
    write_table(train, tmp_path / "train.csv")
    assert runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"),
                               "--model", "pca", "--no-progress"]).exit_code == 0
    before = (tmp_path / "train.csv").read_bytes()
    for output in (tmp_path / "train.csv", tmp_path / "." / "train.csv"):
        result = runner.invoke(app, ["score", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o", str(output)])
        assert result.exit_code == 2 and "is the input file" in result.output
    assert (tmp_path / "train.csv").read_bytes() == before
    result = runner.invoke(app, ["score", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o",
                                 str(tmp_path / "out.csv"), "--chunk-rows", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output and not (tmp_path / "out.csv").exists()
    labelled = train.assign(label=["x"] + [0] * (len(train) - 1))
    write_table(labelled, tmp_path / "labelled.csv")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "m"), str(tmp_path / "labelled.csv"),
                                 "--label-col", "label"])
    assert result.exit_code == 2 and "row 0 holds 'x'" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "m"), str(tmp_path / "train.csv"), "--synthetic-anomalies",
                                 "--out-dir", str(tmp_path / "train.csv")])
    assert result.exit_code == 2 and "is a file; give a directory" in result.output
    # outputs under a file, or where nothing can be created: one line naming the cause, before any work
    under_a_file = f"'{tmp_path / 'train.csv'}' is a file"
    for command, message in ((["score", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o",
                               str(tmp_path / "train.csv" / "out.csv")], under_a_file),
                             (["score", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o", "/proc/out.csv"],
                              "cannot write '/proc/out.csv'"),
                             (["evaluate", str(tmp_path / "m"), str(tmp_path / "train.csv"), "--synthetic-anomalies",
                               "--out-dir", str(tmp_path / "train.csv" / "ev")], under_a_file),
                             (["score", str(tmp_path / "m"), str(tmp_path / "train.csv"), "-o",
                               str(tmp_path / "out.csv"), "--top-k", "-1"], "greater than or equal to 0")):
        result = runner.invoke(app, command)
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert (tmp_path / "train.csv").read_bytes() == before


def test_failed_scoring_leaves_the_old_output_untouched(tmp_path):
    train = make_telemetry(400, seed=1).drop(columns=["is_anomaly", "anomaly_kind"])
    write_table(train, tmp_path / "train.csv")
    assert runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"),
                               "--model", "pca", "--no-progress"]).exit_code == 0
    (tmp_path / "out.csv").write_text("old results\n")
    bad = train.copy()
    bad["cpu_util_pct"] = bad["cpu_util_pct"].astype(object)
    bad.loc[350, "cpu_util_pct"] = "oops"  # in the third chunk: earlier chunks were already written
    write_table(bad, tmp_path / "bad.csv")
    result = runner.invoke(app, ["score", str(tmp_path / "m"), str(tmp_path / "bad.csv"), "-o",
                                 str(tmp_path / "out.csv"), "--chunk-rows", "100"])
    assert result.exit_code == 2 and "rows [350]" in result.output
    assert (tmp_path / "out.csv").read_text() == "old results\n"


def test_train_with_augmentation_records_provenance_and_synthetic_evaluation(tmp_path):
    import json

    write_table(make_telemetry(800, seed=1).drop(columns=["is_anomaly", "anomaly_kind"]), tmp_path / "n.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "n.csv"), "--out", str(tmp_path / "m"), "--model", "pca",
                                 "--augment", "cvae", "--augment-rows", "120", "--balance-col", "mode",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    provenance = json.loads((tmp_path / "m" / "config.json").read_text())["training_metadata"]["augmentation"]
    assert provenance["generator"] == "cvae" and provenance["rows_synthetic"] == 120
    assert provenance["balance_col"] == "mode" and len(provenance["generator_sha256"]) == 64
    assert provenance["calibrated_on"] == "real rows only"

    result = runner.invoke(app, ["evaluate", str(tmp_path / "m"), str(tmp_path / "n.csv"), "--synthetic-anomalies",
                                 "--n-per-kind", "40", "--out-dir", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    rates = pd.read_csv(tmp_path / "ev" / "synthetic_anomalies.csv")
    assert {"out_of_range", "swapped_category"} <= set(rates.iloc[:, 0])

    result = runner.invoke(app, ["evaluate", str(tmp_path / "m"), str(tmp_path / "n.csv")])
    assert result.exit_code == 2 and "--label-col" in result.output


def test_train_warns_of_an_identifier_column_in_one_line(tmp_path):
    train = make_telemetry(300, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"])
    write_table(train.assign(request_id=[f"r{i}" for i in range(300)]), tmp_path / "train.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "model"),
                                 "--model", "pca", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning: column 'request_id' has 300 distinct values in 300 rows" in " ".join(result.output.split())
    assert "UserWarning" not in result.output


def test_error_text_is_printed_as_it_is_not_as_rich_markup(tmp_path):
    train = make_telemetry(300, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"])
    write_table(train, tmp_path / "train.csv")
    assert runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "model"),
                               "--model", "pca", "--no-progress"]).exit_code == 0
    write_table(train.head(5).assign(**{"[red]": 1.0}), tmp_path / "extra.csv")
    result = runner.invoke(app, ["score", str(tmp_path / "model"), str(tmp_path / "extra.csv"),
                                 "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 2 and "not trained on: [red]; name them in --keep-cols" in result.output, result.output


def test_recalibrate_saves_the_model_with_a_new_threshold(tmp_path):
    write_table(make_telemetry(1500, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"]), tmp_path / "train.csv")
    recent = make_telemetry(800, 0.0, seed=4).drop(columns=["is_anomaly", "anomaly_kind"])
    recent["latency_ms"] *= 1.3
    write_table(recent, tmp_path / "recent.csv")
    assert runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "model"),
                               "--model", "pca", "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["recalibrate", str(tmp_path / "model"), str(tmp_path / "recent.csv"),
                                 "-o", str(tmp_path / "recalibrated"), "--target-fpr", "0.02"])
    assert result.exit_code == 0, result.output
    assert "recalibrated on 800 rows" in result.output and "for target FPR 0.02" in result.output
    from anomaly_ae import Detector

    old, new = Detector.load(tmp_path / "model"), Detector.load(tmp_path / "recalibrated")
    assert new.target_fpr == 0.02 and new.threshold_ != old.threshold_
    result = runner.invoke(app, ["recalibrate", str(tmp_path / "model"), str(tmp_path / "recent.csv"),
                                 "-o", str(tmp_path / "recent.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.output and "not a directory" in result.output


def test_column_options_that_contradict_each_other_or_the_file_are_one_line(tmp_path):
    frame = make_telemetry(300, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"])
    frame.insert(0, "ts", pd.date_range("2026-01-05", periods=len(frame), freq="5min"))
    write_table(frame, tmp_path / "history.csv")
    base = ["train", str(tmp_path / "history.csv"), "--out", str(tmp_path / "model"), "--no-progress"]
    result = runner.invoke(app, [*base, "--time-col", "ts", "--drop-cols", "ts"])
    assert result.exit_code == 2 and "--drop-cols removes 'ts', the --time-col column" in result.output
    result = runner.invoke(app, [*base, "--drop-cols", ",".join(frame.columns)])
    assert result.exit_code == 2 and "--drop-cols names every column" in result.output
    result = runner.invoke(app, [*base, "--model", "pca"])  # a row model: the timestamps are no feature
    assert result.exit_code == 2 and "column 'ts' holds times" in result.output


def test_balance_col_without_augment_and_generate_without_epochs_are_one_line(tmp_path):
    write_table(make_telemetry(300, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"]), tmp_path / "t.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "t.csv"), "--out", str(tmp_path / "m"),
                                 "--balance-col", "mode"])
    assert result.exit_code == 2 and "--balance-col chooses which rows --augment adds" in result.output
    result = runner.invoke(app, ["generate", "train", str(tmp_path / "t.csv"), "-o", str(tmp_path / "g"),
                                 "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs" in result.output and not (tmp_path / "g").exists()


def test_bad_model_options_fail_before_the_data_is_read(tmp_path):
    missing = str(tmp_path / "not-there.csv")  # never opened: the options are checked first
    result = runner.invoke(app, ["train", missing, "--out", str(tmp_path / "m"), "--model", "nosuch"])
    assert result.exit_code == 2 and "unknown model 'nosuch'" in result.output
    result = runner.invoke(app, ["train", missing, "--out", str(tmp_path / "m"), "--time-col", "ts", "--window", "0"])
    assert result.exit_code == 2 and "window must be a positive number of steps" in result.output


def test_codes_with_leading_zeros_keep_them_from_training_to_the_scored_output(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    train = make_telemetry(400, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"])
    # zip codes are categories; "tier" holds text and numbers, so it is a category whose "2" is not 2.0
    train = train.assign(zip=rng.choice(["01234", "02134", "10001"], 400), tier=rng.choice(["gold", "1", "2"], 400))
    train.loc[::50, "tier"] = None
    write_table(train.assign(account=[f"{i:06d}" for i in range(400)]), tmp_path / "train.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "train.csv"), "--out", str(tmp_path / "model"),
                                 "--model", "pca", "--drop-cols", "account", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "'zip' (e.g. '0" in result.output and "learned as categories" in result.output
    from anomaly_ae import Detector

    columns = {c.name: c for c in Detector.load(tmp_path / "model").schema_.columns}
    assert columns["zip"].categories == ("01234", "02134", "10001") and columns["tier"].kind == "categorical"
    # a scoring file whose chunks hold only numbers in these columns, one of them missing
    test = train.head(6).assign(account=[f"{i:06d}" for i in range(6)], zip=["01234"] * 3 + ["10001"] * 3,
                                tier=["1", "2", "1", "2", "1", "2"])
    test.loc[5, "tier"] = None
    write_table(test, tmp_path / "test.csv")
    result = runner.invoke(app, ["score", str(tmp_path / "model"), str(tmp_path / "test.csv"),
                                 "-o", str(tmp_path / "scored.csv"), "--chunk-rows", "3", "--keep-cols", "account"])
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(tmp_path / "scored.csv", dtype=str, keep_default_na=False)
    assert scored["account"].tolist() == ["000000", "000001", "000002", "000003", "000004", "000005"]
    assert not scored["notes"].str.contains("unseen").any(), scored["notes"].tolist()


def test_evaluate_says_which_of_label_col_and_synthetic_anomalies_is_wrong(tmp_path):
    write_table(make_telemetry(50, 0.0, seed=1), tmp_path / "rows.csv")
    for extra, says in (([], "to say which the file holds"), (["--label-col", "is_anomaly", "--synthetic-anomalies"],
                                                               "not both")):
        result = runner.invoke(app, ["evaluate", str(tmp_path / "model"), str(tmp_path / "rows.csv"), *extra])
        assert result.exit_code == 2 and says in " ".join(result.output.split()), result.output


def test_drop_cols_are_remembered_so_files_like_the_training_one_score_evaluate_and_recalibrate(tmp_path):
    train = make_telemetry(800, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"])
    write_table(train.assign(host_id=range(800)), tmp_path / "normal.csv")
    labelled = make_telemetry(400, 0.1, seed=2).drop(columns=["anomaly_kind"])
    write_table(labelled.assign(host_id=range(400)), tmp_path / "labelled.csv")
    assert runner.invoke(app, ["train", str(tmp_path / "normal.csv"), "--out", str(tmp_path / "model"), "--model",
                               "pca", "--drop-cols", "host_id", "--no-progress"]).exit_code == 0
    model = str(tmp_path / "model")
    result = runner.invoke(app, ["score", model, str(tmp_path / "labelled.csv"), "-o", str(tmp_path / "s.csv"),
                                 "--keep-cols", "is_anomaly"])
    assert result.exit_code == 0, result.output
    assert "host_id" not in read_table(tmp_path / "s.csv").columns
    result = runner.invoke(app, ["evaluate", model, str(tmp_path / "labelled.csv"), "--label-col", "is_anomaly"])
    assert result.exit_code == 0 and "auroc" in result.output, result.output
    write_table(make_telemetry(100, 0.1, seed=2), tmp_path / "with_kind.csv")  # a column the model never saw
    result = runner.invoke(app, ["evaluate", model, str(tmp_path / "with_kind.csv"), "--label-col", "is_anomaly"])
    assert result.exit_code == 2 and "the model was not trained on: anomaly_kind; leave them out with --drop-cols" \
        in " ".join(result.output.split()), result.output
    result = runner.invoke(app, ["recalibrate", model, str(tmp_path / "normal.csv"), "-o", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    # --eval data the model could not score failed after the training, and the model was lost
    write_table(train, tmp_path / "plain.csv")
    result = runner.invoke(app, ["train", str(tmp_path / "plain.csv"), "--experiment", "e", "--epochs", "100000",
                                 "--eval", str(tmp_path / "labelled.csv"), "--label-col", "is_anomaly",
                                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 2 and "trained" not in result.output, result.output
    assert "labelled.csv does not have the training data's columns: it has host_id, which the training data has " \
        "not" in " ".join(result.output.split())


def _train_while_logging_fails(tmp_path, monkeypatch, gone, *command: str, logger: str = "log_training_run"):
    """`anomaly-ae train` (or `command`) with tracking, in tmp_path, while the registry's `logger` calls `gone`."""
    import anomaly_ae.registry

    write_table(make_telemetry(400, 0.0, seed=1).drop(columns=["is_anomaly", "anomaly_kind"]), tmp_path / "t.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(anomaly_ae.registry, logger, gone)
    command = command or ("train", "t.csv", "--model", "pca")
    result = runner.invoke(app, [*command, "--experiment", "e", "--no-progress",
                                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    return result, list(tmp_path.glob("anomaly-ae-model-*")), " ".join(result.output.split())


def _unreachable(*args, **kwargs):
    from anomaly_ae.exceptions import RegistryUnavailableError

    raise RegistryUnavailableError("cannot reach the MLflow tracking server at http://127.0.0.1:1 while logging "
                                   "run abc (no answer in time); check that it is running, then retry")


def test_a_trained_generator_is_kept_when_logging_fails(tmp_path, monkeypatch):
    from anomaly_ae.augment import Generator

    result, kept, said = _train_while_logging_fails(tmp_path, monkeypatch, _unreachable, "generate", "train", "t.csv",
                                                    "--model", "cvae", "--epochs", "2", logger="log_generator_run")
    assert result.exit_code == 2, result.output
    assert len(kept) == 1 and f"The trained model is kept in {kept[0].name}" in said
    assert Generator.load(kept[0]).model == "cvae"


def test_when_keeping_a_model_fails_too_both_failures_are_told(tmp_path, monkeypatch):
    """The failure to save the model hid the failure to log it."""
    import os

    monkeypatch.setattr("time.strftime", lambda *args: "20260101-000000")
    (tmp_path / f"anomaly-ae-model-20260101-000000-{os.getpid()}").write_text("in the way")
    result, _, said = _train_while_logging_fails(tmp_path, monkeypatch, _unreachable)
    assert result.exit_code == 2 and "cannot reach the MLflow tracking server" in said and \
        "Keeping the trained model in anomaly-ae-model-20260101-000000" in said and "failed too" in said, said


@pytest.mark.parametrize("failure", ["registry", "data", "sigterm"])
def test_a_trained_model_is_kept_when_logging_fails_or_is_stopped(tmp_path, monkeypatch, failure):
    """Only a registry error kept the model before: a DataError while logging, or a SIGTERM (a job's
    deadline) during the upload, lost it, and the SIGTERM left the run RUNNING."""
    import os
    import signal

    from anomaly_ae.exceptions import DataError

    def gone(*args, **kwargs):
        if failure == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        if failure == "data":
            raise DataError("unexpected column(s): host_id; drop them or retrain with them")
        _unreachable()

    result, kept, said = _train_while_logging_fails(tmp_path, monkeypatch, gone)
    assert result.exit_code == (143 if failure == "sigterm" else 2), result.output
    assert len(kept) == 1
    if failure == "sigterm":
        assert f"stopped by SIGTERM; an MLflow run it had started is marked FAILED; the trained model is kept in " \
            f"{kept[0].name}" in said
    else:
        assert f"The trained model is kept in {kept[0].name}" in said
    from anomaly_ae import Detector

    assert Detector.load(kept[0]).model == "pca"


def test_evaluate_refuses_fewer_than_one_synthetic_anomaly_per_kind(fitted):
    """--n-per-kind 0 or -1 ended in a traceback (no objects to concatenate, negative dimensions)."""
    from anomaly_ae.augment.command import synthetic_anomaly_report
    from anomaly_ae.exceptions import InvalidParameterError

    result = runner.invoke(app, ["evaluate", "model", "rows.csv", "--synthetic-anomalies", "--n-per-kind", "0"])
    assert result.exit_code == 2 and "Invalid value for '--n-per-kind'" in " ".join(result.output.split())
    with pytest.raises(InvalidParameterError, match="n_per_kind must be an integer >= 1, got -1"):
        synthetic_anomaly_report(fitted("pca"), make_telemetry(50, 0.0, seed=1), n_per_kind=-1)
