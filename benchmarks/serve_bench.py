"""Benchmark: `anomaly-ae serve` against `mlflow models serve` on the same registered model.

    make bench-serve            # or: .venv/bin/python benchmarks/serve_bench.py [--duration 20] [--traps]

Trains a 30-feature detector (`--model`; default: the Detector default, hybrid), registers it in a
throw-away MLflow registry (SQLite, temporary folder), promotes it to @champion, then serves that
one URI both ways and drives each server with the same load generator (`hey`, installed from
Debian's packages if missing) and the same rows: 1-row and 1000-row requests at concurrency 1, 8 and
32, each for --duration seconds after a warm-up. MLflow gets `{"dataframe_split": ...}` on
/invocations (1 worker, as measured before this project); anomaly-ae gets the same rows in its
columnar form on /v1/score with auth, validation and metrics on, with 1 and with 2 workers.
`--traps` also measures the two known traps: 2 workers on the asyncio event loop without the
TCP_NODELAY fix (uvicorn issue #3149: the socket a multi-worker supervisor hands to its workers
loses asyncio's automatic TCP_NODELAY; uvloop sets it anyway), the same with the fix, and 2 workers
with 2 torch threads each.

Writes benchmarks/results/serve.json (every measurement) and serve.md (tables, ratios, the goals).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
NAME = "serve-bench"
KEY = "bench-scoring-key-0123456789"
N_FEATURES = 30
ROWS = (1, 1000)
CONCURRENCY = (1, 8, 32)
# The goal of the scoring-service issue: with auth, validation and metrics on, in the same run.
GOALS = {1: 10.0, 1000: 4.0}


# ---------------------------------------------------------------------------- setup
def ensure_hey() -> str:
    hey = shutil.which("hey")
    if hey:
        return hey
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing hey (Debian package)...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "hey"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if not shutil.which("hey"):
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "hey"], check=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        return shutil.which("hey") or sys.exit("hey did not install")
    sys.exit("the benchmark needs `hey` (Debian: apt-get install hey)")


def make_data(n: int, seed: int):
    """30 correlated numeric columns from 6 latent factors, like host metrics."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    loadings = np.random.default_rng(0).normal(size=(6, N_FEATURES))
    x = rng.normal(size=(n, 6)) @ loadings + 0.3 * rng.normal(size=(n, N_FEATURES))
    return pd.DataFrame(np.round(x * 10 + 50, 4), columns=[f"metric_{i:02d}" for i in range(N_FEATURES)])


def register_model(tracking_uri: str, work: Path, model: str) -> str:
    import torch

    from anomaly_ae import Detector
    from anomaly_ae.registry import log_training_run, promote

    torch.set_num_threads(1)
    X = make_data(5000, seed=1)
    detector = Detector(model=model, epochs=40, random_state=0).fit(X)
    detector.save(work / "model")
    run = log_training_run(detector, X, register=NAME, tracking_uri=tracking_uri, model_dir=work / "model",
                           experiment="serve-bench")
    promote(NAME, run.registered.version, "champion", tracking_uri=tracking_uri)
    return f"models:/{NAME}@champion"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (workers), in MiB."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(status.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


class Server:
    def __init__(self, label: str, command: list[str], env: dict[str, str], url: str, ready: str,
                 body_for, headers: dict[str, str], log: Path) -> None:
        self.label, self.url, self.body_for, self.headers = label, url, body_for, headers
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{label} exited: {log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(ready, timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label} not ready: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def check(self, body: Path) -> None:
        """One request must score; 503 means a worker is still loading the model (readiness answered
        from another worker), so retry a while. A few requests, so every worker is likely warm."""
        deadline, ok = time.monotonic() + 180, 0
        while ok < 8:
            request = urllib.request.Request(self.url, data=body.read_bytes(), method="POST",
                                             headers={"Content-Type": "application/json", **self.headers})
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    json.loads(r.read())
                    ok += 1
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._log.close()


def run_hey(hey: str, server: Server, body: Path, concurrency: int, seconds: float) -> dict:
    command = [hey, "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json",
               "-D", str(body)]
    for name, value in server.headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command + [server.url], capture_output=True, text=True, timeout=seconds + 120).stdout
    return parse_hey(out)


