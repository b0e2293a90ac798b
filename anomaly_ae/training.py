"""The one training loop: Adam, mini-batches, early stopping on validation loss, best weights restored.

It knows nothing about files, printing or MLflow; callers observe progress through `on_epoch`.
Adversarial models (`model.adversarial`) get a second optimiser for their discriminator.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20
    min_delta: float = 1e-4  # relative improvement that counts as progress


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss,
                "best_epoch": self.best_epoch, "seconds": self.seconds}


EpochCallback = Callable[[int, float, float], None]


@torch.no_grad()
def evaluate_loss(model: nn.Module, x: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        total += float(model.loss(batch)) * len(batch)
    return total / len(x)


def train(model: nn.Module, x_train: torch.Tensor, x_val: torch.Tensor, config: TrainConfig,
          seed: int = 0, on_epoch: EpochCallback | None = None) -> History:
    """Fit `model` in place on tensors already on the right device; returns the loss history."""
    generator = torch.Generator().manual_seed(seed)
    adversarial = getattr(model, "adversarial", False)
    ae_params = model.autoencoder_parameters() if adversarial else list(model.parameters())
    optimizer = torch.optim.Adam(ae_params, lr=config.learning_rate, weight_decay=config.weight_decay)
    disc_optimizer = (torch.optim.Adam(model.discriminator.parameters(), lr=config.learning_rate)
                      if adversarial else None)
    history = History()
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    # Small data sets still get a fair number of optimiser steps per epoch.
    batch_size = max(1, min(config.batch_size, len(x_train)))
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator).to(x_train.device)
        running, seen = 0.0, 0
        for start in range(0, len(x_train), batch_size):
            batch = x_train[order[start:start + batch_size]]
            if disc_optimizer is not None:
                disc_optimizer.zero_grad(set_to_none=True)
                model.discriminator_loss(batch).backward()
                disc_optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(batch)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(batch)
            seen += len(batch)
        train_loss = running / seen
        val_loss = evaluate_loss(model, x_val, 4096)
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss)
        improved = best_loss == float("inf") or val_loss < best_loss - config.min_delta * abs(best_loss)
        if improved and val_loss == val_loss:  # NaN never counts as progress
            best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
            history.best_epoch = epoch
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    return history
