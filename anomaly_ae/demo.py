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
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from anomaly_ae.data.io import write_table
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

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


def run(out_dir: Path) -> dict[str, Any]:
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


def labelled_incidents(frame: pd.DataFrame) -> list[tuple[Any, str, str, int, int]]:
    """(first time, host, kind, first row, last row) of each labelled range of a frame sorted by host
    and time (rows as positions in the frame), in time order."""
    import numpy as np

    from anomaly_ae.evaluation import runs

    incidents = []
    for host in frame.host.unique():
        rows = np.flatnonzero((frame.host == host).to_numpy())
        kinds = frame.anomaly_kind.to_numpy()[rows]
        for start, end in runs(kinds != "none"):
            incidents.append((frame.ts.iloc[rows[start]], host, str(kinds[start]), int(rows[start]), int(rows[end])))
    return sorted(incidents)


def incidents_found(incidents: list[tuple[Any, str, str, int, int]], flagged: np.ndarray,
                    flagged_without: np.ndarray | None = None) -> dict[int, bool]:
    """Per incident: does a flagged step fall in it (that is not flagged in `flagged_without`, the same
    rows scored without the anomalies, when given)?"""
    import numpy as np

    new = np.asarray(flagged, dtype=bool)
    if flagged_without is not None:
        new = new & ~np.asarray(flagged_without, dtype=bool)
    return {i: bool(new[a:b + 1].any()) for i, (_, _, _, a, b) in enumerate(incidents)}


