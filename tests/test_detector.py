"""Detector behaviour: quality on synthetic telemetry, the estimator contract, calibration, explanations."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.metrics import roc_auc_score

from anomaly_ae import Detector
from anomaly_ae.exceptions import DataError, InvalidParameterError, NotFittedError, SchemaError
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

from conftest import FAST

MODELS = ["ae", "dae", "sae", "vae", "aae", "pca"]


@pytest.mark.parametrize("model", MODELS)
def test_quality_floor_on_synthetic_telemetry(fitted, telemetry_test, model):
    detector = fitted(model)
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    scores = detector.decision_function(X)
    assert np.all(np.isfinite(scores))
    assert roc_auc_score(telemetry_test["is_anomaly"], scores) >= 0.95


@pytest.mark.parametrize("model", MODELS)
def test_threshold_is_calibrated_on_held_out_normals(fitted, telemetry_test, model):
    detector = fitted(model)
    normal = telemetry_test[telemetry_test.is_anomaly == 0].drop(columns=list(LABEL_COLUMNS))
    fpr = detector.predict(normal).mean()
    assert fpr <= 0.04, f"{model}: FPR {fpr:.3f} on fresh normals for a 1% target"
    assert detector.calibration_.validation_fpr <= 0.01


def test_vae_scores_recon_elbo_iwae_are_deterministic_and_row_independent(telemetry_train, telemetry_test):
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS)).head(200)
    for score in ["recon", "elbo", "iwae"]:
        det = Detector(model="vae", score=score, **FAST).fit(telemetry_train)
        full = det.decision_function(X)
        assert np.array_equal(full, det.decision_function(X))
        # a row scores the same alone as inside a batch: no per-batch sampling noise
        assert np.allclose(det.decision_function(X.iloc[[7]]), full[7], rtol=1e-5)  # float32 GEMM rounding only
        assert roc_auc_score(telemetry_test.is_anomaly.head(200), full) > 0.9


def test_unknown_score_type_is_refused(telemetry_train):
    with pytest.raises(ValueError, match="not available"):
        Detector(model="ae", score="iwae", epochs=1).fit(telemetry_train)


def test_estimator_contract(telemetry_train):
    det = Detector(model="vae", latent_dim=3, beta=0.5)
    params = det.get_params()
    assert params["model"] == "vae" and params["latent_dim"] == 3 and params["beta"] == 0.5
    assert det.set_params(beta=2.0) is det and det.beta == 2.0
    copy = clone(det)
    assert copy.get_params() == det.get_params() and copy is not det
    assert not hasattr(det, "threshold_")
    with pytest.raises(NotFittedError, match="not fitted"):
        det.decision_function(telemetry_train)
    # code written for scikit-learn catches it too
    with pytest.raises(SklearnNotFittedError, match="call fit"):
        det.predict(telemetry_train)
    fitted = Detector(model="pca").fit(telemetry_train)
    assert isinstance(fitted, Detector)
    assert fitted.threshold_ == fitted.calibration_.threshold
    assert not hasattr(clone(fitted), "threshold_")


def test_estimator_contract_without_inheriting_from_scikit_learn():
    """estimators.Estimator stands in for sklearn.base.BaseEstimator: the same repr of changed parameters,
    nested and invalid set_params, and the tags scikit-learn's tools ask for."""
    from sklearn.utils import get_tags

    det = Detector(model="ae", epochs=5)
    assert repr(det) == "Detector(epochs=5, model='ae')" and repr(Detector()) == "Detector()"
    with pytest.raises(ValueError, match="invalid parameter 'epoch' for Detector"):
        det.set_params(epoch=3)
    with pytest.raises(ValueError, match="invalid parameter model__x: model is 'ae', not an estimator"):
        det.set_params(model__x=1)  # an AttributeError from a str before
    assert get_tags(det).requires_fit and get_tags(det).estimator_type is None
    from sklearn.pipeline import Pipeline
    pipe = Pipeline([("detector", det)]).set_params(detector__epochs=7)
    assert pipe.get_params()["detector__epochs"] == 7 and det.epochs == 7


