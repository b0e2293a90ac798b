"""Detection quality on labelled data, and the plots that show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from anomaly_ae.exceptions import DataError


@dataclass(frozen=True)
class EvaluationReport:
    n_normal: int
    n_anomalous: int
    auroc: float
    auprc: float
    threshold: float
    fpr_at_threshold: float
    recall_at_threshold: float
    precision_at_threshold: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def evaluate_scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> EvaluationReport:
    labels = checked_labels(labels)
    n_anom, n_norm = int(labels.sum()), int((labels == 0).sum())
    if n_anom == 0 or n_norm == 0:
        raise DataError(f"evaluation needs both normal and anomalous rows; got {n_norm} normal and {n_anom} anomalous "
                        "(for normal rows alone, `anomaly-ae evaluate --synthetic-anomalies` perturbs them in "
                        "documented ways)")
    flagged = scores > threshold
    tp = int((flagged & (labels == 1)).sum())
    return EvaluationReport(
        n_normal=n_norm, n_anomalous=n_anom,
        auroc=float(roc_auc_score(labels, scores)), auprc=float(average_precision_score(labels, scores)),
        threshold=float(threshold),
        fpr_at_threshold=float(flagged[labels == 0].mean()), recall_at_threshold=tp / n_anom,
        precision_at_threshold=tp / max(int(flagged.sum()), 1),
    )


def checked_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as 0/1 ints; anything else (a word, a missing value, 2) is refused with its row."""
    raw = np.asarray(labels)
    if raw.dtype.kind in "biuf":
        valid = np.isin(raw, (0, 1))
    else:  # text or mixed (a CSV column with one stray word is read as text): "0" and "1" count as labels
        raw = np.array([v.strip() if isinstance(v, str) else v for v in raw.tolist()], dtype=object)
        # pd.NA (a nullable column's missing value) has no truth value: `pd.NA in (0, 1)` raises
        valid = np.array([v in ("0", "1") if isinstance(v, str) else (not pd.isna(v) and v in (0, 1))
                          for v in raw.tolist()], dtype=bool)
    if not valid.all():
        bad = np.flatnonzero(~valid)
        example = raw[bad[0]].item() if isinstance(raw[bad[0]], np.generic) else raw[bad[0]]
        raise DataError(f"labels must be 0 (normal) or 1 (anomaly); row {int(bad[0])} holds {example!r}"
                        f"{f' (and {len(bad) - 1} more rows)' if len(bad) > 1 else ''}; fix or drop those rows",
                        rows=bad[:5].tolist())
    return raw.astype(int)


