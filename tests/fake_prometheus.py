"""An in-process stand-in for Prometheus' range-query API, for the watcher's logic tests.

It answers POST /api/v1/query_range from a table (one column per query string, one row per
(series, time)) the way Prometheus does: samples on the step grid from start to end, one series
per label value, values as strings. Faults are switched on per test. The end-to-end tests
(tests/test_watch_prometheus.py) use a real Prometheus instead.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import numpy as np
import pandas as pd


class FakePrometheus:
    def __init__(self, frame: pd.DataFrame, *, time_col: str, series_col: str, label: str = "host") -> None:
        self.label = label
        self.series_col = series_col
        times = frame[time_col].to_numpy().astype("datetime64[ms]").astype(np.int64)
        self.frame = frame.assign(_ms=times)
        self.fault: str | None = None  # "down" | "timeout" | "http_500" | "scalar" | "duplicate" | "empty"
        self.requests: list[dict[str, str]] = []
        self.hidden: set[str] = set()  # series left out of every answer (stale)
        self.missing: set[tuple[str, str]] = set()  # (series, query): that series has no samples for that query

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if self.fault == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.fault == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if self.fault == "http_500":
            return httpx.Response(503, json={"status": "error", "errorType": "unavailable", "error": "overloaded"})
        params = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.requests.append(params)
        query, start, end, step = params["query"], float(params["start"]), float(params["end"]), float(params["step"])
        if self.fault == "scalar":
            return httpx.Response(200, json={"status": "success", "data": {"resultType": "scalar", "result": [0, "1"]}})
        n_points = int(round((end - start) / step)) + 1
        if n_points > 11_000:
            return httpx.Response(400, json={"status": "error", "errorType": "bad_data",
                                             "error": "exceeded maximum resolution of 11,000 points per timeseries"})
        result = []
        if self.fault != "empty":
            lo, hi = round(start * 1000), round(end * 1000)
            step_ms = round(step * 1000)
            for name, part in self.frame.groupby(self.series_col, sort=True):
                if name in self.hidden or (name, query) in self.missing:
                    continue
                inside = part[(part["_ms"] >= lo) & (part["_ms"] <= hi) & ((part["_ms"] - lo) % step_ms == 0)]
                values = [[t / 1000, repr(float(v))] for t, v in zip(inside["_ms"], inside[query])]
                if values:
                    result.append({"metric": {self.label: name, "job": "node"}, "values": values})
                    if self.fault == "duplicate":
                        result.append({"metric": {self.label: name, "job": "other"}, "values": values})
        body = {"status": "success", "data": {"resultType": "matrix", "result": result}}
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
