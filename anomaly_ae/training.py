"""The one training loop: Adam, mini-batches, early stopping on validation loss, best weights restored.

It knows nothing about printing or MLflow; callers observe progress through `on_epoch`.
Adversarial models (`model.adversarial`) get a second optimiser for their discriminator.

With a `Checkpointing`, the complete training state is saved every N epochs and when training
ends, so a killed run resumes where it stopped and ends with exactly the weights an uninterrupted
run would have: weights, best weights, both optimisers' state, the shuffling generator and the
global torch RNG (noise, sampling) in one safetensors file, the rest (epoch, best loss, patience
counter, history) as JSON in its metadata; written to a temporary file and renamed, never pickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from anomaly_ae.exceptions import ConfigurationError, DataError, TrainingError

CHECKPOINT_FORMAT = 1
_META_KEY = "anomaly_ae_checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 20
    min_delta: float = 1e-4  # relative improvement that counts as progress
    # Samples an epoch draws (seeded, without replacement; None: every one). A series model's windows
    # overlap by all but one step, so a long history repeats itself: past this many, an epoch's cost
    # stops growing with the history while every step still lies in most epochs' windows.
    epoch_samples: int | None = None


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


@dataclass(frozen=True)
class Checkpointing:
    """Save training state in `directory` every `every` epochs; `resume` continues from it.

    One file per trained network (`<name>.safetensors`). A checkpoint only resumes the run it
    was made by: same data, settings, seed and initial weights (checked by a fingerprint).
    Without `resume`, a directory that already holds checkpoints is refused rather than
    overwritten; with it, a missing checkpoint simply starts from the beginning.
    """

    directory: Path
    every: int = 1
    resume: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise DataError(f"checkpoint every must be an integer >= 1 epoch, got {self.every!r}")

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.safetensors"

    def existing(self) -> list[Path]:
        return sorted(self.directory.glob("*.safetensors")) if self.directory.is_dir() else []

    def prepare(self) -> None:
        """Create the directory and check it can be written; refuse old checkpoints unless resuming."""
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigurationError(f"checkpoint directory '{self.directory}' is a file; give a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe.{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ConfigurationError(f"cannot write checkpoints to '{self.directory}' ({exc.strerror or exc}); "
                                     "choose a directory you can write to") from None
        if not self.resume and self.existing():
            raise DataError(f"'{self.directory}' already holds checkpoints of an earlier training; add --resume "
                            "(resume=True) to continue it, or choose an empty checkpoint directory")

    def clear(self) -> None:
        """Remove this run's checkpoint files (after the trained model is safely saved)."""
        for path in self.existing():
            path.unlink(missing_ok=True)
        for path in self.directory.glob(".*.safetensors.tmp"):
            path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass  # not empty: other files are the user's


def _fingerprint(model: nn.Module, x_train: torch.Tensor, x_val: torch.Tensor, config: TrainConfig,
                 seed: int) -> str:
    """What makes a checkpoint belong to this run: data, settings, seed and initial weights."""
    digest = hashlib.sha256(json.dumps([type(model).__name__, asdict(config), seed,
                                        list(x_train.shape), list(x_val.shape)]).encode())
    tensors = [x_train, x_val, *(v for _, v in sorted(model.state_dict().items()))]
    for name, tensor in zip(["x_train", "x_val", *sorted(model.state_dict())], tensors):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True).contiguous()


