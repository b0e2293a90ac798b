"""One small exception hierarchy. Every message says what is wrong and what to do about it.

The CLI prints these without a traceback and the service maps them to 4xx responses, so a
message must make sense to someone who never reads the code.
"""

from __future__ import annotations


class AnomalyAEError(Exception):
    """Base class for every error this package raises on purpose."""


class InvalidParameterError(AnomalyAEError, ValueError):
    """An estimator's parameter is invalid (a ValueError, as scikit-learn's contract expects, that the
    CLI prints as one line)."""


class DataError(AnomalyAEError, ValueError):
    """Input data cannot be used: empty, unreadable, wrong format or too few rows.

    `reason` is a short stable code (the service's error `code`), `column` and `rows` say where."""

    def __init__(self, message: str, *, column: str | None = None, rows: list[int] | None = None,
                 reason: str = "invalid_data") -> None:
        super().__init__(message)
        self.column = column
        self.rows = rows or []
        self.reason = reason


class SchemaError(DataError):
    """Input does not match the schema the model was trained on (columns, dtypes, missing values)."""

    def __init__(self, message: str, *, column: str | None = None, rows: list[int] | None = None,
                 reason: str = "schema") -> None:
        super().__init__(message, column=column, rows=rows, reason=reason)


class NotFittedError(AnomalyAEError, AttributeError):
    """The estimator is used before `fit` was called."""


class TrainingError(AnomalyAEError):
    """Training diverged: no epoch ended with a finite validation loss."""


class ModelLoadError(AnomalyAEError):
    """A saved model is missing, truncated, tampered with or from an incompatible version."""


class ScoringError(AnomalyAEError):
    """Scoring produced non-finite values; the input is outside what the model can handle."""


class RegistryError(AnomalyAEError):
    """The MLflow tracking server or model registry failed or refused an operation
    (unknown model, version or alias; a promotion gate that was not passed)."""


class RegistryUnavailableError(RegistryError, ModelLoadError):
    """The tracking server could not be reached in time. Transient: the same call may work later.

    Also a ModelLoadError, so code that loads models by URI can catch one exception type."""


class ConfigurationError(AnomalyAEError):
    """The process cannot start as configured (e.g. a directory it must write is not writable)."""
