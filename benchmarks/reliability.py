"""Reliability under load and faults (issue 14): every check against real processes on 127.0.0.1.

    make reliability                     # or: .venv/bin/python benchmarks/reliability.py
    python benchmarks/reliability.py --quick                 # a smoke run: shorter soak, fewer cases
    python benchmarks/reliability.py --only soak,worker_kill --out /tmp/r.json
    python benchmarks/reliability.py --set soak_s=240 --set liveness_requests=128

Trains two small telemetry autoencoders, registers them (and broken versions) in a real `mlflow
server` (SQLite, served artifacts, in a temporary folder), serves models:/NAME@champion with
`anomaly-ae serve --workers 2`, and drives it with threads of httpx clients and `hey`. Each check
states its pass criterion and reports what it measured; the batch CLI checks run `anomaly-ae score`
and `anomaly-ae train` as the user would and kill them. Two measurements (server CPU per request
with 2 workers against 1, RSS per worker) are reported against their goals without deciding the
exit status. Writes benchmarks/results/reliability.json (every figure) and reliability.md; exits 1
when any check fails. Every process it starts is stopped at the end, however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability_checks import (check_alias_switch, check_broken_versions, check_extremes, check_fuzz,  # noqa: E402
                                check_liveness, check_registry_outage, check_score_kill, check_sigterm, check_soak,
                                check_stalled, check_train_kill, check_worker_kill, measure_cpu, measure_memory)
from reliability_lab import QUICK, REPO, RESULTS, Lab, Measurement, Plan, Result, log  # noqa: E402

# ============================================================================ running and reporting
CHECKS: list[tuple[str, str, str, Callable[[Lab, Result], list[str]]]] = [
    ("fuzz", "schemathesis against the running service (2 workers)",
     "every schemathesis check passes on every generated case, positive and negative, for every operation "
     "(no 5xx, declared statuses only, responses match their schemas, valid data accepted, invalid refused), "
     "and every scored row is finite", check_fuzz),
    ("extremes", "Extreme numbers, malformed, oversized and endless bodies",
     "extreme but valid numbers score 200 with finite scores; every invalid, oversized or endless body is refused "
     "with its 4xx and the error shape; an announced oversized body is refused before it is sent (< 2 s); an "
     "endless body is cut off; probes answer after; no warning or traceback in the log", check_extremes),
    ("liveness", "Liveness under 64 concurrent maximum-size requests",
     "all {liveness_requests} concurrent requests (10,000 rows each, explained) score 200, and every /healthz and "
     "/readyz probe during them (a new connection every 0.1 s, 1 s timeout) answers 200 in under 1 s", check_liveness),
    ("stalled", "64 connections stalling their bodies while legitimate requests come",
     "every legitimate request is served (0 failures) while {stalled_connections} connections hold half-sent "
     "bodies; each stalled one gets 408 at the body timeout ({body_timeout_s:g} s); requests in flight return to "
     "their level", check_stalled),
    ("soak", "Soak: mixed load, flat memory",
     "for {soak_s:g} s: only expected statuses (200, and 422 for the invalid body), 0 connection errors, every "
     "/metrics scrape answered, and service RSS at the end within max(24 MiB, 5%) of RSS after warm-up", check_soak),
    ("alias_switch", "Alias switch under load",
     "0 failed requests; after `promote` moves the alias, no response from the old version later than "
     "{switch_within_s:g} s; no client sees the old version after the new one", check_alias_switch),
    ("broken_versions", "Broken versions refused while the old one serves",
     "for each broken version the alias is moved to: both workers refuse it with the expected reason within "
     "{refuse_within_s:g} s, version_mismatch = 1 and desired_info names it, the log names it; every request is served "
     "by the good version (0 failures); mismatch returns to 0 when the alias moves back", check_broken_versions),
    ("worker_kill", "A worker killed (kill -9) under load, 2 workers",
     "a replacement worker serves within {recover_within_s:g} s; failed requests (of 8 clients, half on keep-alive "
     "connections, half on a new connection each) at most 8, those in flight on the killed worker, and none after "
     "the replacement serves; then model_info is exactly one "
     "version at 1, requests in flight 1 (the scrape), scoring in flight 0, model_ready 1", check_worker_kill),
    ("registry_outage", "MLflow registry paused (SIGSTOP), then killed, under load",
     "with the registry stopped for {registry_pause_s:g} s, then killed and load going on {after_kill_s:g} s: 0 failed "
     "requests, every response from the served version, /readyz 200 at every probe (every 0.25 s, 1 s timeout), "
     "and the outage counted as reload failures (the check saw it)", check_registry_outage),
    ("sigterm", "SIGTERM under load (2 workers)",
     "every request in flight at SIGTERM (16 x 10,000 rows, held one byte short of their bodies until 1.5 s after "
     "the signal, so that all their scoring happens during the shutdown) completes with 200; from 1 s after the "
     "signal every new connection is refused or answered (none waits unanswered in the backlog until the service "
     "exits); the service exits 0 within the graceful timeout, leaves no process and removes its temporary "
     "control folder", check_sigterm),
    ("score_kill", "kill -9 of a batch `anomaly-ae score`",
     "a killed run leaves no output (and the previous output unchanged when replacing one); the rerun exits 0, "
     "writes every row and removes the killed run's temporary file", check_score_kill),
    ("train_kill", "kill -9 of `anomaly-ae train --checkpoint-dir`, then `--resume`",
     "the killed run leaves no model directory; `--resume` exits 0 and saves a model whose every file hash equals "
     "that of an uninterrupted run with the same seed; the checkpoints are removed", check_train_kill),
]

MEASUREMENTS: list[tuple[str, str, str, Callable[[Lab, Measurement], None]]] = [
    ("cpu_per_request", "Server CPU per request, 2 workers against 1",
     "2 workers within 1.2x the CPU per request of 1 worker", measure_cpu),
    ("rss_per_worker", "Memory (RSS) per worker", "at most 450 MiB per worker", measure_memory),
]

# The order the checks run in (the registry is killed near the end, SIGTERM stops the service last).
ORDER = ["train_kill", "score_kill", "cpu_per_request", "fuzz", "extremes", "liveness", "stalled", "soak",
         "rss_per_worker", "alias_switch", "broken_versions", "worker_kill", "registry_outage", "sigterm"]


def run_all(plan: Plan, only: set[str] | None, out: Path, quick: bool, keep: bool) -> bool:
    work = Path(tempfile.mkdtemp(prefix="reliability-"))
    lab = Lab(plan, work)
    started, load_before = time.time(), os.getloadavg()
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "make reliability" if not quick else "python benchmarks/reliability.py --quick",
        "mode": "quick" if quick else "full", "plan": asdict(plan), "commit": git_commit(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before], "checks": [], "measurements": []}
    checks = {key: (title, criterion, fn) for key, title, criterion, fn in CHECKS}
    measurements = {key: (title, goal, fn) for key, title, goal, fn in MEASUREMENTS}
    try:
        for key in ORDER:
            if only and key not in only:
                continue
            t0 = time.monotonic()
            if key in checks:
                title, criterion, fn = checks[key]
                result = Result(key, title, criterion.format(**asdict(plan)))
                log(f"check {key}: {title}")
                try:
                    failures = fn(lab, result)
                    result.passed = not failures
                    result.notes = failures + result.notes
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # a check that cannot run has failed; the others still run
                    result.passed = False
                    result.error = f"{type(exc).__name__}: {exc}"[:2000]
                    traceback.print_exc()
                result.seconds = round(time.monotonic() - t0, 1)
                report["checks"].append(asdict(result))
                log(f"  {'PASS' if result.passed else 'FAIL'} in {result.seconds:g} s "
                    f"{'; '.join(result.notes[:3]) if not result.passed else ''}{result.error or ''}")
            else:
                title, goal, fn = measurements[key]
                measurement = Measurement(key, title, goal)
                log(f"measure {key}: {title}")
                try:
                    fn(lab, measurement)
                except Exception as exc:
                    measurement.error = f"{type(exc).__name__}: {exc}"[:2000]
                    traceback.print_exc()
                measurement.seconds = round(time.monotonic() - t0, 1)
                report["measurements"].append(asdict(measurement))
                log(f"  {measurement.value or measurement.error} (goal {goal}: "
                    f"{'met' if measurement.met else 'not met'})")
            report["elapsed_s"] = round(time.time() - started)
            write(out, report)
    finally:
        lab.close()
        report["elapsed_s"] = round(time.time() - started)
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        report["passed"] = bool(report["checks"]) and all(c["passed"] for c in report["checks"])
        write(out, report)
        if keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report["passed"]


def git_commit() -> str | None:
    """The checkout's commit, with "+ uncommitted changes" when files other than the results differ."""
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True,
                                 timeout=10).stdout.splitlines()
        dirty = [line for line in changed if "benchmarks/results/reliability." not in line]
        return (commit + (" + uncommitted changes" if dirty else "")) or None
    return None


