"""Bad input gets a clear error naming the column and rows, and what to do."""

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from anomaly_ae import Detector
from anomaly_ae.data.schema import Schema
from anomaly_ae.exceptions import DataError, SchemaError


@pytest.fixture
def det(fitted):
    return fitted("pca")


@pytest.fixture
def rows(telemetry_train):
    return telemetry_train.head(20).copy()


def test_missing_column(det, rows):
    with pytest.raises(SchemaError, match="missing column.*latency_ms") as err:
        det.decision_function(rows.drop(columns=["latency_ms"]))
    assert err.value.reason == "missing_column" and err.value.column == "latency_ms"


def test_a_yes_no_column_takes_true_and_false_in_any_case_and_1_and_0():
    """A CSV's true/false reaches pandas as bools ('True'); a JSON client sends the text 'true': the
    same value, which was scored as an unseen category."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"a": rng.normal(size=300), "flag": rng.random(300) < 0.5})
    schema = Schema.infer(train)
    frame = pd.DataFrame({"a": [0.0] * 4, "flag": ["true", "FALSE", True, "yes"]})
    checked, report = schema.check(frame)
    assert checked["flag"].tolist() == ["True", "False", "True", "yes"] and report.unseen_categories == {"flag": 1}
    columns, report = schema.check_columns({"a": [0.0] * 3, "flag": ["true", False, "False"]})
    assert columns["flag"].tolist() == ["True", "False", "False"] and not report.unseen_categories
    texts = Schema.infer(train.assign(flag=train.flag.map({True: "true", False: "false"})))  # and the other way
    assert texts.check(frame.head(3))[0]["flag"].tolist() == ["true", "false", "true"]
    # 1 and 0 (a database's or Parquet's integer flag, a JSON number) were unseen categories: every row flagged
    numbers = pd.DataFrame({"a": [0.0] * 5, "flag": pd.array([1, 0, 1, 0, 2], dtype="int8")})
    checked, report = schema.check(numbers)
    assert checked["flag"].tolist() == ["True", "False", "True", "False", "2"]
    assert report.unseen_categories == {"flag": 1}
    columns, report = schema.check_columns({"a": [0.0] * 4, "flag": [1, 0.0, "1", "0"]})
    assert columns["flag"].tolist() == ["True", "False", "True", "False"] and not report.unseen_categories


def test_a_blank_column_name_is_shown_quoted(det, rows):
    with pytest.raises(SchemaError, match=r"unexpected column\(s\): '  '; drop them"):
        det.decision_function(rows.assign(**{"  ": 1.0}))


def test_a_missing_column_names_the_one_that_differs_by_case_or_spaces(det, rows):
    with pytest.raises(SchemaError, match="the input has 'LATENCY_MS ' for 'latency_ms': rename them"):
        det.decision_function(rows.rename(columns={"latency_ms": "LATENCY_MS "}))
    with pytest.raises(SchemaError, match="also has column.* it was not trained on: lat$"):
        det.decision_function(rows.rename(columns={"latency_ms": "lat"}))


def test_extra_column(det, rows):
    rows["host"] = "a"
    with pytest.raises(SchemaError, match="unexpected column.*host.*drop them") as err:
        det.decision_function(rows)
    assert err.value.reason == "extra_column"


def test_wrong_dtype_names_rows(det, rows):
    rows["cpu_util_pct"] = rows["cpu_util_pct"].astype(object)
    rows.loc[rows.index[3], "cpu_util_pct"] = "high"
    with pytest.raises(SchemaError, match=r"'cpu_util_pct' must be numeric.*rows \[3\].*'high'") as err:
        det.decision_function(rows)
    assert err.value.rows == [3] and err.value.reason == "dtype"


def test_nan_where_training_had_none(det, rows):
    rows.loc[rows.index[[2, 5]], "latency_ms"] = np.nan
    with pytest.raises(SchemaError, match=r"'latency_ms' has missing values \(NaN\) in rows \[2, 5\].*impute"):
        det.decision_function(rows)


def test_infinite_values(det, rows):
    rows.loc[rows.index[1], "latency_ms"] = np.inf
    with pytest.raises(SchemaError, match=r"'latency_ms' has infinite values in rows \[1\]"):
        det.decision_function(rows)


def test_missing_category(det, rows):
    rows.loc[rows.index[0], "mode"] = None
    with pytest.raises(SchemaError, match="'mode' has missing values in rows \\[0\\]"):
        det.decision_function(rows)


def test_empty_input(det, rows):
    with pytest.raises(DataError, match="no rows"):
        det.decision_function(rows.iloc[:0])


def test_wrong_array_width(fitted, telemetry_train):
    with pytest.raises(SchemaError, match="expected 9 columns, got 3"):
        fitted("pca").decision_function(np.zeros((2, 3)))


def test_wrong_container_type(det):
    with pytest.raises(DataError, match="DataFrame or a numpy array"):
        det.decision_function([[1, 2, 3]])


def test_empty_training_data():
    from anomaly_ae import Detector

    with pytest.raises(DataError, match="no rows"):
        Detector().fit(pd.DataFrame({"a": []}))


def test_wrong_image_shape(tmp_path):
    from anomaly_ae import Detector

    det = Detector(model="pca").fit(np.random.default_rng(0).random((30, 8, 8)))
    with pytest.raises(SchemaError, match=r"expected images of shape \(N, 1, 8, 8\)"):
        det.decision_function(np.zeros((2, 7, 7)))
    with pytest.raises(SchemaError, match="NaN or infinite pixels"):
        det.decision_function(np.full((1, 8, 8), np.nan))


def test_clean_numeric_columns_are_checked_at_once_as_column_by_column(det, rows):
    """Numeric numpy columns, all finite, take one float64 block (the common case; column by column
    costs about 1 ms a column): the same values, index and order as the column-by-column checks,
    ints included; anything else (a NaN, an object column) still gets the per-column checks above."""
    rows.index = rows.index + 100
    rows["cpu_util_pct"] = rows["cpu_util_pct"].round().astype(np.int64)
    fast, report = det.schema_.check(rows[list(reversed(rows.columns))])
    assert det.schema_._check_numeric_frame(rows) is not None
    slow = pd.DataFrame({c.name: det.schema_._check_column(c, rows[c.name], report) for c in det.schema_.columns})
    pd.testing.assert_frame_equal(fast, slow)
    assert list(fast.columns) == det.schema_.names and fast.index.equals(rows.index)
    assert not report.missing_values and not report.unseen_categories
    rows["latency_ms"] = rows["latency_ms"].astype(object)
    assert det.schema_._check_numeric_frame(rows) is None


def test_numbers_stored_as_objects_are_numeric_and_times_are_refused_at_fit():
    from decimal import Decimal

    from anomaly_ae.data.schema import Schema

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"dec": [Decimal(str(round(v, 3))) for v in rng.normal(size=50)],
                          "ints": pd.Series(range(50), dtype=object), "text": ["a", "b"] * 25,
                          "mixed": [1, "b"] * 25})
    kinds = {c.name: c.kind for c in Schema.infer(frame).columns}
    # a Parquet decimal column read as Decimal objects was one category per value before
    assert kinds == {"dec": "numeric", "ints": "numeric", "text": "categorical", "mixed": "categorical"}
    for times, says in [(pd.date_range("2026-01-01", periods=50, freq="h"), "holds times (datetime64"),
                        (pd.to_timedelta(range(50), unit="s"), "holds durations"),
                        (pd.Series(pd.date_range("2026-01-01", periods=50).date), "holds times (object"),
                        (pd.period_range("2026-01", periods=50, freq="M"), "holds times (period"),
                        # as a CSV gives them: ISO 8601 text, which would be one category per row
                        (pd.date_range("2026-01-01", periods=50, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
                         "holds times"),
                        (pd.date_range("2026-01-01", periods=50, tz="UTC").strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "holds times")]:
        with pytest.raises(DataError, match="convert it to a number") as caught:
            Schema.infer(pd.DataFrame({"x": range(50), "when": times}))
        assert "column 'when' " + says in str(caught.value)
    # text that only starts like a date stays a category
    builds = pd.DataFrame({"x": range(50), "build": ["2026-01-05-rc1", "2026-01-05"] * 25})
    assert Schema.infer(builds).columns[1].kind == "categorical"


def test_an_array_for_a_model_fitted_on_named_columns_is_scored_with_a_warning(fitted, telemetry_train):
    det = fitted("pca")
    X = telemetry_train[det.schema_.names].head(3)
    with pytest.warns(UserWarning, match="X is an array, but this model was fitted on named columns"):
        from_array = det.decision_function(X.to_numpy())
    np.testing.assert_allclose(from_array, det.decision_function(X))
    import warnings

    from anomaly_ae import Detector
    array_fitted = Detector(model="pca").fit(np.random.default_rng(0).normal(size=(200, 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fitted on an array: arrays are what it takes
        array_fitted.decision_function(np.zeros((2, 3)))


def test_complex_numbers_and_periods_are_refused_not_cut(det, rows):
    from anomaly_ae.data.schema import Schema

    with pytest.raises(DataError, match="column 'c' holds complex numbers"):
        Schema.infer(pd.DataFrame({"x": range(20), "c": np.arange(20) + 1j}))
    column = next(c.name for c in det.schema_.columns if c.kind == "numeric")
    for values, says in [(np.arange(len(rows)) + 1j, "holds complex numbers"),
                         (pd.period_range("2026-01", periods=len(rows), freq="M"), "holds periods")]:
        with pytest.raises(SchemaError, match=f"column '{column}' must be numeric but {says}"):
            det.decision_function(rows.assign(**{column: values}))


def test_true_and_false_in_a_numeric_column_are_refused_as_in_json(det, rows):
    """Read as 1/0 they scored silently, where the service refuses them; at fit a bool column is categorical."""
    column = next(c.name for c in det.schema_.columns if c.kind == "numeric")
    mixed = rows[column].astype(object)
    mixed.iloc[1] = True
    for values, where in [(True, "[0, 1, 2"), (mixed, "[1]")]:
        with pytest.raises(SchemaError, match=rf"column '{column}' must be numeric but holds True/False in rows "
                                              + re.escape(where)):
            det.decision_function(rows.assign(**{column: values}))
    assert np.isfinite(det.decision_function(rows.assign(**{column: rows[column].astype(object)}))).all()


def test_multiindex_columns_are_refused_saying_how_to_flatten(det, rows):
    """Read as text, ("g", "mode") is no training column: the message listed every column as missing."""
    from anomaly_ae import Detector

    nested = rows.copy()
    nested.columns = pd.MultiIndex.from_tuples([("g", c) for c in rows.columns])
    for call in (lambda: det.decision_function(nested), lambda: Detector(model="pca").fit(nested)):
        with pytest.raises(DataError, match=r"the columns are a MultiIndex \(e.g. \('g', .*get_level_values\(-1\)"):
            call()


def test_a_column_of_numbers_with_a_few_text_cells_is_named_at_training(telemetry_train):
    """One 'abc' among a numeric column's values made it categorical (one category per value) and the model
    stopped watching it as a number, with only a warning that it looked like an identifier. Real categories
    can look the same (grades K, 1-12), so it is a warning naming the cells, not a refusal."""
    X = telemetry_train.head(300).copy()
    X["cpu_util_pct"] = X["cpu_util_pct"].astype(object)
    X.loc[X.index[5], "cpu_util_pct"] = "abc"
    X.loc[X.index[7], "cpu_util_pct"] = "NA"  # missing once 'abc' is fixed: not the example given
    with pytest.warns(UserWarning, match=r"column 'cpu_util_pct' holds numbers but also text in rows \[5\] "
                                         r"\(e\.g\. 'abc'\), so it is learned as categories") as caught:
        Detector(model="pca").fit(X)
    assert not [w for w in caught if "looks like an identifier" in str(w.message)]
    # categories as pandas' dtype, codes with leading zeros, and categories partly numbers: no warning
    grades = pd.Series(["K"] + [str(g) for g in range(1, 13)] * 10).astype("category")
    mixed = pd.DataFrame({"tier": ["1", "2", "3", "gold"] * 10, "zip": ["01234"] * 39 + ["K1A"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [c.kind for c in Schema.infer(pd.DataFrame({"grade": grades})).columns] == ["categorical"]
        assert [c.kind for c in Schema.infer(mixed).columns] == ["categorical", "categorical"]