def _write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    data = save_safetensors(tensors, metadata={_META_KEY: json.dumps(meta)})
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        data = path.read_bytes()
        tensors = load_safetensors(data)
        header_len = int.from_bytes(data[:8], "little")  # safetensors: 8-byte length, JSON header
        meta = json.loads(json.loads(data[8:8 + header_len])["__metadata__"][_META_KEY])
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {meta.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise DataError(f"checkpoint '{path}' cannot be read ({exc}); delete it to start this training "
                        "from the beginning") from None
    return tensors, meta


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    if optimizer is None:
        return {}
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{index}.{key}"] = _cpu(value if torch.is_tensor(value) else torch.tensor(value))
    return out


def _restore_optimizer(prefix: str, optimizer: torch.optim.Optimizer | None,
                       tensors: dict[str, torch.Tensor]) -> None:
    if optimizer is None:
        return
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    saved = optimizer.state_dict()
    saved["state"] = state
    optimizer.load_state_dict(saved)


def _rng_tensors(generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    out = {"rng.shuffle": generator.get_state(), "rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng.cuda"] = torch.cuda.get_rng_state(device)
    return out


def _restore_rng(generator: torch.Generator, device: torch.device, tensors: dict[str, torch.Tensor]) -> None:
    generator.set_state(tensors["rng.shuffle"])
    torch.set_rng_state(tensors["rng.torch"])
    if device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)


@torch.no_grad()
def evaluate_loss(model: nn.Module, x: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        total += float(model.loss(batch)) * len(batch)
    return total / len(x)


def train(model: nn.Module, x_train: torch.Tensor, x_val: torch.Tensor, config: TrainConfig,
          seed: int = 0, on_epoch: EpochCallback | None = None, *,
          checkpoint: Checkpointing | None = None, checkpoint_name: str = "model") -> History:
    """Fit `model` in place on tensors already on the right device; returns the loss history.

    With `checkpoint`, state is saved to `checkpoint.path(checkpoint_name)`; with
    `checkpoint.resume`, a matching checkpoint there is continued (a finished one is loaded, not
    retrained), and the result is bit-identical to a run that was never interrupted.
    """
    generator = torch.Generator().manual_seed(seed)
    adversarial = getattr(model, "adversarial", False)
    ae_params = model.autoencoder_parameters() if adversarial else list(model.parameters())
    optimizer = torch.optim.Adam(ae_params, lr=config.learning_rate, weight_decay=config.weight_decay)
    disc_optimizer = (torch.optim.Adam(model.discriminator.parameters(), lr=config.learning_rate)
                      if adversarial else None)
    history = History()
    best_loss, best_state, stale = float("inf"), copy.deepcopy(model.state_dict()), 0
    device = x_train.device
    path = fingerprint = None
    first_epoch = 1
    if checkpoint is not None:
        path = checkpoint.path(checkpoint_name)
        fingerprint = _fingerprint(model, x_train, x_val, config, seed)
        if checkpoint.resume and path.exists():
            tensors, meta = _read_checkpoint(path)
            if meta["fingerprint"] != fingerprint:
                raise DataError(f"checkpoint '{path}' was made by a training with other data, settings or seed; "
                                "resume with the same ones, or delete the checkpoint directory to start afresh")
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            history = History(**meta["history"])
            _restore_rng(generator, device, tensors)
            if meta["done"]:
                model.eval()
                return history
            best_state = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
            best_loss, stale, first_epoch = meta["best_loss"], meta["stale"], meta["epoch"] + 1
            _restore_optimizer("opt", optimizer, tensors)
            _restore_optimizer("disc_opt", disc_optimizer, tensors)

    def save(epoch: int, done: bool) -> None:
        tensors = {**{f"model.{k}": _cpu(v) for k, v in model.state_dict().items()},
                   **_rng_tensors(generator, device)}
        if not done:
            tensors.update({f"best.{k}": _cpu(v) for k, v in best_state.items()})
            tensors.update(_optimizer_tensors("opt", optimizer))
            tensors.update(_optimizer_tensors("disc_opt", disc_optimizer))
        meta = {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch, "done": done,
                "best_loss": best_loss, "stale": stale,
                "history": {"train_loss": history.train_loss, "val_loss": history.val_loss,
                            "best_epoch": history.best_epoch}}
        _write_checkpoint(path, tensors, meta)

    # Small data sets still get a fair number of optimiser steps per epoch.
    batch_size = max(1, min(config.batch_size, len(x_train)))
    started = time.perf_counter()
    epoch = first_epoch - 1
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)[:config.epoch_samples].to(x_train.device)
        running, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
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
        if checkpoint is not None and epoch % checkpoint.every == 0 and epoch < config.epochs:
            save(epoch, done=False)
    if not math.isfinite(best_loss):  # kept as "best" would be the first epoch's broken or initial weights
        raise TrainingError(f"training diverged: no epoch ended with a finite validation loss "
                            f"({history.val_loss[-3:]}); "
                            f"lower learning_rate (now {config.learning_rate}) or check the data for extreme values")
    model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    if checkpoint is not None:
        save(epoch, done=True)
    return history
