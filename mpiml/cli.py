"""``mpiml <verb>``: a thin command-line layer over the Python API.

Run under ``mpiexec -n N`` (or ``srun``) for N ranks; every verb also runs on a
single process. Only rank 0 prints. Each verb module (``cli_train``, ``cli_tools``,
``cli_tune``, ``cli_bench``) holds its commands and their parsers; the names they share
(models table, usage error, exit codes) are in :mod:`mpiml.cli_common`. Exit codes: 0
success, 1 an error (bad input, failed training; the message is printed once, by rank
0, and every rank exits 1), 2 a command-line usage error, 75 stopped by SIGTERM/SIGUSR1
after writing a checkpoint (resume with ``--resume``), 70 ended by the collective
watchdog. An unexpected exception on any rank aborts the whole job (MPI_Abort)
after printing its traceback with the rank.
"""
import contextlib
import json
import sys
import time

from . import __version__, hooks, progress
from .cli_bench import add_parser as add_bench
from .cli_common import (EXIT_CHECKPOINTED, EXIT_ERROR, EXIT_USAGE, MODELS, Parser,  # noqa: F401
                         UsageError, positive_int, rank)
from .cli_tools import add_parsers as add_tools
from .cli_train import add_parser as add_train
from .cli_tune import add_parser as add_tune
from .comm import write_stderr
from .threads import blas_threads


def build_parser():
    """The parser of every verb: each verb module adds its own."""
    parser = Parser(prog="mpiml", description="MPI-native machine learning on HDF5 shards. "
                    "Run a verb under `mpiexec -n N` for N ranks.")
    parser.add_argument("--version", action="version", version=f"mpiml {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    sub.required = True
    _add_make_data(sub)
    add_train(sub)
    add_tools(sub)
    add_bench(sub, positive_int)
    add_tune(sub)
    p = sub.add_parser("doctor", help="check MPI, h5py, the build and Slurm; suggest fixes")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("info", help="MPI, HDF5 and kernel build information")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    return parser


def _add_make_data(sub):
    p = sub.add_parser("make-data", help="write a reproducible synthetic dataset")
    p.add_argument("--task", required=True, choices=["regression", "binary", "multiclass", "circles",
                                                     "sparse-binary", "sparse-multiclass"],
                   help="sparse-*: a CSR X with power-law features (docs/sparse.md)")
    p.add_argument("--rows", type=positive_int, required=True)
    p.add_argument("--features", type=positive_int, required=True)
    p.add_argument("--classes", type=positive_int, default=3, help="multiclass: number of classes")
    p.add_argument("--noise", type=float, default=None,
                   help="regression: noise std (0.1); classification: fraction of random labels (0.02)")
    p.add_argument("--balance", type=float, default=0.5, help="binary: fraction of positives")
    p.add_argument("--weights", default=None,
                   help="multiclass: comma-separated relative class frequencies")
    p.add_argument("--nnz-per-row", type=positive_int, default=20, metavar="K",
                   help="sparse tasks: mean feature draws per row (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--compression", choices=["gzip"], default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--test-out", default=None)
    p.add_argument("--test-rows", type=int, default=0)
    p.set_defaults(func=cmd_make_data)


# ---------------------------------------------------------------------- verbs
def cmd_make_data(args):
    from .comm import get_comm
    from .datasets import make_data
    from .errors import ConfigError

    c = get_comm()
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights must be comma-separated numbers, not {args.weights!r}",
                              ranks=range(c.size)) from None
    t0 = time.perf_counter()
    make_data(args.task, args.rows, args.features, args.out, seed=args.seed,
              test_out=args.test_out, test_rows=args.test_rows, classes=args.classes,
              noise=args.noise, balance=args.balance, weights=weights, dtype=args.dtype,
              compression=args.compression, comm=c, nnz_per_row=args.nnz_per_row)
    c.print0(f"wrote {args.out} ({args.rows} x {args.features}, {args.task})"
             + (f" and {args.test_out} ({args.test_rows} rows)" if args.test_out and args.test_rows
                else "") + f" in {time.perf_counter() - t0:.2f} s on {c.size} rank(s)")


def info_dict():
    """What ``mpiml info`` reports (collective over the world communicator)."""
    import h5py
    import mpi4py
    import numpy as np
    from mpi4py import MPI

    from ._kernels import sgd
    from .comm import get_comm
    from .parallel import compiled

    c = get_comm()
    return {
        "mpiml": __version__,
        "python": sys.version.split()[0],
        "mpi4py": mpi4py.__version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_standard": "%d.%d" % MPI.Get_version(),
        "ranks": c.size,
        "processor": MPI.Get_processor_name(),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "h5py_mpi_io": bool(h5py.get_config().mpi),
        "numpy": np.__version__,
        "kernels": sgd.__file__,
        "kernel_dtypes": list(sgd.DTYPES),
        "kernel_flags": sgd.COMPILE_FLAGS,
        "step_loop": compiled.describe(),
    }


def cmd_doctor(args):
    from .doctor import main as doctor_main
    return doctor_main()


def cmd_info(args):
    from .comm import get_comm

    c = get_comm()
    info = info_dict()
    if args.json:
        c.print0(json.dumps(info))
    else:
        width = max(map(len, info))
        for k, v in info.items():
            c.print0(f"{k:<{width}}  {v}")


# ---------------------------------------------------------------------- entry point
@contextlib.contextmanager
def _solver_warnings():
    """An exact solve that stops before converging warns (ConvergenceWarning) on every
    rank alike, with the same text: the command line says it once, from rank 0, as one
    line (not a Python warning with a source line per rank). Other warnings are shown as
    Python shows them."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, ConvergenceWarning):
            return shown(message, category, filename, lineno, file, line)
        if rank() == 0:
            write_stderr(f"mpiml: warning: {message}\n")

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def main(argv=None):
    """Console entry point: run one verb, map errors to exit codes (see module doc)."""
    from . import _stopsignals
    from .comm import abort_on_exception
    from .errors import Interrupted, MpimlError

    try:
        args = build_parser().parse_args(argv)
        # the long verbs' --progress / --progress-interval; the other verbs show none
        with blas_threads(), progress.configured(getattr(args, "progress", None),
                                                 getattr(args, "progress_interval", None)), \
                _solver_warnings():
            return args.func(args) or 0
    except UsageError as exc:
        # argument parsing is identical on every rank, so every rank gets here
        if rank() == 0:
            write_stderr(f"{exc}\nrun `mpiml --help` or `mpiml VERB --help` for usage\n")
        return EXIT_USAGE
    except Interrupted as exc:
        if rank() == 0:
            write_stderr(f"mpiml: {exc}\n")
        return EXIT_CHECKPOINTED
    except MpimlError as exc:
        if not exc.ranks:
            # raised on this rank only: the others may be waiting in a collective
            abort_on_exception(type(exc), exc, exc.__traceback__)
        if rank() == 0:
            kind = f" [{type(exc).__name__}]" if hooks.current().error_class else ""
            write_stderr(f"mpiml: error{kind}: {exc}\n")
        return EXIT_ERROR
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - anything else must not hang the other ranks
        abort_on_exception(*sys.exc_info())
    finally:
        _stopsignals.finish()


if __name__ == "__main__":
    sys.exit(main())
