"""Reading a model file back into a fitted estimator, whatever trained it (any model
type, any split, any rank count); writing is each estimator's ``save``."""
import numpy as np

from ..comm import chunk, get_comm, get_grid
from ..errors import ConfigError, DataError
from ..io import check_feature_names, check_labels, load_model, read_model_slice
from ..parallel.sharded import ShardedLinear
from .glm import LogisticRegression
from .linear import SGDClassifier, SGDRegressor
from .regression import ElasticNet, EpsilonHuberRegressor, LinearRegression, Ridge
from .neural import MLP_TYPES, load_mlp
from .scaling import restore_scaler

__all__ = ["load"]

MODEL_TYPES = {"SGDClassifier": SGDClassifier, "SGDRegressor": SGDRegressor}
# the exact-solver linear models (issue 20): the same datasets, never split over ranks
EXACT_TYPES = {c.__name__: c for c in (LogisticRegression, LinearRegression, Ridge, ElasticNet,
                                       EpsilonHuberRegressor)}
MODEL_TYPES.update(EXACT_TYPES)


def _int_attr(attrs, key, low, where, default=None):
    v = attrs.get(key, default)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < low:
        raise DataError(f"{where}: attribute '{key}' is {v!r}, not an integer >= {low}")
    return int(v)


def _finite(arrays, name, where, ndim):
    a = arrays.get(name)
    if a is None:
        raise DataError(f"{where} has no dataset '{name}'")
    a = np.asarray(a)
    if a.ndim != ndim or a.dtype.kind not in "fiu" or not np.isfinite(a).all():
        raise DataError(f"{where}: dataset '{name}' must be {ndim}-D finite numbers "
                        f"(it is {a.dtype}, shape {a.shape})")
    return a


