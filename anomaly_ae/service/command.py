"""``anomaly-ae serve``: the typer command (registered in the main CLI by ``cli.py``).

Register with ``app.command("serve")(serve)``; also runnable as ``python -m anomaly_ae.service.command``.
Flags override ``ANOMALY_AE_*`` environment variables. API keys are read from the environment only
(``ANOMALY_AE_API_KEYS``, ``ANOMALY_AE_ADMIN_KEYS``, comma-separated): a key on the command line would
be visible to every user of the machine in the process list.
"""

from __future__ import annotations

from typing import Optional

import typer


def serve(
    model: Optional[str] = typer.Option(None, "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a "
                                                              "model directory (env ANOMALY_AE_MODEL_URI)."),
    host: Optional[str] = typer.Option(None, help="Interface to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)."),
    workers: Optional[int] = typer.Option(None, help="Worker processes, one torch thread each (default 1)."),
    poll_interval: Optional[float] = typer.Option(None, help="Seconds between registry checks for a moved alias; "
                                                             "0 = never (default 30)."),
    max_rows: Optional[int] = typer.Option(None, help="Most rows per request (default 10000)."),
    max_body_bytes: Optional[int] = typer.Option(None, help="Largest request body (default 8 MiB)."),
    max_concurrency: Optional[int] = typer.Option(None, help="Scoring requests per worker before 503 (default 64)."),
    metrics_port: Optional[int] = typer.Option(None, help="Serve /metrics on this port instead of the public one "
                                                          "(default: on the public one)."),
    drift_max_features: Optional[int] = typer.Option(None, help="Inputs with drift metrics (default 30)."),
    metrics_series_labels: Optional[int] = typer.Option(None, help="Series models: per-series metrics for at most "
                                                                    "this many training series, the rest as "
                                                                    "series=other (default 0: none)."),
    log_level: Optional[str] = typer.Option(None, help="critical, error, warning, info, debug or trace "
                                                       "(default info)."),
    access_log: Optional[bool] = typer.Option(None, "--access-log/--no-access-log",
                                              help="uvicorn's per-request access log (default off)."),
) -> None:
    """Serve a model over HTTP: scoring, model info, health, Prometheus metrics, hot reload."""
    from pydantic import ValidationError

    from anomaly_ae.exceptions import ConfigurationError
    from anomaly_ae.service.server import run
    from anomaly_ae.service.settings import ServiceSettings

    flags = dict(model_uri=model, host=host, port=port, workers=workers, poll_interval_s=poll_interval,
                 max_rows=max_rows, max_body_bytes=max_body_bytes, max_concurrency=max_concurrency,
                 metrics_port=metrics_port, drift_max_features=drift_max_features,
                 metrics_series_labels=metrics_series_labels, log_level=log_level, access_log=access_log)
    try:
        settings = ServiceSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        typer.secho(f"error: {problems}", fg="red", err=True)
        if any(e["loc"] == ("model_uri",) for e in exc.errors()):
            typer.echo("pass --model or set ANOMALY_AE_MODEL_URI", err=True)
        raise typer.Exit(code=2) from None
    try:
        run(settings)
    except ConfigurationError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(code=2) from None


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(serve)
    app()


if __name__ == "__main__":
    main()
