"""What Detector, SeriesDetector and Generator share as scikit-learn estimators.

They keep scikit-learn's estimator contract (constructor arguments stored unchanged and read back
by `get_params`, `set_params` returning the estimator, fitted attributes ending in "_", an error
before `fit`) without importing scikit-learn: `import sklearn` imports scipy.stats, memory every
serving worker held unused (the reliability suite's largest worker: 473 MiB before, 415 MiB after).
scikit-learn's `clone`, `Pipeline` and model-selection tools need only `get_params`/`set_params`
(duck typing, as its developer guide allows; PyOD's BaseDetector does the same), and
`__sklearn_tags__` imports scikit-learn only when scikit-learn itself asks for the tags.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import sys
from typing import Any

from anomaly_ae import exceptions


class Estimator:
    """get_params / set_params / repr from the `__init__` signature, as sklearn.base.BaseEstimator."""

    @classmethod
    def _get_param_names(cls) -> list[str]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        return sorted(p.name for p in parameters
                      if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments as set (nested estimators' as `name__param` when `deep`)."""
        params: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update((f"{name}__{key}", v) for key, v in value.get_params().items())
            params[name] = value
        return params

    def set_params(self, **params: Any) -> "Estimator":
        """Set constructor arguments (`name__param` reaches a nested estimator); returns self."""
        valid = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in valid:
                raise exceptions.InvalidParameterError(f"invalid parameter {name!r} for {type(self).__name__}; "
                                 f"valid parameters are {valid}")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            inner = getattr(self, name)
            if not hasattr(inner, "set_params"):
                raise exceptions.InvalidParameterError(
                    f"invalid parameter {name}__{next(iter(sub_params))}: {name} is {inner!r}, not an estimator "
                    f"with parameters of its own; set {name} itself")
            inner.set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        """The class and the arguments that differ from their defaults, e.g. `Detector(model='ae')`."""
        defaults = {name: p.default for name, p in inspect.signature(type(self).__init__).parameters.items()}
        changed = [f"{name}={value!r}" for name, value in self.get_params(deep=False).items()
                   if repr(value) != repr(defaults.get(name, inspect.Parameter.empty))]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's default estimator tags (only scikit-learn calls this, so it is imported)."""
        from sklearn.utils import Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False))


def require_fitted(estimator: Estimator, attribute: str) -> None:
    """Raise NotFittedError, saying how to get a fitted one, unless `attribute` is set."""
    if hasattr(estimator, attribute):
        return
    name = type(estimator).__name__
    raise not_fitted_error_class()(f"this {name} is not fitted yet; call fit(X) with normal data, "
                                   f"or {name}.load(path) a saved one")


def not_fitted_error_class() -> type[exceptions.NotFittedError]:
    """anomaly_ae's NotFittedError, and also scikit-learn's once scikit-learn is imported.

    Code that names sklearn.exceptions.NotFittedError in an `except` has imported scikit-learn, so it
    catches ours; a process that never imported scikit-learn is not made to import it for this."""
    if "sklearn" not in sys.modules:
        return exceptions.NotFittedError
    from sklearn.exceptions import NotFittedError

    return _with_sklearn_base(NotFittedError)


@functools.cache
def _with_sklearn_base(sklearn_error: type) -> type[exceptions.NotFittedError]:
    return type("NotFittedError", (exceptions.NotFittedError, sklearn_error),
                {"__module__": __name__, "__doc__": exceptions.NotFittedError.__doc__})


# Seeds as numpy's legacy RandomState and scikit-learn take them; torch's 64-bit seed overflowed above
# (after the first of several members had trained: each member's seed is random_state + i).
MAX_SEED = 2**32 - 1


def check_integer(name: str, value: Any, low: int, high: int | None = None) -> None:
    """An estimator parameter that must be a whole number >= `low` (and <= `high`; a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low \
            or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise exceptions.InvalidParameterError(f"{name} must be an integer {bounds}, got {value!r}")


def check_number(name: str, value: Any, positive: bool = False) -> None:
    """A finite real number, >= 0 (> 0 when `positive`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise exceptions.InvalidParameterError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                                               f"got {value!r}")
