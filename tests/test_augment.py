"""Augmentation with provenance, synthetic anomalies per kind, and the `generate` CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from anomaly_ae import Detector, Generator
from anomaly_ae.augment.command import (_parse_conditions, augment_training_data, balanced_allocation, generate_app,
                                        synthetic_anomaly_report)
from anomaly_ae.augment.perturb import KINDS, make_anomalies
from anomaly_ae.data.io import read_table, write_table
from anomaly_ae.data.schema import Schema
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.exceptions import DataError

QUICK = dict(epochs=30, patience=5)


@pytest.fixture(scope="module")
def rare_mode():
    """Maintenance is rare (about 1%) in this normal history."""
    weights = {"day": 0.5, "night": 0.3, "batch": 0.19, "maintenance": 0.01}
    return make_telemetry(1200, 0.0, seed=31, mode_weights=weights).drop(columns=list(LABEL_COLUMNS))


def test_balanced_allocation_tops_up_the_rarest_first():
    assert balanced_allocation({"a": 10, "b": 2, "c": 5}, 6) == {"b": 5, "c": 1}
    alloc = balanced_allocation({"a": 10, "b": 2, "c": 5}, 100)
    final = {k: v + alloc.get(k, 0) for k, v in {"a": 10, "b": 2, "c": 5}.items()}
    assert sum(alloc.values()) == 100 and max(final.values()) - min(final.values()) <= 1
    assert balanced_allocation({"a": 3}, 4) == {"a": 4}


@pytest.fixture(scope="module")
def augmented(rare_mode):
    return augment_training_data(rare_mode, "cvae", 600, balance_col="mode", seed=0, **QUICK)


def test_augment_balances_the_context_and_records_provenance(rare_mode, augmented):
    synthetic, provenance = augmented
    assert list(synthetic.columns) == list(rare_mode.columns) and len(synthetic) == 600
    counts = pd.concat([rare_mode, synthetic])["mode"].value_counts()
    assert counts["maintenance"] > 40 * (rare_mode["mode"] == "maintenance").sum() / 10  # well up from ~1%
    assert provenance["rows_synthetic"] == 600 and provenance["balance_col"] == "mode"
    assert sum(provenance["allocation"].values()) == 600
    assert len(provenance["generator_sha256"]) == 64 and provenance["generator"] == "cvae"
    assert {"c2st_auc", "recall", "coverage"} <= set(provenance["quality"])
    json.dumps(provenance)  # JSON-able, as training_metadata_ must be


def test_synthetic_rows_train_the_detector_but_never_calibrate_it(rare_mode, augmented):
    synthetic, _ = augmented
    plain = Detector("ae", epochs=30, random_state=0).fit(rare_mode)
    boosted = Detector("ae", epochs=30, random_state=0).fit(rare_mode, synthetic=synthetic)
    # the held-out split that sets the threshold holds the same real rows with or without synthetic ones
    n_val = round(len(rare_mode) * plain.validation_fraction)
    assert len(boosted.calibration_.reference_scores) == len(plain.calibration_.reference_scores) == n_val
    # ... and the synthetic maintenance rows teach the detector that the rare mode is normal
    fresh = make_telemetry(400, 0.0, seed=33, mode_weights={"maintenance": 1.0}).drop(columns=list(LABEL_COLUMNS))
    assert boosted.predict(fresh).mean() < 0.5 * plain.predict(fresh).mean()


def test_augment_refuses_what_it_cannot_do(rare_mode):
    with pytest.raises(DataError, match="conditional generator"):
        augment_training_data(rare_mode, "gan", 10, balance_col="mode")
    with pytest.raises(DataError, match="needs --balance-col"):
        augment_training_data(rare_mode, "cgan", 10)
    with pytest.raises(DataError, match="not a column"):
        augment_training_data(rare_mode, "cvae", 10, balance_col="shift")
    with pytest.raises(DataError, match=">= 1"):
        augment_training_data(rare_mode, "cvae", 0)
    with pytest.raises(DataError, match=r"column\(s\) \['never'\] have no value in the training data"):
        Generator("cvae", epochs=1).fit(rare_mode.assign(never=np.nan))  # its values would be invented


def test_augment_saves_the_generator_it_hashed(rare_mode, tmp_path):
    _, provenance = augment_training_data(rare_mode, "cvae", 50, seed=1, save_to=tmp_path / "gen", **QUICK)
    assert Generator.load(tmp_path / "gen").fingerprint_ == provenance["generator_sha256"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_perturbation_does_what_it_says(kind, rare_mode):
    schema = Schema.infer(rare_mode)
    rng = np.random.default_rng(0)
    latent = Generator("cvae", epochs=5, quality=False).fit(rare_mode) if kind == "low_density_latent" else None
    rows = make_anomalies(rare_mode, kind, 50, rng, schema=schema, latent_model=latent)
    assert list(rows.columns) == list(rare_mode.columns) and len(rows) == 50
    schema.check(rows)  # still valid input for a detector
    numeric = rare_mode.select_dtypes("number")
    if kind == "out_of_range":
        outside = (rows[numeric.columns] > numeric.max()) | (rows[numeric.columns] < numeric.min())
        assert outside.any(axis=1).all()
    if kind == "swapped_category":
        assert rows["mode"].isin(rare_mode["mode"].unique()).all()
    if kind == "broken_correlation":
        # Every value stays inside the training range.
        assert ((rows[numeric.columns] >= numeric.min()) & (rows[numeric.columns] <= numeric.max())).all().all()


def test_synthetic_anomaly_report_per_kind(rare_mode):
    det = Detector("vae", epochs=40, patience=8, random_state=0).fit(rare_mode)
    report = synthetic_anomaly_report(det, rare_mode, n_per_kind=100, seed=0)
    assert list(report["kind"]) == ["none", *KINDS]
    rates = report.set_index("kind")["detection_rate"]
    assert rates["none"] < 0.1                 # unperturbed rows: about the target FPR
    assert rates["out_of_range"] > 0.8         # far outside the range is easy
    assert (report["n"] == 100).all() and report["description"].str.len().gt(10).all()


def test_image_perturbations():
    from sklearn.datasets import load_digits

    images = load_digits().images[:200]
    rng = np.random.default_rng(0)
    assert make_anomalies(images, "swapped_category", 5, rng) is None
    out = make_anomalies(images, "out_of_range", 5, rng)
    assert out.shape == (5, 8, 8) and ((out > images.max()) | (out < images.min())).any(axis=(1, 2)).all()


def test_generate_cli_train_sample_report(rare_mode, tmp_path):
    runner = CliRunner()
    data = tmp_path / "normal.csv"
    write_table(rare_mode, data)
    result = runner.invoke(generate_app, ["train", str(data), "--model", "cvae", "--condition-col", "mode",
                                          "--out", str(tmp_path / "gen"), "--epochs", "30", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "c2st_auc" in result.output and "maintenance" in result.output
    out = tmp_path / "synth.parquet"
    result = runner.invoke(generate_app, ["sample", str(tmp_path / "gen"), "-n", "50", "--condition",
                                          "mode=maintenance", "-o", str(out)])
    assert result.exit_code == 0, result.output
    synth = read_table(out)
    assert len(synth) == 50 and (synth["mode"] == "maintenance").all()
    held = tmp_path / "held.csv"
    write_table(make_telemetry(300, 0.0, seed=32).drop(columns=list(LABEL_COLUMNS)), held)
    result = runner.invoke(generate_app, ["report", str(tmp_path / "gen"), str(held)])
    assert result.exit_code == 0, result.output
    assert "at training" in result.output and "held.csv" in result.output
    # Errors are one line and exit 2.
    result = runner.invoke(generate_app, ["sample", str(tmp_path / "gen"), "--condition", "mode=lunch",
                                          "-o", str(out)])
    assert result.exit_code == 2 and "never seen" in result.output
    result = runner.invoke(generate_app, ["sample", str(tmp_path / "missing"), "-o", str(out)])
    assert result.exit_code == 2


def test_conditions_name_each_column_once():
    assert _parse_conditions(["mode = maintenance", "site=a=b"]) == {"mode": "maintenance", "site": "a=b"}
    assert _parse_conditions(["mode=x", "mode=x"]) == {"mode": "x"}
    with pytest.raises(DataError, match="column 'mode' twice"):
        _parse_conditions(["mode=x", "mode=y"])
    with pytest.raises(DataError, match="no column name"):
        _parse_conditions(["=x"])
    with pytest.raises(DataError, match="COLUMN=VALUE"):
        _parse_conditions(["mode"])


def test_generate_cli_images_npz_and_grid(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "digits.npz", X=digits.images[:400], y=digits.target[:400])
    runner = CliRunner()
    result = runner.invoke(generate_app, ["train", str(tmp_path / "digits.npz"), "--out", str(tmp_path / "g"),
                                          "--epochs", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(generate_app, ["sample", str(tmp_path / "g"), "-n", "5", "-o",
                                          str(tmp_path / "grid.png")])
    assert result.exit_code == 0 and "drew 10 images" in result.output, result.output  # one per digit at least
    result = runner.invoke(generate_app, ["sample", str(tmp_path / "g"), "-n", "0", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "-n" in result.output
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(generate_app, ["sample", str(tmp_path / "g"), "-n", "6", "--condition", "label=4",
                                          "-o", str(tmp_path / "s.npz")])
    assert result.exit_code == 0, result.output
    loaded = np.load(tmp_path / "s.npz")
    assert loaded["X"].shape == (6, 8, 8) and set(loaded["y"]) == {"4"}


def test_a_generator_below_its_quality_floors_is_warned_of(rare_mode):
    """Its rows were added as silently as a good generator's; the floors it misses are named."""
    with pytest.warns(UserWarning, match=r"the generator misses its quality floors \(.*needs") as caught:
        _, provenance = augment_training_data(rare_mode, "cvae", 50, seed=0, epochs=1, patience=1)
    assert provenance["quality_floor_failures"] and all(f in str(caught[0].message)
                                                        for f in provenance["quality_floor_failures"])


