"""The blocking part of POST /v1/score, run in a worker thread: parse and validate the body, score,
record metrics, and write the response.

The response has the shape `ScoreResponse` declares (the OpenAPI document's, checked by the tests
and by schemathesis' response_schema_conformance) but is serialised with orjson from plain dicts:
validating and serialising it through pydantic measured 15x slower (18 ms against 1.3 ms for 1000
explained rows), and for 10,000 rows it would hold the GIL long enough to stall the event loop.

The scorer is reached only through `model.scorer` (an object with `score(columns, top_k)` returning
a result with scores, p_values, is_anomaly, severity, top_features, top_contributions, notes,
checked, model_input, missing and unseen; for series models also `contract`, `score_new` and
`subset_report`), so the scoring path can change behind that one seam.

Series models: `score_new` scores the rows to return (the last `score_last` of each series, or all)
by their windows over the whole request, and the few context rows before them whose flags the alert
rule counts; the other context rows are validated and complete the windows, unscored. Only the
returned rows are counted in the metrics (scores, anomalies, drift), each with its position in the
request (`row`) and its `alert` (what an offline pass gives, `anomaly_ae.series_stream`); context
rows are counted apart (`context_rows_total`).
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

import numpy as np
import orjson

from anomaly_ae.service import metrics
from anomaly_ae.service.errors import ApiError
from anomaly_ae.service.model_holder import LoadedModel
from anomaly_ae.service.schemas import SCORE_LAST, ScoreRequestParser

# Rows serialised per orjson call: one call holds the GIL throughout, and for 10,000 explained rows
# that was 16-40 ms of an event loop that could not answer; in chunks the loop gets its turns.
ROWS_PER_CHUNK = 1000


def score_batch(model: LoadedModel, body: bytes, parser: ScoreRequestParser, helper: Executor | None = None) -> bytes:
    """Body bytes -> response JSON bytes; raises ApiError or the package's errors for bad input. `helper`: a
    second thread that may score half of a large row-model batch (`Admission.score` gives one to a request
    the worker scores alone)."""
    request = parser.parse(body)
    scorer = model.scorer
    series = getattr(scorer, "contract", None) is not None
    if request.score_last is not None and not series:
        raise ApiError(422, "invalid_field", "'score_last' applies to series models; this model scores each row on "
                                             "its own, so send only the rows to score", field=SCORE_LAST)
    # Finite values near the float limit overflow when standardised (then clipped): not a problem
    # to report, and numpy's warning would otherwise reach the service log.
    with np.errstate(over="ignore"):
        if not series:
            result = scorer.score(request.columns, request.top_k, helper)
            metrics.record_scores(result.scores, result.p_values, result.severity)
            model.drift.update(result.checked, result.missing, result.unseen, result.model_input)
            return _response(model, result, request.ids, None)
        # the returned rows only (their arrays follow picked.rows); context rows complete their windows
        result, picked = scorer.score_new(request.columns, request.top_k, request.score_last)
        metrics.record_scores(result.scores, result.p_values, result.severity)
        if model.series_metrics is not None:
            model.series_metrics.record(picked.series, result.is_anomaly, picked.alerts, picked.n_context)
        if picked.n_context:  # the request's missing / unseen counts include the context: count the new rows'
            checked, missing, unseen = scorer.subset_report(result, np.arange(len(picked.rows)))
            model.drift.update(checked, missing, unseen, result.model_input)
        else:
            model.drift.update(result.checked, result.missing, result.unseen, result.model_input)
    return _response(model, result, request.ids, picked)


def _response(model: LoadedModel, result: Any, ids: list[Any] | None, picked: Any) -> bytes:
    scores, p_values = result.scores, result.p_values
    flags, severity = result.is_anomaly, result.severity
    notes = result.notes
    top_features, top_contributions = result.top_features, result.top_contributions
    if picked is not None and ids is not None and picked.n_context:  # the new rows of a series request
        ids = [ids[i] for i in picked.rows.tolist()]
    scores, p_values = scores.tolist(), p_values.tolist()
    flags, severity = flags.tolist(), severity.tolist()
    n = len(scores)
    head: dict[str, Any] = {"model": model.describe(), "threshold": model.scorer.threshold, "n_rows": n,
                            "n_anomalies": sum(flags)}
    positions = alerts = None
    if picked is not None:
        positions, alerts = picked.rows.tolist(), picked.alerts.tolist()
        head.update(n_alerts=int(np.count_nonzero(picked.alerts)), n_context_rows=picked.n_context)
    encoded = orjson.dumps(head)
    # Each chunk's row dicts are built, serialised and dropped before the next: built all at once, a
    # 10,000-row explained response held ~20 MB of small objects, and Python's allocator keeps the
    # arenas of such peaks (measured in process, 64 such requests on two threads: 26 MiB of arenas
    # kept, 14 MiB with chunks).
    notes = notes or [[]] * n
    chunks = []
    for start in range(0, n, ROWS_PER_CHUNK):
        part = slice(start, start + ROWS_PER_CHUNK)
        rows = [{"score": s, "p_value": p, "is_anomaly": a, "severity": v, "notes": t}
                for s, p, a, v, t in zip(scores[part], p_values[part], flags[part], severity[part], notes[part])]
        if top_features is not None:
            for row, names, shares in zip(rows, top_features[part], top_contributions[part]):
                row["top_features"] = [{"feature": f, "contribution": c} for f, c in zip(names, shares)]
        if positions is not None:
            for row, position, alert in zip(rows, positions[part], alerts[part]):
                row["row"] = position
                row["alert"] = alert
        if ids is not None:
            rows = [{"id": i, **row} for i, row in zip(ids[part], rows)]
        chunks.append(orjson.dumps(rows)[1:-1])
        del rows
    return encoded[:-1] + b',"results":[' + b",".join(chunks) + b"]}"
