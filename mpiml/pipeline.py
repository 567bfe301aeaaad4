"""Training from an HDF5 file, the way ``mpiml train`` does it, as a library function.

:func:`train_from_file` reads each rank's rows, holds out validation rows (by global
row index, the same at any rank count), loads per-row weights, resamples classes,
resumes a checkpoint with the run's own settings, fits in place (the rows read are the
fit's own) and saves the model. ``mpiml train`` is a thin shell over it: it turns the
options into an estimator and prints what this function reports.

Example (under ``mpiexec -n 2``)::

    from mpiml import SGDClassifier
    from mpiml.pipeline import train_from_file
    est, info = train_from_file(SGDClassifier(max_iter=5), "train.h5", out="model.h5",
                                val_fraction=0.1, early_stopping=True)
"""
import os
import time

from mpi4py import MPI

from . import hooks
from .comm import chunk, get_comm
from .errors import ConfigError
from .io import (check_output_dir, check_output_path, dataset_info, load_hdf5, load_rows,
                 load_vector)
from .model_selection import split_rows, validation_mask
from .models.training import rows_scanned

__all__ = ["train_from_file"]


def _with(est, **changes):
    """A copy of ``est`` with some parameters changed (the caller's stays as given)."""
    return type(est)(**{**est.get_params(), **changes}) if changes else est


def held_out_rows(grid, n_local, fraction, seed):
    """This rank's rows in a ``fraction`` validation part (a boolean mask): chosen over
    global row indices, so the same rows at any rank count and grid (a resumed run holds
    out the same rows again). Collective over the grid."""
    c = grid.world
    # the ranks of a model-parallel group hold the same rows: count them once
    offset = grid.data.exscan(n_local)
    n_global = grid.data.allreduce(n_local)
    try:
        mask = validation_mask(n_global, offset, n_local, fraction, seed=seed)
    except ConfigError as exc:
        raise ConfigError(f"--val-fraction: {exc}", ranks=range(c.size)) from None
    n_val = int(round(float(fraction) * n_global))
    if not 0 < n_val < n_global:
        raise ConfigError(f"--val-fraction {fraction} of {n_global} rows holds out "
                          f"{n_val}: it must leave at least one row on each side",
                          ranks=range(c.size))
    return mask


def _check_options(est, c, val, val_fraction, resample, sample_weight, early_stopping):
    if val and val_fraction is not None:
        raise ConfigError("give --val FILE or --val-fraction F, not both", ranks=range(c.size))
    if early_stopping and not (val or val_fraction):
        raise ConfigError("--early-stopping watches the validation loss: give --val FILE "
                          "or --val-fraction F", ranks=range(c.size))
    if resample and sample_weight:
        raise ConfigError("--resample and --sample-weight do not combine", ranks=range(c.size))
    if resample:
        kind, _, ratio = resample.partition(":")
        try:
            return kind, float(ratio) if ratio else 1.0
        except ValueError:
            raise ConfigError(f"--resample must be over|under[:RATIO], not {resample!r}",
                              ranks=range(c.size)) from None
    return None


def _check_outputs(est, c, out, inputs):
    """Every path the run will write, checked before a row is read: writable, and never
    one of the inputs."""
    if out is not None:
        check_output_path(out, comm=c, inputs=inputs)
    if est.stats is not None:
        check_output_path(est.stats, comm=c, inputs=inputs + (out,))
    for directory in (est.run_dir, est.checkpoint_dir):
        if directory is not None:
            check_output_dir(directory, comm=c, inputs=inputs + (out,))


def _read(est, c, grid, data, X, y, split_features, allow_external, in_step_order=False):
    """This rank's rows, their columns (a feature split), the load's seconds, and the
    step order they were read in (``in_step_order``: when the fit would copy them into
    it; :func:`_step_order`) or None."""
    t0 = time.perf_counter()

    def step_order(n):
        from .models.session import resolve_batch, visit_in_place
        try:
            batch = resolve_batch(est.batch_size, n)
            if not 1 <= batch or visit_in_place(batch, est.max_iter):
                return None  # a short fit visits the rows where they are: file order
        except (TypeError, ValueError):
            return None      # settings the fit refuses, with its own message
        return batch
    Xl, yl, order = load_rows(data, X=X, y=y, comm=c, dtype=est.dtype, require_y=True,
                              model_parallel=grid.K, split_features=split_features,
                              sync=est.sync, allow_external=allow_external,
                              step_order=step_order if in_step_order else None)
    columns = None
    if split_features:
        d = c.run(dataset_info, data, X=X, y=y)["shape"][1]
        columns = (*chunk(d, grid.K, grid.model_rank), d)
    return Xl, yl, columns, time.perf_counter() - t0, order