def test_augmented_rows_keep_the_dtypes_and_labels_of_the_training_columns():
    """A generator gives categories back as text: astype made bool('False') True (every row balanced to
    False came out True) and the text '1' of an integer category NaN."""
    rng = np.random.default_rng(0)
    n = 200
    X = pd.DataFrame({"cpu": rng.normal(50, 10, n), "count": rng.integers(0, 10, n), "flag": rng.random(n) < 0.7,
                      "site": pd.Categorical(rng.choice([1, 2, 3], n)), "mode": rng.choice(["a", "b"], n)})
    synthetic, provenance = augment_training_data(X, "cvae", 40, balance_col="flag", seed=0, epochs=3,
                                                  quality=False)
    assert dict(synthetic.dtypes) == dict(X.dtypes)
    allocation = provenance["allocation"]
    assert allocation["False"] > 0 and synthetic["flag"].value_counts().to_dict() == {
        label == "True": rows for label, rows in allocation.items() if rows}  # the rare False rows came out True
    assert synthetic["site"].notna().all() and set(synthetic["site"]) <= {1, 2, 3}
    sampled = Generator("cvae", epochs=3, quality=False).fit(X).sample(20, random_state=0)
    assert sampled["count"].dtype == np.int64  # whole numbers in training: whole numbers out


