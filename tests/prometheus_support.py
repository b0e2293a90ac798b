"""Helpers for the deployment tests: promtool / prometheus binaries, and the dashboard's PromQL.

`promtool()` and `prometheus()` return the binary's path; when it is missing and this process may
install packages (root with apt-get), they run deployment/scripts/install-prometheus.sh once; they
skip the calling test only when that is impossible or fails.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deployment"
PROM_DIR = DEPLOY / "prometheus"
RULES = PROM_DIR / "rules" / "anomaly-ae.rules.yml"
RULE_TESTS = PROM_DIR / "tests" / "anomaly-ae.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "anomaly-ae.json"
INSTALL_SCRIPT = DEPLOY / "scripts" / "install-prometheus.sh"
# The Prometheus watcher (issue 13): its rules, their unit tests, its dashboard and the example spec.
WATCH_RULES = PROM_DIR / "rules" / "anomaly-ae-watch.rules.yml"
WATCH_RULE_TESTS = PROM_DIR / "tests" / "anomaly-ae-watch.rules.test.yml"
WATCH_DASHBOARD = DEPLOY / "grafana" / "dashboards" / "anomaly-ae-watch.json"
WATCH_SPEC = DEPLOY / "watch" / "watch.yml"

# Grafana's global variables and the dashboard's own, as a test renders them.
DEFAULT_VARIABLES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "job": "anomaly-ae"}


@functools.lru_cache(maxsize=1)
def _install_attempt() -> str | None:
    """Run the install script once per test session; None on success, else why it failed."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        return "not root and no sudo"
    try:
        result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{INSTALL_SCRIPT.name} failed: {exc}"
    if result.returncode != 0:
        return f"{INSTALL_SCRIPT.name} exited {result.returncode}: {(result.stderr or result.stdout)[-500:]}"
    return None


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    problem = _install_attempt()
    found = shutil.which(name)
    if found:
        return found
    pytest.skip(f"{name} is not installed and could not be installed ({problem or 'not found after install'}); "
                f"run deployment/scripts/install-prometheus.sh as root")


def promtool() -> str:
    return _binary("promtool")


def prometheus() -> str:
    return _binary("prometheus")


def run_promtool(*args: str, input_text: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], input=input_text, capture_output=True, text=True, timeout=300,
                          cwd=cwd)


# ---------------------------------------------------------------------------- the dashboard
def load_dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def dashboard_panels(dashboard: dict | None = None) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    dashboard = dashboard or load_dashboard()
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries(dashboard: dict | None = None) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL template) for every query target of the dashboard."""
    return [(p["title"], t["refId"], t["expr"]) for p in dashboard_panels(dashboard) for t in p.get("targets", [])
            if t.get("expr")]


def panel_query(title: str, ref: str = "A") -> str:
    for panel_title, ref_id, expr in dashboard_queries():
        if panel_title == title and ref_id == ref:
            return expr
    raise KeyError(f"no panel {title!r} with query {ref} in {DASHBOARD.name}")


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def render(expr: str, **variables: str) -> str:
    """A dashboard query with Grafana's variables substituted ($__rate_interval, $job, ...)."""
    values = {**DEFAULT_VARIABLES, **variables}

    def sub(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"dashboard query uses an unknown variable ${name}: {expr}")
        return values[name]

    return _VARIABLE.sub(sub, expr)
