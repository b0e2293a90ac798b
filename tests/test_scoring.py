"""Scoring behaviour (anomaly_ae/scoring.py), through the public Detector API where possible.

A row's score must depend on that row alone: not on how rows are batched, ordered or mixed with
others, and not on the global torch RNG. Float32 matrix products may round differently for
different batch shapes, hence the tight tolerances rather than exact equality across batchings.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_ae import Detector
from anomaly_ae.data.synthetic import LABEL_COLUMNS
from anomaly_ae.scoring import score_array

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def X(telemetry_test):
    return telemetry_test.drop(columns=list(LABEL_COLUMNS))


@pytest.fixture(scope="module")
def hybrid(telemetry_train):
    """The default model family (ensemble + neighbour density term), trained briefly: these tests
    are about how scores are computed, not how good they are."""
    return Detector(epochs=5, patience=5, random_state=0).fit(telemetry_train.head(600))


@pytest.fixture(params=["ae", "vae", "pca", "hybrid"])
def detector(request, fitted, hybrid):
    return hybrid if request.param == "hybrid" else fitted(request.param)


def test_scores_do_not_depend_on_how_rows_are_split_into_calls(detector, X):
    full = detector.decision_function(X)
    cuts = [0, 1, 8, 9, 700, len(X)]
    pieces = [detector.decision_function(X.iloc[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    np.testing.assert_allclose(np.concatenate(pieces), full, rtol=RTOL, atol=ATOL)


def test_a_helper_thread_scores_half_a_large_batch_to_the_same_result(detector, X):
    """The service hands a request it scores alone a second thread (`InferencePath.score(helper=)`):
    a batch of SPLIT_MIN_ROWS or more is scored in two halves at once, and nothing in the result changes."""
    from concurrent.futures import ThreadPoolExecutor

    from anomaly_ae.inference import SPLIT_MIN_ROWS

    class Counting(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            self.submitted += 1
            return super().submit(*args, **kwargs)

    rows = X.head(SPLIT_MIN_ROWS + 1)
    path = detector.inference_
    alone = path.score(rows, top_k=2)
    with Counting(1) as helper:
        split = path.score(rows, top_k=2, helper=helper)
        small = path.score(rows.head(SPLIT_MIN_ROWS - 1), helper=helper)
        assert helper.submitted == 1  # the large batch only
    np.testing.assert_allclose(split.scores, alone.scores, rtol=RTOL, atol=ATOL)
    assert split.top_features == alone.top_features
    assert np.array_equal(split.is_anomaly, alone.is_anomaly)
    np.testing.assert_allclose(small.scores, alone.scores[:SPLIT_MIN_ROWS - 1], rtol=RTOL, atol=ATOL)


def test_scores_do_not_depend_on_row_order_or_company(detector, X):
    full = detector.decision_function(X)
    perm = np.random.default_rng(0).permutation(len(X))
    np.testing.assert_allclose(detector.decision_function(X.iloc[perm]), full[perm], rtol=RTOL, atol=ATOL)
    # the same row among other rows: a row's score is not computed from batch statistics
    row = X.iloc[[42]]
    others = X.iloc[900:1000]
    mixed = detector.decision_function(pd.concat([others.head(50), row, others.tail(50)]))
    np.testing.assert_allclose(mixed[50], full[42], rtol=RTOL, atol=ATOL)


def test_scores_are_repeatable_and_ignore_the_global_torch_seed(detector, X):
    torch.manual_seed(1)
    first = detector.decision_function(X.head(300))
    torch.manual_seed(2)
    torch.randn(10)
    assert np.array_equal(detector.decision_function(X.head(300)), first)


def test_score_array_batch_size_does_not_change_scores_or_contributions(fitted, X):
    """The one direct call: the internal batch size must be invisible (it is 4096 in the Detector)."""
    for model in ("ae", "vae"):
        det = fitted(model)
        x = det.preprocessor_.transform(det.schema_.check(X.head(301))[0])
        member = det.members_[0]
        eps = torch.randn(4, member.latent_dim, generator=torch.Generator().manual_seed(0)) if model == "vae" else None
        one_total, one_contrib = score_array(member, x, det.score_type_, torch.device("cpu"), eps, batch_size=4096)
        small_total, small_contrib = score_array(member, x, det.score_type_, torch.device("cpu"), eps, batch_size=7)
        assert one_total.shape == (301,) and one_contrib.shape == (301, x.shape[1])
        np.testing.assert_allclose(small_total, one_total, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(small_contrib, one_contrib, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model, extra", [("ae", {}), ("ae", {"n_estimators": 2}), ("vae", {"score": "recon"})])
def test_recon_score_is_the_mean_of_its_per_feature_contributions(telemetry_train, X, model, extra):
    det = Detector(model=model, epochs=3, random_state=0, **extra).fit(telemetry_train.head(400))
    assert det.score_type_ == "recon"
    x = det.preprocessor_.transform(det.schema_.check(X.head(200))[0])
    scores, contributions = det.scorer_.score(x)
    assert contributions.shape == (200, len(det.preprocessor_.feature_names))
    assert (contributions >= 0).all()  # squared errors
    # the score is averaged in float32 by the model, the contributions are returned as float64
    np.testing.assert_allclose(scores, contributions.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(scores, det.decision_function(X.head(200)))


def test_explanations_group_contributions_by_input_column(fitted, X):
    det = fitted("ae")
    x = det.preprocessor_.transform(det.schema_.check(X.head(50))[0])
    _, contributions = det.scorer_.score(x)
    shares = det.explain(X.head(50), top_k=None)
    groups = det.preprocessor_.groups
    by_column = np.column_stack([contributions[:, groups[name]].sum(1) for name in det.schema_.names])
    np.testing.assert_allclose(shares.to_numpy(), by_column / by_column.sum(1, keepdims=True), rtol=1e-9)


@pytest.mark.parametrize("score", ["elbo", "iwae"])
def test_vae_sampled_scores_are_reproducible_from_the_seed(telemetry_train, X, score):
    """elbo and iwae average over latent draws; the draws are fixed by random_state, so two
    detectors fitted alike score alike, row by row, and a different seed gives other scores."""
    params = dict(model="vae", score=score, epochs=4, n_samples=8)
    data = telemetry_train.head(400)
    a = Detector(**params, random_state=0).fit(data)
    b = Detector(**params, random_state=0).fit(data)
    c = Detector(**params, random_state=1).fit(data)
    rows = X.head(100)
    sa = a.decision_function(rows)
    assert np.all(np.isfinite(sa))
    assert np.array_equal(sa, b.decision_function(rows))
    assert not np.allclose(sa, c.decision_function(rows))
    np.testing.assert_allclose(a.decision_function(rows.iloc[[13]]), sa[[13]], rtol=RTOL, atol=ATOL)


def test_the_default_three_autoencoders_score_as_one_stack_as_each_alone(hybrid, X):
    """The default's members (dense autoencoders of one shape) run as one stack of batched products:
    the same scores and contributions as each member's own `score_array`, averaged; a member of
    another shape, or another family, keeps the members one by one."""
    from anomaly_ae.models.stacked import StackedAutoencoders

    scorer = hybrid.scorer_
    x = hybrid.inference_.score(X.head(300)).model_input
    assert scorer._stack() is not None and len(scorer.members) == 3
    stacked = scorer.member_scores(x)
    alone = [score_array(m, x, scorer.score_type, scorer.device, None) for m in scorer.members]
    np.testing.assert_allclose(stacked[0], np.mean([a[0] for a in alone], 0), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(stacked[1], np.mean([a[1] for a in alone], 0), rtol=RTOL, atol=ATOL)
    one_row = scorer.member_scores(x[:1])
    np.testing.assert_allclose(one_row[0], stacked[0][:1], rtol=RTOL, atol=ATOL)
    assert StackedAutoencoders.of(scorer.members[:1]) is None  # one member: nothing to stack
    other = Detector("vae", n_estimators=2, epochs=1, random_state=0).fit(X.head(200))
    assert other.scorer_._stack() is None
    bias = scorer.members[0].decoder[-1].bias
    saved = bias.detach().clone()
    with torch.no_grad():  # weights that change (training resumed) rebuild the stack
        bias.add_(1.0)
    try:
        assert not np.allclose(scorer.member_scores(x[:5])[0], stacked[0][:5])
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    np.testing.assert_allclose(scorer.member_scores(x)[0], stacked[0], rtol=RTOL, atol=ATOL)


def test_a_score_terms_spread_is_never_the_rounding_floor():
    """Discrete data: 90% or all of the held-out rows at the median (distance 0 to k duplicates)."""
    from anomaly_ae.scoring import location_spread

    assert location_spread(np.r_[np.zeros(95), np.ones(5)]) == [0.0, 0.05]
    assert location_spread(np.zeros(100)) == [0.0, 1.0]
    assert location_spread(np.arange(11.0)) == [5.0, 4.0]  # the usual case: the 90th percentile above the median