def _step_order(est, grid, val_fraction, resample, sample_weight, split_features, resume):
    """Whether ``mpiml train`` reads the rows straight into the fit's step order: for the
    linear SGD models in the plain allreduce mode, when nothing reorders, splits or
    scales the rows after the load (scaler statistics are sums: their last bits would
    follow the order; a resume may bring a scaler from its checkpoint). The fit then
    starts from that order and copies nothing."""
    from .parallel.synchronizers import mode_of
    try:
        plain = mode_of(est.sync, est.compress, est.overlap, False)[0] == "allreduce"
    except ConfigError:      # settings the fit refuses, with its own message
        return False
    return (plain and grid.K == 1 and not split_features and val_fraction is None
            and not resample and not sample_weight and resume is None
            and getattr(est, "_engine_ranges", False) and getattr(est, "solver", "sgd") == "sgd"
            and getattr(est, "scaler", None) is None)


def _check_sparse(est, c, Xl, data, X, describe):
    """CSR rows for a model that cannot take them: one error (every rank read the same
    kind of group)."""
    if getattr(Xl, "format", None) == "csr" and not getattr(est, "_sparse_input", False):
        raise ConfigError(f"{data}: '{X}' holds CSR rows; {describe or type(est).__name__} "
                          "trains on dense rows only (CSR rows train the linear models with "
                          "the SGD solver and without --scale/--standardize; see docs/sparse.md)",
                          ranks=range(c.size))


def _early_stopping(est):
    """As scikit-learn's early_stopping: tol then applies to the validation loss."""
    from .models.steering import EarlyStopping
    return _with(est, tol=None), [EarlyStopping("val_loss", patience=est.n_iter_no_change,
                                                min_delta=est.tol or 0.0)]


def train_from_file(est, data, out=None, *, X="X", y="y", val=None, val_fraction=None, seed=0,
                    resample=None, sample_weight=None, early_stopping=False, resume=None,
                    overwrite=False, split_features=False, allow_external=False, describe=None,
                    log=None):
    """Fit ``est`` on the HDF5 file ``data`` (collective; see the module doc).

    Parameters
    ----------
    est : an mpiml estimator (not fitted; its ``comm`` is used)
    data, X, y : the file and its datasets of features and targets
    out : str, optional -- the model file to write (checked before anything is read)
    val : str, optional -- an HDF5 file of validation rows (same datasets)
    val_fraction : float, optional -- or hold out this fraction of the rows, by global
        row index and ``seed``
    resample : ``"over"|"under"[:RATIO]``, optional -- random over-/under-sampling of
        the classes (after the validation split: no copy of a validation row is trained on)
    sample_weight : str, optional -- a 1-D dataset of per-row weights in ``data``
    early_stopping : bool -- stop when the validation loss has not improved by
        ``est.tol`` (0 if None) for ``est.n_iter_no_change`` epochs (the training-loss
        ``tol`` rule is then off)
    resume : str, optional -- a checkpoint directory: continue that run with its settings
    overwrite : bool -- a fresh run may delete another run's checkpoints in its directory
    split_features : bool -- with ``model_parallel > 1``, each rank reads only its columns
    allow_external : bool -- follow HDF5 external links in ``data`` (refused by default)
    describe : str, optional -- how to name the model in the first report line
    log : callable, optional -- receives the progress lines (rank 0 prints them in the CLI)

    Returns ``(estimator, info)``: the fitted estimator (a copy of ``est`` where options
    changed its parameters) and ``rows``, ``width``, ``load_seconds``, ``fit_seconds``.
    """
    c = get_comm(est.comm)
    log = log or (lambda text: None)
    kind_ratio = _check_options(est, c, val, val_fraction, resample, sample_weight,
                                early_stopping)
    est, callbacks = _early_stopping(est) if early_stopping else (est, None)
    grid = c.grid(est.model_parallel)
    _check_outputs(est, c, out, (data, val))
    Xl, yl, columns, t_load, order = _read(
        est, c, grid, data, X, y, split_features, allow_external,
        _step_order(est, grid, val_fraction, resample, sample_weight, split_features, resume))
    _check_sparse(est, c, Xl, data, X, describe)
    held_out = held_out_rows(grid, Xl.shape[0], val_fraction, seed) \
        if val_fraction is not None else None
    if hooks.current().raise_on_rank == c.rank:     # failure injection for the tests
        raise RuntimeError(f"injected failure on rank {c.rank}")
    width = columns[2] if columns else c.allreduce(Xl.shape[1], op=MPI.MAX)
    log(f"mpiml train: {describe or type(est).__name__} on {grid.data.allreduce(Xl.shape[0])} x "
        f"{width} ({Xl.dtype}) from {data}, {_layout(est, c, grid, split_features)}, global "
        f"batch {est.batch_size}; loaded in {t_load:.2f} s")
    weights = None
    if sample_weight:
        weights = load_vector(data, sample_weight, comm=c, sync=est.sync,
                              model_parallel=grid.K)
        if held_out is not None:
            weights = weights[~held_out]
    Xl, yl, validation = _split_and_resample(c, grid, Xl, yl, held_out, val_fraction,
                                             kind_ratio, resample, seed, log)
    if val:
        validation = load_hdf5(val, X=X, y=y, comm=c, require_y=True, dtype=Xl.dtype,
                               model_parallel=grid.K, split_features=split_features,
                               sync=est.sync)
    if est.run_dir:
        _log_start(est, c, data, t_load, log)
    if resume:
        log(f"resuming from {resume}")
        est = _resumable(est, c, resume)
    rows = grid.data.allreduce(Xl.shape[0])     # the training rows (after split, resampling)
    t0 = time.perf_counter()
    # the fit reorders the rows read above in place (no second copy), or finds them in
    # its step order already (``order``); they are scanned
    with rows_scanned(Xl, order=order):
        est.fit(Xl, yl, resume=resume, columns=columns, validation=validation,
                sample_weight=weights, callbacks=callbacks, copy_X=False, overwrite=overwrite,
                signal_checkpoint_dir=_signal_dir(est, out))
    t_fit = time.perf_counter() - t0
    if out is not None:
        est.save(out)
    return est, {"rows": rows, "width": width, "load_seconds": t_load, "fit_seconds": t_fit}