def test_a_generator_and_a_detector_never_replace_each_other(rare_mode, tmp_path):
    detector_dir, generator_dir = tmp_path / "detector", tmp_path / "generator"
    Detector("pca").fit(rare_mode).save(detector_dir)
    generator = Generator("cvae", epochs=2, quality=False).fit(rare_mode)
    generator.save(generator_dir)
    with pytest.raises(FileExistsError, match="holds a saved detector, not a generator"):
        generator.save(detector_dir)
    with pytest.raises(FileExistsError, match="holds a saved generator, not a model"):
        Detector("pca").fit(rare_mode).save(generator_dir)
    assert Detector.load(detector_dir) and Generator.load(generator_dir)
    generator.save(generator_dir)  # its own kind is replaced, as before
    write_table(rare_mode, tmp_path / "normal.csv")
    result = CliRunner().invoke(generate_app, ["train", str(tmp_path / "normal.csv"), "--out", str(detector_dir),
                                               "--epochs", "100000", "--no-progress"])  # refused before training
    assert result.exit_code == 2 and "holds a saved detector" in result.output, result.output


@pytest.mark.parametrize("params, says", [
    ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
    ({"model": "gan", "steps": 0}, "steps must be an integer >= 1"),
    ({"latent_dim": 0}, "latent_dim must be an integer >= 1"),
    ({"condition_cols": "cpu_util_pct", "n_bins": 1}, "n_bins must be an integer >= 2"),
    ({"model": "cgan", "condition_cols": "mode", "n_critic": 0}, "n_critic must be an integer >= 1"),
    ({"beta": -1.0}, "beta must be a finite number >= 0"),
    ({"random_state": -1}, r"random_state must be an integer in \[0, 4294967295\]"),
    ({"condition_cols": ["mode", "mode"]}, r"condition_cols names \['mode'\] more than once"),
    ({"condition_cols": 5}, "condition_cols must be a column name or a list of them, got 5"),
])
def test_generator_parameters_that_cannot_work_are_refused_before_training(rare_mode, params, says):
    with pytest.raises(ValueError, match=says):
        Generator(**params).fit(rare_mode)


