"""Pure torch modules, one file per family, and the one table of models a Detector can be.

Adding a model family: write its module (a `ScoredModule` with `feature_errors`, and
`score_terms` if it scores other than by mean squared reconstruction error), add it to
`MODEL_FAMILIES`, and add the name users pass as `Detector(model=...)` to `DETECTOR_MODELS`
with a function that turns the detector's parameters into the module's constructor arguments.
Fitting, scoring, saving, loading, the CLI's help and the benchmark all read these tables.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from anomaly_ae.models.adversarial import AdversarialAutoencoder
from anomaly_ae.models.autoencoder import Autoencoder
from anomaly_ae.models.cvae import ConditionalVAE
from anomaly_ae.models.ddae import DDAE
from anomaly_ae.models.gan import GAN
from anomaly_ae.models.layers import default_hidden_dims, default_latent_dim
from anomaly_ae.models.multiscale import MultiscaleNeighbors
from anomaly_ae.models.neighbors import NearestNeighbors
from anomaly_ae.models.pca import PCA
from anomaly_ae.models.sequence import RecurrentAE, TemporalConvAE
from anomaly_ae.models.vae import VAE

MODEL_FAMILIES: dict[str, type[nn.Module]] = {
    "autoencoder": Autoencoder,
    "vae": VAE,
    "aae": AdversarialAutoencoder,
    "pca": PCA,
    "neighbors": NearestNeighbors,
    "multiscale_neighbors": MultiscaleNeighbors,
    "ddae": DDAE,
    "cvae": ConditionalVAE,
    "gan": GAN,
    "tcn": TemporalConvAE,
    "gru": RecurrentAE,
}


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """spec = {"family": name, "input_shape": [...], **constructor arguments} (all JSON types)."""
    kwargs = dict(spec)
    family = kwargs.pop("family")
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    return MODEL_FAMILIES[family](**kwargs)


# ---------------------------------------------------------------------------- Detector(model=...)
SpecBuilder = Callable[[Mapping[str, Any], tuple[int, ...], int], dict[str, Any]]


@dataclass(frozen=True)
class DetectorModel:
    """One value of `Detector(model=...)`: which module its networks are and how they are sized.

    `spec(params, input_shape, n_train)` returns the module spec from the detector's parameters
    (None: no network, the neighbour term alone); `n_estimators` and `neighbors` are the defaults
    used when those parameters are None."""

    help: str
    spec: SpecBuilder | None
    n_estimators: int = 1
    neighbors: int = 0
    sequence: bool = False  # series models: the module takes (window, metrics), not flattened windows
    # series models: the neighbour term compares each window's last (fraction x window) steps, one term per
    # fraction (`MultiscaleNeighbors`); empty: the whole window only
    neighbor_steps: tuple[float, ...] = ()
    window: int | None = None  # series models: steps per window when SeriesDetector(window=None)


def _network_spec(family: str, params: Mapping[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
    n_inputs = 1
    for d in input_shape:
        n_inputs *= int(d)
    latent = params["latent_dim"] or default_latent_dim(n_inputs)
    if params["latent_dim"] and latent >= n_inputs:
        warnings.warn(f"latent_dim={latent} is not smaller than the model's {n_inputs} inputs: an autoencoder can then "
                      "pass its input through and reconstruct anomalies as well as normal rows; choose a smaller "
                      "latent_dim (or leave it unset for the default)", UserWarning, stacklevel=2)
    hidden = list(params["hidden_dims"]) if params["hidden_dims"] is not None else default_hidden_dims(n_inputs, latent)
    return {"family": family, "input_shape": list(input_shape), "latent_dim": int(latent),
            "hidden_dims": [int(h) for h in hidden]}


def _autoencoder(corruption: bool = False, sparse: bool = False) -> SpecBuilder:
    def spec(params: Mapping[str, Any], input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
        return {**_network_spec("autoencoder", params, input_shape),
                "corruption": params["corruption"] if corruption else None, "noise": params["noise"],
                "l1": params["sparsity"] if sparse else 0.0}
    return spec


def _vae(params: Mapping[str, Any], input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
    return {**_network_spec("vae", params, input_shape), "beta": params["beta"]}


def _aae(params: Mapping[str, Any], input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
    return {**_network_spec("aae", params, input_shape), "adversarial_weight": params["adversarial_weight"],
            "latent_weight": params["latent_weight"]}


def _pca(params: Mapping[str, Any], input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
    n_inputs = 1
    for d in input_shape:
        n_inputs *= int(d)
    return {"family": "pca", "input_shape": list(input_shape), "n_components": min(n_inputs, n_train)}


def _ddae(params: Mapping[str, Any], input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
    """No bottleneck: two hidden layers of clip(2 x inputs, 256, 1024) unless hidden_dims is given."""
    n_inputs = 1
    for d in input_shape:
        n_inputs *= int(d)
    width = int(min(max(2 * n_inputs, 256), 1024))
    hidden = list(params["hidden_dims"]) if params["hidden_dims"] is not None else [width, width]
    return {"family": "ddae", "input_shape": list(input_shape), "hidden_dims": [int(h) for h in hidden],
            "n_steps": 50, "beta_start": 1e-4, "beta_end": 0.02, "time_dim": 8,
            "noise_scale": params["noise_scale"]}


# The recommended default, chosen on the ADBench benchmark (benchmarks/results/adbench.md):
# reconstruction error of a small autoencoder ensemble plus nearest-neighbour density.
DETECTOR_MODELS: dict[str, DetectorModel] = {
    "hybrid": DetectorModel("3 autoencoders + mean distance to the 5 nearest training rows (the default)",
                            _autoencoder(), n_estimators=3, neighbors=5),
    "ae": DetectorModel("undercomplete autoencoder (dense, or conv for images)", _autoencoder()),
    "dae": DetectorModel("denoising autoencoder (corruption='gaussian' or 'mask')", _autoencoder(corruption=True)),
    "sae": DetectorModel("sparse autoencoder (L1 on the code, sparsity=)", _autoencoder(sparse=True)),
    "vae": DetectorModel("beta-VAE scored by negative ELBO ('recon', 'iwae' also)", _vae),
    "aae": DetectorModel("adversarial autoencoder: reconstruction + prior density of the code", _aae),
    "ddae": DetectorModel("diffusion-scheduled denoising autoencoder: error averaged over 50 noise levels, fixed draws "
                          "(noise_scale='kurtosis' widens heavy-tailed features' noise)", _ddae),
    "pca": DetectorModel("PCA reconstruction error (a baseline)", _pca),
    "knn": DetectorModel("mean distance to the 5 nearest training rows, standardised inputs (a baseline)", None,
                         n_estimators=0, neighbors=5),
}


def _sequence(family: str, hidden: tuple[int, int], latent: int) -> SpecBuilder:
    """Sizes from the number of metrics: hidden channels = metrics within `hidden`; a code of
    `latent` channels (per quarter step for the conv model, per window for the recurrent one)."""
    def spec(params: Mapping[str, Any], input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
        window, metrics = input_shape
        width = list(params["hidden_dims"]) if params["hidden_dims"] is not None else [
            int(min(max(metrics, hidden[0]), hidden[1]))]
        spec = {"family": family, "input_shape": [int(window), int(metrics)],
                "latent_dim": int(params["latent_dim"] or latent), "hidden_dims": [int(h) for h in width]}
        if family == "gru":
            spec["steps_per_cell"] = -(-int(window) // MAX_RECURRENT_CELLS)
        return spec
    return spec


# The recurrent autoencoder's cells per window: its training cost grows with the recurrence's
# length, so longer windows give each cell more steps (32 steps: 2 per cell, 64: 4).
MAX_RECURRENT_CELLS = 16


def _window_pca(params: Mapping[str, Any], input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
    """PCA over flattened windows keeps at most MAX_WINDOW_COMPONENTS: every component costs a
    multiply per window input at scoring time, and `variance_kept` needs far fewer on correlated windows."""
    spec = _pca(params, input_shape, n_train)
    return {**spec, "n_components": min(spec["n_components"], MAX_WINDOW_COMPONENTS)}


MAX_WINDOW_COMPONENTS = 256

# `SeriesDetector(model=...)`: the dense families see each window flattened; "tcn" and "gru" see
# (window, metrics). The default is chosen by the time-series benchmark (benchmarks/results/timeseries_*.md).
SERIES_MODELS: dict[str, DetectorModel] = {
    "tcn": DetectorModel("temporal convolutional autoencoder over windows", _sequence("tcn", (32, 128), 8),
                         sequence=True),
    "gru": DetectorModel("recurrent (GRU) autoencoder over windows", _sequence("gru", (32, 128), 16),
                         sequence=True),
    "ae": DetectorModel("dense autoencoder over flattened windows", _autoencoder()),
    "vae": DetectorModel("beta-VAE over flattened windows, scored by negative ELBO", _vae),
    "aae": DetectorModel("adversarial autoencoder over flattened windows", _aae),
    "pca": DetectorModel("PCA reconstruction error of flattened windows (a baseline)", _window_pca),
    "knn": DetectorModel("mean distance to the 5 nearest training windows (a baseline)", None,
                         n_estimators=0, neighbors=5),
    "knn_multiscale": DetectorModel("knn over each window's last quarter, half and whole (64 steps unless window= "
                                    "says), each distance divided by its 99th percentile on held-out normal history, "
                                    "averaged (the default)", None, n_estimators=0, neighbors=5,
                                    neighbor_steps=(0.25, 0.5, 1.0), window=64),
}