def _split_and_resample(c, grid, Xl, yl, held_out, val_fraction, kind_ratio, resample, seed,
                        log):
    """The held-out validation rows split off (before any resampling, so no copy of a
    validation row is trained on), then the classes resampled."""
    validation = None
    if held_out is not None:
        # in place: both parts are views of the rows read (no second copy in memory)
        (Xl, yl), validation = split_rows(Xl, yl, held_out)
        log(f"validation: {grid.data.allreduce(len(validation[1]))} rows held out "
            f"(--val-fraction {val_fraction}, seed {seed}); training on "
            f"{grid.data.allreduce(len(yl))}")
    if kind_ratio is not None:
        from .imbalance import resample as resample_rows
        Xl, yl = resample_rows(Xl, yl, kind_ratio[0], kind_ratio[1], seed=seed, comm=c)
        log(f"resampled ({resample}): {c.allreduce(len(yl))} rows")
    return Xl, yl, validation


def _signal_dir(est, out):
    """Without a checkpoint directory, SIGTERM / SIGUSR1 still must not lose the work: the
    checkpoint goes beside the model file (``OUT.checkpoints``), no model is saved, and
    the exit code is 75, so that a requeued job resumes from it."""
    if est.checkpoint_dir is not None or est.run_dir is not None or out is None:
        return None
    return f"{out}.checkpoints"


def _resumable(est, c, resume):
    """A resumed run is the run that was started: its settings come from the checkpoint
    (the live ones -- learning rate, momentum, alpha, batch size -- the fit takes itself)."""
    from .models.checkpointing import checkpoint_settings
    return _with(est, **checkpoint_settings(est, resume, comm=c))


def _layout(est, c, grid, split_features):
    if grid.K == 1:
        text = f"{c.size} rank(s)"
    else:
        split = "features" if split_features else ("layers" if hasattr(est, "hidden_layer_sizes")
                                                   else "classes")
        text = f"{c.size} ranks = {grid.D} data-parallel x {grid.K} model-parallel ({split})"
    if est.sync != "allreduce" or est.overlap or est.compress != "none":
        text += f", sync {est.sync}" + (", overlap" if est.overlap else "") + \
            (f", compress {est.compress}" if est.compress != "none" else "")
    return text


def _log_start(est, c, data, t_load, log):
    from .runctl import RunDir
    loads = c.allgather(t_load)
    RunDir(est.run_dir, c.rank).log({"event": "load", "data": os.path.abspath(data),
                                     "seconds_min": min(loads), "seconds_max": max(loads)})
    log(f"steer with: mpiml ctl {est.run_dir} status | set lr=... | pause | stop")
