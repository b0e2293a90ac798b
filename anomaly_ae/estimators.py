"""What Detector and Generator share as scikit-learn estimators: the not-fitted check and its error."""

from __future__ import annotations

from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from anomaly_ae import exceptions


class NotFittedError(exceptions.NotFittedError, SklearnNotFittedError):
    """Raised when an unfitted estimator is used: both this package's NotFittedError and
    scikit-learn's, so code written for scikit-learn (`except NotFittedError`) catches it too."""


def require_fitted(estimator: BaseEstimator, attribute: str) -> None:
    """Raise NotFittedError, saying how to get a fitted one, unless `attribute` is set."""
    try:
        check_is_fitted(estimator, attribute)
    except SklearnNotFittedError:
        name = type(estimator).__name__
        raise NotFittedError(f"this {name} is not fitted yet; call fit(X) with normal data, "
                             f"or {name}.load(path) a saved one") from None
