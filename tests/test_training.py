"""The training loop (anomaly_ae/training.py): early stopping, best weights restored, determinism, History.

Two kinds of model: a real tiny autoencoder, and a scripted module whose validation losses are
fixed in advance, so the stopping rule can be checked epoch by epoch without patching anything.
"""

import copy
import math
from typing import Callable

import pytest
import torch
from torch import nn

from anomaly_ae.models import build_model
from anomaly_ae.training import History, TrainConfig, evaluate_loss, train


class ScriptedLoss(nn.Module):
    """Training loss pulls a weight towards 1; the validation loss of epoch i is `val_losses[i]`.

    `train` calls `loss` once per epoch in eval mode (validation sets below 4096 rows are one
    batch), so the scripted values are exactly the history's val_loss.
    """

    def __init__(self, val_losses: list[float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.val_losses = list(val_losses)
        self.calls = 0

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return ((self.w - 1.0) ** 2).sum() + 0.0 * x.sum()
        value = self.val_losses[self.calls]
        self.calls += 1
        return torch.tensor(value)


def snapshot_every_epoch(model: nn.Module) -> tuple[dict[int, dict[str, torch.Tensor]], Callable]:
    states: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch(epoch: int, train_loss: float, val_loss: float) -> None:
        states[epoch] = copy.deepcopy(model.state_dict())

    return states, on_epoch


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


X = torch.zeros(8, 2)  # the scripted module ignores its data


@pytest.mark.parametrize("val_losses, patience, best_epoch, n_epochs", [
    ([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.9], 3, 3, 6),       # three epochs without progress stop it
    ([5.0, 4.0, 3.0, 3.5, 2.9, 3.2, 3.3, 3.4], 3, 5, 8),  # progress resets the count
    ([5.0, 4.0, 3.0, 2.0], 10, 4, 4),                     # never stale: runs all epochs
    ([5.0, 6.0, 7.0], 1, 1, 2),                           # patience 1: the first worse epoch stops it
])
def test_patience_counts_epochs_without_progress(val_losses, patience, best_epoch, n_epochs):
    model = ScriptedLoss(val_losses + [0.0] * 5)  # later values would win if training overran
    states, on_epoch = snapshot_every_epoch(model)
    config = TrainConfig(epochs=len(val_losses), batch_size=4, learning_rate=0.1, patience=patience)
    history = train(model, X, X, config, on_epoch=on_epoch)
    assert history.best_epoch == best_epoch
    assert len(history.val_loss) == len(history.train_loss) == n_epochs
    assert history.val_loss == pytest.approx(val_losses[:n_epochs])
    # the weights after the best epoch come back, not the last ones
    assert same_state(model.state_dict(), states[best_epoch])
    if best_epoch != n_epochs:
        assert not same_state(states[best_epoch], states[n_epochs])
    assert not model.training


def test_min_delta_is_relative_and_nan_never_counts_as_progress():
    # 100 -> 99.995 is 0.005% better: below min_delta=1e-4 (0.01%), so it is stale; NaN too.
    val_losses = [100.0, 99.995, float("nan"), 99.0, float("nan"), float("nan")]
    model = ScriptedLoss(val_losses)
    states, on_epoch = snapshot_every_epoch(model)
    config = TrainConfig(epochs=6, batch_size=8, learning_rate=0.1, patience=2, min_delta=1e-4)
    history = train(model, X, X, config, on_epoch=on_epoch)
    # epoch 2 and 3 stale -> stop after epoch 3, best stays epoch 1
    assert history.best_epoch == 1 and len(history.val_loss) == 3
    assert same_state(model.state_dict(), states[1])
    assert math.isnan(history.val_loss[2])


def test_a_nan_first_epoch_is_not_the_best():
    model = ScriptedLoss([float("nan"), 2.0, 1.0])
    history = train(model, X, X, TrainConfig(epochs=3, batch_size=8, learning_rate=0.1, patience=5))
    assert history.best_epoch == 3


def tiny_autoencoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model({"family": "autoencoder", "input_shape": [4], "latent_dim": 1, "hidden_dims": [8]})


def overfitting_data() -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows near 1, validation rows at 0.5: the reconstruction drifts from the initial
    output (near 0) towards 1, passing 0.5, so the validation loss falls, then rises."""
    g = torch.Generator().manual_seed(0)
    x_train = 1.0 + 0.05 * torch.randn(64, 4, generator=g)
    x_val = torch.full((16, 4), 0.5)
    return x_train, x_val


def test_early_stopping_restores_the_best_validation_weights_of_a_real_model():
    x_train, x_val = overfitting_data()
    model = tiny_autoencoder()
    states, on_epoch = snapshot_every_epoch(model)
    config = TrainConfig(epochs=300, batch_size=16, learning_rate=1e-2, patience=10, min_delta=0.0)
    history = train(model, x_train, x_val, config, on_epoch=on_epoch)
    best = min(history.val_loss)
    # the set-up really overfits: validation loss went up after the best epoch and stopped training
    assert 1 < history.best_epoch < len(history.val_loss) < config.epochs
    assert history.val_loss[-1] > best * 1.05
    assert history.val_loss[history.best_epoch - 1] == best
    assert len(history.val_loss) == history.best_epoch + config.patience
    # the returned model is the best one: recompute its validation loss, compare its weights
    assert evaluate_loss(model, x_val, 4096) == pytest.approx(best, rel=1e-6)
    assert same_state(model.state_dict(), states[history.best_epoch])
    assert not same_state(model.state_dict(), states[len(history.val_loss)])


def test_same_seed_same_weights_other_seed_other_weights():
    x_train, x_val = overfitting_data()
    config = TrainConfig(epochs=15, batch_size=8, learning_rate=1e-2, patience=100)
    runs = []
    for seed in (0, 0, 1):
        model = tiny_autoencoder()  # same initial weights every time; only the shuffle seed varies
        runs.append((train(model, x_train, x_val, config, seed=seed), model.state_dict()))
    (h0, s0), (h0b, s0b), (h1, s1) = runs
    assert h0.train_loss == h0b.train_loss and h0.val_loss == h0b.val_loss
    assert same_state(s0, s0b)
    assert h0.train_loss != h1.train_loss  # the seed drives the mini-batch order
    assert not same_state(s0, s1)


def test_training_does_not_depend_on_the_global_torch_seed():
    x_train, x_val = overfitting_data()
    config = TrainConfig(epochs=5, batch_size=8, learning_rate=1e-2)
    states = []
    for global_seed in (1, 2):
        model = tiny_autoencoder()
        torch.manual_seed(global_seed)
        train(model, x_train, x_val, config, seed=3)
        states.append(model.state_dict())
    assert same_state(*states)


def test_history_contents_and_callback():
    x_train, x_val = overfitting_data()
    model = tiny_autoencoder()
    seen = []
    config = TrainConfig(epochs=12, batch_size=16, learning_rate=5e-3, patience=100)
    history = train(model, x_train, x_val, config, on_epoch=lambda *args: seen.append(args))
    assert isinstance(history, History)
    assert [s[0] for s in seen] == list(range(1, 13))
    assert [s[1] for s in seen] == history.train_loss and [s[2] for s in seen] == history.val_loss
    assert all(math.isfinite(v) and v >= 0 for v in history.train_loss + history.val_loss)
    assert history.train_loss[-1] < history.train_loss[0]  # it learns
    assert 1 <= history.best_epoch <= 12 and history.seconds > 0
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    d = history.to_dict()
    assert d == {"train_loss": history.train_loss, "val_loss": history.val_loss,
                 "best_epoch": history.best_epoch, "seconds": history.seconds}


def test_batch_larger_than_the_data_is_one_batch():
    x_train, x_val = overfitting_data()
    model = tiny_autoencoder()
    history = train(model, x_train[:5], x_val, TrainConfig(epochs=2, batch_size=256))
    assert len(history.train_loss) == 2 and all(math.isfinite(v) for v in history.train_loss)


def test_an_epoch_draws_at_most_epoch_samples_rows_and_different_ones_each_epoch():
    """`epoch_samples` caps the rows an epoch trains on (a series model's overlapping windows); each
    epoch draws its own seeded subset, so over epochs every row is used."""

    class Recorder(ScriptedLoss):
        def __init__(self) -> None:
            super().__init__([1.0 - 0.01 * i for i in range(6)])
            self.seen: list[list[int]] = [[]]

        def loss(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                self.seen[-1].extend(int(v) for v in x[:, 0])
            else:
                self.seen.append([])
            return super().loss(x)

    model = Recorder()
    x_train = torch.arange(100, dtype=torch.float32)[:, None].repeat(1, 3)
    train(model, x_train, torch.zeros(4, 3), TrainConfig(epochs=6, batch_size=8, patience=10, epoch_samples=30))
    epochs = [rows for rows in model.seen if rows]
    assert len(epochs) == 6 and all(len(rows) == len(set(rows)) == 30 for rows in epochs)
    assert len({tuple(sorted(rows)) for rows in epochs}) == 6 and len(set().union(*map(set, epochs))) > 80
