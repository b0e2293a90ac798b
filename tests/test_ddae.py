"""The diffusion-scheduled denoising autoencoder (models/ddae.py) as a Detector model.

Its score averages reconstruction errors over 50 noise levels, each with one fixed draw saved with
the model: these tests pin that the score is a function of the row alone (not of the call, the
batch, the global RNG) and survives a save/load bit for bit.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_ae import Detector
from anomaly_ae.data.synthetic import LABEL_COLUMNS
from anomaly_ae.models import DETECTOR_MODELS, build_model
from anomaly_ae.scoring import score_array

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def ddae(telemetry_train):
    return Detector(model="ddae", epochs=8, patience=5, random_state=0).fit(telemetry_train.head(600))


@pytest.fixture(scope="module")
def X(telemetry_test):
    return telemetry_test.drop(columns=list(LABEL_COLUMNS))


def test_ddae_is_one_entry_in_the_model_table():
    assert "ddae" in DETECTOR_MODELS
    spec = DETECTOR_MODELS["ddae"].spec({"hidden_dims": None, "noise_scale": "uniform"}, (7,), 100)
    model = build_model(spec)
    assert [m.out_features for m in model.net if isinstance(m, torch.nn.Linear)] == [256, 256, 7]  # no bottleneck
    assert model.score_noise.shape == (50, 7) and len(model.signal) == 50


def test_scores_are_deterministic_across_calls_batches_and_the_global_seed(ddae, X):
    torch.manual_seed(1)
    full = ddae.decision_function(X)
    torch.manual_seed(2)
    assert np.array_equal(ddae.decision_function(X), full)
    cuts = [0, 1, 8, 9, 700, len(X)]
    pieces = [ddae.decision_function(X.iloc[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    np.testing.assert_allclose(np.concatenate(pieces), full, rtol=RTOL, atol=ATOL)
    x = ddae.preprocessor_.transform(ddae.schema_.check(X.head(301))[0])
    member = ddae.members_[0]
    big = score_array(member, x, "recon", torch.device("cpu"), None, batch_size=4096)
    small = score_array(member, x, "recon", torch.device("cpu"), None, batch_size=7)
    for a, b in zip(big, small):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def test_a_rows_score_does_not_depend_on_the_other_rows(ddae, X):
    full = ddae.decision_function(X)
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(ddae.decision_function(X.iloc[perm]), full[perm], rtol=RTOL, atol=ATOL)
    mixed = ddae.decision_function(pd.concat([X.iloc[900:950], X.iloc[[42]], X.iloc[950:1000]]))
    np.testing.assert_allclose(mixed[50], full[42], rtol=RTOL, atol=ATOL)
    alone = ddae.decision_function(X.iloc[[42]])
    np.testing.assert_allclose(alone, full[[42]], rtol=RTOL, atol=ATOL)


def test_extreme_finite_inputs_score_finite(ddae, X):
    rows = X.head(6).copy()
    numeric = rows.select_dtypes("number").columns
    rows.loc[rows.index[0], numeric] = 1e300
    rows.loc[rows.index[1], numeric] = -1e300
    rows.loc[rows.index[2], numeric] = np.finfo(np.float64).max
    rows.loc[rows.index[3], numeric[0]] = -np.finfo(np.float64).max
    rows.loc[rows.index[4], numeric] = 1e-300
    frame = ddae.score_frame(rows)
    assert np.isfinite(frame["score"]).all()
    assert frame["is_anomaly"].iloc[:4].all()
    # the module alone, at and beyond the preprocessor's clip
    member = ddae.members_[0]
    x = torch.tensor([[1e4] * member.score_noise.shape[1], [-3e38] * member.score_noise.shape[1]])
    total, contributions = member.score_terms(x, "recon")
    assert torch.isfinite(total).all() and torch.isfinite(contributions).all()


def test_contributions_have_one_column_per_feature_and_sum_to_the_score(ddae, X):
    x = ddae.preprocessor_.transform(ddae.schema_.check(X.head(200))[0])
    scores, contributions = ddae.scorer_.score(x)
    assert contributions.shape == (200, len(ddae.preprocessor_.feature_names))
    assert (contributions >= 0).all()
    np.testing.assert_allclose(contributions.sum(1), scores, rtol=1e-4)
    np.testing.assert_array_equal(scores, ddae.decision_function(X.head(200)))
    shares = ddae.explain(X.head(20), top_k=None)
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-9)


def test_save_load_gives_bit_identical_scores(ddae, X, tmp_path):
    loaded = Detector.load(ddae.save(tmp_path / "ddae"))
    assert np.array_equal(ddae.decision_function(X), loaded.decision_function(X))
    assert torch.equal(loaded.members_[0].score_noise, ddae.members_[0].score_noise)
    assert loaded.get_params() == ddae.get_params()
    assert ddae.score_frame(X).equals(loaded.score_frame(X))


def test_fixed_draws_come_from_the_seed(telemetry_train, X):
    data = telemetry_train.head(300)
    a = Detector(model="ddae", epochs=2, random_state=3).fit(data)
    b = Detector(model="ddae", epochs=2, random_state=3).fit(data)
    c = Detector(model="ddae", epochs=2, random_state=4).fit(data)
    assert torch.equal(a.members_[0].score_noise, b.members_[0].score_noise)
    assert not torch.equal(a.members_[0].score_noise, c.members_[0].score_noise)
    assert np.array_equal(a.decision_function(X.head(50)), b.decision_function(X.head(50)))


def test_kurtosis_noise_scale_widens_heavy_tailed_features(telemetry_train, tmp_path):
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"normal": rng.normal(size=500), "heavy": rng.standard_t(2.5, size=500)})
    det = Detector(model="ddae", noise_scale="kurtosis", epochs=2, random_state=0).fit(data)
    scale = det.members_[0].feature_scale
    assert scale[1] > scale[0] and 0.5 <= float(scale.min()) and float(scale.max()) <= 3.0
    assert abs(float(scale[0]) - 1.0) < 0.2
    loaded = Detector.load(det.save(tmp_path / "k"))
    assert torch.equal(loaded.members_[0].feature_scale, scale)
    assert np.array_equal(loaded.decision_function(data), det.decision_function(data))
    uniform = Detector(model="ddae", epochs=2, random_state=0).fit(data)
    assert torch.equal(uniform.members_[0].feature_scale, torch.ones(2))
    with pytest.raises(ValueError, match="noise_scale"):
        Detector(model="ddae", noise_scale="bogus", epochs=1).fit(data)


def test_ddae_with_the_neighbour_term(telemetry_train, X):
    det = Detector(model="ddae", neighbors=5, epochs=3, random_state=0).fit(telemetry_train.head(400))
    assert set(det.term_scales_) == {"model", "neighbors"}
    assert np.isfinite(det.decision_function(X.head(100))).all()