def test_same_seed_same_model(telemetry_train, telemetry_test):
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    a = Detector(model="ae", **FAST).fit(telemetry_train).decision_function(X)
    b = Detector(model="ae", **FAST).fit(telemetry_train).decision_function(X)
    c = Detector(model="ae", **{**FAST, "random_state": 1}).fit(telemetry_train).decision_function(X)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_p_values_predict_proba_and_severity(fitted, telemetry_test):
    det = fitted("ae")
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    p = det.p_values(X)
    assert np.all((p > 0) & (p <= 1))
    proba = det.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.allclose(proba.sum(1), 1.0)
    assert np.allclose(proba[:, 1], 1 - p)
    frame = det.score_frame(X)
    anomalous = frame["is_anomaly"].to_numpy()
    assert set(frame.loc[~anomalous, "severity"]) == {"normal"}
    assert set(frame.loc[anomalous, "severity"]) <= {"low", "medium", "high", "critical"}
    # flagged rows have p-values at the small end of the held-out distribution
    assert frame.loc[anomalous, "p_value"].max() <= 0.02
    assert list(frame.columns[:4]) == ["score", "p_value", "is_anomaly", "severity"]


def test_explanations_point_at_the_broken_metric(fitted, telemetry_train):
    det = fitted("ae")
    row = telemetry_train.head(50).copy()
    row["latency_ms"] = row["latency_ms"] * 40  # a spike in one metric
    shares = det.explain(row, top_k=None)
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert (shares.idxmax(axis=1) == "latency_ms").mean() > 0.9
    top = det.explain(row, top_k=2)
    assert list(top.columns) == ["feature_1", "contribution_1", "feature_2", "contribution_2"]
    assert (top["contribution_1"] >= top["contribution_2"]).all()


def test_unseen_category_is_scored_and_reported(fitted, telemetry_train):
    det = fitted("ae")
    rows = telemetry_train.head(3).copy()
    rows.loc[rows.index[0], "mode"] = "weekend"
    frame = det.score_frame(rows)
    assert np.isfinite(frame["score"]).all()
    assert "unseen category 'weekend' in 'mode'" in frame["notes"].iloc[0]
    assert frame["notes"].iloc[1] == ""


def test_density_term_finds_rare_points_on_the_manifold(telemetry_train, telemetry_test):
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    det = Detector(model="ae", neighbors=5, **FAST).fit(telemetry_train)
    assert det.neighbors_.reference.shape[0] == int(round(len(telemetry_train) * 0.8))
    assert set(det.term_scales_) == {"model", "neighbors"}
    assert roc_auc_score(telemetry_test.is_anomaly, det.decision_function(X)) >= 0.95
    shares = det.explain(X.head(30), top_k=None)
    assert np.allclose(shares.sum(axis=1), 1.0)
    capped = Detector(model="pca", neighbors=3, max_reference=100).fit(telemetry_train)
    assert capped.neighbors_.reference.shape[0] == 100


def test_the_hybrid_score_is_its_two_standardised_terms_summed(telemetry_train):
    """The default's score: the autoencoders' term and the neighbour distance, each standardised on
    held-out normal rows, added (a score without the neighbour term passed every other test)."""
    from anomaly_ae.scoring import location_spread

    det = Detector(model="ae", neighbors=5, **FAST).fit(telemetry_train)
    x = det.preprocessor_.transform(det.schema_.check(telemetry_train.head(200))[0])
    model_scores, _ = det.scorer_.member_scores(x)
    distance, _ = det.scorer_.neighbor_distances(x)
    (m_loc, m_spread), (k_loc, k_spread) = det.term_scales_["model"], det.term_scales_["neighbors"]
    expected = (model_scores - m_loc) / m_spread + (distance - k_loc) / k_spread
    np.testing.assert_allclose(det.decision_function(telemetry_train.head(200)), expected, rtol=1e-5, atol=1e-6)
    assert det.score_name_ == "recon+knn" and Detector(model="pca").fit(telemetry_train).score_name_ == "recon"
    assert location_spread(distance)[1] > 0 and np.corrcoef(model_scores, distance)[0, 1] < 0.999