def write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))


def _figure_text(figures: dict, skip: tuple[str, ...] = ("table", "rss_samples", "kinds", "cells")) -> str:
    parts = []
    for key, value in figures.items():
        if key in skip:
            continue
        text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
        parts.append(f"{key.replace('_', ' ')}: {text}")
    return "; ".join(parts).replace("|", "\\|")


def markdown(report: dict) -> str:
    checks, measurements = report["checks"], report["measurements"]
    passed = sum(1 for c in checks if c["passed"])
    lines = ["# Reliability under load and faults", "",
             f"{report['date']}, commit {report['commit']}, `{report['command']}` ({report['mode']} plan), "
             f"{report['cpu_count']} cores shared by the service, the registry and the load generators (load average "
             f"{report['load_average_before'][0]} before"
             + (f", {report['load_average_after'][0]} after" if report.get("load_average_after") else "")
             + f"; other work was running on the machine). Total {report.get('elapsed_s', 0)} s.", "",
             f"**{passed} of {len(checks)} checks passed.** The service under test is `anomaly-ae serve --workers 2` "
             "of `models:/NAME@champion` from a real `mlflow server`, polling every "
             f"{report['plan']['poll_interval_s']:g} s; every process runs on 127.0.0.1 and is stopped at the end.",
             "", "| check | pass criterion | result | seconds |", "|---|---|:---:|---:|"]
    for c in checks:
        lines.append(f"| {c['title']} | {c['criterion']} | {'pass' if c['passed'] else '**FAIL**'} | {c['seconds']} |")
    lines += ["", "## Measurements (reported against their goals; they do not decide the exit status)", "",
              "| measurement | goal | measured | met |", "|---|---|---|:---:|"]
    for m in measurements:
        lines.append(f"| {m['title']} | {m['goal']} | {m['value'] or m['error']} | "
                     f"{'yes' if m['met'] else '**no**'} |")
    lines += ["", "## Figures per check", ""]
    for c in checks:
        lines += [f"### {c['title']} ({'pass' if c['passed'] else 'FAIL'})", "", f"Criterion: {c['criterion']}.", ""]
        if c["error"]:
            lines += [f"Error: `{c['error']}`", ""]
        if c["figures"]:
            lines += [_figure_text(c["figures"]), ""]
        for key in ("table", "kinds"):
            rows = c["figures"].get(key)
            if rows:
                heads = list(rows[0])
                lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
                lines += ["| " + " | ".join(str(row.get(h, "")).replace("|", "\\|") for h in heads) + " |"
                          for row in rows]
                lines.append("")
        if c["figures"].get("rss_samples"):
            lines += ["RSS samples (seconds, MiB of the service's processes): "
                      + ", ".join(f"{t}: {v}" for t, v in c["figures"]["rss_samples"]), ""]
        for note in c["notes"]:
            lines.append(f"- {note}")
        if c["notes"]:
            lines.append("")
    for m in measurements:
        lines += [f"### {m['title']}", "", f"Goal: {m['goal']}. Measured: {m['value'] or m['error']}.", ""]
        cells = m["figures"].get("cells")
        if cells:
            lines += ["| workers | rows/request | requests | requests/s | server CPU ms/request | of which supervisor "
                      "| cores busy |", "|---:|---:|---:|---:|---:|---:|---:|"]
            for cell in cells.values():
                if "rows" in cell:
                    lines.append(f"| {cell['workers']} | {cell['rows']} | {cell['requests']} | "
                                 f"{cell['requests_per_s']} | {cell['server_cpu_ms_per_request']} | "
                                 f"{cell['supervisor_cpu_ms_per_request']} | {cell['server_cores_busy']} |")
            lines.append("")
        rest = {k: v for k, v in m["figures"].items() if k != "cells"}
        if rest:
            lines += [_figure_text(rest, skip=()), ""]
        for note in m["notes"]:
            lines.append(f"- {note}")
        if m["notes"]:
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: shorter soak, fewer cases and rows")
    parser.add_argument("--only", default="", help=f"comma-separated checks to run, of: {', '.join(ORDER)}")
    parser.add_argument("--soak-s", type=float, help="soak duration in seconds (default 150, quick 30)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help=f"change one field of the plan (repeatable): {', '.join(Plan.__dataclass_fields__)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "reliability.json",
                        help="JSON results (the Markdown table goes beside it)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, models, data)")
    args = parser.parse_args()
    only = {k.strip() for k in args.only.split(",") if k.strip()} or None
    unknown = (only or set()) - set(ORDER)
    if unknown:
        parser.error(f"unknown checks: {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else Plan()
    changes: dict[str, Any] = {"soak_s": args.soak_s} if args.soak_s else {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in Plan.__dataclass_fields__ or not value:
            parser.error(f"--set {item}: expected FIELD=VALUE with FIELD one of {', '.join(Plan.__dataclass_fields__)}")
        changes[name] = type(getattr(plan, name))(value)
    plan = Plan(**{**asdict(plan), **changes})

    def terminate(signum: int, frame: object) -> None:  # stop every process we started, then exit
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    import serve_bench

    serve_bench.ensure_hey()
    passed = run_all(plan, only, args.out, args.quick, args.keep)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}: {'all checks passed' if passed else 'FAILED'}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
