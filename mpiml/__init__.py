"""mpiml: MPI-native machine learning on HDF5 shards.

Every public function that communicates takes ``comm=None`` (default: a
duplicate of ``MPI.COMM_WORLD``) and must be called on every rank.
"""
import os as _os
import sys as _sys

from ._stopsignals import hold_for_command_line as _hold

# `mpiml train` / `mpiml tune`: a stop signal during the imports below is remembered, not
# fatal (see mpiml._stopsignals); any other process is left as it was
_hold(_sys.argv)

# Importing mpiml changes nothing in the process: BLAS threads are limited to one
# per rank only while mpiml computes (mpiml.threads.blas_threads).

try:
    from ._kernels import sgd as _sgd  # noqa: F401
    from ._kernels import stats as _stats  # noqa: F401
except ImportError as _exc:  # pragma: no cover - depends on how mpiml was installed
    raise ImportError(
        f"mpiml's compiled kernels are missing ({_exc}). If you are importing the source "
        f"tree at {_os.path.dirname(__file__)}, install it with `pip install .` and run from "
        "another directory, or build in place with `python setup.py build_ext --inplace`."
    ) from None

from .comm import Comm, chunk, get_comm, get_grid  # noqa: E402
from .errors import ConfigError, DataError, MpimlError, OutputError, TrainingError  # noqa: E402
from .io import load_hdf5  # noqa: E402
from .models import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor  # noqa: E402
from .models import (ElasticNet, EpsilonHuberRegressor, LinearRegression,  # noqa: E402
                     LogisticRegression, Ridge)
from .models import load as load_model  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Comm", "chunk", "get_comm", "get_grid", "load_hdf5", "load_model", "SGDClassifier",
           "SGDRegressor", "MLPClassifier", "MLPRegressor", "MpimlError", "DataError", "ConfigError", "OutputError",
           "TrainingError", "__version__", "LogisticRegression", "LinearRegression", "Ridge",
           "ElasticNet", "EpsilonHuberRegressor"]
