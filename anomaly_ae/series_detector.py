"""SeriesDetector: a Detector for metric streams, scoring each row by the window of steps ending at it.

The estimator contract, outputs, persistence and every adapter are the Detector's: fitting
differs in two places. Rows are framed in time (`data.windows.SeriesFraming`: order, gaps, one
window per row, never across series), and the held-out rows that stop training and calibrate the
threshold are the **contiguous tail** of each series, never random rows: neighbouring windows
share all but one step, so random held-out windows would be near-copies of training ones and the
threshold would be set too low.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd

from anomaly_ae.calibration import AlertRule, Calibration
from anomaly_ae.data.preprocess import Preprocessor, warn_of_extreme_values
from anomaly_ae.data.schema import Schema
from anomaly_ae.data.windows import SeriesFraming, SeriesLayout, check_covariates, dominant_period
from anomaly_ae.detector import Detector, _take, without_ignored
from anomaly_ae.exceptions import DataError, InvalidParameterError
from anomaly_ae.inference import InferencePath, ScoreResult, model_input, series_input
from anomaly_ae.models import SERIES_MODELS, DetectorModel
from anomaly_ae.models.multiscale import MultiscaleNeighbors
from anomaly_ae.models.neighbors import NearestNeighbors
from anomaly_ae.scoring import ModelScorer
from anomaly_ae.training import Checkpointing

# window="auto": the dominant period of the training history within these bounds, else the fallback.
AUTO_WINDOW_BOUNDS = (16, 128)
DEFAULT_WINDOW = 32
# The default model, chosen by the time-series benchmark (benchmarks/results/timeseries_*.md): knn over each
# window's last 16, 32 and 64 steps, each distance over its held-out 99th percentile, averaged. Against knn
# over 32 steps alone (0.605 on NASA MSL, ahead of windowed PCA 0.536, TSB-AD's KMeansAD 0.532 and the
# sequence models: tcn 0.563, gru 0.544, vae 0.536) it is ahead on all three suites by mean VUS-PR (MSL
# 0.621, SKAB 0.834 against 0.831, NAB 0.365 against 0.340), by a rule fixed before it was built (the fusion
# experiment's: benchmarks/results/experiments/issue12_fusion_*.md): no single length is best for every
# series. Its threshold flags more normal rows than knn's (benchmarks/timeseries/README.md, "The default").
DEFAULT_SERIES_MODEL = "knn_multiscale"


# Training refuses a history where this share of the rows or more land on a time step that another row
# of their series also holds (only the last row of a step enters the windows after it): the rows of
# several series, one step apart at most, read as one series.
MAX_REPEATED_STEP_SHARE = 0.5


def _check_repeated_steps(layout: SeriesLayout) -> None:
    n = len(layout.position)
    repeated = n - len(np.unique(layout.position))
    if not repeated:
        return
    hint = ("if the data holds several series (hosts, sensors), name the column that tells them apart "
            "(series_col, or --series-col)")
    if repeated >= MAX_REPEATED_STEP_SHARE * n:
        raise DataError(f"{repeated} of {n} training rows share a time step of their series with another row, and "
                        f"only the last row of each step would be learned; {hint}")
    warnings.warn(f"{repeated} of {n} training rows share a time step of their series with another row; the last "
                  f"row of each step stands for it in the windows after it; {hint}", UserWarning, stacklevel=3)


def _held_out_by_length(layout: SeriesLayout, tail_rows: np.ndarray, val_rows: np.ndarray,
                        lengths: Sequence[int]) -> list[np.ndarray]:
    """For each window length, the tail rows whose window of that length lies wholly in the tail (so it
    shares no step with a training window): more rows for a short length than the calibration rows
    `val_rows`, which skip the longest window. `val_rows` where that would give fewer."""
    in_tail = np.zeros(len(layout.position), dtype=bool)
    in_tail[tail_rows] = True
    tail_steps = np.zeros(len(layout.position), dtype=np.int64)  # tail rows of its series up to each row
    for rows in layout.order:
        tail_steps[rows] = np.cumsum(in_tail[rows])
    chosen = []
    for length in lengths:
        rows = tail_rows[tail_steps[tail_rows] >= length]
        chosen.append(rows if len(rows) > len(val_rows) else val_rows)
    return chosen


class SeriesDetector(Detector):
    """Anomaly detector for metric streams (rows in time order, one or many series).

    Parameters beyond `Detector`'s
    ------------------------------
    model : "knn_multiscale" (the default: mean distance to the 5 nearest training windows over each
        window's last quarter, half and whole, each over its 99th percentile on held-out normal
        history, averaged) | "knn" (the whole window only) | "tcn" (temporal convolutional AE) | "gru"
        (recurrent AE) | "ae" | "vae" (windowed beta-VAE, negative ELBO) | "aae" | "pca"
        (`anomaly_ae.models.SERIES_MODELS`).
    window : steps per window (a row's score uses it and the window - 1 rows before it); None (the
        default) takes the model's own: 64 for knn_multiscale, 32 for the others; "auto" takes the
        dominant period of the training history within [16, 128], else the model's own.
    time_col : timestamp column; rows are placed on the training step's grid, gaps of at most
        `max_gap` steps are filled with the last value, longer ones restart the window (noted).
    series_col : the entity column (host, sensor): one model learns all series, windows never
        cross them, and each series' tail is held out for calibration.
    covariates : calendar inputs read from `time_col`, for metrics with daily or weekly patterns:
        "time_of_day" and/or "day_of_week", each added to every step as a point on the unit circle
        (sin, cos), so a window is judged against normal windows at the same time of day (a night
        pattern by day is then anomalous). Explanations name them like columns. Default: none.
    alert_min_steps, alert_within, alert_cooldown : the alert rule: an alert fires when at least
        `alert_min_steps` of the last `alert_within` steps are above the threshold and that held at
        none of the `alert_cooldown` steps before (one alert per incident; `AlertRule`).
    epoch_windows : training windows an epoch of a learned model draws (seeded; default None: all).
        Windows overlap by all but one step, so a long history repeats itself: with a cap an epoch's
        cost stops growing with the history (every step still lies in most drawn windows), at some
        cost in fit (measured before `gru`'s cells read several steps: on 10,000 steps x 38 metrics,
        4096 took 49 s instead of 202 s at a held-out loss of 0.334 instead of 0.246;
        benchmarks/results/timeseries_speed.md).
    """

    _models: ClassVar[dict[str, DetectorModel]] = SERIES_MODELS

    def __init__(self, model: str = DEFAULT_SERIES_MODEL, *, window: int | str | None = None,
                 time_col: str | None = None,
                 series_col: str | None = None, covariates: Sequence[str] = (), max_gap: int = 3,
                 alert_min_steps: int = 3,
                 alert_within: int = 5, alert_cooldown: int = 12,
                 latent_dim: int | None = None, hidden_dims: Sequence[int] | None = None, score: str | None = None,
                 n_estimators: int | None = None, epochs: int = 100, batch_size: int | None = None,
                 learning_rate: float = 1e-3, weight_decay: float = 0.0, patience: int = 10,
                 epoch_windows: int | None = None, validation_fraction: float = 0.2, target_fpr: float = 0.01,
                 beta: float = 1.0,
                 corruption: str = "gaussian", noise: float = 0.2, sparsity: float = 1e-2,
                 adversarial_weight: float = 0.1, latent_weight: float = 0.1, n_samples: int = 16,
                 variance_kept: float = 0.9, neighbors: int | None = None, max_reference: int = 10_000,
                 max_categories: int = 50, ignore_columns: Sequence[str] | None = None, device: str = "auto",
                 random_state: int = 0, verbose: bool = False) -> None:
        super().__init__(model, latent_dim=latent_dim, hidden_dims=hidden_dims, score=score,
                         n_estimators=n_estimators, epochs=epochs, batch_size=batch_size,
                         learning_rate=learning_rate, weight_decay=weight_decay, patience=patience,
                         validation_fraction=validation_fraction, target_fpr=target_fpr, beta=beta,
                         corruption=corruption, noise=noise, sparsity=sparsity,
                         adversarial_weight=adversarial_weight, latent_weight=latent_weight, n_samples=n_samples,
                         variance_kept=variance_kept, neighbors=neighbors, max_reference=max_reference,
                         max_categories=max_categories, ignore_columns=ignore_columns, device=device,
                         random_state=random_state, verbose=verbose)
        self.window = window
        self.time_col = time_col
        self.series_col = series_col
        self.covariates = covariates
        self.max_gap = max_gap
        self.alert_min_steps = alert_min_steps
        self.alert_within = alert_within
        self.alert_cooldown = alert_cooldown
        self.epoch_windows = epoch_windows

    # ------------------------------------------------------------------ fitting
    def fit(self, X: pd.DataFrame | np.ndarray, y: Any = None, *,
            checkpoint: Checkpointing | None = None) -> "SeriesDetector":
        """Learn normal behaviour from the history X (normal rows only, in time order; y is ignored)."""
        self.validate_params()
        alert_rule = AlertRule(int(self.alert_min_steps), int(self.alert_within), int(self.alert_cooldown))
        if checkpoint is not None:
            checkpoint.prepare()
        if isinstance(X, np.ndarray) and X.ndim != 2:
            raise DataError(f"expected a DataFrame or a 2-D array (steps x metrics), got shape {X.shape}")
        if isinstance(X, (pd.DataFrame, np.ndarray)) and len(X) == 0:  # as Detector.fit says it
            raise DataError("the training history has no rows; pass at least a few hundred normal steps per series")
        X = without_ignored(X, self.ignore_columns)
        framing = SeriesFraming(1, self.time_col, self.series_col, self.max_gap,
                                covariates=self.covariates).learn(X)
        metrics, layout = framing.split(X)
        _check_repeated_steps(layout)
        schema = Schema.infer(metrics)
        schema.ignored = tuple(self.ignore_columns or ())
        checked, _ = schema.check(metrics)
        warn_of_extreme_values(checked, schema)
        train_rows, val_rows, stop_rows = self._split(layout)
        pre = Preprocessor(self.max_categories, flags_as_indicators=True).fit(_take(checked, train_rows), schema)
        x = model_input(pre, schema, checked)
        framing.window = self._resolve_window(x[train_rows])
        self._fit_window = framing.window  # what the neighbour term's lengths are fractions of (read in fit only)
        self._warn_if_the_tail_misses_a_cycle(x, layout, train_rows, val_rows)
        in_train = np.zeros(len(layout.position), dtype=bool)
        in_train[train_rows] = True
        longest = max(int(in_train[rows].sum()) for rows in layout.order)
        if framing.window > longest:
            raise DataError(f"window {framing.window} is longer than the longest training stretch ({longest} steps, "
                            f"after the last {self.validation_fraction:.0%} of each series is held out to calibrate), "
                            "so no training window is complete; choose a window of at most a quarter of the "
                            "history, or send a longer history")
        x = series_input(x, layout)
        windows = layout.windows(framing.window)
        sequence = self._models[self.model].sequence

        def window_input(rows: np.ndarray) -> np.ndarray:
            part = x[windows[rows]]
            return part if sequence else part.reshape(len(part), -1)

        x_val = window_input(val_rows)
        rng = np.random.default_rng(self.random_state)
        scorer = self._fit_scorer(window_input(train_rows), window_input(stop_rows), x_val, rng, checkpoint)
        if isinstance(scorer.neighbors, MultiscaleNeighbors):  # before the threshold, which scores with them
            by_length = _held_out_by_length(layout, stop_rows, val_rows, scorer.neighbors.steps)
            scorer.neighbors.fit_scales([window_input(rows) for rows in by_length])
        self.schema_, self.preprocessor_, self.framing_, self.alert_rule_ = schema, pre, framing, alert_rule
        val_scores, _ = scorer.score(x_val)
        calibration = Calibration.fit(val_scores, self.target_fpr)
        if scorer.neighbors is not None and not scorer.members:
            # once the tail has calibrated, knn's reference takes every window of the normal history:
            # the rows scored next follow the tail in time, and a drifting process stays nearer its
            # recent past (fixed before measuring; then VUS-PR MSL 0.590 -> 0.605, NAB 0.336 -> 0.340,
            # SKAB's false alarms at our threshold 66% -> 56%). The threshold stays the tail's: scored
            # against a reference without it, as new rows are scored against one without them.
            history = np.zeros(len(layout.position), dtype=bool)
            history[np.concatenate([train_rows, stop_rows])] = True
            every = np.concatenate([rows[history[rows]] for rows in layout.order])
            widened = self._neighbors(window_input(every), scorer.neighbors.k, self.device_,
                                      np.random.default_rng(self.random_state))
            if isinstance(widened, MultiscaleNeighbors) and isinstance(scorer.neighbors, MultiscaleNeighbors):
                widened.scales.copy_(scorer.neighbors.scales)  # the tail's, like the threshold
            scorer.neighbors = widened
        self._set_fitted(scorer, calibration)
        self.alert_stats_ = self._alert_stats(val_scores > calibration.threshold, layout, val_rows)
        self.training_metadata_: dict[str, Any] = {}
        return self

    def _split(self, layout: SeriesLayout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per series: the head trains; the tail's rows calibrate, after skipping window - 1 rows
        (with a window of at most 128 steps) whose windows would reach into the head's. Early
        stopping watches the whole tail."""
        train, val, stop = [], [], []
        for rows in layout.order:
            n_tail = int(round(len(rows) * self.validation_fraction))
            if len(rows) - n_tail < 2 or n_tail < 2:
                continue  # too short to split: left out of both (see the check below)
            head, tail = rows[: len(rows) - n_tail], rows[len(rows) - n_tail:]
            skip = min(self._window_guess() - 1, len(tail) // 2)
            train.append(head)
            stop.append(tail)
            val.append(tail[skip:])
        n_train = sum(map(len, train))
        n_val = sum(map(len, val))
        if n_train < 10 or n_val < 2:
            raise DataError(f"need a longer normal history: {n_train} steps to train and {n_val} to calibrate "
                            f"after holding out the last {self.validation_fraction:.0%} of each series; send at "
                            "least a few hundred steps per series")
        return np.concatenate(train), np.concatenate(val), np.concatenate(stop)

    def _warn_if_the_tail_misses_a_cycle(self, x: np.ndarray, layout: SeriesLayout, train_rows: np.ndarray,
                                         val_rows: np.ndarray) -> None:
        """The threshold is set on each series' last `validation_fraction` of history: shorter than the
        history's cycle (a day of 5-minute steps is 288), it sees part of the cycle, and the rest of the
        cycle can be flagged far more often than target_fpr (27.9% at a 1% target was seen)."""
        longest = max(layout.order, key=len)
        head = longest[np.isin(longest, train_rows)]
        calibrating = [int(n) for n in (np.isin(rows, val_rows).sum() for rows in layout.order) if n]
        tail = min(calibrating, default=0)
        period = dominant_period(x[head], 8, len(head))
        if period is not None and 0 < tail < period:
            warnings.warn(f"each series calibrates its threshold on its last {tail} steps (validation_fraction="
                          f"{self.validation_fraction:g}), less than one cycle of the history ({period} steps): the "
                          "threshold may not hold over the rest of the cycle; send a history of at least "
                          f"{int(np.ceil(period / self.validation_fraction))} steps per series, or raise "
                          "validation_fraction", UserWarning, stacklevel=3)

    def _default_window(self) -> int:
        """The window of window=None: the model's own (64 steps for knn_multiscale), else DEFAULT_WINDOW."""
        return self._models[self.model].window or DEFAULT_WINDOW

    def _window_guess(self) -> int:
        if self.window == "auto":
            return AUTO_WINDOW_BOUNDS[1]
        return self._default_window() if self.window is None else int(self.window)

    def _resolve_window(self, x_train: np.ndarray) -> int:
        if self.window != "auto":
            return self._window_guess()
        period = dominant_period(x_train, *AUTO_WINDOW_BOUNDS)
        if period is None:
            fallback = self._default_window()
            warnings.warn(f"window='auto' found no period of {AUTO_WINDOW_BOUNDS[0]}-{AUTO_WINDOW_BOUNDS[1]} steps in "
                          f"the training history, so the window is {fallback} steps; give window=N for another",
                          UserWarning, stacklevel=3)
            return fallback
        return period

    def _neighbor_module(self, input_shape: tuple[int, ...], n_reference: int, k: int
                         ) -> NearestNeighbors | MultiscaleNeighbors:
        fractions = self._models[self.model].neighbor_steps
        if not fractions:
            return super()._neighbor_module(input_shape, n_reference, k)
        return MultiscaleNeighbors(input_shape, n_reference, k,
                                   [max(1, round(f * self._fit_window)) for f in fractions])

    def _alert_stats(self, flags: np.ndarray, layout: SeriesLayout, val_rows: np.ndarray) -> dict[str, Any]:
        """How often the threshold and the alert rule fire on held-out normal history."""
        held = np.zeros(len(layout.position), dtype=bool)
        held[val_rows] = True
        step_flags = np.zeros(len(layout.position), dtype=bool)
        step_flags[val_rows] = flags
        alerts = steps = 0
        for rows in layout.order:
            kept = rows[held[rows]]
            alerts += int(self.alert_rule_.apply(step_flags[kept]).sum())
            if len(kept):  # the grid steps the held-out rows span: time, whether rows are sparser or denser
                steps += int(layout.position[kept[-1]] - layout.position[kept[0]]) + 1
        stats: dict[str, Any] = {"held_out_steps": steps, "held_out_rows": int(held.sum()),
                                 "flagged_steps": int(flags.sum()), "alerts": alerts,
                                 "alerts_per_1000_steps": 1000.0 * alerts / max(steps, 1)}
        if self.framing_.step_seconds:
            days = steps * self.framing_.step_seconds / 86_400
            stats["alerts_per_day"] = alerts / days
        return stats

    def validate_params(self) -> None:
        super().validate_params()
        if self.window not in ("auto", None) and (isinstance(self.window, bool)
                                                  or not isinstance(self.window, (int, np.integer)) or self.window < 1):
            raise InvalidParameterError(f"window must be a positive number of steps, 'auto' or None (the model's "
                                        f"default), got {self.window!r}")
        keys = [c for c in (self.time_col, self.series_col) if c is not None and c in (self.ignore_columns or ())]
        if keys:
            role = "time" if keys[0] == self.time_col else "series"
            raise InvalidParameterError(f"ignore_columns names {keys[0]!r}, the {role} column the model reads; "
                                        "leave it out of ignore_columns")
        if self.time_col is not None and self.time_col == self.series_col:
            raise InvalidParameterError(f"time_col and series_col are both {self.time_col!r}; name two different "
                                        "columns (or leave series_col out for one series)")
        for name in ("max_gap", "alert_min_steps", "alert_within", "alert_cooldown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidParameterError(f"{name} must be a whole number of steps, got {value!r}")
        if self.max_gap < 0:
            raise InvalidParameterError(f"max_gap must be >= 0 steps, got {self.max_gap}")
        AlertRule(int(self.alert_min_steps), int(self.alert_within), int(self.alert_cooldown))  # its own checks
        if self.epoch_windows is not None and (not isinstance(self.epoch_windows, (int, np.integer))
                                               or self.epoch_windows < 1):
            raise InvalidParameterError(f"epoch_windows must be a positive number of windows or None, got "
                                        f"{self.epoch_windows!r}")
        check_covariates(self.covariates, self.time_col)

    def _epoch_samples(self) -> int | None:
        return None if self.epoch_windows is None else int(self.epoch_windows)

    def _set_fitted(self, scorer: ModelScorer, calibration: Calibration) -> None:
        self.fitted_params_ = copy.deepcopy(self.get_params())  # as Detector's: what save() writes
        self.scorer_, self.calibration_, self.threshold_ = scorer, calibration, calibration.threshold
        self.window_ = self.framing_.window
        self.inference_ = InferencePath(self.schema_, self.preprocessor_, scorer, calibration,
                                        framing=self.framing_, sequence=self._models[self.model].sequence,
                                        alert_rule=self.alert_rule_)
        self.n_features_in_ = len(self.schema_.names)  # input columns; feature_names_ adds the covariates

    def _normal_scores(self, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, ScoreResult, np.ndarray]:
        """Only rows with a whole window of history calibrate: warm-up rows score from fewer steps."""
        result = self._inference(X)
        assert result.layout is not None
        kept = np.flatnonzero(result.layout.history() >= self.window_)
        if not len(kept):
            raise DataError(f"no row of the recalibration data has {self.window_ - 1} steps of its series before it "
                            f"(the window is {self.window_} steps); give longer stretches of normal history")
        return result.scores[kept], result, kept

    def _rows_per_independent_score(self) -> int:
        return int(self.window_)

    def _training_period_note(self, X: pd.DataFrame | np.ndarray, kept: np.ndarray) -> str | None:
        # the rows that calibrate, not the window - 1 rows of context before them, which may well be history
        inside = self.framing_.in_training_period(X)[kept]
        if inside.sum() * 10 < len(inside):  # a few: the data may begin where the history ends
            return None
        end = pd.Timestamp(max(self.framing_.ends_ns.values()))
        return (f"{int(inside.sum())} of the {len(inside)} recalibrating rows lie within the training history "
                f"(which ends at {end.isoformat()}): rows the model trained or calibrated on score low, and a "
                "threshold set on them flags too much new normal data; recalibrate on normal data from after "
                "the training period")

    def _recalibrated(self, result: ScoreResult, kept: np.ndarray) -> None:
        assert result.layout is not None
        self.alert_stats_ = self._alert_stats(result.scores[kept] > self.threshold_, result.layout, kept)

    # ------------------------------------------------------------------ scoring
    def explain_steps(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(rows, window, input columns): each row's misfit shared out over the steps of its window
        (oldest first) and the columns; each row sums to 1 (0 for a perfect fit)."""
        result = self._inference(X, step_shares=True)
        assert result.step_shares is not None
        return result.step_shares

    def alerts(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """1 where the alert rule fires (k of n steps flagged, first time in a cooldown), per series in time order."""
        result = self._inference(X)
        assert result.alerts is not None
        return result.alerts.astype(np.int64)
