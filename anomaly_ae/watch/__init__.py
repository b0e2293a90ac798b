"""Watch Prometheus: train on its history, score every step of every series, export the scores as metrics.

`spec` (the watch spec file) -> `source` (range queries -> one aligned frame) -> `watcher` (per-step
scoring and alert state, shards) -> `exposition` (/metrics, /healthz) and `command` (the CLI).
`simulate` writes synthetic history as OpenMetrics and serves a live synthetic exporter (tests, demo,
benchmark).
"""
