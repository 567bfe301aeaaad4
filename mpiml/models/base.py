"""The estimator contract shared by mpiml's models (scikit-learn's conventions).

The constructor only stores parameters; fitted state ends in ``_``;
``get_params`` / ``set_params`` read the constructor's signature.
"""
import inspect

import numpy as np

from ..errors import DataError

__all__ = ["BaseEstimator", "check_local_X"]


class BaseEstimator:
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep=True):
        """Parameters of this estimator (a dict)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set parameters; returns ``self``."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid: {', '.join(valid)}")
            setattr(self, key, value)
        return self

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if k != "comm")
        return f"{type(self).__name__}({args})"


def check_local_X(X, name="X"):
    """This rank's feature rows as a 2-D array of real numbers (no copy if possible)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise DataError(f"{name} must be 2-D (rows x features), it has shape {X.shape}")
    if X.dtype.kind not in "fiub":
        raise DataError(f"{name} has type {X.dtype}; mpiml needs real numbers")
    return X
