"""`make demo`: the whole story on embedded defaults, from generated data to scored samples.

Run with `python -m anomaly_ae.demo [OUT_DIR]`. Everything it writes goes under OUT_DIR
(default ./demo-output), so it is safe to run from a fresh clone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console

from anomaly_ae import Detector
from anomaly_ae.data.io import write_table
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.evaluation import evaluate_scores, plot_roc_pr, plot_score_histogram

console = Console()


def step(text: str) -> None:
    console.rule(f"[bold]{text}")


def run(out_dir: Path) -> dict[str, float]:
    out_dir.mkdir(parents=True, exist_ok=True)
    step("1. generate synthetic telemetry (normal history + a labelled incident window)")
    history = make_telemetry(6000, 0.0, seed=1).drop(columns=list(LABEL_COLUMNS))
    incoming = make_telemetry(2000, 0.05, seed=2)
    write_table(history, out_dir / "normal.csv")
    write_table(incoming, out_dir / "incoming.csv")
    console.print(f"{len(history)} normal rows, {len(incoming)} incoming rows "
                  f"({int(incoming.is_anomaly.sum())} anomalies of kinds "
                  f"{sorted(set(incoming.anomaly_kind) - {'none'})})")

    step("2. train a detector on normal data, calibrated to a 1% false-positive rate")
    started = time.perf_counter()
    detector = Detector(verbose=True).fit(history)
    model_dir = detector.save(out_dir / "model")
    console.print(f"model {detector.model!r} trained in {time.perf_counter() - started:.1f}s, "
                  f"threshold {detector.threshold_:.4g}, saved to {model_dir}")

    step("3. reload the saved model (JSON + safetensors, hash-checked) and score incoming data")
    reloaded = Detector.load(model_dir)
    X = incoming.drop(columns=list(LABEL_COLUMNS))
    frame = reloaded.score_frame(X, top_k=2)
    truth = incoming[list(LABEL_COLUMNS)].rename(columns={"is_anomaly": "labelled_anomaly"})
    write_table(frame.join(truth), out_dir / "scored.csv")
    flagged = frame[frame.is_anomaly].join(incoming[["anomaly_kind"]])
    console.print(flagged.sort_values("score", ascending=False).head(8).to_string(float_format="%.4g"))

    step("4. evaluate against the labels")
    report = evaluate_scores(frame["score"].to_numpy(), incoming["is_anomaly"].to_numpy(), reloaded.threshold_)
    plot_score_histogram(frame["score"].to_numpy(), reloaded.threshold_, out_dir / "score_histogram.png",
                         labels=incoming["is_anomaly"].to_numpy())
    plot_roc_pr(frame["score"].to_numpy(), incoming["is_anomaly"].to_numpy(), out_dir)
    for key, value in report.to_dict().items():
        console.print(f"  {key:24s} {value:.4f}" if isinstance(value, float) else f"  {key:24s} {value}")
    console.print(f"plots and scored rows in {out_dir}/")
    return report.to_dict()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    run(Path(args[0]) if args else Path("demo-output"))


if __name__ == "__main__":
    main()
