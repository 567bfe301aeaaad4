"""Hyper-parameter search over groups of ranks, with cross-validation.

The world is split into groups of ``group_size`` consecutive ranks. Every group reads
the whole training set (each of its ranks its own rows) and trains (configuration,
fold) pairs data-parallel inside the group. Pairs are handed out dynamically: a
group's leader takes the next pair number from a counter on world rank 0 (an MPI
one-sided ``Fetch_and_op``), so a group that finishes early takes more. Folds come from
:mod:`mpiml.model_selection` (global row index, rank-count independent), so a pair's
score does not depend on the group size. A pair whose training fails with an mpiml
error (a diverging loss, a bad parameter) is recorded as failed; the search goes on.

Successive halving (``halving=True``): rung 0 trains every configuration for few
epochs, each later rung the best ``1/eta`` of the survivors for ``eta`` times more,
until one rung reaches ``max_epochs``.

With a ``journal`` directory, every finished pair is appended (one JSON line, flushed
and fsynced, by the group leader that ran it) as soon as it ends. SIGTERM / SIGUSR1 (a
Slurm time limit) make every group stop after its current pair; the search raises
:class:`~mpiml.errors.Interrupted` (``mpiml`` exits 75). ``resume=True`` continues a
journal: finished pairs are not run again, and since every pair's score is
deterministic the result equals an uninterrupted search.
"""
import glob
import itertools
import json
import math
import os
import sys
import time

import numpy as np
from mpi4py import MPI

from ._kernels.stats import permute_rows
from .comm import Comm, get_comm, get_grid
from . import hooks
from . import progress as _progress
from .errors import ConfigError, Interrupted, MpimlError
from .model_selection import can_reorder, fold_of, split_order, split_rows


# ---------------------------------------------------------------- configurations
def _value(text):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_grid(items):
    """``["lr=0.01,0.1", "alpha=1e-4"]`` -> ``{"lr": [0.01, 0.1], "alpha": [0.0001]}``."""
    grid = {}
    for item in items:
        name, sep, values = str(item).partition("=")
        if not sep or not name or not values:
            raise ConfigError(f"--grid entries look like name=v1,v2,...; got {item!r}")
        grid[name.strip().replace("-", "_")] = [_value(v.strip()) for v in values.split(",")]
    if not grid:
        raise ConfigError("the grid is empty")
    return grid


def configurations(grid, search="grid", seed=0):
    """The configurations to try: the whole grid, or ``random:N`` distinct draws from it."""
    names = list(grid)
    every = [dict(zip(names, combo)) for combo in itertools.product(*grid.values())]
    if search == "grid":
        return every
    kind, _, num = str(search).partition(":")
    if kind != "random" or not num.isdigit() or int(num) < 1:
        raise ConfigError(f"search must be 'grid' or 'random:N', not {search!r}")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(every))[:int(num)]
    return [every[i] for i in sorted(pick)]


# ---------------------------------------------------------------- rank groups
def split_groups(world, group_size):
    """(group communicator, group index, number of groups)."""
    if int(group_size) < 1 or world.size % int(group_size):
        raise ConfigError(f"--group-size must divide the number of ranks ({world.size}); got "
                          f"{group_size}", ranks=range(world.size))
    g = world.rank // int(group_size)
    group = Comm(world.mpi.Split(g, world.rank), dup=False)
    group.owned = True              # split here: group.free() frees it
    return group, g, world.size // int(group_size)


class _Counter:
    """Shared counters on world rank 0 (passive-target one-sided atomics): the next task
    number (slot 0) and the tasks finished (slot 1, what rank 0's progress shows)."""

    def __init__(self, world):
        self.win = MPI.Win.Allocate(16 if world.rank == 0 else 0, 8, comm=world.mpi)
        self.mem = None
        if world.rank == 0:
            self.mem = np.frombuffer(self.win.tomemory(), dtype=np.int64)
            self.mem[:] = 0
        world.mpi.Barrier()
        self.one = np.ones(1, dtype=np.int64)
        self.out = np.zeros(1, dtype=np.int64)

    def _add(self, slot):
        self.win.Lock(0, MPI.LOCK_SHARED)
        self.win.Fetch_and_op(self.one, self.out, 0, slot, MPI.SUM)
        self.win.Unlock(0)
        return int(self.out[0])

    def next(self):
        return self._add(0)

    def finished(self):
        """A group leader has finished a task (one atomic per fit, no collective)."""
        self._add(1)

    def finished_count(self):
        """World rank 0: tasks finished so far, read from its own memory without an MPI
        call (a progress thread may read it; at worst a little behind)."""
        return int(self.mem[1]) if self.mem is not None else 0

    def free(self):
        self.win.Free()


