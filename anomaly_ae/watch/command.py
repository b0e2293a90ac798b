"""`anomaly-ae train --prometheus`, `anomaly-ae watch` and `anomaly-ae backtest`: Prometheus in, scores out."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from anomaly_ae.console import console, friendly_errors, kept_if_logging_fails
from anomaly_ae.runtime import DEFAULT_THREADS, set_threads

log = logging.getLogger("anomaly_ae.watch")


def _range(spec: Any, start: str, end: str, context_steps: int = 0) -> tuple[float, float]:
    """[start, end] on the step grid, start moved back by `context_steps` steps (the first windows' history)."""
    from anomaly_ae.watch.source import align
    from anomaly_ae.watch.spec import WatchSpecError, parse_time

    now = time.time()
    first, last = parse_time(start, now), parse_time(end, now)
    if last < first:
        raise WatchSpecError(f"the start {start} is after the end {end}; swap them")
    t0 = align(first, spec.step) + (spec.step if align(first, spec.step) < first else 0.0)
    t1 = align(last, spec.step)
    if t1 < t0:
        raise WatchSpecError(f"the range from {start} to {end} holds no step of {spec.step:g} s; widen it")
    return t0 - context_steps * spec.step, t1


# ---------------------------------------------------------------------------- train --prometheus
def train_from_prometheus(spec_path: Path, start: str, end: str, *, model: str | None, window: int | str | None,
                          out: Path | None, experiment: str | None, register: str | None,
                          tracking_uri: str | None, device: str, progress: bool) -> None:
    """Fetch the spec's metrics over [start, end], train a SeriesDetector, save / log / register it."""
    from anomaly_ae.exceptions import DataError
    from anomaly_ae.series_detector import DEFAULT_SERIES_MODEL, SeriesDetector
    from anomaly_ae.watch.source import TIME_COLUMN, PrometheusSource, fetch_frame, frame_fingerprint
    from anomaly_ae.watch.spec import load_spec

    loaded = load_spec(spec_path)
    spec = loaded.spec
    t0, t1 = _range(spec, start, end)
    opts = spec.model
    chosen_window = window if window is not None else opts.window  # None: the model's default
    detector = SeriesDetector(model=model or opts.model or DEFAULT_SERIES_MODEL, window=chosen_window,
                              time_col=TIME_COLUMN, series_col=spec.series_label, covariates=opts.covariates,
                              max_gap=opts.max_gap,
                              alert_min_steps=opts.alert_min_steps, alert_within=opts.alert_within,
                              alert_cooldown=opts.alert_cooldown, target_fpr=opts.target_fpr, epochs=opts.epochs,
                              random_state=opts.random_state, device=device, verbose=progress)
    detector.validate_params()  # a bad model option fails now, not after the history is fetched
    with PrometheusSource(spec) as source:
        frame, report = fetch_frame(source, t0, t1, max_series=spec.watch.max_series)
    for line in report.lines():
        console.print(f"[yellow]note:[/] {escape(line)}")
    if frame.empty:
        raise DataError(f"the spec's queries returned no complete rows between {start} and {end}: check the "
                        f"queries in Prometheus' UI (each must return one series per '{spec.series_label}')")
    fingerprint = frame_fingerprint(frame)
    console.print(f"fetched {report.n_rows} steps of {report.n_series} series x {len(spec.columns)} metrics from "
                  f"{spec.prometheus.url} (data fingerprint {fingerprint})")
    detector.fit(frame)
    provenance = {"prometheus_spec": loaded.path.name, "spec_fingerprint": spec.fingerprint(),
                  "query_fingerprint": fingerprint, "start": t0, "end": t1, "step_seconds": spec.step,
                  "series_label": spec.series_label, "metrics": spec.metrics, "report": report.to_dict()}
    detector.training_metadata_["source"] = provenance
    stats = detector.alert_stats_
    console.print(f"window {detector.window_} steps; on held-out normal history the alert rule fired {stats['alerts']} "
                  f"times in {stats['held_out_steps']} steps ({stats.get('alerts_per_day', float('nan')):.2f} per day)")
    path = detector.save(out) if out is not None else None
    cal = detector.calibration_
    console.print(f"{'saved to ' + str(path) if path else 'trained'} (threshold {cal.threshold:.6g}, "
                  f"validation FPR {cal.validation_fpr:.4f} for target {cal.target_fpr})")
    if experiment is not None or register is not None:
        from anomaly_ae.registry import DataSource, log_training_run

        source = DataSource(params={"kind": "prometheus", "spec_fingerprint": spec.fingerprint(),
                                    "query_fingerprint": fingerprint, "start": t0, "end": t1,
                                    "step_seconds": spec.step, "series_label": spec.series_label},
                            files={loaded.path.name: loaded.text, "fetch_report.json": json.dumps(report.to_dict(),
                                                                                                 indent=2)})
        with kept_if_logging_fails(detector, path):
            run = log_training_run(detector, frame, experiment=experiment or "anomaly-ae", register=register,
                                   tracking_uri=tracking_uri, model_dir=path, source=source)
        console.print(run.describe())


# ---------------------------------------------------------------------------- watch
def watch(
    prometheus: Path = typer.Option(..., "--prometheus", help="The watch spec (YAML or TOML): Prometheus URL, "
                                                               "queries, series label, step."),
    model: str = typer.Option(..., help="The series model: models:/NAME@ALIAS (reloaded when the alias moves), "
                                        "models:/NAME/VERSION or a saved model directory."),
    listen: str = typer.Option("127.0.0.1:9464", help="HOST:PORT for /metrics and /healthz."),
    shard: Optional[str] = typer.Option(None, help="i/n: watch only the series whose stable hash falls to replica "
                                                   "i of n (a StatefulSet's pod index)."),
    reload_interval: float = typer.Option(60.0, min=1.0, help="Seconds between checks of where the model URI points."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI; default MLFLOW_TRACKING_URI."),
    threads: int = typer.Option(DEFAULT_THREADS, min=1, help="torch CPU threads for this process."),
) -> None:
    """Score the spec's series at every step and expose the scores on /metrics for Prometheus to scrape."""
    friendly_errors(_watch)(prometheus, model, listen, shard, reload_interval, tracking_uri, threads)


def _watch(spec_path: Path, model_uri: str, listen: str, shard_text: str | None, reload_interval: float,
           tracking_uri: str | None, threads: int) -> None:
    from anomaly_ae.exceptions import ConfigurationError
    from anomaly_ae.watch.exposition import ExpositionServer
    from anomaly_ae.watch.source import PrometheusSource
    from anomaly_ae.watch.spec import load_spec
    from anomaly_ae.watch.watcher import ModelSource, Shard, WatchLoop, Watcher

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per query would drown the watcher's own
    set_threads(threads)
    spec = load_spec(spec_path).spec
    shard = Shard.parse(shard_text)
    if spec.sharded_queries and not shard_text:  # else $shard became 0 and only shard 0 was watched
        raise ConfigurationError(f"the queries of {spec_path} select a shard with $shard: pass --shard i/n with n "
                                 "the modulus of the hashmod relabelling (e.g. --shard 0/4), or take $shard out "
                                 "of the queries to watch every series with one watcher")
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9464, as URLs write IPv6 addresses
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"--listen takes HOST:PORT with a port from 1 to 65535 (e.g. 0.0.0.0:9464 or "
                                 f"[::]:9464), got {listen!r}")
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        stopping.set()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, stop)
    models = ModelSource(model_uri, tracking_uri=tracking_uri)
    loaded = _first_model(models, stopping, reload_interval)
    if loaded is None:
        log.info("stopped before a model was loaded")
        return
    detector, info = loaded
    source = PrometheusSource(spec, shard=shard.index if spec.sharded_queries else None)
    watcher = Watcher(spec, source, detector, info, shard=shard)
    loop = WatchLoop(watcher, models, reload_interval=reload_interval, stop_event=stopping)
    stall_after = max(3 * spec.step, 60.0) + spec.prometheus.timeout * len(spec.columns)

    def healthy() -> bool:
        return time.time() - loop.heartbeat < stall_after

    try:
        server = ExpositionServer(watcher.snapshot, healthy, host, int(port)).start()
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {listen}: {exc.strerror}") from None
    log.info("watching %d metrics of %s every %g s with model %s version %s (shard %d/%d); metrics on http://%s/metrics",
             len(spec.columns), spec.prometheus.url, spec.step, info.name, info.version, shard.index, shard.count,
             f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}")
    runner = threading.Thread(target=loop.run, name="watch-loop")
    runner.start()
    while runner.is_alive():  # the main thread stays free to receive signals
        runner.join(0.5)
    server.stop()
    source.close()
    log.info("stopped")


