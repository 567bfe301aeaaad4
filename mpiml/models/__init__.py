"""Estimators with scikit-learn's fit / partial_fit / predict / score contract."""
from .glm import LogisticRegression
from .linear import SGDClassifier, SGDRegressor
from .neural import MLPClassifier, MLPRegressor
from .persist import load
from .regression import ElasticNet, EpsilonHuberRegressor, LinearRegression, Ridge

__all__ = ["SGDClassifier", "SGDRegressor", "MLPClassifier", "MLPRegressor", "load",
           "LogisticRegression", "LinearRegression", "Ridge", "ElasticNet", "EpsilonHuberRegressor"]