def series_story(out_dir: Path, env: dict[str, str]) -> dict[str, Any]:
    """Metric streams: the series detector and the row-by-row default on the same labelled incidents.

    An incident counts as found by a model when the model flags at least one of its steps that it
    does not flag when the same history is scored without the anomaly (the generator gives that
    history exactly: rows outside the incidents are identical), so a false-alarm run that happens to
    overlap an incident does not count as finding it."""
    import numpy as np
    import pandas as pd

    from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, SERIES_METRIC_COLUMNS, WINDOW_ONLY_KINDS, \
        make_series_telemetry, split_history
    from anomaly_ae.detector import Detector
    from anomaly_ae.evaluation import event_metrics, runs
    from anomaly_ae.series_detector import SeriesDetector

    step("9. metric streams: 3 hosts, 3 weeks of 5-minute steps, 7 kinds of labelled incidents "
         "(4 in range row by row)")
    frame = make_series_telemetry(288 * 21, n_hosts=3, seed=1)
    history, rest = split_history(frame)
    _, without = split_history(make_series_telemetry(288 * 21, n_hosts=3, seed=1, anomalies=False))
    write_table(history.drop(columns=list(SERIES_LABEL_COLUMNS)), out_dir / "series_history.csv")
    write_table(rest.drop(columns=["anomaly_kind"]), out_dir / "series_labelled.csv")
    write_table(rest.drop(columns=list(SERIES_LABEL_COLUMNS)), out_dir / "series_incoming.csv")
    console.print(f"{len(history)} normal steps to learn from, {len(rest)} to score with "
                  f"{len(runs(rest.is_anomaly.to_numpy() == 1))} labelled incidents")
    # Server traffic follows the clock: the time of day is an input (a night pattern by day is then anomalous).
    cli(["train", "series_history.csv", "--time-col", "ts", "--series-col", "host",
         "--covariates", "time_of_day", "--out", "series-model", "--no-progress"], out_dir, env)
    cli(["evaluate", "series-model", "series_labelled.csv", "--label-col", "is_anomaly",
         "--out-dir", "series-eval"], out_dir, env)
    cli(["score", "series-model", "series_incoming.csv", "-o", "series_scored.csv", "--keep-cols", "ts,host"],
        out_dir, env)

    step("10. the same incidents through the row-by-row default (trained on the same history, time ignored)")
    cli(["train", "series_history.csv", "--drop-cols", "ts,host", "--out", "rows-model", "--no-progress"],
        out_dir, env)
    cli(["score", "rows-model", "series_incoming.csv", "-o", "rows_scored.csv", "--keep-cols", "ts,host"],
        out_dir, env)
    names = {"rows": "row-by-row default", "series": "series detector (default knn_multiscale, time of day)"}
    flagged = {name: pd.read_csv(out_dir / f"{name}_scored.csv")["is_anomaly"].to_numpy().astype(bool)
               for name in names}
    # The counterfactual: the same steps scored without the anomalies, by the saved models.
    quiet = without.drop(columns=list(SERIES_LABEL_COLUMNS))
    flagged_without = {"rows": Detector.load(out_dir / "rows-model").predict(quiet[list(SERIES_METRIC_COLUMNS)]),
                       "series": SeriesDetector.load(out_dir / "series-model").predict(quiet)}
    flagged_without = {name: np.asarray(f).astype(bool) for name, f in flagged_without.items()}
    incidents = labelled_incidents(rest)
    found = {name: incidents_found(incidents, flagged[name], flagged_without[name]) for name in names}
    touched = {name: incidents_found(incidents, flagged[name]) for name in names}

    title = "labelled incidents found, by kind"
    caption = ("found: at least one of its steps flagged that the same model does not flag when the same history "
               "is scored without the anomaly")
    columns = ["kind", "stays in range row by row", "incidents", *names.values()]
    kinds = sorted({kind for _, _, kind, _, _ in incidents}, key=lambda k: (k not in WINDOW_ONLY_KINDS, k))
    rows = []
    for kind in kinds:
        ids = [i for i, incident in enumerate(incidents) if incident[2] == kind]
        rows.append([kind, "yes" if kind in WINDOW_ONLY_KINDS else "no", str(len(ids)),
                     *(str(sum(found[name][i] for i in ids)) for name in names)])
    total = {name: sum(found[name].values()) for name in names}
    rows.append(["all incidents", "", str(len(incidents)), *(str(total[name]) for name in names)])
    rows.append(["incidents with any flagged step", "", str(len(incidents)),
                 *(str(sum(touched[name].values())) for name in names)])
    normal = (rest.is_anomaly == 0).to_numpy()
    labels, hosts = rest.is_anomaly.to_numpy(), rest.host.to_numpy()
    false_runs = {name: event_metrics(flagged[name], labels, hosts).false_alarm_runs for name in names}
    rows.append(["normal steps flagged", "", str(int(normal.sum())),
                 *(f"{flagged[name][normal].mean():.1%}" for name in names)])
    rows.append(["false-alarm runs (touch no incident)", "", "", *(str(false_runs[name]) for name in names)])
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column)
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=i == len(kinds))
    console.print(table)
    # the same table as a file, so the README's demo figures have one (benchmarks/results/demo_series.md)
    (out_dir / "series_story.md").write_text("\n".join(
        [f"# {title}", "", f"{caption}.", "", "| " + " | ".join(columns) + " |",
         "|" + "---|" * len(columns), *("| " + " | ".join(row) + " |" for row in rows)]) + "\n")

    rule = ("the first in time, of the kinds that stay in range row by row, that the series detector finds and the "
            "row-by-row default does not")
    pick = next((i for i, incident in enumerate(incidents)
                 if incident[2] in WINDOW_ONLY_KINDS and found["series"][i] and not found["rows"][i]), None)
    if pick is not None:
        when, host, kind, a, b = incidents[pick]
        console.print(f"One incident, picked by the rule '{rule}': {host}, {kind}, {when:%Y-%m-%d %H:%M} to "
                      f"{rest.ts.iloc[b]:%Y-%m-%d %H:%M} ({b - a + 1} steps): the series detector flags "
                      f"{int(flagged['series'][a:b + 1].sum())} of its steps; the row-by-row default flags none "
                      "of them that it does not also flag without the incident.")
    else:
        console.print(f"No incident fits the rule '{rule}'.")
    for name, other in (("series", "rows"), ("rows", "series")):
        only = [incidents[i] for i in found[name] if found[name][i] and not found[other][i]]
        listed = "; ".join(f"{host} {kind} from {when:%m-%d %H:%M}" for when, host, kind, _, _ in only)
        console.print(f"The {names[name]} finds {len(only)} incident(s) the {names[other]} does not"
                      + (f": {listed}" if listed else "") + ".")
    return {"incidents_found_rows": total["rows"], "incidents_found_series": total["series"],
            "series_only_incident": None if pick is None else f"{incidents[pick][1]} {incidents[pick][2]}"}


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