def _first_model(models: Any, stopping: threading.Event, reload_interval: float) -> tuple[Any, Any] | None:
    """The model to start with. A registry URI that cannot be loaded yet (registry down, alias not
    set) is retried with backoff, as a pod would wait; a local directory that is not a model fails now."""
    from anomaly_ae.exceptions import ModelLoadError

    remote = models.uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))
    delay = 5.0
    while not stopping.is_set():
        try:
            return models.load()
        except ModelLoadError as exc:
            if not remote:
                raise
            log.error("cannot load %s yet: %s; retrying in %.0f s", models.uri, exc, delay)
        stopping.wait(delay)
        delay = min(delay * 2, max(reload_interval, 5.0))
    return None


# ---------------------------------------------------------------------------- backtest
def backtest(
    prometheus: Path = typer.Option(..., "--prometheus", help="The watch spec the model is watched with."),
    model: str = typer.Option(..., help="The series model (models:/ URI or saved directory)."),
    start: str = typer.Option(..., help="Start: -7d, RFC 3339 or unix seconds."),
    end: str = typer.Option("now", help="End: now, -1h, RFC 3339 or unix seconds."),
    labels: Optional[Path] = typer.Option(None, help="CSV of known incidents: series,start,end (times as for "
                                                     "--start); reports event precision and recall."),
    out: Optional[Path] = typer.Option(None, help="Directory for scores.csv, summary.json and a plot per alerting "
                                                  "series (metric, score, threshold)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI; default MLFLOW_TRACKING_URI."),
    threads: int = typer.Option(DEFAULT_THREADS, min=1, help="torch CPU threads for this process."),
) -> None:
    """Score a past range as the watcher would have: alerts per day, and event precision/recall with --labels."""
    friendly_errors(_backtest)(prometheus, model, start, end, labels, out, tracking_uri, threads)


