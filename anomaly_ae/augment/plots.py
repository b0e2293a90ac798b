"""A PNG grid of generated images: one row per condition value, `n_per_condition` columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from anomaly_ae.exceptions import DataError


def save_sample_grid(generator: Any, path: str | Path, n_per_condition: int = 10,
                     condition: Mapping[str, Any] | None = None, random_state: int | None = 0) -> Path:
    """Draw images for each value of the (single) condition column, or for `condition` only, and save a grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    generator._check_fitted()
    if generator.schema_.image is None:
        raise DataError("a sample grid needs an image generator; this one generates table rows")
    cols = generator.conditions_.columns
    if condition:
        values = [next(iter(generator.conditions_.resolve(condition).values()))]
    elif cols:
        values = list(cols[0]["values"])
    else:
        values = [None]
    rows = []
    for i, value in enumerate(values):
        cond = None if value is None else {cols[0]["name"]: value}
        seed = None if random_state is None else random_state + i
        images = np.asarray(generator.sample(n_per_condition, condition=cond, random_state=seed))
        rows.append(images.reshape(n_per_condition, *images.shape[-2:]) if images.ndim == 3 or images.shape[1] == 1
                    else images[:, :3].transpose(0, 2, 3, 1))
    lo, hi = generator.preprocessor_.image_range
    fig, axes = plt.subplots(len(values), n_per_condition, figsize=(n_per_condition * 0.6, len(values) * 0.65),
                             squeeze=False)
    for r, (value, images) in enumerate(zip(values, rows)):
        for c in range(n_per_condition):
            ax = axes[r, c]
            ax.imshow(images[c], cmap="gray_r", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
        if value is not None:
            axes[r, 0].set_ylabel(str(value), rotation=0, labelpad=10, va="center")
    fig.suptitle(f"{generator.model} samples" + (f" by {cols[0]['name']}" if cols and not condition else ""))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
