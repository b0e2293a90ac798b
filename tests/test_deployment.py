"""deployment/ checked without a cluster or a Docker engine.

- Dockerfile: parsed; multi-stage, CPU torch by default with a CUDA build argument, non-root USER,
  HEALTHCHECK on a real route, no secrets in ENV/ARG, writable paths = the mounts compose/k8s give.
- docker-compose.yml: structure and security settings; `docker compose config` (or docker-compose)
  when a compose binary exists here.
- Kubernetes: every manifest against the API schemas (kubernetes-validate, strict), and the
  cross-references between them (labels, names, ports, probes, settings, the Secret).
- Prometheus: `promtool check config` on the scrape configs, `promtool check rules`, `promtool test
  rules` (the rule unit tests), every PromQL expression of the Grafana dashboard parsed by promtool,
  every metric and label they use defined in anomaly_ae/service/metrics.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prometheus_support import (DASHBOARD, DEPLOY, PROM_DIR, RULE_TESTS, RULES, dashboard_panels, dashboard_queries,
                                load_dashboard, render, run_promtool)

K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SECRETISH = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL", re.I)
K8S_VERSION = "1.30.0"


def settings_env_names() -> set[str]:
    from anomaly_ae.service.settings import ENV_PREFIX, ServiceSettings

    return {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}


def service_routes() -> set[str]:
    from anomaly_ae.service.routes import router

    return {route.path for route in router.routes}


# ============================================================================ Dockerfile
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        instruction, _, args = current.partition(" ")
        lines.append((instruction.upper(), args.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return lines


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            out.append([])
        if out:
            out[-1].append((instruction, args))
    return out


def env_pairs(args: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(args) if "=" in token)


def test_dockerfile_is_multi_stage_and_runs_only_the_built_venv():
    built = stages()
    assert len(built) >= 2, "expected a build stage and a runtime stage"
    names = [re.search(r"\bAS\s+(\S+)", args, re.I) for (_, args), *_ in built]
    assert all(names), "every stage is named"
    runtime = built[-1]
    copies = [args for instruction, args in runtime if instruction == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), \
        "the runtime stage copies only from the build stage (no source tree, no build tools)"
    assert not [args for instruction, args in runtime if instruction == "RUN" and "pip install" in args], \
        "nothing is pip-installed in the runtime stage"


def test_dockerfile_defaults_to_cpu_torch_with_a_cuda_build_argument():
    text = DOCKERFILE.read_text()
    args: dict[str, str] = {}  # the first default of each build argument (global ARGs come first)
    for instruction, a in dockerfile_instructions():
        if instruction == "ARG" and "=" in a:
            args.setdefault(*a.split("=", 1))
    assert args.get("TORCH_VARIANT") == "cpu"
    assert "${TORCH_VARIANT}" in args["TORCH_INDEX_URL"], "the variant selects the wheel index (cpu, cu124, ...)"
    install = [a for i, a in dockerfile_instructions() if i == "RUN" and "torch==" in a]
    assert install and "${TORCH_INDEX_URL}" in install[0], "torch is installed from the variant's index"
    assert "--build-arg TORCH_VARIANT=cu" in text, "the header documents the CUDA build"


def test_dockerfile_runtime_is_non_root_with_healthcheck_and_no_secrets():
    runtime = stages()[-1]
    users = [args for instruction, args in runtime if instruction == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root"), "runs as an unprivileged user"
    assert user.isdigit() and int(user) >= 10000, "a numeric uid (runAsNonRoot can verify it) outside system ranges"

    checks = [args for instruction, args in runtime if instruction == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0]
    path = re.search(r"/(readyz|healthz)\b", checks[0])
    assert path and f"/{path.group(1)}" in service_routes()

    for instruction, args in dockerfile_instructions():
        if instruction in ("ENV", "ARG"):
            names = env_pairs(args) if "=" in args else {args: ""}
            for name in names:
                assert not SECRETISH.search(name), f"{instruction} {name}: secrets are never baked into the image"


def test_dockerfile_writable_paths_match_the_mounts_and_the_entrypoint_exists():
    env: dict[str, str] = {}
    for instruction, args in stages()[-1]:
        if instruction == "ENV":
            env.update(env_pairs(args))
    assert env["ANOMALY_AE_HOST"] == "0.0.0.0"
    multiproc = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    assert multiproc.parent == Path("/run/anomaly-ae"), "the metrics dir lives under the one writable run dir"
    assert env["HOME"].startswith("/tmp") and env["MPLCONFIGDIR"].startswith("/tmp")
    exposed = [args for instruction, args in stages()[-1] if instruction == "EXPOSE"]
    assert exposed == [env["ANOMALY_AE_PORT"]]

    entry = json.loads([args for instruction, args in stages()[-1] if instruction == "ENTRYPOINT"][-1])
    assert entry[:2] == ["python", "-m"]
    result = subprocess.run([sys.executable, "-m", entry[2], "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--model" in result.stdout, result.stderr[-1000:]

    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[[i for i, line in enumerate(ignore) if line and not line.startswith("#")][0]] == "*", \
        "the build context is an allow-list (no .venv, .git, data or secrets sent to the builder)"


def test_dockerfile_installs_everything_the_service_imports():
    """The image installs core dependencies + EXTRAS: they must declare what the service and registry import."""
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    extras = [a.split("=", 1)[1] for i, a in dockerfile_instructions() if i == "ARG" and a.startswith("EXTRAS=")]
    assert extras, "the Dockerfile declares ARG EXTRAS=..."
    install = [a for i, a in dockerfile_instructions() if i == "RUN" and "${EXTRAS" in a]
    assert install and '".${EXTRAS:+[${EXTRAS}]}"' in install[0], "installs the package with the chosen extras"
    declared = list(project["dependencies"])
    for extra in filter(None, extras[0].split(",")):
        assert extra in project.get("optional-dependencies", {}), \
            f"the Dockerfile installs extra [{extra}], which pyproject.toml does not define"
        declared += project["optional-dependencies"][extra]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    for needed in ("torch", "fastapi", "uvicorn", "prometheus-client", "pydantic-settings", "orjson", "mlflow"):
        assert needed in names, f"the image would lack {needed}: declare it in pyproject.toml"


# ============================================================================ docker compose
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_whole_stack(compose):
    services = compose["services"]
    assert {"scorer", "mlflow", "postgres", "minio", "prometheus", "grafana"} <= set(services)
    scorer = services["scorer"]
    env = scorer["environment"]
    assert env["ANOMALY_AE_WORKERS"] == "2"
    assert env["ANOMALY_AE_MODEL_URI"].startswith("models:/")
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert scorer["build"]["dockerfile"] == "deployment/Dockerfile"
    assert (COMPOSE.parent / scorer["build"]["context"] / scorer["build"]["dockerfile"]).is_file()
    assert (COMPOSE.parent / services["mlflow"]["build"]["context"] / "Dockerfile").is_file()
    unknown = {k for k in env if k.startswith("ANOMALY_AE_")} - settings_env_names()
    assert not unknown, f"compose sets ANOMALY_AE_* variables the service does not read: {unknown}"
    mlflow_args = " ".join(services["mlflow"]["command"])
    assert "--artifacts-destination=s3://" in mlflow_args and "--serve-artifacts" in mlflow_args
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_scorer_is_locked_down(compose):
    scorer = compose["services"]["scorer"]
    assert scorer["read_only"] is True
    assert scorer["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in scorer["security_opt"]
    assert scorer["user"].split(":")[0] not in ("0", "root")
    mounts = [t.split(":")[0] for t in scorer["tmpfs"]]
    assert "/tmp" in mounts and "/run/anomaly-ae" in mounts, "the only writable paths of the read-only image"


def test_compose_keeps_secrets_out_and_ports_on_loopback(compose):
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if SECRETISH.search(key) or "PASSWORD" in str(value).upper():
                assert re.search(r"\$\{\w+", str(value)), f"{name}.{key} must come from deployment/.env, not the file"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which does not exist"
    example = (DEPLOY / ".env.example").read_text()
    for line in example.splitlines():
        if "=" in line and not line.startswith("#") and SECRETISH.search(line.split("=")[0]):
            assert line.split("=", 1)[1] == "", f".env.example must not carry a value for {line.split('=')[0]}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_compose_prometheus_and_grafana_are_wired(compose):
    services = compose["services"]
    prom_volumes = services["prometheus"]["volumes"]
    assert "./prometheus:/etc/prometheus:ro" in prom_volumes
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "anomaly-ae")
    port = compose["services"]["scorer"]["ports"][0].rsplit(":", 1)[1]
    assert job["static_configs"][0]["targets"] == [f"scorer:{port}"]

    grafana = services["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/anomaly-ae.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(
        mounts["./grafana/dashboards"])


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_validates(tmp_path):
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed here (apt-get install docker-compose); "
                    "the YAML structure is still checked by the tests above")
    env = tmp_path / "test.env"
    env.write_text("COMPOSE_PROJECT_NAME=anomaly-ae-test\nPOSTGRES_PASSWORD=pg\nMINIO_ROOT_USER=minio\n"
                   "MINIO_ROOT_PASSWORD=minio-password\nGRAFANA_ADMIN_PASSWORD=grafana\n"
                   "ANOMALY_AE_API_KEYS=a-test-key-of-enough-length\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("ANOMALY_AE_API_KEYS", "POSTGRES_PASSWORD")}
    ok = subprocess.run([*command, "-f", str(COMPOSE), "--env-file", str(env), "config", "-q"],
                        capture_output=True, text=True, env=clean, timeout=120)
    assert ok.returncode == 0, ok.stderr
    # A missing secret is refused, not silently empty.
    env.write_text(env.read_text().replace("ANOMALY_AE_API_KEYS=a-test-key-of-enough-length\n", ""))
    refused = subprocess.run([*command, "-f", str(COMPOSE), "--env-file", str(env), "config", "-q"],
                             capture_output=True, text=True, env=clean, timeout=120)
    assert refused.returncode != 0 and "ANOMALY_AE_API_KEYS" in refused.stderr


def test_scripts_are_valid_bash():
    for script in (DEPLOY / "scripts").glob("*.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
    install = (DEPLOY / "scripts" / "install-prometheus.sh").read_text()
    assert "command -v promtool" in install and "policy-rc.d" in install and "disable" in install


# ============================================================================ Kubernetes
def k8s_documents() -> dict[str, list[dict]]:
    docs = {}
    for path in sorted(K8S.rglob("*.yaml")):
        # k8s/watch (the Prometheus watcher, its own kustomization) is checked by tests/test_deployment_watch.py
        if path.name == "kustomization.yaml" or path.relative_to(K8S).parts[0] == "watch":
            continue
        docs[str(path.relative_to(K8S))] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s(kind: str) -> dict:
    found = [d for docs in k8s_documents().values() for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}"
    return found[0]


@pytest.mark.parametrize("path", [p for p in k8s_documents() if not p.startswith("monitoring/")])
def test_k8s_manifest_matches_the_api_schema(path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[test]'")
    for doc in k8s_documents()[path]:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path}: {doc['kind']} {doc['metadata'].get('name')}: {exc.message} at "
                        f"{'.'.join(map(str, exc.path))}")


def test_kustomization_lists_every_manifest_but_the_secret_example():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    top_level = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == top_level - {"secret.example.yaml"}
    image = kustomization["images"][0]["name"]
    assert k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_k8s_deployment_probes_resources_and_security():
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    routes = service_routes()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= routes
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == container["ports"][0]["name"]

    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])

    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    docker_user = [a for i, a in stages()[-1] if i == "USER"][-1].split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == docker_user
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False

    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/run/anomaly-ae"} <= mounts, "the writable paths of the read-only root filesystem"
    grace = pod["terminationGracePeriodSeconds"]
    configured = float(k8s("ConfigMap")["data"]["ANOMALY_AE_GRACEFUL_TIMEOUT_S"])
    assert grace > configured + 5, "the kubelet must wait for the preStop sleep plus the graceful shutdown"

    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in routes
    assert int(annotations["prometheus.io/port"]) == container["ports"][0]["containerPort"]


def test_k8s_settings_and_keys_come_from_configmap_and_secret():
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    configmap = k8s("ConfigMap")
    assert container["envFrom"][0]["configMapRef"]["name"] == configmap["metadata"]["name"]
    settings = settings_env_names()
    for key in configmap["data"]:
        assert key in settings or key == "MLFLOW_TRACKING_URI", f"ConfigMap key {key} is read by nothing"
        assert not SECRETISH.search(key), f"{key} belongs in the Secret"
    secret = k8s("Secret")
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert set(refs) == {"ANOMALY_AE_API_KEYS", "ANOMALY_AE_ADMIN_KEYS"}
    for ref in refs.values():
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert all(v.startswith("REPLACE") for v in secret["stringData"].values()), "the example carries no real key"


def test_k8s_objects_point_at_each_other():
    deployment, service, hpa, pdb = k8s("Deployment"), k8s("Service"), k8s("HorizontalPodAutoscaler"), \
        k8s("PodDisruptionBudget")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    name = deployment["metadata"]["name"]

    def selects(selector: dict) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(service["spec"]["selector"])
    assert selects(pdb["spec"]["selector"]["matchLabels"])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a node drain can always proceed"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == k8s("ServiceAccount")["metadata"]["name"]

    monitor = k8s("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] and endpoint["path"] == "/metrics"
    assert {"targetLabel": "job", "replacement": "anomaly-ae"} in endpoint["relabelings"]


# ============================================================================ Prometheus and Grafana
def test_promtool_checks_the_scrape_config_and_rules():
    result = run_promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = list((PROM_DIR / "rules").glob("*.rules.yml"))  # the service's and the watcher's
    assert f"{len(rule_files)} rule files found" in result.stdout, "the rules are loaded through the config"
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_kubernetes_scrape_config(tmp_path):
    """Debian's promtool is built without Kubernetes service discovery: the SD block is swapped for a
    static target and the rest (relabelling, rule files) is checked."""
    config = yaml.safe_load((PROM_DIR / "prometheus-kubernetes.yml").read_text())
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    config["rule_files"] = [str(PROM_DIR / rule) for rule in config["rule_files"]]
    (tmp_path / "k8s.yml").write_text(yaml.safe_dump(config))
    result = run_promtool("check", "config", str(tmp_path / "k8s.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [j["job_name"] for j in config["scrape_configs"]] == ["anomaly-ae", "anomaly-ae-watch"]


def test_alert_rule_unit_tests_pass():
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alerts() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def test_every_alert_is_documented_and_tested_firing():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    readme = (DEPLOY / "README.md").read_text()
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["alert"] in fired, f"{rule['alert']} has no promtool test in which it fires"
        assert rule["alert"] in readme, f"{rule['alert']} is not described in deployment/README.md"
    # the issue's list: down / not ready, 5xx ratio, p99 latency, anomaly rate vs baseline, reloads, drift
    for needed in ("ServiceDown", "NotReady", "5xx", "Latency", "AnomalyRate", "Reload", "Drift"):
        assert any(needed in name for name in names), needed


def test_every_dashboard_query_parses(tmp_path):
    """promtool parses each query (variables rendered) as a recording rule; it rejects invalid PromQL."""
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = [{"record": f"dashboard:query_{i}", "expr": render(expr)} for i, (_, _, expr) in enumerate(queries)]
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(tmp_path / "dashboard.rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout

    # and promtool does reject a broken one (the check is not vacuous)
    (tmp_path / "broken.rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "b", "rules": [{"record": "x:y", "expr": "sum by (le (rate(x[5m]))"}]}]}))
    assert run_promtool("check", "rules", str(tmp_path / "broken.rules.yml")).returncode != 0


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name /metrics can export -> its label names (from anomaly_ae/service/metrics.py)."""
    from prometheus_client.metrics import MetricWrapperBase

    from anomaly_ae.service import metrics

    out: dict[str, set[str]] = {}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames)
        suffixes = {"counter": ["_total", "_created"], "gauge": [""],
                    "histogram": ["_bucket", "_sum", "_count", "_created"]}[value._type]
        for suffix in suffixes:
            out[value._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def all_expressions() -> list[tuple[str, str]]:
    exprs = [(f"dashboard panel {title!r} {ref}", render(expr)) for title, ref, expr in dashboard_queries()]
    exprs += [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for g in rule_groups() for r in g["rules"]]
    return exprs


def test_queries_use_only_metrics_and_labels_the_service_exports():
    exported = exported_metrics()
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    target_labels = {"job", "instance", "service", "namespace", "pod"}
    used_metrics: set[str] = set()
    for where, expr in all_expressions():
        for name, matchers in re.findall(r"\b(anomaly_ae_[a-z0-9_]+)(?:\{([^}]*)\})?", expr):
            assert name in exported, f"{where} uses {name}, which anomaly_ae/service/metrics.py does not export"
            used_metrics.add(name)
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in exported[name] | target_labels, f"{where}: {name} has no label {label!r}"
        for name in re.findall(r"\b(anomaly_ae:[a-z0-9_:]+)", expr):
            assert name in recorded, f"{where} uses the recording rule {name}, which is not defined"
        labels_here = set().union(*[exported.get(n, set()) for n in re.findall(r"\banomaly_ae_[a-z0-9_]+", expr)],
                                  target_labels)
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in filter(None, (s.strip() for s in group.split(","))):
                assert label in labels_here, f"{where} groups by {label!r}, which its metrics do not carry"
    # the dashboard covers the service's main metrics
    for name in ("anomaly_ae_http_requests_total", "anomaly_ae_http_request_duration_seconds_bucket",
                 "anomaly_ae_anomalies_total", "anomaly_ae_rows_scored_total", "anomaly_ae_score_bucket",
                 "anomaly_ae_p_value_bucket", "anomaly_ae_model_info", "anomaly_ae_feature_mean_shift",
                 "anomaly_ae_model_reload_failures_total", "anomaly_ae_model_ready"):
        assert name in used_metrics, f"nothing shows {name}"


def test_dashboard_structure():
    dashboard = load_dashboard()
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    kinds = {p["type"] for p in panels}
    assert {"timeseries", "heatmap", "stat", "row"} <= kinds
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "anomaly_ae_" in variables["job"]["definition"]
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        for other in boxes:  # no two panels overlap on the grid
            overlap = (grid["x"] < other["x"] + other["w"] and other["x"] < grid["x"] + grid["w"]
                       and grid["y"] < other["y"] + other["h"] and other["y"] < grid["y"] + grid["h"])
            assert not overlap, f"{panel['title']} overlaps another panel"
        boxes.append(grid)
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)) and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
        assert panel.get("description"), f"{panel['title']} says what it shows"
    # the version the alias names next to the one served, and how many targets differ (issue 14)
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels}
    assert any("anomaly_ae_model_desired_info" in e and "anomaly_ae_model_info" in e for e in exprs.values())
    assert any("anomaly_ae_model_version_mismatch" in e for e in exprs.values())
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert {"Score distribution", "p-value distribution"} <= {p["title"] for p in heatmaps}
    for panel in heatmaps:
        assert panel["targets"][0]["format"] == "heatmap" and "_bucket" in panel["targets"][0]["expr"]
        assert "by (le)" in panel["targets"][0]["expr"]
    assert DASHBOARD.read_text().endswith("\n")


def test_bootstrap_script_registers_once(tmp_path):
    """deployment/scripts/bootstrap_model.py (the compose 'trainer'): trains + registers + promotes, then no-ops."""
    pytest.importorskip("mlflow", reason="the bootstrap script needs MLflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(TRAIN_ROWS="600", EPOCHS="5", MODEL_NAME="bootstrap-test", OMP_NUM_THREADS="1")
    script = str(DEPLOY / "scripts" / "bootstrap_model.py")
    first = subprocess.run([sys.executable, script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "@champion" in first.stdout and (tmp_path / "mlflow.db").exists()
    second = subprocess.run([sys.executable, script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0 and "nothing to do" in second.stdout, second.stderr[-3000:]
