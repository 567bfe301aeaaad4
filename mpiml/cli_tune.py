"""``mpiml tune``: cross-validated hyper-parameter search over rank groups
(:mod:`mpiml.tune`); takes every option of ``train`` as the fixed part of the
configuration, and ``--grid name=v1,v2 ...`` for the searched part."""
import csv
import json
import math
import time

from .cli_common import param_name
from .cli_train import EXACT_MAX_ITER, _hidden, add_train_options, estimator_from_args
from .errors import ConfigError


def add_parser(sub):
    p = sub.add_parser(
        "tune",
        help="cross-validated grid / random / halving search over groups of ranks",
        description="Every train option sets the fixed part; --grid the searched part, e.g. "
                    "--grid lr=0.01,0.1 alpha=1e-5,1e-4 batch_size=64,256. The best "
                    "configuration is retrained on all data with all ranks and saved to --out.")
    add_train_options(p, resume=False)
    # --grid given twice adds to the grid (it does not replace the first)
    p.add_argument("--grid", nargs="+", action="extend", required=True, metavar="NAME=V1,V2",
                   help="values to search; NAME is a parameter of the estimator (alpha, "
                        "batch_size, momentum, l1_ratio, penalty, eta0 or learning_rate_init, "
                        "hidden_layer_sizes, ...) or its train option name: lr (the learning "
                        "rate of either family), hidden (64,128x128: one layer of 64 or two of "
                        "128), scale, lr_schedule")
    p.add_argument("--search", default="grid", help="grid (default) or random:N")
    p.add_argument("--halving", action="store_true",
                   help="successive halving: few epochs for all, more for the best third")
    p.add_argument("--eta", type=int, default=3, help="halving factor (default 3)")
    p.add_argument("--cv", type=int, default=5, help="folds (default 5)")
    p.add_argument("--group-size", type=int, default=1,
                   help="ranks per group; each group trains its share of the "
                        "(configuration, fold) pairs (default 1)")
    p.add_argument("--results", default=None, metavar="PREFIX",
                   help="write PREFIX.csv, PREFIX.json and PREFIX.png (default: next to --out)")
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the search journaled in DIR (PREFIX.journal: every finished "
                        "fit is recorded there; SIGTERM/SIGUSR1 stop the search with exit 75)")
    p.set_defaults(func=cmd_tune)


def _grid_value(name, value):
    """A searched value in the form the estimator takes (``hidden=16x16`` -> (16, 16);
    ``penalty=none`` / ``scale=none`` -> None)."""
    if name in ("hidden", "hidden_layer_sizes") and not isinstance(value, tuple):
        return _hidden(value)
    if name in ("penalty", "scale", "scaler") and value == "none":
        return None
    return value


def _factory(args, c, grid):
    """``make(config, comm, epochs)``: the estimator of the train options with a
    configuration's values, by the estimators' own parameter names (or their command-line
    aliases, :data:`mpiml.estimator.ALIASES`: ``lr``, ``epochs``, ``hidden``, ...)."""
    base = estimator_from_args(args, c)
    fixed = dict(base.get_params(), verbose=0, checkpoint_dir=None, run_dir=None, stats=None)
    mlp = hasattr(base, "learning_rate_init")
    for name in grid:
        if name in ("comm", "max_iter", "epochs") or param_name(name, mlp) not in fixed:
            raise ConfigError(f"--grid: {name!r} is not a train option or a parameter of "
                              f"{type(base).__name__}", ranks=range(c.size))

    def make(config, comm, epochs):
        params = dict(fixed, comm=comm, max_iter=epochs)
        params.update({param_name(k, mlp): _grid_value(k, v) for k, v in config.items()})
        if not mlp and params.get("solver", "sgd") != "sgd":
            # an exact solver runs to its optimum: --max-iter iterations, not the epochs
            params["max_iter"] = args.max_iter or EXACT_MAX_ITER
        return type(base)(**params)
    return make


