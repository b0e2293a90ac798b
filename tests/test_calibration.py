"""Split-conformal calibration (anomaly_ae/calibration.py), checked against hand computations.

Conventions under test (read from the code):
- threshold: the ceil((n+1)(1-a))-th smallest held-out score, or the largest when there are too
  few rows for the target (ceil(...) > n, i.e. fewer than 1/a - 1 rows);
- predict: 1 only strictly above the threshold;
- p-value: (1 + #{held-out scores >= s}) / (n + 1);
- severity: normal at or below the threshold; above it, r = (s - median) / (threshold - median)
  grades it low (r < 2), medium (r < 4), high (r < 8), else critical.
"""

import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest

from anomaly_ae.calibration import SEVERITY_LEVELS, Calibration


def conformal_rank(n: int, alpha: str) -> int:
    """The 1-based rank of the threshold, in exact arithmetic on the decimal target a user types."""
    return min(n, math.ceil((n + 1) * (1 - Fraction(alpha))))


@pytest.mark.parametrize("n, alpha, rank", [
    (99, "0.1", 90),     # (100)(0.9) = 90 exactly: no rounding up past an integer
    (100, "0.1", 91),    # (101)(0.9) = 90.9 -> 91
    (199, "0.01", 198),  # (200)(0.99) = 198
    (1000, "0.05", 951),  # (1001)(0.95) = 950.95 -> 951
    (19, "0.05", 19),    # (20)(0.95) = 19: exactly n, the largest
    (50, "0.01", 50),    # fewer than 1/a rows: ceil(50.49) = 51 > n, capped at the largest
    (1, "0.5", 1),
])
def test_threshold_is_the_conformal_order_statistic(n, alpha, rank):
    assert conformal_rank(n, alpha) == rank  # the hand computation above
    scores = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))  # unsorted on purpose
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = Calibration.fit(scores, float(alpha))
    # too few held-out scores for the target (the conformal rank passes n): said, with what to do
    too_few = math.ceil((n + 1) * (1 - Fraction(alpha))) > n
    assert [str(w.message) for w in caught if "calibrate the threshold" in str(w.message)] == (
        [f"only {n} held-out normal samples calibrate the threshold, fewer than the "
         f"{math.ceil(1 / Fraction(alpha)) - 1} that a false-positive rate of {float(alpha):g} needs: the threshold "
         "is the largest of their scores, and new normal data may pass it more often; fit (or recalibrate) on more "
         "normal data or raise target_fpr"] if too_few else [])
    assert too_few == ((n, alpha) in ((50, "0.01"),))
    assert cal.threshold == float(rank)  # score r is the r-th smallest
    assert cal.target_fpr == float(alpha)
    assert np.array_equal(cal.reference_scores, np.arange(1.0, n + 1))  # kept sorted, as float64
    assert cal.reference_scores.dtype == np.float64
    assert cal.validation_fpr == pytest.approx((n - rank) / n)
    assert cal.min_p_value == pytest.approx(1 / (n + 1))


def test_threshold_with_ties_and_negative_scores():
    scores = np.array([-3.0, -1.0, -1.0, -1.0, 2.0, 2.0, 5.0, 7.0, 7.0])  # n = 9
    # a = 0.3: ceil(10 * 0.7) = 7 -> the 7th smallest is 5.0
    assert Calibration.fit(scores, 0.3).threshold == 5.0
    # a = 0.5: ceil(10 * 0.5) = 5 -> 2.0, and the tied 2.0s are not above it
    cal = Calibration.fit(scores[::-1], 0.5)
    assert cal.threshold == 2.0
    assert cal.validation_fpr == pytest.approx(3 / 9)


def test_threshold_rank_is_exact_when_the_product_is_an_integer():
    n = 999
    cal = Calibration.fit(np.arange(1.0, n + 1), 0.059)
    assert cal.threshold == float(conformal_rank(n, "0.059")) == 941.0


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_target_fpr_outside_the_open_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="target_fpr must be in"):
        Calibration.fit(np.arange(10.0), bad)


def test_no_held_out_scores_is_refused():
    with pytest.raises(ValueError, match="at least one held-out normal score"):
        Calibration.fit(np.array([]), 0.1)


def test_predict_is_strictly_above_the_threshold():
    cal = Calibration.fit(np.arange(1.0, 100.0), 0.1)  # threshold 90
    scores = np.array([-1.0, 89.999, 90.0, np.nextafter(90.0, np.inf), 1e9])
    pred = cal.predict(scores)
    assert pred.dtype == np.int64
    assert pred.tolist() == [0, 0, 0, 1, 1]


def test_p_values_against_a_hand_computation():
    cal = Calibration.fit(np.array([4.0, 1.0, 3.0, 2.0]), 0.2)  # n = 4, denominator 5
    scores = np.array([0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 4.5])
    # #{ref >= s}:       4    4    3    2    2    1    0   -> (1 + count) / 5
    expected = np.array([5, 5, 4, 3, 3, 2, 1]) / 5
    assert np.allclose(cal.p_values(scores), expected, rtol=0, atol=1e-15)
    assert cal.p_values(np.array([1e300])).item() == cal.min_p_value
    # a row scored exactly at the threshold is not flagged and its p-value is above the target rate
    assert cal.p_values(np.array([cal.threshold])).item() > cal.target_fpr