def test_on_discrete_data_the_neighbour_term_keeps_a_usable_scale():
    """Rows with k exact duplicates in the reference have distance 0: with 90% of the held-out rows such,
    the neighbour term's spread was 1e-12, any rarer row scored ~1e12 and every flagged row was critical."""
    rng = np.random.default_rng(0)

    def discrete(n: int) -> pd.DataFrame:
        return pd.DataFrame({"status": rng.choice(["ok", "warn"], n, p=[0.9, 0.1]), "retries": rng.poisson(0.3, n),
                             "workers": rng.choice([4, 8], n), "errors": rng.poisson(0.2, n)})

    det = Detector(neighbors=5, **FAST).fit(discrete(3000))
    location, spread = det.term_scales_["neighbors"]
    assert location == 0.0 and spread > 0.01
    frame = det.score_frame(discrete(5000))
    assert frame["score"].max() < 1e4
    assert frame["is_anomaly"].any() and (frame.loc[frame["is_anomaly"], "severity"] != "critical").any()


def test_the_neighbour_term_flags_an_empty_stretch_of_the_manifold_the_model_reconstructs():
    """Normal rows lie on a line in two clusters; a row on the line between them is reconstructed
    exactly by a 1-component PCA (nothing unusual to it) but has no normal neighbours."""
    rng = np.random.default_rng(0)
    t = np.r_[rng.uniform(0, 1, 600), rng.uniform(2, 3, 600)]
    X = pd.DataFrame({"a": t, "b": 2 * t + 1 + rng.normal(0, 0.01, len(t))})
    gap = pd.DataFrame({"a": [1.5], "b": [4.0]})
    plain = Detector(model="pca", random_state=0).fit(X)  # one component: the line
    hybrid = Detector(model="pca", neighbors=5, random_state=0).fit(X)
    assert not plain.predict(gap)[0] and hybrid.predict(gap)[0]
    assert hybrid.p_values(gap)[0] < 0.01


def test_numpy_input_and_ensembles(telemetry_train):
    X = telemetry_train.drop(columns=["mode"]).to_numpy()
    det = Detector(model="ae", n_estimators=2, **FAST).fit(X)
    assert len(det.members_) == 2
    assert det.decision_function(X[:5]).shape == (5,)
    assert det.feature_names_[0] == "x0"


def test_missing_category_allowed_when_seen_in_training_is_not_called_unseen(telemetry_train):
    data = telemetry_train.copy()
    data["mode"] = data["mode"].astype(object)
    data.loc[data.index[::10], "mode"] = None
    det = Detector(model="pca").fit(data)
    frame = det.score_frame(data.head(11))
    assert frame["notes"].iloc[0] == "" and np.isfinite(frame["score"]).all()


def test_missing_values_allowed_when_seen_in_training(telemetry_train):
    data = telemetry_train.copy()
    data.loc[data.index[::10], "cpu_util_pct"] = np.nan
    det = Detector(model="pca").fit(data)
    assert "cpu_util_pct__missing" in det.preprocessor_.feature_names
    frame = det.score_frame(data.head(11))
    assert np.isfinite(frame["score"]).all()
    assert "missing 'cpu_util_pct' imputed" in frame["notes"].iloc[0]


def test_constant_column_and_extreme_values_stay_finite(telemetry_train):
    data = telemetry_train.copy()
    data["constant"] = 5.0
    det = Detector(model="ae", **FAST).fit(data)
    probe = data.head(3).copy()
    probe["constant"] = [5.0, 6.0, 1e300]
    probe["latency_ms"] = [1e308, -1e308, 0.0]
    scores = det.decision_function(probe)
    assert np.all(np.isfinite(scores)) and np.all(scores > det.threshold_)
    # the clipped values are named: their rows are scored as if they lay at the clip
    notes = det.score_frame(probe)["notes"]
    assert "'latency_ms' lies more than 10,000 standard deviations" in notes.iloc[0]
    assert "'constant'" not in notes.iloc[0] and "'latency_ms'" in notes.iloc[1]
    assert "'constant' lies more than" in notes.iloc[2] and "'latency_ms'" not in notes.iloc[2]
    assert det.score_frame(data.head(3))["notes"].eq("").all()