def refuse_used_journal(path):
    """A fresh search never writes into the journal of an earlier one (it is resumed)."""
    if os.path.isdir(path) and os.listdir(path):
        raise ConfigError(f"{path} holds an earlier search: continue it with --resume "
                          f"{path}, or remove it")


class _Journal:
    """Finished (rung, configuration, fold) records on disk: ``search.json`` (what the
    search is) and ``records-<world rank>.jsonl``, appended by group leaders."""

    def __init__(self, path, world, header, resume):
        header = json.loads(json.dumps(header))         # as it reads back from the file

        def prepare():
            if world.rank != 0:
                return None
            head = os.path.join(path, "search.json")
            if resume:
                if not os.path.isfile(head):
                    raise ConfigError(f"{path} is not the journal of a search (no search.json)")
                with open(head) as fh:
                    old = json.load(fh)
                differ = [k for k in header if old.get(k) != header[k]]
                if differ:
                    raise ConfigError(f"{path} is the journal of a different search "
                                      f"({', '.join(differ)} differ): resume it with the same "
                                      "data, grid, folds, seed and epochs")
                recs = []
                for name in sorted(glob.glob(os.path.join(path, "records-*.jsonl"))):
                    with open(name) as fh:
                        for line in fh:
                            try:
                                recs.append(json.loads(line))
                            except ValueError:
                                pass                    # a line cut short by a kill
                return recs
            refuse_used_journal(path)
            os.makedirs(path, exist_ok=True)
            with open(head + ".tmp", "w") as fh:
                json.dump(header, fh)
            os.replace(head + ".tmp", head)
            return []

        recs = world.bcast(world.run(prepare))
        self.done = {(r["rung"], r["config"], r["fold"]): r for r in recs}
        self.file = os.path.join(path, f"records-{world.rank}.jsonl")
        self.broken = False

    def write(self, rec):
        """Append one record (group leader only). A journal that cannot be written costs
        only the ability to resume: one warning, and the search goes on."""
        if self.broken:
            return
        try:
            with open(self.file, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self.broken = True
            sys.stderr.write(f"mpiml tune: warning: cannot write the journal {self.file} "
                             f"({exc}); the search goes on, but what this group finishes "
                             "cannot be resumed\n")


class _Stop:
    """Set by SIGTERM / SIGUSR1 (see :func:`mpiml.models.checkpointing.signals`)."""
    stop_requested = False


def _test_signal(world, finished):
    """Failure injection for the tests (:mod:`mpiml.hooks`, ``tune_signal``): world rank R
    sends itself a signal once its group has finished that many pairs."""
    hook = hooks.current().tune_signal
    if hook is not None and hook[0] == world.rank and hook[1] == finished:
        os.kill(os.getpid(), hook[2])


class _FoldRows:
    """One fold's training and validation rows as two views of ``X``: ``X`` is reordered
    in place (the fold's training rows first, each part in its original order) and put
    back before another fold is taken and at the end, so a search holds its rows once
    instead of once plus a copy of the current fold. Arrays it may not reorder are copied."""

    def __init__(self, X, y, folds):
        self.X, self.y, self.folds = X, y, folds
        self.k, self.parts, self.undo = None, None, None

    def get(self, k):
        if k != self.k:
            self.restore()
            val = self.folds == k
            (Xt, yt), (Xv, yv) = split_rows(self.X, self.y, val)
            if can_reorder(self.X):
                self.undo = np.argsort(split_order(val)).astype(np.intp)
            self.k, self.parts = k, (Xt, yt, Xv, yv)
        return self.parts

    def restore(self):
        """Put ``X`` back in its original order (local; no communication)."""
        if self.undo is not None:
            permute_rows(self.X.view(np.uint8), self.undo)
        self.k, self.parts, self.undo = None, None, None


def _run_pairs(world, group, counter, base, pairs, data, factory, cv, seed, epochs, rung,
               journal, stop):
    """This group's share of ``pairs`` (taken dynamically); returns its records."""
    X, y, offset, n_global = data
    rows = _FoldRows(X, y, fold_of(n_global, offset, X.shape[0], cv, seed))
    try:
        return _pairs_loop(world, group, counter, base, pairs, rows, factory, epochs, rung,
                           journal, stop)
    finally:
        rows.restore()          # local only: the next rung and the refit see X as loaded


def _pairs_loop(world, group, counter, base, pairs, rows, factory, epochs, rung, journal,
                stop):
    records, finished = [], 0
    # pairs are ordered fold by fold: consecutive pairs mostly share the fold's row order
    while True:
        # a signal on any rank of the group stops the group before its next pair
        if group.allreduce(int(stop.stop_requested), op=MPI.MAX):
            return records
        t = counter.next() - base if group.rank == 0 else None
        t = group.bcast(t)
        if t >= len(pairs):
            return records
        ci, k, config = pairs[t]
        t0 = time.perf_counter()
        Xt, yt, Xv, yv = rows.get(k)
        rec = {"config": ci, "fold": k, "epochs": epochs}
        try:
            est = factory(config, group, epochs)
            est.fit(Xt, yt)
            rec.update(score=float(est.score(Xv, yv)), status="ok")
        except MpimlError as exc:                 # agreed: the whole group is here
            rec.update(score=math.nan, status="failed", error=str(exc).splitlines()[0])
        rec["seconds"] = time.perf_counter() - t0
        rec["rung"] = rung
        if group.rank == 0:
            records.append(rec)
            if journal is not None:
                journal.write(rec)
            counter.finished()
        finished += 1
        _test_signal(world, finished)


def search(factory, configs, load, *, cv=5, group_size=1, seed=0, max_epochs=5,
           halving=False, eta=3, journal=None, resume=False, model_parallel=1, comm=None,
           progress=None):
    """Cross-validated search; collective over ``comm``. Returns the summary rows (the
    same on every rank), best first.

    ``factory(config, comm, epochs)`` builds an unfitted estimator on ``comm``;
    ``load(comm)`` returns that communicator's share ``(X, y)`` of the training data
    (a writeable C-contiguous ``X`` is reordered in place for each fold and put back in
    its original order when the search is done).
    ``journal``: a directory where finished pairs are recorded; ``resume=True``
    continues the search recorded there. ``model_parallel=K``: the estimators split
    their weights over ``K`` ranks of a group (which must be a multiple of ``K``), and
    ``load`` gives the ``K`` ranks of each model-parallel group the same rows
    (``load_hdf5(..., model_parallel=K)``). ``progress``: rank 0 shows the fits done
    of all (:mod:`mpiml.progress`; a mode, None: the settings in force, quiet outside
    the command line); the fits themselves show none."""
    from .models.checkpointing import signals
    world = get_comm(comm)
    if int(cv) < 2:
        raise ConfigError(f"--cv must be at least 2, not {cv}", ranks=range(world.size))
    if int(model_parallel) < 1 or int(group_size) % int(model_parallel):
        raise ConfigError(f"--group-size {group_size} must be a multiple of --model-parallel "
                          f"{model_parallel}: each fit's weights are split inside its group",
                          ranks=range(world.size))
    group, gi, n_groups = split_groups(world, group_size)
    data = _group_rows(world, group, load, cv, model_parallel)
    n_global = data[3]
    rungs = _rungs(len(configs), max_epochs, halving, eta)
    book = None
    if journal is not None:
        book = _Journal(journal, world, {"configs": configs, "cv": int(cv), "seed": int(seed),
                                         "rungs": rungs, "eta": int(eta), "rows": n_global},
                        resume)
    done = book.done if book is not None else {}
    counter = _Counter(world)
    alive = list(range(len(configs)))
    everything, base, ran, interrupted = [], 0, 0, False
    stop = _Stop()
    t0 = time.perf_counter()
    shown, replan = _fits_progress(world, counter, rungs, len(configs), int(cv), eta,
                                   len(done), progress)
    with signals(stop), shown, _progress.configured("none"):
        for r, epochs in enumerate(rungs):
            pairs = [(ci, k, configs[ci]) for k in range(int(cv)) for ci in alive
                     if (r, ci, k) not in done]
            mine = _run_pairs(world, group, counter, base, pairs, data, factory, int(cv), seed,
                              epochs, r, book, stop)
            base += len(pairs) + n_groups          # every group overshoots the counter once
            records = [rec for part in world.allgather(mine) for rec in part]
            ran += len(records)
            interrupted = world.allreduce(int(stop.stop_requested), op=MPI.MAX)
            if interrupted:
                break
            records += [rec for (rr, ci, _), rec in sorted(done.items()) if rr == r and ci in alive]
            records.sort(key=lambda rec: (rec["config"], rec["fold"]))
            everything += records
            summary = summarise(configs, records, alive)
            ok = [s for s in summary if s["status"] == "ok"]
            keep = max(1, math.ceil(len(alive) / eta))
            alive = [s["config_index"] for s in ok[:keep]] if r + 1 < len(rungs) else alive
            shown.update(shown.poll(), total=replan(r, len(alive)))
            if not alive:
                break
    counter.free()
    group.free()            # its grids' communicators too
    if interrupted:
        raise Interrupted(f"stopped by a signal after {ran} fit(s) in this run; the finished "
                          f"ones are in {journal}: continue with --resume {journal}"
                          if journal else "stopped by a signal",
                          ranks=range(world.size), checkpoint=journal)
    return {"summary": _final(configs, everything), "records": everything, "rungs": rungs, "groups": n_groups,
            "group_size": int(group_size), "seconds": time.perf_counter() - t0,
            "fits_run": ran, "fits_resumed": len(everything) - ran}


def _group_rows(world, group, load, cv, model_parallel):
    """``(X, y, offset, n_global)``: the group's share of the rows, counted over its
    data-parallel ranks (a model-parallel group's ranks hold the same rows)."""
    X, y = load(group)
    rows = get_grid(group, int(model_parallel)).data
    n_global = rows.allreduce(X.shape[0])
    if int(cv) > n_global:
        raise ConfigError(f"--cv {cv} is more than the {n_global} rows", ranks=range(world.size))
    return X, y, rows.exscan(X.shape[0]), n_global


def _fits_progress(world, counter, rungs, n_configs, cv, eta, resumed, mode):
    """World rank 0's progress through every fit of the search: fits finished (taken
    from the journal, or counted on rank 0 by every group leader's one atomic per fit)
    of the fits planned. Returns it and ``replan(r, alive)``: the fits planned after rung
    ``r`` (halving keeps fewer when configurations failed)."""
    def plan(first, alive):
        fits = 0
        for _ in rungs[first:]:
            fits += alive * cv
            alive = max(1, math.ceil(alive / eta))
        return fits

    shown = _progress.Progress("tune", plan(0, n_configs), "fits", rank=world.rank, mode=mode,
                               start=resumed,
                               poll=lambda: resumed + counter.finished_count())
    sizes = [n_configs]

    def replan(r, alive):
        # the fits of the rungs run so far, then those of the rungs to come
        sizes.append(alive)
        return sum(n * cv for n in sizes[:r + 1]) + plan(r + 1, alive)
    return shown, replan


def _rungs(n_configs, max_epochs, halving, eta):
    """Epochs of each rung: one rung of ``max_epochs``, or successive halving's rungs."""
    if not halving:
        return [max_epochs]
    n_rungs = max(1, math.floor(math.log(n_configs, eta)) + 1) if n_configs > 1 else 1
    return [max(1, max_epochs // eta ** (n_rungs - 1 - r)) for r in range(n_rungs)]


def _final(configs, everything):
    """The summary of each configuration at the last rung it reached."""
    last = {}
    for rec in everything:
        last[rec["config"]] = max(last.get(rec["config"], 0), rec["rung"])
    return summarise(configs, [rec for rec in everything if rec["rung"] == last[rec["config"]]],
                     range(len(configs)))


def summarise(configs, records, indices):
    """Mean and standard deviation of each configuration's fold scores, best first."""
    rows = []
    for ci in indices:
        recs = [rec for rec in records if rec["config"] == ci]
        if not recs:
            continue
        scores = [rec["score"] for rec in recs]
        failed = [rec for rec in recs if rec["status"] != "ok"]
        rows.append({"config_index": ci, "params": configs[ci], "folds": len(recs),
                     "rung": recs[0].get("rung", 0), "epochs": recs[0]["epochs"],
                     "mean_score": float(np.mean(scores)) if not failed else math.nan,
                     "std_score": float(np.std(scores)) if not failed else math.nan,
                     "seconds": float(sum(rec["seconds"] for rec in recs)),
                     "status": "failed" if failed else "ok",
                     "error": failed[0].get("error", "") if failed else ""})
    rows.sort(key=lambda s: (s["status"] != "ok", -s["rung"],
                             -s["mean_score"] if s["status"] == "ok" else 0.0, s["config_index"]))
    return rows


# ---------------------------------------------------------------- Python API
class GridSearchCV:
    """Cross-validated grid search of an mpiml estimator over groups of ranks.

    ``fit`` is collective over ``comm``: the ranks are split into groups of
    ``group_size``; each group trains its share of the (configuration, fold) pairs,
    data-parallel inside the group, taking pairs dynamically.

    Parameters
    ----------
    estimator : an mpiml estimator (unfitted); its ``max_iter`` is the epochs per fit
    param_grid : dict of name -> list of values (the estimator's parameter names)
    cv : int
        Folds (by global row index: the same at any rank count).
    group_size : int
        Ranks per group; must divide the number of ranks.
    halving, eta : successive halving over epochs (see :func:`search`)
    refit : bool
        Retrain the best configuration on all data with all ranks.
    random_state : int
        Seed of the folds (and of the draw, for :class:`RandomizedSearchCV`).
    comm : mpi4py communicator or mpiml Comm, optional

    Attributes
    ----------
    cv_results_ : list of dict, best first (params, mean_score, std_score, status, ...)
    best_params_, best_score_, best_estimator_, search_ (every fit's record)

    Examples
    --------
    >>> from mpiml import SGDClassifier                             # doctest: +SKIP
    >>> from mpiml.tune import GridSearchCV                         # doctest: +SKIP
    >>> g = GridSearchCV(SGDClassifier(learning_rate="constant", max_iter=5),
    ...                  {"eta0": [0.01, 0.1], "scaler": [None, "standard"]},
    ...                  cv=3, group_size=2).fit("train.h5")        # doctest: +SKIP
    >>> g.best_params_                                              # doctest: +SKIP

    ``fit`` takes an HDF5 path (each group reads its own rows) or a callable
    ``load(comm) -> (X, y)`` returning that communicator's share of the rows.
    """

    search_kind = "grid"

    def __init__(self, estimator, param_grid, *, cv=5, group_size=1, halving=False, eta=3,
                 refit=True, random_state=0, comm=None):
        self.estimator = estimator
        self.param_grid = param_grid
        self.cv, self.group_size, self.halving, self.eta = cv, group_size, halving, eta
        self.refit, self.random_state, self.comm = refit, random_state, comm

    def _configs(self):
        grid = {k: list(v) for k, v in self.param_grid.items()}
        return configurations(grid, self.search_kind, self.random_state)

    def fit(self, data, X="X", y="y"):
        from .io import load_hdf5

        world = get_comm(self.comm)
        base = self.estimator.get_params()
        k = int(base.get("model_parallel", 1))
        load = data if callable(data) else (
            lambda comm: load_hdf5(data, X=X, y=y, comm=comm, require_y=True, model_parallel=k))

        def factory(config, comm, epochs):
            params = dict(base, **config, comm=comm, max_iter=epochs, verbose=0)
            return type(self.estimator)(**params)

        configs = self._configs()
        res = search(factory, configs, load, cv=self.cv, group_size=self.group_size,
                     seed=self.random_state, max_epochs=int(base.get("max_iter", 5)),
                     halving=self.halving, eta=self.eta, model_parallel=k, comm=world)
        self.cv_results_ = res["summary"]
        self.search_ = res
        best = next((s for s in res["summary"] if s["status"] == "ok"), None)
        if best is None:
            raise ConfigError("every configuration failed", ranks=range(world.size))
        self.best_params_, self.best_score_ = best["params"], best["mean_score"]
        if self.refit:
            Xa, ya = load(world)
            self.best_estimator_ = factory(best["params"], world,
                                           int(base.get("max_iter", 5))).fit(Xa, ya, copy_X=False)
        return self


class RandomizedSearchCV(GridSearchCV):
    """:class:`GridSearchCV` on ``n_iter`` distinct configurations drawn from the grid."""

    def __init__(self, estimator, param_distributions, *, n_iter=10, **kwargs):
        super().__init__(estimator, param_distributions, **kwargs)
        self.n_iter = n_iter

    @property
    def search_kind(self):
        return f"random:{int(self.n_iter)}"
