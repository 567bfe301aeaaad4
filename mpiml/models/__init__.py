"""Estimators with scikit-learn's fit / partial_fit / predict / score contract."""
from .linear import SGDClassifier, SGDRegressor
from .neural import MLPClassifier, MLPRegressor
from .persist import load

__all__ = ["SGDClassifier", "SGDRegressor", "MLPClassifier", "MLPRegressor", "load"]
