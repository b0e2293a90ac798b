"""Loaders for the time-series benchmark suites (see ../shared/bench/TIMESERIES.md).

Each loader yields `Series`: the whole series in time order, its 0/1 labels, how many leading
rows a method may fit on, from which row on the rows are evaluated, and the rows' timestamps
where the files have them (SKAB, NAB; MSL has none). The timestamps are as the files give them:
not sorted, deduplicated or resampled.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "timeseries"

SKAB_GROUPS = ("valve1", "valve2", "other")
SKAB_TRAIN_ROWS = 400    # SKAB's own split: the first 400 rows of each file, shuffle=False
NAB_HISTORY = 0.15       # NAB's probationary period, used as the normal history


@dataclass
class Series:
    suite: str
    name: str
    group: str          # MSL: eva/tuning; SKAB: valve1/valve2/other; NAB: category
    X: np.ndarray       # (n, d) float64, rows in time order
    y: np.ndarray       # (n,) int 0/1
    n_train: int        # fit on X[:n_train]
    score_from: int     # evaluate rows X[score_from:]
    times: np.ndarray | None = None   # (n,) datetime64[ns] from the file's timestamp column; MSL: None

    @property
    def train(self) -> np.ndarray:
        return self.X[: self.n_train]


def load_msl(data_dir: Path = DATA_DIR) -> list[Series]:
    """16 NASA MSL series (14 eva, 2 tuning); fit on [0, train_rows), evaluate every row."""
    root = Path(data_dir) / "nasa_msl"
    out = []
    with open(root / "series.csv", newline="") as f:
        for row in csv.DictReader(f):
            with np.load(root / f"{row['name']}.npz", allow_pickle=False) as z:
                X, y = z["X"].astype(np.float64), z["y"].astype(np.int64)
            assert len(X) == int(row["length"]) and not y[: int(row["train_rows"])].any()
            out.append(Series("msl", row["name"], row["split"], X, y, int(row["train_rows"]), 0))
    return out


def load_skab(data_dir: Path = DATA_DIR) -> list[Series]:
    """34 labelled SKAB files; the first 400 rows train, the rest is test.

    other/2.csv has anomalies inside its first 400 rows; SKAB's protocol trains on them anyway.
    """
    out = []
    for group in SKAB_GROUPS:
        files = sorted((Path(data_dir) / "skab" / group).glob("*.csv"), key=lambda p: int(p.stem))
        for path in files:
            df = pd.read_csv(path, sep=";", parse_dates=["datetime"])
            X = df.drop(columns=["datetime", "anomaly", "changepoint"]).to_numpy(np.float64)
            y = df["anomaly"].to_numpy().astype(np.int64)
            times = df["datetime"].to_numpy(dtype="datetime64[ns]")
            out.append(Series("skab", f"{group}/{path.stem}", group, X, y,
                              SKAB_TRAIN_ROWS, SKAB_TRAIN_ROWS, times))
    return out


def load_nab(data_dir: Path = DATA_DIR) -> list[Series]:
    """58 NAB series; a row is positive inside a labelled window (ends included).

    The first 15% of rows are the normal history (NAB caps its probationary period at 750
    rows; we do not, as TIMESERIES.md says "the first 15%").
    """
    root = Path(data_dir) / "nab"
    windows = json.loads((root / "labels" / "combined_windows.json").read_text())
    out = []
    for key in sorted(windows):
        df = pd.read_csv(root / "data" / key)
        t = pd.to_datetime(df["timestamp"])
        y = np.zeros(len(df), np.int64)
        for start, end in windows[key]:
            y[((t >= pd.Timestamp(start)) & (t <= pd.Timestamp(end))).to_numpy()] = 1
        X = df[["value"]].to_numpy(np.float64)
        h = int(NAB_HISTORY * len(df))
        out.append(Series("nab", key.removesuffix(".csv"), key.split("/")[0], X, y, h, h,
                          t.to_numpy(dtype="datetime64[ns]")))
    return out


LOADERS = {"msl": load_msl, "skab": load_skab, "nab": load_nab}
