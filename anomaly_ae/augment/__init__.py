"""Synthetic data: generators of normal rows, their measured quality, synthetic anomalies, latent tools.

DataFrame in, DataFrame out; torch stays inside the modules in anomaly_ae/models/.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GENERATORS", "Generator"]


def __getattr__(name: str) -> Any:  # loaded on first use: importing torch is not free
    if name in __all__:
        from anomaly_ae.augment import generator

        return getattr(generator, name)
    raise AttributeError(f"module 'anomaly_ae.augment' has no attribute {name!r}")
