"""The saved-model trust boundary: bit-identical reloads, and refusal of anything tampered with."""

import json

import numpy as np
import pytest
import torch

from anomaly_ae import Detector
from anomaly_ae.data.synthetic import LABEL_COLUMNS
from anomaly_ae.exceptions import InvalidParameterError, ModelLoadError
from anomaly_ae.persistence import FILES, MANIFEST

MODELS = ["ae", "dae", "sae", "vae", "aae", "pca"]


@pytest.mark.parametrize("model", MODELS)
def test_scores_are_bit_identical_after_reload(fitted, telemetry_test, tmp_path, model):
    det = fitted(model)
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    path = det.save(tmp_path / model)
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, MANIFEST])
    loaded = Detector.load(path)
    assert np.array_equal(det.decision_function(X), loaded.decision_function(X))
    assert loaded.threshold_ == det.threshold_
    assert loaded.get_params() == det.get_params()
    assert det.score_frame(X).equals(loaded.score_frame(X))


def test_density_term_reload_is_bit_identical(telemetry_train, telemetry_test, tmp_path):
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    det = Detector(model="ae", neighbors=5, n_estimators=2, epochs=5).fit(telemetry_train)
    loaded = Detector.load(det.save(tmp_path / "m"))
    assert loaded.neighbors_.reference.shape == det.neighbors_.reference.shape
    assert np.array_equal(det.decision_function(X), loaded.decision_function(X))


def test_vae_iwae_reload_is_bit_identical(telemetry_train, telemetry_test, tmp_path):
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    det = Detector(model="vae", score="iwae", epochs=5).fit(telemetry_train)
    assert np.array_equal(det.decision_function(X), Detector.load(det.save(tmp_path / "m")).decision_function(X))


def test_images_reload(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((60, 1, 8, 8)).astype(np.float32)
    det = Detector(model="ae", epochs=3).fit(images)
    loaded = Detector.load(det.save(tmp_path / "img"))
    assert np.array_equal(det.decision_function(images), loaded.decision_function(images))


def test_no_pickle_anywhere_in_the_saved_model(fitted, tmp_path):
    path = fitted("vae").save(tmp_path / "m")
    for f in path.iterdir():
        data = f.read_bytes()
        # pickle protocol 2+ streams start with 0x80; torch.save zips start with PK
        assert not data.startswith(b"\x80") and not data.startswith(b"PK"), f.name
    assert (path / "weights.safetensors").read_bytes()[8:9] == b"{"  # safetensors JSON header


@pytest.fixture
def saved(fitted, tmp_path):
    return fitted("ae").save(tmp_path / "model")


def test_tampered_weights_are_refused(saved):
    weights = saved / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match its SHA-256"):
        Detector.load(saved)


def test_truncated_file_is_refused(saved, monkeypatch):
    weights = saved / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="truncated or was modified"):
        Detector.load(saved)
    monkeypatch.chdir(saved.parent)  # a folder named with a trailing slash, as shells complete it
    with pytest.raises(ModelLoadError, match="^model/weights.safetensors does not match its SHA-256 in the manifest: "
                                             "the file is truncated or"):
        Detector.load("model/")


def test_a_model_file_that_is_a_link_is_refused(saved, tmp_path):
    outside = tmp_path / "elsewhere.json"
    (saved / "schema.json").rename(outside)
    (saved / "schema.json").symlink_to(outside)  # same bytes, same hash: still not a file of the model
    with pytest.raises(ModelLoadError, match="schema.json is a link or not a plain file"):
        Detector.load(saved)


def test_edited_json_is_refused(saved):
    cal = saved / "calibration.json"
    payload = json.loads(cal.read_text())
    payload["threshold"] = 1e9
    cal.write_text(json.dumps(payload))
    with pytest.raises(ModelLoadError, match="calibration.json does not match"):
        Detector.load(saved)


def test_missing_and_corrupt_manifest(saved, tmp_path):
    (saved / "schema.json").unlink()
    with pytest.raises(ModelLoadError, match="schema.json is missing"):
        Detector.load(saved)
    for text in ("{not json", '{"format_version": 1, "files": []}', '{"format_version": 1, "files": {"a": "b"}}'):
        (saved / MANIFEST).write_text(text)
        with pytest.raises(ModelLoadError, match="corrupt"):
            Detector.load(saved)
    with pytest.raises(ModelLoadError, match="no saved model"):
        Detector.load(tmp_path / "nowhere")


def test_incompatible_format_version_is_refused(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["format_version"] = 99
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="format 99|format 1"):
        Detector.load(saved)


def test_weights_that_do_not_fit_the_declared_model_are_refused(fitted, saved, tmp_path):
    # a consistent manifest around weights of another architecture: hashes pass, strict load refuses
    other = fitted("vae").save(tmp_path / "other")
    (saved / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["files"]["weights.safetensors"] = json.loads((other / MANIFEST).read_text())["files"]["weights.safetensors"]
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="do not fit"):
        Detector.load(saved)


