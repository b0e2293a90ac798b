"""Detection quality on labelled data, and the plots that show it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
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
    labels = np.asarray(labels).astype(int)
    if set(np.unique(labels)) - {0, 1}:
        raise DataError("labels must be 0 (normal) or 1 (anomaly)")
    n_anom, n_norm = int(labels.sum()), int((labels == 0).sum())
    if n_anom == 0 or n_norm == 0:
        raise DataError(f"evaluation needs both normal and anomalous rows; got {n_norm} normal and {n_anom} anomalous")
    flagged = scores > threshold
    tp = int((flagged & (labels == 1)).sum())
    return EvaluationReport(
        n_normal=n_norm, n_anomalous=n_anom,
        auroc=float(roc_auc_score(labels, scores)), auprc=float(average_precision_score(labels, scores)),
        threshold=float(threshold),
        fpr_at_threshold=float(flagged[labels == 0].mean()), recall_at_threshold=tp / n_anom,
        precision_at_threshold=tp / max(int(flagged.sum()), 1),
    )


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