def parse_hey(out: str) -> dict:
    """hey's text report -> requests/s (of 2xx responses), p50/p99 in ms, responses by status, errors
    (connection errors and responses of 300 and above). Also used by benchmarks/reliability.py."""
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+(?:Get|Post|dial|read|write)", out))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)) if "Requests/sec" in out else 0.0

    def pct(p: int) -> float | None:
        m = re.search(rf"{p}%% in ([\d.]+) secs".replace("%%", "%"), out)
        return round(float(m.group(1)) * 1000, 2) if m else None

    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    return {"requests_per_s": round(rps * ok / max(1, sum(statuses.values())), 1) if statuses else 0.0,
            "p50_ms": pct(50), "p99_ms": pct(99), "responses": statuses, "errors": errors + sum(
                n for code, n in statuses.items() if code >= 300)}


# ---------------------------------------------------------------------------- the run
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load first")
    parser.add_argument("--traps", action="store_true",
                        help="also measure the TCP_NODELAY and 2-thread traps, and 1 worker with 2 threads")
    parser.add_argument("--model", default="hybrid",
                        help="model family to serve (default: the Detector default users get)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args()
    hey = ensure_hey()
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANOMALY_AE_", "MLFLOW_", "PROMETHEUS"))}
    base_env.update({"MLFLOW_TRACKING_URI": tracking, "PATH": f"{Path(sys.executable).parent}:{base_env['PATH']}"})
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    print(f"training and registering a {N_FEATURES}-feature Detector(model={args.model!r}) in {work}", flush=True)
    uri = register_model(tracking, work, args.model)

    frame = make_data(1000, seed=2)
    columns, data = list(frame.columns), frame.values.tolist()
    bodies = {}
    for rows in ROWS:
        split = {"columns": columns, "data": data[:rows]}
        (work / f"mlflow-{rows}.json").write_text(json.dumps({"dataframe_split": split}))
        (work / f"ours-{rows}.json").write_text(json.dumps(split))
        bodies[("mlflow", rows)], bodies[("ours", rows)] = work / f"mlflow-{rows}.json", work / f"ours-{rows}.json"

    def mlflow_server() -> Server:
        port = free_port()
        mlflow = Path(sys.executable).with_name("mlflow")
        return Server("mlflow models serve (1 worker)",
                      [str(mlflow), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1",
                       "-p", str(port), "-w", "1"], base_env, f"http://127.0.0.1:{port}/invocations",
                      f"http://127.0.0.1:{port}/ping", lambda rows: bodies[("mlflow", rows)], {}, work / "mlflow.log")

    def our_server(workers: int, label: str = "", **settings: str) -> Server:
        port = free_port()
        env = {**base_env, "ANOMALY_AE_API_KEYS": KEY, "ANOMALY_AE_POLL_INTERVAL_S": "30",
               **{f"ANOMALY_AE_{k.upper()}": v for k, v in settings.items()}}
        if workers > 1:
            env["PROMETHEUS_MULTIPROC_DIR"] = str(Path(tempfile.mkdtemp(dir=work, prefix="prom-")))
        return Server(label or f"anomaly-ae serve ({workers} worker{'s' if workers > 1 else ''})",
                      [sys.executable, "-m", "anomaly_ae.service.command", "--model", uri, "--port", str(port),
                       "--workers", str(workers)], env, f"http://127.0.0.1:{port}/v1/score",
                      f"http://127.0.0.1:{port}/readyz", lambda rows: bodies[("ours", rows)],
                      {"Authorization": f"Bearer {KEY}"}, work / f"ours-{workers}-{len(settings)}.log")

    plans = [("mlflow", mlflow_server, ROWS, CONCURRENCY), ("ours-1", lambda: our_server(1), ROWS, CONCURRENCY),
             ("ours-2", lambda: our_server(2), ROWS, CONCURRENCY)]
    if args.traps:
        plans += [("trap-no-nodelay", lambda: our_server(2, "anomaly-ae serve (2 workers, asyncio loop, TCP_NODELAY "
                                                             "fix off)", tcp_nodelay="false", event_loop="asyncio"),
                   (1,), (1, 8)),
                  ("asyncio-nodelay", lambda: our_server(2, "anomaly-ae serve (2 workers, asyncio loop)",
                                                         event_loop="asyncio"), (1,), (1, 8)),
                  ("trap-2-threads", lambda: our_server(2, "anomaly-ae serve (2 workers, 2 torch threads each)",
                                                         torch_threads="2"), (1000,), (8,)),
                  # the other way to use both cores: one worker whose requests each take two threads
                  ("one-worker-2-threads", lambda: our_server(1, "anomaly-ae serve (1 worker, 2 torch threads)",
                                                              torch_threads="2"), ROWS, (1, 8))]
    started = time.time()
    load_before = os.getloadavg()
    results: list[dict] = []

    def report(results: list[dict]) -> dict:
        return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "model_uri": uri,
                "model": f"Detector(model={args.model!r}), {N_FEATURES} numeric features", "duration_s": args.duration,
                "warmup_s": args.warmup, "load_generator": "hey", "cpu_count": os.cpu_count(),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
                "elapsed_s": round(time.time() - started), "results": results, "ratios": ratios(results)}

    for key, make, rows_list, conc_list in plans:
        print(f"starting {key}", flush=True)
        server = make()
        try:
            for rows in rows_list:
                body = server.body_for(rows)
                server.check(body)
                for concurrency in conc_list:
                    run_hey(hey, server, body, concurrency, args.warmup)
                    m = run_hey(hey, server, body, concurrency, args.duration)
                    m.update(server=key, label=server.label, rows=rows, concurrency=concurrency,
                             rows_per_s=round(m["requests_per_s"] * rows), server_rss_mb=tree_rss_mb(server.proc.pid))
                    results.append(m)
                    write(args.out, report(results))  # partial results survive a failure later on
                    print(f"  {key:16s} rows={rows:<5d} c={concurrency:<3d} {m['requests_per_s']:>9.1f} req/s "
                          f"{m['rows_per_s']:>10d} rows/s p50={m['p50_ms']} ms p99={m['p99_ms']} ms "
                          f"errors={m['errors']} rss={m['server_rss_mb']} MiB", flush=True)
        finally:
            server.stop()
    write(args.out, report(results))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    shutil.rmtree(work, ignore_errors=True)


