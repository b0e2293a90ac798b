"""A real Prometheus scraping a real scoring service, queried with the dashboard's own PromQL.

The service (2 workers, as in docker-compose.yml) serves a small `ae` model from a local directory.
Debian's `prometheus` runs on 127.0.0.1 on a free port with a temporary storage directory, the
project's deployment/prometheus/prometheus.yml (target pointed at the service, 1 s intervals) and its
alert rules. Scoring traffic with injected anomalies, bad requests and unauthenticated requests is
sent; the dashboard's key queries, run through Prometheus' HTTP API, must return what was sent.
"""

from __future__ import annotations

import collections
import math
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from prometheus_support import PROM_DIR, panel_query, prometheus, render
from service_support import SCORE, Service, free_port, metric_value, train_model

from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.service.middleware import METHODS

pytestmark = pytest.mark.slow

SCRAPE = "1s"


class Prometheus:
    def __init__(self, config: Path, storage: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.log_path = log
        self.proc = subprocess.Popen(
            [prometheus(), f"--config.file={config}", f"--storage.tsdb.path={storage}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> "Prometheus":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready: {self.log_path.read_text()[-2000:]}")

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        response = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=30)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value an instant query returns (None when it returns nothing)."""
        result = self.query(expr, at)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def by(self, expr: str, label: str, at: float | None = None) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr, at)}

    def last_scrape(self) -> float:
        """The timestamp (s) of the newest sample scraped from the service."""
        return self.value('max(timestamp(anomaly_ae_rows_scored_total{job="anomaly-ae"}))')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_until(predicate, timeout: float = 60.0, step: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    prometheus()  # skip early (with the reason) if it cannot be installed
    root = tmp_path_factory.mktemp("prom-integration")
    detector = train_model(root / "model", seed=1)
    mp = root / "multiproc"
    mp.mkdir()
    service = Service(root / "model", workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(mp)}, log=root / "service.log")
    prom = None
    try:
        service.wait_ready()
        wait_until(lambda: metric_value(httpx.get(f"{service.url}/metrics").text, "anomaly_ae_model_ready") == 1
                   and len(list(mp.glob("gauge_livemin_*.db"))) == 2, timeout=120, what="both workers ready")

        # The project's scrape config and rules, with the target and intervals changed for the test.
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval=SCRAPE, evaluation_interval=SCRAPE)
        config["rule_files"] = [str(PROM_DIR / pattern) for pattern in config["rule_files"]]
        jobs = [job for job in config["scrape_configs"] if job["job_name"] == "anomaly-ae"]
        assert len(jobs) == 1
        jobs[0]["static_configs"][0]["targets"] = [f"127.0.0.1:{service.port}"]
        jobs[0]["scrape_timeout"] = SCRAPE
        config["scrape_configs"] = jobs
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))

        prom = Prometheus(root / "prometheus.yml", root / "tsdb", root / "prometheus.log").wait_ready()
        wait_until(lambda: prom.value('up{job="anomaly-ae"}') == 1, what="the target to be scraped")
        yield service, prom, detector
    finally:
        if prom is not None:
            prom.stop()
        service.stop()


SEVERITIES = ("normal", "low", "medium", "high", "critical")


def one_row_per_severity(detector) -> list[list]:
    """Rows the model grades normal, low, medium, high and critical: one normal row with its latency
    scaled up step by step, scored locally."""
    base = make_telemetry(5, 0.0, seed=21).drop(columns=list(LABEL_COLUMNS)).iloc[[0]]
    factors = np.geomspace(1.0, 1e4, 400)
    grid = base.loc[base.index.repeat(len(factors))].reset_index(drop=True)
    grid["latency_ms"] = grid["latency_ms"] * factors
    graded = detector.score_frame(grid, top_k=0)["severity"].to_numpy()
    picked = [np.flatnonzero(graded == level) for level in SEVERITIES]
    assert all(len(p) for p in picked), dict(zip(SEVERITIES, map(len, picked)))
    return [grid.iloc[p[0]].tolist() for p in picked]


def post(service: Service, columns: list[str], data: list[list], fresh: bool = False, **kwargs) -> httpx.Response:
    url = f"{service.url}/v1/score"
    kwargs.setdefault("headers", SCORE)
    return httpx.post(url, json={"columns": columns, "data": data}, timeout=60, **kwargs)


def warm_up(service: Service, detector) -> list[str]:
    """Create every labelled series the measured traffic will touch, so that traffic only increments
    existing series (a counter's first sample says nothing about the increase that created it)."""
    columns = list(detector.schema_.names)
    response = post(service, columns, one_row_per_severity(detector))
    assert response.status_code == 200, response.text
    assert [r["severity"] for r in response.json()["results"]] == list(SEVERITIES)
    assert post(service, columns, [], headers={}).status_code == 401
    bad = httpx.post(f"{service.url}/v1/score", json={"records": [{"cpu_util_pct": 1.0}]}, headers=SCORE, timeout=60)
    assert bad.status_code == 422
    return columns


def send_traffic(service: Service, columns: list[str]) -> dict:
    """Score batches with injected anomalies; also bad and unauthenticated requests. Returns the tallies."""
    frame = make_telemetry(600, anomaly_fraction=0.15, seed=11).drop(columns=list(LABEL_COLUMNS))[columns]
    sent: collections.Counter = collections.Counter()
    for start in range(0, len(frame), 50):  # a new connection per request: both workers take requests
        batch = frame.iloc[start:start + 50]
        response = post(service, columns, batch.to_numpy(dtype=object).tolist())
        assert response.status_code == 200, response.text
        result = response.json()
        sent["rows"] += result["n_rows"]
        sent["anomalies"] += result["n_anomalies"]
        sent["score_requests"] += 1
        sent.update(f"severity:{r['severity']}" for r in result["results"] if r["is_anomaly"])
    for _ in range(3):  # a missing column: 422
        bad = httpx.post(f"{service.url}/v1/score", json={"records": [{"cpu_util_pct": 1.0}]}, headers=SCORE,
                         timeout=60)
        assert bad.status_code == 422
        sent["invalid"] += 1
        sent[f"invalid:{bad.json()['error']['code']}"] += 1
    for _ in range(2):  # no key: 401
        assert post(service, columns, [], headers={}).status_code == 401
        sent["unauthenticated"] += 1
    return sent


SCORE_REQUESTS = 'sum by (status) (anomaly_ae_http_requests_total{job="anomaly-ae", route="/v1/score"})'


def service_counts(service: Service) -> tuple[float, dict[str, float]]:
    """(rows scored, POST /v1/score requests by status class) as the service counts them now."""
    text = httpx.get(f"{service.url}/metrics", timeout=30).text
    requests = {status: sum(metric_value(text, "anomaly_ae_http_requests_total", route="/v1/score", method=method,
                                         status=status) for method in (*METHODS, "OTHER"))
                for status in ("2xx", "4xx", "5xx")}
    return metric_value(text, "anomaly_ae_rows_scored_total"), {k: v for k, v in requests.items() if v}


def settled(service: Service, prom: Prometheus, rows_query: str) -> float:
    """The service's rows-scored total once Prometheus has scraped all of it and every scoring request
    (earlier tests' traffic included). A request is counted just after its response is sent, so the
    service's own counters are read again after Prometheus caught up, until they have not moved."""
    deadline = time.monotonic() + 60
    while True:
        rows, requests = service_counts(service)
        wait_until(lambda: prom.value(rows_query) == rows and prom.by(SCORE_REQUESTS, "status") == requests,
                   what="Prometheus to see every row and request counted so far")
        if service_counts(service) == (rows, requests):
            return rows
        assert time.monotonic() < deadline, "the service's counters kept moving with no traffic sent"


def test_dashboard_queries_report_the_traffic_sent(stack):
    service, prom, detector = stack
    rows_query = render(panel_query("Rows scored (counter total)"))
    settled(service, prom, rows_query)
    before = prom.last_scrape()  # counters below count from this sample: earlier tests' traffic is in it
    columns = warm_up(service, detector)
    warm_rows = len(SEVERITIES)
    base_rows = settled(service, prom, rows_query)
    warm_anomalies = warm_rows - 1
    start = prom.last_scrape()  # a sample with the warm-up counted and nothing else

    sent = send_traffic(service, columns)
    assert sent["anomalies"] > 20, "the batches contain anomalies the model flags"
    wait_until(lambda: prom.value(rows_query) == base_rows + sent["rows"], what="the last scrape to see every row")
    last = prom.last_scrape()
    wait_until(lambda: prom.last_scrape() >= last + 3, what="a few more scrapes and rule evaluations")
    end = prom.last_scrape()

    def increase(expr: str, label: str | None = None):
        if label:
            now, then = prom.by(expr, label, at=end), prom.by(expr, label, at=before)
            return {k: v - then.get(k, 0.0) for k, v in now.items()}
        return prom.value(expr, at=end) - (prom.value(expr, at=before) or 0.0)

    # counters: exact
    total_rows = warm_rows + sent["rows"]
    assert increase(render(panel_query("Anomalies flagged (counter total)"))) == warm_anomalies + sent["anomalies"]
    assert increase('sum(anomaly_ae_score_bucket{job="anomaly-ae", le="+Inf"})') == total_rows
    assert increase('sum(anomaly_ae_p_value_count{job="anomaly-ae"})') == total_rows
    requests = increase('sum by (status) (anomaly_ae_http_requests_total{job="anomaly-ae", route="/v1/score"})',
                        "status")
    assert requests == {"2xx": 1 + sent["score_requests"], "4xx": 2 + sent["invalid"] + sent["unauthenticated"]}

    # Range and rate panels over exactly the measured traffic: the window runs from the sample just
    # before it to the sample just after it, so Prometheus extrapolates nothing.
    millis = round((end - start) * 1000)  # sample timestamps are whole milliseconds
    seconds = millis / 1000
    window = {"__range": f"{millis}ms", "__rate_interval": f"{millis}ms"}

    def panel(title: str, ref: str = "A", label: str | None = None):
        expr = render(panel_query(title, ref), **window)
        return prom.by(expr, label, at=end) if label else prom.value(expr, at=end)

    share = sent["anomalies"] / sent["rows"]
    assert panel("Anomaly share (time range)") == pytest.approx(share, rel=1e-9)
    assert panel("Anomaly rate (share of scored rows)") == pytest.approx(share, rel=1e-9)
    assert panel("Rows scored per second") * seconds == pytest.approx(sent["rows"], rel=1e-9)
    by_severity = {k: v * seconds for k, v in panel("Anomalies by severity", label="severity").items()}
    expected = {level: float(sent[f"severity:{level}"]) for level in SEVERITIES[1:]}
    assert by_severity == pytest.approx(expected, rel=1e-9)
    by_route = panel("Request rate by route and status", label="status")  # only /v1/score and /metrics here
    scored = prom.by(render('sum by (status) (rate(anomaly_ae_http_requests_total{job=~"$job", '
                            'route="/v1/score"}[$__rate_interval]))', **window), "status", at=end)
    assert scored["2xx"] * seconds == pytest.approx(sent["score_requests"], rel=1e-9)
    assert scored["4xx"] * seconds == pytest.approx(sent["invalid"] + sent["unauthenticated"], rel=1e-9)
    assert set(by_route) >= {"2xx", "4xx"}
    assert not panel("5xx error ratio"), "no API request failed (the ratio is 0, or empty without any 5xx series)"
    invalid = {k: v * seconds for k, v in panel("Refused requests by reason", label="reason").items()}
    assert invalid == pytest.approx({k.split(":", 1)[1]: float(v) for k, v in sent.items()
                                     if k.startswith("invalid:")}, rel=1e-9)
    auth = {k: v * seconds for k, v in panel("Refused requests by reason", "B", label="status").items()}
    # 403 is there at 0: every status series exists from start-up
    assert auth == pytest.approx({"401": float(sent["unauthenticated"]), "403": 0.0}, rel=1e-9)

    # latency quantiles: finite, ordered, within the histogram's range
    quantiles = [panel("Scoring latency quantiles (POST /v1/score)", ref) for ref in "ABC"]
    assert all(q is not None and 0 < q <= 10 for q in quantiles), quantiles
    assert quantiles[0] <= quantiles[1] <= quantiles[2]

    # heatmaps: one series per bucket; the +Inf bucket counts every row scored in the window
    for title in ("Score distribution", "p-value distribution"):
        buckets = panel(title, label="le")
        assert len(buckets) > 5 and buckets["+Inf"] == pytest.approx(sent["rows"], rel=1e-9)
        counts = [buckets[le] for le in sorted(buckets, key=lambda b: float(b))]
        assert counts == sorted(counts), "cumulative buckets"

    # the model: version, threshold, readiness, no failed reloads
    versions = prom.query(render(panel_query("Model version served")))
    assert len(versions) == 1 and versions[0]["metric"]["model_type"] == "ae"
    assert float(versions[0]["value"][1]) == 1  # one target serving it
    assert prom.value(render(panel_query("Model threshold"))) == pytest.approx(detector.threshold_, rel=1e-9)
    assert prom.value(render(panel_query("Model ready"))) == 1
    assert prom.value(render(panel_query("Targets up"))) == 1
    failures = prom.by('anomaly_ae_model_reload_failures_total{job="anomaly-ae"}', "reason")
    assert failures and set(failures.values()) == {0.0}  # every reason's series exists, none counted

    # drift: every tracked numeric input has a finite mean-shift series
    shift = prom.by(render(panel_query("Mean shift per feature (training std devs)")), "feature")
    numeric = [c.name for c in detector.schema_.columns if c.kind == "numeric"]
    assert set(numeric) <= set(shift) and all(math.isfinite(v) for v in shift.values())


def test_drift_panel_follows_a_shifted_input(stack):
    """Inputs whose cpu is 40 points above normal: the panel's cpu_util_pct line climbs past the
    AnomalyAEInputDrift limit (0.5 training std devs). The gauges are rolling (about 1000 rows) and
    published at most once a second per worker, so traffic continues until Prometheus shows it."""
    service, prom, detector = stack
    columns = list(detector.schema_.names)
    query = render(panel_query("Mean shift per feature (training std devs)"))
    before = prom.by(query, "feature")["cpu_util_pct"]
    frame = make_telemetry(50, 0.0, seed=12).drop(columns=list(LABEL_COLUMNS))[columns]
    frame["cpu_util_pct"] += 40.0
    data = frame.to_numpy(dtype=object).tolist()
    deadline = time.monotonic() + 60
    shift = before
    while time.monotonic() < deadline and shift <= 0.5:
        assert post(service, columns, data).status_code == 200
        time.sleep(0.2)
        shift = prom.by(query, "feature")["cpu_util_pct"]
    assert shift > 0.5, f"cpu_util_pct mean shift stayed at {shift} (before: {before})"
    assert shift > before


def test_rules_load_and_evaluate_cleanly(stack):
    service, prom, detector = stack
    # traffic of this test's own for the recording rules to compute on
    columns = list(detector.schema_.names)
    frame = make_telemetry(200, anomaly_fraction=0.15, seed=13).drop(columns=list(LABEL_COLUMNS))[columns]
    for start in range(0, len(frame), 50):
        assert post(service, columns, frame.iloc[start:start + 50].to_numpy(dtype=object).tolist()).status_code == 200
    rules = _rules(prom)
    local = [group for path in sorted((PROM_DIR / "rules").glob("*.rules.yml"))  # the watcher's rules too
             for group in yaml.safe_load(path.read_text())["groups"]]
    assert len(rules) == sum(len(g["rules"]) for g in local)
    rules = wait_until(lambda: (lambda now: now if all(r["health"] != "unknown" for r in now) else None)(
        _rules(prom)), timeout=30, what="every rule evaluated")
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # a healthy, ready service with normal traffic fires nothing
    firing = [a for a in httpx.get(f"{prom.url}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
              if a["state"] == "firing"]
    assert not firing, firing
    # The recording rules compute on real data: rate() needs the counters to grow between two
    # scrapes, so this test keeps scoring (its own traffic, whatever ran before) until they show it.
    batches = [frame.iloc[start:start + 50].to_numpy(dtype=object).tolist() for start in range(0, len(frame), 50)]

    def recorded(query: str) -> float | None:
        assert post(service, columns, batches[int(time.monotonic()) % len(batches)]).status_code == 200
        return prom.value(query) or None

    wait_until(lambda: recorded('anomaly_ae:http_requests:rate5m{route="/v1/score", status="2xx"}'),
               what="the request-rate recording rule")
    ratio = wait_until(lambda: recorded("anomaly_ae:anomaly_ratio:rate15m"), what="the anomaly-ratio rule")
    assert 0 < ratio < 1


def _rules(prom: Prometheus) -> list[dict]:
    groups = httpx.get(f"{prom.url}/api/v1/rules", timeout=30).json()["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]
