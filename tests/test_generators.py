"""Generators: the estimator contract, conditioning, save/load, and quality floors that a working
generator clears on held-out telemetry while broken ones (untrained, collapsed, ignoring the
condition) fail the same floors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits

from anomaly_ae import Generator
from anomaly_ae.augment.conditions import ConditionEncoder
from anomaly_ae.augment.quality import QUALITY_FLOORS, check_floors, precision_recall, quality_report
from anomaly_ae.data.synthetic import LABEL_COLUMNS, METRIC_COLUMNS, make_telemetry
from anomaly_ae.exceptions import DataError, ModelLoadError, NotFittedError


@pytest.fixture(scope="module")
def normal():
    return make_telemetry(1500, 0.0, seed=11).drop(columns=list(LABEL_COLUMNS))


@pytest.fixture(scope="module")
def held_out():
    return make_telemetry(600, 0.0, seed=12).drop(columns=list(LABEL_COLUMNS))


@pytest.fixture(scope="module")
def cvae(normal):
    return Generator("cvae", condition_cols="mode", epochs=150, patience=15, random_state=0).fit(normal)


@pytest.fixture(scope="module")
def cgan(normal):
    # 2000 steps, two thirds of the default: benchmarks/results/gan_budget.md measures every floor
    # met with margin there on seeds 0-2 (recall 0.663 +- 0.016 against 0.5), while at 1000 steps
    # one seed in three misses the recall floor, so a shorter run would pass or fail by seed luck
    return Generator("cgan", condition_cols="mode", steps=2000, random_state=0).fit(normal)


def test_estimator_contract():
    gen = Generator("cgan", condition_cols=["mode"], steps=5, latent_dim=3)
    assert gen.get_params()["condition_cols"] == ["mode"]
    copy = clone(gen).set_params(steps=7)
    assert copy.steps == 7 and gen.steps == 5
    with pytest.raises(NotFittedError):
        gen.sample(3)
    with pytest.raises(ValueError, match="unknown generator"):
        Generator("vaegan").fit(make_telemetry(50, seed=0))
    with pytest.raises(ValueError, match="cgan"):
        Generator("gan", condition_cols="mode").fit(make_telemetry(50, seed=0))
    with pytest.raises(ValueError, match="needs condition_cols"):
        Generator("cgan").fit(make_telemetry(50, seed=0))


def test_cvae_passes_quality_floors_on_held_out_data(cvae, held_out):
    assert check_floors(cvae.quality_) == []
    report = cvae.evaluate(held_out, random_state=1)
    assert check_floors(report) == [], report
    assert report["c2st_auc"] < 0.75
    assert set(report["per_condition"]) == {"batch", "day", "maintenance", "night"}
    with pytest.raises(DataError, match="need at least 20 held-out rows to measure a generator's quality, got 2"):
        cvae.evaluate(held_out.head(2))  # 2 rows gave a KS of 1.0 and a classifier accuracy of 0.5 as measures


def test_untrained_and_collapsed_generators_fail_the_same_floors(normal, held_out, cvae):
    untrained = Generator("cvae", condition_cols="mode", epochs=1, random_state=0).fit(normal)
    failures = check_floors(untrained.evaluate(held_out))
    assert any(f.startswith("c2st_auc") for f in failures), failures

    # Mode collapse: every synthetic row of a context is the same real row.
    real = cvae._encode(held_out)
    collapsed = held_out.groupby("mode").head(1).set_index("mode").loc[held_out["mode"]].reset_index()
    report = quality_report(real, cvae._encode(collapsed), real_groups=held_out["mode"].to_numpy(),
                            synth_groups=collapsed["mode"].to_numpy(), conditional=True)
    failures = check_floors(report)
    assert any(f.startswith("recall") for f in failures) and any(f.startswith("coverage") for f in failures)

    # A generator that ignores its condition: good rows, wrong context labels.
    synth = cvae.sample(len(held_out), random_state=3)
    shuffled = synth.copy()
    shuffled["mode"] = np.random.default_rng(0).permutation(shuffled["mode"].to_numpy())
    plain = (cvae._encode(held_out, context=False), cvae._encode(shuffled, context=False))
    report = quality_report(real, cvae._encode(shuffled), real_groups=held_out["mode"].to_numpy(),
                            synth_groups=shuffled["mode"].to_numpy(), conditional=True,
                            features_without_context=plain)
    failures = check_floors(report)
    assert any(f.startswith("condition_accuracy") for f in failures), failures


def test_cgan_clears_the_mode_collapse_floors(cgan, held_out):
    report = cgan.evaluate(held_out, random_state=1)
    assert report["recall"] >= QUALITY_FLOORS["recall"][1], report
    assert report["coverage"] >= QUALITY_FLOORS["coverage"][1], report
    assert report["condition_accuracy"] >= 0.9
    assert report["min_condition_coverage"] >= QUALITY_FLOORS["min_condition_coverage"][1]
    # The critic's Wasserstein estimate was logged and stayed finite.
    assert np.isfinite(cgan.history_.wasserstein).all() and len(cgan.history_.wasserstein) > 5


def test_conditional_samples_follow_their_context(cvae, normal):
    night = cvae.sample(400, condition={"mode": "night"}, random_state=0)
    assert list(night.columns) == list(normal.columns)
    assert (night["mode"] == "night").all()
    real = normal[normal["mode"] == "night"]
    for col in ("cpu_util_pct", "requests_per_s", "temperature_c"):
        assert abs(night[col].mean() - real[col].mean()) < 0.5 * real[col].std(), col
    # Clipped to the training range; unconditional draws keep the training frequencies.
    mixed = cvae.sample(2000, random_state=1)
    assert mixed["cpu_util_pct"].between(normal["cpu_util_pct"].min(), normal["cpu_util_pct"].max()).all()
    share = mixed["mode"].value_counts(normalize=True)
    assert abs(share["day"] - (normal["mode"] == "day").mean()) < 0.05
    with pytest.raises(DataError, match="never seen"):
        cvae.sample(5, condition={"mode": "lunch"})
    with pytest.raises(DataError, match="cannot condition"):
        cvae.sample(5, condition={"cpu_util_pct": 5})
    with pytest.raises(DataError, match=r"n=100000000000 is more than one draw holds \(\d+ rows of this "
                                         r"generator, about 2 GiB\)"):
        cvae.sample(10**11)  # refused before numpy asks for the memory (hundreds of GiB)


def test_sampling_is_reproducible_and_fits_the_schema(cvae):
    a, b = cvae.sample(20, random_state=5), cvae.sample(20, random_state=5)
    pd.testing.assert_frame_equal(a, b)
    checked, _ = cvae.schema_.check(a)
    assert not checked[list(METRIC_COLUMNS)].isna().any().any()


def test_numeric_condition_uses_quantile_buckets():
    frame = pd.DataFrame({"x": np.arange(100.0), "m": ["a", "b"] * 50})
    enc = ConditionEncoder.fit(frame, ["x", "m"], {"x"}, n_bins=4)
    assert enc.dim == 4 + 2
    assert enc.columns[0]["values"] == ["[0, 24.75)", "[24.75, 49.5)", "[49.5, 74.25)", "[74.25, 99]"]
    integers = ConditionEncoder.fit(pd.DataFrame({"n": [0] * 50 + [1] * 100 + [2] * 150}), ["n"], {"n"}, n_bins=3)
    assert integers.columns[0]["values"] == ["[0, 1)", "[1, 2)", "[2, 2]"]  # no bucket label overlaps another
    assert enc.resolve({"x": 10})["x"] == enc.columns[0]["values"][0]
    assert enc.resolve({"x": 99})["x"] == enc.columns[0]["values"][3]
    drawn = enc.draw(1000, {"m": "a"}, np.random.default_rng(0))
    assert set(drawn[:, 1]) == {"a"} and len(set(drawn[:, 0])) == 4
    roundtrip = ConditionEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert roundtrip.to_dict() == enc.to_dict()
    # outside the training range the outer bucket would be drawn as if it were the value asked for
    for encoder in (enc, roundtrip):
        assert encoder.resolve({"x": 0.0})["x"] == enc.columns[0]["values"][0]
        with pytest.raises(DataError, match=r"x=1000000000.0 is outside the training range 0..99"):
            encoder.resolve({"x": 1e9})
        with pytest.raises(DataError, match="x=nan is not a finite number"):
            encoder.resolve({"x": "nan"})
    saved_before = enc.to_dict()  # a generator saved without the range still refuses non-finite values
    saved_before["columns"][0].pop("range")
    with pytest.raises(DataError, match="not a finite number"):
        ConditionEncoder.from_dict(saved_before).resolve({"x": float("inf")})


def test_numeric_condition_column_is_generated_in_its_bucket(normal, tmp_path):
    gen = Generator("cvae", condition_cols="cpu_util_pct", epochs=40, quality=False, random_state=0).fit(normal)
    low = gen.sample(300, condition={"cpu_util_pct": normal["cpu_util_pct"].quantile(0.1)}, random_state=0)
    high = gen.sample(300, condition={"cpu_util_pct": normal["cpu_util_pct"].quantile(0.9)}, random_state=0)
    assert low["cpu_util_pct"].median() < normal["cpu_util_pct"].quantile(0.35)
    assert high["cpu_util_pct"].median() > normal["cpu_util_pct"].quantile(0.65)
    # the CLI says the value picked a bucket and the values are generated (it said "cpu_util_pct=50")
    from typer.testing import CliRunner

    from anomaly_ae.cli import app

    gen.save(tmp_path / "gen")
    value = round(float(normal["cpu_util_pct"].median()), 1)
    result = CliRunner().invoke(app, ["generate", "sample", str(tmp_path / "gen"), "-n", "20", "--condition",
                                      f"cpu_util_pct={value}", "-o", str(tmp_path / "rows.csv")])
    bucket = gen.conditions_.resolve({"cpu_util_pct": value})["cpu_util_pct"]
    assert result.exit_code == 0 and " ".join(result.output.split()).startswith(
        f"drew 20 rows with cpu_util_pct in its training bucket {bucket} (holding {value}; the values themselves "
        "are generated)"), result.output


def test_save_load_roundtrip_and_tamper_refusal(cvae, tmp_path):
    path = cvae.save(tmp_path / "gen")
    loaded = Generator.load(path)
    assert loaded.fingerprint_ == cvae.fingerprint_
    pd.testing.assert_frame_equal(loaded.sample(10, random_state=2), cvae.sample(10, random_state=2))
    assert loaded.quality_ == json.loads((path / "quality.json").read_text())
    assert not any(p.suffix in (".pkl", ".pt", ".pickle") for p in path.iterdir())
    quality = json.loads((path / "quality.json").read_text())
    quality["c2st_auc"] = 0.5
    (path / "quality.json").write_text(json.dumps(quality))
    with pytest.raises(ModelLoadError, match="SHA-256"):
        Generator.load(path)
    with pytest.raises(ModelLoadError, match="no saved generator"):
        Generator.load(tmp_path / "nothing")


def test_unconditional_gan_handles_categorical_outputs(normal):
    gen = Generator("gan", steps=30, quality=False, random_state=0).fit(normal.head(300))
    rows = gen.sample(200, random_state=0)
    assert set(rows["mode"]) <= {"day", "night", "batch", "maintenance"}
    assert rows[list(METRIC_COLUMNS)].notna().all().all()


def test_image_cvae_draws_the_requested_digit(tmp_path):
    from anomaly_ae.augment.plots import save_sample_grid

    digits = load_digits()
    images, labels = digits.images[:1000], digits.target[:1000]
    gen = Generator("cvae", epochs=40, patience=10, random_state=0).fit(images, labels)
    assert gen.quality_["condition_accuracy"] >= QUALITY_FLOORS["condition_accuracy"][1], gen.quality_
    sevens, drawn = gen.sample(30, condition=7, random_state=0, return_conditions=True)
    assert sevens.shape == (30, 8, 8) and set(drawn) == {"7"}
    assert sevens.min() >= 0 and sevens.max() <= 16
    png = save_sample_grid(gen, tmp_path / "grid.png", n_per_condition=4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    untrained = Generator("cvae", epochs=1, random_state=0).fit(images, labels)
    assert untrained.quality_["condition_accuracy"] < QUALITY_FLOORS["condition_accuracy"][1]


def test_image_cgan_trains_and_samples():
    digits = load_digits()
    gen = Generator("cgan", steps=20, quality=False, random_state=0).fit(digits.images[:300], digits.target[:300])
    images = gen.sample(5, condition=3, random_state=0)
    assert images.shape == (5, 8, 8) and np.isfinite(images).all()


def test_precision_recall_sees_collapse():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((400, 3))
    good = precision_recall(real, rng.standard_normal((400, 3)))
    collapsed = precision_recall(real, 0.05 * rng.standard_normal((400, 3)))
    assert good["recall"] > 0.8 and good["coverage"] > 0.8
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.3 and collapsed["coverage"] < 0.3


def test_a_generator_that_replays_its_training_rows_misses_the_copied_share_floor(cvae, normal, held_out):
    """Copies of training rows look like real data to every other measure (they are real data)."""
    train = normal.sample(len(held_out), replace=True, random_state=0).reset_index(drop=True)
    encode = cvae._encode
    report = quality_report(encode(held_out), encode(train), real_frame=held_out.reset_index(drop=True),
                            synth_frame=train, categorical={"mode"}, seed=0, train=encode(normal))
    assert report["copied_share"] == 1.0
    assert [f for f in check_floors(report) if not f.startswith("copied_share")] == []
    assert check_floors(report) == ["copied_share = 1.000 (needs <= 0.5)"]
    assert cvae.quality_["copied_share"] < 0.2  # a trained generator: about as near as new data