def cmd_tune(args):
    from .comm import get_comm
    from .io import load_hdf5
    from .tune import configurations, parse_grid, refuse_used_journal, search

    c = get_comm()
    try:
        grid = parse_grid(args.grid)
        configs = configurations(grid, args.search, args.seed)
    except ConfigError as exc:
        raise ConfigError(str(exc), ranks=range(c.size)) from None
    make = _factory(args, c, grid)
    from .io import check_output_path
    check_output_path(args.out, comm=c, inputs=(args.data,))
    unused = [opt for opt, v in (("--val", args.val), ("--val-fraction", args.val_fraction),
                                 ("--resample", args.resample),
                                 ("--sample-weight", args.sample_weight),
                                 ("--dry-run", args.dry_run),
                                 ("--early-stopping", args.early_stopping)) if v]
    if unused:
        raise ConfigError(f"mpiml tune does not take {', '.join(unused)} (its folds are the "
                          "validation; train the chosen configuration with mpiml train for "
                          "those)", ranks=range(c.size))
    if args.halving and args.eta < 2:
        raise ConfigError("--eta must be at least 2", ranks=range(c.size))
    dtype = None if args.dtype == "auto" else args.dtype

    def load(comm):
        # the ranks of a model-parallel group read the same rows (all features)
        return load_hdf5(args.data, X=args.X, y=args.y, comm=comm, dtype=dtype, require_y=True,
                         model_parallel=args.model_parallel)

    prefix = args.results or (args.out[:-3] if args.out.endswith(".h5") else args.out) + "-tune"
    journal = args.resume or prefix + ".journal"

    if not args.resume:
        # said before anything starts: a finished (or cut) search is resumed, not redone
        c.run(lambda: refuse_used_journal(journal) if c.rank == 0 else None)
    c.print0(f"mpiml tune: {len(configs)} configuration(s) x {args.cv} folds on {c.size} "
             f"rank(s) in groups of {args.group_size}" + (" with successive halving"
                                                          if args.halving else "")
             + f"; finished fits are journaled in {journal}")
    t0 = time.perf_counter()
    res = search(make, configs, load, cv=args.cv, group_size=args.group_size,
                 seed=args.seed, max_epochs=args.epochs, halving=args.halving, eta=args.eta,
                 journal=journal, resume=bool(args.resume),
                 model_parallel=args.model_parallel, comm=c)
    if res["fits_resumed"]:
        c.print0(f"resumed: {res['fits_resumed']} fit(s) taken from {journal}, "
                 f"{res['fits_run']} run now")
    summary = res["summary"]
    best = next((s for s in summary if s["status"] == "ok"), None)
    _report(c, summary, grid, res)
    if c.rank == 0:
        _write(prefix, summary, grid, res)
    if best is None:
        raise ConfigError("every configuration failed; see the table", ranks=range(c.size))
    # the best configuration on all the data with all ranks
    est = make(best["params"], c, args.epochs)
    X, y = load(c)
    est.fit(X, y, copy_X=False)          # X: read for this fit only
    est.save(args.out)
    n_rows = c.grid(args.model_parallel).data.allreduce(X.shape[0])
    c.print0(f"best {best['params']}: CV score {best['mean_score']:.6g} ± "
             f"{best['std_score']:.2g}; retrained on all {n_rows} rows and "
             f"saved to {args.out} ({time.perf_counter() - t0:.1f} s in all); results in "
             f"{prefix}.csv/.json/.png")
    return 0


def _report(c, summary, grid, res):
    names = list(grid)
    c.print0(f"{'#':>3} " + " ".join(f"{n:>12}" for n in names)
             + f" {'epochs':>6} {'mean':>10} {'std':>9} {'seconds':>8}  status")
    for s in summary:
        c.print0(f"{s['config_index']:>3} " + " ".join(f"{s['params'][n]!s:>12}" for n in names)
                 + f" {s['epochs']:>6} {s['mean_score']:>10.6g} {s['std_score']:>9.3g} "
                   f"{s['seconds']:>8.2f}  {s['status']}"
                 + (f": {s['error'][:60]}" if s["error"] else ""))
    c.print0(f"{len(res['records'])} fits by {res['groups']} group(s) of {res['group_size']} in "
             f"{res['seconds']:.1f} s")


def _finite(o):
    """NaN (a failed configuration's score) as null, so the file is strict JSON."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _write(prefix, summary, grid, res):
    names = list(grid)
    with open(prefix + ".csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["config"] + names + ["epochs", "mean_score", "std_score", "seconds",
                                         "status", "error"])
        for s in summary:
            w.writerow([s["config_index"]] + [s["params"][n] for n in names]
                       + [s["epochs"], s["mean_score"], s["std_score"], s["seconds"],
                          s["status"], s["error"]])
    with open(prefix + ".json", "w") as fh:
        json.dump(_finite(res), fh, indent=1, default=str)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    ok = [s for s in summary if s["status"] == "ok"]
    for ax, n in zip(axes[0], names):
        vals = [s["params"][n] for s in ok]
        numeric = all(isinstance(v, (int, float)) for v in vals)
        xs = vals if numeric else [str(v) for v in vals]
        ax.errorbar(xs, [s["mean_score"] for s in ok], yerr=[s["std_score"] for s in ok],
                    fmt="o", alpha=0.7)
        if numeric and vals and min(vals) > 0 and max(vals) / min(vals) >= 100:
            ax.set_xscale("log")
        ax.set(xlabel=n, ylabel="CV score")
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=100)
    plt.close(fig)
