"""Every setting of the scoring service, in one pydantic-settings class.

Read from the environment with the prefix ``ANOMALY_AE_`` (``ANOMALY_AE_MODEL_URI``,
``ANOMALY_AE_API_KEYS``, ...); ``anomaly-ae serve`` flags override the environment. Key lists are
comma-separated. Keys are SecretStr so they never appear in a repr, a log line or an error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "ANOMALY_AE_"


class ServiceSettings(BaseSettings):
    # allow_inf_nan: an infinite timeout or interval would be a wait that never ends, silently
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False)

    # what to serve
    model_uri: str = Field(..., description="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a local "
                                            "model directory.")
    # network
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64, description="Worker processes (each loads the model and uses one "
                                                      "torch thread).")
    # auth: scoring keys may score and read /v1/model; admin keys may also reload
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # request limits
    max_rows: int = Field(10_000, ge=1, description="Most rows in one scoring request.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body; larger is 413.")
    max_concurrency: int = Field(64, ge=1, description="Scoring requests one worker scores at once (each in a "
                                                       "worker thread); more get 503 with Retry-After.")
    scoring_threads: int = Field(2, ge=1, description="Admitted scoring requests one worker works on at once "
                                                      "(parse, validate, score, respond), each in a thread; the "
                                                      "others wait their turn. More threads than cores only fight "
                                                      "for the GIL, which the event loop (and /healthz) needs too, "
                                                      "and hold more batches in memory.")
    inline_max_body_bytes: int = Field(4096, ge=0, description="Requests whose body is at most this many bytes "
                                       "(a few rows) are scored on the event loop's thread, not a worker thread: "
                                       "the hop there and back cost 0.2 ms, a fifth of a 1-row request's time in "
                                       "process (benchmarks/results/experiments/issue11_inline.md), about what their "
                                       "scoring blocks the loop for. 0: every request in a thread.")
    max_body_reads: int = Field(128, ge=1, description="Request bodies one worker reads at once; more get 503. "
                                                       "Separate from max_concurrency so that slow clients never "
                                                       "hold a scoring place; bounds memory at max_body_reads x "
                                                       "max_body_bytes.")
    max_top_k: int = Field(20, ge=1, description="Largest top_k a request may ask for.")
    body_timeout_s: float = Field(30.0, gt=0.0, description="Longest wait for a request body, and for a request's "
                                                            "line and headers; a client that sends them slower gets "
                                                            "408.")
    max_id_length: int = Field(256, ge=1)
    # model lifecycle
    poll_interval_s: float = Field(30.0, ge=0.0, description="How often the alias is re-resolved; 0 = never.")
    registry_timeout_s: float = Field(10.0, gt=0.0, description="Bound on one registry lookup.")
    load_timeout_s: float = Field(120.0, gt=0.0, description="Bound on downloading + loading + smoke-testing "
                                                             "one version.")
    # metrics
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve /metrics on this port (on "
                                                                       "metrics_host) instead of the public "
                                                                       "listener.")
    metrics_host: str | None = Field(None, description="Interface for metrics_port (default: host).")
    drift_max_features: int = Field(30, ge=0, description="Input columns that get per-feature drift metrics.")
    drift_window_rows: int = Field(1000, ge=1, description="Rows the rolling drift statistics average over "
                                                           "(exponentially weighted).")
    metrics_series_labels: int = Field(0, ge=0, le=1000, description="Series models: per-series counters "
                                       "(rows, anomalies, alerts) for at most this many series of the model's "
                                       "training data (sorted); every other series counts under series=\"other\". "
                                       "0: no per-series label (the default: a label per host is unbounded).")
    # process
    load_pyarrow: bool = Field(False, description="Let pandas load pyarrow in the serving processes. pandas "
                               "imports it whenever it is installed, and a worker then maps 35-60 MiB of its "
                               "libraries (RSS, measured) that scoring never uses: the service parses JSON into "
                               "numpy columns and makes no Arrow data, so by default it is left out (pandas then "
                               "keeps strings in Python objects).")
    memory_release_interval_s: float = Field(1.0, ge=0.0, description="When a worker has scored every request it "
                                             "admitted, memory its batches freed is handed back to the operating "
                                             "system (glibc malloc_trim; nothing elsewhere), at most this often; "
                                             "0 = never. Without it a worker stayed ~20 MiB larger after bursts of "
                                             "10,000-row requests.")
    split_large_requests: bool = Field(True, description="When a worker is scoring nothing else, a row model's "
                                       "request of 256 rows or more has its two halves scored at once on two "
                                       "threads: the same scores (to float32 rounding), sooner (the default's "
                                       "model step on 1,000 rows took 6.8 against 9.6 ms, measured). Only where "
                                       "there are at least two cores per worker's torch threads (cores >= 2 x "
                                       "workers x torch_threads): elsewhere the halves would take cores other "
                                       "workers use.")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per worker (1: more threads per "
                                                    "worker fight the other workers for the cores).")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field("auto", description="auto: uvloop when installed.")
    tcp_nodelay: bool = Field(True, description="Set TCP_NODELAY on every connection (without it, uvicorn's "
                                                "multi-worker mode adds ~40 ms per response; off only to measure "
                                                "that).")
    graceful_timeout_s: float = Field(30.0, ge=0.0, description="How long shutdown waits for in-flight requests.")
    control_dir: str | None = Field(None, description="A directory the workers of one service share, through "
                                                      "which an admin reload reaches every worker (serve creates "
                                                      "one when workers > 1).")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="uvicorn's and the service's log level.")
    access_log: bool = Field(False, description="uvicorn's per-request access log (the request metrics count "
                                                "every request either way).")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case_level(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("[") or text.startswith('"'):  # a JSON list would be taken literally, quotes and all
                raise ValueError("keys are a comma-separated list (key1,key2), not JSON: drop the brackets and quotes")
            keys = [k.strip() for k in value.split(",") if k.strip()]
            if text and not keys:  # set, but to nothing usable: auth would be silently off
                raise ValueError("the variable is set but names no key; give comma-separated keys, or unset it to "
                                 "serve without auth")
            return keys
        if isinstance(value, (list, tuple)):
            return [k for k in value if (k.get_secret_value() if isinstance(k, SecretStr) else str(k)).strip()]
        return value

    @model_validator(mode="after")
    def _metrics_port_is_its_own(self) -> "ServiceSettings":
        if self.metrics_port is not None and self.metrics_port == self.port and \
                (self.metrics_host or self.host) == self.host:
            raise ValueError(f"metrics_port {self.metrics_port} is the port the API listens on; give /metrics "
                             "another port, or leave metrics_port unset to serve /metrics on the API's listener")
        return self

    @model_validator(mode="after")
    def _keys_are_long_enough(self) -> "ServiceSettings":
        for key in [*self.api_keys, *self.admin_keys]:
            if len(key.get_secret_value()) < 16:
                raise ValueError("API keys must be at least 16 characters (use e.g. `openssl rand -hex 24`)")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a worker process (keys included)."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if name in ("api_keys", "admin_keys"):
                env[ENV_PREFIX + name.upper()] = ",".join(k.get_secret_value() for k in value)
            else:
                env[ENV_PREFIX + name.upper()] = str(value)
        return env
