"""Issue 11: where a 1-row request's time goes in process, with small bodies scored on the event loop
(`inline_max_body_bytes`, default 4096) and in a worker thread (0), back to back.

The app is `create_app` with its lifespan running, called straight through ASGI (no sockets, no
HTTP parsing: what `hey` adds on top was ~0.2 ms a request on the 2-core machine, its /healthz).
The model is the serving benchmark's default (`Detector()`, 30 numeric columns, 5,000 rows, 40
epochs), trained here; one torch thread. Per variant, the median of N calls, in rounds that
alternate the variants:

- `POST /v1/score` (1 row): the whole request, inline or in a thread;
- `GET /healthz`: the middleware and routing alone;
- `score_batch`: parse, validate, score and write the response, called directly (no app);
- `score_batch in a thread`: the same through `asyncio.to_thread`, the hop alone added.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiments/issue11_inline.py [--out FILE] [--code LABEL]

`--code` names the package version measured in the report (e.g. an older commit's package put first
on PYTHONPATH, to compare two versions back to back); `--out` the report (default
results/experiments/issue11_inline.md).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import orjson  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from serve_bench import make_data  # noqa: E402

from anomaly_ae import Detector  # noqa: E402
from anomaly_ae.service.app import create_app  # noqa: E402
from anomaly_ae.service.score_handler import score_batch  # noqa: E402
from anomaly_ae.service.settings import ServiceSettings  # noqa: E402

KEY = "inline-bench-key-0123456789"
CALLS, ROUNDS = 2000, 3
OUT = Path(__file__).resolve().parents[1] / "results" / "experiments" / "issue11_inline.md"


async def call(app, path: str, method: str, body: bytes) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "state": {},
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), (b"authorization", f"Bearer {KEY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    statuses = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def measure(model_dir: Path, body: bytes) -> dict[str, list[float]]:
    apps = {limit: create_app(ServiceSettings(model_uri=str(model_dir), api_keys=[KEY], poll_interval_s=0,
                                              inline_max_body_bytes=limit)) for limit in (4096, 0)}
    results: dict[str, list[float]] = {}
    for limit, app in apps.items():
        async with app.router.lifespan_context(app):
            while app.state.holder.current is None:
                await asyncio.sleep(0.05)
            assert await call(app, "/v1/score", "POST", body) == 200
            model, parser = app.state.holder.current, app.state.parser
            for _ in range(ROUNDS):
                variants = {f"POST /v1/score, 1 row ({'inline' if limit else 'worker thread'})":
                            lambda: call(app, "/v1/score", "POST", body)}
                if limit:
                    variants["GET /healthz"] = lambda: call(app, "/healthz", "GET", b"")
                    variants["score_batch"] = None
                    variants["score_batch in a thread"] = lambda: asyncio.to_thread(score_batch, model, body, parser)
                for name, make in variants.items():
                    times = []
                    for _ in range(CALLS):
                        started = time.perf_counter()
                        if make is None:
                            score_batch(model, body, parser)
                        else:
                            await make()
                        times.append(time.perf_counter() - started)
                    results.setdefault(name, []).append(statistics.median(times) * 1e3)
    return results


def main() -> None:
    import argparse

    import anomaly_ae

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--code", default="this checkout")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="issue11-inline-"))
    Detector(epochs=40, random_state=0).fit(make_data(5000, seed=1)).save(work / "model")
    frame = make_data(1, seed=2)
    body = orjson.dumps({"columns": list(frame.columns), "data": frame.values.tolist()})
    results = asyncio.run(measure(work / "model", body))
    lines = ["# Issue 11: a 1-row request in process, scored on the event loop or in a worker thread", "",
             f"Generated by `benchmarks/experiments/issue11_inline.py` (see its docstring): the default model, "
             f"30 columns, a {len(body)}-byte body; median ms of {CALLS} calls per round, {ROUNDS} rounds; "
             f"load average {os.getloadavg()[0]:.2f} at the end. Code: {args.code} "
             f"(package at {Path(anomaly_ae.__file__).parent.parent.name}/anomaly_ae).", "",
             "| what | median ms per round | mean of rounds |", "|---|---|---:|"]
    for name, rounds in results.items():
        lines.append(f"| {name} | {' / '.join(f'{r:.3f}' for r in rounds)} | {statistics.mean(rounds):.3f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
