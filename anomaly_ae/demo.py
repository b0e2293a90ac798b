"""`make demo`: the whole story on embedded defaults, through the real CLI and a real service.

generate telemetry -> `anomaly-ae train --register` (MLflow on SQLite in OUT_DIR) -> `promote`
-> `anomaly-ae serve --model models:/NAME@champion` -> normal and anomalous traffic over HTTP
-> the Prometheus metrics it produced -> clean shutdown.

Run with `python -m anomaly_ae.demo [OUT_DIR]` (default ./demo-output); everything it writes
stays under OUT_DIR, so it is safe to run from a fresh clone and to run again.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from anomaly_ae.data.io import write_table
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

MODEL_NAME = "demo-detector"
console = Console(width=max(120, shutil.get_terminal_size().columns))


def step(text: str) -> None:
    console.rule(f"[bold]{text}")


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    console.print(f"[dim]$ anomaly-ae {' '.join(args)}[/]")
    subprocess.run([sys.executable, "-m", "anomaly_ae.cli", *args], cwd=cwd, env=env, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, key: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(base: str, key: str, server: subprocess.Popen, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the service exited with code {server.returncode} before it was ready")
        try:
            if http("GET", f"{base}/readyz", key, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service was not ready after {timeout_s:.0f}s")


def run(out_dir: Path) -> dict[str, int]:
    out_dir = out_dir.resolve()
    # A fresh store each time, so the registered version is always 1 and the story reads the same.
    for stale in ("mlflow.db", "mlartifacts", "model"):
        target = out_dir / stale
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ANOMALY_AE_"))}
    env["PYTHONUNBUFFERED"] = "1"

    step("1. generate synthetic telemetry: a normal history, a labelled week, incoming traffic")
    history = make_telemetry(6000, 0.0, seed=1).drop(columns=list(LABEL_COLUMNS))
    labelled = make_telemetry(2000, 0.05, seed=2).drop(columns=["anomaly_kind"])
    incoming = make_telemetry(400, 0.05, seed=3)
    write_table(history, out_dir / "normal.csv")
    write_table(labelled, out_dir / "labelled.csv")
    console.print(f"{len(history)} normal rows; {len(labelled)} labelled rows; {len(incoming)} incoming rows "
                  f"with {int(incoming.is_anomaly.sum())} anomalies ({', '.join(sorted(set(incoming.anomaly_kind) - {'none'}))})")

    step("2. train the default detector, track the run and register it in MLflow (SQLite, embedded)")
    cli(["train", "normal.csv", "--out", "model", "--experiment", "demo", "--register", MODEL_NAME,
         "--eval", "labelled.csv", "--label-col", "is_anomaly"], out_dir, env)

    step("3. promote version 1 to @champion and list the registry")
    cli(["promote", MODEL_NAME, "--version", "1", "--alias", "champion"], out_dir, env)
    cli(["models", "list", MODEL_NAME], out_dir, env)

    step("4. serve models:/demo-detector@champion with API keys, Prometheus metrics and hot reload")
    port, key, admin = free_port(), secrets.token_hex(24), secrets.token_hex(24)
    server_env = {**env, "ANOMALY_AE_API_KEYS": key, "ANOMALY_AE_ADMIN_KEYS": admin}
    console.print(f"[dim]$ anomaly-ae serve --model models:/{MODEL_NAME}@champion --port {port}[/]")
    server = subprocess.Popen([sys.executable, "-m", "anomaly_ae.cli", "serve", "--model",
                               f"models:/{MODEL_NAME}@champion", "--host", "127.0.0.1", "--port", str(port),
                               "--poll-interval", "5"], cwd=out_dir, env=server_env,
                              stdout=open(out_dir / "service.log", "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, key, server)
        status, body = http("GET", f"{base}/v1/model", key)
        info = json.loads(body)
        console.print(f"ready: {info['name']} version {info['version']} (@{info['alias']}), "
                      f"threshold {info['threshold']:.4g}")

        step("5. send incoming traffic (records form, with ids and explanations)")
        features = incoming.drop(columns=list(LABEL_COLUMNS))
        records = json.loads(features.to_json(orient="records"))
        ids = [f"row-{i}" for i in range(len(records))]
        flagged_total = 0
        results = []
        for start in range(0, len(records), 100):
            status, body = http("POST", f"{base}/v1/score", key, {
                "records": records[start:start + 100], "ids": ids[start:start + 100], "explain": True, "top_k": 2})
            if status != 200:
                raise RuntimeError(f"scoring failed with HTTP {status}: {body[:300]!r}")
            response = json.loads(body)
            flagged_total += response["n_anomalies"]
            results.extend(response["results"])
        table = Table(title="flagged samples (highest scores first)")
        for column in ("id", "true kind", "score", "p_value", "severity", "top features"):
            table.add_column(column)
        kinds = dict(zip(ids, incoming["anomaly_kind"]))
        for r in sorted((r for r in results if r["is_anomaly"]), key=lambda r: -r["score"])[:12]:
            tops = ", ".join(f"{f['feature']} {f['contribution']:.0%}" for f in r["top_features"])
            table.add_row(r["id"], kinds[r["id"]], f"{r['score']:.3g}", f"{r['p_value']:.4f}", r["severity"], tops)
        console.print(table)
        truth = incoming["is_anomaly"].to_numpy().astype(bool)
        flagged = [r["is_anomaly"] for r in results]
        caught = sum(f and t for f, t in zip(flagged, truth))
        false_alarms = sum(f and not t for f, t in zip(flagged, truth))
        console.print(f"{flagged_total} of {len(results)} flagged: {caught} of {int(truth.sum())} true anomalies "
                      f"caught, {false_alarms} false alarms among {int((~truth).sum())} normal rows")

        step("6. a bad request gets a 4xx with one JSON error shape, never a 500")
        status, body = http("POST", f"{base}/v1/score", key, {"records": [{"cpu_util_pct": "high"}]})
        console.print(f"HTTP {status}: {body.decode()[:300]}")

        step(f"7. the Prometheus metrics SREs build on ({base}/metrics)")
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        for line in metrics.splitlines():
            if line.startswith(("anomaly_ae_rows_scored_total", "anomaly_ae_anomalies_total",
                                "anomaly_ae_validation_errors_total", "anomaly_ae_model_info")):
                console.print(f"  {line}")
    finally:
        step("8. shut down cleanly (SIGTERM: in-flight requests finish first)")
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete, hence -15, not 0.
        graceful = "Finished server process" in (out_dir / "service.log").read_text(errors="replace")
        console.print(f"service stopped ({'graceful shutdown' if graceful else f'exit code {code}'}); "
                      f"its log is {out_dir / 'service.log'}")
    series = series_story(out_dir, env)
    watched = watch_story(out_dir, env)
    console.print(f"\nEverything is in {out_dir}: data, model/, series-model/, series-eval/ (one plot per host), "
                  "watch-backtest/ (scores and a plot per alerting host), "
                  f"mlflow.db + mlartifacts/ (open with `mlflow ui --backend-store-uri sqlite:///{out_dir / 'mlflow.db'}`), "
                  "service.log")
    return {"rows": len(results), "flagged": flagged_total, "caught": caught, "false_alarms": false_alarms, **series,
            **watched}


def series_story(out_dir: Path, env: dict[str, str]) -> dict[str, int]:
    """Metric streams: incidents a row-by-row model cannot see, found by the series detector."""
    import pandas as pd

    from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, make_series_telemetry, split_history
    from anomaly_ae.evaluation import runs

    step("9. metric streams: 3 hosts, 3 weeks of 5-minute steps, incidents that only show over time")
    frame = make_series_telemetry(288 * 21, n_hosts=3, seed=1)
    history, rest = split_history(frame)
    write_table(history.drop(columns=list(SERIES_LABEL_COLUMNS)), out_dir / "series_history.csv")
    write_table(rest.drop(columns=["anomaly_kind"]), out_dir / "series_labelled.csv")
    write_table(rest.drop(columns=list(SERIES_LABEL_COLUMNS)), out_dir / "series_incoming.csv")
    console.print(f"{len(history)} normal steps to learn from, {len(rest)} to score with "
                  f"{len(runs(rest.is_anomaly.to_numpy() == 1))} labelled incidents")
    cli(["train", "series_history.csv", "--time-col", "ts", "--series-col", "host", "--window", "32",
         "--out", "series-model", "--no-progress"], out_dir, env)
    cli(["evaluate", "series-model", "series_labelled.csv", "--label-col", "is_anomaly",
         "--out-dir", "series-eval"], out_dir, env)
    cli(["score", "series-model", "series_incoming.csv", "-o", "series_scored.csv", "--keep-cols", "ts,host"],
        out_dir, env)

    step("10. the same incidents through the row-by-row default (trained on the same history, time ignored)")
    cli(["train", "series_history.csv", "--drop-cols", "ts,host", "--out", "rows-model", "--no-progress"],
        out_dir, env)
    cli(["score", "rows-model", "series_incoming.csv", "-o", "rows_scored.csv", "--keep-cols", "ts,host"],
        out_dir, env)
    flagged = {name: pd.read_csv(out_dir / f"{name}_scored.csv")["is_anomaly"].to_numpy().astype(bool)
               for name in ("rows", "series")}
    table = Table(title="labelled incidents with at least one flagged step, by kind")
    for column in ("kind", "incidents", "row-by-row default", "series detector (knn, window 32)"):
        table.add_column(column)
    found = {"rows": 0, "series": 0}
    for kind in sorted(set(rest.anomaly_kind) - {"none"}):
        n = 0
        hits = {"rows": 0, "series": 0}
        for host in rest.host.unique():
            mask = (rest.host == host).to_numpy()
            for start, end in runs((rest.anomaly_kind == kind).to_numpy()[mask]):
                n += 1
                for name in hits:
                    hits[name] += bool(flagged[name][mask][start:end + 1].any())
        for name in found:
            found[name] += hits[name]
        table.add_row(kind, str(n), str(hits["rows"]), str(hits["series"]))
    normal = (rest.is_anomaly == 0).to_numpy()
    table.add_row("normal steps flagged", str(int(normal.sum())), f"{flagged['rows'][normal].mean():.1%}",
                  f"{flagged['series'][normal].mean():.1%}")
    console.print(table)
    return {"incidents_found_rows": found["rows"], "incidents_found_series": found["series"]}


def watch_story(out_dir: Path, env: dict[str, str]) -> dict[str, int]:
    """Prometheus in, scores out: train on its history, watch it live, see an anomaly alert."""
    import yaml

    from anomaly_ae.data.synthetic_series import make_series_telemetry
    from anomaly_ae.watch.simulate import LocalPrometheus, SyntheticExporter, create_blocks, demo_spec, \
        openmetrics_history
    from anomaly_ae.watch.source import align

    step("11. watch Prometheus: train on its history, score every host live, alert on an anomaly")
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    installer = Path(__file__).resolve().parents[1] / "deployment" / "scripts" / "install-prometheus.sh"
    if (prometheus is None or promtool is None) and installer.exists() and shutil.which("apt-get") and \
            (os.geteuid() == 0 or shutil.which("sudo")):
        subprocess.run(["bash", str(installer)], check=False, capture_output=True, timeout=900)
        prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        console.print("[yellow]skipped:[/] no Prometheus here; install it with deployment/scripts/install-prometheus.sh "
                      "(Debian's `prometheus`, needs root) to see this step")
        return {}
    step_s, history_steps, hosts = 2.0, 2160, 3  # 5-minute synthetic rows replayed every 2 s: a week of history
    frame = make_series_telemetry(history_steps + 1000, hosts, anomalies=False, seed=3)
    start = align(time.time(), step_s) - (history_steps - 1) * step_s
    history_end = start + (history_steps - 1) * step_s
    for stale in ("watch-tsdb", "watch-backtest"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    create_blocks(openmetrics_history(frame, start=start, step_seconds=step_s, end=history_end),
                  out_dir / "watch-tsdb", promtool=promtool)
    port = free_port()
    with SyntheticExporter(frame, start=start, step_seconds=step_s, timestamps=True) as exporter, \
            LocalPrometheus(out_dir / "watch-tsdb", binary=prometheus, synthetic_targets=[exporter.target],
                            jobs={"anomaly-ae-watch": [f"127.0.0.1:{port}"]}) as prom:
        console.print(f"Prometheus on {prom.url} holds a week of 3 hosts x 8 metrics and scrapes a live exporter")
        (out_dir / "watch.yml").write_text(yaml.safe_dump(demo_spec(prom.url, step="2s", window=16)))
        console.print((out_dir / "watch.yml").read_text())
        cli(["train", "--prometheus", "watch.yml", "--start", repr(start), "--end", repr(history_end),
             "--register", "demo-watch", "--no-progress"], out_dir, env)
        cli(["promote", "demo-watch", "--version", "1", "--alias", "champion"], out_dir, env)
        console.print("[dim]$ anomaly-ae watch --prometheus watch.yml --model models:/demo-watch@champion "
                      f"--listen 127.0.0.1:{port}[/]")
        with open(out_dir / "watch.log", "w") as log:
            watcher = subprocess.Popen([sys.executable, "-m", "anomaly_ae.cli", "watch", "--prometheus", "watch.yml",
                                        "--model", "models:/demo-watch@champion", "--listen", f"127.0.0.1:{port}"],
                                       cwd=out_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            def value(expr: str) -> float:
                result = prom.query(expr)
                return float(result[0]["value"][1]) if result else 0.0

            def wait(what: str, done: Any, timeout: float = 120.0) -> None:
                deadline = time.monotonic() + timeout
                while not done():
                    if watcher.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"the demo watcher did not {what}; see {out_dir / 'watch.log'}")
                    time.sleep(0.5)

            wait("get scraped with scores for every host", lambda: value("sum(anomaly_ae_watch_series)") == hosts)
            live_from = time.time()
            wait("score a window of live steps", lambda: value("anomaly_ae_watch_last_step_timestamp_seconds")
                 > live_from + 16 * step_s)
            inject_at = align(time.time(), step_s) + 2 * step_s
            exporter.inject("host-1", "cpu_util_pct", 6.0, from_time=inject_at)
            exporter.inject("host-1", "requests_per_s", 0.2, from_time=inject_at)
            console.print("injected a runaway process on host-1: CPU x6, requests x0.2")
            wait("alert on host-1", lambda: value('anomaly_ae_watch_last_alert_timestamp_seconds{series="host-1"}')
                 >= inject_at)
            alerted = value('anomaly_ae_watch_last_alert_timestamp_seconds{series="host-1"}')
            table = Table(title=f"from Prometheus ({prom.url}/api/v1/query), {alerted - inject_at:.0f} s after the "
                                "anomaly began")
            for column in ("series", "anomaly_ae_watch_score", "anomalous", "top metric (share)"):
                table.add_column(column)
            top = {r["metric"]["series"]: (r["metric"]["metric"], float(r["value"][1]))
                   for r in prom.query("anomaly_ae_watch_top_metric_share")}
            flags = {r["metric"]["series"]: float(r["value"][1]) for r in prom.query("anomaly_ae_watch_anomalous")}
            for r in sorted(prom.query("anomaly_ae_watch_score"), key=lambda r: r["metric"]["series"]):
                name = r["metric"]["series"]
                metric, share = top.get(name, ("?", 0.0))
                table.add_row(name, f"{float(r['value'][1]):.3g}", f"{flags.get(name, 0):.0f}",
                              f"{metric} ({share:.0%})")
            console.print(table)
        finally:
            watcher.send_signal(signal.SIGTERM)
            try:
                watcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                watcher.kill()
        cli(["backtest", "--prometheus", "watch.yml", "--model", "models:/demo-watch@champion",
             "--start", repr(inject_at - 60 * step_s), "--end", repr(align(time.time(), step_s)),
             "--out", "watch-backtest"], out_dir, env)
    return {"watch_alert_latency_s": int(alerted - inject_at)}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    run(Path(args[0]) if args else Path("demo-output"))


if __name__ == "__main__":
    main()
