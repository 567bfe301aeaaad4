"""``mpiml train``: its options, the estimator they make, the grid layout
(``--dry-run``), and a call of :func:`mpiml.pipeline.train_from_file`."""
import json

from .cli_common import MODELS, batch_size, data_args, positive_int, progress_args


def _hidden(text):
    """Layer sizes from ``"256,256"`` (or ``"256x256"``, the form a ``tune --grid`` value
    takes, where commas separate the values; a grid value of one layer is an int)."""
    from .errors import ConfigError
    try:
        sizes = tuple(int(h) for h in str(text).replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--hidden must be comma-separated positive integers, not {text!r}")
    return sizes


def estimator_from_args(args, c):
    """The estimator the train options describe (``mpiml tune`` starts from it too)."""
    from . import models
    from .errors import ConfigError

    cls_name, kwargs = MODELS[args.model]
    cls = getattr(models, cls_name)
    scale = getattr(args, "scale", "none")
    if getattr(args, "standardize", False):
        if scale not in ("none", "standard"):
            raise ConfigError(f"--standardize and --scale {scale} disagree: give one",
                              ranks=range(c.size))
        scale = "standard"
    kwargs = dict(kwargs, alpha=args.alpha, batch_size=args.batch_size, max_iter=args.epochs,
                  tol=args.tol, n_iter_no_change=args.n_iter_no_change, random_state=args.seed,
                  verbose=0 if args.quiet else 1,
                  dtype=None if args.dtype == "auto" else args.dtype,
                  checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                  checkpoint_seconds=args.checkpoint_seconds,
                  keep_checkpoints=args.keep_checkpoints,
                  comm_timeout=args.comm_timeout or None, model_parallel=args.model_parallel,
                  sync=args.sync, sync_warmup=args.sync_warmup, max_staleness=args.max_staleness,
                  overlap=args.overlap, compress=args.compress, stats=args.stats,
                  run_dir=args.run_dir, scaler=None if scale == "none" else scale, comm=c)
    if args.class_weight is not None:
        if cls_name != "SGDClassifier":
            raise ConfigError("--class-weight is for the linear classifiers", ranks=range(c.size))
        cw = args.class_weight
        if cw != "balanced":
            try:
                cw = {float(k): float(v) for k, v in json.loads(cw).items()}
            except (ValueError, AttributeError):
                raise ConfigError(f"--class-weight must be 'balanced' or a JSON map like "
                                  f"'{{\"0\": 1, \"1\": 20}}', not {cw!r}",
                                  ranks=range(c.size)) from None
        kwargs["class_weight"] = cw
    solver = _solver_of(args, cls_name, c)
    if cls_name.startswith("MLP"):
        kwargs.update(hidden_layer_sizes=_hidden(args.hidden), activation=args.activation,
                      solver=solver,
                      learning_rate_init=0.001 if args.lr is None else args.lr,
                      momentum=0.9 if args.momentum is None else args.momentum)
        return cls(**kwargs)
    kwargs.update(penalty=None if args.penalty == "none" else args.penalty,
                  l1_ratio=args.l1_ratio, learning_rate=args.lr_schedule,
                  eta0=0.1 if args.lr is None else args.lr, power_t=args.power_t,
                  momentum=0.0 if args.momentum is None else args.momentum,
                  shard=_split_of(args))
    if cls_name == "SGDRegressor":
        kwargs["epsilon"] = args.epsilon
    if solver != "sgd":
        kwargs.update(solver=solver, max_iter=args.max_iter or EXACT_MAX_ITER)
    return cls(**kwargs)


# the linear models' --solver values, the MLPs' (the first is the default), and the
# iterations an exact solver makes without --max-iter
LINEAR_SOLVERS = ("sgd", "lbfgs", "owlqn", "newton-cg", "hybrid")
MLP_SOLVERS = ("adam", "sgd")
EXACT_MAX_ITER = 100


def _solver_of(args, cls_name, c):
    """``--solver`` checked against the model (shared, as in scikit-learn: the linear
    models take SGD or an exact solver, the MLPs adam or sgd); ``--max-iter`` is the
    exact solvers' iteration cap."""
    from .errors import ConfigError
    mlp = cls_name.startswith("MLP")
    choices = MLP_SOLVERS if mlp else LINEAR_SOLVERS
    solver = args.solver or choices[0]
    if solver not in choices:
        raise ConfigError(f"--solver {solver} is not a solver of --model {args.model}: choose "
                          f"{'|'.join(choices)}", ranks=range(c.size))
    if args.max_iter is not None and solver in ("sgd", "adam"):
        raise ConfigError(f"--max-iter counts the iterations of an exact solver (--solver "
                          f"{'|'.join(LINEAR_SOLVERS[1:])}); --solver {solver} runs --epochs",
                          ranks=range(c.size))
    return solver


def _split_of(args):
    """The CLI decides the split before reading the data (the ranks of a feature split
    read only their columns): softmax by classes, every other model by features."""
    if args.model.startswith("mlp"):
        return "layers"
    if args.shard != "auto":
        return args.shard
    return "classes" if args.model == "softmax" else "features"


def _dry_run(args, c, grid):
    """What ``train --dry-run`` prints: the grid and every rank's rows and shard."""
    from .comm import chunk
    from .io import dataset_info

    info = c.run(dataset_info, args.data, X=args.X, y=args.y)
    n, d = info["shape"]
    c.print0(grid.describe())
    split = _split_of(args) if grid.K > 1 else None
    n_classes = None
    if split == "classes":
        def count():
            import h5py
            import numpy as np
            if c.rank == 0:
                with h5py.File(args.data, "r", locking=False) as f:
                    return int(np.unique(f[args.y][()]).size)
        n_classes = c.bcast(c.run(count))
    lines = []
    for r in range(c.size):
        g, m = r // grid.K, r % grid.K
        lo, hi = chunk(n, grid.D, g)
        text = f"  rank {r}: rows {lo}:{hi}"
        if split == "features":
            f0, f1 = chunk(d, grid.K, m)
            text += f", features {f0}:{f1} of {d} (W[:, {f0}:{f1}], reads only these columns)"
        elif split == "layers":
            parts = [f"{a}:{b} of {h}" for h in _hidden(args.hidden)
                     for a, b in [chunk(h, grid.K, m)]]
            text += f", hidden units {', '.join(parts)} (column/row-parallel layer pairs)"
        elif split == "classes":
            k0, k1 = chunk(n_classes, grid.K, m)
            text += f", classes {k0}:{k1} of {n_classes} (W[{k0}:{k1}, :], all {d} features)"
        lines.append(text)
    c.print0(f"data: {n} x {d} from {args.data}; model {args.model}"
             + (f", split by {split}" if split else ", replicated (data parallel)"))
    c.print0("\n".join(lines))


def cmd_train(args):
    from .comm import get_comm
    from .pipeline import train_from_file

    c = get_comm()
    est = estimator_from_args(args, c)
    c.run(est._validate_params)
    if args.dry_run:
        _dry_run(args, c, c.grid(args.model_parallel))
        return 0
    grid = c.grid(args.model_parallel)
    est, info = train_from_file(
        est, args.data, args.out, X=args.X, y=args.y, val=args.val,
        val_fraction=args.val_fraction, seed=args.seed, resample=args.resample,
        sample_weight=args.sample_weight, early_stopping=args.early_stopping,
        resume=args.resume, overwrite=args.overwrite, allow_external=args.allow_external_links,
        split_features=grid.K > 1 and _split_of(args) == "features",
        describe=args.model, log=c.print0)
    if est.scaler is not None:
        from .models.scaling import describe
        c.print0(describe(est))
    if getattr(est, "solver", "sgd") not in ("sgd", "adam"):
        run = len(est.epoch_times_)
        c.print0(f"solved by {est._exact_solver()} in {est.n_iter_} iteration(s) ({run} in this "
                 f"run; {est.n_evals_} objective evaluations) in {info['fit_seconds']:.2f} s: "
                 f"{est.solver_status_}, objective {est.objective_:.10g}; saved {args.out}")
        return 0
    run = len(est.epoch_times_)          # epochs run by this call (not before a resume)
    if est.stopped_by_ and est.stopped_by_.startswith("early stopping"):
        c.print0(f"stopped after epoch {est.n_iter_}: {est.stopped_by_}")
    c.print0(f"trained {est.n_iter_} epoch(s) ({run} in this run) in {info['fit_seconds']:.2f} s "
             f"({info['rows'] * run / max(sum(est.epoch_times_), 1e-9) / 1e6:.3g} M samples/s "
             f"in the epochs), final loss {est.loss_curve_[-1]:.6g}; saved {args.out}")


# ---------------------------------------------------------------------- options
def add_parser(sub):
    """``mpiml train``'s parser."""
    p = sub.add_parser("train", help="fit a model on an HDF5 dataset")
    add_train_options(p)
    p.set_defaults(func=cmd_train)
    return p


def add_train_options(p, resume=True):
    """Every ``train`` option, on ``p`` (``mpiml tune`` takes them too, with its own
    ``--resume``: ``resume=False``)."""
    data_args(p)
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    _optimisation(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["auto", "float32", "float64"], default="auto")
    p.add_argument("--out", required=True, help="output model file (HDF5)")
    p.add_argument("--quiet", action="store_true",
                   help="no per-epoch lines (--progress none: no progress either)")
    p.add_argument("--allow-external-links", action="store_true",
                   help="follow HDF5 external links to --X / --y (refused by default: mpiml "
                        "reads only the file it is given)")
    _scaling_and_validation(p)
    _imbalance_and_mlp(p)
    _parallel(p)
    _steering_and_safety(p, resume)
    progress_args(p)


def _optimisation(p):
    p.add_argument("--epochs", type=positive_int, default=5, help="(maximum) number of epochs")
    p.add_argument("--batch-size", type=batch_size, default=256,
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
                   help="SGD: stop when the epoch loss improves by less than this (default: run all "
                        "epochs); exact solvers: stop at max |gradient| <= this (default 1e-4)")
    p.add_argument("--n-iter-no-change", type=positive_int, default=5)


def _scaling_and_validation(p):
    g = p.add_argument_group("feature scaling and validation")
    g.add_argument("--scale", choices=["none", "standard", "minmax", "maxabs"], default="none",
                   help="scale the features with global statistics of the training rows "
                        "(one Allreduce); stored in the model and applied by predict, score, "
                        "explain and the ONNX export; maxabs (x / max|x|) keeps CSR rows sparse")
    g.add_argument("--standardize", action="store_true", help="the same as --scale standard")
    g.add_argument("--val-fraction", type=float, default=None, metavar="F",
                   help="hold out this fraction of the rows, chosen by global row index and "
                        "--seed (the same rows at any rank count): metrics after every epoch")
    g.add_argument("--early-stopping", action="store_true",
                   help="with --val or --val-fraction: stop when the validation loss has not "
                        "improved by --tol (default 0) for --n-iter-no-change epochs (--tol "
                        "then no longer applies to the training loss)")


def _imbalance_and_mlp(p):
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
    g = p.add_argument_group("solvers")
    g.add_argument("--solver", default=None, metavar="NAME",
                   choices=sorted(set(LINEAR_SOLVERS) | set(MLP_SOLVERS)),
                   help="linear models: sgd (default: minibatch SGD, --epochs) | lbfgs | owlqn "
                        "(L1 / elastic net) | newton-cg | hybrid (one SGD epoch, then L-BFGS): "
                        "exact solvers that reach the optimum of the same objective "
                        "(docs/exact-solvers.md); MLPs: adam (default) | sgd")
    g.add_argument("--max-iter", type=positive_int, default=None, metavar="N",
                   help=f"exact solvers: at most N iterations (default {EXACT_MAX_ITER}); "
                        "they stop earlier when max |gradient| <= --tol (default 1e-4) or the "
                        "objective stops changing")


def _parallel(p):
    g = p.add_argument_group("model parallelism (2-D grid: ranks = data-parallel x model-parallel)")
    g.add_argument("--model-parallel", type=positive_int, default=1, metavar="K",
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


def _steering_and_safety(p, resume=True):
    g = p.add_argument_group("watch and steer (mpiml ctl / mpiml plot)")
    g.add_argument("--run-dir", default=None, metavar="DIR",
                   help="control commands, status.json, metrics.jsonl and checkpoints live here")
    g.add_argument("--val", default=None, metavar="FILE",
                   help="validation data (HDF5, same datasets): metrics after every epoch")
    g = p.add_argument_group("never hang, never lose work")
    g.add_argument("--checkpoint-dir", default=None,
                   help="write checkpoints here (at the end, on SIGTERM/SIGUSR1, and as below)")
    g.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="STEPS",
                   help="checkpoint every this many updates (iterations of an exact solver)")
    g.add_argument("--checkpoint-seconds", type=float, default=None, metavar="SECONDS",
                   help="checkpoint when this much time has passed since the last one")
    g.add_argument("--keep-checkpoints", type=positive_int, default=3, metavar="K")
    if resume:
        g.add_argument("--resume", default=None, metavar="DIR",
                       help="continue from the newest checkpoint in DIR (any number of ranks)")
    g.add_argument("--overwrite", action="store_true",
                   help="a fresh run into a checkpoint directory holding another run's "
                        "checkpoints deletes them (without it, the run is refused)")
    g.add_argument("--comm-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="end the job with a report if a collective takes longer (0: off; "
                        "default 600)")

