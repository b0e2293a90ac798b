"""Detector: the estimator users fit on normal data and score new samples with.

scikit-learn's contract (parameters stored untouched, `fit` returns self, learned state ends in
`_`) with PyOD's vocabulary for outputs (`decision_function`, `threshold_`, `predict_proba`).
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch

from anomaly_ae import persistence
from anomaly_ae.calibration import Calibration
from anomaly_ae.data.preprocess import Preprocessor, warn_of_extreme_values, warn_of_identifiers
from anomaly_ae.data.schema import Schema
from anomaly_ae.estimators import MAX_SEED, Estimator, check_integer, check_number, require_fitted
from anomaly_ae.exceptions import DataError, InvalidParameterError
from anomaly_ae.inference import InferencePath, ScoreResult, model_input
from anomaly_ae.models import DETECTOR_MODELS, DetectorModel, build_model
from anomaly_ae.models.multiscale import MultiscaleNeighbors
from anomaly_ae.models.neighbors import NearestNeighbors, kmeans_prototypes
from anomaly_ae.progress import epoch_progress
from anomaly_ae.runtime import resolve_device
from anomaly_ae.scoring import NEIGHBOR_SCORE, ModelScorer, check_score_type
from anomaly_ae.training import Checkpointing, History, TrainConfig, train

MIN_TRAINING_ROWS = 10
# `recalibrate` warns when its rows' mean p-value (under the current calibration) lies this many spreads
# above 0.5: new normal rows give about 0.5 (conformal p-values are uniform on exchangeable data; the
# mean of n of them against m calibration scores spreads by about sqrt(1/12n + 1/12m)), rows the model
# trained on score low and give more (knn 0.65 and the default 0.59 against 0.51 for new rows on
# 1,000 synthetic telemetry rows each), drifted rows less.
SEEN_ROWS_SPREADS = 4.0


class Detector(Estimator):
    """Anomaly detector trained on normal samples only.

    Parameters
    ----------
    model : "hybrid" (the default) | "ae" | "dae" | "sae" | "vae" | "aae" | "ddae" | "pca" | "knn" (the table
        `anomaly_ae.models.DETECTOR_MODELS`). "hybrid" is an
        ensemble of 3 autoencoders plus the 5-nearest-neighbour density term: reconstruction
        error catches samples off the normal manifold, neighbour distance the rare ones on it.
    latent_dim, hidden_dims : network size; None picks sizes from the number of features, and
        hidden_dims=[] means no hidden layer (a linear encoder and decoder).
    score : how a sample is scored; None picks the model's default ("recon" for autoencoders and
        PCA, "elbo" for the VAE, "recon+latent" for the AAE). The VAE also offers "recon" and "iwae".
    n_estimators : number of differently seeded networks whose scores are averaged (None: 3 for
        "hybrid", else 1).
    batch_size : None picks n_train // 20 within [16, 256], so even small data sets get about
        twenty optimiser steps per epoch.
    validation_fraction : share of the normal data held out for early stopping and calibration.
    target_fpr : false-positive rate on normal data that the threshold is calibrated to.
    beta : KL weight of the VAE.  corruption, noise : the denoising autoencoder's input corruption
        ("gaussian" noise std or "mask" drop probability).  sparsity : L1 weight on the sparse
        autoencoder's code.  adversarial_weight, latent_weight : the AAE's adversarial loss weight
        and the weight of the code's prior density in its score, both terms first divided by
        their held-out median (0.1 because adversarial matching spreads normal codes over the
        whole prior, so the prior term is the weaker evidence: AUROC 0.99 vs 0.93 at weight 1 on
        the synthetic telemetry).  n_samples : latent draws for
        the VAE's "elbo" and "iwae" scores.  variance_kept : PCA's explained-variance target.
        noise_scale : the DDAE's per-feature noise width: "uniform" (the default) or "kurtosis"
        (clip(sqrt(kurtosis / 3), 0.5, 3) per feature, from the training rows).
    neighbors : k > 0 adds density evidence: the mean distance to the k nearest training rows
        (at most `max_reference` of them, sampled), standardised on held-out normals and added to
        the standardised model score. 0 scores by the model alone; None: 5 for "hybrid" and "knn", else 0.
    neighbor_reference : what the neighbour term measures distances to, and so what a saved model
        holds: "rows" (the default: up to `max_reference` preprocessed training rows, sampled) or
        "prototypes" (at most `n_prototypes` k-means centroids of the preprocessed training rows,
        each the mean of >= 2 of them; MiniBatchKMeans seeded by random_state; no single row kept).
    ignore_columns : columns of the data that are not features (ids, labels): left out of fit, and of
        every input scored later where present, so the files the model was trained on score as they are.
    device : "auto" (CUDA when available), "cpu" or "cuda[:N]".
    random_state : seed for the split, initialisation, training and sampled scores.
    verbose : show a progress bar while training.
    """

    # The values of `model` this estimator accepts (SeriesDetector has its own table).
    _models: ClassVar[dict[str, DetectorModel]] = DETECTOR_MODELS

    def __init__(self, model: str = "hybrid", *, latent_dim: int | None = None,
                 hidden_dims: Sequence[int] | None = None, score: str | None = None, n_estimators: int | None = None,
                 epochs: int = 200, batch_size: int | None = None, learning_rate: float = 1e-3,
                 weight_decay: float = 0.0, patience: int = 20, validation_fraction: float = 0.2,
                 target_fpr: float = 0.01, beta: float = 1.0, corruption: str = "gaussian", noise: float = 0.2,
                 sparsity: float = 1e-2, adversarial_weight: float = 0.1, latent_weight: float = 0.1,
                 n_samples: int = 16, variance_kept: float = 0.9, noise_scale: str = "uniform",
                 neighbors: int | None = None, max_reference: int = 10_000, neighbor_reference: str = "rows",
                 n_prototypes: int = 2000, max_categories: int = 50, ignore_columns: Sequence[str] | None = None,
                 device: str = "auto", random_state: int = 0,
                 verbose: bool = False) -> None:
        self.model = model
        self.latent_dim = latent_dim
        self.hidden_dims = hidden_dims
        self.score = score
        self.n_estimators = n_estimators
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.target_fpr = target_fpr
        self.beta = beta
        self.corruption = corruption
        self.noise = noise
        self.sparsity = sparsity
        self.adversarial_weight = adversarial_weight
        self.latent_weight = latent_weight
        self.n_samples = n_samples
        self.variance_kept = variance_kept
        self.noise_scale = noise_scale
        self.neighbors = neighbors
        self.max_reference = max_reference
        self.neighbor_reference = neighbor_reference
        self.n_prototypes = n_prototypes
        self.max_categories = max_categories
        self.ignore_columns = ignore_columns
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def fit(self, X: pd.DataFrame | np.ndarray, y: Any = None, *,
            synthetic: pd.DataFrame | np.ndarray | None = None,
            checkpoint: Checkpointing | None = None) -> "Detector":
        """Learn normal behaviour from X (normal samples only; y is ignored).

        `synthetic`: extra normal rows (e.g. from a `Generator`). They are split like the real
        rows, for training and for the held-out loss that stops training early (so a context
        they add is learned, not ignored); the threshold is calibrated on held-out *real* rows
        only, so its false-positive rate is a real one.

        `checkpoint`: save each network's training state there (`Checkpointing(dir, every,
        resume)`); with `resume=True` a killed fit continues, finished networks are not
        retrained, and the result is identical to an uninterrupted fit.
        """
        self.validate_params()
        if checkpoint is not None:
            checkpoint.prepare()
        X = without_ignored(X, self.ignore_columns)
        schema = Schema.infer(X)
        schema.ignored = tuple(self.ignore_columns or ())
        checked, _ = schema.check(X)
        extra = None
        if synthetic is not None:
            extra, _ = schema.check(synthetic)
        n = len(checked)
        if n < MIN_TRAINING_ROWS:
            raise DataError(f"need at least {MIN_TRAINING_ROWS} normal rows to train and calibrate, got {n}; "
                            "collect more normal data")
        warn_of_identifiers(schema, n, self.max_categories)
        warn_of_extreme_values(checked, schema)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n)
        n_val = max(2, int(round(n * self.validation_fraction)))
        if n - n_val < 2:
            raise DataError(f"validation_fraction={self.validation_fraction} of {n} rows leaves {n - n_val} to train "
                            "on; lower validation_fraction or give more rows")
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        pre = Preprocessor(self.max_categories).fit(_take(checked, train_idx), schema)
        x = model_input(pre, schema, checked)
        x_train, x_val = x[train_idx], x[val_idx]
        x_stop = x_val  # held-out rows for early stopping; x_val alone calibrates
        if extra is not None and len(extra):
            x_extra = model_input(pre, schema, extra)
            # its own generator, so the real split is the same with or without synthetic rows
            extra_order = np.random.default_rng([self.random_state, 1]).permutation(len(x_extra))
            n_extra_val = int(round(len(x_extra) * self.validation_fraction))
            x_train = np.concatenate([x_train, x_extra[extra_order[n_extra_val:]]])
            x_stop = np.concatenate([x_val, x_extra[extra_order[:n_extra_val]]])

        scorer = self._fit_scorer(x_train, x_stop, x_val, rng, checkpoint)
        self.schema_, self.preprocessor_ = schema, pre
        val_scores, _ = scorer.score(x_val)
        self._set_fitted(scorer, Calibration.fit(val_scores, self.target_fpr))
        # Free-form JSON facts about how this model came to be (e.g. augmentation provenance);
        # saved with the model, never used for scoring.
        self.training_metadata_: dict[str, Any] = {}
        return self

    def _fit_scorer(self, x_train: np.ndarray, x_stop: np.ndarray, x_val: np.ndarray, rng: np.random.Generator,
                    checkpoint: Checkpointing | None = None) -> ModelScorer:
        """Train the networks (or fit them in closed form) and the neighbour term on model-input rows;
        sets model_spec_, history_, score_type_, device_ and input_shape_."""
        device = resolve_device(self.device)
        entry = self._models[self.model]
        spec = entry.spec(self.get_params(), tuple(x_train.shape[1:]), len(x_train)) if entry.spec else None
        if spec is not None:
            probe = build_model(spec)  # cheap: refuse a bad score type before any training
            score = self.score or probe.score_types[0]
            check_score_type(probe, score)
        elif self.score not in (None, NEIGHBOR_SCORE):
            raise InvalidParameterError(f"score {self.score!r} is not available for model {self.model!r}; it scores by "
                             f"{NEIGHBOR_SCORE!r} only")
        else:
            score = NEIGHBOR_SCORE
        members, histories = [], []
        n_members = self._resolved("n_estimators")
        for i in range(n_members):
            member, history = self._fit_member(spec, x_train, x_stop, device, seed=self.random_state + i,
                                               label=f"{self.model} {i + 1}/{n_members}",
                                               checkpoint=checkpoint, checkpoint_name=f"member{i}")
            members.append(member)
            histories.append(history)
        scorer = ModelScorer(members, score, device=device, n_samples=self.n_samples, seed=self.random_state)
        k = self._resolved("neighbors")
        if k > 0:
            scorer.add_neighbors(self._neighbors(x_train, k, device, rng), x_val)
        self.model_spec_, self.history_, self.score_type_, self.device_ = spec, histories, score, device
        self.input_shape_ = list(x_train.shape[1:])
        return scorer

    def _neighbors(self, x: np.ndarray, k: int, device: torch.device, rng: np.random.Generator
                   ) -> NearestNeighbors | MultiscaleNeighbors:
        """The neighbour term over model-input rows x: up to `max_reference` of them (sampled, kept
        in order) or their k-means prototypes."""
        if self.neighbor_reference == "prototypes":
            reference = kmeans_prototypes(x, self.n_prototypes, self.random_state)
        else:
            reference = x[np.sort(rng.permutation(len(x))[: self.max_reference])]
        neighbors = self._neighbor_module(tuple(x.shape[1:]), len(reference), k).to(device)
        neighbors.set_reference(torch.from_numpy(reference).to(device))
        return neighbors

    def _neighbor_module(self, input_shape: tuple[int, ...], n_reference: int, k: int
                         ) -> NearestNeighbors | MultiscaleNeighbors:
        return NearestNeighbors(input_shape, n_reference, k)

    def _epoch_samples(self) -> int | None:
        """Training samples an epoch draws (None: all; `SeriesDetector.epoch_windows`)."""
        return None

    def _set_fitted(self, scorer: ModelScorer, calibration: Calibration) -> None:
        """The fitted state that scoring reads (shared by fit and load)."""
        # what the state was built with: set_params after fit changes nothing until the next fit, and
        # save() writes these, so a saved model loads as the one in memory scores
        self.fitted_params_ = copy.deepcopy(self.get_params())
        self.scorer_, self.calibration_, self.threshold_ = scorer, calibration, calibration.threshold
        self.inference_ = InferencePath(self.schema_, self.preprocessor_, scorer, calibration)
        self.n_features_in_ = len(self.inference_.feature_names)

    def validate_params(self) -> None:
        """Raise InvalidParameterError for a parameter fit would refuse (fit calls it first; callers that
        fetch or read data before fitting call it before that)."""
        if self.model not in self._models:
            raise InvalidParameterError(f"unknown model {self.model!r}; choose one of {', '.join(self._models)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise InvalidParameterError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 0.0 < self.target_fpr < 1.0:
            raise InvalidParameterError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        if self.neighbor_reference not in ("rows", "prototypes"):
            raise InvalidParameterError(f"neighbor_reference must be 'rows' or 'prototypes', "
                                        f"got {self.neighbor_reference!r}")
        if isinstance(self.n_prototypes, bool) or not isinstance(self.n_prototypes, (int, np.integer)) \
                or self.n_prototypes < 1:
            raise InvalidParameterError(f"n_prototypes must be an integer >= 1, got {self.n_prototypes!r}")
        for name in ("epochs", "n_samples", "max_reference", "max_categories"):
            check_integer(name, getattr(self, name), 1)
        check_integer("patience", self.patience, 0)
        check_integer("random_state", self.random_state, 0, MAX_SEED)
        if self.ignore_columns is not None and (
                isinstance(self.ignore_columns, (str, bytes)) or not hasattr(self.ignore_columns, "__iter__")
                or not all(isinstance(c, str) for c in self.ignore_columns)):
            raise InvalidParameterError(f"ignore_columns must be a list of column names such as ['host_id'], got "
                                        f"{self.ignore_columns!r}")
        for name in ("batch_size", "latent_dim"):
            if getattr(self, name) is not None:
                check_integer(name, getattr(self, name), 1)
        if self.hidden_dims is not None:
            if isinstance(self.hidden_dims, (str, bytes)) or not hasattr(self.hidden_dims, "__iter__"):
                raise InvalidParameterError(f"hidden_dims must be a list of layer widths such as [64, 32] (or None "
                                            f"for sizes chosen from the number of features), got "
                                            f"{self.hidden_dims!r}")
            for width in self.hidden_dims:
                check_integer("each of hidden_dims", width, 1)
        check_number("learning_rate", self.learning_rate, positive=True)
        for name in ("weight_decay", "beta", "noise", "sparsity", "adversarial_weight", "latent_weight"):
            check_number(name, getattr(self, name))
        if not 0.0 < self.variance_kept <= 1.0:
            raise InvalidParameterError(f"variance_kept must be in (0, 1], got {self.variance_kept!r}")
        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise InvalidParameterError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")
        networks = self._models[self.model].spec is not None
        if networks and self._resolved("n_estimators") < 1:
            raise InvalidParameterError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if not networks and self.n_estimators not in (None, 0):
            raise InvalidParameterError(f"model {self.model!r} has no networks for n_estimators={self.n_estimators!r} "
                                        "to count; leave n_estimators unset (neighbors= sets its k)")
        if self._resolved("neighbors") < (0 if networks else 1):
            raise InvalidParameterError(f"neighbors must be >= {0 if networks else 1} for model {self.model!r}, "
                             f"got {self.neighbors}")

    def _resolved(self, name: str) -> int:
        """n_estimators / neighbors with None resolved to the chosen model's default."""
        value = getattr(self, name)
        return int(value) if value is not None else getattr(self._models[self.model], name)

    def _fit_member(self, spec: dict[str, Any], x_train: np.ndarray, x_val: np.ndarray, device: torch.device,
                    seed: int, label: str, checkpoint: Checkpointing | None = None,
                    checkpoint_name: str = "member") -> tuple[torch.nn.Module, History]:
        torch.manual_seed(seed)
        module = build_model(spec).to(device)
        t_train, t_val = torch.from_numpy(x_train).to(device), torch.from_numpy(x_val).to(device)
        module.prepare(t_train)
        if module.closed_form:
            module.fit_closed_form(t_train, variance_kept=self.variance_kept)
            return module.eval(), History()
        batch_size = self.batch_size or int(np.clip(len(x_train) // 20, 16, 256))
        config = TrainConfig(epochs=self.epochs, batch_size=batch_size, learning_rate=self.learning_rate,
                             weight_decay=self.weight_decay, patience=self.patience,
                             epoch_samples=self._epoch_samples())
        with epoch_progress(self.epochs, label, enabled=self.verbose) as on_epoch:
            history = train(module, t_train, t_val, config, seed=seed, on_epoch=on_epoch,
                            checkpoint=checkpoint, checkpoint_name=checkpoint_name)
        module.calibrate_score(t_val)
        return module, history

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        require_fitted(self, "inference_")

    def _inference(self, X: pd.DataFrame | np.ndarray, **options: Any) -> ScoreResult:
        self._check_fitted()
        return self.inference_.score(X, **options)

    def decision_function(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Anomaly score per row: higher is more anomalous."""
        return self._inference(X).scores

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """1 for rows scoring above the calibrated threshold, else 0."""
        return self._inference(X).is_anomaly.astype(np.int64)

    def p_values(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Conformal p-value per row: the share of held-out normals scoring at least as high."""
        return self._inference(X).p_values

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(N, 2) array of [P(normal), P(anomaly)], with P(anomaly) = 1 - conformal p-value."""
        outlier = 1.0 - self.p_values(X)
        return np.column_stack([1.0 - outlier, outlier])

    @property
    def members_(self) -> list[torch.nn.Module]:
        """The fitted networks (an ensemble of n_estimators)."""
        return self.scorer_.members

    @property
    def neighbors_(self) -> NearestNeighbors | MultiscaleNeighbors | None:
        """The nearest-neighbour term's reference rows, if the model has one."""
        return self.scorer_.neighbors

    @property
    def score_name_(self) -> str:
        """The score as people read it (registry tags, GET /v1/model): the networks' score type, and
        '+knn' when the neighbour distance is added to it (the default, hybrid)."""
        return f"{self.score_type_}+knn" if self.members_ and self.neighbors_ is not None else self.score_type_

    @property
    def term_scales_(self) -> dict[str, list[float]]:
        return self.scorer_.term_scales

    @property
    def feature_names_(self) -> list[str]:
        self._check_fitted()
        return self.inference_.feature_names

    def explain(self, X: pd.DataFrame | np.ndarray, top_k: int | None = 3) -> pd.DataFrame:
        """Per-row feature contributions (shares of the misfit summing to 1).

        top_k=None returns one column per input feature; otherwise `feature_i`/`contribution_i`
        for the k largest, largest first.
        """
        if top_k is None:
            result = self._inference(X, shares=True)
            return pd.DataFrame(result.shares, columns=self.feature_names_, index=result.index)
        check_integer("top_k", top_k, 1)
        frame = self._inference(X, top_k=int(top_k)).frame(top_k=int(top_k))
        return frame[[c for c in frame.columns if c.startswith(("feature_", "contribution_"))]]

    def score_frame(self, X: pd.DataFrame | np.ndarray, top_k: int = 3) -> pd.DataFrame:
        """score, p_value, is_anomaly, severity, the top_k contributing features (none for 0) and notes per row."""
        check_integer("top_k", top_k, 0)
        return self._inference(X, top_k=int(top_k)).frame(top_k=int(top_k))

    # ------------------------------------------------------------------ recalibrating
    def recalibrate(self, X: pd.DataFrame | np.ndarray, *, target_fpr: float | None = None) -> "Detector":
        """Calibrate the threshold, p-values and severity again on normal data X that the model has
        not trained on, keeping the model: recent known-good data after the system drifted, or more
        normal data than the fit held out. `target_fpr`: a new target (default: the current one).

        Rows the model trained on score lower than new normal rows, and a threshold set on them
        flags too much: a warning says so when X scores that way against the current calibration."""
        self._check_fitted()
        fpr = self.calibration_.target_fpr if target_fpr is None else target_fpr
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float, np.integer, np.floating)) or not 0.0 < fpr < 1.0:
            raise InvalidParameterError(f"target_fpr must be in (0, 1), got {fpr!r}")
        scores, result, kept = self._normal_scores(X)
        if len(scores) < MIN_TRAINING_ROWS:
            raise DataError(f"recalibrating needs at least {MIN_TRAINING_ROWS} normal rows, got {len(scores)}; "
                            "send more recent normal data")
        # neighbouring scores of a series model share all but one step of their windows: fewer independent ones
        rows_per_score = self._rows_per_independent_score()
        n_new = max(len(scores) / rows_per_score, 1.0)
        n_old = max(len(self.calibration_.reference_scores) / rows_per_score, 1.0)
        spread = np.sqrt(1 / (12 * n_new) + 1 / (12 * n_old))
        seen = self._training_period_note(X, kept)
        if seen is not None:
            warnings.warn(seen, UserWarning, stacklevel=2)
        elif float(np.mean(self.calibration_.p_values(scores))) > 0.5 + SEEN_ROWS_SPREADS * spread:
            warnings.warn("the recalibration rows score lower than the held-out normal rows the model was calibrated "
                          "on, as rows it trained on do: a threshold set on them flags too much new normal data; "
                          "recalibrate on normal data from after the training period", UserWarning, stacklevel=2)
        calibration = Calibration.fit(scores, float(fpr))
        self.target_fpr = self.fitted_params_["target_fpr"] = float(fpr)
        self.calibration_ = self.inference_.calibration = calibration
        self.threshold_ = calibration.threshold
        self._recalibrated(result, kept)
        self.training_metadata_.setdefault("recalibrations", []).append(
            {"rows": int(len(scores)), "target_fpr": float(fpr)})
        return self

    def _rows_per_independent_score(self) -> int:
        return 1

    def _training_period_note(self, X: pd.DataFrame | np.ndarray, kept: np.ndarray) -> str | None:
        """A warning when the timestamps of the rows of X `kept` to calibrate lie in the training period
        (series models); rows alone carry no time, so for them the scores tell (`recalibrate`)."""
        return None

    def _normal_scores(self, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, ScoreResult, np.ndarray]:
        """(the scores that calibrate, the scoring result, which of its rows they are)."""
        result = self._inference(X)
        return result.scores, result, np.arange(len(result.scores))

    def _recalibrated(self, result: ScoreResult, kept: np.ndarray) -> None:
        """What else follows the new calibration (a series model's alert statistics)."""

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the model directory: JSON config/schema/preprocessing/calibration + safetensors weights."""
        self._check_fitted()
        return persistence.save_detector(self, Path(path))

    @classmethod
    def load(cls, path_or_uri: str | Path) -> "Detector":
        """Load a saved model from a directory, or from MLflow by `models:/NAME@ALIAS`, `models:/NAME/V`,
        `runs:/RUN_ID/PATH`. Never unpickles; every file is checked against the manifest's hashes."""
        return persistence.load_detector(cls, path_or_uri)


def _take(data: pd.DataFrame | np.ndarray, idx: np.ndarray) -> pd.DataFrame | np.ndarray:
    return data.iloc[idx] if isinstance(data, pd.DataFrame) else data[idx]


def without_ignored(X: Any, ignore_columns: Sequence[str] | None) -> Any:
    """X without the columns a model is told to ignore (those it has; an array has none)."""
    if not isinstance(X, pd.DataFrame) or not ignore_columns:
        return X
    return X.drop(columns=[c for c in ignore_columns if c in X.columns])
