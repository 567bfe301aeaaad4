"""``mpiml <verb>``: a thin command-line layer over the Python API.

Run under ``mpiexec -n N`` (or ``srun``) for N ranks; every verb also runs on a
single process. Only rank 0 prints. Exit codes: 0 success, 1 an error (bad
input, failed training; the message is printed once, by rank 0, and every rank
exits 1), 2 a command-line usage error, 75 stopped by SIGTERM/SIGUSR1 after
writing a checkpoint (resume with ``--resume``), 70 ended by the collective
watchdog. An unexpected exception on any rank aborts the whole job (MPI_Abort)
after printing its traceback with the rank.
"""
import argparse
import json
import sys
import time

from . import __version__
from .checkpoint import EXIT_CHECKPOINTED  # stopped by a signal after a checkpoint
from .comm import write_stderr
from .watchdog import EXIT_WATCHDOG  # noqa: F401 - a collective did not complete in time

EXIT_ERROR = 1
EXIT_USAGE = 2

MODELS = {
    # CLI name -> (estimator class name, constructor arguments)
    "linear": ("SGDRegressor", {"loss": "squared_error"}),
    "huber": ("SGDRegressor", {"loss": "huber"}),
    "logistic": ("SGDClassifier", {"loss": "log_loss"}),
    "hinge": ("SGDClassifier", {"loss": "hinge"}),
    "softmax": ("SGDClassifier", {"loss": "log_loss", "multi_class": "multinomial"}),
    "mlp": ("MLPClassifier", {}),
    "mlp-regression": ("MLPRegressor", {}),
}


class UsageError(Exception):
    pass