def _rewrite_config(path, edit) -> None:
    """Edit config.json and write a manifest that matches it: what someone who can write a model can do."""
    from anomaly_ae.persistence import manifest_bytes

    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    (path / MANIFEST).write_bytes(manifest_bytes({name: (path / name).read_bytes() for name in FILES}))


@pytest.mark.parametrize("edit", [
    lambda c: c["model_spec"].update(family="nosuch"),                     # was a KeyError traceback
    lambda c: c.update(params=[1, 2]),                                       # AttributeError
    lambda c: c.update(model_spec="ae"),                                     # TypeError
    lambda c: c.update(n_members=10_000_000),                                # MemoryError, building them all
    lambda c: c.update(n_reference=10**9, input_shape=[10**6]),             # 4 PB of reference, allocated first
    lambda c: c["model_spec"].update(input_shape=[10**7]),                   # a network of 10^7 inputs
], ids=["family", "params", "spec", "members", "reference", "input_shape"])
def test_a_config_that_matches_its_manifest_but_builds_no_model_is_one_error(saved, edit):
    _rewrite_config(saved, edit)
    with pytest.raises(ModelLoadError, match=f"{saved}"):
        Detector.load(saved)


def test_a_model_of_a_family_this_version_does_not_know_says_so(saved):
    """A model saved by a newer version (a family added since) asks for that version, not a re-save."""
    _rewrite_config(saved, lambda c: c["params"].update(model="hybrid_of_the_future"))
    with pytest.raises(ModelLoadError, match="holds a 'hybrid_of_the_future' model, which anomaly_ae .* does not know"):
        Detector.load(saved)


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does")
def test_a_model_made_on_a_gpu_loads_on_the_cpu_and_a_missing_gpu_is_a_parameter_error(saved, telemetry_test):
    """A model trained with device="cuda" could not be loaded by a CPU-only service ("re-save the model"),
    and a fit asking for a GPU the machine lacks failed with torch's AssertionError."""
    X = telemetry_test.drop(columns=list(LABEL_COLUMNS))
    expected = Detector.load(saved).decision_function(X)
    _rewrite_config(saved, lambda c: c["params"].update(device="cuda"))
    with pytest.warns(UserWarning, match="device='cuda', which this machine does not have: it runs on the CPU"):
        loaded = Detector.load(saved)
    assert loaded.device_.type == "cpu"
    np.testing.assert_array_equal(loaded.decision_function(X), expected)
    with pytest.raises(InvalidParameterError, match="device='cuda:1', but this machine has no such device"):
        Detector("pca", device="cuda:1").fit(X)


def test_save_over_an_existing_model_replaces_it(fitted, saved):
    fitted("pca").save(saved)
    assert Detector.load(saved).model == "pca"


def test_save_refuses_to_overwrite_a_foreign_directory(fitted, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        fitted("pca").save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"


def test_save_refuses_the_current_directory_and_the_root(fitted, tmp_path, monkeypatch):
    from anomaly_ae.exceptions import ConfigurationError
    from anomaly_ae.persistence import check_writable

    monkeypatch.chdir(tmp_path)
    for place in (".", "..", "/", str(tmp_path)):
        with pytest.raises(ConfigurationError, match="saved as a directory of its own; name a new one"):
            fitted("pca").save(place)
        with pytest.raises(ConfigurationError, match="directory of its own"):
            check_writable(place)
    assert list(tmp_path.iterdir()) == []


def test_a_home_relative_path_is_expanded_on_save_and_load(fitted, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    saved = fitted("pca").save("~/models/pca")
    assert saved == tmp_path / "models" / "pca" and (saved / MANIFEST).exists()
    assert Detector.load("~/models/pca").model == "pca"


def test_set_params_after_fit_is_not_saved_and_says_so(tmp_path):
    """The saved model is the fitted one: parameters set since fit (here the neighbour count, the family
    and the target) would have rebuilt another model around the old threshold, or crashed at scoring."""
    import warnings

    x = np.random.default_rng(0).normal(size=(600, 4))
    det = Detector(model="knn").fit(x)
    scores = det.decision_function(x[:20])
    det.set_params(neighbors=1, model="pca", target_fpr=0.3)
    with pytest.warns(UserWarning, match=r"parameters changed by set_params since fit \(model, neighbors, "
                                         r"target_fpr\) are not saved"):
        det.save(tmp_path / "m")
    loaded = Detector.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.decision_function(x[:20]), scores)
    assert (loaded.model, loaded.neighbors, loaded.target_fpr) == ("knn", None, 0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing pending: nothing said
        loaded.save(tmp_path / "again")


def test_a_model_path_under_a_file_says_which_part_is_a_file(fitted, tmp_path):
    """It said "(File exists)"."""
    from anomaly_ae.exceptions import ConfigurationError

    (tmp_path / "normal.csv").write_text("x\n1\n")
    with pytest.raises(ConfigurationError, match=r"normal.csv' is a file\); choose a directory you can write to"):
        fitted("pca").save(tmp_path / "normal.csv" / "m")
