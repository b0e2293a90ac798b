"""The watcher's /metrics and /healthz: a view of `Watcher.snapshot()`, built at each scrape.

A custom collector rather than long-lived gauges: a series that stops having data (or moves to
another shard, or is dropped by the cap) disappears from the next scrape by construction, so no
stale per-series sample is ever exported and the series count stays bounded by `max_series`.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from anomaly_ae.watch.source import QUERY_ERROR_REASONS
from anomaly_ae.watch.watcher import DURATION_BUCKETS, Snapshot

PREFIX = "anomaly_ae_watch"


class WatchCollector:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        stats = snap.stats

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

        def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

        score = gauge("score", "Latest anomaly score of the series (higher is more anomalous).", ["series"])
        p_value = gauge("p_value", "Latest p-value of the series' score against held-out normal history.", ["series"])
        anomalous = gauge("anomalous", "1 when the series' latest score is above the threshold, else 0.", ["series"])
        top = gauge("top_metric_share", "The metric that contributes most to the series' latest score, and its "
                                        "share of the score (0..1).", ["series", "metric"])
        for s in snap.scores:
            score.add_metric([s.series], s.score)
            p_value.add_metric([s.series], s.p_value)
            anomalous.add_metric([s.series], float(s.anomalous))
            top.add_metric([s.series, s.top_metric], s.top_share)
        yield from (score, p_value, anomalous, top)
        alerts = counter("alerts", "Alerts fired by the model's alert rule (k of n steps above the threshold, "
                                   "one per incident: not again until a cooldown without it).", ["series"])
        for name, n in snap.alerts_total.items():
            alerts.add_metric([name], n)
        yield alerts
        last_alert = gauge("last_alert_timestamp_seconds", "The step at which the series last alerted.", ["series"])
        for name, t in snap.last_alert.items():
            last_alert.add_metric([name], t)
        yield last_alert

        yield GaugeMetricFamily(f"{PREFIX}_threshold", "The model's threshold on the score.", value=snap.threshold)
        yield GaugeMetricFamily(f"{PREFIX}_step_seconds", "The watch spec's step.", value=snap.spec.step)
        if stats.last_step is not None:
            yield GaugeMetricFamily(f"{PREFIX}_last_step_timestamp_seconds", "The last step evaluated.",
                                    value=stats.last_step)
            yield GaugeMetricFamily(f"{PREFIX}_lag_seconds", "How far the last evaluated step is behind now.",
                                    value=max(0.0, snap.now - stats.last_step))
        if stats.last_success is not None:
            yield GaugeMetricFamily(f"{PREFIX}_last_success_timestamp_seconds",
                                    "When an evaluation last fetched and scored data.", value=stats.last_success)
        yield GaugeMetricFamily(f"{PREFIX}_series", "Series scored at the last step (this shard).",
                                value=stats.n_series)
        yield GaugeMetricFamily(f"{PREFIX}_series_dropped", "Series over max_series at the last step, not scored.",
                                value=stats.n_dropped)
        yield GaugeMetricFamily(f"{PREFIX}_stale_series", "Series scored before that had no data at the last step.",
                                value=stats.n_stale)
        incomplete = gauge("incomplete_series", "Series with data for other metrics but none for this one at the "
                                                "last step: left out, not scored.", ["metric"])
        for metric in snap.spec.columns:  # every metric from the start, at 0, for the alert rule
            incomplete.add_metric([metric], stats.incomplete.get(metric, 0))
        yield incomplete

        queries = counter("queries", "Range queries sent to Prometheus.", ["metric"])
        for metric, n in stats.queries.items():
            queries.add_metric([metric], n)
        yield queries
        errors = counter("query_errors", "Failed or unusable queries, by metric and reason.", ["metric", "reason"])
        for metric in snap.spec.columns:  # every pair exported from the start, so rate() sees the first error
            for reason in QUERY_ERROR_REASONS:
                if reason != "too_many_series":
                    errors.add_metric([metric, reason], stats.query_errors.get((metric, reason), 0))
        errors.add_metric(["*", "too_many_series"], stats.query_errors.get(("*", "too_many_series"), 0))
        yield errors
        evaluations = counter("evaluations", "Evaluations of a step, by result.", ["result"])
        for result, n in stats.evaluations.items():
            evaluations.add_metric([result], n)
        yield evaluations
        yield CounterMetricFamily(f"{PREFIX}_skipped_steps", "Steps not evaluated because the watcher fell behind "
                                                             "by more than a window.", value=stats.skipped_steps)
        # WatchStats.observe counts cumulatively (each bound counts every observation at or below it)
        buckets = [(repr(bound), n) for bound, n in zip(DURATION_BUCKETS, stats.duration_buckets)]
        buckets.append(("+Inf", stats.duration_count))
        yield HistogramMetricFamily(f"{PREFIX}_evaluation_duration_seconds", "Time to fetch and score one step.",
                                    buckets=buckets, sum_value=stats.duration_sum)
        info = gauge("model_info", "The model being watched with (1).", ["name", "version", "uri"])
        info.add_metric([snap.model.name, snap.model.version, snap.model.uri], 1)
        yield info
        reloads = counter("model_reloads", "Model reloads after the URI's alias moved, by result.", ["result"])
        for result, n in stats.reloads.items():
            reloads.add_metric([result], n)
        yield reloads
        shard = gauge("shard_info", "This replica's shard (1).", ["shard", "shards"])
        shard.add_metric([str(snap.shard.index), str(snap.shard.count)], 1)
        yield shard


class _IPv6HTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ExpositionServer:
    """GET /metrics (Prometheus text format) and GET /healthz (200 while the loop is alive)."""

    def __init__(self, snapshot: Callable[[], Snapshot], healthy: Callable[[], bool], host: str, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(WatchCollector(snapshot))  # type: ignore[arg-type]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    ok = healthy()
                    body, status, kind = (b"ok\n" if ok else b"watch loop stalled\n"), (200 if ok else 503), "text/plain"
                else:
                    body, status, kind = b"not found: try /metrics or /healthz\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                pass

        server = _IPv6HTTPServer if ":" in host else ThreadingHTTPServer
        self.httpd = server((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="watch-metrics", daemon=True)

    def start(self) -> "ExpositionServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