def run_backtest(spec: Any, detector: Any, start: float, end: float, source: Any) -> Any:
    """Scores of every step in [start, end] (on the grid) per series, each by the window ending at
    it, and the alert rule's verdicts, the rule run over the `lookback` steps before `start` too:
    what a watcher started at `start` reports."""
    import numpy as np
    import pandas as pd

    from anomaly_ae.watch.source import TIME_COLUMN, fetch_frame
    from anomaly_ae.watch.watcher import model_columns

    framing = detector.framing_
    context = int(framing.window) - 1 + int(framing.max_gap)
    warm_from = start - detector.alert_rule_.lookback * spec.step
    frame, report = fetch_frame(source, warm_from - context * spec.step, end, max_series=spec.watch.max_series)
    rename = model_columns(spec, framing)
    rows = np.flatnonzero((frame[TIME_COLUMN] >= pd.Timestamp(warm_from, unit="s")).to_numpy())
    table = frame.iloc[rows][[TIME_COLUMN, spec.series_label]].reset_index(drop=True)
    if len(rows) == 0:
        return table.assign(score=[], p_value=[], is_anomaly=[], alert=[], top_metric=[]), frame, report
    result = detector.inference_.score(frame.rename(columns=rename), top_k=1, rows=rows)
    table["score"], table["p_value"], table["is_anomaly"] = result.scores, result.p_values, result.is_anomaly
    table["top_metric"] = [f[0] for f in result.top_features]
    alerts = np.zeros(len(table), dtype=bool)
    for _, positions in table.groupby(spec.series_label, sort=False).indices.items():
        alerts[positions] = detector.alert_rule_.apply(table["is_anomaly"].to_numpy()[positions])
    table["alert"] = alerts
    table = table[table[TIME_COLUMN] >= pd.Timestamp(start, unit="s")].reset_index(drop=True)
    return table, frame, report


