"""Latent-space tools for understanding a model: encode, decode, interpolate, attribute vectors, maps.

Work on a fitted `Detector` with model "vae" or "aae" (its first member) and on a `Generator`
with model "cvae". Inputs go through the model's own schema and preprocessing; outputs come back
as DataFrames with the input columns (tables) or pixel arrays in the input range (images: shaped
like a Generator's training input; from a Detector (N, H, W) when single-channel, else (N, C, H, W)).

Codes are posterior means (VAE/CVAE) or the encoder output (AAE). A CVAE's code carries what the
condition does not: decoding one code under different conditions keeps the "style" and changes
the context, which is the classic demonstration that the condition was used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from anomaly_ae.exceptions import DataError
from anomaly_ae.inference import model_input


class LatentSpace:
    def __init__(self, model: Any) -> None:
        from anomaly_ae.augment.generator import Generator
        from anomaly_ae.detector import Detector

        if isinstance(model, Generator):
            model._check_fitted()
            if model.model != "cvae":
                raise DataError(f"latent tools need an encoder; a {model.model!r} generator has none (use cvae)")
            self.kind, self.module = "cvae", model.module_
        elif isinstance(model, Detector):
            model._check_fitted()
            if model.model not in ("vae", "aae"):
                raise DataError(f"latent tools need a VAE or AAE detector, got model={model.model!r}")
            self.kind, self.module = model.model, model.members_[0]
        else:
            raise DataError(f"expected a fitted Detector (vae/aae) or Generator (cvae), got {type(model).__name__}")
        self.model = model
        self.device = model.device_

    @property
    def latent_dim(self) -> int:
        spec = self.model.model_spec_
        return int(spec["latent_dim"])

    @property
    def conditional(self) -> bool:
        return self.kind == "cvae" and bool(self.model.conditions_.names)

    # ------------------------------------------------------------------ the input side
    def _model_input(self, X: Any) -> tuple[np.ndarray, pd.DataFrame | np.ndarray]:
        m = self.model
        checked, _ = m.schema_.check(X)
        if self.kind == "cvae":
            if m.schema_.image is not None:
                s = m.schema_.image
                return m.preprocessor_.transform(checked).reshape(len(checked), s.channels, s.height, s.width), checked
            return m.preprocessor_.transform(checked[m.output_schema_.names]), checked
        return model_input(m.preprocessor_, m.schema_, checked), checked

    def _labels(self, X: Any, checked: Any, condition: Any, n: int) -> np.ndarray:
        """Condition labels (n, n_cond) for a CVAE: from `condition`, else from the rows themselves."""
        conditions = self.model.conditions_
        if not conditions.names:
            return np.empty((n, 0), dtype=object)
        if condition is None:
            if isinstance(checked, pd.DataFrame):
                return conditions.labels(checked.reset_index(drop=True))
            raise DataError(f"pass condition= (the {conditions.names[0]} of each image, or one value for all)")
        if isinstance(condition, Mapping):
            fixed = conditions.resolve(condition)
            if set(fixed) != set(conditions.names):
                raise DataError(f"give a value for every condition column: {conditions.names}")
            return np.array([[fixed[c] for c in conditions.names]] * n, dtype=object)
        values = np.asarray(condition, dtype=object)
        if values.ndim == 0:
            values = np.full(n, values.item(), dtype=object)
        frame = pd.DataFrame({conditions.names[0]: values})
        return conditions.labels(frame)

    def _cond_tensor(self, labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.model.conditions_.encode_labels(labels)).to(self.device)

    # ------------------------------------------------------------------ encode / decode
    @torch.no_grad()
    def _encode_array(self, x: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        if self.kind == "cvae":
            code, _ = self.module.encode(t, self._cond_tensor(labels))
        elif self.kind == "vae":
            code, _ = self.module.encode(t)
        else:
            code = self.module.encoder(t)
        return code.double().cpu().numpy()

    @torch.no_grad()
    def _decode_array(self, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(self.device)
        if self.kind == "cvae":
            out = self.module.mean_output(self.module.decode(t, self._cond_tensor(labels)))
        elif self.kind == "vae":
            out = self.module.decode(t)
        else:
            out = self.module.decoder(t)
        return out.double().cpu().numpy()

    def _to_data(self, rows: np.ndarray, labels: np.ndarray | None) -> pd.DataFrame | np.ndarray:
        m = self.model
        if self.kind == "cvae":
            return m._to_data(rows.reshape(len(rows), *m.model_spec_["input_shape"]), labels)
        if m.schema_.image is not None:
            images = m.preprocessor_.inverse_transform(rows.reshape(len(rows), -1)).reshape(rows.shape)
            return images[:, 0] if images.shape[1] == 1 else images
        return m.preprocessor_.inverse_transform(rows)

    def encode(self, X: Any, condition: Any = None) -> np.ndarray:
        """Codes (N, latent_dim) of the rows (images) X; a CVAE reads the condition from X's columns,
        or from `condition` (a value, a {column: value} dict, or one value per row)."""
        x, checked = self._model_input(X)
        labels = self._labels(X, checked, condition, len(x)) if self.kind == "cvae" else None
        return self._encode_array(x, labels)

    def decode(self, Z: np.ndarray, condition: Any = None) -> pd.DataFrame | np.ndarray:
        """Rows (images) for codes Z (N, latent_dim): the decoder's expected output, in input units."""
        z = np.atleast_2d(np.asarray(Z, dtype=np.float64))
        if z.shape[1] != self.latent_dim:
            raise DataError(f"codes must have {self.latent_dim} columns (the latent size), got {z.shape[1]}")
        labels = None
        if self.kind == "cvae":
            if self.conditional and condition is None:
                raise DataError(f"decoding with a CVAE needs condition= (values for {self.model.conditions_.names})")
            labels = self._labels(None, None, condition, len(z))
        return self._to_data(self._decode_array(z, labels), labels)

    def reconstruct(self, X: Any, condition: Any = None) -> pd.DataFrame | np.ndarray:
        """decode(encode(X)) under X's own condition (or `condition`, to move rows to another context)."""
        x, checked = self._model_input(X)
        labels = self._labels(X, checked, None, len(x)) if self.kind == "cvae" else None
        target = labels if condition is None or self.kind != "cvae" else self._labels(X, checked, condition, len(x))
        return self._to_data(self._decode_array(self._encode_array(x, labels), target), target)

    # ------------------------------------------------------------------ the classics
    def interpolate(self, a: Any, b: Any, steps: int = 8, condition: Any = None,
                    spherical: bool = False) -> pd.DataFrame | np.ndarray:
        """`steps` rows decoded along the path between the codes of rows a and b (endpoints included).
        spherical=True follows the great circle (slerp), which stays where Gaussian prior mass is."""
        if steps < 2:
            raise DataError(f"steps must be >= 2 to include both endpoints, got {steps}")
        a, b = _one(a), _one(b)
        if self.conditional and condition is None:
            _, checked = self._model_input(a)
            if not isinstance(checked, pd.DataFrame):
                raise DataError("pass condition= (e.g. the digit) to interpolate images with a CVAE")
            condition = dict(zip(self.model.conditions_.names, self._labels(None, checked, None, 1)[0]))
        # Tables carry their own context for encoding; images take `condition`.
        image = self.model.schema_.image is not None
        za = self.encode(a, condition if image else None)
        zb = self.encode(b, condition if image else None)
        t = np.linspace(0.0, 1.0, steps)[:, None]
        if spherical:
            za_, zb_ = za[0], zb[0]
            cos = float(np.clip(za_ @ zb_ / (np.linalg.norm(za_) * np.linalg.norm(zb_) + 1e-12), -1, 1))
            omega = np.arccos(cos)
            if omega < 1e-6:
                z = (1 - t) * za + t * zb
            else:
                z = (np.sin((1 - t) * omega) * za + np.sin(t * omega) * zb) / np.sin(omega)
        else:
            z = (1 - t) * za + t * zb
        return self.decode(z, condition)

    def attribute_vector(self, X_with: Any, X_without: Any) -> np.ndarray:
        """Mean code of the rows that have an attribute minus the mean code of rows that lack it."""
        return self.encode(X_with).mean(0) - self.encode(X_without).mean(0)

    def apply_attribute(self, X: Any, vector: np.ndarray, factor: float = 1.0,
                        condition: Any = None) -> pd.DataFrame | np.ndarray:
        """Decode each row's code plus factor * vector (factor < 0 removes the attribute)."""
        x, checked = self._model_input(X)
        labels = self._labels(X, checked, condition, len(x)) if self.kind == "cvae" else None
        z = self._encode_array(x, labels) + factor * np.asarray(vector, dtype=np.float64)[None, :]
        return self._to_data(self._decode_array(z, labels), labels)

    def map_2d(self, X: Any) -> tuple[np.ndarray, str]:
        """2-D coordinates of the codes: the code itself when 2-D, else its first two principal components."""
        codes = self.encode(X)
        if codes.shape[1] <= 2:
            return np.pad(codes, ((0, 0), (0, 2 - codes.shape[1]))), "z"
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=0).fit_transform(codes), "PC of z"

    def plot_map(self, X: Any, color: str | np.ndarray | None = None, path: str | Path | None = None,
                 title: str | None = None, ax: Any = None) -> Any:
        """Scatter of the 2-D latent map coloured by a column of X, by "score" (a Detector's anomaly
        score), or by an array of values (e.g. digit labels). Saves a PNG when `path` is given."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xy, axis = self.map_2d(X)
        values, label = self._colour_values(X, color)
        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(6, 5))
        if values is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
        elif values.dtype.kind in "fiu" and len(np.unique(values)) > 12:
            points = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=6, alpha=0.7, cmap="viridis")
            ax.figure.colorbar(points, ax=ax, label=label)
        else:
            for i, value in enumerate(sorted(set(values.tolist()), key=str)):
                sel = values == value
                ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, label=str(value), color=f"C{i % 10}")
            ax.legend(title=label, markerscale=3, fontsize="small")
        ax.set_xlabel(f"{axis} 1")
        ax.set_ylabel(f"{axis} 2")
        ax.set_title(title or f"latent map of the {self.kind}")
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=100)
            if fig is not None:
                plt.close(fig)
        return ax.figure

    def _colour_values(self, X: Any, color: Any) -> tuple[np.ndarray | None, str]:
        if color is None:
            return None, ""
        if isinstance(color, str):
            if color == "score":
                if self.kind == "cvae":
                    raise DataError("colour by 'score' needs a Detector; a Generator does not score rows")
                return np.asarray(self.model.decision_function(X)), "anomaly score"
            if isinstance(X, pd.DataFrame) and color in X.columns:
                values = X[color].to_numpy()
                return (values.astype(np.float64) if values.dtype.kind in "fiu" else values.astype(str)), color
            raise DataError(f"colour '{color}' is neither 'score' nor a column of the data")
        values = np.asarray(color)
        if len(values) != len(X):
            raise DataError(f"color has {len(values)} values for {len(X)} rows")
        return values, "value"


def _one(row: Any) -> Any:
    """A single row (DataFrame row, Series or image) as a batch of one."""
    if isinstance(row, pd.Series):
        return row.to_frame().T.infer_objects()
    if isinstance(row, pd.DataFrame):
        if len(row) != 1:
            raise DataError(f"expected one row, got {len(row)}")
        return row
    arr = np.asarray(row)
    return arr[None] if arr.ndim in (1, 2) else arr


# Function forms of the same tools, for one-off use.
def encode(model: Any, X: Any, condition: Any = None) -> np.ndarray:
    return LatentSpace(model).encode(X, condition)


def decode(model: Any, Z: np.ndarray, condition: Any = None) -> pd.DataFrame | np.ndarray:
    return LatentSpace(model).decode(Z, condition)


def interpolate(model: Any, a: Any, b: Any, steps: int = 8, **kwargs: Any) -> pd.DataFrame | np.ndarray:
    return LatentSpace(model).interpolate(a, b, steps, **kwargs)


def attribute_vector(model: Any, X_with: Any, X_without: Any) -> np.ndarray:
    return LatentSpace(model).attribute_vector(X_with, X_without)


def plot_latent_map(model: Any, X: Any, color: Any = None, path: str | Path | None = None, **kwargs: Any) -> Any:
    return LatentSpace(model).plot_map(X, color, path, **kwargs)