def check_contents(path, model_type, params, arrays, attrs):
    """Raise DataError unless a model file's contents make a model this mpiml can use:
    a known type, parameters the estimator accepts, and weights, classes, feature names
    and scaler whose shapes agree with ``n_features_in`` and each other."""
    where = f"model file {path}"
    cls = MODEL_TYPES.get(model_type) or MLP_TYPES.get(model_type)
    if cls is None:
        raise DataError(f"{path} holds a model of type {model_type!r}, which this mpiml does not know")
    if not isinstance(params, dict):
        raise DataError(f"{where}: its parameters are damaged")
    d = _int_attr(attrs, "n_features_in", 1, where)
    _int_attr(attrs, "n_iter", 0, where, default=0)
    valid = set(cls._param_names())
    try:
        # the model's own settings; how the job that wrote it ran is not checked here
        est = cls(**{**{k: (tuple(v) if k == "hidden_layer_sizes" and isinstance(v, list) else v)
                        for k, v in params.items() if k in valid and k != "comm"},
                     **({} if model_type in EXACT_TYPES else
                        {"model_parallel": 1, "sync": "allreduce", "overlap": False,
                         "compress": "none"})})
        est._validate_params()
    except (ConfigError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: its parameters are not valid ({exc})") from None
    if model_type in MLP_TYPES:
        K = _check_layers(arrays, attrs, d, est, where)
    else:
        shape = arrays.get("coef")
        if not isinstance(shape, tuple) or len(shape) not in (1, 2) or shape[-1] != d or \
                (len(shape) == 2 and shape[0] < 1):
            raise DataError(f"{where}: 'coef' has shape {shape}; {d} features were expected")
        K = 1 if len(shape) == 1 else shape[0]
        if len(_finite(arrays, "intercept", where, 1)) != K:
            raise DataError(f"{where}: 'intercept' does not have the {K} values of 'coef'")
        if not cls._is_classifier and K != 1:
            raise DataError(f"{where}: a regressor has one output, this file has {K}")
    if cls._is_classifier:
        if "classes" not in arrays:
            raise DataError(f"{where} has no dataset 'classes'")
        classes = check_labels(arrays["classes"], where)
        if len(classes) != (2 if K == 1 else K):
            raise DataError(f"{where}: {len(classes)} classes do not match its {K} outputs")
    if "feature_names" in arrays:
        check_feature_names(arrays["feature_names"], d, where)
    if attrs.get("scaler") is not None:
        restore_scaler(cls(), arrays, attrs, path, n_features=d)


def _check_layers(arrays, attrs, d, est, where):
    from ..parallel.network import OUTPUTS
    n = _int_attr(attrs, "n_layers", 1, where)
    if n > 1000 or str(attrs.get("output")) not in OUTPUTS:
        raise DataError(f"{where}: {n} layers with output {attrs.get('output')!r}")
    width = d
    for i in range(n):
        W = _finite(arrays, f"coef_{i}", where, 2)
        if W.shape[0] != width or len(_finite(arrays, f"intercept_{i}", where, 1)) != W.shape[1]:
            raise DataError(f"{where}: layer {i} has shape {W.shape}, its input has {width} units")
        width = W.shape[1]
    if [arrays[f"coef_{i}"].shape[1] for i in range(n - 1)] != list(est._hidden()):
        raise DataError(f"{where}: its layers do not match hidden_layer_sizes {est._hidden()}")
    return width


def load(path, comm=None, model_parallel=1, shard="auto"):
    """Read a model saved with ``save`` (collective); returns the fitted estimator
    (any of mpiml's model types), with ``classes_`` of the type it was trained with
    and ``feature_names_in_`` when the file has feature names.

    The file holds the logical weights, whatever split trained them. With
    ``model_parallel=K`` each rank keeps only its shard (split by classes for a
    softmax model, by features otherwise, or as ``shard`` says) and prediction is
    collective over each group of ``K`` consecutive ranks, which must pass the same
    rows (:func:`mpiml.load_hdf5` with ``grid=`` reads them so).
    """
    c = get_comm(comm)
    model_type, params, arrays, attrs = load_model(path, comm=c, lazy=("coef",))
    # every field read from the file is checked (identically on every rank) before use
    c.run(check_contents, path, model_type, params, arrays, attrs)
    arrays, names = _labels(arrays, path, model_type)
    if model_type in MLP_TYPES:
        est = load_mlp(model_type, params, arrays, attrs, comm=comm,
                       model_parallel=model_parallel)
    else:
        est = _load_linear(path, MODEL_TYPES[model_type], params, arrays, attrs, comm,
                           model_parallel, shard)
    if names is not None:
        est.feature_names_in_ = names
    return est


def _labels(arrays, path, model_type):
    """``(arrays, feature names or None)`` of a checked file: its classes as a classifier
    keeps them (int64, float64, bool or str labels; dropped for a regressor) and its
    feature names as ``feature_names_in_`` holds them (an object array of str)."""
    where = f"model file {path}"
    arrays = dict(arrays)
    classes = arrays.pop("classes", None)
    if (MODEL_TYPES.get(model_type) or MLP_TYPES[model_type])._is_classifier:
        arrays["classes"] = check_labels(classes, where)
    names = arrays.get("feature_names")
    return arrays, None if names is None else check_feature_names(names, None, where)


def _load_exact(path, est, arrays, attrs, c, grid):
    """An exact-solver linear model (whole weights on every rank)."""
    def check():
        if grid.K > 1:
            raise ConfigError(f"{type(est).__name__} is not split over ranks: load it with "
                              "model_parallel=1")
    c.run(check)
    coef = np.atleast_2d(read_model_slice(path, "coef", (), comm=c))
    intercept = np.asarray(arrays["intercept"], dtype=np.float64).ravel()
    if est._is_classifier:
        est.classes_ = arrays["classes"]
        est.coef_, est.intercept_ = coef, intercept
    else:
        est.coef_, est.intercept_ = coef.ravel(), float(intercept[0])
    est.n_features_in_ = int(attrs["n_features_in"])
    est.n_iter_ = int(attrs.get("n_iter", 0))
    restore_scaler(est, arrays, attrs, path)
    return est


def _load_linear(path, cls, params, arrays, attrs, comm, model_parallel, shard):
    """A linear model from a checked file's contents (with ``model_parallel > 1`` each
    rank reads only its shard of the weights)."""
    c = get_comm(comm)
    grid = get_grid(c, model_parallel)
    valid = set(cls._param_names())
    est = cls(**{k: v for k, v in params.items() if k in valid})
    est.comm = comm
    if cls.__name__ in EXACT_TYPES:
        return _load_exact(path, est, arrays, attrs, c, grid)
    est.model_parallel = model_parallel
    est.shard = shard
    shape = arrays["coef"]
    K, d = (1, shape[0]) if len(shape) == 1 else shape
    intercept = np.asarray(arrays["intercept"], dtype=np.float64).ravel()
    if cls is not SGDRegressor:
        est.classes_ = arrays["classes"]
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
