"""The estimators' common base: parameter checks, agreed input, ``fit`` / ``partial_fit``.

``fit`` reads as: agree on the data (:meth:`Trainer._agree_data`: every rank checks
its rows and all agree on the global shape, classes, dtype and seed, raising the same
error together), build a :class:`~mpiml.models.session.FitSession`, run it, store the
result. Everything that exists only while training runs -- the engine, the row layout,
the synchronizer, the step control, checkpoints, the run directory, the running state
and the live hyper-parameters -- is the session's.

An estimator subclass supplies ``_validate_model_params``, ``_encode(y)`` (outputs,
encoded targets, loss), ``_make_engine(X, y, K, loss, d, grid, columns, seed, live)``
(built with the live hyper-parameter values ``live``), ``_hyper(live)`` (the update's
hyper-parameters, for the parameter server), ``_store(engine, K, d)`` (the fitted model
from an engine) and ``_fitted_state()`` (the optimiser state a ``partial_fit`` continues
from).

The engine protocol (``mpiml._kernels.sgd.Engine`` for the data-parallel linear
models, :class:`mpiml.parallel.engine.StepEngine` subclasses otherwise):

* ``buf_arr`` -- the packed step buffer: ``P`` gradient sums, loss sum, row
  count, then the control words of :mod:`mpiml.parallel.protocol`;
  reduced over the grid's data-parallel communicator, once per step;
* ``set_plan``, ``grad_step(s)``, ``apply()``, ``apply_checked(size)`` (returns the
  protocol's decision bits), ``run_plan(start, stop)``, ``t``, ``seq_mod``,
  ``epoch_loss``, ``epoch_count``, ``params_finite()``, ``sync_arrays()``;
* ``get_state()`` / ``set_state(arrays)`` -- the *logical* (unsharded) optimiser
  state as flat arrays; collective over the model-parallel group for sharded
  engines, so checkpoints and model files never depend on the split.
"""
from collections import namedtuple
from contextlib import contextmanager

import numpy as np
import scipy.sparse as sp
from sklearn.utils.multiclass import check_classification_targets

from .. import hooks
from .._kernels.stats import label_codes, label_counts
from ..comm import check_model_parallel, get_comm, get_grid
from ..errors import ConfigError, DataError, NotFittedError
from ..estimator import param_name
from ..io import first_nonfinite_row
from ..parallel.sync import parse_compress, parse_sync
from ..parallel.synchronizers import servers_of
from .base import BaseEstimator, check_fit_input, is_sparse, label_kind
from .scaling import check_scaler, scaler_arrays
from .session import FitSession

__all__ = ["Trainer", "FitData"]

# the agreed input of a fit: this rank's rows (X in the training dtype, y as float64),
# the replicas' (rows, width, dtype, classes), global rows, this rank's first global row,
# features, classes, whether X may be changed in place, the feature columns held, seed
# ``checked``: the rows were scanned for NaN / infinity here; False: the fit session's
# layout scans them while it copies them into step order (no pass of its own)
# ``order``: the rows (and targets) come in a step order, row ``i`` being the caller's
# local row ``order[i]`` (rows_scanned(X, order=...)), else None
FitData = namedtuple("FitData", "comm grid X y meta n_global offset d classes own columns seed "
                     "checked order", defaults=(True, None))

def _positive_int(v):
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= 1


# a rank's labels that were counted: the labels (bool viewed as uint8), their minimum,
# and the rows holding each value in [lo, lo + len(counts)); the codes of the rows are
# made from it when the classes are agreed (_spread_codes), with no index array per row
Counted = namedtuple("Counted", "y lo counts")


def _counted_labels(y):
    """``(classes, Counted)`` of 1-D integer labels, or of float labels holding integers,
    in a range of fewer than 2^16 values: ``np.unique(y)`` by counting instead of sorting
    (one or two passes over the labels, no array of row indices); None for other labels."""
    if y.ndim != 1 or not y.size:
        return None
    if y.dtype.kind == "b":
        yv = y.view(np.uint8)
    elif y.dtype.kind in "iu" or y.dtype in (np.float32, np.float64):
        yv = np.ascontiguousarray(y)
    else:
        return None
    if yv.dtype.itemsize == 8 and yv.dtype.kind in "iu":
        # the kernel's 64-bit integer types are long long (int64 may be long)
        yv = yv.view(np.longlong if yv.dtype.kind == "i" else np.ulonglong)
    counted = label_counts(yv, 1 << 16)
    if counted is None:
        return None
    lo, counts = counted
    present = counts > 0
    classes = (np.flatnonzero(present).astype(yv.dtype) + np.asarray(lo, dtype=yv.dtype)).astype(y.dtype)
    return classes, Counted(yv, lo, counts)


