"""``mpiml train``: the estimator from the command line, the grid layout (``--dry-run``),
data loading for every split and mode, and the fit."""
import json
import os
import time

from . import hooks
from .cli import MODELS


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


def _estimator(args, c):
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
    if cls_name.startswith("MLP"):
        kwargs.update(hidden_layer_sizes=_hidden(args.hidden), activation=args.activation,
                      solver=args.solver,
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
    return cls(**kwargs)


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


def _held_out(args, c, grid, n_local):
    """This rank's rows in the --val-fraction validation part (None without it): the
    split is over global row indices, so the same rows at any rank count and grid (a
    resumed run holds out the same rows again)."""
    from .errors import ConfigError
    from .model_selection import validation_mask

    if args.val_fraction is None:
        return None
    if args.val:
        raise ConfigError("give --val FILE or --val-fraction F, not both", ranks=range(c.size))
    # the ranks of a model-parallel group hold the same rows: count them once
    offset = grid.data.exscan(n_local)
    n_global = grid.data.allreduce(n_local)
    try:
        mask = validation_mask(n_global, offset, n_local, args.val_fraction, seed=args.seed)
    except ConfigError as exc:
        raise ConfigError(f"--val-fraction: {exc}", ranks=range(c.size)) from None
    n_val = int(round(float(args.val_fraction) * n_global))
    if not 0 < n_val < n_global:
        raise ConfigError(f"--val-fraction {args.val_fraction} of {n_global} rows holds out "
                          f"{n_val}: it must leave at least one row on each side",
                          ranks=range(c.size))
    return mask


def cmd_train(args):
    from mpi4py import MPI

    from .comm import chunk, get_comm, get_grid
    from .io import check_output_path, dataset_info, load_hdf5

    c = get_comm()
    est = _estimator(args, c)
    c.run(est._validate_params)
    callbacks = None
    if args.early_stopping:
        from .errors import ConfigError
        from .models.steering import EarlyStopping
        if not (args.val or args.val_fraction):
            raise ConfigError("--early-stopping watches the validation loss: give --val FILE "
                              "or --val-fraction F", ranks=range(c.size))
        # as scikit-learn's early_stopping: --tol then applies to the validation loss,
        # not to the training loss
        callbacks = [EarlyStopping("val_loss", patience=args.n_iter_no_change,
                                   min_delta=args.tol or 0.0)]
        est.set_params(tol=None)
    grid = get_grid(c, args.model_parallel)
    if args.dry_run:
        _dry_run(args, c, grid)
        return 0
    check_output_path(args.out, comm=c)
    t0 = time.perf_counter()
    split_features = grid.K > 1 and _split_of(args) == "features"
    X, y = load_hdf5(args.data, X=args.X, y=args.y, comm=c,
                     dtype=None if args.dtype == "auto" else args.dtype, require_y=True,
                     model_parallel=grid.K, split_features=split_features, sync=args.sync)
    columns = None
    if split_features:
        d = c.run(dataset_info, args.data, X=args.X, y=args.y)["shape"][1]
        columns = (*chunk(d, grid.K, grid.model_rank), d)
    held_out = _held_out(args, c, grid, X.shape[0])
    t_load = time.perf_counter() - t0
    if hooks.current().raise_on_rank == c.rank:     # failure injection for the tests
        raise RuntimeError(f"injected failure on rank {c.rank}")
    n = grid.data.allreduce(X.shape[0])
    width = columns[2] if columns else c.allreduce(X.shape[1], op=MPI.MAX)
    layout = f"{c.size} rank(s)" if grid.K == 1 else \
        f"{c.size} ranks = {grid.D} data-parallel x {grid.K} model-parallel ({_split_of(args)})"
    if args.sync != "allreduce" or args.overlap or args.compress != "none":
        layout += f", sync {args.sync}" + (", overlap" if args.overlap else "") + \
            (f", compress {args.compress}" if args.compress != "none" else "")
    c.print0(f"mpiml train: {args.model} on {n} x {width} ({X.dtype}) from {args.data}, "
             f"{layout}, global batch {args.batch_size}; loaded in {t_load:.2f} s")
    sample_weight = None
    if args.sample_weight:
        from .io import load_vector
        sample_weight = load_vector(args.data, args.sample_weight, comm=c, sync=args.sync,
                                    model_parallel=grid.K)
        if held_out is not None:
            sample_weight = sample_weight[~held_out]
    validation = None
    if held_out is not None:
        # split before any resampling, so no copy of a validation row is trained on;
        # in place: both parts are views of the rows read (no second copy in memory)
        from .model_selection import split_rows
        (X, y), validation = split_rows(X, y, held_out)
        c.print0(f"validation: {grid.data.allreduce(len(validation[1]))} rows held out "
                 f"(--val-fraction {args.val_fraction}, seed {args.seed}); training on "
                 f"{grid.data.allreduce(len(y))}")
    if args.resample:
        from .errors import ConfigError
        from .imbalance import resample
        kind, _, ratio = args.resample.partition(":")
        try:
            ratio = float(ratio) if ratio else 1.0
        except ValueError:
            raise ConfigError(f"--resample must be over|under[:RATIO], not {args.resample!r}",
                              ranks=range(c.size)) from None
        if sample_weight is not None:
            raise ConfigError("--resample and --sample-weight do not combine", ranks=range(c.size))
        X, y = resample(X, y, kind, ratio, seed=args.seed, comm=c)
        c.print0(f"resampled ({args.resample}): {c.allreduce(len(y))} rows")
    if args.val:
        Xv, yv = load_hdf5(args.val, X=args.X, y=args.y, comm=c, require_y=True,
                           dtype=X.dtype, model_parallel=grid.K,
                           split_features=split_features, sync=args.sync)
        validation = (Xv, yv)
    if args.run_dir:
        from .runctl import RunDir
        loads = c.allgather(t_load)
        RunDir(args.run_dir, c.rank).log({"event": "load", "data": os.path.abspath(args.data),
                                          "seconds_min": min(loads), "seconds_max": max(loads)})
        c.print0(f"steer with: mpiml ctl {args.run_dir} status | set lr=... | pause | stop")
    n = grid.data.allreduce(X.shape[0])     # the training rows (after a split / resampling)
    t0 = time.perf_counter()
    if args.resume:
        c.print0(f"resuming from {args.resume}")
        # a resumed run is the run that was started: its settings come from the checkpoint
        # (the live ones -- learning rate, momentum, alpha, batch size -- the fit takes itself)
        from .models.checkpointing import checkpoint_settings
        est.set_params(**checkpoint_settings(est, args.resume, comm=c))
    # the rows read above are the fit's to reorder in place (no second copy in memory)
    est.fit(X, y, resume=args.resume, columns=columns, validation=validation,
            sample_weight=sample_weight, callbacks=callbacks, copy_X=False)
    t_fit = time.perf_counter() - t0
    est.save(args.out)
    if est.scaler is not None:
        from .models.scaling import describe
        c.print0(describe(est))
    run = len(est.epoch_times_)          # epochs run by this call (not before a resume)
    if est.stopped_by_ and est.stopped_by_.startswith("early stopping"):
        c.print0(f"stopped after epoch {est.n_iter_}: {est.stopped_by_}")
    c.print0(f"trained {est.n_iter_} epoch(s) ({run} in this run) in {t_fit:.2f} s "
             f"({n * run / max(sum(est.epoch_times_), 1e-9) / 1e6:.3g} M samples/s in the "
             f"epochs), final loss {est.loss_curve_[-1]:.6g}; saved {args.out}")