def _backtest(spec_path: Path, model_uri: str, start: str, end: str, labels_path: Path | None, out: Path | None,
              tracking_uri: str | None, threads: int) -> None:
    import numpy as np
    import pandas as pd

    from anomaly_ae.evaluation import event_metrics, plot_series
    from anomaly_ae.exceptions import DataError
    from anomaly_ae.watch.source import TIME_COLUMN, PrometheusSource
    from anomaly_ae.watch.spec import load_spec
    from anomaly_ae.watch.watcher import ModelSource, check_model_fits_spec

    set_threads(threads)
    spec = load_spec(spec_path).spec
    # before fetching and scoring, which may take minutes
    if labels_path is not None and not labels_path.is_file():
        raise DataError(f"--labels {labels_path} is not a file; give the CSV of known incidents (series,start,end)")
    if out is not None and out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file; give a directory (it is created if missing)")
    t0, t1 = _range(spec, start, end)
    if out is not None:
        from anomaly_ae.data.io import make_directory

        make_directory(out, f"cannot create --out {out}")
    detector, info = ModelSource(model_uri, tracking_uri=tracking_uri).load()
    for note in check_model_fits_spec(detector, spec, model_uri):
        console.print(f"[yellow]warning:[/] {escape(note)}")
    with PrometheusSource(spec) as source:
        table, frame, report = run_backtest(spec, detector, t0, t1, source)
    for line in report.lines():
        console.print(f"[yellow]note:[/] {escape(line)}")
    if not len(table):  # "0 alerts" from a range with no data would read as a quiet week
        raise DataError(f"no step of the range {start} to {end} has data for the spec's metrics; check the range "
                        "and the queries (the notes above say what was found)")
    days = (t1 - t0 + spec.step) / 86_400
    label = spec.series_label
    summary: dict[str, Any] = {
        "model": {"name": info.name, "version": info.version, "uri": info.uri}, "start": t0, "end": t1,
        "step_seconds": spec.step, "steps_scored": int(len(table)), "series": int(table[label].nunique()),
        "flagged_steps": int(table["is_anomaly"].sum()), "alerts": int(table["alert"].sum()),
        "alerts_per_day": float(table["alert"].sum() / days),
        "alerts_by_series": {str(k): int(v) for k, v in table.groupby(label)["alert"].sum().items() if v}}
    if labels_path is not None:
        truth = _incident_rows(labels_path, table, label)
        if not truth.any():
            console.print(f"[yellow]note:[/] no labelled incident of {escape(str(labels_path))} lies in the range "
                          "scored, so event recall is undefined (null); widen --start/--end to cover them")
        flags, alerts = table["is_anomaly"].to_numpy(), table["alert"].to_numpy()
        series = table[label].to_numpy()
        grace = {"by_flagged_steps": 0, "by_alerts": detector.alert_rule_.within - 1}  # see event_metrics
        for name, marks in (("by_flagged_steps", flags), ("by_alerts", alerts)):
            summary[f"events_{name}"] = event_metrics(marks, truth, series, grace=grace[name]).to_dict()
    summary = _finite_or_null(summary)  # strict JSON: an undefined rate is null, not NaN
    console.print(json.dumps(summary, indent=2, default=float), markup=False)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        table.assign(**{TIME_COLUMN: table[TIME_COLUMN].dt.strftime("%Y-%m-%dT%H:%M:%SZ")}).to_csv(
            out / "scores.csv", index=False)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
        alerting = sorted(summary["alerts_by_series"], key=lambda s: -summary["alerts_by_series"][s])[:12]
        for name in alerting or sorted(table[label].unique())[:1]:
            part = table[table[label] == name]
            values = frame[(frame[label] == name) & (frame[TIME_COLUMN] >= pd.Timestamp(t0, unit="s"))]
            plot_series(values[spec.columns].to_numpy(), spec.columns, part["score"].to_numpy(),
                        float(detector.threshold_), None, out / f"series_{_safe(name)}.png",
                        title=f"{label}={name}: alerts at steps {np.flatnonzero(part['alert'].to_numpy()).tolist()[:8]}")
        plots = f"{len(alerting)} plot(s), one per alerting series" if alerting else \
            "1 plot (no series alerted: the first one)"
        console.print(f"wrote scores.csv, summary.json and {plots} to {out}")


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _incident_rows(path: Path, table: Any, label: str) -> Any:
    """1 for rows inside a listed incident of their series."""
    import csv

    import numpy as np

    from anomaly_ae.exceptions import DataError
    from anomaly_ae.watch.source import TIME_COLUMN
    from anomaly_ae.watch.spec import WatchSpecError, parse_time

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeError, csv.Error) as exc:
        raise DataError(f"cannot read the incidents in {path.name} ({type(exc).__name__}: {exc}); write a UTF-8 CSV "
                        "with the header series,start,end and one incident per line") from None
    if not lines:
        raise DataError(f"{path.name} is empty; write a CSV with the header series,start,end and one incident per "
                        "line")
    header = [name.strip() for name in lines[0]]
    if not {"series", "start", "end"} <= set(header):
        raise DataError(f"{path.name} needs the columns series,start,end (one incident per line); "
                        f"it has {', '.join(header)}")
    times = table[TIME_COLUMN].to_numpy().astype("datetime64[ms]").astype(np.int64) / 1000.0
    names = table[label].astype(str).to_numpy()
    known = set(names.tolist())
    truth = np.zeros(len(table), dtype=np.int64)
    now = time.time()
    for line, fields in enumerate(lines[1:], start=2):  # line 1 is the header
        where = f"{path.name} line {line}"
        if not any(field.strip() for field in fields):
            continue  # a blank line
        if len(fields) != len(header):
            raise DataError(f"{where} has {len(fields)} fields where the header has {len(header)}")
        row = dict(zip(header, (field.strip() for field in fields)))
        series, start, end = row["series"], row["start"], row["end"]
        if not (series and start and end):
            raise DataError(f"{where} has an empty series, start or end; give all three")
        try:
            lo, hi = parse_time(start, now), parse_time(end, now)
        except WatchSpecError as exc:
            raise DataError(f"{where}: {exc}") from None
        if hi < lo:
            raise DataError(f"{where} ends ({end}) before it starts ({start}); swap them")
        if series not in known:  # its recall would be computed over fewer incidents than listed
            raise DataError(f"{where} names the series {series!r}, which has no data in the range "
                            f"(series with data: {', '.join(sorted(known)[:10])}{'...' if len(known) > 10 else ''}); "
                            "drop the line or check the series label")
        truth[(names == series) & (times >= lo) & (times <= hi)] = 1
    return truth


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