def test_p_values_match_a_brute_force_count_on_random_scores():
    rng = np.random.default_rng(3)
    reference = np.round(rng.normal(size=257), 2)  # rounded: plenty of ties
    cal = Calibration.fit(reference, 0.05)
    probe = np.concatenate([np.round(rng.normal(size=500) * 1.5, 2), reference[:20]])
    brute = np.array([(1 + np.sum(reference >= s)) / (len(reference) + 1) for s in probe])
    assert np.allclose(cal.p_values(probe), brute, rtol=0, atol=1e-15)
    # monotone: a higher score never gets a larger p-value
    order = np.argsort(probe, kind="stable")
    assert np.all(np.diff(cal.p_values(probe[order])) <= 0)


def test_severity_bands_against_a_hand_computation():
    cal = Calibration.fit(np.arange(0.0, 101.0), 0.1)  # n = 101: ceil(102 * 0.9) = 92 -> threshold 91
    assert cal.threshold == 91.0
    # median 50, gap 41: bands start at 50 + 2*41 = 132, 50 + 4*41 = 214, 50 + 8*41 = 378
    scores = np.array([10.0, 91.0, 91.5, 131.5, 132.0, 213.5, 214.0, 377.5, 378.0, 1e12])
    expected = ["normal", "normal", "low", "low", "medium", "medium", "high", "high", "critical", "critical"]
    assert cal.severity(scores).tolist() == expected
    # graded exactly when predict flags
    assert ((cal.severity(scores) != "normal") == cal.predict(scores).astype(bool)).all()
    assert set(expected) == set(SEVERITY_LEVELS)


def test_severity_of_a_constant_reference_is_finite_and_ordered():
    cal = Calibration.fit(np.full(50, 2.0), 0.1)  # threshold == median: zero gap
    with np.errstate(all="raise"):  # no division by zero behind the grades
        grades = cal.severity(np.array([1.0, 2.0, 2.0 + 1e-13, 3.0]))
    assert grades.tolist() == ["normal", "normal", "low", "critical"]


def test_round_trip_through_json_keeps_every_decision():
    rng = np.random.default_rng(5)
    cal = Calibration.fit(rng.gamma(2.0, size=333), 0.02)
    payload = json.loads(json.dumps(cal.to_dict()))
    assert payload["validation_fpr"] == cal.validation_fpr
    back = Calibration.from_dict(payload)
    assert back.threshold == cal.threshold and back.target_fpr == cal.target_fpr
    assert np.array_equal(back.reference_scores, cal.reference_scores)
    probe = np.concatenate([rng.gamma(2.0, size=200), [cal.threshold, 0.0, 1e6]])
    assert np.array_equal(back.p_values(probe), cal.p_values(probe))
    assert np.array_equal(back.predict(probe), cal.predict(probe))
    assert np.array_equal(back.severity(probe), cal.severity(probe))


@pytest.mark.parametrize("n, alpha", [(99, 0.1), (199, 0.01), (30, 0.05)])
def test_fresh_exchangeable_scores_are_flagged_at_the_conformal_rate(n, alpha):
    """Each trial calibrates on n normal scores and tests one fresh score from the same distribution.

    By exchangeability the fresh score's rank among the n + 1 is uniform, so a trial flags with
    probability exactly (n + 1 - k) / (n + 1) <= a (k the threshold's rank): the trials are i.i.d.
    Bernoulli and the flag count is Binomial. The tolerance is 4.5 standard deviations, so a
    correct implementation fails with probability < 1e-5; an off-by-one in the rank shifts the
    rate by 1/(n + 1), which is at least 8 standard deviations here.
    """
    trials = 20_000
    rng = np.random.default_rng(20240 + n)
    draws = rng.lognormal(0.0, 1.0, size=(trials, n + 1))  # skewed, like reconstruction errors
    flagged = np.empty(trials, dtype=np.int64)
    p_at_most_a = np.empty(trials, dtype=bool)
    for t in range(trials):
        cal = Calibration.fit(draws[t, :n], alpha)
        flagged[t] = cal.predict(draws[t, n:])[0]
        p_at_most_a[t] = cal.p_values(draws[t, n:])[0] <= alpha
    k = min(n, math.ceil((n + 1) * (1 - alpha)))
    rate = (n + 1 - k) / (n + 1)
    assert rate <= alpha + 1 / (n + 1)
    if (n + 1) * alpha >= 1:  # enough rows for the target: the guarantee holds
        assert rate <= alpha
    tolerance = 4.5 * math.sqrt(rate * (1 - rate) / trials)
    assert abs(flagged.mean() - rate) <= tolerance, (flagged.mean(), rate, tolerance)
    # the p-value is valid: P(p <= a) <= a, and with continuous scores p <= a exactly when flagged
    assert np.array_equal(p_at_most_a, flagged.astype(bool))


def test_p_values_of_fresh_normals_are_uniform_on_the_grid():
    n, trials = 19, 20_000
    rng = np.random.default_rng(11)
    draws = rng.normal(size=(trials, n + 1))
    p = np.array([Calibration.fit(row[:n], 0.1).p_values(row[n:])[0] for row in draws])
    # p takes the values j / (n + 1), j = 1..n+1, each with probability 1 / (n + 1)
    counts = np.bincount(np.rint(p * (n + 1)).astype(int), minlength=n + 2)[1:]
    expected = trials / (n + 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.sum() == trials and len(counts) == n + 1
    assert chi2 < 50.0  # 19 degrees of freedom: P(chi2 > 50) ~ 1e-4