def plot_score_histogram(scores: np.ndarray, threshold: float, path: Path, labels: np.ndarray | None = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    # Scores are heavy-tailed: a log axis keeps both the normal bulk and the anomalies readable.
    shifted = np.log10(np.maximum(scores, 1e-12))
    bins = np.linspace(shifted.min(), shifted.max() + 1e-9, 60)
    if labels is None:
        ax.hist(shifted, bins=bins, color="tab:blue", alpha=0.8, label="samples")
    else:
        ax.hist(shifted[labels == 0], bins=bins, alpha=0.6, label="normal", color="tab:blue")
        ax.hist(shifted[labels == 1], bins=bins, alpha=0.6, label="anomaly", color="tab:red")
    ax.axvline(np.log10(max(threshold, 1e-12)), color="black", linestyle="--", label="threshold")
    ax.set_xlabel("log10(anomaly score)")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_roc_pr(scores: np.ndarray, labels: np.ndarray, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    paths = []
    for name, (x, y, xl, yl) in {"roc.png": (fpr, tpr, "false-positive rate", "true-positive rate"),
                                 "pr.png": (recall, precision, "recall", "precision")}.items():
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(x, y)
        if name == "roc.png":
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def plot_loss_curves(train_loss: list[float], val_loss: list[float], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(train_loss) + 1), train_loss, label="train")
    ax.plot(range(1, len(val_loss) + 1), val_loss, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if min(train_loss + val_loss, default=1) > 0 else "linear")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class EventReport:
    """Incident-level quality for series: a labelled range counts as found when a mark (a flagged step,
    an alert) falls in it or within `event_metrics`' grace after it; a run of marks that touches no
    range (nor its grace) is one false alarm."""

    n_events: int
    events_found: int
    event_recall: float
    flagged_runs: int
    false_alarm_runs: int
    event_precision: float
    event_f1: float
    mean_delay_steps: float | None  # from a found range's start to its first flagged step

    def to_dict(self) -> dict[str, float | int | None]:
        """As JSON holds it: an undefined rate (recall without any labelled range) is None, not NaN."""
        return {k: None if isinstance(v, float) and v != v else v for k, v in asdict(self).items()}


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) of each run of True."""
    padded = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def event_metrics(flags: np.ndarray, labels: np.ndarray, series: np.ndarray | None = None,
                  grace: int = 0) -> EventReport:
    """Event precision/recall over series (rows of each series in time order). A labelled range is
    found by a mark inside it or within `grace` rows after its end, and a run of marks that starts
    there is not a false alarm: an alert rule that needs k of n flagged steps fires up to n - 1 steps
    after the flag that starts it, so a range shorter than k is found by its alert only after it ends
    (grace = n - 1 for alerts, 0 for flagged steps)."""
    flags, labels = np.asarray(flags, dtype=bool), np.asarray(labels).astype(int) == 1
    series = np.zeros(len(flags), dtype=np.int64) if series is None else np.asarray(series)
    n_events = found = n_runs = false_runs = 0
    delays: list[int] = []
    for name in dict.fromkeys(series.tolist()):
        rows = np.flatnonzero(series == name)
        f, y = flags[rows], labels[rows]
        reach = y.copy()  # a range and the `grace` rows after it
        for start, end in runs(y):
            n_events += 1
            reach[end + 1:end + 1 + grace] = True
            hits = np.flatnonzero(f[start:end + 1 + grace])
            if len(hits):
                found += 1
                delays.append(int(hits[0]))
        for start, end in runs(f):
            n_runs += 1
            false_runs += int(not reach[start:end + 1].any())
    recall = found / n_events if n_events else float("nan")
    precision = (n_runs - false_runs) / n_runs if n_runs else 0.0
    f1 = 2 * precision * recall / (precision + recall) if n_events and precision + recall > 0 else 0.0
    return EventReport(n_events, found, recall, n_runs, false_runs, precision, f1,
                       float(np.mean(delays)) if delays else None)


def plot_series(values: "np.ndarray", names: list[str], scores: np.ndarray, threshold: float, labels: np.ndarray | None,
                path: Path, title: str = "") -> Path:
    """One series: its metrics (standardised, stacked), its score against the threshold, labelled ranges shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True, height_ratios=[3, 2])
    steps = np.arange(len(scores))
    values = np.asarray(values, dtype=np.float64)
    spread = np.nanstd(values, axis=0)
    z = (values - np.nanmean(values, axis=0)) / np.where(spread > 0, spread, 1.0)
    for j, name in enumerate(names[:8]):  # more than 8 lines is unreadable
        top.plot(steps, z[:, j] + 4 * j, linewidth=0.7, label=name)
    top.set_ylabel("metrics (standardised, offset)")
    top.legend(loc="upper left", fontsize=7, ncol=4)
    bottom.plot(steps, scores, color="black", linewidth=0.8, label="score")
    bottom.axhline(threshold, color="tab:red", linestyle="--", label="threshold")
    bottom.set_yscale("log" if np.all(scores > 0) else "linear")
    bottom.set_ylabel("anomaly score")
    bottom.set_xlabel("step")
    if labels is not None:
        for start, end in runs(np.asarray(labels).astype(int) == 1):
            for ax in (top, bottom):
                ax.axvspan(start, end + 1, color="tab:red", alpha=0.15, linewidth=0)
    bottom.legend(loc="upper left", fontsize=7)
    top.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
