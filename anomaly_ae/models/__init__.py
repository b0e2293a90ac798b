"""Pure torch modules, one file per family. `build_model` turns a JSON-able spec into a module."""

from __future__ import annotations

from typing import Any

from torch import nn

from anomaly_ae.models.adversarial import AdversarialAutoencoder
from anomaly_ae.models.autoencoder import Autoencoder
from anomaly_ae.models.cvae import ConditionalVAE
from anomaly_ae.models.gan import GAN
from anomaly_ae.models.pca import PCA
from anomaly_ae.models.vae import VAE

MODEL_FAMILIES: dict[str, type[nn.Module]] = {
    "autoencoder": Autoencoder,
    "vae": VAE,
    "aae": AdversarialAutoencoder,
    "pca": PCA,
    "cvae": ConditionalVAE,
    "gan": GAN,
}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """spec = {"family": name, "input_shape": [...], **constructor arguments} (all JSON types)."""
    kwargs = dict(spec)
    family = kwargs.pop("family")
    kwargs["input_shape"] = tuple(kwargs["input_shape"])
    return MODEL_FAMILIES[family](**kwargs)
