"""knn_multiscale: kNN over a window's last quarter, half and whole, each scaled on held-out normal history."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_ae import SeriesDetector
from anomaly_ae.exceptions import InvalidParameterError, ModelLoadError
from anomaly_ae.models.multiscale import MIN_SCALE_PER_VALUE, SCALE_QUANTILE, MultiscaleNeighbors
from anomaly_ae.models.neighbors import NearestNeighbors
from anomaly_ae.persistence import load_safetensors
from anomaly_ae.series_detector import DEFAULT_SERIES_MODEL

PERIOD = 24


def waves(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.sin(2 * np.pi * np.arange(n) / PERIOD)
    return np.column_stack([base, 0.5 * base, rng.normal(size=n)]) + 0.1 * rng.normal(size=(n, 3))


@pytest.fixture(scope="module")
def fitted() -> SeriesDetector:
    return SeriesDetector("knn_multiscale", window=16, random_state=0).fit(waves(1200, 0))


def test_the_default_model_compares_the_last_16_32_and_64_steps() -> None:
    det = SeriesDetector(random_state=0).fit(waves(1000, 0))
    assert DEFAULT_SERIES_MODEL == "knn_multiscale" and det.window == None and det.window_ == 64  # noqa: E711
    assert det.neighbors_.steps == [16, 32, 64]
    # an explicit window is the longest length; the knn baseline keeps one length of 32 steps by default
    assert SeriesDetector("knn_multiscale", window=16).fit(waves(800, 0)).neighbors_.steps == [4, 8, 16]
    assert SeriesDetector("knn").fit(waves(800, 0)).window_ == 32


def test_the_score_is_the_mean_of_each_lengths_knn_distance_over_its_scale(fitted: SeriesDetector) -> None:
    """Recomputed from plain NearestNeighbors over the cut reference windows (the same k)."""
    neighbors = fitted.neighbors_
    reference = neighbors.reference
    queries = np.random.default_rng(1).normal(size=(20, reference.shape[1])).astype(np.float32)
    expected = 0.0
    for steps, scale in zip(neighbors.steps, neighbors.scales.tolist()):
        plain = NearestNeighbors((steps * 3,), len(reference), neighbors.k)
        plain.set_reference(reference[:, reference.shape[1] - steps * 3:])
        distances, _ = plain.nearest(queries[:, queries.shape[1] - steps * 3:])
        expected = expected + distances / scale
    score, shares = neighbors.numpy_distances(queries)
    np.testing.assert_allclose(score, expected / len(neighbors.steps), rtol=1e-6)
    assert shares.shape == queries.shape and (shares >= 0).all()
    np.testing.assert_allclose(shares.sum(1), score, rtol=1e-6)  # each term's shares sum to its scaled distance


def test_scales_put_each_lengths_held_out_distances_at_one() -> None:
    x = waves(1200, 0)
    windows = np.lib.stride_tricks.sliding_window_view(x, 16, axis=0).transpose(0, 2, 1).reshape(-1, 48)
    module = MultiscaleNeighbors((48,), 800, 5, [4, 8, 16])
    module.set_reference(torch.from_numpy(windows[:800].astype(np.float32)))
    module.fit_scales([windows[900:]] * 3)
    for term, steps, scale in zip(module.terms(), module.steps, module.scales.tolist()):
        distances, _ = term.nearest(windows[900:, 48 - 3 * steps:].astype(np.float32))
        assert scale == pytest.approx(np.quantile(distances, SCALE_QUANTILE))
    # held-out windows that repeat training ones are at distance 0 (k=1): the scale is the floor, 1% of a
    # standard deviation per value, not ~0 (which turned rounding into alarms)
    nearest_only = MultiscaleNeighbors((48,), 800, 1, [4, 8, 16])
    nearest_only.set_reference(torch.from_numpy(windows[:800].astype(np.float32)))
    nearest_only.fit_scales([windows[:100]] * 3)
    np.testing.assert_allclose(nearest_only.scales.numpy(), MIN_SCALE_PER_VALUE * np.sqrt([12, 24, 48]), rtol=1e-6)


def test_sliding_windows_score_as_flattened_ones(fitted: SeriesDetector) -> None:
    """The fast path over sliding windows (every row's window from the rows) equals flattened windows."""
    x = waves(300, 5).astype(np.float32)
    windows = np.arange(16)[None, :] + np.arange(len(x) - 15)[:, None]
    fast = fitted.neighbors_.window_distances(x, windows)
    assert fast is not None
    flat, flat_shares = fitted.neighbors_.numpy_distances(x[windows].reshape(len(windows), -1))
    np.testing.assert_allclose(fast[0], flat, rtol=1e-5)
    np.testing.assert_allclose(fast[1], flat_shares, rtol=1e-4, atol=1e-7)


def test_a_stream_scores_as_one_pass_and_a_reload_as_the_original(fitted: SeriesDetector, tmp_path) -> None:
    test = waves(400, 7)
    test[200:203, 0] += 4.0  # a 3-step spike
    offline = fitted.decision_function(test)
    streamed = [fitted.decision_function(test[max(0, t - 15):t + 1])[-1] for t in range(180, 240)]
    np.testing.assert_allclose(streamed, offline[180:240], rtol=1e-6)
    assert offline[200:203].min() > fitted.threshold_ > np.median(offline[20:180])
    path = fitted.save(tmp_path / "multiscale")
    np.testing.assert_array_equal(SeriesDetector.load(path).decision_function(test), offline)
    # the file holds the whole windows once (the shorter lengths are cut from them) and the scales
    weights = load_safetensors((path / "weights.safetensors").read_bytes())
    assert sorted(weights) == ["neighbors.scales", "neighbors.whole.reference"]


def test_explanations_name_the_metric_and_the_steps_that_moved(fitted: SeriesDetector) -> None:
    test = waves(300, 3)
    test[250, 1] += 5.0
    assert fitted.explain(test, top_k=1)["feature_1"].iloc[250] == "x1"
    steps = fitted.explain_steps(test)[250]  # (window, metrics): the last step, metric x1
    assert np.unravel_index(steps.argmax(), steps.shape) == (15, 1)


def _rewrite_config(path, edit) -> None:
    """Edit config.json and write a manifest that matches it (what someone who can write a model can do)."""
    import json

    from anomaly_ae.persistence import manifest_bytes

    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    contents = {p.name: p.read_bytes() for p in path.iterdir() if p.name != "manifest.json"}
    (path / "manifest.json").write_bytes(manifest_bytes(contents))


def test_a_model_file_whose_window_does_not_fit_its_lengths_is_refused(fitted: SeriesDetector, tmp_path) -> None:
    """Config edits that would load and then fail at the first score (a shape error) are refused at load."""
    for i, steps in enumerate(([2, 4, 8], [4, 8, 48], [4.0, 8, 16])):
        path = fitted.save(tmp_path / f"steps-{i}")
        _rewrite_config(path, lambda config: config.update(neighbor_steps=steps))
        with pytest.raises(ModelLoadError, match=r"(neighbour lengths|neighbor_steps) .*re-save the model"):
            SeriesDetector.load(path)


@pytest.mark.parametrize("model", ["knn", "knn_multiscale", "pca"])
def test_a_model_file_whose_window_was_edited_is_refused(model: str, tmp_path) -> None:
    path = SeriesDetector(model, window=16, random_state=0).fit(waves(600, 0)).save(tmp_path / model)
    for window in (8, 24):
        _rewrite_config(path, lambda config: config["series"]["framing"].update(window=window))
        with pytest.raises(ModelLoadError, match=f"declares a window of {window} steps"):
            SeriesDetector.load(path)


def test_each_lengths_scale_takes_every_tail_row_its_window_fits_in() -> None:
    """Two series: per series, the tail rows with at least `length` tail steps up to them (the first rows of
    a series' tail have fewer); a length that would get fewer rows than the calibration rows takes those."""
    from anomaly_ae.data.windows import SeriesLayout
    from anomaly_ae.series_detector import _held_out_by_length

    order = [np.arange(0, 10), np.arange(10, 30)]
    layout = SeriesLayout(source=np.arange(30), segment_start=np.zeros(30, dtype=np.int64), position=np.arange(30),
                          series=np.array([0] * 10 + [1] * 20, dtype=object), order=order)
    tail = np.concatenate([np.arange(6, 10), np.arange(22, 30)])  # 4 and 8 tail rows
    val = np.array([9, 27, 28, 29])
    short, middle, whole = _held_out_by_length(layout, tail, val, [2, 4, 8])
    assert short.tolist() == [7, 8, 9, *range(23, 30)]
    assert middle.tolist() == [9, *range(25, 30)]
    assert whole.tolist() == val.tolist()  # [29] alone would be fewer


def test_a_model_without_networks_refuses_n_estimators() -> None:
    with pytest.raises(InvalidParameterError, match="has no networks"):
        SeriesDetector(n_estimators=2).fit(waves(600, 0))
