"""Batched, gradient-free scoring: the one place where numpy arrays become tensors and back.

Each score type turns a model's output into one number per row (higher = more anomalous) and a
per-feature contribution matrix that explanations are built from.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from anomaly_ae.models.adversarial import AdversarialAutoencoder
from anomaly_ae.models.vae import LOG_2PI, VAE

SCORE_TYPES = {"recon", "elbo", "iwae", "recon+latent"}


def default_score(model: nn.Module) -> str:
    if isinstance(model, VAE):
        return "elbo"
    if isinstance(model, AdversarialAutoencoder):
        return "recon+latent"
    return "recon"


def check_score_type(model: nn.Module, score: str) -> None:
    allowed = {"recon"} | ({"elbo", "iwae"} if isinstance(model, VAE) else set()) \
        | ({"recon+latent"} if isinstance(model, AdversarialAutoencoder) else set())
    if score not in allowed:
        raise ValueError(f"score {score!r} is not available for {type(model).__name__}; choose one of {sorted(allowed)}")


def latent_noise(model: nn.Module, n_samples: int, seed: int, device: torch.device) -> torch.Tensor | None:
    """The fixed draws a VAE's sampled scores use: reproducible from the seed, shared by every row."""
    if not isinstance(model, VAE):
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_samples, model.latent_dim, generator=generator).to(device)


@torch.inference_mode()  # like no_grad, minus version counters: ~30% less per-call overhead on small batches
def score_batch(model: nn.Module, x: torch.Tensor, score: str, eps: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (score (N,), per-feature contributions (N, F)) for one batch."""
    if score in ("elbo", "iwae"):
        nll, kl = model.elbo_terms(x, eps)
        total = nll.sum(-1) + kl if score == "elbo" else -model.iwae_bound(x, eps)
        # Without the log-scale constant each feature's term is its squared standardised misfit (>= 0).
        return total, nll - (model.log_scale_clamped() + 0.5 * LOG_2PI).flatten()
    if score == "recon+latent":
        return model.score(x)
    errors = model.feature_errors(x)["errors"]
    return errors.mean(-1), errors


def score_array(model: nn.Module, x: np.ndarray, score: str, device: torch.device, eps: torch.Tensor | None,
                batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    if model.training:  # eval() walks every submodule: a sizeable share of a 1-row call
        model.eval()
    totals, contributions = [], []
    for start in range(0, max(len(x), 1), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])).to(device)
        total, contrib = score_batch(model, batch, score, eps)
        totals.append(total.double().cpu().numpy())
        contributions.append(contrib.double().cpu().numpy())
    if len(totals) == 1:  # the common case (and the service's): no copy
        return totals[0], contributions[0]
    return np.concatenate(totals), np.concatenate(contributions)
