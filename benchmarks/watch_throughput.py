"""Can one watcher keep up with 1,000 series x 10 metrics at a 15 s step on one core?

A real Prometheus (Debian's, on 127.0.0.1) holds backfilled synthetic history for N hosts x 10
metrics; a `Watcher` (the same object `anomaly-ae watch` runs, one torch thread) is stepped through
the last steps of that history as if each were "now": the first step fetches a window of context,
every later step one new step per query. Per step we time the whole evaluation (queries, parsing,
framing, scoring, alert state) in wall-clock and in this process' CPU seconds (Prometheus' own CPU
is its process', not counted), and compare with the step (the budget).

    .venv/bin/python benchmarks/watch_throughput.py --series 1000 --steps 40
    # -> benchmarks/results/watch_throughput.{md,json}

Needs `prometheus` and `promtool` (deployment/scripts/install-prometheus.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from anomaly_ae.data.synthetic_series import SERIES_METRIC_COLUMNS, make_series_telemetry  # noqa: E402
from anomaly_ae.runtime import set_threads  # noqa: E402
from anomaly_ae.series_detector import SeriesDetector  # noqa: E402
from anomaly_ae.watch.simulate import LocalPrometheus, create_blocks, openmetrics_history  # noqa: E402
from anomaly_ae.watch.source import TIME_COLUMN, align  # noqa: E402
from anomaly_ae.watch.spec import WatchSpec  # noqa: E402
from anomaly_ae.watch.source import PrometheusSource  # noqa: E402
from anomaly_ae.watch.watcher import ModelInfo, Watcher  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEP = 15.0
WINDOW = 32
EXTRA = ("cpu_per_request", "latency_x_errors")  # two derived metrics: 8 + 2 = 10 columns
METRICS = (*SERIES_METRIC_COLUMNS, *EXTRA)


def telemetry(n_hosts: int, n_steps: int, seed: int) -> pd.DataFrame:
    frame = make_series_telemetry(n_steps, n_hosts, anomalies=False, seed=seed)
    frame["cpu_per_request"] = frame["cpu_util_pct"] / frame["requests_per_s"].clip(lower=1.0)
    frame["latency_x_errors"] = frame["latency_ms"] * frame["error_rate_pct"]
    return frame


class QueryTimer:
    """The source, with the time spent in its range queries (request, Prometheus' answer, JSON parsing)."""

    def __init__(self, source: PrometheusSource) -> None:
        self.source, self.spec = source, source.spec
        self.reset()

    def reset(self) -> None:
        self.wall = self.cpu = 0.0

    def query_range(self, metric: str, start: float, end: float):
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            return self.source.query_range(metric, start, end)
        finally:
            self.wall += time.perf_counter() - w0
            self.cpu += time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, nargs="+", default=[1000])
    parser.add_argument("--steps", type=int, default=40, help="steps evaluated after the first (cold) one")
    parser.add_argument("--train-hosts", type=int, default=50)
    parser.add_argument("--out", type=Path, default=RESULTS / "watch_throughput")
    args = parser.parse_args()
    set_threads(1)

    # One model, trained on 50 hosts' history (the watcher scores hosts it never saw with it).
    train = telemetry(args.train_hosts, 1200, seed=11)
    train = train.rename(columns={"ts": TIME_COLUMN})[[TIME_COLUMN, "host", *METRICS]]
    # the synthetic rows are 5 minutes apart; the watcher's grid is 15 s: replay them at 15 s
    train[TIME_COLUMN] = pd.to_datetime(1_700_000_000 + train.groupby("host").cumcount() * STEP, unit="s")
    t0 = time.perf_counter()
    detector = SeriesDetector(window=WINDOW, time_col=TIME_COLUMN, series_col="host").fit(train)
    fit_seconds = time.perf_counter() - t0

    runs = []
    for n_series in args.series:
        context = WINDOW - 1 + int(detector.framing_.max_gap)
        n_steps = context + 1 + args.steps
        frame = telemetry(n_series, n_steps, seed=5)
        end = align(time.time(), STEP) - 10 * STEP
        start = end - (n_steps - 1) * STEP
        with tempfile.TemporaryDirectory(prefix="watch-bench-") as tmp:
            tmp = Path(tmp)
            t0 = time.perf_counter()
            create_blocks(openmetrics_history(frame, start=start, step_seconds=STEP, metrics=METRICS),
                          tmp / "tsdb", promtool=shutil.which("promtool") or "promtool")
            backfill_seconds = time.perf_counter() - t0
            with LocalPrometheus(tmp / "tsdb", binary=shutil.which("prometheus") or "prometheus",
                                 scrape_interval="15s") as prom:
                spec = WatchSpec.model_validate({
                    "prometheus": {"url": prom.url, "timeout": "60s"}, "series_label": "host", "step": "15s",
                    "metrics": {m: f"max by (host) (demo_{m})" for m in METRICS},
                    "watch": {"evaluation_delay": "0s", "max_series": 100_000}})
                with PrometheusSource(spec) as source:
                    timed = QueryTimer(source)
                    watcher = Watcher(spec, timed, detector, ModelInfo("bench", "1", "in-process"))
                    first = start + context * STEP
                    wall, cpu, scored, query_wall, query_cpu = [], [], [], [], []
                    for k in range(args.steps + 1):
                        timed.reset()
                        w0, c0 = time.perf_counter(), time.process_time()
                        scores = watcher.evaluate(first + k * STEP)
                        wall.append(time.perf_counter() - w0)
                        cpu.append(time.process_time() - c0)
                        query_wall.append(timed.wall)
                        query_cpu.append(timed.cpu)
                        scored.append(len(scores))
        steady_wall, steady_cpu = wall[1:], cpu[1:]
        run = {"series": n_series, "metrics": len(METRICS), "step_seconds": STEP, "window": WINDOW,
               "steps_evaluated": len(wall), "series_scored_per_step": int(np.median(scored[1:])),
               "cold_step_wall_s": wall[0], "cold_step_cpu_s": cpu[0],
               "steady_wall_median_s": statistics.median(steady_wall),
               "steady_wall_p95_s": float(np.percentile(steady_wall, 95)),
               "steady_wall_max_s": max(steady_wall), "steady_cpu_median_s": statistics.median(steady_cpu),
               "steady_query_wall_median_s": statistics.median(query_wall[1:]),
               "steady_query_cpu_median_s": statistics.median(query_cpu[1:]),
               "budget_used_median": statistics.median(steady_wall) / STEP,
               "series_per_core_at_15s": int(n_series * STEP / statistics.median(steady_cpu)),
               "backfill_seconds": backfill_seconds}
        runs.append(run)
        print(json.dumps(run), flush=True)

    report = {"command": "benchmarks/watch_throughput.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads 1",
              "model": f"SeriesDetector(knn, window {WINDOW}) trained on {args.train_hosts} hosts x 1200 steps "
                       f"({fit_seconds:.1f} s)", "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["# Watcher throughput (issue 13)", "",
             f"`{report['command']}` on {report['machine']}; {report['model']}. Real Prometheus 2.42 on "
             "127.0.0.1 with backfilled history; each step evaluated as the watcher does live (the first step "
             "fetches a window of context, later steps one new step per query). Goal: 1,000 series x 10 "
             "metrics within a 15 s step on one core.", "",
             "| series | metrics | cold step (s) | steady step wall median / p95 / max (s) | watcher CPU per step "
             "median (s) | of which queries + parsing (s) | share of the 15 s step | series per core at 15 s |",
             "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['series']} | {r['metrics']} | {r['cold_step_wall_s']:.2f} | "
                     f"{r['steady_wall_median_s']:.2f} / {r['steady_wall_p95_s']:.2f} / {r['steady_wall_max_s']:.2f} | "
                     f"{r['steady_cpu_median_s']:.2f} | {r['steady_query_cpu_median_s']:.2f} | "
                     f"{r['budget_used_median']:.1%} | {r['series_per_core_at_15s']:,} |")
    lines += ["", "Series per core = series x 15 s / the watcher's CPU seconds per step (Prometheus' query work "
              "is its own process and is not counted). With `--shard i/n` alone each replica still receives "
              "every series and keeps its own, so the queries-and-parsing part does not shrink with more "
              "replicas; queries that select their shard (`{shard=~\"$shard\"}` on a label written by "
              "Prometheus' hashmod relabelling, docs/watch.md) make every part scale with the replica's share."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