def test_images_use_the_conv_models_on_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[:, None].astype(np.float32)  # (N, 1, 8, 8)
    normal = digits.target == 0
    rng = np.random.default_rng(0)
    idx = rng.permutation(np.flatnonzero(normal))
    train, test_normal = images[idx[:140]], images[idx[140:]]
    test = np.concatenate([test_normal, images[~normal][:300]])
    labels = np.r_[np.zeros(len(test_normal)), np.ones(300)]
    for model in ["ae", "vae", "aae"]:
        det = Detector(model=model, epochs=60, patience=10).fit(train)
        assert det.model_spec_["input_shape"] == [1, 8, 8]
        assert type(det.members_[0].encoder).__name__ == "ConvEncoder"
        assert roc_auc_score(labels, det.decision_function(test)) > 0.9, model
    frame = det.score_frame(test[:2], top_k=2)
    assert frame["feature_1"].iloc[0].startswith("pixel[")


def test_too_few_rows_and_bad_params(telemetry_train):
    with pytest.raises(DataError, match="at least 10 normal rows"):
        Detector().fit(telemetry_train.head(5))
    with pytest.raises(ValueError, match="unknown model"):
        Detector(model="gan").fit(telemetry_train)
    with pytest.raises(ValueError, match="target_fpr"):
        Detector(target_fpr=0).fit(telemetry_train)
    with pytest.raises(DataError, match="validation_fraction=0.96 of 10 rows leaves 0 to train on"):
        Detector(validation_fraction=0.96).fit(telemetry_train.head(10))  # was "has no value in the training rows"


def test_a_training_run_that_diverges_is_an_error_not_a_model(telemetry_train):
    """Every validation loss NaN or inf: the "best" weights were the first epoch's, and scoring later
    blamed the data."""
    from anomaly_ae.exceptions import TrainingError

    with pytest.raises(TrainingError, match=r"training diverged: .*lower learning_rate \(now 1000.0\)"):
        Detector(model="ae", learning_rate=1000.0, epochs=3, random_state=0).fit(telemetry_train)


@pytest.mark.parametrize("params, message", [
    (dict(epochs=0), "epochs must be an integer >= 1"), (dict(epochs=2.5), "epochs must be an integer"),
    (dict(batch_size=-5), "batch_size must be"), (dict(latent_dim=0), "latent_dim must be"),
    (dict(hidden_dims=[32, 0]), "each of hidden_dims"), (dict(hidden_dims=16), "a list of layer widths"),
    (dict(hidden_dims="16,8"), "a list of layer widths"), (dict(patience=-1), "patience must be"),
    (dict(learning_rate=float("nan")), "learning_rate must be a finite number > 0"),
    (dict(learning_rate=0), "learning_rate must be"), (dict(noise=-1), "noise must be a finite number >= 0"),
    (dict(model="pca", variance_kept=2), "variance_kept must be in"), (dict(device="tpu"), "device must be"),
    (dict(random_state="x"), "random_state must be an integer"),
    (dict(random_state=2**64), r"random_state must be an integer in \[0, 4294967295\]"),
    (dict(model="ae", score="bogus"), "score 'bogus' is not available for Autoencoder; choose one of")])
def test_bad_training_parameters_are_refused_before_training(telemetry_train, params, message):
    with pytest.raises(InvalidParameterError, match=message):
        Detector(**params).fit(telemetry_train)


def test_inputs_the_checks_would_misread_are_refused(fitted, telemetry_train):
    det, X = fitted("pca"), telemetry_train.drop(columns=list(LABEL_COLUMNS), errors="ignore")
    column = X.select_dtypes("number").columns[0]
    with pytest.raises(SchemaError, match="holds timestamps"):  # not nanoseconds since 1970
        det.decision_function(X.assign(**{column: pd.Timestamp("2024-01-01")}))
    with pytest.raises(SchemaError, match="duplicate column names"):
        det.decision_function(pd.concat([X, X[[column]]], axis=1))
    for top_k in (0, -1, 2.5, "3", True):
        with pytest.raises(InvalidParameterError, match="top_k must be an integer >= 1"):
            det.explain(X.head(3), top_k=top_k)
    assert list(det.explain(X.head(3), top_k=2).columns[:2]) == ["feature_1", "contribution_1"]
    nested = X.head(50).astype({column: object})
    nested.at[nested.index[3], column] = [1.0]
    with pytest.raises(DataError, match=f"column '{column}' holds a list in rows \\[3\\]"):
        Detector(model="pca").fit(nested)


