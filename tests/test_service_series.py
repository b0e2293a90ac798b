"""The scoring service with a series model (SeriesDetector), in process through httpx's ASGI transport.

A stream client sends, per series, its new rows after the `context_rows` rows before them with
`score_last`; the response holds the new rows only, with the scores, flags, notes and alerts an
offline pass over the whole history gives. Bad series input is a 4xx with a clear message (an
unknown series is a note). Metrics count new rows, context apart, and a `series` label only when
the operator opts in, capped. Models are tiny (PCA over windows of 8 steps, a few hundred steps).
"""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pandas as pd
import pytest

from service_support import (ADMIN, ADMIN_KEY, SCORE, SCORE_KEY, Service, assert_error, fuzz_openapi, in_process,
                             metric_value, until)

from anomaly_ae import Detector, SeriesDetector
from anomaly_ae.data.synthetic import LABEL_COLUMNS, make_telemetry
from anomaly_ae.data.synthetic_series import SERIES_LABEL_COLUMNS, make_series_telemetry
from anomaly_ae.service import metrics
from anomaly_ae.service.schemas import ModelInfo, ScoreResponse
from anomaly_ae.service.settings import ServiceSettings

pytestmark = pytest.mark.anyio
WINDOW = 8


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def series_model(tmp_path_factory):
    """The default alert rule (3 of 5, cooldown 12), which a stateless request reproduces exactly given
    the context the model asks for."""
    history = make_series_telemetry(300, 3, seed=0, anomalies=False).drop(columns=list(SERIES_LABEL_COLUMNS))
    detector = SeriesDetector("pca", window=WINDOW, time_col="ts", series_col="host", random_state=0).fit(history)
    path = tmp_path_factory.mktemp("series-model") / "model"
    detector.save(path)
    return path


@pytest.fixture(scope="module")
def row_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("row-model") / "model"
    Detector("pca").fit(make_telemetry(500, seed=1).drop(columns=list(LABEL_COLUMNS))).save(path)
    return path


@pytest.fixture(scope="module")
def stream():
    """Five days later than the training day, with labelled anomalies: flags and alerts to compare."""
    frame = make_series_telemetry(1500, 3, seed=1).drop(columns=list(SERIES_LABEL_COLUMNS))
    frame = frame.groupby("host").nth(slice(700, 760)).reset_index(drop=True)
    frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")  # what JSON carries
    return frame


def settings(model, **overrides) -> ServiceSettings:
    values = dict(model_uri=str(model), api_keys=[SCORE_KEY], admin_keys=[ADMIN_KEY], poll_interval_s=0)
    return ServiceSettings(**{**values, **overrides})


async def ready(client: httpx.AsyncClient) -> None:
    async def is_ready():
        return (await client.get("/readyz")).status_code == 200
    await until(is_ready)


def records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records"))


