"""The other data verbs of ``mpiml``: score, predict, convert, export, explain, ctl, plot
(each command and, in :func:`add_parsers`, its options)."""
import argparse
import json
import os
import time

from .cli_common import EXIT_ERROR, UsageError, data_args, positive_int, progress_args
from .comm import write_stderr


def cmd_score(args):
    from .comm import get_comm
    from .io import load_hdf5
    from .models import load

    c = get_comm()
    est = load(args.model, comm=c, model_parallel=args.model_parallel)
    X, y = load_hdf5(args.data, X=args.X, y=args.y, comm=c, require_y=True,
                     model_parallel=args.model_parallel)
    result = est.metrics(X, y)
    if hasattr(est, "classes_"):
        from .models.base import classification_report
        report = classification_report(est, X, y)
        result.update({k: v for k, v in report.items() if k not in ("accuracy", "n_samples")})
    if args.json:
        c.print0(json.dumps(result))
    else:
        c.print0("  ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in result.items() if not isinstance(v, (dict, list))))
        if "per_class" in result:
            for label, m in result["per_class"].items():
                c.print0(f"  class {label}: precision {m['precision']:.4f}  recall "
                         f"{m['recall']:.4f}  f1 {m['f1']:.4f}  support {m['support']}")


def cmd_predict(args):

    from .comm import get_comm, get_grid
    from .models import load

    c = get_comm()
    grid = get_grid(c, args.model_parallel)
    est = load(args.model, comm=c, model_parallel=grid.K)
    if args.proba and (not hasattr(est, "predict_proba")
                       or getattr(est, "loss", "log_loss") != "log_loss"):
        from .errors import ConfigError
        raise ConfigError("--proba needs a probabilistic model (logistic, softmax or mlp)",
                          ranks=range(c.size))
    from .predict import stream_predict     # it checks --out before reading a row
    t0 = time.perf_counter()
    n = stream_predict(est, args.data, args.out, X=args.X, block_rows=args.block_rows,
                       proba=args.proba, comm=c, model_parallel=grid.K,
                       attrs={"model": os.path.abspath(args.model),
                              "data": os.path.abspath(args.data)}, inputs=(args.model,))
    secs = time.perf_counter() - t0
    c.print0(f"wrote predictions for {n} rows to {args.out} in {secs:.2f} s "
             f"({n / max(secs, 1e-9):.3g} rows/s, blocks of {args.block_rows} rows)")


def cmd_convert(args):
    from .comm import get_comm
    from .convert import convert

    c = get_comm()
    t0 = time.perf_counter()
    rows, cols = convert(args.src, args.out, fmt=args.format, label_column=args.label_column,
                         header=args.header, delimiter=args.delimiter,
                         n_features=args.n_features, dtype=args.dtype,
                         compression=args.compression, comm=c,
                         allow_nonfinite=args.allow_nonfinite, dense=args.dense,
                         hash_bits=args.hash_bits, labels=args.labels)
    secs = time.perf_counter() - t0
    mb = os.path.getsize(args.src) / 1e6
    c.print0(f"wrote {args.out}: {rows} x {cols} from {args.src} in {secs:.2f} s "
             f"({mb / max(secs, 1e-9):.1f} MB/s, {c.size} rank(s))")
    return 0


def cmd_export(args):
    from .comm import get_comm
    from .export import OPSET, export_onnx
    from .models import load

    c = get_comm()
    est = load(args.model, comm=c)
    export_onnx(est, args.onnx, dtype=args.dtype, inputs=(args.model,))
    c.print0(f"wrote {args.onnx} (ONNX opset {OPSET}, {args.dtype} input X)")
    return 0


def cmd_explain(args):
    from .comm import get_comm
    from .io import check_output_path, load_hdf5
    from .models import load

    c = get_comm()
    est = load(args.model, comm=c)
    for path in (args.out, args.plot):
        if path:
            check_output_path(path, comm=c, inputs=(args.model, args.data, args.background))
    need_y = args.method == "permutation"
    X, y = load_hdf5(args.data, X=args.X, y=args.y if need_y else None, comm=c,
                     require_y=need_y)
    t0 = time.perf_counter()
    if args.method == "permutation":
        return _explain_permutation(args, c, est, X, y, t0)
    return _explain_shap(args, c, est, X, t0)


def _names(est):
    """The model's feature names (from the DataFrame it was fitted on), or None."""
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def _explain_permutation(args, c, est, X, y, t0):
    from .explain import permutation_importance, plot_importance, summarise_importance
    from .progress import Progress

    # every rank goes through the features together: rank 0's count is everyone's
    with Progress("explain", X.shape[1], "features", rank=c.rank) as shown:
        mean, std, base = permutation_importance(est, X, y, repeats=args.repeats,
                                                 seed=args.seed, comm=c, progress=shown.update)
    c.print0(f"permutation importance ({args.repeats} repeats; baseline score "
             f"{base:.6g}; mean drop of the score):")
    names = _names(est)
    for line in summarise_importance(mean, names=names, top=args.top):
        c.print0(line)
    if args.out and c.rank == 0:
        with open(args.out, "w") as fh:
            json.dump({"baseline_score": base, "mean": mean.tolist(), "std": std.tolist(),
                       "repeats": args.repeats, "seed": args.seed,
                       "feature_names": names or [f"x{j}" for j in range(len(mean))]}, fh)
    if args.plot and c.rank == 0:
        plot_importance(mean, args.plot, "mean drop of the score when permuted", std=std,
                        names=names)
    c.print0(f"done in {time.perf_counter() - t0:.2f} s on {c.size} rank(s)")
    return 0


def _rows_progress(args, c, X):
    """Rank 0's progress through the explained rows: its own, scaled to the rows of the
    file (every rank explains a share of the same size); no communication."""
    from .progress import Progress

    n = len(X)
    if c.rank == 0:
        from .io import dataset_info
        try:
            n = dataset_info(args.data, X=args.X, y=None)["n_rows"]
        except Exception:  # noqa: BLE001 - only the total shown depends on it
            n = len(X) * c.size
    return Progress("explain", n, "rows", rank=c.rank, scale=n / max(len(X), 1))


def _explain_shap(args, c, est, X, t0):
    import numpy as np

    from .explain import (global_mean, kernel_shap, linear_shap, model_output)
    from .io import load_hdf5, write_rows
    from .models.scaling import raw_linear

    d = X.shape[1]
    if getattr(X, "format", None) == "csr":
        return _explain_sparse(args, c, est, X, t0)
    with _rows_progress(args, c, X) as shown:
        if est._shap_method == "kernel":                       # MLPs: Kernel SHAP
            bg = None
            if c.rank == 0:
                import h5py
                with h5py.File(args.background or args.data, "r", locking=False) as f:
                    bg = np.asarray(f[args.X][:args.background_rows], dtype=np.float64)
            bg = c.bcast(bg)
            values, base = kernel_shap(model_output(est), X, bg, nsamples=args.nsamples,
                                       seed=args.seed, progress=shown.update)
            what = "Kernel SHAP of the " + ("predicted probabilities"
                                            if hasattr(est, "classes_") else "predictions")
        else:
            if args.background:
                Xb, _ = load_hdf5(args.background, X=args.X, y=None, comm=c)
                mean = global_mean(Xb, c)
            else:
                mean = global_mean(X, c)
            # the model's scaler folded into the weights: SHAP values of the raw features
            # (equal to those of the scaled features, the transform being per feature)
            coef, intercept = raw_linear(est)
            values, base = linear_shap(coef, intercept, X, mean)
            shown.update(len(X))
            what = "exact linear SHAP of the margins"
    if args.out:
        shown.say(f"writing {args.out}")
        extra = {"base_value": np.asarray(base)}
        if _names(est) is not None:                 # the columns of 'shap', by name
            from .io import STRING_DTYPE
            extra["feature_names"] = np.array(_names(est), dtype=STRING_DTYPE)
        write_rows(args.out, {"shap": values}, comm=c,
                   attrs={"model": os.path.abspath(args.model), "method": what}, extra=extra)
    absum = np.abs(values).reshape(len(X), -1, d).sum(axis=(0, 1)) if len(X) else np.zeros(d)
    return _report_shap(args, c, est, what, absum, len(X), d, base, t0)


def _report_shap(args, c, est, what, absum, n_local, d, base, t0):
    """Rank 0's summary of an explanation: the global mean |SHAP| per feature from every
    rank's column sums ``absum`` (one Allreduce), the top features and the plot."""
    import numpy as np

    from .explain import plot_importance, summarise_importance

    tot = c.allreduce(np.concatenate([absum, [float(n_local)]]))
    importance = tot[:-1] / max(tot[-1], 1.0)
    c.print0(f"{what}: {int(tot[-1])} rows, {d} features in {time.perf_counter() - t0:.2f} s on "
             f"{c.size} rank(s); base value {np.round(base, 6).tolist()}")
    c.print0("global importance (mean |SHAP|):")
    for line in summarise_importance(importance, names=_names(est), top=args.top):
        c.print0(line)
    if args.plot and c.rank == 0:
        plot_importance(importance, args.plot, "mean |SHAP value|", names=_names(est))
    return 0


def _explain_sparse(args, c, est, X, t0):
    """Exact linear SHAP of CSR rows, kept sparse: the output's ``shap`` is a CSR group
    (n, K*d) of ``W[k, j] x_ij`` at the stored entries and ``shap_offset`` (K*d) the
    ``-W[k, j] mean_j`` every entry adds (docs/explain.md)."""
    import numpy as np

    from .errors import ConfigError
    from .explain import global_mean, linear_shap_sparse, sparse_abs_sum
    from .io import load_hdf5
    from .models.scaling import raw_linear
    from .sparse_io import write_csr

    if est._shap_method != "linear":
        raise ConfigError(f"{args.data}: CSR rows; a {type(est).__name__} takes dense rows",
                          ranks=range(c.size))
    if args.background:
        Xb, _ = load_hdf5(args.background, X=args.X, y=None, comm=c)
        mean = global_mean(Xb, c)
    else:
        mean = global_mean(X, c)
    coef, intercept = raw_linear(est)
    stored, offset, base = linear_shap_sparse(coef, intercept, X, mean)
    what = "exact linear SHAP of the margins (sparse: shap + shap_offset)"
    if args.out:
        c.print0(f"writing {args.out}")
        write_csr(args.out, stored, None, comm=c, name="shap", inputs=(args.model, args.data),
                  attrs={"model": os.path.abspath(args.model), "method": what},
                  extra={"base_value": np.asarray(base), "shap_offset": offset})
    d = X.shape[1]
    absum = sparse_abs_sum(stored, offset, X.shape[0]).reshape(-1, d).sum(axis=0)
    return _report_shap(args, c, est, what, absum, X.shape[0], d, base, t0)


def cmd_ctl(args):
    from .runctl import CommandError, send_command

    if not args.command:
        raise UsageError("mpiml ctl: give a command: status | set K=V ... | pause | resume | "
                         "checkpoint | stop")
    try:
        resp = send_command(args.run_dir, args.command, timeout=args.timeout)
    except CommandError as exc:
        write_stderr(f"mpiml ctl: rejected: {exc}\n")
        return EXIT_ERROR
    except (FileNotFoundError, TimeoutError) as exc:
        write_stderr(f"mpiml ctl: {exc}\n")
        return EXIT_ERROR
    if args.command[0] == "status":
        for key in ("state", "epoch", "step", "loss", "lr", "samples_per_s", "ranks"):
            if key in resp:
                v = resp[key]
                print(f"{key:<14}{v:.6g}" if isinstance(v, float) else f"{key:<14}{v}")
        return 0
    where = f" at step {resp['step']}" if resp.get("step") is not None else ""
    print(f"{resp['status']}{where}: {resp['message']}")
    return 0 if resp["status"] == "applied" else EXIT_ERROR


def cmd_plot(args):
    from .plot import plot_run
    try:
        plot_run(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as exc:
        write_stderr(f"mpiml plot: {exc}\n")
        return EXIT_ERROR
    print(f"wrote {args.out}")
    return 0


# ---------------------------------------------------------------------- options
def add_parsers(sub):
    """The parsers of score, predict, convert, export, explain, ctl and plot."""
    p = sub.add_parser("score", help="evaluate a model on an HDF5 dataset")
    p.add_argument("--model", required=True, help="model file written by `mpiml train`")
    data_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model-parallel", type=positive_int, default=1, metavar="K",
                   help="hold the weights split over K consecutive ranks (any model file)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("predict", help="write predictions in input row order")
    p.add_argument("--model", required=True)
    data_args(p, y=False)
    p.add_argument("--out", required=True, help="output HDF5 file (dataset 'pred')")
    p.add_argument("--proba", action="store_true", help="also write class probabilities ('proba')")
    p.add_argument("--model-parallel", type=positive_int, default=1, metavar="K",
                   help="hold the weights split over K consecutive ranks (any model file)")
    p.add_argument("--block-rows", type=positive_int, default=65536, metavar="N",
                   help="rows read and predicted at a time: bounds the memory (default 65536)")
    progress_args(p)
    p.set_defaults(func=cmd_predict)
    _convert_and_export(sub)
    _explain(sub)

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


def _convert_and_export(sub):
    p = sub.add_parser("convert", help="CSV / .npy / libsvm / .npz into HDF5 (X, y), in parallel; "
                       "libsvm and .npz become a sparse (CSR) X")
    p.add_argument("src", help="input file")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--format", choices=["csv", "npy", "libsvm", "npz"], default=None,
                   help="default: from the file name (.csv .txt .npy .svm .libsvm .svmlight .npz)")
    p.add_argument("--label-column", default=None,
                   help="CSV/npy: the label column, by header name or index (negative: from "
                        "the end)")
    hdr = p.add_mutually_exclusive_group()
    hdr.add_argument("--header", dest="header", action="store_const", const=True,
                     default="auto", help="the first CSV line names the columns")
    hdr.add_argument("--no-header", dest="header", action="store_const", const=False)
    p.add_argument("--delimiter", default=",")
    p.add_argument("--n-features", type=positive_int, default=None,
                   help="libsvm: the feature count (default: the largest index)")
    p.add_argument("--dense", action="store_true",
                   help="libsvm: write a dense X (small feature counts only) instead of CSR")
    p.add_argument("--hash-bits", type=positive_int, default=None, metavar="B",
                   help="libsvm: hash the feature ids (any text) into 2**B columns, B in 1..31 "
                        "(MurmurHash3, docs/sparse.md)")
    p.add_argument("--labels", default=None, metavar="FILE.npy",
                   help=".npz: the labels, a 1-D .npy array with one per row")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--compression", choices=["gzip"], default=None)
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="keep NaN / infinite values (refused by default)")
    progress_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="write a model as ONNX")
    p.add_argument("model", help="model file written by `mpiml train`")
    p.add_argument("--onnx", required=True, help="output .onnx file")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the graph's input and weight type (default float32)")
    p.set_defaults(func=cmd_export)


def _explain(sub):
    p = sub.add_parser("explain", help="SHAP values or permutation importance, in parallel")
    p.add_argument("--model", required=True)
    data_args(p)
    p.add_argument("--method", choices=["shap", "permutation"], default="shap")
    p.add_argument("--out", default=None,
                   help="shap: HDF5 file of SHAP values in input row order (+ base_value); "
                        "permutation: JSON file of the importances")
    p.add_argument("--plot", default=None, help="bar chart of the global importances (PNG)")
    p.add_argument("--background", default=None,
                   help="HDF5 file of background rows (default: the explained data)")
    p.add_argument("--background-rows", type=positive_int, default=100,
                   help="Kernel SHAP (MLPs): background rows rank 0 takes and broadcasts")
    p.add_argument("--nsamples", type=positive_int, default=None,
                   help="Kernel SHAP coalitions per row (default 2*features + 2048)")
    p.add_argument("--repeats", type=positive_int, default=5, help="permutation repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=positive_int, default=10, help="features in the summary")
    progress_args(p)
    p.set_defaults(func=cmd_explain)
