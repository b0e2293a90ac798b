"""Detector: the estimator users fit on normal data and score new samples with.

scikit-learn's contract (parameters stored untouched, `fit` returns self, learned state ends in
`_`) with PyOD's vocabulary for outputs (`decision_function`, `threshold_`, `predict_proba`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from sklearn.exceptions import NotFittedError as SklearnNotFitted

from anomaly_ae.calibration import Calibration
from anomaly_ae.data.preprocess import Preprocessor
from anomaly_ae.data.schema import Schema
from anomaly_ae.exceptions import DataError, NotFittedError, ScoringError
from anomaly_ae.models import build_model
from anomaly_ae.models.layers import default_hidden_dims, default_latent_dim
from anomaly_ae.models.neighbors import NearestNeighbors
from anomaly_ae.progress import epoch_progress
from anomaly_ae.scoring import check_score_type, default_score, latent_noise, score_array
from anomaly_ae.training import History, TrainConfig, train

MODELS = ("hybrid", "ae", "dae", "sae", "vae", "aae", "pca")
# The recommended default, chosen on the ADBench benchmark (benchmarks/results/adbench.md):
# reconstruction error of a small autoencoder ensemble plus nearest-neighbour density.
HYBRID_ESTIMATORS, HYBRID_NEIGHBORS = 3, 5
MIN_TRAINING_ROWS = 10


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run a block with `n_threads` intra-op threads, then restore the process setting."""
    if n_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Detector(BaseEstimator):
    """Anomaly detector trained on normal samples only.

    Parameters
    ----------
    model : "hybrid" (the default) | "ae" | "dae" | "sae" | "vae" | "aae" | "pca". "hybrid" is an
        ensemble of 3 autoencoders plus the 5-nearest-neighbour density term: reconstruction
        error catches samples off the normal manifold, neighbour distance the rare ones on it.
    latent_dim, hidden_dims : network size; None picks sizes from the number of features.
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
    neighbors : k > 0 adds density evidence: the mean distance to the k nearest training rows
        (at most `max_reference` of them, sampled), standardised on held-out normals and added to
        the standardised model score. 0 scores by the model alone; None: 5 for "hybrid", else 0.
    device : "auto" (CUDA when available), "cpu" or "cuda[:N]".
    n_threads : torch CPU threads while fitting and scoring (default 1: networks this small run
        fastest on one thread, and extra threads spin against other processes for the same cores).
    random_state : seed for the split, initialisation, training and sampled scores.
    verbose : show a progress bar while training.
    """

    def __init__(self, model: str = "hybrid", *, latent_dim: int | None = None,
                 hidden_dims: Sequence[int] | None = None, score: str | None = None, n_estimators: int | None = None,
                 epochs: int = 200, batch_size: int | None = None, learning_rate: float = 1e-3,
                 weight_decay: float = 0.0, patience: int = 20, validation_fraction: float = 0.2,
                 target_fpr: float = 0.01, beta: float = 1.0, corruption: str = "gaussian", noise: float = 0.2,
                 sparsity: float = 1e-2, adversarial_weight: float = 0.1, latent_weight: float = 0.1,
                 n_samples: int = 16, variance_kept: float = 0.9, neighbors: int | None = None,
                 max_reference: int = 10_000, max_categories: int = 50,
                 device: str = "auto", n_threads: int | None = 1, random_state: int = 0,
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
        self.neighbors = neighbors
        self.max_reference = max_reference
        self.max_categories = max_categories
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def fit(self, X: pd.DataFrame | np.ndarray, y: Any = None, *,
            synthetic: pd.DataFrame | np.ndarray | None = None) -> "Detector":
        """Learn normal behaviour from X (normal samples only; y is ignored).

        `synthetic`: extra normal rows (e.g. from a `Generator`). They are split like the real
        rows, for training and for the held-out loss that stops training early (so a context
        they add is learned, not ignored); the threshold is calibrated on held-out *real* rows
        only, so its false-positive rate is a real one.
        """
        self._validate_params()
        schema = Schema.infer(X)
        checked, _ = schema.check(X)
        extra = None
        if synthetic is not None:
            extra, _ = schema.check(synthetic)
        n = len(checked)
        if n < MIN_TRAINING_ROWS:
            raise DataError(f"need at least {MIN_TRAINING_ROWS} normal rows to train and calibrate, got {n}; "
                            "collect more normal data")
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n)
        n_val = max(2, int(round(n * self.validation_fraction)))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        pre = Preprocessor(self.max_categories).fit(_take(checked, train_idx), schema)
        x = self._to_model_input(pre.transform(checked), schema)
        x_train, x_val = x[train_idx], x[val_idx]
        x_stop = x_val  # held-out rows for early stopping; x_val alone calibrates
        if extra is not None and len(extra):
            x_extra = self._to_model_input(pre.transform(extra), schema)
            # its own generator, so the real split is the same with or without synthetic rows
            extra_order = np.random.default_rng([self.random_state, 1]).permutation(len(x_extra))
            n_extra_val = int(round(len(x_extra) * self.validation_fraction))
            x_train = np.concatenate([x_train, x_extra[extra_order[n_extra_val:]]])
            x_stop = np.concatenate([x_val, x_extra[extra_order[:n_extra_val]]])

        device = resolve_device(self.device)
        spec = self._model_spec(x.shape[1:], n_train=len(x_train))
        probe = build_model(spec)  # cheap: refuse a bad score type before any training
        score = self.score or default_score(probe)
        check_score_type(probe, score)
        with torch_threads(self.n_threads):
            members, histories = [], []
            n_members = self._resolved("n_estimators")
            for i in range(n_members):
                member, history = self._fit_member(spec, x_train, x_stop, device, seed=self.random_state + i,
                                                   label=f"{self.model} {i + 1}/{n_members}")
                members.append(member)
                histories.append(history)
            self.schema_, self.preprocessor_, self.model_spec_ = schema, pre, spec
            self.members_, self.history_, self.score_type_ = members, histories, score
            self.device_ = device
            self.neighbors_, self.term_scales_ = None, {}
            self._fit_neighbors(x_train, x_val, rng)
            val_scores, _ = self._score_model_input(x_val)
        self.calibration_ = Calibration.fit(val_scores, self.target_fpr)
        # Free-form JSON facts about how this model came to be (e.g. augmentation provenance);
        # saved with the model, never used for scoring.
        self.training_metadata_: dict[str, Any] = {}
        self.threshold_ = self.calibration_.threshold
        self.n_features_in_ = schema.n_features if schema.image is None else int(np.prod(x.shape[1:]))
        return self

    def _validate_params(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not 0.0 < self.target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {self.target_fpr}")
        if self._resolved("n_estimators") < 1:
            raise ValueError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if self._resolved("neighbors") < 0:
            raise ValueError(f"neighbors must be >= 0, got {self.neighbors}")

    def _resolved(self, name: str) -> int:
        """n_estimators / neighbors with None resolved for the chosen model."""
        value = getattr(self, name)
        if value is not None:
            return int(value)
        if self.model == "hybrid":
            return HYBRID_ESTIMATORS if name == "n_estimators" else HYBRID_NEIGHBORS
        return 1 if name == "n_estimators" else 0

    @staticmethod
    def _to_model_input(x: np.ndarray, schema: Schema) -> np.ndarray:
        if schema.image is not None:
            s = schema.image
            return x.reshape(len(x), s.channels, s.height, s.width)
        return x

    def _model_spec(self, input_shape: tuple[int, ...], n_train: int) -> dict[str, Any]:
        n_inputs = int(np.prod(input_shape))
        if self.model == "pca":
            return {"family": "pca", "input_shape": list(input_shape), "n_components": min(n_inputs, n_train)}
        latent = self.latent_dim or default_latent_dim(n_inputs)
        hidden = list(self.hidden_dims) if self.hidden_dims is not None else default_hidden_dims(n_inputs, latent)
        spec: dict[str, Any] = {"input_shape": list(input_shape), "latent_dim": int(latent),
                                "hidden_dims": [int(h) for h in hidden]}
        if self.model == "vae":
            return {"family": "vae", **spec, "beta": self.beta}
        if self.model == "aae":
            return {"family": "aae", **spec, "adversarial_weight": self.adversarial_weight,
                    "latent_weight": self.latent_weight}
        # "hybrid" members are plain undercomplete autoencoders
        corruption = self.corruption if self.model == "dae" else None
        l1 = self.sparsity if self.model == "sae" else 0.0
        return {"family": "autoencoder", **spec, "corruption": corruption, "noise": self.noise, "l1": l1}

    def _fit_member(self, spec: dict[str, Any], x_train: np.ndarray, x_val: np.ndarray, device: torch.device,
                    seed: int, label: str) -> tuple[torch.nn.Module, History]:
        torch.manual_seed(seed)
        module = build_model(spec).to(device)
        t_train, t_val = torch.from_numpy(x_train).to(device), torch.from_numpy(x_val).to(device)
        if spec["family"] == "pca":
            module.fit_closed_form(t_train, self.variance_kept)
            return module.eval(), History()
        batch_size = self.batch_size or int(np.clip(len(x_train) // 20, 16, 256))
        config = TrainConfig(epochs=self.epochs, batch_size=batch_size, learning_rate=self.learning_rate,
                             weight_decay=self.weight_decay, patience=self.patience)
        with epoch_progress(self.epochs, label, enabled=self.verbose) as on_epoch:
            history = train(module, t_train, t_val, config, seed=seed, on_epoch=on_epoch)
        if hasattr(module, "calibrate_score"):
            module.calibrate_score(t_val)
        return module, history

    def _fit_neighbors(self, x_train: np.ndarray, x_val: np.ndarray, rng: np.random.Generator) -> None:
        """Reference rows for the density term, and each term's scale on held-out normals."""
        k = self._resolved("neighbors")
        if k <= 0:
            return
        keep = np.sort(rng.permutation(len(x_train))[: self.max_reference])
        reference = torch.from_numpy(x_train[keep]).to(self.device_)
        module = NearestNeighbors(len(keep), int(np.prod(x_train.shape[1:])), k).to(self.device_)
        module.set_reference(reference)
        model_val, _ = self._member_scores(x_val)
        knn_val, _ = module.distances(torch.from_numpy(x_val).to(self.device_))
        self.neighbors_ = module
        self.term_scales_ = {"model": _location_spread(model_val),
                             "neighbors": _location_spread(knn_val.double().cpu().numpy())}

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self) -> None:
        try:
            check_is_fitted(self, "calibration_")
        except SklearnNotFitted:
            raise NotFittedError("this Detector is not fitted yet; call fit(X) with normal data, "
                                 "or Detector.load(path) a saved one") from None

    def _score_model_input(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score and per-feature contributions for preprocessed input."""
        model_scores, model_contrib = self._member_scores(x)
        if self.neighbors_ is None:
            return model_scores, model_contrib
        distance, gaps = self.neighbors_.distances(torch.from_numpy(x).to(self.device_))
        distance, gaps = distance.double().cpu().numpy(), gaps.double().cpu().numpy()
        z_model = _standardize(model_scores, self.term_scales_["model"])
        z_knn = _standardize(distance, self.term_scales_["neighbors"])
        # Explanations blend each term's feature shares by how far that term is above normal.
        w_model, w_knn = np.maximum(z_model, 0.0)[:, None], np.maximum(z_knn, 0.0)[:, None]
        both_zero = (w_model + w_knn) == 0
        w_model, w_knn = np.where(both_zero, 1.0, w_model), np.where(both_zero, 1.0, w_knn)
        contributions = w_model * _row_normalize(model_contrib) + w_knn * _row_normalize(gaps)
        return z_model + z_knn, contributions

    def _member_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        totals, contributions = 0.0, 0.0
        for member in self.members_:
            eps = latent_noise(member, self.n_samples, self.random_state, self.device_)
            total, contrib = score_array(member, x, self.score_type_, self.device_, eps)
            totals, contributions = totals + total, contributions + contrib
        return totals / len(self.members_), contributions / len(self.members_)

    def _score(self, X: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, np.ndarray, pd.DataFrame | np.ndarray]:
        self._check_fitted()
        checked, _ = self.schema_.check(X)
        x = self._to_model_input(self.preprocessor_.transform(checked), self.schema_)
        scores, contributions = self.score_preprocessed(x)
        return scores, contributions, checked

    def score_preprocessed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and per-feature contributions of input already checked and preprocessed (the
        service's JSON fast path enters here); raises ScoringError rather than return a non-finite score."""
        self._check_fitted()
        with torch_threads(self.n_threads):
            scores, contributions = self._score_model_input(x)
        bad = ~np.isfinite(scores)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ScoringError(f"the model produced non-finite scores for rows {rows}; their values are far "
                               "outside anything seen in training; check them for unit or sensor errors")
        return scores, contributions

    def decision_function(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Anomaly score per row: higher is more anomalous."""
        return self._score(X)[0]

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """1 for rows scoring above the calibrated threshold, else 0."""
        return self.calibration_.predict(self.decision_function(X))

    def p_values(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Conformal p-value per row: the share of held-out normals scoring at least as high."""
        return self.calibration_.p_values(self.decision_function(X))

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """(N, 2) array of [P(normal), P(anomaly)], with P(anomaly) = 1 - conformal p-value."""
        outlier = 1.0 - self.p_values(X)
        return np.column_stack([1.0 - outlier, outlier])

    # ------------------------------------------------------------------ explanations
    @property
    def feature_names_(self) -> list[str]:
        self._check_fitted()
        if self.schema_.image is not None:
            s = self.schema_.image
            return [f"pixel[{c},{h},{w}]" for c in range(s.channels) for h in range(s.height) for w in range(s.width)]
        return self.schema_.names

    def _shares(self, contributions: np.ndarray) -> np.ndarray:
        """Each input column's share of a row's misfit; a categorical column sums over its encoding."""
        contributions = np.maximum(contributions, 0.0)
        if self.schema_.image is None:
            groups = self.preprocessor_.groups
            contributions = np.column_stack([contributions[:, groups[n]].sum(1) for n in self.schema_.names])
        total = contributions.sum(1, keepdims=True)
        return np.divide(contributions, total, out=np.zeros_like(contributions), where=total > 0)

    def explain(self, X: pd.DataFrame | np.ndarray, top_k: int | None = 3) -> pd.DataFrame:
        """Per-row feature contributions (shares of the misfit summing to 1).

        top_k=None returns one column per input feature; otherwise `feature_i`/`contribution_i`
        for the k largest, largest first.
        """
        _, contributions, checked = self._score(X)
        return self._explain_frame(self._shares(contributions), _index(checked), top_k)

    def _explain_frame(self, shares: np.ndarray, index: pd.Index, top_k: int | None) -> pd.DataFrame:
        names = np.asarray(self.feature_names_, dtype=object)
        if top_k is None:
            return pd.DataFrame(shares, columns=list(names), index=index)
        k = max(1, min(int(top_k), shares.shape[1]))
        order = np.argsort(-shares, axis=1, kind="stable")[:, :k]
        out = {}
        for i in range(k):
            out[f"feature_{i + 1}"] = names[order[:, i]]
            out[f"contribution_{i + 1}"] = shares[np.arange(len(shares)), order[:, i]]
        return pd.DataFrame(out, index=index)

    def score_frame(self, X: pd.DataFrame | np.ndarray, top_k: int = 3) -> pd.DataFrame:
        """score, p_value, is_anomaly, severity, the top_k contributing features and notes per row."""
        scores, contributions, checked = self._score(X)
        cal = self.calibration_
        index = _index(checked)
        frame = pd.DataFrame({
            "score": scores,
            "p_value": cal.p_values(scores),
            "is_anomaly": cal.predict(scores).astype(bool),
            "severity": cal.severity(scores),
        }, index=index)
        if top_k > 0:
            frame = frame.join(self._explain_frame(self._shares(contributions), index, top_k))
        frame["notes"] = self._notes(checked)
        return frame

    def _notes(self, checked: pd.DataFrame | np.ndarray) -> list[str]:
        """Per-row remarks that are not errors: categories never seen in training, imputed values."""
        notes = [[] for _ in range(len(checked))]
        if isinstance(checked, pd.DataFrame):
            for name, buckets in self.preprocessor_.categorical.items():
                values = checked[name].to_numpy(dtype=object)
                known = set(buckets)
                for i in np.flatnonzero([v is not None and v not in known for v in values]):
                    notes[i].append(f"unseen category {values[i]!r} in '{name}'")
            for name in self.preprocessor_.numeric:
                for i in np.flatnonzero(checked[name].isna().to_numpy()):
                    notes[i].append(f"missing '{name}' imputed")
        return ["; ".join(n) for n in notes]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the model directory: JSON config/schema/preprocessing/calibration + safetensors weights."""
        from anomaly_ae.persistence import save_detector

        self._check_fitted()
        return save_detector(self, Path(path))

    @classmethod
    def load(cls, path_or_uri: str | Path) -> "Detector":
        """Load a saved model from a directory, or from MLflow by `models:/NAME@ALIAS`, `models:/NAME/V`,
        `runs:/RUN_ID/PATH`. Never unpickles; every file is checked against the manifest's hashes."""
        from anomaly_ae.persistence import load_detector

        return load_detector(cls, path_or_uri)


def _location_spread(values: np.ndarray) -> list[float]:
    """Median and the 90th-percentile distance above it: a robust scale for one score term."""
    median = float(np.median(values))
    return [median, max(float(np.quantile(values, 0.9)) - median, 1e-12)]


def _standardize(values: np.ndarray, location_spread: list[float]) -> np.ndarray:
    return (values - location_spread[0]) / location_spread[1]


def _row_normalize(values: np.ndarray) -> np.ndarray:
    values = np.maximum(values, 0.0)
    total = values.sum(1, keepdims=True)
    return np.divide(values, total, out=np.zeros_like(values), where=total > 0)


def _take(data: pd.DataFrame | np.ndarray, idx: np.ndarray) -> pd.DataFrame | np.ndarray:
    return data.iloc[idx] if isinstance(data, pd.DataFrame) else data[idx]


def _index(checked: pd.DataFrame | np.ndarray) -> pd.Index:
    return checked.index if isinstance(checked, pd.DataFrame) else pd.RangeIndex(len(checked))
