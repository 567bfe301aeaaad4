"""Reading a model file back into a fitted estimator, whatever trained it (any model
type, any split, any rank count); writing is each estimator's ``save``."""
import numpy as np

from ..comm import chunk, get_comm, get_grid
from ..errors import ConfigError, DataError
from ..io import load_model, read_model_slice
from ..parallel.sharded import ShardedLinear
from .linear import SGDClassifier, SGDRegressor
from .neural import MLP_TYPES, load_mlp
from .scaling import restore_scaler

__all__ = ["load"]

MODEL_TYPES = {"SGDClassifier": SGDClassifier, "SGDRegressor": SGDRegressor}


def load(path, comm=None, model_parallel=1, shard="auto"):
    """Read a model saved with ``save`` (collective); returns the fitted estimator
    (any of mpiml's model types).

    The file holds the logical weights, whatever split trained them. With
    ``model_parallel=K`` each rank keeps only its shard (split by classes for a
    softmax model, by features otherwise, or as ``shard`` says) and prediction is
    collective over each group of ``K`` consecutive ranks, which must pass the same
    rows (:func:`mpiml.load_hdf5` with ``grid=`` reads them so).
    """
    c = get_comm(comm)
    grid = get_grid(c, model_parallel)
    model_type, params, arrays, attrs = load_model(path, comm=c, lazy=("coef",))
    if model_type in MLP_TYPES:
        return load_mlp(model_type, params, arrays, attrs, comm=comm,
                        model_parallel=model_parallel)
    cls = MODEL_TYPES.get(model_type)
    if cls is None:
        raise DataError(f"{path} holds a model of type {model_type!r}, which this mpiml does not know")
    valid = set(cls._param_names())
    est = cls(**{k: v for k, v in params.items() if k in valid})
    est.comm = comm
    est.model_parallel = model_parallel
    est.shard = shard
    shape = arrays["coef"]
    K, d = (1, shape[0]) if len(shape) == 1 else shape
    intercept = np.asarray(arrays["intercept"], dtype=np.float64).ravel()
    if cls is not SGDRegressor:
        est.classes_ = np.asarray(arrays["classes"])
    est.n_features_in_ = int(attrs["n_features_in"])
    est.n_iter_ = int(attrs.get("n_iter", 0))
    restore_scaler(est, arrays, attrs, path)
    if grid.K == 1:
        coef = np.atleast_2d(read_model_slice(path, "coef", (), comm=c))
        est.coef_ = coef.ravel() if cls is SGDRegressor else coef
        est.intercept_ = intercept
        return est
    split = est._split()

    def check():
        n = K if split == "classes" else d
        if grid.K > n:
            raise ConfigError(f"model_parallel={grid.K} is larger than the {n} "
                              f"{'classes' if split == 'classes' else 'features'} to split")
        if split == "classes" and not (cls is SGDClassifier and est._multinomial()):
            raise ConfigError("shard='classes' needs a softmax model")

    c.run(check)
    # each rank reads only its shard of the logical weights
    lo, hi = chunk(K if split == "classes" else d, grid.K, grid.model_rank)
    index = np.s_[lo:hi] if split == "classes" else np.s_[..., lo:hi]
    part = np.atleast_2d(read_model_slice(path, "coef", index, comm=c))
    if split == "classes":
        W, b = part, intercept[lo:hi]
    else:
        W, b = part.reshape(K, hi - lo), intercept
    est.shard_ = ShardedLinear(split, K, d, grid.model, np.ascontiguousarray(W), b.copy())
    return est
