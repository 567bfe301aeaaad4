"""Estimators with scikit-learn's fit / partial_fit / predict / score contract."""
from .linear import SGDClassifier, SGDRegressor, load

__all__ = ["SGDClassifier", "SGDRegressor", "load"]
