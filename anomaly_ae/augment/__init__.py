"""Synthetic data: generators of normal rows, their measured quality, synthetic anomalies, latent tools.

DataFrame in, DataFrame out; torch stays inside the modules in anomaly_ae/models/.
"""

from anomaly_ae.augment.generator import GENERATORS, Generator

__all__ = ["GENERATORS", "Generator"]