def write(out: Path, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(markdown(payload))


def ratios(results: list[dict]) -> list[dict]:
    base = {(r["rows"], r["concurrency"]): r for r in results if r["server"] == "mlflow"}
    out = []
    for r in results:
        b = base.get((r["rows"], r["concurrency"]))
        if r["server"] != "mlflow" and b and b["requests_per_s"]:
            out.append({"server": r["server"], "rows": r["rows"], "concurrency": r["concurrency"],
                        "speedup": round(r["requests_per_s"] / b["requests_per_s"], 2)})
    return out


def markdown(report: dict) -> str:
    lines = ["# `anomaly-ae serve` vs `mlflow models serve`", "",
             f"{report['date']}: {report['model']}, the same registered model (`{report['model_uri']}`) and "
             f"the same rows for both; `hey`, {report['duration_s']:g} s per cell after {report['warmup_s']:g} s "
             f"of warm-up; {report['cpu_count']} cores shared by servers and load generator (load average "
             f"{report['load_average_before'][0]} before, {report['load_average_after'][0]} after: other work "
             "was running on the machine). anomaly-ae with auth, validation and metrics on.", "",
             "| server | rows/request | concurrency | requests/s | rows/s | p50 ms | p99 ms | errors | server RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['label']} | {r['rows']} | {r['concurrency']} | {r['requests_per_s']:.1f} | "
                     f"{r['rows_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | {r['server_rss_mb']} |")
    labels = {r["server"]: r["label"] for r in report["results"]}
    lines += ["", "## Speed-up over mlflow models serve (requests/s, same cell)", "",
              "The goal applies to the service as shipped (1 or 2 workers, 1 torch thread each); the trap rows "
              "show what the service avoids, and the 1-worker, 2-thread row another setting "
              "(`ANOMALY_AE_TORCH_THREADS=2`).", "",
              "| server | rows/request | concurrency | speed-up | goal | met |", "|---|---:|---:|---:|---:|:---:|"]
    for q in report["ratios"]:
        goal = GOALS.get(q["rows"]) if q["server"] in ("ours-1", "ours-2") else None
        met = "" if goal is None else ("yes" if q["speedup"] >= goal else "no")
        lines.append(f"| {labels[q['server']]} | {q['rows']} | {q['concurrency']} | {q['speedup']}x | "
                     f"{f'{goal:g}x' if goal else ''} | {met} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
