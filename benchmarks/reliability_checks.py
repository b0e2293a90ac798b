"""The checks and measurements of the reliability suite (benchmarks/reliability.py).

A check takes the lab and its Result, fills in the figures it measured and returns the ways it
failed (none: passed); a measurement fills in its Measurement. Each check bounds its own duration
(the lab's plan) and leaves the service as it found it, but for the last two: the registry outage
kills the registry and the SIGTERM check stops the service.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson

import reliability_support as rs
from reliability_lab import (NAME, SCORE_JSON, Lab, Measurement, Result, all_workers_serving, bad_log_lines, expect,
                             live_gauge_pids, log_since, metrics_text, model_info, served_version, stop_service,
                             worker_rss)
from service_support import SCORE, Service, fuzz_openapi, metric_value, wait_for

# ============================================================================ the checks
def check_fuzz(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    calls, errors = fuzz_openapi(service.url, max_examples=lab.plan.fuzz_examples)
    r.figures.update(requests=calls, failing_operations=len(errors),
                     examples_per_operation_and_mode=lab.plan.fuzz_examples)
    r.notes += [e[:600] for e in errors]
    return [f"{len(errors)} operation/mode pairs failed a check"] if errors else []


def check_extremes(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    offset = len(service.output())
    failures: list[str] = []
    base = lab.frame(1, seed=2).to_dict("records")[0]
    numeric = [k for k, v in base.items() if isinstance(v, float)]
    columns = list(base)
    big = sys.float_info.max

    def every_numeric(value: Any) -> dict:
        return {"records": [{**base, **{c: value for c in numeric}}]}

    rows = [[base["mode"], *([big if i % 2 else -big] * len(numeric))] for i in range(10_000)]
    must_score = {
        "every numeric input +1.797e308": every_numeric(big),
        "every numeric input -1.797e308": every_numeric(-big),
        "every numeric input 5e-324 (smallest subnormal)": every_numeric(5e-324),
        "every numeric input -0.0": every_numeric(-0.0),
        "every numeric input 2**63-1 (an integer)": every_numeric(2**63 - 1),
        "10,000 rows alternating +-1.797e308, explained (top_k 20)": {
            "columns": columns, "data": rows, "explain": True, "top_k": 20},
        "an unseen 64 KiB category": {"records": [{**base, "mode": "x" * 65536}]},
    }
    raw_record = orjson.dumps({"records": [base]}).decode()
    first = numeric[0]

    def literal(text: str) -> bytes:  # the record with its first numeric value written as `text`
        return raw_record.replace(json.dumps(base[first]), text, 1).encode()

    must_refuse: dict[str, tuple[bytes, set[int], str]] = {
        "1e309 (beyond float range)": (literal("1e309"), {400, 422}, ""),
        "NaN literal": (literal("NaN"), {400, 422}, ""),
        "Infinity literal": (literal("Infinity"), {400, 422}, ""),
        "-Infinity literal": (literal("-Infinity"), {400, 422}, ""),
        "an integer of 400 digits": (literal("9" * 400), {400, 422}, ""),
        "arrays nested 100,000 deep": (b'{"records": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {400, 422}, ""),
        "10,001 rows (over max_rows)": (orjson.dumps({"columns": columns, "data": rows + rows[:1]}), {413}, ""),
        "5,000 unknown columns": (orjson.dumps({"records": [{**base, **{f"x{i}": 1.0 for i in range(5000)}}]}),
                                  {422}, ""),
        "true in a numeric column": (orjson.dumps({"records": [{**base, first: True}]}), {422}, ""),
        "a string in a numeric column": (orjson.dumps({"records": [{**base, first: "12"}]}), {422}, ""),
        "null in a numeric column": (orjson.dumps({"records": [{**base, first: None}]}), {422}, ""),
        "top_k 10**18": (orjson.dumps({"records": [base], "explain": True, "top_k": 10**18}), {422}, ""),
        "an id of 10,000 characters": (orjson.dumps({"records": [base], "ids": ["i" * 10_000]}), {422}, ""),
        "duplicate columns": (orjson.dumps({"columns": columns + columns[:1], "data": [[*rows[0], "day"]]}),
                              {422}, ""),
        "ragged rows": (orjson.dumps({"columns": columns, "data": [rows[0], rows[0][:-1]]}), {422}, ""),
        "both records and columns": (orjson.dumps({"records": [base], "columns": columns, "data": [rows[0]]}),
                                     {422}, ""),
        "an empty body": (b"", {400, 422}, ""),
        "not JSON": (b"{records:", {400}, ""),
        "invalid UTF-8": (b'{"records": [{"mode": "\xff\xfe"}]}', {400, 422}, ""),
        "a JSON array body": (b"[1, 2, 3]", {422}, ""),
        "text/plain": (raw_record.encode(), {415}, "text/plain"),
    }
    cases = []
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for name, body in must_score.items():
            response = client.post("/v1/score", content=orjson.dumps(body), headers=SCORE_JSON)
            ok = response.status_code == 200
            finite = ok and all(math.isfinite(row["score"]) and math.isfinite(row["p_value"])
                                for row in response.json()["results"])
            cases.append({"case": name, "expected": "200, finite scores", "status": response.status_code,
                          "finite": finite})
            expect(ok and finite, f"{name}: {response.status_code} {response.text[:200]}", failures)
        for name, (body, statuses, content_type) in must_refuse.items():
            headers = {**SCORE, "Content-Type": content_type or "application/json"}
            response = client.post("/v1/score", content=body, headers=headers)
            shaped = _error_shaped(response)
            cases.append({"case": name, "expected": "/".join(map(str, sorted(statuses))),
                          "status": response.status_code, "error_shape": shaped})
            expect(response.status_code in statuses and shaped,
                   f"{name}: expected {sorted(statuses)}, got {response.status_code} {response.text[:200]}", failures)
    limit = 8 * 1024 * 1024
    port = service.port
    declared = rs.declared_oversize(port, SCORE, limit + 1024 * 1024)
    huge = rs.declared_oversize(port, SCORE, 10**15)
    endless = rs.endless_chunked_body(port, SCORE, give_up_bytes=16 * limit)
    headers = rs.oversized_headers(port, 1024 * 1024)
    for name, outcome, statuses in (("Content-Length 9 MiB, no body sent", declared, {413}),
                                    ("Content-Length 10**15, no body sent", huge, {413}),
                                    ("endless chunked body at full speed", endless, {413}),
                                    ("a 1 MiB header", headers, {431})):
        cases.append({"case": name, "expected": "/".join(str(s) for s in statuses), **outcome})
        expect(outcome["status"] in statuses, f"{name}: {outcome}", failures)
    expect(declared["seconds"] < 2 and huge["seconds"] < 2, "an announced oversized body was not refused at once",
           failures)
    expect(endless["body_bytes_sent"] < 16 * limit, "the endless body was never cut off", failures)
    alive = httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200 and httpx.get(
        f"{service.url}/readyz", timeout=5).status_code == 200
    expect(alive, "the service stopped answering its probes", failures)
    bad = bad_log_lines(log_since(service, offset))
    expect(not bad, f"warnings or tracebacks in the service log: {bad[:3]}", failures)
    r.figures.update(cases=len(cases), refused_as_expected=sum(1 for c in cases if c["expected"] != "200, finite scores"
                                                                and c.get("status") in _statuses(c["expected"])),
                     scored_finite=sum(1 for c in cases if c.get("finite")),
                     endless_body_mib_sent_before_413=round(endless["body_bytes_sent"] / 2**20, 1),
                     endless_body_seconds=endless["seconds"], log_warnings=len(bad), table=cases)
    return failures


def _statuses(expected: str) -> set:
    return {None if s == "None" else int(s) for s in expected.split("/")}


def _error_shaped(response: httpx.Response) -> bool:
    try:
        error = response.json()["error"]
        return error["status"] == response.status_code and bool(error["message"]) and bool(error["code"])
    except Exception:
        return False


def check_liveness(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    n = lab.plan.liveness_requests
    body = lab.columns_body(10_000, explain=True, top_k=5)
    results: list[tuple[int, int]] = []

    def one() -> None:
        try:
            response = httpx.post(f"{service.url}/v1/score", content=body, headers=SCORE_JSON, timeout=600)
            rows = orjson.loads(response.content).get("n_rows", 0) if response.status_code == 200 else 0
            results.append((response.status_code, rows))
        except httpx.HTTPError as exc:
            results.append((-1, 0))
            r.notes.append(f"request failed: {type(exc).__name__}")

    with rs.Sampler(lambda: rs.tree_rss_mib(service.proc.pid), 0.5) as rss, \
            rs.Prober([f"{service.url}/healthz", f"{service.url}/readyz"], every_s=0.1, timeout_s=1.0) as probe:
        time.sleep(1)
        t0 = time.monotonic()
        threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
        time.sleep(0.5)
    ok = sum(1 for status, rows in results if status == 200 and rows == 10_000)
    probes = probe.figures(since=t0, until=t0 + took)
    r.figures.update(requests=n, rows_per_request=10_000, body_mib=round(len(body) / 2**20, 2), scored=ok,
                     statuses={str(s): sum(1 for x, _ in results if x == s) for s in {x for x, _ in results}},
                     seconds=round(took, 1), **probes,
                     service_rss_peak_mib=max((v for _, v in rss.samples), default=None))
    failures: list[str] = []
    expect(ok == n, f"{n - ok} of {n} requests not scored", failures)
    expect(probes["probes"] >= 5, "too few probes during the load to say anything", failures)
    expect(probes["probes_failed"] == 0, f"{probes['probes_failed']} probes failed or took over 1 s", failures)
    expect(probes["probe_max_ms"] is not None and probes["probe_max_ms"] < 1000,
           f"slowest probe {probes['probe_max_ms']} ms", failures)
    return failures


def check_stalled(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    n, timeout = lab.plan.stalled_connections, lab.plan.body_timeout_s
    body = lab.records_body(5)
    in_flight_before = metric_value(metrics_text(service), "anomaly_ae_http_requests_in_flight")
    t0 = time.monotonic()
    sockets = rs.stalled_connections(service.port, n, SCORE)
    try:
        held = wait_for(lambda: metric_value(metrics_text(service), "anomaly_ae_http_requests_in_flight")
                        >= in_flight_before + n, timeout=30)
        with rs.Load(f"{service.url}/v1/score", [body], SCORE, threads=4) as load:
            time.sleep(max(1.0, timeout - (time.monotonic() - t0) - 1.0))
        answers = []
        for sock in sockets:
            status, _ = rs.read_response_status(sock, timeout + 15 - (time.monotonic() - t0))
            answers.append((status, time.monotonic() - t0))
    finally:
        for sock in sockets:
            sock.close()
    legit = rs.summarise(load.outcomes)
    timed_out = sum(1 for status, _ in answers if status == 408)
    r.figures.update(stalled_connections=n, stalled_held_in_flight=held, body_timeout_s=timeout,
                     legitimate=legit, stalled_answered_408=timed_out,
                     stalled_answer_after_s=round(max((t for _, t in answers), default=0), 1))
    failures: list[str] = []
    expect(held, "the stalled connections were not all held by the server", failures)
    expect(legit["requests"] > 20 and legit["failed"] == 0,
           f"{legit['failed']} of {legit['requests']} legitimate requests failed: {legit['by_status']}", failures)
    expect(timed_out == n, f"only {timed_out} of {n} stalled bodies got 408", failures)
    expect(wait_for(lambda: metric_value(metrics_text(service), "anomaly_ae_http_requests_in_flight")
                    <= in_flight_before, timeout=15), "requests in flight did not return to their level", failures)
    return failures


def run_hey(url: str, body: Path, concurrency: int, seconds: float) -> dict:
    return rs.run_hey(url, SCORE, body, concurrency, seconds)


def check_soak(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    seconds = lab.plan.soak_s
    bodies = {"1 row": (lab.records_body(1), 4, 200), "100 rows, explained": (
        lab.records_body(100, explain=True, top_k=3), 2, 200),
        "invalid (a missing column)": (orjson.dumps({"records": [{"mode": "day"}]}), 1, 422)}
    files = {}
    for name, (body, _, _) in bodies.items():
        files[name] = lab.work / f"soak-{len(files)}.json"
        files[name].write_bytes(body)
    out: dict[str, dict] = {}
    scrapes: list[int] = []

    def scrape() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):
                scrapes.append(httpx.get(f"{service.url}/metrics", timeout=5).status_code)
            stop.wait(1.0)

    stop = threading.Event()
    scraper = threading.Thread(target=scrape, daemon=True)
    sample = lambda: {"total": rs.tree_rss_mib(service.proc.pid), **worker_rss(service)}  # noqa: E731
    with rs.Sampler(sample, 2.0) as rss:
        scraper.start()
        threads = [threading.Thread(target=lambda n=name, c=conc: out.__setitem__(
            n, run_hey(f"{service.url}/v1/score", files[n], c, seconds)), daemon=True)
            for name, (_, conc, _) in bodies.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        scraper.join(10)
    failures: list[str] = []
    total_requests = 0
    for name, (_, conc, status) in bodies.items():
        m = out.get(name, {})
        responses = m.get("responses", {})
        total_requests += sum(responses.values())
        unexpected = sum(v for k, v in responses.items() if k != status)
        connection_errors = m.get("errors", 0) - sum(v for k, v in responses.items() if k >= 300)
        r.figures[f"load: {name}"] = {"concurrency": conc, "responses": responses, "connection_errors":
                                       connection_errors, "requests_per_s": round(sum(responses.values()) / seconds, 1),
                                       "p99_ms": m.get("p99_ms")}
        expect(responses.get(status, 0) > 0 and unexpected == 0 and connection_errors == 0,
               f"{name}: expected only {status}, got {responses} and {connection_errors} connection errors", failures)
    samples = [(t, v) for t, v in rss.samples if isinstance(v, dict)]
    warm = [v["total"] for t, v in samples if 0.2 * seconds <= t <= 0.35 * seconds]
    end = [v["total"] for t, v in samples if t >= 0.85 * seconds]
    start_mib, end_mib = rs.median(warm), rs.median(end)
    growth = round(end_mib - start_mib, 1) if start_mib and end_mib else None
    bound = max(24.0, 0.05 * (start_mib or 0))
    slope = _slope([(t, v["total"]) for t, v in samples if t >= 0.2 * seconds])
    r.figures.update(seconds=seconds, requests=total_requests, metrics_scrapes=len(scrapes),
                     scrapes_failed=sum(1 for s in scrapes if s != 200),
                     rss_after_warmup_mib=start_mib, rss_at_end_mib=end_mib, rss_growth_mib=growth,
                     rss_growth_bound_mib=round(bound, 1), rss_slope_mib_per_min=slope,
                     rss_per_worker_at_end_mib=worker_rss(service),
                     rss_samples=[(round(t), v["total"]) for t, v in samples][:: max(1, -(-len(samples) // 20))])
    expect(growth is not None and growth <= bound, f"RSS grew {growth} MiB (bound {bound:.0f})", failures)
    expect(scrapes and all(s == 200 for s in scrapes), "a /metrics scrape failed", failures)
    return failures


def _slope(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mt, mv = sum(t for t, _ in points) / n, sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return round(60 * sum((t - mt) * (v - mv) for t, v in points) / var, 2) if var else None


def check_alias_switch(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    old, new = lab.versions["v1"], lab.versions["v2"]
    if served_version(service) != old:
        lab.promote(old)
        wait_for(lambda: served_version(service) == old, timeout=60)
    threads = 8
    with rs.Load(f"{service.url}/v1/score", [lab.records_body(5)], SCORE, threads=threads) as load:
        time.sleep(3)
        t_move = time.monotonic()
        lab.promote(new)  # anomaly-ae promote: verifies the version, then moves the alias
        t_moved = time.monotonic()

        def switched() -> bool:
            recent = [o for o in load.outcomes[-4 * threads:]]
            return all(o.version == new for o in recent) and all(
                any(o.version == new for o in load.outcomes if o.client == c) for c in range(threads))

        wait_for(switched, timeout=lab.plan.switch_within_s + 30)
        time.sleep(2)
    outcomes = load.outcomes
    summary = rs.summarise(outcomes)
    first_new = min((o.end for o in outcomes if o.version == new), default=None)
    last_old = max((o.end for o in outcomes if o.version == old), default=None)
    per_client_monotonic = all(
        _monotonic([o.version for o in outcomes if o.client == c and o.version], new) for c in range(threads))
    switch_s = round(last_old - t_moved, 1) if last_old else None
    r.figures.update(requests=summary["requests"], failed=summary["failed"], by_status=summary["by_status"],
                     promote_seconds=round(t_moved - t_move, 1),
                     first_new_version_after_s=round(first_new - t_moved, 1) if first_new else None,
                     last_old_version_after_s=switch_s, served_by_old=sum(1 for o in outcomes if o.version == old),
                     served_by_new=sum(1 for o in outcomes if o.version == new),
                     p99_ms=summary["p99_ms"], max_ms=summary["max_ms"], switch_within_s=lab.plan.switch_within_s)
    failures: list[str] = []
    expect(summary["failed"] == 0, f"{summary['failed']} requests failed: {summary['by_status']}", failures)
    expect(first_new is not None, "the new version never served", failures)
    expect(switch_s is not None and switch_s <= lab.plan.switch_within_s,
           f"the old version still answered {switch_s} s after the move", failures)
    expect(per_client_monotonic, "a client saw the old version after the new one", failures)
    return failures


def _monotonic(versions: list[str], new: str) -> bool:
    seen_new = False
    for v in versions:
        if v == new:
            seen_new = True
        elif seen_new:
            return False
    return True


def check_broken_versions(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    good = served_version(service)
    failures: list[str] = []
    kinds = []
    with rs.Load(f"{service.url}/v1/score", [lab.records_body(5)], SCORE, threads=4) as load:
        time.sleep(2)
        for kind, version, reason in lab.broken:
            before = metric_value(metrics_text(service), "anomaly_ae_model_reload_failures_total", reason=reason)
            offset = len(service.output())
            t0 = time.monotonic()
            lab.set_alias(version)  # not through anomaly-ae promote, which refuses these

            def refused() -> bool:
                text = metrics_text(service)
                return (metric_value(text, "anomaly_ae_model_reload_failures_total", reason=reason) >= before + 2
                        and metric_value(text, "anomaly_ae_model_version_mismatch") == 1
                        and metric_value(text, "anomaly_ae_model_desired_info", name=NAME, version=version) == 1)

            seen = wait_for(refused, timeout=lab.plan.refuse_within_s)
            took = time.monotonic() - t0
            logged = f"refused version {version}" in log_since(service, offset)
            still = served_version(service)
            kinds.append({"kind": kind, "version": version, "reason": reason, "refused_by_both_workers": seen,
                          "seconds_to_visible": round(took, 1), "log_names_version": logged, "served": still})
            expect(seen, f"{kind}: not refused with {reason} by both workers within "
                         f"{lab.plan.refuse_within_s:g} s", failures)
            expect(logged, f"{kind}: the log does not name version {version}", failures)
            expect(still == good, f"{kind}: serving {still} instead of {good}", failures)
        lab.set_alias(good)
        back = wait_for(lambda: metric_value(metrics_text(service), "anomaly_ae_model_version_mismatch") == 0,
                        timeout=30)
        time.sleep(1)
    summary = rs.summarise(load.outcomes)
    wrong = sum(1 for o in load.outcomes if o.status == 200 and o.version != good)
    r.figures.update(kinds=kinds, requests=summary["requests"], failed=summary["failed"],
                     by_status=summary["by_status"], served_by_another_version=wrong, mismatch_cleared=back)
    expect(summary["failed"] == 0, f"{summary['failed']} requests failed: {summary['by_status']}", failures)
    expect(wrong == 0, f"{wrong} responses came from another version", failures)
    expect(back, "version_mismatch stayed 1 after the alias moved back", failures)
    return failures


def check_worker_kill(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    prom = lab.prom
    workers = rs.worker_pids(service.proc.pid)
    threads = 8  # half on keep-alive connections, half on a new connection per request
    failures: list[str] = []
    body = [lab.records_body(5)]
    marks: dict[str, float] = {}
    with rs.Load(f"{service.url}/v1/score", body, SCORE, threads=threads // 2) as sticky, \
            rs.Load(f"{service.url}/v1/score", body, SCORE, threads=threads // 2, new_connection=True) as fresh:
        time.sleep(3)
        victim = workers[0]
        t_kill = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        def recovered() -> bool:
            now = rs.worker_pids(service.proc.pid)
            if len(now) == len(workers) and victim not in now:
                marks.setdefault("replacement_process_s", time.monotonic() - t_kill)
            return victim not in now and all_workers_serving(service, prom) and victim not in live_gauge_pids(prom)

        back = wait_for(recovered, timeout=lab.plan.recover_within_s)
        t_back = time.monotonic()
        time.sleep(5)
    t_end = time.monotonic()
    for o in fresh.outcomes:
        o.client += threads // 2
    time.sleep(1)
    text = metrics_text(service)
    info = model_info(text)
    outcomes = sticky.outcomes + fresh.outcomes
    bad = [o for o in outcomes if o.status != 200]
    after = [o for o in bad if o.start > t_back]
    summary = rs.summarise(outcomes)
    r.figures.update(workers_before=workers, killed=victim, workers_after=rs.worker_pids(service.proc.pid),
                     replacement_process_after_s=round(marks["replacement_process_s"], 1) if marks else None,
                     recovery_s=round(t_back - t_kill, 1) if back else None, requests=summary["requests"],
                     keep_alive=rs.summarise(sticky.outcomes)["by_status"],
                     new_connection_each=rs.summarise(fresh.outcomes)["by_status"],
                     failed=summary["failed"], by_status=summary["by_status"],
                     failed_at_s_after_kill=[round(o.start - t_kill, 2) for o in bad][:50],
                     failed_after_recovery=len(after),
                     load_after_recovery_s=round(t_end - t_back, 1),
                     model_info_after=info, in_flight_after=metric_value(text, "anomaly_ae_http_requests_in_flight"),
                     scoring_in_flight_after=metric_value(text, "anomaly_ae_scoring_in_flight"),
                     model_ready_after=metric_value(text, "anomaly_ae_model_ready"))
    expect(back, f"no replacement worker serving within {lab.plan.recover_within_s:g} s", failures)
    expect(len(bad) <= threads, f"{len(bad)} requests failed (more than the {threads} that could be in flight on "
                                f"the killed worker): {summary['by_status']}", failures)
    expect(not after, f"{len(after)} requests failed after the replacement was serving", failures)
    expect(sum(info.values()) == 1 and len([v for v in info.values() if v > 0]) == 1,
           f"model_info is not exactly one version at 1: {info}", failures)
    expect(metric_value(text, "anomaly_ae_http_requests_in_flight") == 1, "requests in flight is not 1 (the scrape)",
           failures)
    expect(metric_value(text, "anomaly_ae_scoring_in_flight") == 0, "scoring in flight is not 0", failures)
    expect(metric_value(text, "anomaly_ae_model_ready") == 1, "model_ready is not 1", failures)
    return failures


def check_registry_outage(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    _, process = lab.registry()
    good = served_version(service)
    reasons = ("registry_timeout", "registry_unavailable")

    def counts() -> dict[str, float]:
        text = metrics_text(service)
        return {k: metric_value(text, "anomaly_ae_model_reload_failures_total", reason=k) for k in reasons}

    before = counts()
    with rs.Prober([f"{service.url}/readyz"], every_s=0.25, timeout_s=1.0) as probe, \
            rs.Load(f"{service.url}/v1/score", [lab.records_body(5)], SCORE, threads=8) as load:
        time.sleep(3)
        t_stop = time.monotonic()
        os.killpg(process.pid, signal.SIGSTOP)  # hung: accepts connections, never answers
        time.sleep(lab.plan.registry_pause_s)
        t_kill = time.monotonic()
        os.killpg(process.pid, signal.SIGKILL)  # then gone: connections refused
        process.wait(30)
        time.sleep(lab.plan.after_kill_s)
    after = counts()
    summary = rs.summarise(load.outcomes)
    paused = rs.summarise([o for o in load.outcomes if t_stop <= o.start < t_kill])
    killed = rs.summarise([o for o in load.outcomes if o.start >= t_kill])
    wrong = sum(1 for o in load.outcomes if o.status == 200 and o.version != good)
    r.figures.update(paused_s=lab.plan.registry_pause_s, after_kill_s=lab.plan.after_kill_s,
                     requests=summary["requests"], failed=summary["failed"], by_status=summary["by_status"],
                     while_paused=paused, after_kill=killed, readyz=probe.figures(),
                     reload_failures={k: after[k] - before[k] for k in reasons}, served_by_another_version=wrong)
    failures: list[str] = []
    expect(summary["failed"] == 0, f"{summary['failed']} requests failed: {summary['by_status']}", failures)
    expect(paused["requests"] > 0 and killed["requests"] > 0, "no load while the registry was down", failures)
    expect(probe.figures()["probes_failed"] == 0, "/readyz was not 200 throughout", failures)
    expect(wrong == 0, "a response came from another version", failures)
    expect(sum(after.values()) > sum(before.values()), "the service never noticed the registry was down (no reload "
                                                       "failure counted): the check proved nothing", failures)
    return failures


def check_sigterm(lab: Lab, r: Result) -> list[str]:
    service = lab.service()
    workers = rs.worker_pids(service.proc.pid)
    control = None
    with contextlib.suppress(OSError):
        env = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        control = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"ANOMALY_AE_CONTROL_DIR=")), None)
    big = lab.columns_body(10_000, seed=8, explain=True, top_k=20)
    n = 16
    # 16 maximum-size requests, each held one byte short of its body: certainly in flight at SIGTERM,
    # and all their scoring happens during the graceful shutdown
    in_flight_before = metric_value(metrics_text(service), "anomaly_ae_http_requests_in_flight")
    held = [rs.HeldRequest(service.port, "/v1/score", SCORE_JSON, big) for _ in range(n)]
    accepted = wait_for(lambda: metric_value(metrics_text(service), "anomaly_ae_http_requests_in_flight")
                        >= in_flight_before + n, timeout=60, step=0.1)
    results: list[int] = []
    background = rs.Load(f"{service.url}/v1/score", [lab.records_body(5)], SCORE, threads=4).start()
    time.sleep(0.3)
    t_term = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    connects: list[tuple[float, str, float]] = []  # new connections after SIGTERM: (after s, outcome, seconds)

    def connect_once() -> None:
        t0 = time.monotonic()
        try:
            outcome = str(httpx.get(f"{service.url}/healthz", timeout=5).status_code)
        except httpx.ConnectError:
            outcome = "refused"
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        connects.append((round(t0 - t_term, 2), outcome, round(time.monotonic() - t0, 2)))

    def connect_after_sigterm() -> None:  # a new connection every 0.25 s from 1 s on, each in its own thread
        time.sleep(1.0)
        attempts = []
        while service.proc.poll() is None and time.monotonic() - t_term < 60:
            attempts.append(threading.Thread(target=connect_once, daemon=True))
            attempts[-1].start()
            time.sleep(0.25)
        for attempt in attempts:
            attempt.join(10)

    connector = threading.Thread(target=connect_after_sigterm, daemon=True)
    connector.start()
    time.sleep(1.5)  # the workers are shutting down by now (the supervisor acts on signals every 0.5 s)
    for request in held:
        request.finish()
    for request in held:
        status, payload = request.response()
        ok_rows = status == 200 and orjson.loads(payload).get("n_rows") == 10_000
        results.append(status if ok_rows or status != 200 else -2 if status else -1)
    try:
        code = service.proc.wait(60)
    except subprocess.TimeoutExpired:
        code = None
    exited_s = time.monotonic() - t_term
    background.stop()
    connector.join(20)
    # once the supervisor has acted on the signal (it looks every 0.5 s), a new connection must be refused or
    # answered, never accepted into the backlog of a socket nothing accepts from any more: that one ends with a
    # read timeout or with a reset when the service exits. (How long a refusal takes depends on the machine's
    # load, so the time is reported, not judged.)
    late = [c for c in connects if c[0] >= 1.0]
    hung = [c for c in late if c[1] not in ("refused", "200")]
    left = [p for p in rs.descendants(service.proc.pid) if p != service.proc.pid and rs.alive(p)]
    before = [o for o in background.outcomes if o.end < t_term]
    after = [o for o in background.outcomes if o.end >= t_term]
    r.figures.update(big_requests=n, held_in_flight_at_sigterm=accepted,
                     big_completed_200=sum(1 for s in results if s == 200),
                     big_statuses={str(s): results.count(s) for s in set(results)}, exit_code=code,
                     seconds_to_exit=round(exited_s, 1), processes_left=left,
                     control_dir_removed=(control is not None and not Path(control).exists()),
                     background_before_sigterm=rs.summarise(before)["by_status"],
                     background_after_sigterm=rs.summarise(after)["by_status"],
                     new_connections_after_sigterm={k: sum(1 for c in late if c[1] == k) for k in {c[1] for c in late}},
                     new_connections_left_waiting=len(hung),
                     new_connection_slowest_s=max((c[2] for c in late), default=None))
    r.notes.append("Background 5-row requests answered after the signal and connection errors after it are "
                   "reported, not judged: requests that reach a closing listener are refused (in Kubernetes "
                   "the pre-stop sleep lets endpoints drain first).")
    failures: list[str] = []
    expect(accepted, "the held requests were not all in flight before SIGTERM", failures)
    expect(results.count(200) == n, f"in-flight requests did not all complete: {r.figures['big_statuses']}", failures)
    expect(code in (0, -signal.SIGTERM), f"exit code {code}", failures)
    expect(not left, f"processes left behind: {left}", failures)
    expect(control is None or not Path(control).exists(), f"the control folder {control} was left behind", failures)
    expect(not hung, f"{len(hung)} new connections after SIGTERM were neither refused nor answered (they waited in "
                     f"the backlog of a socket nothing accepted from): {hung[:5]}", failures)
    return failures


# ---------------------------------------------------------------------------- the batch CLI
def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "anomaly_ae.cli", *args]


def temp_outputs(output: Path) -> list[Path]:
    from anomaly_ae.data.io import temp_file_pattern

    pattern = temp_file_pattern(output)
    return [p for p in output.parent.iterdir() if pattern.fullmatch(p.name)]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], timeout: float) -> bool:
    """SIGKILL `process` as soon as `condition()` holds; False if it ended or timed out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            process.kill()
            process.wait()
            return True
        time.sleep(0.02)
    process.kill()
    process.wait()
    return False


