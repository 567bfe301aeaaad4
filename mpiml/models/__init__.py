"""Estimators with scikit-learn's fit / partial_fit / predict / score contract."""
from .linear import SGDClassifier, SGDRegressor, load
from .neural import MLPClassifier, MLPRegressor

__all__ = ["SGDClassifier", "SGDRegressor", "MLPClassifier", "MLPRegressor", "load"]
