"""The Prometheus watcher's deployment (issue 13, `anomaly-ae watch`), checked without a cluster, a Docker
engine or Grafana, in the manner of tests/test_deployment.py:

- docker-compose.yml: the `watcher` service (same image, the contract's command, read-only spec mount,
  locked down like the scorer, ports on 127.0.0.1 only); deployment/watch/watch.yml in the contract's format.
- Prometheus: `promtool check config` (the scrape job anomaly-ae-watch, the rule file loaded), `promtool
  check rules`, `promtool test rules`; every alert fires in one case and stays quiet in another, and the
  quiet cases bite (a rule with a shorter `for` fails them).
- Kubernetes (deployment/k8s/watch): every manifest against the API schemas (kubernetes-validate, strict),
  the kustomize rendering when kubectl is here, and the cross-references (shards, ports, probes, labels).
- Grafana: every query of the watch dashboard parsed by promtool; the overlay and table queries evaluated
  by promtool on synthetic series; every metric name from the contract (or node_exporter's, in the example).

The metric names and labels are the contract's (issue 13, "Metrics on the watcher's /metrics"), written out
below because the watcher's code (anomaly_ae/watch) is another change.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from prometheus_support import (DASHBOARD, DEPLOY, PROM_DIR, WATCH_DASHBOARD, WATCH_RULE_TESTS, WATCH_RULES,
                                WATCH_SPEC, dashboard_panels, dashboard_queries, load_dashboard, render, run_promtool)

COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
WATCH_K8S = K8S / "watch"
K8S_VERSION = "1.30.0"   # as tests/test_deployment.py
JOB = "anomaly-ae-watch"
MODEL_URI = "models:/telemetry-series@champion"
SPEC_PATH = "/etc/anomaly-ae/watch.yml"
SECRETISH = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL", re.I)

# The contract's /metrics of the watcher: metric -> (type, labels).
CONTRACT = {
    "anomaly_ae_watch_score": ("gauge", {"series"}),
    "anomaly_ae_watch_p_value": ("gauge", {"series"}),
    "anomaly_ae_watch_anomalous": ("gauge", {"series"}),
    "anomaly_ae_watch_alerts_total": ("counter", {"series"}),
    "anomaly_ae_watch_top_metric_share": ("gauge", {"series", "metric"}),
    "anomaly_ae_watch_threshold": ("gauge", set()),
    "anomaly_ae_watch_step_seconds": ("gauge", set()),
    "anomaly_ae_watch_last_step_timestamp_seconds": ("gauge", set()),
    "anomaly_ae_watch_lag_seconds": ("gauge", set()),
    "anomaly_ae_watch_last_success_timestamp_seconds": ("gauge", set()),
    "anomaly_ae_watch_series": ("gauge", set()),
    "anomaly_ae_watch_series_dropped": ("gauge", set()),
    "anomaly_ae_watch_stale_series": ("gauge", set()),
    "anomaly_ae_watch_incomplete_series": ("gauge", {"metric"}),
    "anomaly_ae_watch_queries_total": ("counter", {"metric"}),
    "anomaly_ae_watch_query_errors_total": ("counter", {"metric", "reason"}),
    "anomaly_ae_watch_evaluations_total": ("counter", {"result"}),
    "anomaly_ae_watch_skipped_steps_total": ("counter", set()),
    "anomaly_ae_watch_evaluation_duration_seconds": ("histogram", set()),
    "anomaly_ae_watch_model_info": ("gauge", {"name", "version", "uri"}),
    "anomaly_ae_watch_model_reloads_total": ("counter", {"result"}),
    "anomaly_ae_watch_shard_info": ("gauge", {"shard", "shards"}),
}
# Labels Prometheus attaches to every target (static config, pod discovery, ServiceMonitor).
TARGET_LABELS = {"job", "instance", "service", "namespace", "pod", "container", "endpoint"}
ALERTS = {"AnomalyAEWatchSeriesAnomalous", "AnomalyAEWatchFallingBehind", "AnomalyAEWatchQueryFailures",
          "AnomalyAEWatchStale", "AnomalyAEWatchSeriesDropped", "AnomalyAEWatchSeriesIncomplete",
          "AnomalyAEWatchDown"}


def exported_samples() -> dict[str, set[str]]:
    """Every sample name the watcher's /metrics has -> its label names."""
    out = {}
    for name, (kind, labels) in CONTRACT.items():
        if kind == "histogram":
            out.update({name + "_bucket": labels | {"le"}, name + "_sum": labels, name + "_count": labels})
        else:
            out[name] = labels
    return out


