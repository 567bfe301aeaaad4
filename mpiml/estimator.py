"""The estimator contract every mpiml model and transformer follows: scikit-learn's.

mpiml's estimators are scikit-learn estimators: :class:`BaseEstimator` is
scikit-learn's (``get_params`` / ``set_params`` / ``clone`` / ``__repr__`` from the
constructor's signature), and the models add scikit-learn's ``ClassifierMixin`` /
``RegressorMixin`` / ``TransformerMixin`` for the tags that ``Pipeline``, the scorers
and the searches read. What stays mpiml's: a fit is collective, its input is agreed
across ranks (:mod:`mpiml.models.training`), and ``comm`` is a parameter that is
cloned as given, never copied (a communicator is a handle, not a value).

Importing scikit-learn costs about 1 s per process here (``benchmarks/bench_import.py``
measures it); it is the API mpiml implements, so every rank pays it once at start-up.
"""
import numpy as np
from sklearn.base import BaseEstimator as _SkBaseEstimator

from .errors import DataError

__all__ = ["BaseEstimator", "ALIASES", "param_name", "check_finite_outputs"]

# command-line / ``mpiml ctl`` names of estimator parameters, (the linear models' name,
# the MLPs' name); ``lr`` is the learning rate of either family. ``mpiml tune --grid``
# takes both forms, ``mpiml ctl set`` the short ones.
ALIASES = {"lr": ("eta0", "learning_rate_init"),
           "lr_schedule": ("learning_rate", "learning_rate"),
           "hidden": ("hidden_layer_sizes", "hidden_layer_sizes"),
           "scale": ("scaler", "scaler"), "seed": ("random_state", "random_state")}


def param_name(name, mlp):
    """The estimator parameter a command-line name stands for (``name`` itself if none)."""
    pair = ALIASES.get(name)
    return pair[1 if mlp else 0] if pair else name


class BaseEstimator(_SkBaseEstimator):
    """scikit-learn's ``BaseEstimator`` (mpiml's models and transformers derive from it)."""

    @classmethod
    def _param_names(cls):
        """The constructor's parameter names (what a model file may store)."""
        return cls._get_param_names()

    def __sklearn_clone__(self):
        refuse_joblib_workers(self)
        return super().__sklearn_clone__()


def refuse_joblib_workers(est):
    """Inside an MPI job, refuse a clone made to run in joblib workers (scikit-learn's
    ``n_jobs > 1``): they are outside the communicator (a worker process cannot join
    the job's MPI, and threads would interleave its collectives). scikit-learn clones
    the estimator for each task in the dispatching thread, inside ``Parallel.__call__``,
    so the refusal is raised there, on every rank, before any worker starts."""
    import sys

    from mpi4py import MPI
    comm = getattr(est, "comm", None)
    size = MPI.COMM_WORLD.Get_size() if comm is None else getattr(comm, "size", None)
    if size is None:
        size = comm.Get_size()
    if size <= 1 or "joblib" not in sys.modules:
        return
    from joblib import Parallel
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Parallel) and owner._effective_n_jobs() != 1:
            from .errors import ConfigError
            raise ConfigError(
                f"n_jobs={owner.n_jobs}: joblib workers are outside the MPI job's "
                f"communicator, so inside an MPI job mpiml estimators run with n_jobs=1 "
                f"(every rank already works on its own rows). To search hyper-parameters "
                f"over groups of ranks in parallel use `mpiml tune` or "
                f"mpiml.tune.GridSearchCV (docs/tuning.md)")
        frame = frame.f_back


def check_finite_outputs(out, name="X"):
    """Raise the error for a NaN or infinity in the input rows when the outputs computed
    from them are not finite (they propagate through every product and sum)."""
    if out.size and not np.isfinite(out).all():
        bad = np.argwhere(~np.isfinite(out.reshape(len(out), -1)))[0][0]
        raise DataError(f"Input {name} contains NaN or infinity (or its outputs overflow): "
                        f"local row {bad}")
    return out
