"""The watch spec: which Prometheus, which PromQL queries form the metric columns, which label is a series.

A small YAML (or TOML) file, the one thing an SRE writes to go from "I have Prometheus" to scores:

    prometheus:
      url: http://prometheus:9090
      auth: {bearer_token_env: PROMETHEUS_TOKEN}   # or basic: {username_env: U, password_env: P}
      tls: {ca_file: /etc/ssl/prom-ca.pem}
      timeout: 10s
    series_label: instance
    step: 15s
    metrics:
      cpu: 'sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[1m]))'
      load1: 'node_load1'
    model: {model: knn, window: 32, target_fpr: 0.01}
    watch: {evaluation_delay: 5s, max_series: 10000}

Secrets never live in the file: it names the environment variables that hold them, read when the
client is built. Every mistake is a `WatchSpecError` naming the file, the field and what to write.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anomaly_ae.exceptions import ConfigurationError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_COLUMNS = ("timestamp",)  # the time column of the frames a spec's queries build


class WatchSpecError(ConfigurationError):
    """The watch spec cannot be read or says something impossible."""


def parse_duration(value: Any, what: str = "duration", most: float = math.inf) -> float:
    """Seconds from a Prometheus-style duration ("15s", "5m", "1h", "2d", "500ms") or a number of seconds,
    at most `most`."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration such as 15s, 5m or 1h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValueError(f"{what} must be a duration such as 15s, 5m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds < math.inf:
        raise ValueError(f"{what} must be a positive, finite duration, got {value!r}")
    if seconds > most:
        raise ValueError(f"{what} must be at most {most:g}s, got {value!r}")
    return seconds


# A wait longer than this is a typo (e.g. 100000w); the operating system refuses the largest anyway.
MAX_WAIT_SECONDS = 3600.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Strict):
    username_env: str
    password_env: str


class Auth(_Strict):
    bearer_token_env: str | None = None
    basic: BasicAuth | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Auth":
        if self.bearer_token_env and self.basic:
            raise ValueError("give either bearer_token_env or basic, not both")
        return self


class Tls(_Strict):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> "Tls":
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("a client certificate needs both cert_file and key_file")
        return self


class PrometheusTarget(_Strict):
    url: str
    auth: Auth = Auth()
    tls: Tls = Tls()
    timeout: float = 10.0

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if re.match(r"^https?://[^/\s]*@", value):  # not echoed: the part before @ may hold a password
            raise ValueError("must not hold credentials (user:password@): name environment variables under "
                             "auth.basic (username_env, password_env) or auth.bearer_token_env instead, so the "
                             "secret stays out of the spec, the logs and the registered model")
        if re.search(r"[?&][^=&#]*(?:token|key|pass|secret|auth|sig|cred)[^=&#]*=", value, re.IGNORECASE):
            raise ValueError("must not hold credentials in its query string (token=, key=...): name an environment "
                             "variable under auth.bearer_token_env instead, so the secret stays out of the spec, the "
                             "logs and the registered model")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL such as http://prometheus:9090, got {value!r}")
        try:  # what the client will parse: a bad port or address fails here, not at the first query
            port = httpx.URL(value).port
        except httpx.InvalidURL as exc:
            raise ValueError(f"is not a valid URL ({exc}): give one such as http://prometheus:9090") from None
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"has port {port}, outside 1-65535: give one such as http://prometheus:9090")
        return value.rstrip("/")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> float:
        return parse_duration(value, "timeout", MAX_WAIT_SECONDS)


class WatchOptions(_Strict):
    evaluation_delay: float = 5.0  # after each step boundary, so the scrapes of that step have landed
    max_series: int = Field(10_000, ge=1)

    @field_validator("evaluation_delay", mode="before")
    @classmethod
    def _delay(cls, value: Any) -> float:
        return 0.0 if value in (0, "0", "0s") else parse_duration(value, "evaluation_delay", MAX_WAIT_SECONDS)


class ModelOptions(_Strict):
    """Training options for `anomaly-ae train --prometheus` (the SeriesDetector's)."""

    model: str | None = None
    window: int | Literal["auto"] | None = None
    covariates: list[Literal["time_of_day", "day_of_week"]] = []  # calendar inputs from the sample times
    target_fpr: float = Field(0.01, gt=0, lt=1)
    max_gap: int = Field(3, ge=0)
    alert_min_steps: int = Field(3, ge=1)
    alert_within: int = Field(5, ge=1)
    alert_cooldown: int = Field(12, ge=0)
    epochs: int = Field(100, ge=1)
    random_state: int = 0