def test_contexts_the_generator_never_saw_are_refused():
    """A numeric context with over a quarter of its rows at the minimum got the bucket '[1, 1)', which
    nothing can fall in; a context missing from training was drawn from an untrained code (or a KeyError)."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"cores": np.r_[np.ones(60), rng.integers(2, 9, 60)], "mode": ["a"] * 60 + ["b"] * 60,
                      "cpu": rng.normal(50, 10, 120)})
    generator = Generator("cvae", condition_cols=["cores", "mode"], epochs=2, quality=False).fit(X)
    buckets = generator.conditions_.columns[0]["values"]
    assert buckets[0].startswith("[1, ") and not buckets[0].startswith("[1, 1)")
    with pytest.raises(DataError, match=r"no training row had the context \{'cores': '\[1, .*'mode': 'b'\}"):
        generator.sample(5, condition={"cores": 1, "mode": "b"})
    assert len(generator.sample(5, condition={"cores": 1, "mode": "a"})) == 5


def test_image_generators_refuse_missing_and_unseen_labels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.images[:300], digits.target[:300].astype(float)
    with pytest.raises(DataError, match="y has missing values"):
        Generator("cvae", epochs=1, quality=False).fit(X, np.where(np.arange(300) == 3, np.nan, y))
    generator = Generator("cvae", epochs=1, quality=False).fit(X, digits.target[:300])
    with pytest.raises(DataError, match="pass y"):
        generator.evaluate(digits.images[300:340])
    with pytest.raises(DataError, match=r"value\(s\) \['42'\] the generator was not trained on"):
        generator.evaluate(digits.images[300:340], np.full(40, 42))


def test_floors_that_were_not_measured_are_named_not_passed():
    from anomaly_ae.augment.quality import floor_verdict

    report = {"c2st_auc": 0.6, "precision": 0.9, "recall": 0.9, "coverage": 0.9, "ks_mean": 0.05,
              "min_condition_coverage": None, "condition_accuracy": float("nan")}
    verdict = floor_verdict(report)
    assert verdict.startswith("passes the quality floors it was measured on (not measured: min_condition_coverage, "
                              "condition_accuracy")
    assert floor_verdict({k: v for k, v in report.items() if "condition" not in k}) == "passes every quality floor"
    assert floor_verdict({**report, "recall": 0.1}).startswith("below floor: recall = 0.100 (needs >= 0.5)")


def test_a_yes_no_condition_takes_true_and_false_in_any_case():
    from anomaly_ae.augment.conditions import ConditionEncoder

    encoder = ConditionEncoder.fit(pd.DataFrame({"maint": [True, False] * 5}), ["maint"], set(), 4)
    assert encoder.resolve({"maint": "true"}) == {"maint": "True"} == encoder.resolve({"maint": True})
    assert encoder.resolve({"maint": "FALSE"}) == {"maint": "False"}
    with pytest.raises(DataError, match="never seen in training"):
        encoder.resolve({"maint": "yes"})