# ============================================================================ PromQL, without a parser
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: strings, matchers, ranges and label lists removed, then
    every identifier that is not a function or aggregation call (followed by "(") nor a keyword."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group(0).lower() in _KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def matchers(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names in its selector) for every selector with braces."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return [(name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", inner)))
            for name, inner in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", text)]


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {s.strip() for s in group.split(",") if s.strip()}
    return labels


def test_the_promql_helpers_find_names_and_labels():
    expr = ('sum by (le) (rate(foo_bucket{a="b", c=~"x{1}"}[5m])) / on (x) group_left bar offset 5m '
            '* 1e3 + topk(1, baz) and count_values("up", qux)')
    assert metric_names(expr) == {"foo_bucket", "bar", "baz", "qux"}
    assert matchers(expr) == [("foo_bucket", {"a", "c"})]
    assert grouping_labels(expr) == {"le", "x"}


def promtool_parses(tmp_path: Path, exprs: list[str]) -> subprocess.CompletedProcess:
    """promtool checks each expression as a recording rule: it rejects invalid PromQL."""
    rules = [{"record": f"check:query_{i}", "expr": expr} for i, expr in enumerate(exprs)]
    path = tmp_path / f"check-{len(list(tmp_path.iterdir()))}.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    return run_promtool("check", "rules", str(path))


# ============================================================================ the example spec
@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(WATCH_SPEC.read_text())


def test_the_example_spec_follows_the_contract(spec, tmp_path):
    assert set(spec) <= {"prometheus", "series_label", "step", "metrics", "model", "watch"}
    assert {"prometheus", "series_label", "step", "metrics"} <= set(spec)
    assert spec["series_label"] == "instance"
    assert re.fullmatch(r"\d+(ms|s|m|h)", spec["step"])
    assert set(spec["watch"]) <= {"evaluation_delay", "max_series"} and spec["watch"]["max_series"] > 0
    assert isinstance(spec["model"], dict) and spec["model"].get("model")

    prometheus = spec["prometheus"]
    assert set(prometheus) <= {"url", "auth", "tls", "timeout"}
    assert prometheus["url"] == "http://prometheus:9090", "the compose service"
    for key, value in (prometheus.get("auth") or {}).items():  # secrets only from the environment
        assert key.endswith("_env") or (key == "basic" and all(k.endswith("_env") for k in value)), key

    queries = spec["metrics"]
    assert len(queries) >= 3 and all(re.fullmatch(r"[a-z][a-z0-9_]*", column) for column in queries)
    result = promtool_parses(tmp_path, list(queries.values()))
    assert result.returncode == 0, result.stdout + result.stderr
    for column, query in queries.items():
        # one series per instance: every aggregation keeps exactly the series label
        aggregations = re.findall(r"\b(?:sum|avg|max|min|count)\s+by\s*\(([^)]*)\)", query)
        assert aggregations and all(a.strip() == spec["series_label"] for a in aggregations), column
        assert metric_names(query) and all(n.startswith("node_") for n in metric_names(query)), \
            f"{column}: the example reads node_exporter metrics"


def test_both_specs_load_with_the_watchers_own_parser(tmp_path):
    """The watcher's parser (strict: unknown fields refused) accepts the example and the ConfigMap's copy."""
    watch_spec = pytest.importorskip("anomaly_ae.watch.spec", reason="the watcher's code (anomaly_ae/watch) is not here")
    example = watch_spec.load_spec(WATCH_SPEC).spec
    assert example.series_label == "instance" and example.step == 15.0 and len(example.columns) >= 3
    configmap = yaml.safe_load((WATCH_K8S / "configmap.yaml").read_text())
    (tmp_path / "watch.yml").write_text(configmap["data"]["watch.yml"])
    in_cluster = watch_spec.load_spec(tmp_path / "watch.yml").spec
    assert in_cluster.fingerprint() == example.fingerprint(), "the same data: queries, series label, step"


def test_the_kubernetes_spec_is_the_example_with_the_cluster_prometheus(spec):
    configmap = yaml.safe_load((WATCH_K8S / "configmap.yaml").read_text())
    in_cluster = yaml.safe_load(configmap["data"]["watch.yml"])
    assert in_cluster["prometheus"]["url"].startswith("http://") and \
        in_cluster["prometheus"]["url"] != spec["prometheus"]["url"]
    same = copy.deepcopy(in_cluster)
    same["prometheus"]["url"] = spec["prometheus"]["url"]
    assert same == spec, "k8s/watch/configmap.yaml must be deployment/watch/watch.yml with another URL"


# ============================================================================ docker compose
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_the_watcher_with_the_contract_command(compose):
    services = compose["services"]
    watcher, scorer = services["watcher"], services["scorer"]
    assert watcher["image"] == scorer["image"] and watcher["build"] == scorer["build"], "the same image"
    command = watcher["entrypoint"] + watcher["command"]
    assert command == ["anomaly-ae", "watch", "--prometheus", SPEC_PATH, "--model", MODEL_URI,
                       "--listen", "0.0.0.0:9464"]
    assert watcher["environment"]["MLFLOW_TRACKING_URI"] == scorer["environment"]["MLFLOW_TRACKING_URI"]
    assert watcher["depends_on"]["mlflow"]["condition"] == "service_healthy"

    mounts = {v.split(":")[1]: v for v in watcher["volumes"]}
    assert mounts[SPEC_PATH] == f"./watch/watch.yml:{SPEC_PATH}:ro", "the spec, read-only"
    assert (COMPOSE.parent / "watch" / "watch.yml").resolve() == WATCH_SPEC.resolve()

    health = " ".join(watcher["healthcheck"]["test"])
    assert "http://127.0.0.1:9464/healthz" in health, "the image's HEALTHCHECK asks the scorer's port"


def test_compose_watcher_is_locked_down_like_the_scorer(compose):
    watcher, scorer = compose["services"]["watcher"], compose["services"]["scorer"]
    assert watcher["read_only"] is True and watcher["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in watcher["security_opt"]
    assert watcher["user"] == scorer["user"] and watcher["user"].split(":")[0] not in ("0", "root")
    assert sorted(watcher["tmpfs"]) == sorted(scorer["tmpfs"]), "the image's writable paths"
    for key, value in watcher["environment"].items():
        assert not SECRETISH.search(key) or re.search(r"\$\{\w+", str(value)), f"{key}: from deployment/.env"


def test_compose_binds_every_published_port_to_loopback(compose):
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published["watcher"] == ["127.0.0.1:9464:9464"]
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_compose_resolves_the_watcher_on_loopback(tmp_path):
    """`docker compose config` (or Debian's docker-compose 1.29) resolves the file as the engine would."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        command = [docker, "compose"]
    elif shutil.which("docker-compose"):
        command = [shutil.which("docker-compose")]
    else:
        pytest.skip("neither `docker compose` nor docker-compose is installed here (apt-get install docker-compose)")
    env = tmp_path / "test.env"
    env.write_text("COMPOSE_PROJECT_NAME=anomaly-ae-test\nPOSTGRES_PASSWORD=pg\nMINIO_ROOT_USER=minio\n"
                   "MINIO_ROOT_PASSWORD=minio-password\nGRAFANA_ADMIN_PASSWORD=grafana\n"
                   "ANOMALY_AE_API_KEYS=a-test-key-of-enough-length\n")
    result = subprocess.run([*command, "-f", str(COMPOSE), "--env-file", str(env), "config"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    watcher = yaml.safe_load(result.stdout)["services"]["watcher"]
    ports = [p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p['published']}:{p['target']}"
             for p in watcher["ports"]]
    assert ports and all(p.startswith("127.0.0.1:9464:9464") for p in ports), ports
    assert any(v.endswith(f":{SPEC_PATH}:ro") if isinstance(v, str) else v.get("read_only") is True
               for v in watcher["volumes"])


# ============================================================================ Prometheus
def test_prometheus_scrapes_the_watcher_and_loads_its_rules(compose):
    result = run_promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = sorted((PROM_DIR / "rules").glob("*.rules.yml"))
    assert WATCH_RULES in rule_files
    assert f"{len(rule_files)} rule files found" in result.stdout, "every rule file, the watcher's too"
    assert WATCH_RULES.name in result.stdout

    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == JOB]
    assert len(jobs) == 1
    listen_port = compose["services"]["watcher"]["command"][-1].rsplit(":", 1)[1]
    assert jobs[0]["static_configs"][0]["targets"] == [f"watcher:{listen_port}"]
    assert jobs[0].get("metrics_path", "/metrics") == "/metrics"


def test_the_kubernetes_scrape_config_finds_the_watcher_pods(tmp_path):
    """Debian's promtool lacks Kubernetes discovery: the SD block is swapped for a static target (as in
    tests/test_deployment.py) and the rest is checked; the job keeps the StatefulSet's pods."""
    config = yaml.safe_load((PROM_DIR / "prometheus-kubernetes.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == JOB)
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["anomaly-ae"]
    keep = next(r for r in job["relabel_configs"]
                if r["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name"])
    pod = statefulset()["spec"]["template"]
    assert keep["action"] == "keep" and keep["regex"] == pod["metadata"]["labels"]["app.kubernetes.io/name"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == container()["ports"][0]["containerPort"]
    for each in config["scrape_configs"]:
        assert each.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        each["static_configs"] = [{"targets": ["127.0.0.1:9464"]}]
    config["rule_files"] = [str(PROM_DIR / rule) for rule in config["rule_files"]]
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump(config))
    result = run_promtool("check", "config", str(tmp_path / "k8s.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def watch_alerts() -> list[dict]:
    return [r for g in yaml.safe_load(WATCH_RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_checks_and_unit_tests_the_watch_rules():
    result = run_promtool("check", "rules", str(WATCH_RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_promtool("test", "rules", str(WATCH_RULE_TESTS))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "SUCCESS" in result.stdout


def test_every_watch_alert_fires_in_a_test_stays_quiet_in_another_and_is_documented():
    tests = yaml.safe_load(WATCH_RULE_TESTS.read_text())
    assert tests["rule_files"] == [f"../rules/{WATCH_RULES.name}"]
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    readme = (DEPLOY / "README.md").read_text()
    rules = watch_alerts()
    assert {r["alert"] for r in rules} == ALERTS and len(rules) == len(ALERTS)
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert f'job="{JOB}"' in rule["expr"], f"{name} selects the contract's job"
        assert name in fired, f"{name} has no promtool test in which it fires"
        assert name in quiet, f"{name} has no promtool test in which it must stay quiet"
        assert name in readme, f"{name} is not described in deployment/README.md"
    by_name = {r["alert"]: r for r in rules}
    assert by_name["AnomalyAEWatchSeriesAnomalous"]["labels"]["severity"] == "warning"
    for name, duration in (("AnomalyAEWatchSeriesAnomalous", "5m"), ("AnomalyAEWatchFallingBehind", "5m"),
                           ("AnomalyAEWatchQueryFailures", "10m"), ("AnomalyAEWatchSeriesDropped", "15m"), ("AnomalyAEWatchSeriesIncomplete", "15m"),
                           ("AnomalyAEWatchDown", "5m")):
        assert by_name[name]["for"] == duration, name
    assert "3 * anomaly_ae_watch_step_seconds" in by_name["AnomalyAEWatchFallingBehind"]["expr"]
    assert "5 * anomaly_ae_watch_step_seconds" in by_name["AnomalyAEWatchStale"]["expr"]
    assert "by (job, reason)" in by_name["AnomalyAEWatchQueryFailures"]["expr"]


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_the_quiet_cases_bite(alert, tmp_path):
    """With the alert's `for` a minute shorter, the unit tests fail: the cases in which it must not fire
    really check its duration."""
    groups = yaml.safe_load(WATCH_RULES.read_text())
    rule = next(r for g in groups["groups"] for r in g["rules"] if r.get("alert") == alert)
    minutes = int(rule["for"].rstrip("m"))
    rule["for"] = f"{minutes - 1}m"
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / WATCH_RULES.name).write_text(yaml.safe_dump(groups))
    shutil.copy(WATCH_RULE_TESTS, tmp_path / "tests" / WATCH_RULE_TESTS.name)
    result = run_promtool("test", "rules", str(tmp_path / "tests" / WATCH_RULE_TESTS.name))
    assert result.returncode != 0 and f"alertname: {alert}" in result.stdout + result.stderr, \
        f"the tests pass with {alert} firing a minute early"


# ============================================================================ metric names
def watch_expressions() -> list[tuple[str, str]]:
    dashboard = load_dashboard(WATCH_DASHBOARD)
    exprs = [(f"dashboard panel {title!r} {ref}", render_watch(expr, dashboard))
             for title, ref, expr in dashboard_queries(dashboard)]
    exprs += [(f"rule {r['alert']}", r["expr"]) for r in watch_alerts()]
    for rule in watch_alerts():  # the queries inside the annotations' templates (printf "...%q..." | query)
        for template in rule["annotations"].values():
            exprs += [(f"rule {rule['alert']} annotation", q.replace("%q", '"x"'))
                      for q in re.findall(r'printf "((?:[^"\\]|\\.)*)"', template) if "%q" in q]
    return exprs


def test_rules_and_dashboard_use_only_the_contract_metrics(spec):
    exported = exported_samples()
    node_metrics = set().union(*(metric_names(q) for q in spec["metrics"].values()))
    used = set()
    for where, expr in watch_expressions():
        expr = expr.replace('\\"', '"')
        names = metric_names(expr)
        assert names, f"{where} selects no metric: {expr}"
        for name in names:
            assert name in exported or name in node_metrics or name == "up", \
                f"{where} uses {name}: neither the contract's metric nor the example's node_exporter metric"
        used |= names
        for name, labels in matchers(expr):
            if name in exported:
                assert labels <= exported[name] | TARGET_LABELS, f"{where}: {name} has no label {labels}"
        if names <= set(exported) | {"up"}:
            carried = set().union(*(exported.get(n, set()) for n in names), TARGET_LABELS)
            assert grouping_labels(expr) <= carried, f"{where} groups by a label its metrics do not carry"
    # the dashboard and the rules show every metric the contract defines, but the last-step timestamp
    missing = {n for n in exported if not n.endswith(("_sum", "_count"))} - used
    assert missing <= {"anomaly_ae_watch_last_step_timestamp_seconds"}, missing


# ============================================================================ Grafana
def render_watch(expr: str, dashboard: dict, **variables: str) -> str:
    """A query with Grafana's variables as the dashboard's defaults (textboxes) and the test's choices."""
    defaults = {v["name"]: v["query"] for v in dashboard["templating"]["list"] if v["type"] == "textbox"}
    return render(expr, **{"job": JOB, "series": ".*", **defaults, **variables})


def test_every_watch_dashboard_query_parses(tmp_path):
    dashboard = load_dashboard(WATCH_DASHBOARD)
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    result = promtool_parses(tmp_path, [render_watch(expr, dashboard) for _, _, expr in queries])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout
    # and the check is not vacuous
    assert promtool_parses(tmp_path, ["sum by (le (rate(x[5m]))"]).returncode != 0


def panel(dashboard: dict, title: str) -> dict:
    found = [p for p in dashboard_panels(dashboard) if p["title"] == title]
    assert len(found) == 1, title
    return found[0]


def test_the_overlay_and_table_queries_select_the_right_series(tmp_path):
    """promtool evaluates the dashboard's queries on synthetic series: the overlay draws the metric of the
    selected series only, with `series` set from the spec's series label, next to its score."""
    dashboard = load_dashboard(WATCH_DASHBOARD)
    overlay = {t["refId"]: t["expr"] for t in panel(dashboard, "Metric, anomaly score and threshold")["targets"]}
    table = {t["refId"]: t["expr"] for t in panel(dashboard, "Top contributing metric per series")["targets"]}
    count = panel(dashboard, "Series anomalous now")["targets"][0]["expr"]
    w = f'job="{JOB}", instance="watch-0:9464"'
    def idle(instance: str) -> str:
        return f'node_cpu_seconds_total{{job="node", mode="idle", cpu="0", instance="{instance}"}}'

    series = [
        (idle("db-1:9100"), "0+30x10"),     # idle half the time: busy 0.5
        (idle("web-1:9100"), "0+45x10"),    # busy 0.25
        (idle("web-2:9100"), "0+60x10"),    # busy 0, but the watcher does not score it
        (f'anomaly_ae_watch_score{{{w}, series="db-1:9100"}}', "0.9x10"),
        (f'anomaly_ae_watch_score{{{w}, series="web-1:9100"}}', "0.1x10"),
        (f'anomaly_ae_watch_anomalous{{{w}, series="db-1:9100"}}', "1x10"),
        (f'anomaly_ae_watch_anomalous{{{w}, series="web-1:9100"}}', "0x10"),
        (f'anomaly_ae_watch_threshold{{{w}}}', "0.5x10"),
        (f'anomaly_ae_watch_top_metric_share{{{w}, series="db-1:9100", metric="cpu_busy_ratio"}}', "0.7x10"),
        (f'anomaly_ae_watch_top_metric_share{{{w}, series="web-1:9100", metric="net_rx_bytes_per_s"}}', "0.4x10"),
    ]
    at = "5m"

    def case(expr: str, samples: list[tuple[str, float]], **variables: str) -> dict:
        return {"expr": render_watch(expr, dashboard, **variables), "eval_time": at,
                "exp_samples": [{"labels": labels, "value": value} for labels, value in samples]}

    def node(instance: str) -> str:  # the metric's labels after the overlay's label_join
        return f'{{instance="{instance}", series="{instance}"}}'

    checks = [
        case(overlay["A"], [(node("db-1:9100"), 0.5), (node("web-1:9100"), 0.25)]),
        case(overlay["A"], [(node("web-1:9100"), 0.25)], series="web-1:9100"),
        case(overlay["B"], [('{series="db-1:9100"}', 0.9)], series="db-1:9100"),
        case(overlay["C"], [("{}", 0.5)]),
        case(table["A"], [('{series="db-1:9100", metric="cpu_busy_ratio"}', 0.7),
                          ('{series="web-1:9100", metric="net_rx_bytes_per_s"}', 0.4)]),
        case(table["C"], [('{series="db-1:9100"}', 1), ('{series="web-1:9100"}', 0)]),
        case(count, [("{}", 1)]),
    ]
    test = {"evaluation_interval": "1m", "tests": [{"interval": "1m", "input_series": [
        {"series": s, "values": v} for s, v in series], "promql_expr_test": checks}]}
    (tmp_path / "dashboard.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = run_promtool("test", "rules", str(tmp_path / "dashboard.test.yml"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_watch_dashboard_structure_and_provisioning(compose):
    dashboard = load_dashboard(WATCH_DASHBOARD)
    assert dashboard["uid"] != load_dashboard(DASHBOARD)["uid"]
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    boxes = []
    for p in panels:
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, p["title"]
        for other in boxes:
            overlap = (grid["x"] < other["x"] + other["w"] and other["x"] < grid["x"] + grid["w"]
                       and grid["y"] < other["y"] + other["h"] and other["y"] < grid["y"] + grid["h"])
            assert not overlap, f"{p['title']} overlaps another panel"
        boxes.append(grid)
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}" and p.get("description"), p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])
    assert {"timeseries", "state-timeline", "table", "stat", "row"} <= {p["type"] for p in panels}

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "series", "metric_query", "series_label"} <= set(variables)
    assert "anomaly_ae_watch_" in variables["job"]["definition"]
    assert variables["job"]["current"]["value"] == [JOB]
    assert "anomaly_ae_watch_score" in variables["series"]["definition"] and "$job" in variables["series"]["definition"]
    assert variables["series"]["multi"] and variables["series"]["includeAll"]
    assert variables["series_label"]["query"] == yaml.safe_load(WATCH_SPEC.read_text())["series_label"]
    assert not re.search(r"['\\$]", variables["metric_query"]["query"]), \
        "Grafana escapes quotes and backslashes in a textbox, and does not expand variables inside it"

    overlay = panel(dashboard, "Metric, anomaly score and threshold")
    targets = {t["refId"]: t["expr"] for t in overlay["targets"]}
    assert "$metric_query" in targets["A"] and "anomaly_ae_watch_score" in targets["B"]
    assert 'series=~"$series"' in targets["B"] and "anomaly_ae_watch_threshold" in targets["C"]
    right = {o["matcher"]["options"] for o in overlay["fieldConfig"]["overrides"]
             if {"id": "custom.axisPlacement", "value": "right"} in o["properties"]}
    assert {"B", "C"} <= right and "A" not in right, "score and threshold on the right axis, the metric on the left"
    flags = [p for p in panels if p["type"] == "state-timeline"]
    assert flags and "anomaly_ae_watch_anomalous" in flags[0]["targets"][0]["expr"]
    shown = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for needed in ("anomaly_ae_watch_top_metric_share", "anomaly_ae_watch_lag_seconds",
                   "sum by (reason) (rate(anomaly_ae_watch_query_errors_total", "anomaly_ae_watch_series_dropped",
                   "anomaly_ae_watch_stale_series", "anomaly_ae_watch_model_info"):
        assert needed in shown, needed
    assert WATCH_DASHBOARD.read_text().endswith("\n")

    # provisioned like the service's dashboard: the provider reads the directory compose mounts
    grafana = compose["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert (COMPOSE.parent / "grafana/dashboards").resolve() == WATCH_DASHBOARD.parent.resolve()
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/anomaly-ae.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]


# ============================================================================ Kubernetes
def watch_documents() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(WATCH_K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}


def watch_object(kind: str) -> dict:
    found = [d for docs in watch_documents().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in k8s/watch"
    return found[0]


def statefulset() -> dict:
    return watch_object("StatefulSet")


def container() -> dict:
    containers = statefulset()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _validate(doc: dict, where: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {doc['kind']} {doc['metadata'].get('name')}: {exc.message} at "
                    f"{'.'.join(map(str, exc.path))}")


@pytest.mark.parametrize("name", [n for n in watch_documents() if n != "servicemonitor.yaml"])
def test_watch_manifest_matches_the_api_schema(name):
    for doc in watch_documents()[name]:
        _validate(doc, f"k8s/watch/{name}")


def test_watch_kustomization_lists_its_manifests_and_renders():
    kustomization = yaml.safe_load((WATCH_K8S / "kustomization.yaml").read_text())
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    # like ../monitoring/servicemonitor.yaml, the ServiceMonitor (a CRD) is applied separately
    assert set(kustomization["resources"]) == set(watch_documents()) - {"servicemonitor.yaml"}
    assert kustomization["namespace"] == top["namespace"] == watch_object("ServiceMonitor")["metadata"]["namespace"]
    assert kustomization["images"] == top["images"], "the scoring service's image"
    assert container()["image"] == kustomization["images"][0]["name"]

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here for `kubectl kustomize`; the manifests are validated one by one above")
    rendered = subprocess.run([kubectl, "kustomize", str(WATCH_K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert sorted(d["kind"] for d in docs) == sorted(
        d["kind"] for name in kustomization["resources"] for d in watch_documents()[name])
    for doc in docs:
        assert doc["metadata"]["namespace"] == "anomaly-ae"
        _validate(doc, "kubectl kustomize k8s/watch")
    pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    image = kustomization["images"][0]
    assert pod["containers"][0]["image"] == f"{image['newName']}:{image['newTag']}"


def test_the_statefulset_runs_one_shard_per_pod():
    sts, service = statefulset(), watch_object("Service")
    c = container()
    args = c["command"] + c["args"]
    assert args[:2] == ["anomaly-ae", "watch"]
    options = dict(zip(args[2::2], args[3::2]))
    assert options["--model"] == MODEL_URI
    shard = re.fullmatch(r"\$\(SHARD_INDEX\)/(\d+)", options["--shard"])
    assert shard and int(shard.group(1)) == sts["spec"]["replicas"] == 3, "--shard i/n with n = replicas"
    env = {e["name"]: e for e in c["env"]}
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert "1.28" in (WATCH_K8S / "statefulset.yaml").read_text(), "the comment names the Kubernetes version"

    host, port = options["--listen"].rsplit(":", 1)
    assert host == "0.0.0.0" and int(port) == c["ports"][0]["containerPort"] and c["ports"][0]["name"] == "http"

    # the spec: the ConfigMap's key, mounted read-only where --prometheus points
    pod = sts["spec"]["template"]["spec"]
    configmap = watch_object("ConfigMap")
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    item = volume["configMap"]["items"][0]
    assert f"{mount['mountPath']}/{item['path']}" == options["--prometheus"] == SPEC_PATH
    assert item["key"] in configmap["data"]
    mlflow = env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]
    assert mlflow["name"] == configmap["metadata"]["name"]
    scorer_config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    assert configmap["data"][mlflow["key"]] == scorer_config["MLFLOW_TRACKING_URI"]
    for e in c["env"]:  # secrets only by reference
        assert "value" not in e or not SECRETISH.search(e["name"]), e["name"]
    assert env["PROMETHEUS_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True

    # the headless Service governs the StatefulSet and selects its pods
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    for selector in (sts["spec"]["selector"]["matchLabels"], service["spec"]["selector"],
                     watch_object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     watch_object("NetworkPolicy")["spec"]["podSelector"]["matchLabels"]):
        assert all(labels.get(k) == v for k, v in selector.items()), selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert watch_object("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_service_monitor_scrapes_every_shard_as_the_contract_job():
    monitor, service = watch_object("ServiceMonitor"), watch_object("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB, "job=\"anomaly-ae-watch\""
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["anomaly-ae"]


def test_watch_pod_probes_resources_and_security_match_the_scorer():
    pod = statefulset()["spec"]["template"]["spec"]
    c = container()
    scorer_pod = yaml.safe_load((K8S / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    scorer = scorer_pod["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    resources = c["resources"]
    assert resources["requests"] == {"cpu": "1", "memory": "1Gi"}, "about 1 core / 1 GiB per shard"
    assert {"cpu", "memory"} <= set(resources["limits"])
    assert "benchmarks/results/watch_throughput.md" in (WATCH_K8S / "statefulset.yaml").read_text()

    assert pod["securityContext"] == scorer_pod["securityContext"]
    assert c["securityContext"] == scorer["securityContext"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False
    account = watch_object("ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"] and account["automountServiceAccountToken"] is False
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/run/anomaly-ae"} <= mounts, "the writable paths of the read-only root filesystem"
    annotations = statefulset()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_readme_describes_the_watcher_deployment():
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("## The Prometheus watcher"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    for needed in ("StatefulSet", "--shard", "apps.kubernetes.io/pod-index", "benchmarks/results/watch_throughput.md",
                   "anomaly-ae-watch.json", "kubectl apply -k deployment/k8s/watch", "watch.yml"):
        assert needed in section, needed
