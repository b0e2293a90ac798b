"""Benchmark: in-process scoring time of row detectors (issue 11: the default within 3x of `ae`).

    .venv/bin/python benchmarks/inprocess_speed.py [--models ae hybrid knn] [--code LABEL]

Fits each model on the 30-feature data of `serve_bench.py` (12,000 rows: 9,600 fit, 2,400 held
out; the neighbour term keeps every fit row as its reference) with 2 torch threads, then times with
one torch and one BLAS thread, as a service worker scores:
  - `decision_function` on a DataFrame of 1,000 rows and of 1 row (validation, preprocessing,
    scoring, calibration: what a library user calls), median of repeated calls;
  - the scorer alone on the 1,000 preprocessed rows (`scorer_.score`: the networks and the
    neighbour term, nothing else), which is what the issue's "87 ms against 3.4 ms" measured.
Rows with another `--code` label (e.g. an older commit run with PYTHONPATH pointing at its package)
are kept, so two versions sit side by side in one file.

Writes benchmarks/results/inprocess_speed.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from serve_bench import make_data  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def median_ms(call, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)


def measure(model: str) -> dict:
    import anomaly_ae
    from anomaly_ae import Detector
    from anomaly_ae.inference import model_input
    from anomaly_ae.runtime import set_threads
    from threadpoolctl import threadpool_limits

    set_threads(2)
    started = time.perf_counter()
    det = Detector(model=model, random_state=0).fit(make_data(12_000, 0))
    fit_s = time.perf_counter() - started
    set_threads(1)
    rows = make_data(1000, 1)
    with threadpool_limits(1):
        x = model_input(det.preprocessor_, det.schema_, det.schema_.check(rows)[0])
        return {"model": model, "package": str(Path(anomaly_ae.__file__).parent), "fit_s": round(fit_s, 1),
                "decision_1000_ms": median_ms(lambda: det.decision_function(rows), 30),
                "decision_1_ms": median_ms(lambda: det.decision_function(rows.iloc[:1]), 300),
                "scorer_1000_ms": median_ms(lambda: det.scorer_.score(x), 30)}


def markdown(payload: dict) -> str:
    lines = ["# In-process scoring time", "",
             "`benchmarks/inprocess_speed.py`: 30 numeric features, 9,600 fit rows; median ms with one torch and "
             "one BLAS thread. `decision_function` includes validation, preprocessing and calibration; the scorer "
             "column is the networks and the neighbour term alone on preprocessed rows. Runs:", ""]
    for run in payload["runs"]:
        lines.append(f"- `{run['code']}`: {run['date']}, load average {run['load_average']} before")
    lines += ["", "| code | model | 1,000 rows ms | 1 row ms | scorer, 1,000 rows ms | 1,000 rows / `ae` | fit s |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for run in payload["runs"]:
        ae = next((r for r in run["rows"] if r["model"] == "ae"), None)
        for r in run["rows"]:
            ratio = f"{r['decision_1000_ms'] / ae['decision_1000_ms']:.1f}x" if ae else ""
            lines.append(f"| {run['code']} | `{r['model']}` | {r['decision_1000_ms']} | {r['decision_1_ms']} | "
                         f"{r['scorer_1000_ms']} | {ratio} | {r['fit_s']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["ae", "hybrid", "knn"])
    parser.add_argument("--code", default=None, help="label of the code measured (default: git HEAD)")
    parser.add_argument("--out", type=Path, default=RESULTS / "inprocess_speed.json")
    args = parser.parse_args()
    code = args.code or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                       text=True).stdout.strip()
    run = {"code": code, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "load_average": round(os.getloadavg()[0], 2), "rows": []}
    for model in args.models:
        run["rows"].append(measure(model))
        print(run["rows"][-1], flush=True)
    payload = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    payload["runs"] = [r for r in payload["runs"] if r["code"] != code] + [run]
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(payload))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