def _index_sum(codes):
    """The sum over a rank's rows of their label's index among its local classes (the
    label signature a model-parallel group compares), from an inverse or a Counted."""
    if isinstance(codes, Counted):
        counts = codes.counts[codes.counts > 0]
        return float(np.sum(np.arange(counts.shape[0]) * counts))
    return float(codes.sum())


def _spread_codes(codes, table):
    """float64 ``table[index of each row's label among the local classes]``: ``table``
    gives each local class's code (its place among the agreed classes)."""
    if isinstance(codes, Counted):
        by_value = np.zeros(codes.counts.shape[0])
        by_value[codes.counts > 0] = table
        out = np.empty(codes.y.shape[0])
        label_codes(codes.y, codes.lo, by_value, out)
        return out
    return np.asarray(table, dtype=np.float64)[codes]


def _unique_labels(y):
    """``(classes, codes)`` of a classifier's labels, ``classes`` as ``np.unique(y)`` and
    ``codes`` the rows' places among them (numpy's inverse, or a :data:`Counted`; see
    :func:`_spread_codes`), after scikit-learn's target-type check (``Unknown label type:
    continuous``). Labels that can be counted (:func:`_counted_labels`) are integers,
    which that check always accepts: it is skipped."""
    y = np.asarray(y)
    counted = _counted_labels(y)
    if counted is not None:
        return counted
    if y.size:
        check_classification_targets(y)
    return np.unique(y, return_inverse=True)


_scanned_rows = None     # the X that rows_scanned() vouches for, while it runs
_scanned_order = None    # and the step order its rows come in, if any


@contextmanager
def rows_scanned(X, order=None):
    """Within: a fit given exactly the array ``X`` (this object, on this rank) makes no
    NaN / infinity scan of its rows: its caller has scanned them. ``mpiml train`` fits
    the rows ``load_hdf5`` read and scanned (or views and resampled copies of them), so
    they are not scanned a second time. ``order``: ``X`` and the targets hold the local
    rows in this order (``load_hdf5(..., step_order=B)``): the fit's layout starts from
    it (no copy when it is the fit's step order), and the model is the one of the rows
    in their own order."""
    global _scanned_rows, _scanned_order
    _scanned_rows, _scanned_order = X, order
    try:
        yield
    finally:
        _scanned_rows = _scanned_order = None


