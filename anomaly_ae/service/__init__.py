"""The scoring service: FastAPI app, auth, Prometheus metrics, hot model reload (`anomaly-ae serve`).

fastapi, uvicorn, prometheus_client and pydantic_settings are imported only inside this package.
Start with `create_app(settings)` in app.py, or `anomaly-ae serve` (command.py).
"""
