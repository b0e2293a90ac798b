"""neighbor_reference="prototypes": the neighbour term measures distances to k-means centroids, so a
saved knn/hybrid model holds no training row (the default "rows" keeps up to max_reference of them)."""

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from anomaly_ae import Detector
from anomaly_ae.models.neighbors import MIN_PROTOTYPE_ROWS, kmeans_prototypes


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(5, 6))
    rows = centres[rng.integers(0, 5, 1500)] + rng.normal(size=(1500, 6))  # continuous: no duplicated rows
    return pd.DataFrame(rows, columns=[f"m{i}" for i in range(6)])


def _tensors(path):
    return {k: v for k, v in load_file(str(path / "weights.safetensors")).items()}


def _rows_found(tensors: dict, rows: np.ndarray) -> int:
    """How many of `rows` (float32) appear, to float32 precision, as a row of any stored tensor."""
    rows = rows.astype(np.float32)
    found = np.zeros(len(rows), dtype=bool)
    for tensor in tensors.values():
        if tensor.ndim < 1 or tensor.size % rows.shape[1]:
            continue
        stored = tensor.reshape(-1, rows.shape[1]).astype(np.float32)
        for start in range(0, len(rows), 500):
            gap = np.abs(rows[start:start + 500, None, :] - stored[None]).max(-1)
            found[start:start + 500] |= (gap <= 1e-6 * (1 + np.abs(rows[start:start + 500]).max(-1, keepdims=True))).any(1)
    return int(found.sum())


@pytest.mark.parametrize("model", ["knn", "hybrid"])
def test_a_saved_model_with_prototypes_holds_no_training_row(data, tmp_path, model):
    extra = {"epochs": 3} if model == "hybrid" else {}
    det = Detector(model=model, neighbor_reference="prototypes", n_prototypes=200, random_state=0, **extra).fit(data)
    path = det.save(tmp_path / model)
    tensors = _tensors(path)
    x = det.preprocessor_.transform(det.schema_.check(data)[0])  # the rows as the model sees them
    assert _rows_found(tensors, x) == 0
    assert _rows_found(tensors, data.to_numpy()) == 0
    assert tensors["neighbors.reference"].shape[0] <= 200
    # the control: the default reference does hold training rows, and the check finds them
    rows = Detector(model="knn", random_state=0).fit(data).save(tmp_path / "rows")
    assert _rows_found(_tensors(rows), x) > 1000


def test_prototype_scores_are_finite_deterministic_and_reload_bit_identical(data, tmp_path):
    params = dict(model="knn", neighbor_reference="prototypes", n_prototypes=150, random_state=0)
    a, b = Detector(**params).fit(data), Detector(**params).fit(data)
    test = pd.concat([data.head(200), data.head(5) * 1e300, data.head(5) * -1e300])
    with np.errstate(over="ignore", invalid="ignore"):
        sa = a.decision_function(test)
        assert np.isfinite(sa).all()
        assert np.array_equal(sa, b.decision_function(test))
        np.testing.assert_allclose(a.decision_function(test.iloc[[7]]), sa[[7]], rtol=1e-5, atol=1e-6)
        loaded = Detector.load(a.save(tmp_path / "p"))
        assert np.array_equal(loaded.decision_function(test), sa)
    assert loaded.get_params()["neighbor_reference"] == "prototypes"
    assert a.neighbors_.reference.shape[0] <= 150
    # a different seed places other prototypes
    other = Detector(**{**params, "random_state": 1}).fit(data)
    assert not np.array_equal(other.neighbors_.reference.numpy(), a.neighbors_.reference.numpy())


def test_each_prototype_is_the_mean_of_at_least_two_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    protos = kmeans_prototypes(x, 1000, seed=0)  # more asked for than rows: at most N / 2 clusters
    assert 1 <= len(protos) <= len(x) // MIN_PROTOTYPE_ROWS
    gaps = np.abs(protos[:, None, :] - x[None]).max(-1)
    assert gaps.min() > 1e-6


def test_bad_reference_options_are_refused(data):
    with pytest.raises(ValueError, match="neighbor_reference"):
        Detector(model="knn", neighbor_reference="centroids").fit(data)
    with pytest.raises(ValueError, match="n_prototypes"):
        Detector(model="knn", neighbor_reference="prototypes", n_prototypes=0).fit(data)
