"""The other data verbs of ``mpiml``: score, predict, convert, export, explain, ctl, plot."""
import json
import os
import time

from .cli import EXIT_ERROR, UsageError
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
    from .io import check_output_path
    from .models import load

    c = get_comm()
    grid = get_grid(c, args.model_parallel)
    est = load(args.model, comm=c, model_parallel=grid.K)
    if args.proba and (not hasattr(est, "predict_proba")
                       or getattr(est, "loss", "log_loss") != "log_loss"):
        from .errors import ConfigError
        raise ConfigError("--proba needs a probabilistic model (logistic, softmax or mlp)",
                          ranks=range(c.size))
    check_output_path(args.out, comm=c)
    from .predict import stream_predict
    t0 = time.perf_counter()
    n = stream_predict(est, args.data, args.out, X=args.X, block_rows=args.block_rows,
                       proba=args.proba, comm=c, model_parallel=grid.K,
                       attrs={"model": os.path.abspath(args.model),
                              "data": os.path.abspath(args.data)})
    secs = time.perf_counter() - t0
    c.print0(f"wrote predictions for {n} rows to {args.out} in {secs:.2f} s "
             f"({n / max(secs, 1e-9):.3g} rows/s, blocks of {args.block_rows} rows)")


def cmd_convert(args):
    from .comm import get_comm
    from .convert import convert
    from .io import check_output_path

    c = get_comm()
    check_output_path(args.out, comm=c)
    t0 = time.perf_counter()
    rows, cols = convert(args.src, args.out, fmt=args.format, label_column=args.label_column,
                         header=args.header, delimiter=args.delimiter,
                         n_features=args.n_features, dtype=args.dtype,
                         compression=args.compression, comm=c)
    secs = time.perf_counter() - t0
    mb = os.path.getsize(args.src) / 1e6
    c.print0(f"wrote {args.out}: {rows} x {cols} from {args.src} in {secs:.2f} s "
             f"({mb / max(secs, 1e-9):.1f} MB/s, {c.size} rank(s))")
    return 0


def cmd_export(args):
    from .comm import get_comm
    from .export import OPSET, export_onnx
    from .io import check_output_path
    from .models import load

    c = get_comm()
    est = load(args.model, comm=c)
    check_output_path(args.onnx, comm=c)
    export_onnx(est, args.onnx, dtype=args.dtype)
    c.print0(f"wrote {args.onnx} (ONNX opset {OPSET}, {args.dtype} input X)")
    return 0


def cmd_explain(args):
    import numpy as np

    from .comm import get_comm
    from .explain import (global_mean, kernel_shap, linear_shap, model_output,
                          permutation_importance, plot_importance, summarise_importance)
    from .io import check_output_path, load_hdf5, write_rows
    from .models import load
    from .models.scaling import raw_linear

    c = get_comm()
    est = load(args.model, comm=c)
    for path in (args.out, args.plot):
        if path:
            check_output_path(path, comm=c)
    need_y = args.method == "permutation"
    X, y = load_hdf5(args.data, X=args.X, y=args.y if need_y else None, comm=c,
                     require_y=need_y)
    d = X.shape[1]
    t0 = time.perf_counter()
    if args.method == "permutation":
        mean, std, base = permutation_importance(est, X, y, repeats=args.repeats,
                                                 seed=args.seed, comm=c)
        c.print0(f"permutation importance ({args.repeats} repeats; baseline score "
                 f"{base:.6g}; mean drop of the score):")
        for line in summarise_importance(mean, top=args.top):
            c.print0(line)
        if args.out and c.rank == 0:
            with open(args.out, "w") as fh:
                json.dump({"baseline_score": base, "mean": mean.tolist(), "std": std.tolist(),
                           "repeats": args.repeats, "seed": args.seed}, fh)
        if args.plot and c.rank == 0:
            plot_importance(mean, args.plot, "mean drop of the score when permuted", std=std)
        c.print0(f"done in {time.perf_counter() - t0:.2f} s on {c.size} rank(s)")
        return 0
    if hasattr(est, "_net"):                               # MLP: Kernel SHAP
        bg = None
        if c.rank == 0:
            import h5py
            with h5py.File(args.background or args.data, "r", locking=False) as f:
                bg = np.asarray(f[args.X][:args.background_rows], dtype=np.float64)
        bg = c.bcast(bg)
        values, base = kernel_shap(model_output(est), X, bg, nsamples=args.nsamples,
                                   seed=args.seed)
        what = "Kernel SHAP of the " + ("predicted probabilities" if hasattr(est, "classes_")
                                        else "predictions")
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
        what = "exact linear SHAP of the margins"
    if args.out:
        write_rows(args.out, {"shap": values}, comm=c,
                   attrs={"model": os.path.abspath(args.model), "method": what},
                   extra={"base_value": np.asarray(base)})
    absum = np.abs(values).reshape(len(X), -1, d).sum(axis=(0, 1)) if len(X) else np.zeros(d)
    tot = c.allreduce(np.concatenate([absum, [float(len(X))]]))
    importance = tot[:-1] / max(tot[-1], 1.0)
    c.print0(f"{what}: {int(tot[-1])} rows, {d} features in {time.perf_counter() - t0:.2f} s on "
             f"{c.size} rank(s); base value {np.round(base, 6).tolist()}")
    c.print0("global importance (mean |SHAP|):")
    for line in summarise_importance(importance, top=args.top):
        c.print0(line)
    if args.plot and c.rank == 0:
        plot_importance(importance, args.plot, "mean |SHAP value|")
    return 0


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