class WatchSpec(_Strict):
    prometheus: PrometheusTarget
    series_label: str
    step: float
    metrics: dict[str, str]
    model: ModelOptions = ModelOptions()
    watch: WatchOptions = WatchOptions()

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, value: Any) -> float:
        seconds = parse_duration(value, "step")
        millis = seconds * 1000
        # Prometheus' times are whole milliseconds, and so is the frames' step grid
        if millis < 1 or abs(millis - round(millis)) > 1e-6:
            raise ValueError(f"must be a whole number of milliseconds, at least 1ms (e.g. 15s), got {value!r}")
        return seconds

    @field_validator("series_label")
    @classmethod
    def _label(cls, value: str) -> str:
        if not _COLUMN.match(value):
            raise ValueError(f"must be a Prometheus label name such as instance, got {value!r}")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("name at least one metric: column name -> PromQL query")
        for name, query in value.items():
            if not _COLUMN.match(name) or name in RESERVED_COLUMNS:
                raise ValueError(f"metric column {name!r} must be an identifier (letters, digits, _) other than "
                                 f"{', '.join(RESERVED_COLUMNS)}")
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"metric {name!r} needs a PromQL query")
        return value

    @model_validator(mode="after")
    def _no_clash(self) -> "WatchSpec":
        if self.series_label in self.metrics:
            raise ValueError(f"series_label {self.series_label!r} is also a metric column name; rename the metric")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def columns(self) -> list[str]:
        return list(self.metrics)

    @property
    def sharded_queries(self) -> bool:
        """The queries select one shard themselves: `{shard=~"$shard"}` on a label that Prometheus'
        `hashmod` relabelling wrote at scrape time. Each replica then receives only its series
        (`$shard` becomes its index; `.*` when training or backtesting)."""
        return any("$shard" in query for query in self.metrics.values())

    def fingerprint(self) -> str:
        """Of what decides the data (queries, label, step), not of where Prometheus is or how to log in."""
        basis = {"metrics": self.metrics, "series_label": self.series_label, "step": self.step}
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LoadedSpec:
    spec: WatchSpec
    path: Path
    text: str  # as written (it holds no secrets: only the names of the variables that do)


def _load_yaml(text: str) -> Any:
    """YAML as `yaml.safe_load` reads it, except that a key given twice in one mapping is an error: PyYAML
    keeps the last silently, so a second `threshold:` further down would override the first unseen."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if not isinstance(key, Hashable):  # construct_mapping says so, with the place
                break
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping (first at line {seen[key] + 1}); "
                                "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def load_spec(path: str | Path) -> LoadedSpec:
    """Read and check a watch spec (.yml/.yaml or .toml)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise WatchSpecError(f"watch spec {path} does not exist; write one (docs/watch.md has an example)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WatchSpecError(f"cannot read watch spec {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            raw = tomllib.loads(text)
        else:
            raw = _load_yaml(text)
    except Exception as exc:  # the parsers' errors say where (line, column)
        raise WatchSpecError(f"watch spec {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                             f"{' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise WatchSpecError(f"watch spec {path} must be a mapping with prometheus, series_label, step and metrics")
    try:
        spec = WatchSpec.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field (check the spelling; docs/watch.md lists the fields)"
            problems.append(f"{where}: {message}")
        raise WatchSpecError(f"watch spec {path}: " + "; ".join(problems)) from None
    return LoadedSpec(spec=spec, path=path, text=text)


def credentials(auth: Auth, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """The client's auth from the environment variables the spec names (a missing one is an error)."""
    env = os.environ if environ is None else environ

    def need(name: str) -> str:
        value = env.get(name)
        if not value:
            raise WatchSpecError(f"the watch spec reads a Prometheus credential from ${name}, which is not set; "
                                 "export it (the spec never holds secrets)")
        return value

    if auth.bearer_token_env:
        return {"headers": {"Authorization": f"Bearer {need(auth.bearer_token_env)}"}}
    if auth.basic:
        return {"auth": (need(auth.basic.username_env), need(auth.basic.password_env))}
    return {}


_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")


def parse_time(text: str, now: float) -> float:
    """Unix seconds from "now", a negative duration before now ("-14d", "-6h"), RFC 3339 or unix seconds
    (from 1970 to 9999: Prometheus' own times are unix seconds, and NaN or 1e20 mean nothing)."""
    seconds = _unix_seconds(str(text).strip(), now)
    if not 0 <= seconds < 253402300800:  # 9999-12-31
        raise WatchSpecError(f"the time {text!r} is outside 1970-9999; use now, -14d / -6h / -30m, an RFC 3339 "
                             "time (2026-11-01T00:00:00Z) or unix seconds")
    return seconds


def _unix_seconds(text: str, now: float) -> float:
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime, timezone

    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WatchSpecError(f"cannot read the time {text!r}: use now, -14d / -6h / -30m, an RFC 3339 time "
                             "(2026-11-01T00:00:00Z) or unix seconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()
