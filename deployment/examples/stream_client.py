"""A stream client for a series model behind `anomaly-ae serve`: the protocol of docs/serving.md, "Series models".

The service keeps no state between requests. This client does: per series, the last `context_rows`
rows it has sent (what `GET /v1/model` says a new row needs before it: a window, and the steps the
alert rule looks back over). For every batch of new rows it posts, per series, those context rows
and the new rows, with `"score_last": N` (N = new rows per series; series with different counts go
in separate requests), and gets back the new rows only, scored and alerted as an offline pass over
the whole history would score and alert them.

    python deployment/examples/stream_client.py --url http://127.0.0.1:8000 --input metrics.csv
    # ANOMALY_AE_API_KEY in the environment; metrics.csv in time order, one row per (time, series)

or as a library:

    client = StreamClient("http://127.0.0.1:8000", api_key)
    for tick in rows_grouped_by_time:                # e.g. from Kafka, one list of dicts per interval
        for row, result in client.push(tick):
            if result["alert"]:                      # one per incident (the model's alert rule)
                notify(row, result)

Standard library only. Not production code: no persistence of the context across restarts (after a
restart the first `window - 1` rows of each series are scored with a warm-up note), no concurrency.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict, deque
from typing import Any, Callable, Iterable, Iterator

# (method, path, JSON body or None) -> (status, headers, parsed JSON)
Transport = Callable[[str, str, Any], "tuple[int, dict[str, str], Any]"]


def urllib_transport(url: str, api_key: str | None, timeout: float = 30.0) -> Transport:
    def send(method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if api_key:
            request.add_header("Authorization", f"Bearer {api_key}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")
    return send


class ServiceError(RuntimeError):
    def __init__(self, status: int, payload: Any) -> None:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        super().__init__(f"{status} {error.get('code', '')}: {error.get('message', payload)}")
        self.status, self.error = status, error


class StreamClient:
    """Scores live rows of a series model: keeps the context per series, sends new rows."""

    def __init__(self, url: str = "", api_key: str | None = None, *, transport: Transport | None = None,
                 retries: int = 5) -> None:
        self.send = transport or urllib_transport(url, api_key)
        self.retries = retries
        info = self._call("GET", "/v1/model", None)
        if info.get("kind") != "series":
            raise ValueError(f"model {info.get('name')} v{info.get('version')} scores rows alone, not series; "
                             "post its rows to /v1/score directly")
        self.info = info["series"]
        self.time_col: str = self.info["time_col"]
        self.series_col: str | None = self.info["series_col"]
        self.context_rows: int = self.info["context_rows"]
        self.context: dict[Any, deque] = defaultdict(lambda: deque(maxlen=self.context_rows))
        # read as text from a CSV: the model compares categories as text, and "200" is not 200.0
        self.text_cols = [self.time_col, self.series_col,
                          *(c["name"] for c in info["schema"]["columns"] if c["kind"] == "categorical")]

    def push(self, rows: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Score new rows (any series, each series in time order, after the rows pushed before).

        Returns (row, result) per row in the order given; result is the service's (score, p_value,
        is_anomaly, severity, alert, notes, ...)."""
        new: dict[Any, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
        rows = list(rows)
        for i, row in enumerate(rows):
            new[row.get(self.series_col) if self.series_col else None].append((i, row))
        by_count: dict[int, list[Any]] = defaultdict(list)
        for series, items in new.items():
            by_count[len(items)].append(series)
        out: list[Any] = [None] * len(rows)
        for count, group in by_count.items():
            records, positions = [], []
            for series in group:
                records += list(self.context[series])
                for i, row in new[series]:
                    positions.append(i)
                    records.append(row)
            payload = self._call("POST", "/v1/score", {"records": records, "score_last": count})
            for i, result in zip(positions, payload["results"]):
                out[i] = (rows[i], result)
            for series in group:  # now part of the context of what comes next
                self.context[series].extend(row for _, row in new[series])
        return out

    def _call(self, method: str, path: str, body: Any) -> Any:
        for attempt in range(self.retries + 1):
            status, headers, payload = self.send(method, path, body)
            if status == 200:
                return payload
            if status == 503 and attempt < self.retries:  # overloaded or (re)loading: as the service asks
                time.sleep(float(headers.get("retry-after") or headers.get("Retry-After") or 1))
                continue
            raise ServiceError(status, payload)
        raise AssertionError("unreachable")


def read_rows(path: str, text_cols: Iterable[str | None] = ()) -> Iterator[dict[str, Any]]:
    """Rows of a CSV file (numbers parsed, except in `text_cols`) or of JSON lines ('-': stdin)."""
    text = set(text_cols)
    handle = sys.stdin if path == "-" else open(path, newline="")
    with handle:
        if path.endswith(".csv"):
            for row in csv.DictReader(handle):
                yield {k: v if k in text else _number(v) for k, v in row.items()}
        else:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def _number(text: str) -> Any:
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else None  # NaN is no JSON: a reading that is missing


def ticks(rows: Iterable[dict[str, Any]], time_col: str, steps: int) -> Iterator[list[dict[str, Any]]]:
    """Rows grouped by timestamp, `steps` timestamps per batch: a replay of a stream."""
    batch: list[dict[str, Any]] = []
    seen: list[Any] = []
    for row in rows:
        if row[time_col] not in seen:
            if len(seen) == steps:
                yield batch
                batch, seen = [], []
            seen.append(row[time_col])
        batch.append(row)
    if batch:
        yield batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--input", default="-", help="CSV or JSON lines, in time order ('-': JSON lines on stdin)")
    parser.add_argument("--steps", type=int, default=1, help="time steps per request (default 1: every tick)")
    args = parser.parse_args(argv)
    client = StreamClient(args.url, os.environ.get("ANOMALY_AE_API_KEY"))
    print(f"window {client.info['window']} steps; sending {client.context_rows} rows of context per series",
          file=sys.stderr)
    rows = read_rows(args.input, text_cols=client.text_cols)
    for batch in ticks(rows, client.time_col, args.steps):
        for row, result in client.push(batch):
            if result["is_anomaly"] or result["alert"]:
                where = row.get(client.series_col, "") if client.series_col else ""
                flag = "ALERT" if result["alert"] else "     "
                print(f"{flag} {row[client.time_col]} {where} score={result['score']:.4g} "
                      f"severity={result['severity']} {'; '.join(result['notes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