async def score(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    return await client.post("/v1/score", json=body, headers=SCORE)


# ---------------------------------------------------------------------------- the stream contract
async def test_model_info_says_which_context_to_send(series_model):
    async with in_process(settings(series_model)) as (_, client):
        await ready(client)
        info = (await client.get("/v1/model", headers=SCORE)).json()
    ModelInfo.model_validate(info)
    assert info["kind"] == "series" and info["model_type"] == "pca"
    series = info["series"]
    assert series == {"window": WINDOW, "context_rows": WINDOW - 1 + 5 - 1 + 12, "time_col": "ts",
                      "series_col": "host", "step_seconds": 300.0, "max_gap": 3,
                      "alert_rule": {"min_steps": 3, "within": 5, "cooldown": 12},
                      "n_known_series": 3, "covariates": []}
    assert [c["name"] for c in info["schema"]["columns"]][:2] == ["cpu_util_pct", "mem_util_pct"]


async def test_a_model_with_calendar_covariates_scores_streamed_rows_as_offline(stream, tmp_path):
    """The covariates come from the time column the client sends anyway: nothing else to send, and the
    streamed rows score, flag and explain (naming time_of_day among the columns) as offline."""
    history = make_series_telemetry(600, 3, seed=0, anomalies=False).drop(columns=list(SERIES_LABEL_COLUMNS))
    path = SeriesDetector("knn", window=WINDOW, time_col="ts", series_col="host", covariates=["time_of_day"],
                          random_state=0).fit(history).save(tmp_path / "timed")
    offline = Detector.load(path).score_frame(stream, top_k=9)
    context = WINDOW - 1 + 5 - 1 + 12
    by_host = {host: rows.index.to_numpy() for host, rows in stream.groupby("host")}
    async with in_process(settings(path)) as (_, client):
        await ready(client)
        info = (await client.get("/v1/model", headers=SCORE)).json()
        assert info["series"]["covariates"] == ["time_of_day"]
        for t in range(context, context + 5):
            sent = np.concatenate([rows[t - context: t + 1] for rows in by_host.values()])
            response = await score(client, {"records": records(stream.loc[sent]), "score_last": 1, "explain": True,
                                            "top_k": 9, "ids": [int(i) for i in sent]})
            assert response.status_code == 200, response.text
            ScoreResponse.model_validate(response.json())
            for result in response.json()["results"]:
                expected = offline.loc[result["id"]]
                assert result["score"] == pytest.approx(expected["score"], rel=1e-5)
                assert result["is_anomaly"] == expected["is_anomaly"]
                names = [f["feature"] for f in result["top_features"]]
                assert len(names) == 9 and "time_of_day" in names  # 8 metrics and the covariate
                assert names[0] == expected["feature_1"]


async def test_streamed_rows_score_as_an_offline_pass(series_model, stream):
    """One request per step: each host's new row after (at most) context_rows rows before it. Scores,
    flags, severity, notes and alerts equal SeriesDetector.score_frame over the whole stream, at the start
    of each series (less context than asked: the request holds the series' start) and afterwards."""
    offline = Detector.load(series_model).score_frame(stream)
    assert offline["is_anomaly"].any() and offline["alert"].any() and not offline["alert"].all()
    context = WINDOW - 1 + 5 - 1 + 12
    by_host = {host: rows.index.to_numpy() for host, rows in stream.groupby("host")}
    got: dict[int, dict] = {}
    async with in_process(settings(series_model)) as (_, client):
        await ready(client)
        for t in range(60):
            sent = np.concatenate([rows[max(0, t - context): t + 1] for rows in by_host.values()])
            response = await score(client, {"records": records(stream.loc[sent]), "score_last": 1,
                                            "ids": [int(i) for i in sent]})
            assert response.status_code == 200, response.text
            payload = response.json()
            ScoreResponse.model_validate(payload)
            assert payload["n_rows"] == 3 and payload["n_context_rows"] == len(sent) - 3
            assert payload["n_alerts"] == sum(r["alert"] for r in payload["results"])
            for result in payload["results"]:
                assert sent[result["row"]] == result["id"]  # `row` is the position in the request
                got[result["id"]] = result
    assert sorted(got) == list(range(len(stream)))
    results = [got[i] for i in range(len(stream))]
    np.testing.assert_allclose([r["score"] for r in results], offline["score"], rtol=1e-5)
    assert [r["is_anomaly"] for r in results] == offline["is_anomaly"].tolist()
    assert [r["severity"] for r in results] == offline["severity"].tolist()
    assert [r["alert"] for r in results] == offline["alert"].tolist()
    assert ["; ".join(r["notes"]) for r in results] == offline["notes"].tolist()
    warm = [r for r in results if any("warm-up" in n for n in r["notes"])]
    assert len(warm) == 3 * (WINDOW - 1)  # only the first steps of each series, never later ones


async def test_a_request_scores_the_new_rows_windows_and_what_their_alerts_read(series_model, stream, scored_windows):
    """The full context and one new row per host: the service scores each host's new row by its window and
    the `within - 1` rows before it (their flags feed the k-of-n alert), not the context rows that only
    complete windows, unless a new row may alert: then the `cooldown` rows before those too; the returned
    rows equal the offline pass."""

    offline = Detector.load(series_model).score_frame(stream, top_k=2)
    context = WINDOW - 1 + 5 - 1 + 12
    scored = scored_windows
    by_host = [rows.index.to_numpy() for _, rows in stream.groupby("host")]
    async with in_process(settings(series_model)) as (_, client):
        await ready(client)
        for t in (context, 30, 59):
            sent = np.concatenate([rows[t - context: t + 1] for rows in by_host])
            scored.clear()
            response = await score(client, {"records": records(stream.loc[sent]), "score_last": 1, "explain": True,
                                            "top_k": 2})
            assert response.status_code == 200, response.text
            # of 3 x 24 rows sent; 12 more for each host whose new row may alert
            assert scored[0] == 3 * 5 and (len(scored) == 1 or scored[1:] in ([12], [24], [36]))
            results = response.json()["results"]
            expected = offline.loc[sent[[r["row"] for r in results]]]
            np.testing.assert_allclose([r["score"] for r in results], expected["score"], rtol=1e-5)
            assert [r["alert"] for r in results] == expected["alert"].tolist()
            assert [r["top_features"][0]["feature"] for r in results] == expected["feature_1"].tolist()


async def test_several_new_rows_per_series_and_interleaved_series(series_model, stream):
    """score_last=4 with the series interleaved in the request: each series' last 4 rows come back, in request
    order, equal to the offline pass; explanations follow the rows they belong to."""
    offline = Detector.load(series_model).score_frame(stream, top_k=2)
    window = stream.groupby("host").nth(slice(18, 45))  # 23 rows of context, 4 new, per host
    interleaved = window.iloc[np.argsort(window.groupby("host").cumcount().to_numpy(), kind="stable")]
    async with in_process(settings(series_model)) as (_, client):
        await ready(client)
        response = await score(client, {"columns": list(stream.columns), "data": interleaved.values.tolist(),
                                        "score_last": 4, "explain": True, "top_k": 2})
    assert response.status_code == 200, response.text
    payload = response.json()
    ScoreResponse.model_validate(payload)
    assert payload["n_rows"] == 12 and payload["n_context_rows"] == 69
    returned = interleaved.index.to_numpy()[[r["row"] for r in payload["results"]]]
    assert [r["row"] for r in payload["results"]] == sorted(r["row"] for r in payload["results"])
    assert sorted(returned) == sorted(window.groupby("host").tail(4).index)
    expected = offline.loc[returned]
    np.testing.assert_allclose([r["score"] for r in payload["results"]], expected["score"], rtol=1e-5)
    assert [r["top_features"][0]["feature"] for r in payload["results"]] == expected["feature_1"].tolist()
    assert [r["alert"] for r in payload["results"]] == expected["alert"].tolist()


async def test_without_score_last_every_row_comes_back(series_model, stream):
    part = stream.groupby("host").head(20)
    offline = Detector.load(series_model).score_frame(part)
    async with in_process(settings(series_model)) as (_, client):
        await ready(client)
        payload = (await score(client, {"records": records(part)})).json()
    assert payload["n_rows"] == len(part) and payload["n_context_rows"] == 0
    assert [r["row"] for r in payload["results"]] == list(range(len(part)))
    np.testing.assert_allclose([r["score"] for r in payload["results"]], offline["score"], rtol=1e-5)
    assert [r["alert"] for r in payload["results"]] == offline["alert"].tolist()


# ---------------------------------------------------------------------------- bad input: 4xx, never 500
async def test_bad_series_input_is_a_clear_4xx_and_an_unknown_series_a_note(series_model, stream):
    good = records(stream.groupby("host").head(12))  # 12 rows of host-0, then host-1, then host-2

    def edit(i: int, **changes) -> list[dict]:
        return [r | changes if j == i else r for j, r in enumerate(good)]

    swapped = list(good)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    cases = {
        "no time column": ([{k: v for k, v in r.items() if k != "ts"} for r in good], "missing_column", "ts",
                           "time column"),
        "no series column": ([{k: v for k, v in r.items() if k != "host"} for r in good], "missing_column", "host",
                             "series column"),
        "time as a number": (edit(2, ts=1767600000), "dtype", "ts", "ISO 8601"),
        "time null": (edit(2, ts=None), "missing_value", "ts", "is null"),
        "series as a bool": (edit(1, host=True), "dtype", "host", "text or integers"),
        "series id empty": (edit(1, host=""), "dtype", "host", "empty, longer than 256 characters"),
        "series id too long": (edit(1, host="h" * 257), "dtype", "host", "in rows [1]"),
        "series id past int64": (edit(1, host=2 ** 63), "dtype", "host", "outside 64-bit integers"),
        "time of day only": (edit(2, ts="10:20"), "invalid_timestamp", "ts", "not an ISO 8601 timestamp"),
        "not a timestamp": (edit(2, ts="yesterday"), "invalid_timestamp", "ts", "not timestamps"),
        "unsorted": (swapped, "unsorted_timestamps", "ts", "not in time order at row 4"),
        "a metric missing": ([{k: v for k, v in r.items() if k != "latency_ms"} for r in good], "missing_column",
                             "latency_ms", "latency_ms"),
    }
    async with in_process(settings(series_model)) as (_, client):
        await ready(client)
        for name, (rows, code, column, says) in cases.items():
            error = assert_error(await score(client, {"records": rows, "score_last": 1}), 422, code)
            assert says in error["message"], (name, error)
            if column is not None:
                assert error["column"] == column, (name, error)
            if code == "unsorted_timestamps":
                assert error["rows"] == [4], (name, error)
        # a reading within the same step as the one before (irregular sampling) is scored and noted
        early = edit(5, ts=(pd.Timestamp(good[4]["ts"]) + pd.Timedelta("1min")).isoformat())
        response = await score(client, {"records": early, "score_last": len(early)})
        assert response.status_code == 200, response.text
        notes = response.json()["results"][5]["notes"]
        assert any("within the same 5 min step as the reading before it" in n for n in notes), notes
        # and one at the same timestamp (a reading sent again) too
        response = await score(client, {"records": edit(5, ts=good[4]["ts"]), "score_last": len(good)})
        assert response.status_code == 200, response.text
        notes = response.json()["results"][5]["notes"]
        assert any("at the same timestamp as the reading before it" in n for n in notes), notes
        for bad in (0, -1, True, 1.5, "2", 10_001):
            error = assert_error(await score(client, {"records": good, "score_last": bad}), 422, "invalid_field")
            assert error["field"] == "score_last" and "score_last" in error["message"]
        # a series the model never saw is scored with the shared model, and noted
        new_host = [r | {"host": "host-new"} for r in good[:12]] + good[12:]
        response = await score(client, {"records": new_host, "score_last": 2})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == 6 and all(np.isfinite(r["score"]) for r in results)
        assert all("series 'host-new' was not in the training data" in "; ".join(r["notes"]) for r in results[:2])
        assert not any("training data" in "; ".join(r["notes"]) for r in results[2:])
        # integer series ids are ids too
        numbered = [r | {"host": 7} for r in good[:12]]
        as_int = await score(client, {"records": numbered, "score_last": 1})
        assert as_int.status_code == 200
        # 7.0 is the integer 7 in JSON Schema (and some encoders write it so): the same series, not a new one
        as_float = await score(client, {"records": [r | {"host": 7.0} for r in good[:12]], "score_last": 1})
        assert as_float.status_code == 200 and as_float.json()["results"] == as_int.json()["results"]
        error = assert_error(await score(client, {"records": [r | {"host": 7.5} for r in good[:12]]}), 422, "dtype")
        assert error["column"] == "host"


async def test_a_row_model_refuses_score_last_and_documents_none(row_model):
    sent = json.loads(make_telemetry(3, seed=2).drop(columns=list(LABEL_COLUMNS)).to_json(orient="records"))
    async with in_process(settings(row_model)) as (_, client):
        await ready(client)
        error = assert_error(await score(client, {"records": sent, "score_last": 1}), 422, "invalid_field")
        assert error["field"] == "score_last" and "series models" in error["message"]
        payload = (await score(client, {"records": sent})).json()
        assert "n_alerts" not in payload and "row" not in payload["results"][0]
        info = (await client.get("/v1/model", headers=SCORE)).json()
        spec = (await client.get("/openapi.json")).json()
    assert info["kind"] == "detector" and info["series"] is None
    for variant in ("RecordsScoreRequest", "ColumnarScoreRequest"):
        assert "score_last" not in spec["components"]["schemas"][variant]["properties"]


async def test_openapi_describes_the_series_request(series_model):
    async with in_process(settings(series_model, max_rows=500)) as (_, client):
        generic = (await client.get("/openapi.json")).json()
        await ready(client)
        spec = (await client.get("/openapi.json")).json()
    assert generic["components"]["schemas"]["RecordsScoreRequest"]["properties"]["score_last"]["anyOf"][0] == {
        "type": "integer", "minimum": 1, "maximum": 500}
    schemas = spec["components"]["schemas"]
    records_ = schemas["RecordsScoreRequest"]["properties"]
    item = records_["records"]["items"]
    assert item["required"][:2] == ["ts", "host"] and item["additionalProperties"] is False
    assert item["properties"]["ts"]["type"] == "string"
    assert item["properties"]["host"]["type"] == ["string", "integer"]
    assert records_["score_last"]["anyOf"][0]["maximum"] == 500
    columns = schemas["ColumnarScoreRequest"]["properties"]["columns"]["prefixItems"]
    assert [c["const"] for c in columns[:2]] == ["ts", "host"]
    sample = schemas["ScoredSample"]["properties"]
    assert {"row", "alert"} <= set(sample) and "alert" not in schemas["ScoredSample"].get("required", [])
    assert {"window", "context_rows", "time_col", "series_col", "step_seconds"} <= set(
        schemas["SeriesInfo"]["properties"])


# ---------------------------------------------------------------------------- metrics
def _metrics() -> str:
    return metrics.render()[0].decode()


async def test_metrics_count_new_rows_context_and_alerts_without_series_labels(series_model, stream):
    part = stream.groupby("host").head(30)
    before = _metrics()
    labelled_before = metric_value(before, "anomaly_ae_series_rows_scored_total", series="host-0")
    async with in_process(settings(series_model)) as (_, client):
        await ready(client)
        payload = (await score(client, {"records": records(part), "score_last": 5})).json()
    after = _metrics()

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("anomaly_ae_rows_scored_total") == 15
    assert delta("anomaly_ae_context_rows_total") == 75
    assert delta("anomaly_ae_score_count") == 15
    assert delta("anomaly_ae_alerts_total") == payload["n_alerts"]
    flagged = [r["severity"] for r in payload["results"] if r["severity"] != "normal"]
    assert sum(delta("anomaly_ae_anomalies_total", severity=s) for s in set(flagged)) == len(flagged)
    assert metric_value(after, "anomaly_ae_series_rows_scored_total", series="host-0") == labelled_before
    assert "anomaly_ae_unseen_series_rows_total" in after


async def test_per_series_labels_only_when_opted_in_and_capped(series_model, stream):
    part = stream.groupby("host").head(12).copy()
    part.loc[part.host == "host-2", "host"] = "host-new"  # not in training
    before = _metrics()
    async with in_process(settings(series_model, metrics_series_labels=1)) as (_, client):
        await ready(client)
        assert (await score(client, {"records": records(part), "score_last": 2})).status_code == 200
    after = _metrics()

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("anomaly_ae_series_rows_scored_total", series="host-0") == 2  # the first of the training series
    assert delta("anomaly_ae_series_rows_scored_total", series="other") == 4   # host-1 beyond the cap, host-new
    assert delta("anomaly_ae_unseen_series_rows_total") == 2
    labels = {line.split('series="')[1].split('"')[0] for line in after.splitlines()
              if line.startswith("anomaly_ae_series_rows_scored_total{")}
    assert "host-1" not in labels and "host-new" not in labels


async def test_series_requests_concurrently_with_a_reload(series_model, stream, tmp_path):
    """A swap to another version of the series model mid-stream: every request answers 200, each scored
    by the old model or the new one (told apart by their thresholds), and the new one serves after it."""
    import shutil

    served = tmp_path / "served"
    shutil.copytree(series_model, served)
    part = records(stream.groupby("host").head(12))
    old_threshold = Detector.load(series_model).threshold_
    async with in_process(settings(served)) as (_, client):
        await ready(client)
        other = SeriesDetector("pca", window=WINDOW, time_col="ts", series_col="host", variance_kept=0.8).fit(
            make_series_telemetry(300, 3, seed=5, anomalies=False).drop(columns=list(SERIES_LABEL_COLUMNS)))
        other.save(served)
        requests = [score(client, {"records": part, "score_last": 1}) for _ in range(6)]
        reload = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        responses = await asyncio.gather(*requests, reload)
        after = await score(client, {"records": part, "score_last": 1})
    assert [r.status_code for r in responses] == [200] * 7
    assert responses[-1].json()["status"] == "loaded" and other.threshold_ != old_threshold
    assert all(min(abs(r.json()["threshold"] - old_threshold), abs(r.json()["threshold"] - other.threshold_))
               <= 1e-9 * abs(old_threshold) for r in responses[:-1])
    assert after.json()["threshold"] == pytest.approx(other.threshold_)


# ---------------------------------------------------------------------------- the example client
def _stream_client():
    """deployment/examples/stream_client.py as a module (it is an example, not part of the package)."""
    import importlib.util

    from service_support import REPO

    spec = importlib.util.spec_from_file_location("stream_client", REPO / "deployment/examples/stream_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_example_stream_client_replays_a_stream_as_scored_offline(series_model, stream):
    """deployment/examples/stream_client.py, three time steps per request, against the app (the client is
    synchronous: it runs in a thread and its requests go through the in-process ASGI client): every row
    comes back once, scored and alerted as in the offline pass."""
    module = _stream_client()
    offline = Detector.load(series_model).score_frame(stream)
    in_time = stream.sort_values(["ts", "host"], kind="stable")
    async with in_process(settings(series_model)) as (_, http):
        await ready(http)
        loop = asyncio.get_running_loop()

        def transport(method, path, body):
            call = http.request(method, path, json=body, headers=SCORE)
            response = asyncio.run_coroutine_threadsafe(call, loop).result(60)
            return response.status_code, dict(response.headers), response.json()

        def replay():
            client = module.StreamClient(transport=transport)
            assert client.context_rows == WINDOW - 1 + 5 - 1 + 12
            return [pair for batch in module.ticks(records(in_time), "ts", 3) for pair in client.push(batch)]

        got = await asyncio.to_thread(replay)
    assert [row["ts"] for row, _ in got] == in_time["ts"].tolist()
    results = [result for _, result in got]
    expected = offline.loc[in_time.index]
    np.testing.assert_allclose([r["score"] for r in results], expected["score"], rtol=1e-5)
    assert [r["alert"] for r in results] == expected["alert"].tolist()
    assert 0 < expected["alert"].sum() < expected["is_anomaly"].sum()  # incidents, each alerted on once


async def test_the_documented_request_examples_fit_a_series_model(series_model):
    async with in_process(settings(series_model)) as (_, http):
        await ready(http)
        from service_support import documented_request_bodies

        bodies = await documented_request_bodies(http)
        assert len(bodies) == 2
        for body in bodies:
            response = await http.post("/v1/score", json=body, headers=SCORE)
            assert response.status_code == 200, (body, response.text)


def test_the_example_stream_client_reads_categories_as_text_and_nan_as_missing(tmp_path):
    """A category "200" was sent as 200.0 (unseen: every row flagged), and a NaN cell as NaN, which is no JSON."""
    module = _stream_client()
    (tmp_path / "s.csv").write_text("ts,status,cpu\n2026-01-05T00:00:00Z,200,NaN\n2026-01-05T00:05:00Z,500,1.5\n")
    rows = list(module.read_rows(str(tmp_path / "s.csv"), text_cols=["ts", "status"]))
    assert rows == [{"ts": "2026-01-05T00:00:00Z", "status": "200", "cpu": None},
                    {"ts": "2026-01-05T00:05:00Z", "status": "500", "cpu": 1.5}]
    info = {"kind": "series", "series": {"time_col": "ts", "series_col": None, "context_rows": 3},
            "schema": {"columns": [{"name": "status", "kind": "categorical"}, {"name": "cpu", "kind": "numeric"}]}}
    client = module.StreamClient(transport=lambda method, path, body: (200, {}, info))
    assert client.text_cols == ["ts", None, "status"]


async def test_schemathesis_finds_nothing_against_a_real_series_service(series_model, tmp_path):
    """schemathesis' checks on every operation of a real `anomaly-ae serve` with a series model: what the
    OpenAPI document says the server accepts, it accepts (valid bodies' timestamps put in time order per
    series, which JSON Schema cannot say), and what it refuses, it refuses with a declared 4xx."""
    def run() -> tuple[int, list[str]]:
        service = Service(series_model, workers=1, log=tmp_path / "log")
        try:
            service.wait_ready()
            info = httpx.get(f"{service.url}/v1/model", headers=ADMIN, timeout=30).json()
            return fuzz_openapi(service.url, max_examples=20, series=info["series"])
        finally:
            service.stop()

    calls, errors = await asyncio.to_thread(run)
    assert calls > 50 and errors == [], "\n\n".join(errors)