def _rank():
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting and prints on rank 0 only."""

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")

    def _print_message(self, message, file=None):
        if message and _rank() == 0:
            (file or sys.stdout).write(message)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _batch_size(text):
    if text == "full":
        return "full"
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'full', not {text!r}")


def _data_args(p, y=True):
    p.add_argument("--data", required=True, help="HDF5 input file")
    p.add_argument("--X", default="X", help="dataset of features (default X; nested paths allowed)")
    if y:
        p.add_argument("--y", default="y", help="dataset of targets/labels (default y)")


def build_parser():
    # the verbs live in cli_train / cli_tools (imported here: they import from this module)
    from .cli_tools import (cmd_convert, cmd_ctl, cmd_explain, cmd_export, cmd_plot,
                            cmd_predict, cmd_score)
    from .cli_train import cmd_train

    parser = _Parser(prog="mpiml", description="MPI-native machine learning on HDF5 shards. "
                     "Run a verb under `mpiexec -n N` for N ranks.")
    parser.add_argument("--version", action="version", version=f"mpiml {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("make-data", help="write a reproducible synthetic dataset")
    p.add_argument("--task", required=True, choices=["regression", "binary", "multiclass", "circles"])
    p.add_argument("--rows", type=_positive_int, required=True)
    p.add_argument("--features", type=_positive_int, required=True)
    p.add_argument("--classes", type=_positive_int, default=3, help="multiclass: number of classes")
    p.add_argument("--noise", type=float, default=None,
                   help="regression: noise std (0.1); classification: fraction of random labels (0.02)")
    p.add_argument("--balance", type=float, default=0.5, help="binary: fraction of positives")
    p.add_argument("--weights", default=None,
                   help="multiclass: comma-separated relative class frequencies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--compression", choices=["gzip"], default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--test-out", default=None)
    p.add_argument("--test-rows", type=int, default=0)
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("train", help="fit a model on an HDF5 dataset")
    _data_args(p)
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--epochs", type=_positive_int, default=5, help="(maximum) number of epochs")
    p.add_argument("--batch-size", type=_batch_size, default=256,
                   help="global batch size over all ranks, or 'full' (default 256)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate: eta0 of the linear models (default 0.1), "
                        "learning_rate_init of the MLPs (default 0.001)")
    p.add_argument("--lr-schedule", choices=["constant", "invscaling", "optimal"],
                   default="constant")
    p.add_argument("--power-t", type=float, default=0.5, help="exponent of invscaling")
    p.add_argument("--alpha", type=float, default=1e-4, help="regularisation strength")
    p.add_argument("--penalty", choices=["l2", "l1", "elasticnet", "none"], default="l2")
    p.add_argument("--l1-ratio", type=float, default=0.15)
    p.add_argument("--momentum", type=float, default=None,
                   help="momentum (default 0 for the linear models, 0.9 for MLPs with --solver sgd)")
    p.add_argument("--epsilon", type=float, default=0.1, help="huber threshold")
    p.add_argument("--tol", type=float, default=None,
                   help="stop when the epoch loss improves by less than this (default: run all epochs)")
    p.add_argument("--n-iter-no-change", type=_positive_int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["auto", "float32", "float64"], default="auto")
    p.add_argument("--out", required=True, help="output model file (HDF5)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    g = p.add_argument_group("feature scaling and validation")
    g.add_argument("--scale", choices=["none", "standard", "minmax"], default="none",
                   help="scale the features with global statistics of the training rows "
                        "(one Allreduce); stored in the model and applied by predict, score, "
                        "explain and the ONNX export")
    g.add_argument("--standardize", action="store_true", help="the same as --scale standard")
    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="hold out this fraction of the rows, chosen by global row index and "
                        "--seed (the same rows at any rank count): metrics after every epoch")
    g.add_argument("--early-stopping", action="store_true",
                   help="with --val or --val-fraction: stop when the validation loss has not "
                        "improved by --tol (default 0) for --n-iter-no-change epochs (--tol "
                        "then no longer applies to the training loss)")
    g = p.add_argument_group("class imbalance")
    g.add_argument("--class-weight", default=None, metavar="balanced|JSON",
                   help="'balanced' (from the global class counts) or a JSON map label -> weight")
    g.add_argument("--sample-weight", default=None, metavar="DATASET",
                   help="a 1-D dataset of per-row weights in the data file")
    g.add_argument("--resample", default=None, metavar="over|under[:RATIO]",
                   help="random over-/under-sampling of the classes to RATIO (default 1) of the "
                        "largest/smallest class; the same rows at any rank count")
    g = p.add_argument_group("MLPs (--model mlp | mlp-regression)")
    g.add_argument("--hidden", default="100", metavar="H1,H2,...",
                   help="hidden layer sizes (default 100)")
    g.add_argument("--activation", choices=["relu", "tanh"], default="relu")
    g.add_argument("--solver", choices=["adam", "sgd"], default="adam")
    g = p.add_argument_group("model parallelism (2-D grid: ranks = data-parallel x model-parallel)")
    g.add_argument("--model-parallel", type=_positive_int, default=1, metavar="K",
                   help="split the weights over K consecutive ranks (must divide the rank count)")
    g.add_argument("--shard", choices=["auto", "classes", "features"], default="auto",
                   help="how to split a linear model: by classes (softmax; default for it) or by "
                        "features (each rank reads only its columns; default otherwise)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the process grid and each rank's shard, then exit")
    g = p.add_argument_group("how the ranks combine their work")
    g.add_argument("--sync", default="allreduce", metavar="MODE",
                   help="allreduce (default: one packed Allreduce per step) | local:K (K local "
                        "steps, then model averaging) | ps:S (S parameter-server ranks, "
                        "asynchronous workers)")
    g.add_argument("--sync-warmup", type=int, default=0, metavar="STEPS",
                   help="local:K: synchronous steps before local SGD starts")
    g.add_argument("--max-staleness", type=int, default=4, metavar="N",
                   help="ps:S: a worker may be at most N pushes ahead of the slowest (default 4)")
    g.add_argument("--overlap", action="store_true",
                   help="overlap each step's Iallreduce with the next gradient (delayed update)")
    g.add_argument("--compress", default="none", metavar="KIND",
                   help="none | fp16 | topk:RATIO (gradient compression with error feedback)")
    g.add_argument("--stats", default=None, metavar="FILE",
                   help="write per-epoch communication counters (JSON lines) here")
    g = p.add_argument_group("watch and steer (mpiml ctl / mpiml plot)")
    g.add_argument("--run-dir", default=None, metavar="DIR",
                   help="control commands, status.json, metrics.jsonl and checkpoints live here")
    g.add_argument("--val", default=None, metavar="FILE",
                   help="validation data (HDF5, same datasets): metrics after every epoch")
    g = p.add_argument_group("never hang, never lose work")
    g.add_argument("--checkpoint-dir", default=None,
                   help="write checkpoints here (at the end, on SIGTERM/SIGUSR1, and as below)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="STEPS",
                   help="checkpoint every this many updates")
    g.add_argument("--checkpoint-seconds", type=float, default=None, metavar="SECONDS",
                   help="checkpoint when this much time has passed since the last one")
    g.add_argument("--keep-checkpoints", type=_positive_int, default=3, metavar="K")
    g.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the newest checkpoint in DIR (any number of ranks)")
    g.add_argument("--comm-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="end the job with a report if a collective takes longer (0: off; "
                        "default 600)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="evaluate a model on an HDF5 dataset")
    p.add_argument("--model", required=True, help="model file written by `mpiml train`")
    _data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model-parallel", type=_positive_int, default=1, metavar="K",
                   help="hold the weights split over K consecutive ranks (any model file)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("predict", help="write predictions in input row order")
    p.add_argument("--model", required=True)
    _data_args(p, y=False)
    p.add_argument("--out", required=True, help="output HDF5 file (dataset 'pred')")
    p.add_argument("--proba", action="store_true", help="also write class probabilities ('proba')")
    p.add_argument("--model-parallel", type=_positive_int, default=1, metavar="K",
                   help="hold the weights split over K consecutive ranks (any model file)")
    p.add_argument("--block-rows", type=_positive_int, default=65536, metavar="N",
                   help="rows read and predicted at a time: bounds the memory (default 65536)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("convert", help="CSV / .npy / libsvm into HDF5 (X, y), in parallel")
    p.add_argument("src", help="input file")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--format", choices=["csv", "npy", "libsvm"], default=None,
                   help="default: from the file name (.csv .txt .npy .svm .libsvm)")
    p.add_argument("--label-column", default=None,
                   help="CSV/npy: the label column, by header name or index (negative: from "
                        "the end)")
    hdr = p.add_mutually_exclusive_group()
    hdr.add_argument("--header", dest="header", action="store_const", const=True,
                     default="auto", help="the first CSV line names the columns")
    hdr.add_argument("--no-header", dest="header", action="store_const", const=False)
    p.add_argument("--delimiter", default=",")
    p.add_argument("--n-features", type=_positive_int, default=None,
                   help="libsvm: the feature count (default: the largest index)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--compression", choices=["gzip"], default=None)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="write a model as ONNX")
    p.add_argument("model", help="model file written by `mpiml train`")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the graph's input and weight type (default float32)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("explain", help="SHAP values or permutation importance, in parallel")
    p.add_argument("--model", required=True)
    _data_args(p)
    p.add_argument("--method", choices=["shap", "permutation"], default="shap")
    p.add_argument("--out", default=None,
                   help="shap: HDF5 file of SHAP values in input row order (+ base_value); "
                        "permutation: JSON file of the importances")
    p.add_argument("--plot", default=None, help="bar chart of the global importances (PNG)")
    p.add_argument("--background", default=None,
                   help="HDF5 file of background rows (default: the explained data)")
    p.add_argument("--background-rows", type=_positive_int, default=100,
                   help="Kernel SHAP (MLPs): background rows rank 0 takes and broadcasts")
    p.add_argument("--nsamples", type=_positive_int, default=None,
                   help="Kernel SHAP coalitions per row (default 2*features + 2048)")
    p.add_argument("--repeats", type=_positive_int, default=5, help="permutation repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=_positive_int, default=10, help="features in the summary")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("ctl", help="steer a running job: status | set K=V ... | pause | resume | "
                                   "checkpoint | stop")
    p.add_argument("run_dir", help="the job's --run-dir")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="status, set lr=0.01 batch_size=512, pause, resume, checkpoint, stop")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the job's response (default 60)")
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser("plot", help="PNG of a run's curves from its metrics log")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="output PNG file")
    p.set_defaults(func=cmd_plot)

    from .cli_bench import add_parser as add_bench
    from .cli_tune import add_parser as add_tune
    add_bench(sub, _positive_int)
    add_tune(sub, sub.choices["train"])

    p = sub.add_parser("doctor", help="check MPI, h5py, the build and Slurm; suggest fixes")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("info", help="MPI, HDF5 and kernel build information")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)
    return parser


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
              compression=args.compression, comm=c)
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
def main(argv=None):
    """Console entry point: run one verb, map errors to exit codes (see module doc)."""
    from .comm import abort_on_exception
    from .errors import Interrupted, MpimlError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except UsageError as exc:
        # argument parsing is identical on every rank, so every rank gets here
        if _rank() == 0:
            write_stderr(f"{exc}\nrun `mpiml --help` or `mpiml VERB --help` for usage\n")
        return EXIT_USAGE
    except Interrupted as exc:
        if _rank() == 0:
            write_stderr(f"mpiml: {exc}\n")
        return EXIT_CHECKPOINTED
    except MpimlError as exc:
        if not exc.ranks:
            # raised on this rank only: the others may be waiting in a collective
            abort_on_exception(type(exc), exc, exc.__traceback__)
        if _rank() == 0:
            write_stderr(f"mpiml: error: {exc}\n")
        return EXIT_ERROR
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - anything else must not hang the other ranks
        abort_on_exception(*sys.exc_info())


if __name__ == "__main__":
    sys.exit(main())
