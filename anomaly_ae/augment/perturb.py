"""Synthetic anomalies for evaluating a detector when no labelled anomalies exist.

Each kind perturbs normal rows in one documented way, so a detection rate per kind says which
kinds of trouble a detector would catch. They are proxies, not the real thing: a detector that
catches all of them may still miss the anomalies your system actually has.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from anomaly_ae.data.schema import Schema
from anomaly_ae.exceptions import DataError

KINDS: dict[str, str] = {
    "out_of_range": "one numeric column (one pixel patch) set 2-5 standard deviations beyond the "
                    "training minimum or maximum",
    "broken_correlation": "one of two strongly correlated columns (|r| >= 0.5) replaced by its value at the "
                          "mirrored quantile, so each value is plausible alone but the pair is not; images: "
                          "the top half of one image over the bottom half of another",
    "swapped_category": "one categorical column changed to a different category seen in training",
    "low_density_latent": "decoded from a code in the prior's far tail (radius beyond its 99.9% quantile) "
                          "of a VAE/AAE/CVAE trained on the normal rows",
}
MIN_CORRELATION = 0.5


def make_anomalies(normal: pd.DataFrame | np.ndarray, kind: str, n: int, rng: np.random.Generator,
                   schema: Schema | None = None, latent_model: Any = None) -> pd.DataFrame | np.ndarray | None:
    """n perturbed copies of random normal rows (images); None when the data has nothing to perturb
    that way (no categorical column, no correlated pair, no latent model)."""
    if kind not in KINDS:
        raise DataError(f"unknown synthetic anomaly kind {kind!r}; choose from {', '.join(KINDS)}")
    schema = schema or Schema.infer(normal)
    if kind == "low_density_latent":
        return None if latent_model is None else _low_density(latent_model, n, rng)
    if schema.image is not None:
        images = np.asarray(normal, dtype=np.float64)
        return _image_anomalies(images, kind, n, rng)
    frame = normal.reset_index(drop=True)
    base = frame.iloc[rng.integers(len(frame), size=n)].reset_index(drop=True)
    numeric = [c.name for c in schema.columns if c.kind == "numeric" and frame[c.name].std() > 0]
    if kind == "out_of_range":
        if not numeric:
            return None
        cols = rng.choice(numeric, size=n)
        for i, col in enumerate(cols):
            values = frame[col].to_numpy(dtype=np.float64)
            sd, jump = np.nanstd(values), rng.uniform(2.0, 5.0)
            base.loc[i, col] = np.nanmax(values) + jump * sd if rng.random() < 0.5 else np.nanmin(values) - jump * sd
        return base
    if kind == "broken_correlation":
        pairs = _correlated_pairs(frame, numeric)
        if not pairs:
            return None
        out = []
        for _ in range(n):
            a, b = pairs[rng.integers(len(pairs))]
            target = b if rng.random() < 0.5 else a
            values = frame[target].to_numpy(dtype=np.float64)
            quantile = stats.rankdata(values) / (len(values) + 1)
            # Rows far from the median move far when mirrored.
            eligible = np.flatnonzero(np.abs(quantile - 0.5) >= 0.3)
            row = int(rng.choice(eligible)) if eligible.size else int(rng.integers(len(frame)))
            new = frame.iloc[[row]].copy()
            new[target] = np.quantile(values[np.isfinite(values)], 1.0 - quantile[row])
            out.append(new)
        return pd.concat(out, ignore_index=True)
    categorical = [c for c in schema.columns if c.kind == "categorical" and len(c.categories) >= 2]
    if not categorical:
        return None
    for i in range(n):
        col = categorical[rng.integers(len(categorical))]
        current = base.loc[i, col.name]
        others = [v for v in col.categories if v != str(current)]
        base.loc[i, col.name] = others[rng.integers(len(others))]
    return base


def _correlated_pairs(frame: pd.DataFrame, numeric: list[str]) -> list[tuple[str, str]]:
    if len(numeric) < 2:
        return []
    corr = frame[numeric].astype(np.float64).corr().to_numpy()
    return [(numeric[i], numeric[j]) for i in range(len(numeric)) for j in range(i + 1, len(numeric))
            if abs(corr[i, j]) >= MIN_CORRELATION]


def _image_anomalies(images: np.ndarray, kind: str, n: int, rng: np.random.Generator) -> np.ndarray | None:
    if kind == "swapped_category":
        return None
    pick = rng.integers(len(images), size=n)
    out = images[pick].copy()
    h, w = out.shape[-2:]
    if kind == "out_of_range":
        lo, hi = images.min(), images.max()
        sd = images.std()
        ph, pw = max(1, h // 4), max(1, w // 4)
        for i in range(n):
            r, c = rng.integers(h - ph + 1), rng.integers(w - pw + 1)
            out[i, ..., r:r + ph, c:c + pw] = hi + rng.uniform(2.0, 5.0) * sd if rng.random() < 0.5 \
                else lo - rng.uniform(2.0, 5.0) * sd
        return out
    other = images[rng.integers(len(images), size=n)]
    out[..., h // 2:, :] = other[..., h // 2:, :]
    return out


def _low_density(latent_model: Any, n: int, rng: np.random.Generator) -> pd.DataFrame | np.ndarray:
    from anomaly_ae.augment.latent import LatentSpace

    space = LatentSpace(latent_model)
    d = space.latent_dim
    direction = rng.standard_normal((n, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = np.sqrt(stats.chi2.ppf(0.999, d)) * rng.uniform(1.0, 1.5, size=(n, 1))
    condition = None
    if space.conditional:
        labels = latent_model.conditions_.draw(n, None, rng)
        condition = labels[:, 0] if labels.shape[1] == 1 else None
        if condition is None:
            raise DataError("low-density samples from a CVAE with several condition columns are not supported")
    return space.decode(direction * radius, condition)


def synthetic_anomalies(normal: pd.DataFrame | np.ndarray, n_per_kind: int, seed: int = 0,
                        kinds: list[str] | None = None, schema: Schema | None = None,
                        latent_model: Any = None) -> dict[str, pd.DataFrame | np.ndarray]:
    """{kind: perturbed rows} for every kind that applies to this data."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind in kinds or list(KINDS):
        rows = make_anomalies(normal, kind, n_per_kind, rng, schema=schema, latent_model=latent_model)
        if rows is not None:
            out[kind] = rows
    return out
