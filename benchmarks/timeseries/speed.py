"""Training and scoring cost of series models at the sizes the time-series issue names.

Training: one series of 10,000 steps x 38 metrics (synthetic: seasonal, correlated, noisy), window
64, each model family, wall seconds of `fit` with the process's torch threads set to the cores
given (default 2). Scoring, 1 torch thread and 1 BLAS thread (as each service worker runs: `serve`
sets OMP/MKL/OPENBLAS_NUM_THREADS to its torch threads, default 1), median and p95 of repeated calls
in this process:

- `inference_all_64`: a 64-step window of 38 metrics (64 rows, the last one's window complete) as a
  DataFrame through `InferencePath.score`, every row scored (what an offline caller pays);
- `service`: the 64 steps after the training history as one JSON request to POST /v1/score with `score_last: 1` (63 rows of
  context, one new row) and top-3 explanations, through the real app (`create_app`: routing, API-key
  auth, body parsing and validation, the worker thread, metrics, the JSON response) in process over
  httpx's ASGI transport, no sockets. `service_*_ms` is the client's time per request (an upper bound
  of the server's), `service_server_mean_ms` the app's own request-duration histogram (sum / count).
  The model is saved and loaded as the service loads it. 63 rows of context are fewer than the
  model's `context_rows` (window - 1 + the alert rule's `within` - 1): the request is taken as a
  series' start and the rows the alert rule counts before the new one are scored too, on cut windows.
  `contract_server_mean_ms`: the same new row sent with the `context_rows` the model asks for, as a
  stream processor following GET /v1/model does (one window scored). `incident_server_mean_ms`: the same for 64
  rows that are all anomalous (a series of other loadings): a new row that may alert under the alert
  rule's cooldown has the rule's lookback (within - 1 + cooldown rows) scored.

    python benchmarks/timeseries/speed.py --out benchmarks/results/timeseries_speed.md

The same model before and after a change, back to back in one file (`--code` labels the rows):

    git archive 301386c anomaly_ae | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base python benchmarks/timeseries/speed.py --models knn --code 301386c \
        --out benchmarks/results/timeseries_speed_change.md
    python benchmarks/timeseries/speed.py --models knn --out benchmarks/results/timeseries_speed_change.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from anomaly_ae import SeriesDetector
from anomaly_ae.runtime import set_threads
from anomaly_ae.series_stream import StreamContract

STEPS, METRICS, WINDOW = 10_000, 38, 64
CHECKOUT = "this checkout"
KEY = "speed-bench-key-0123456789"


def telemetry(n: int, metrics: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    factors = np.column_stack([np.sin(2 * np.pi * t / 288), np.cos(2 * np.pi * t / 288),
                               np.cumsum(rng.normal(0, 0.02, n))])
    loadings = rng.normal(size=(3, metrics))
    x = factors @ loadings + 0.2 * rng.normal(size=(n, metrics))
    return pd.DataFrame(x, columns=[f"m{j:02d}" for j in range(metrics)])


def service_times(det: SeriesDetector, request: pd.DataFrame, repeats: int) -> dict[str, float]:
    """Per-request milliseconds of POST /v1/score (score_last 1, top-3) through the app in process."""
    import asyncio
    import tempfile

    import httpx

    from anomaly_ae.service import metrics
    from anomaly_ae.service.app import create_app
    from anomaly_ae.service.settings import ServiceSettings

    def server_seconds() -> tuple[float, float]:
        total = count = 0.0
        for sample in metrics.HTTP_DURATION.collect()[0].samples:
            if sample.labels.get("route") == "/v1/score":
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
        return total, count

    body = {"columns": list(request.columns), "data": request.to_numpy().tolist(), "score_last": 1,
            "explain": True, "top_k": 3}
    headers = {"Authorization": f"Bearer {KEY}"}

    async def run(path: Path) -> tuple[list[float], float]:
        app = create_app(ServiceSettings(model_uri=str(path), api_keys=[KEY], poll_interval_s=0))
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench",
                                         timeout=60) as client:
                for _ in range(600):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.05)
                for _ in range(5):  # warm-up
                    response = await client.post("/v1/score", json=body, headers=headers)
                    assert response.status_code == 200, response.text
                    assert response.json()["n_rows"] == 1
                sum0, count0 = server_seconds()
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    response = await client.post("/v1/score", json=body, headers=headers)
                    times.append(time.perf_counter() - start)
                    assert response.status_code == 200
                sum1, count1 = server_seconds()
        return times, (sum1 - sum0) / max(count1 - count0, 1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        det.save(path)
        times, server_mean = asyncio.run(run(path))
    ms = np.array(times) * 1000
    return {"service_median_ms": round(float(np.median(ms)), 2), "service_p95_ms": round(float(np.quantile(ms, 0.95)), 2),
            "service_server_mean_ms": round(server_mean * 1000, 2)}


def markdown_table(rows: list[dict]) -> str:
    head = list(dict.fromkeys(k for r in rows for k in r))  # rows of earlier runs may lack later columns
    head = [k for k in head if k not in ("calls", "load_1min", "run")] + ["calls", "load_1min", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(r.get(k, "")) for k in head) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["pca", "knn", "tcn", "gru", "vae"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/timeseries_speed.md"))
    parser.add_argument("--epoch-windows", default="default",
                        help="SeriesDetector's epoch_windows for the learned models: a number, 'all', or the default")
    parser.add_argument("--code", default=CHECKOUT,
                        help="what the package imported is (e.g. a commit put first on PYTHONPATH); a row is kept per "
                             "model and code, so one file can hold the same model before and after a change")
    args = parser.parse_args()
    series = telemetry(STEPS + WINDOW, METRICS, seed=0)
    history, request = series.iloc[:STEPS], series.iloc[STEPS:].reset_index(drop=True)  # the next 64 steps
    incident = telemetry(WINDOW, METRICS, seed=1)  # other loadings: every row anomalous
    epoch_windows = {} if args.epoch_windows == "default" else {
        "epoch_windows": None if args.epoch_windows == "all" else int(args.epoch_windows)}
    rows: list[dict] = []
    run = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    for model in args.models:
        set_threads(args.threads)
        start = time.perf_counter()
        det = SeriesDetector(model, window=WINDOW, random_state=0, device="cpu", **epoch_windows).fit(history)
        fit_s = time.perf_counter() - start
        epochs = max((len(h.train_loss) for h in det.history_), default=0)
        set_threads(1)
        # the same new row with the context its model asks for (GET /v1/model's series.context_rows)
        as_asked = series.iloc[STEPS + WINDOW - 1 - StreamContract.of(det.inference_).context_rows:].reset_index(drop=True)
        with threadpool_limits(1):  # numpy's BLAS as in a worker (it was loaded before any thread setting here)
            det.inference_.score(request)  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                det.inference_.score(request, top_k=3)
                times.append(time.perf_counter() - start)
            ms = np.array(times) * 1000
            rows.append({"model": model, "code": args.code, "fit_s": round(fit_s, 1), "epochs": epochs,
                         "epoch_windows": ("all" if det.epoch_windows is None else det.epoch_windows) if epochs else "-",
                         "best_val_loss": round(min(min(h.val_loss) for h in det.history_ if h.val_loss), 5)
                         if epochs else "-",
                         "inference_all_64_median_ms": round(float(np.median(ms)), 2),
                         "inference_all_64_p95_ms": round(float(np.quantile(ms, 0.95)), 2),
                         **service_times(det, request, args.repeats),
                         **{k.replace("service", "contract"): v
                            for k, v in service_times(det, as_asked, args.repeats).items() if "server" in k},
                         **{k.replace("service", "incident"): v
                            for k, v in service_times(det, incident, args.repeats).items() if "server" in k}})
        rows[-1].update(calls=args.repeats, load_1min=round(os.getloadavg()[0], 1), run=run)
        print(json.dumps(rows[-1]), flush=True)
        write(args, rows)  # after each model: a long run stopped later keeps what it measured


def write(args: argparse.Namespace, measured: list[dict]) -> None:
    # rows of models not measured in this run are kept from earlier runs (each row says its run and load)
    store = args.out.with_suffix(".json")
    def key(r: dict) -> tuple:
        return r["model"], r["code"], r["epoch_windows"]

    done = {key(r) for r in measured}
    # rows from before epoch_windows existed trained on every window (closed-form models on none)
    earlier = [{"model": r["model"], "code": r.get("code", CHECKOUT),
                "epoch_windows": r.get("epoch_windows", "all" if r.get("epochs") else "-"), **r}
               for r in (json.loads(store.read_text()) if store.exists() else [])]
    kept = [r for r in earlier if key(r) not in done]
    rows = sorted(kept + measured, key=lambda r: r["run"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(rows, indent=1) + "\n")
    args.out.write_text(
        "# Series models: training and scoring cost\n\n"
        f"Generated by `benchmarks/timeseries/speed.py` (rows in {store.name}; each row's `run` is the UTC time of "
        f"the run that measured it, `speed.py --models ...`, and `load_1min` the machine's load average "
        f"right after: {os.cpu_count()} cores shared with other jobs) on {platform.machine()} with "
        f"{args.threads} torch threads for training and 1 torch and 1 BLAS thread for scoring. "
        f"Training: {STEPS} steps x {METRICS} metrics, "
        f"window {WINDOW}, default epochs and early stopping; `epoch_windows` the training windows each epoch draws "
        "(`all`: every one of the ~8,000, as every row measured before the setting existed; `--epoch-windows`), "
        "`best_val_loss` the held-out windows' loss of the weights kept. Scoring, `--repeats` calls each (default 300): "
        "`inference_all_64` scores all 64 rows of a 64-step request (a DataFrame) through `InferencePath.score` "
        "with top-3 explanations; `service` sends the same rows as JSON to POST /v1/score with `score_last: 1` "
        "(63 context rows, 1 new row, top-3) through the real app in process (auth, validation, worker thread, "
        "metrics, JSON response; no sockets): client time per request, and the mean of the app's own "
        "request-duration histogram (`service_server_mean_ms`). A request of 64 rows has fewer than the "
        "model's `context_rows` (window - 1 + the alert rule's `within` - 1), so it is taken as a series' start "
        "and the rows before the new one that the alert rule counts are scored too, on cut windows; "
        "`contract_server_mean_ms` sends the same new row with the `context_rows` the model asks for "
        "(GET /v1/model), so one 64-step window is scored; `incident_server_mean_ms` 64 anomalous rows, "
        "where the alert rule's cooldown has its lookback scored. The request is the 64 steps after the "
        "training history. Goals (issue 12): fit < 120 s on 2 cores, "
        "service < 5 ms of server time at 1 worker.\n\n" + markdown_table(rows) + "\n")


if __name__ == "__main__":
    main()