def test_score_frame_keeps_the_input_index(fitted, telemetry_train):
    rows = telemetry_train.iloc[[5, 9]].copy()
    rows.index = pd.Index(["a", "b"])
    assert list(fitted("pca").score_frame(rows).index) == ["a", "b"]


def test_knn_baseline_scores_by_neighbour_distance_alone(telemetry_train, telemetry_test, tmp_path):
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    det = Detector(model="knn", random_state=0).fit(telemetry_train)
    assert det.members_ == [] and det.neighbors_.k == 5 and det.score_type_ == "distance"
    scores = det.decision_function(X)
    assert np.isfinite(scores).all() and (scores >= 0).all()
    assert roc_auc_score(telemetry_test["is_anomaly"], scores) > 0.95
    explained = det.explain(X.head(20), top_k=None)
    np.testing.assert_allclose(explained.sum(axis=1), 1.0)
    loaded = Detector.load(det.save(tmp_path / "knn"))
    assert np.array_equal(loaded.decision_function(X), scores)
    with pytest.raises(ValueError, match="neighbors must be >= 1"):
        Detector(model="knn", neighbors=0).fit(telemetry_train)
    with pytest.raises(ValueError, match="'distance' only"):
        Detector(model="knn", score="elbo").fit(telemetry_train)


def test_top_k_of_score_frame_and_the_pyfunc_is_checked(fitted, telemetry_train):
    from anomaly_ae.registry.pyfunc import DetectorPyfunc

    det, X = fitted("pca"), telemetry_train.drop(columns=list(LABEL_COLUMNS), errors="ignore").head(3)
    assert not any(c.startswith("feature_") for c in det.score_frame(X, top_k=0).columns)
    for bad in (-1, 2.7, "x", None):
        with pytest.raises(InvalidParameterError, match="top_k must be an integer >= 0"):
            det.score_frame(X, top_k=bad)
    pyfunc = DetectorPyfunc(det)
    assert "feature_3" in pyfunc.predict(X, params={"top_k": None}).columns  # unset: the default, 3
    with pytest.raises(InvalidParameterError, match="top_k must be an integer >= 0, got -1"):
        pyfunc.predict(X, params={"top_k": -1})


def test_an_identifier_like_text_column_is_warned_of_at_fit(telemetry_train):
    import warnings

    X = telemetry_train.drop(columns=list(LABEL_COLUMNS), errors="ignore").head(300)
    with pytest.warns(UserWarning, match="column 'request_id' has 300 distinct values in 300 rows: it looks like an "
                                         "identifier"):
        Detector(model="pca").fit(X.assign(request_id=[f"r{i}" for i in range(300)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a real category (mode) is not (60 held-out rows suit a 5% target)
        Detector(model="pca", target_fpr=0.05).fit(X)


def test_recalibrate_on_drifted_normal_data_restores_the_target_rate(tmp_path):
    data = make_telemetry(4000, 0.0, seed=3).drop(columns=list(LABEL_COLUMNS))
    det = Detector("knn").fit(data.iloc[:2000])
    drifted = data.iloc[2000:].copy()
    drifted["latency_ms"] *= 1.3  # normal behaviour, on a new level
    recent, later = drifted.iloc[:1000], drifted.iloc[1000:]
    before, old = det.decision_function(later), det.threshold_
    assert np.mean(before > old) > 0.05  # the drift breaks the old threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # new normal rows: no warning
        assert det.recalibrate(recent) is det
    assert det.threshold_ > old and det.predict(later).mean() <= 0.03
    np.testing.assert_array_equal(det.decision_function(later), before)  # the model itself is unchanged
    assert det.p_values(later).min() >= 1 / 1001
    assert det.training_metadata_["recalibrations"] == [{"rows": 1000, "target_fpr": 0.01}]
    det.recalibrate(recent, target_fpr=0.05)
    assert det.target_fpr == 0.05 and 0.02 <= det.predict(later).mean() <= 0.09
    loaded = Detector.load(det.save(tmp_path / "model"))
    assert loaded.threshold_ == det.threshold_ and loaded.target_fpr == 0.05
    np.testing.assert_array_equal(loaded.predict(later), det.predict(later))
    for bad in (0, 1.5, "0.1", True):
        with pytest.raises(InvalidParameterError, match="target_fpr"):
            det.recalibrate(recent, target_fpr=bad)
    with pytest.warns(UserWarning, match="score lower than the held-out normal rows"):
        det.recalibrate(data.iloc[:2000])  # the rows it trained on


def test_pca_keeps_a_residual_direction_when_one_hot_groups_lower_the_rank():
    rng = np.random.default_rng(1)
    data = pd.DataFrame(rng.normal(size=(300, 3)), columns=list("abc")).assign(cat=rng.choice(["u", "v"], 300))
    det = Detector("pca").fit(data)
    assert det.threshold_ > 1e-3  # not rounding noise: every row reconstructed exactly
    far = data.head(10).assign(a=8.0, b=8.0, c=8.0)
    assert det.predict(far).sum() >= 5 and det.predict(data.head(10)).sum() <= 1


def test_an_extreme_training_value_is_warned_of_and_recalibrating_needs_rows():
    data = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 3)), columns=list("abc"))
    data.iloc[7, 0] = 1e300  # a unit or sensor error: it would set the scale or the threshold
    with pytest.warns(UserWarning, match=r"column 'a' has training values .* in rows \[7\]"):
        det = Detector("pca").fit(data)
    with pytest.raises(DataError, match="at least 10 normal rows, got 3"):
        det.recalibrate(data.iloc[20:23])