def check_score_kill(lab: Lab, r: Result) -> list[str]:
    from anomaly_ae.data.io import write_table

    root = lab.work / "score"
    root.mkdir()
    rows = lab.plan.score_rows
    data = root / "incoming.csv"
    write_table(lab.frame(rows, seed=5, anomaly_fraction=0.01), data)
    output = root / "scored.parquet"
    command = cli("score", str(lab.models()["v1"]), str(data), "-o", str(output), "--chunk-rows", "10000")
    failures: list[str] = []

    def killed_mid_write() -> dict:
        process = rs.spawn(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        hit = kill_when(process, lambda: any(_size(p) > 1024 * 1024 for p in temp_outputs(output)), timeout=600)
        left = temp_outputs(output)
        return {"killed_mid_write": hit, "after_s": round(time.monotonic() - t0, 1),
                "temp_files_left": len(left), "temp_mib": round(sum(p.stat().st_size for p in left) / 2**20, 1)}

    def rerun() -> dict:
        t0 = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        out = {"exit_code": done.returncode, "seconds": round(time.monotonic() - t0, 1),
               "temp_files_left": len(temp_outputs(output))}
        if done.returncode != 0:
            out["stderr"] = done.stderr[-500:]
        if output.exists():
            import pyarrow.parquet as pq

            out.update(rows=pq.read_metadata(output).num_rows, sha256=sha256(output)[:16])
        return out

    first_kill = killed_mid_write()
    first_kill["output_exists"] = output.exists()
    first = rerun()
    second_kill = killed_mid_write()
    second_kill["output_sha256"] = sha256(output)[:16] if output.exists() else None
    second = rerun()
    r.figures.update(rows=rows, kill_with_no_previous_output=first_kill, rerun=first,
                     kill_while_replacing_an_output=second_kill, second_rerun=second)
    expect(first_kill["killed_mid_write"] and second_kill["killed_mid_write"], "a run ended before it was killed",
           failures)
    expect(not first_kill["output_exists"], "a killed run left an output file", failures)
    for name, run in (("first rerun", first), ("second rerun", second)):
        expect(run["exit_code"] == 0 and run.get("rows") == rows and run["temp_files_left"] == 0,
               f"{name}: {run}", failures)
    expect(second_kill["output_sha256"] == first.get("sha256"), "killing a rerun changed the previous output",
           failures)
    return failures


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def check_train_kill(lab: Lab, r: Result) -> list[str]:
    from anomaly_ae.data.io import write_table

    root = lab.work / "train"
    root.mkdir()
    data = root / "train.csv"
    write_table(lab.frame(lab.plan.train_rows, seed=6), data)
    args = ["train", str(data), "--model", "hybrid", "--epochs", str(lab.plan.train_epochs), "--seed", "3",
            "--threads", "1", "--device", "cpu", "--no-progress"]
    failures: list[str] = []
    t0 = time.monotonic()
    reference = subprocess.run(cli(*args, "--out", str(root / "reference")), capture_output=True, text=True,
                               timeout=900)
    reference_s = time.monotonic() - t0
    expect(reference.returncode == 0, f"uninterrupted training failed: {reference.stderr[-500:]}", failures)
    checkpoints = root / "ck"
    resumed = root / "resumed"
    process = rs.spawn(cli(*args, "--out", str(resumed), "--checkpoint-dir", str(checkpoints)),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    # killed while the second network trains: the first is finished, the second has a checkpoint
    hit = kill_when(process, lambda: (checkpoints / "member1.safetensors").exists(), timeout=900)
    killed_s = time.monotonic() - t0
    left = sorted(p.name for p in checkpoints.iterdir()) if checkpoints.exists() else []
    out_after_kill = resumed.exists()
    t0 = time.monotonic()
    resume = subprocess.run(cli(*args, "--out", str(resumed), "--checkpoint-dir", str(checkpoints), "--resume"),
                            capture_output=True, text=True, timeout=900)
    resume_s = time.monotonic() - t0
    same, differing = False, []
    if reference.returncode == 0 and resume.returncode == 0:
        ref = json.loads((root / "reference" / "manifest.json").read_text())["files"]
        got = json.loads((resumed / "manifest.json").read_text())["files"]
        differing = sorted(name for name in set(ref) | set(got) if ref.get(name) != got.get(name))
        if differing == ["config.json"]:  # it records each network's training time, which no rerun repeats
            differing = [] if _without_timings(root / "reference") == _without_timings(resumed) else differing
            r.notes.append("every file is byte-identical except config.json, which is identical once each "
                           "network's wall-clock training seconds are left out (a network restored finished from "
                           "its checkpoint reports 0 s)")
        same = not differing
    r.figures.update(model="hybrid (3 networks + neighbours)", rows=lab.plan.train_rows, epochs=lab.plan.train_epochs,
                     uninterrupted_s=round(reference_s, 1), killed_after_s=round(killed_s, 1),
                     checkpoint_files_at_kill=left, output_after_kill=out_after_kill,
                     resume_exit_code=resume.returncode, resume_s=round(resume_s, 1),
                     checkpoints_removed=not checkpoints.exists(), identical_files=same, differing_files=differing)
    expect(hit, "training ended before it could be killed mid-way", failures)
    expect(not out_after_kill, "a killed training left its output directory", failures)
    expect(resume.returncode == 0, f"--resume failed: {resume.stderr[-500:]}", failures)
    expect(same, f"the resumed model differs from the uninterrupted one: {differing}", failures)
    expect(not checkpoints.exists(), "the checkpoints were not removed after the model was saved", failures)
    return failures


def _without_timings(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    for record in config.get("training", []):
        record.pop("seconds", None)
    return config


# ============================================================================ measurements
def measure_cpu(lab: Lab, m: Measurement) -> None:
    """Server CPU time per request, 2 workers against 1, same model, same load, same run."""
    model = lab.models()["v1"]
    bodies = {1: lab.records_body(1), 1000: lab.columns_body(1000, seed=9)}
    files = {}
    for rows, body in bodies.items():
        files[rows] = lab.work / f"cpu-{rows}.json"
        files[rows].write_bytes(body)
    seconds = lab.plan.cpu_s
    results: dict[str, dict] = {}
    for workers in (1, 2):
        env = {"PROMETHEUS_MULTIPROC_DIR": str(lab.work / f"prom-cpu-{workers}")} if workers > 1 else {}
        if env:
            Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
        service = Service(model, workers=workers, log=lab.work / f"service-cpu-{workers}.log", env=env)
        lab.stack.callback(stop_service, service)
        try:
            service.wait_ready(timeout=300)
            if workers > 1:
                wait_for(lambda: all_workers_serving(service, Path(env["PROMETHEUS_MULTIPROC_DIR"])), timeout=300)
            for rows, path in files.items():
                run_hey(f"{service.url}/v1/score", path, 8, min(3.0, seconds))  # warm-up
                pids = rs.descendants(service.proc.pid)
                cpu0, t0 = {p: rs.cpu_seconds([p]) for p in pids}, time.monotonic()
                hey = run_hey(f"{service.url}/v1/score", path, 8, seconds)
                wall = time.monotonic() - t0
                cpu1 = {p: rs.cpu_seconds([p]) for p in pids}
                served = hey["responses"].get(200, 0)
                total = sum(cpu1[p] - cpu0[p] for p in pids)
                supervisor = cpu1[service.proc.pid] - cpu0[service.proc.pid] if workers > 1 else 0.0
                results[f"{workers}w-{rows}"] = {
                    "workers": workers, "rows": rows, "requests": served, "requests_per_s": hey["requests_per_s"],
                    "errors": hey["errors"], "server_cpu_s": round(total, 2),
                    "server_cpu_ms_per_request": round(1000 * total / max(served, 1), 3),
                    "supervisor_cpu_ms_per_request": round(1000 * supervisor / max(served, 1), 3),
                    "server_cores_busy": round(total / wall, 2)}
            results[f"{workers}w-rss"] = {"processes": {str(p): rs.memory_breakdown(p)
                                                        for p in rs.descendants(service.proc.pid)}}
        finally:
            stop_service(service)
    ratios = {}
    for rows in files:
        one, two = results[f"1w-{rows}"], results[f"2w-{rows}"]
        ratios[rows] = round(two["server_cpu_ms_per_request"] / one["server_cpu_ms_per_request"], 2)
    m.figures.update(load=f"hey, concurrency 8, {seconds:g} s per cell after a warm-up", cells=results,
                     ratio_2_workers_over_1={f"{rows} row{'s' if rows > 1 else ''}": v for rows, v in ratios.items()})
    worst = max(ratios.values())
    m.met = worst <= 1.2
    m.notes.append("Server CPU is the user + system time of all the service's processes (the supervisor and its "
                   "metrics reaper included) read from /proc over the measured seconds, divided by the 200 "
                   "responses; the load generator's CPU is not in it. Per request it barely depends on how busy the "
                   "machine is, unlike requests/s, which the other work on the machine and hey itself (sharing the 2 "
                   "cores) decide.")
    if not m.met:
        m.notes.append(f"Goal not met: {worst}x, {100 * (worst - 1.2) / 1.2:.0f}% over 1.2x.")
    m.value = ", ".join(f"{v}x ({rows}-row requests)" for rows, v in ratios.items())
    lab.cpu_results = results


def measure_memory(lab: Lab, m: Measurement) -> None:
    """RSS per worker: the registry-backed 2-worker service after the soak (the worst case: MLflow's
    client loaded, memory of 10,000-row batches kept by the allocator), the local-model services of the
    CPU measurement after their load, and what each import costs."""
    service = lab.service()
    workers = rs.worker_pids(service.proc.pid)
    per_worker = {str(p): rs.memory_breakdown(p) for p in workers}
    supervisor = rs.memory_breakdown(service.proc.pid)
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(lab.models()["v1"])], capture_output=True,
                           text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    steps = (json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0
             else {"error": probe.stderr[-500:]})
    registry_worst = max((v["rss"] for v in per_worker.values()), default=0.0)
    local = {}
    for key, cell in lab.cpu_results.items():
        if key.endswith("rss"):  # the 1- and 2-worker services on a local model directory
            workers_there = {pid: v for pid, v in cell["processes"].items() if v["rss"] > 200}
            local[key.replace("-rss", "")] = workers_there
    local_worst = max((v["rss"] for cell in local.values() for v in cell.values()), default=None)
    m.met = bool(per_worker) and registry_worst <= 450 and (local_worst is None or local_worst <= 450)
    m.value = (f"{registry_worst:.0f} MiB (largest worker, models:/ URI, after the soak)"
               + (f"; {local_worst:.0f} MiB (largest worker, local model directory, after load)"
                  if local_worst is not None else ""))
    m.figures.update(registry_service_workers_at_start=lab.rss_at_start,
                     registry_service_workers=per_worker, registry_service_supervisor=supervisor,
                     local_model_service_workers=local, import_steps_rss_mib=steps,
                     worker_file_backed_rss_by_package_mib=mapped_packages(workers[0]) if workers else {})
    m.notes += memory_notes(steps, m.figures["worker_file_backed_rss_by_package_mib"], lab.rss_at_start,
                            registry_worst, local_worst)


def memory_notes(steps: dict, packages: dict, at_start: dict, registry_worst: float,
                 local_worst: float | None) -> list[str]:
    """Why a worker weighs what it does, from the figures measured."""
    def cost(step: str) -> str:
        names = list(steps)
        i = names.index(step)
        return f"{steps[step] - steps[names[i - 1]]:+.0f} MiB"

    if "error" in steps or any(step not in steps for step in IMPORT_STEPS):
        return [f"the import probe failed: {steps}"]
    notes = [f"Importing what a worker needs costs {steps[WORKER_MODULE]:.0f} MiB before any model is loaded: "
             f"torch {cost(TORCH)}, pandas {cost(PANDAS)}, the web stack {cost(WEB)}; a model {cost(MODEL)}; "
             f"mlflow and anomaly_ae.registry, for models:/ URIs only, "
             f"{steps[REGISTRY] - steps[MODEL]:+.0f} MiB. After all of it, scikit-learn imported: "
             f"{steps['scikit-learn imported']}. Mapped in a worker: "
             + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in list(packages.items())[:6]) + "."]
    if at_start:
        notes.append(f"A models:/ worker right after start: {max(at_start.values()):.0f} MiB; after the liveness, "
                     f"stalled and soak checks: {registry_worst:.0f} MiB. The difference is anonymous memory the "
                     "allocator keeps after the 10,000-row batches; it stayed flat through the soak (not a leak).")
    over = [f"{w - 450:.0f} MiB ({100 * (w - 450) / 450:.0f}%) over for the {label}" for label, w in
            (("models:/ worker after load", registry_worst), ("local-model worker", local_worst))
            if w is not None and w > 450]
    notes.append("Goal not met: " + "; ".join(over) + "." if over else "Goal met.")
    return notes


TORCH, PANDAS, WEB = "+ torch", "+ pandas", "+ fastapi, uvicorn, prometheus_client"
WORKER_MODULE, MODEL = "+ anomaly_ae.service.app (the worker module)", "+ a local model loaded"
REGISTRY = "+ anomaly_ae.registry"
IMPORT_STEPS = (TORCH, PANDAS, WEB, WORKER_MODULE, MODEL, REGISTRY)
# what a worker imports, in its order (pyarrow blocked as serving_app blocks it), RSS after each step
IMPORT_PROBE = r"""
import json, sys, time
sys.modules['pyarrow'] = None
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return round(int(line.split()[1]) / 1024, 1)
steps = {'python': rss()}
import numpy; steps['+ numpy'] = rss()
import torch; steps['+ torch'] = rss()
import pandas; steps['+ pandas'] = rss()
import fastapi, uvicorn, prometheus_client, pydantic_settings; steps['+ fastapi, uvicorn, prometheus_client'] = rss()
import anomaly_ae.service.app; steps['+ anomaly_ae.service.app (the worker module)'] = rss()
from anomaly_ae import Detector
d = Detector.load(sys.argv[1]); steps['+ a local model loaded'] = rss()
import mlflow; steps['+ mlflow (only for models:/ URIs)'] = rss()
import anomaly_ae.registry; steps['+ anomaly_ae.registry'] = rss()
steps['scikit-learn imported'] = 'sklearn' in sys.modules
print(json.dumps(steps))
"""


def mapped_packages(pid: int) -> dict[str, float]:
    """Resident file-backed memory of one process by site-packages package (shared libraries mostly)."""
    totals: dict[str, float] = {}
    current = None
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and "-" in parts[0] and ":" in parts[3]:
            path = parts[5]
            match = re.search(r"site-packages/([^/]+)", path)
            current = match.group(1).split(".")[0] if match else ("python and system libraries" if path.startswith("/")
                                                                   else None)
        elif line.startswith("Rss:") and current:
            totals[current] = totals.get(current, 0) + int(parts[1]) / 1024
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:12]
    return {k: round(v, 1) for k, v in top}