class Trainer(BaseEstimator):
    """Base class of mpiml's estimators (see the module doc for what subclasses supply:
    ``_validate_model_params``, ``_encode``, ``_make_engine``, ``_store``,
    ``_fitted_state``)."""
    _is_classifier = False
    _supports_ps = False
    _resumed_params = ()        # hyper-parameters a resumed run depends on (checkpointing.py)
    _shap_method = None         # how `mpiml explain` computes SHAP values: "linear" | "kernel"
    _engine_ranges = False      # the data-parallel engine takes several row ranges per step

    # ------------------------------------------------------------ validation
    def _validate_params(self):
        def bad(msg):
            raise ConfigError(f"{type(self).__name__}: {msg}")

        self._validate_model_params(bad)
        check_scaler(self.scaler, bad)
        if self.batch_size not in ("full", "auto") and not _positive_int(self.batch_size):
            bad(f"batch_size must be a positive integer, 'auto' or 'full', not "
                f"{self.batch_size!r}")
        if not _positive_int(self.max_iter):
            bad(f"max_iter must be a positive integer, not {self.max_iter!r}")
        if self.tol is not None and (not isinstance(self.tol, (int, float)) or self.tol != self.tol):
            bad(f"tol must be a number or None, not {self.tol!r}")
        if not _positive_int(self.n_iter_no_change):
            bad(f"n_iter_no_change must be a positive integer, not {self.n_iter_no_change!r}")
        if self.dtype is not None and np.dtype(self.dtype) not in (np.float32, np.float64):
            bad(f"dtype must be None, 'float32' or 'float64', not {self.dtype!r}")
        if self.random_state is not None and (isinstance(self.random_state, bool) or
                                              not isinstance(self.random_state, (int, np.integer))
                                              or self.random_state < 0):
            bad(f"random_state must be None or a non-negative integer, not {self.random_state!r}")
        if self.checkpoint_every is not None and not _positive_int(self.checkpoint_every):
            bad(f"checkpoint_every must be a positive integer, not {self.checkpoint_every!r}")
        for name in ("checkpoint_seconds", "comm_timeout"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or not v > 0):
                bad(f"{name} must be a positive number of seconds or None, not {v!r}")
        if not _positive_int(self.keep_checkpoints):
            bad(f"keep_checkpoints must be a positive integer, not {self.keep_checkpoints!r}")
        if (self.checkpoint_every or self.checkpoint_seconds) and not self.checkpoint_dir:
            bad("checkpoint_every / checkpoint_seconds need checkpoint_dir")
        size = get_comm(self.comm).size
        check_model_parallel(self.model_parallel, size)
        kind, num = parse_sync(self.sync)
        comp, _ = parse_compress(self.compress)
        if not isinstance(self.overlap, (bool, np.bool_)):
            bad(f"overlap must be True or False, not {self.overlap!r}")
        if not isinstance(self.sync_warmup, (int, np.integer)) or self.sync_warmup < 0:
            bad(f"sync_warmup must be a non-negative integer, not {self.sync_warmup!r}")
        if not isinstance(self.max_staleness, (int, np.integer)) or self.max_staleness < 0:
            bad(f"max_staleness must be a non-negative integer, not {self.max_staleness!r}")
        if (comp != "none" or self.overlap) and kind != "allreduce":
            bad(f"compress and overlap apply to sync='allreduce', not {self.sync!r}")
        if comp != "none" and self.overlap:
            bad("choose compress or overlap, not both")
        if kind == "ps":
            if not self._supports_ps:
                bad("sync='ps:S' is implemented for the linear models (SGDClassifier, "
                    "SGDRegressor)")
            if num >= size:
                bad(f"sync={self.sync!r} needs at least one worker: {num} server(s) on {size} "
                    f"rank(s)")
            if self.model_parallel != 1:
                bad("sync='ps:S' is for data-parallel training (model_parallel=1)")

    def _validate_model_params(self, bad):
        pass

    def _prepare_local(self, X, y, reset, check_finite=True):
        """Local checks (run on every rank, agreed by the caller): this rank's ``(X, y,
        local classes, y signature)``; the signature (label kind, a sum over the rows)
        lets a model-parallel group check that its ranks hold the same rows. Dense rows
        are scanned for NaN / infinity unless ``check_finite`` is False (the fit
        session's layout then scans them as it copies them)."""
        self._validate_params()
        X, y = check_fit_input(self, X, y, reset)
        local_classes = codes = None
        if self._is_classifier:
            local_classes, codes = _unique_labels(y)
        row = None
        if is_sparse(X):
            bad = np.flatnonzero(~np.isfinite(X.data[:X.indptr[-1]]))
            row = int(np.searchsorted(X.indptr, bad[0], side="right")) - 1 if bad.size else None
        elif check_finite:
            row = first_nonfinite_row(X) if X.size else None
        if row is not None:
            raise DataError(f"Input X contains NaN or infinity (local row {row})")
        if not self._is_classifier:
            y = np.asarray(y, dtype=np.float64)
            return X, y, None, None, (None, float(np.sum(y)))
        return X, y, local_classes, codes, (label_kind(y) if y.size else None, _index_sum(codes))

    # ------------------------------------------------------------ training
    def fit(self, X, y, resume=None, columns=None, validation=None, callbacks=None,
            sample_weight=None, copy_X=True, overwrite=False, signal_checkpoint_dir=None):
        """Fit on the rows every rank passes (collective).

        Parameters
        ----------
        X : array (n_local, n_features)
            This rank's rows; shards may differ in size and may be empty. With
            ``model_parallel=K``, the ``K`` ranks of a model-parallel group (world
            ranks ``K*g .. K*g+K-1``) pass the same rows.
        y : array (n_local,)
        resume : str, optional
            A checkpoint directory (or file): continue that run, on any number of
            ranks, up to ``max_iter`` epochs in all. The live hyper-parameters (learning
            rate, momentum, alpha, batch size: they may have been changed while the run
            ran) come from the checkpoint; the other settings the run depends on must be
            the checkpoint's, or every rank raises a DataError
            (:func:`mpiml.models.checkpointing.checkpoint_settings` reads them).
        columns : (lo, hi, n_features), optional
            Feature-sharded models only: ``X`` holds only columns ``lo:hi`` of the
            ``n_features`` (this rank's shard, as read by
            ``load_hdf5(..., columns=...)``) instead of all of them.
        validation : (X_val, y_val), optional
            This rank's validation rows: global validation metrics after every epoch
            (in the epoch logs, the verbose lines and the run directory's metrics log).
        callbacks : list, optional
            Objects with ``on_epoch_end(estimator, logs) -> bool`` (True stops the fit),
            e.g. :class:`mpiml.models.steering.EarlyStopping`. They run on every rank
            with the same global logs; a callback may change hyper-parameters with
            ``estimator.set_params(...)`` (learning rate, momentum, alpha from the next
            step, batch_size from the next epoch). Such changes are live changes of the
            fit: while callbacks run the estimator shows the live values; afterwards its
            parameters are as given and ``live_params_`` / ``param_changes_`` record the
            changes.
        sample_weight : array (n_local,), optional
            Per-row weights multiplying each row's loss and gradient (data-parallel
            linear models); combined with ``class_weight``.
        copy_X : bool, default True
            False lets the fit store ``X``'s rows in its step order (and scale them, with
            ``scaler=``) in ``X`` itself instead of in a copy, when ``X`` is a writeable
            C-contiguous array of the training dtype: peak memory is then the data once,
            not twice, and no copy is made. ``X`` is left reordered; ``y`` is not changed.
            ``mpiml train`` fits this way on the rows it read.
        overwrite : bool, default False
            A checkpoint directory (``checkpoint_dir``, or ``run_dir``'s
            ``checkpoints/``) belongs to one run: a fit that does not resume refuses one
            that holds another run's checkpoints, unless ``overwrite=True``, which
            deletes them first.
        signal_checkpoint_dir : str, optional
            Without ``checkpoint_dir`` / ``run_dir``: where a checkpoint goes when
            SIGTERM / SIGUSR1 stops the fit (it then raises ``Interrupted``); nothing is
            written there otherwise. ``mpiml train`` uses ``OUT.checkpoints``.

        Returns
        -------
        self
        """
        return self._fit(X, y, None, reset=True, resume=resume, columns=columns,
                         validation=validation, callbacks=callbacks, sample_weight=sample_weight,
                         copy_X=copy_X, overwrite=overwrite,
                         signal_checkpoint_dir=signal_checkpoint_dir)

    def partial_fit(self, X, y, classes=None):
        """One epoch over the rows every rank passes, continuing from the current state
        (collective)."""
        return self._fit(X, y, 1, reset=not hasattr(self, "n_iter_"), classes=classes)

    def _fit(self, X, y, epochs, reset, classes=None, resume=None, columns=None, validation=None,
             callbacks=None, sample_weight=None, copy_X=True, overwrite=False,
             signal_checkpoint_dir=None):
        """Build a fit session from the agreed data, run it, store the result."""
        # no scaler statistics and no resume fingerprint comparison run on the rows before
        # the layout: the layout's copy can scan them (the same agreed error, before any
        # update), so the fit makes no pass over X of its own for that
        defer = resume is None and getattr(self, "scaler", None) is None
        scanned = _scanned_rows is not None and X is _scanned_rows
        order = _scanned_order if scanned else None
        if order is not None and sample_weight is not None:
            sample_weight = np.asarray(sample_weight)[order]     # in the rows' order
        data = self._agree_data(X, y, reset, classes, columns, copy_X, defer_finite=defer,
                                scanned=scanned)
        if order is not None:
            data = data._replace(order=order)
        session = FitSession(self, data, epochs=epochs, reset=reset, resume=resume,
                             validation=validation, callbacks=callbacks,
                             sample_weight=sample_weight, hooks=hooks.current(),
                             overwrite=overwrite, signal_checkpoint_dir=signal_checkpoint_dir,
                             own_targets=True)
        try:
            session.run()
            session.store()
        finally:
            session.release()
        return self

    def _encode_agreed(self, y, reuse=False):
        """``(outputs, encoded targets, loss)`` of a fit's agreed targets (a classifier's
        are class indices: it overrides this, and with ``reuse`` may encode them in
        place)."""
        return self._encode(y)

    def _live_names(self):
        """The hyper-parameters a running fit may change (``mpiml ctl set``, callbacks)."""
        return (param_name("lr", hasattr(self, "learning_rate_init")), "momentum", "alpha",
                "batch_size")

    def _agree_data(self, X, y, reset, classes, columns, copy_X, defer_finite=False, scanned=False):
        """Collective: check this rank's rows, agree on the global shape, classes, dtype and
        seed; every rank raises the same error on bad data (a :class:`FitData`). A
        classifier's targets become class indices (float64) into the agreed classes."""
        c = get_comm(self.comm)
        Xl, yl, local_classes, codes, ysig = c.run(self._prepare_local, X, y, reset,
                                                     not (defer_finite or scanned))
        grid = get_grid(c, self.model_parallel)
        seed = None
        if c.rank == 0:
            seed = (int(self.random_state) if self.random_state is not None
                    else int(np.random.SeedSequence().entropy % (1 << 31)))
        seed = c.bcast(seed)
        # rows are counted once per replica: over the data-parallel communicator
        meta = grid.data.allgather((Xl.shape[0], Xl.shape[1], Xl.dtype.str,
                                    None if local_classes is None else local_classes.tolist(),
                                    ysig[0], self._feature_names(), is_sparse(Xl), scanned))
        group = grid.model.allgather((Xl.shape[0], ysig[1], Xl.shape[1]))
        d, cls = c.run(self._check_global, c, meta, group, Xl, reset, classes, columns)
        if cls is not None:
            # the local classes' places among the agreed ones, spread to the rows
            yl = _spread_codes(codes, np.searchsorted(cls, local_classes)) if yl.size else np.zeros(0)
        dtypes = {m[2] for m in meta if m[0] > 0}
        if self.dtype is not None:
            dtype = np.dtype(self.dtype)
        else:
            dtype = np.dtype(np.float32) if dtypes == {np.dtype(np.float32).str} else np.dtype(np.float64)
        if any(m[6] for m in meta):
            # CSR rows are visited in place (never reordered): nothing is copied but a
            # change of value type; a maxabs scaler scales the values in place when they
            # are the fit's (a copy made here, or the caller's with copy_X=False)
            Xl = Xl.astype(dtype, copy=False) if Xl.shape[0] else \
                sp.csr_matrix((0, Xl.shape[1] if columns is not None else d), dtype=dtype)
            own = not copy_X or (Xl is not X and not np.may_share_memory(Xl.data, X.data)
                                 if getattr(X, "format", None) == "csr" else True)
        else:
            Xl = np.ascontiguousarray(Xl, dtype=dtype)
            # the rows may be reordered and scaled in place: a copy made here, or the
            # caller's array when copy_X=False
            own = Xl.flags.writeable and (not copy_X or not np.may_share_memory(Xl, X))
            if Xl.shape[0] == 0:
                Xl = np.zeros((0, Xl.shape[1] if columns is not None else d), dtype=dtype)
        n_global = sum(m[0] for m in meta)
        offset = sum(m[0] for m in meta[:grid.data.rank])
        # agreed: whether the fit's first epoch makes one more Allreduce depends on it
        checked = all(m[7] for m in meta) or not defer_finite or any(m[6] for m in meta)
        return FitData(c, grid, Xl, yl, meta, n_global, offset, d, cls, own, columns, seed, checked)

    def _check_sparse_fit(self, columns):
        """Settings that cannot train on CSR rows (the same verdict on every rank)."""
        raise DataError(f"{type(self).__name__} needs dense X; CSR rows train the linear "
                        "models (SGDClassifier, SGDRegressor)")

    def _feature_names(self):
        names = getattr(self, "feature_names_in_", None)
        return None if names is None else tuple(names)

    def _check_global(self, c, meta, group, Xl, reset, classes, columns):
        """The checks of the agreed input (run on every rank with the same gathered
        values): ``(n_features, classes or None)``."""
        servers = servers_of(self.sync, c.size)
        if c.rank in servers and Xl.shape[0] > 0:
            raise DataError(f"with sync={self.sync!r} ranks {servers} are parameter servers "
                            "and hold no rows: load the data with load_hdf5(..., "
                            f"sync={self.sync!r})")
        if len({g[:2] for g in group}) > 1:
            raise DataError("the ranks of a model-parallel group passed different rows "
                            f"(rows, sum of y per rank: {[g[:2] for g in group]}); each "
                            "group of model_parallel consecutive ranks must pass the same rows")
        widths = {m[1] for m in meta if m[0] > 0} or {meta[0][1]}
        if columns is not None:
            d = int(columns[2])
            if Xl.shape[1] != int(columns[1]) - int(columns[0]):
                raise DataError(f"X has {Xl.shape[1]} columns but columns={tuple(columns)}")
        else:
            if len(widths) > 1:
                raise DataError(f"ranks passed different numbers of features: {sorted(widths)}")
            d = widths.pop()
        if len({m[6] for m in meta if m[0] > 0}) > 1:
            raise DataError("some ranks passed sparse (CSR) rows and others dense arrays; "
                            "pass one kind on every rank")
        if any(m[6] for m in meta):
            self._check_sparse_fit(columns)
        if len({m[5] for m in meta}) > 1:
            raise DataError("ranks passed DataFrames with different column names")
        if sum(m[0] for m in meta) == 0:
            raise DataError("Found array with 0 sample(s) on every rank while a minimum of 1 "
                            "is required: no rows to fit on any rank")
        if not reset and d != self.n_features_in_:
            raise DataError(f"X has {d} features, but {type(self).__name__} is expecting "
                            f"{self.n_features_in_} features as input")
        return d, (self._agreed_classes(meta, reset, classes) if self._is_classifier else None)

    def _agreed_classes(self, meta, reset, classes):
        """The sorted union of every rank's labels (checked against ``classes=`` and, for
        a ``partial_fit`` that continues, against the fitted classes)."""
        kinds = {m[4] for m in meta if m[4] is not None}
        if len(kinds) > 1:
            raise DataError("ranks passed class labels of different types (numbers and "
                            "strings); use one type of label")
        cls = np.unique(np.concatenate([np.asarray(m[3]) for m in meta if m[3]] or [[]]))
        if not reset:
            unseen = np.setdiff1d(cls, self.classes_)
            if unseen.size:
                raise DataError(f"labels {unseen.tolist()[:5]} were not seen in the first "
                                f"fit; pass classes= to the first partial_fit")
            return self.classes_
        if classes is not None:
            given = np.unique(np.asarray(classes))
            unseen = np.setdiff1d(cls, given)
            if unseen.size:
                raise DataError(f"labels {unseen.tolist()[:5]} are not in classes=")
            cls = given
        if cls.size < 2:
            raise DataError(f"a classifier needs samples of at least 2 classes in the data; "
                            f"got 1 class ({cls.tolist()})")
        return cls

    # ------------------------------------------------------------ pickling
    def __getstate__(self):
        """The estimator without its communicator: ``comm`` is stored as None (a model
        unpickled in another process binds ``COMM_WORLD``, or set ``comm=`` after
        loading), and objects bound to a communicator are rebuilt on unpickling. A model
        split over ranks (``model_parallel > 1``) holds only its shard: gather it into a
        model file with ``save`` instead."""
        state = dict(self.__dict__, comm=None)
        if "shard_" in state or getattr(state.get("_net"), "model", None) is not None and \
                state["_net"].model.size > 1:
            from ..errors import ConfigError
            raise ConfigError(f"this {type(self).__name__} is split over ranks "
                              "(model_parallel > 1): write it with save() instead of pickling")
        net = state.pop("_net", None)
        if net is not None:
            state["_net_spec"] = (net.sizes, net.activation, net.output, net.dtype.str)
        return state

    def __setstate__(self, state):
        spec = state.pop("_net_spec", None)
        self.__dict__.update(state)
        if spec is not None:
            from mpi4py import MPI

            from ..parallel.network import Network
            sizes, activation, output, dtype = spec
            self._net = Network(sizes, activation, output, get_comm(MPI.COMM_SELF), dtype)
            self._net.bind(self._params, np.zeros_like(self._params))

    # ------------------------------------------------------------ fitted state
    def _write_model(self, path, arrays, params=None, attrs=None):
        """Write the model file (collective; rank 0 writes): the subclass's datasets,
        ``params`` and ``attrs`` added to what every estimator stores (its parameters,
        ``n_features_in``, ``n_iter`` and the scaler)."""
        from ..io import save_model
        more, more_attrs = scaler_arrays(self)
        if hasattr(self, "feature_names_in_"):
            more["feature_names"] = self.feature_names_in_
        params = {**{k: v for k, v in self.get_params().items() if k != "comm"},
                  **(params or {})}
        attrs = {"n_features_in": self.n_features_in_, "n_iter": self.n_iter_,
                 **(attrs or {}), **more_attrs}
        save_model(path, type(self).__name__, params, {**arrays, **more}, comm=self.comm,
                   extra_attrs=attrs)

    def _check_fitted(self):
        if not hasattr(self, "n_features_in_") or not hasattr(self, "n_iter_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")