def test_a_latent_code_as_wide_as_the_input_is_warned_of():
    X = np.random.default_rng(0).normal(size=(200, 3))
    with pytest.warns(UserWarning, match="latent_dim=5 is not smaller than the model's 3 inputs"):
        Detector("ae", latent_dim=5, epochs=2).fit(X)


def test_a_column_with_no_value_in_training_is_refused_by_both_detectors():
    from anomaly_ae import SeriesDetector

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "d": np.nan})
    for estimator in (Detector("pca"), SeriesDetector("pca", window=8)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # not numpy's "All-NaN slice" either
            with pytest.raises(DataError, match="column 'd' has no value in the training rows \\(all missing\\)"):
                estimator.fit(X)


def test_ignored_columns_are_left_out_of_fit_and_of_every_later_input(tmp_path):
    from anomaly_ae import SeriesDetector

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300), "host_id": np.arange(300)})
    det = Detector("pca", ignore_columns=["host_id"]).fit(X)
    assert det.schema_.names == ["a", "b"]
    expected = det.decision_function(X[["a", "b"]])
    np.testing.assert_array_equal(det.decision_function(X), expected)  # the id is there, or not
    loaded = Detector.load(det.save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.decision_function(X), expected)
    with pytest.raises(SchemaError, match="unexpected column\\(s\\): other"):
        loaded.decision_function(X.assign(other=1.0))  # only the named ones
    for bad in ("host_id", [1], 5):
        with pytest.raises(InvalidParameterError, match="ignore_columns must be a list of column names"):
            Detector("pca", ignore_columns=bad).fit(X)
    with pytest.raises(InvalidParameterError, match="ignore_columns names 'ts', the time column the model reads"):
        SeriesDetector("pca", time_col="ts", ignore_columns=["ts"]).validate_params()


def test_a_rows_unseen_category_note_does_not_depend_on_its_batch(telemetry_train):
    """A category seen in training but outside the encoder's vocabulary (max_categories) was noted as unseen
    only when another row of the request held a category never seen at all."""
    X = telemetry_train.drop(columns=list(LABEL_COLUMNS), errors="ignore").head(600)
    det = Detector(model="pca", max_categories=2).fit(X)
    rare = next(m for m in X["mode"].unique() if m not in det.preprocessor_.categorical["mode"])
    row = X[X["mode"] == rare].head(1)
    odd = row.assign(mode="never-seen")
    alone = det.score_frame(row)["notes"].iloc[0]
    together = det.score_frame(pd.concat([row, odd]))["notes"].tolist()
    assert alone == together[0] == "" and together[1] == "unseen category 'never-seen' in 'mode'"
