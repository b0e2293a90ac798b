"""The preprocessing transform (anomaly_ae/data/preprocess.py) on checked input, against hand computations."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly_ae.data.preprocess import CLIP, MISSING, UNKNOWN, Preprocessor
from anomaly_ae.data.schema import Schema
from anomaly_ae.exceptions import DataError, SchemaError


def fit(frame: pd.DataFrame, **kwargs) -> tuple[Preprocessor, Schema]:
    """Infer the schema and fit on the checked frame, as Detector.fit does."""
    schema = Schema.infer(frame)
    checked, _ = schema.check(frame)
    return Preprocessor(**kwargs).fit(checked, schema), schema


def transform(pre: Preprocessor, schema: Schema, frame: pd.DataFrame) -> np.ndarray:
    return pre.transform(schema.check(frame)[0])


@pytest.fixture
def train():
    return pd.DataFrame({
        "load": [1.0, 2.0, 3.0, 4.0, 10.0],
        "gauge": [np.nan, 2.0, 4.0, np.nan, 9.0],  # has missing values: gets an indicator
        "const": [5.0, 5.0, 5.0, 5.0, 5.0],
        "mode": ["day", "night", "day", "batch", "day"],
    })


def test_layout_feature_names_and_groups(train):
    pre, _ = fit(train)
    assert pre.feature_names == ["load", "gauge", "gauge__missing", "const",
                                 "mode=batch", "mode=day", "mode=night", f"mode={UNKNOWN}"]
    assert pre.groups == {"load": [0], "gauge": [1, 2], "const": [3], "mode": [4, 5, 6, 7]}
    assert pre.n_outputs == 8
    # the groups partition the output columns, in schema order
    assert sorted(i for idx in pre.groups.values() for i in idx) == list(range(pre.n_outputs))


def test_numeric_columns_are_standardised_with_training_statistics(train):
    pre, schema = fit(train)
    out = transform(pre, schema, train)
    assert out.dtype == np.float32 and out.shape == (5, 8)
    load = train["load"].to_numpy()
    np.testing.assert_allclose(out[:, 0], (load - load.mean()) / load.std(), rtol=1e-6)  # population std
    np.testing.assert_allclose([out[:, 0].mean(), out[:, 0].std()], [0.0, 1.0], atol=1e-6)
    assert pre.numeric["load"] == {"mean": 4.0, "scale": pytest.approx(np.std(load)), "median": 3.0,
                                   "missing_indicator": False}
    # new rows use the training statistics, not their own
    new = train.head(2).assign(load=[4.0, 4.0 + 2 * np.std(load)])
    np.testing.assert_allclose(transform(pre, schema, new)[:, 0], [0.0, 2.0], atol=1e-6)


def test_a_constant_column_is_only_centred(train):
    pre, schema = fit(train)
    assert pre.numeric["const"]["scale"] == 1.0 and pre.numeric["const"]["mean"] == 5.0
    probe = train.assign(const=[5.0, 6.0, 4.5, -5.0, 1005.0])
    np.testing.assert_array_equal(transform(pre, schema, probe)[:, 3], np.float32([0.0, 1.0, -0.5, -10.0, 1000.0]))


def test_missing_values_become_the_training_median_plus_an_indicator(train):
    pre, schema = fit(train)
    observed = np.array([2.0, 4.0, 9.0])
    p = pre.numeric["gauge"]
    assert p["missing_indicator"] is True and p["median"] == 4.0
    assert p["mean"] == pytest.approx(observed.mean()) and p["scale"] == pytest.approx(observed.std())
    out = transform(pre, schema, train)
    expected_gauge = (np.array([4.0, 2.0, 4.0, 4.0, 9.0]) - observed.mean()) / observed.std()
    np.testing.assert_allclose(out[:, 1], expected_gauge, rtol=1e-6)
    np.testing.assert_array_equal(out[:, 2], [1.0, 0.0, 0.0, 1.0, 0.0])
    # no indicator where training had no missing values, and the schema refuses them there
    assert "load__missing" not in pre.feature_names
    with pytest.raises(SchemaError, match="had none in training"):
        transform(pre, schema, train.assign(load=[np.nan, 1.0, 1.0, 1.0, 1.0]))


def test_a_column_missing_in_every_training_row_is_refused():
    # a scale made up for it (1 around 0) would judge every value it later takes by nothing learned
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "empty": [np.nan, np.nan, np.nan]})
    with pytest.raises(DataError, match="column 'empty' has no value in the training rows"):
        fit(frame)


def test_one_hot_with_unknown_bucket(train):
    pre, schema = fit(train)
    assert pre.categorical["mode"] == ["batch", "day", "night", UNKNOWN]  # no missing in training: no bucket
    probe = train.head(4).assign(mode=["night", "weekend", "day", "batch"])
    block = transform(pre, schema, probe)[:, pre.groups["mode"]]
    np.testing.assert_array_equal(block, np.eye(4, dtype=np.float32)[[2, 3, 1, 0]])


def test_categorical_missing_bucket_only_where_training_had_missing():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "c": ["a", None, "b", "a"]})
    pre, schema = fit(frame)
    assert pre.categorical["c"] == ["a", "b", UNKNOWN, MISSING]
    out = transform(pre, schema, pd.DataFrame({"x": [0.0] * 3, "c": [None, "zzz", "b"]}))
    np.testing.assert_array_equal(out[:, pre.groups["c"]], np.eye(4, dtype=np.float32)[[3, 2, 1]])


def test_categories_are_compared_as_text():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": pd.Series(["1", "2", "2"], dtype=object)})
    pre, schema = fit(frame)
    probe = pd.DataFrame({"x": [0.0, 0.0], "c": pd.Series([1, "2"], dtype=object)})  # the int 1 is "1"
    np.testing.assert_array_equal(transform(pre, schema, probe)[:, pre.groups["c"]], [[1, 0, 0], [0, 1, 0]])


def test_max_categories_keeps_the_most_frequent_with_ties_by_name():
    values = ["d"] * 5 + ["c"] * 3 + ["a"] * 2 + ["b"] * 2 + ["e"]
    frame = pd.DataFrame({"x": np.arange(len(values), dtype=float), "c": values})
    pre, schema = fit(frame, max_categories=3)
    # d (5), c (3), then a beats b on the tie (2 each) by name; buckets are listed sorted
    assert pre.categorical["c"] == ["a", "c", "d", UNKNOWN]
    out = transform(pre, schema, frame.head(1).assign(c="b"))
    np.testing.assert_array_equal(out[0, pre.groups["c"]], [0, 0, 0, 1])


def test_round_trip_through_json_gives_the_same_transform(train):
    pre, schema = fit(train)
    payload = json.loads(json.dumps(pre.to_dict(), allow_nan=False))  # strict JSON: no NaN/Infinity
    schema_back = Schema.from_dict(json.loads(json.dumps(schema.to_dict())))
    back = Preprocessor.from_dict(payload, schema_back)
    assert back.feature_names == pre.feature_names and back.groups == pre.groups
    assert back.numeric == pre.numeric and back.categorical == pre.categorical
    probe = train.assign(mode=["day", "weekend", "night", "batch", "day"],
                         gauge=[np.nan, 1e9, -3.0, np.nan, 0.0], load=[0.0, -1e300, 1e300, 3.5, 2.0])
    np.testing.assert_array_equal(back.transform(schema_back.check(probe)[0]), transform(pre, schema, probe))


def test_inverse_transform_recovers_the_columns(train):
    pre, schema = fit(train)
    frame = train.assign(gauge=[1.0, 2.0, 4.0, 3.0, 9.0])
    back = pre.inverse_transform(transform(pre, schema, frame))
    np.testing.assert_allclose(back[["load", "gauge", "const"]].to_numpy(), frame[["load", "gauge", "const"]].to_numpy(),
                               rtol=1e-5)
    assert back["mode"].tolist() == frame["mode"].tolist()
    with pytest.raises(ValueError, match="expected a"):
        pre.inverse_transform(np.zeros((2, 3)))


def test_images_scale_to_the_training_range():
    images = np.linspace(-2.0, 6.0, 2 * 4 * 4).reshape(2, 1, 4, 4)
    schema = Schema.infer(images)
    pre = Preprocessor().fit(images, schema)
    assert pre.image_range == (-2.0, 6.0)
    out = pre.transform(images)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(pre.inverse_transform(out), images, rtol=1e-6, atol=1e-6)
    flat = Preprocessor().fit(np.full((1, 1, 2, 2), 3.0), schema)  # constant images: a unit range
    assert flat.image_range == (3.0, 4.0)


# ------------------------------------------------------------------ every finite input stays finite
def tiny_spread_training() -> pd.DataFrame:
    """A realistic column, a nearly constant one (standard deviation 5e-151: dividing a large value
    by it overflows), a constant one, one with gaps, and a categorical one."""
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "normal": rng.normal(50.0, 10.0, 200),
        "tiny": np.r_[np.zeros(100), np.full(100, 1e-150)],
        "const": np.full(200, -7.0),
        "with_gaps": np.where(rng.random(200) < 0.1, np.nan, rng.normal(0, 1, 200)),
        "c": rng.choice(["x", "y"], 200),
    })


# fitted once at import: pure and read-only (hypothesis runs many examples per test call)
PREPROCESSOR = fit(tiny_spread_training())
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rows=st.lists(st.tuples(finite, finite, finite, st.one_of(st.none(), finite), st.sampled_from(["x", "y", "", "x "])),
                     min_size=1, max_size=5))
def test_every_finite_input_gives_a_finite_clipped_output(rows):
    pre, schema = PREPROCESSOR
    probe = pd.DataFrame(rows, columns=["normal", "tiny", "const", "with_gaps", "c"])
    probe["with_gaps"] = probe["with_gaps"].astype(float)
    with np.errstate(over="ignore", invalid="ignore"):  # the point is the result, not the route
        out = transform(pre, schema, probe)
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= CLIP
    # squared errors of the model stay finite in float32, as the module promises
    assert np.isfinite(np.square(out.astype(np.float32) * 2)).all()



def test_extreme_values_hit_the_clip_with_their_sign():
    pre, schema = PREPROCESSOR
    probe = tiny_spread_training().head(3).assign(normal=[1e308, -1e308, 50.0], tiny=[1.0, -1.0, 5e-151])
    with np.errstate(over="ignore"):
        out = transform(pre, schema, probe)
    assert out[0, 0] == CLIP and out[1, 0] == -CLIP and abs(out[2, 0]) < 1
    assert pre.numeric["tiny"]["scale"] == pytest.approx(5e-151)
    assert out[0, 1] == CLIP and out[1, 1] == -CLIP and abs(out[2, 1]) < 1e-6


def test_training_statistics_stay_finite_for_finite_extreme_training_values():
    frame = pd.DataFrame({"big": np.r_[np.full(200, 1e308), np.full(200, -1e308)], "x": np.arange(400.0)})
    with np.errstate(over="ignore", invalid="ignore"):
        pre, schema = fit(frame)
        out = transform(pre, schema, frame)
    assert all(np.isfinite(v) for v in pre.numeric["big"].values())
    assert np.isfinite(out).all()
    json.dumps(pre.to_dict(), allow_nan=False)


@pytest.mark.parametrize("name", ["__missing__", "__unknown__"])
def test_a_category_named_like_the_encoders_own_buckets_is_refused(name):
    """A real '__missing__' was encoded as a missing value, and the encoder's feature names repeated."""
    from anomaly_ae import Detector
    from anomaly_ae.exceptions import DataError

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=60), "plan": ["basic", name, None] * 20})
    with pytest.raises(DataError, match=f"column 'plan' has the category '{name}', the name the encoder gives"):
        Detector(model="pca").fit(X)
