"""The fit's set-up without a pass of its own over X (issue 22, part 1): the rows are
copied into step order run by run with the NaN / infinity scan fused into the copy
(``mpiml._kernels.stats.take_rows``), and a bad row found there is the same agreed
DataError, naming the same local row, before any update, with a fitted model left as
it was. Runs plain and under mpiexec (1, 2, 3 ranks)."""
import os

import numpy as np
import pytest
from mpi4py import MPI

from mpiml import SGDClassifier, SGDRegressor
from mpiml._kernels import stats
from mpiml.errors import DataError
from mpiml.parallel.data import group_layout


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,batch,offset", [(1000, 256, 0), (777, 64, 13), (50, 8, 5), (3, 2, 0)])
def test_take_rows_is_numpys_take_and_finds_the_first_bad_row(dtype, n, batch, offset):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 5)).astype(dtype)
    perm, _ = group_layout(n + offset + 100, batch, offset, n)
    perm = np.arange(n) if perm is None else perm
    out = np.empty_like(X)
    assert stats.take_rows(X, perm, out) == -1
    assert np.array_equal(out, np.take(X, perm, axis=0))
    for value in (np.nan, np.inf, -np.inf):
        bad = X.copy()
        rows = rng.choice(n, size=min(n, 3), replace=False)
        bad[rows, rng.integers(0, 5, len(rows))] = value
        got = stats.take_rows(bad, perm, out)
        expect = np.flatnonzero(~np.isfinite(np.take(bad, perm, axis=0)).all(axis=1))[0]
        assert got == expect


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("extents", [[1000], [1, 999], [300, 300, 400], [7] * 142 + [6]])
@pytest.mark.parametrize("order", ["file", "step"])
def test_pread_rows_reads_each_extent_into_its_place_and_finds_the_first_bad_row(
        tmp_path, dtype, extents, order):
    """``pread_rows``: rows stored in extents anywhere in a file (chunks in any order, gaps
    between them) land in their places, as numpy reads them; the first bad row in file
    order is found whichever read and run holds it."""
    rng = np.random.default_rng(len(extents))
    X = rng.standard_normal((1000, 5)).astype(dtype)
    starts = np.cumsum([0] + extents[:-1])
    # the extents stored in reverse order with 13 bytes of gap before each
    blob, at = b"", {}
    for s, m in reversed(list(zip(starts, extents))):
        blob += b"x" * 13
        at[s] = len(blob)
        blob += X[s:s + m].tobytes()
    path = tmp_path / "rows.bin"
    path.write_bytes(blob)
    where = None
    expect = X
    if order == "step":
        perm, _ = group_layout(1000, 64, 0, 1000)
        where = np.empty(1000, dtype=np.intp)
        where[perm] = np.arange(1000)
        expect = X[perm]
    fd = os.open(path, os.O_RDONLY)
    try:
        ext_at = np.array([at[s] for s in starts], dtype=np.int64)
        ext_rows = np.array(extents, dtype=np.intp)
        out = np.empty_like(X)
        assert stats.pread_rows(fd, ext_at, ext_rows, out, where) == -1
        assert np.array_equal(out, expect)
        for rows in ([999], [0], [640, 3], [3, 640]):
            bad = X.copy()
            bad[rows, 2] = np.nan
            bad[rows[-1], 4] = -np.inf
            path.write_bytes(b"".join(b"x" * 13 + bad[s:s + m].tobytes()
                                      for s, m in reversed(list(zip(starts, extents)))))
            assert stats.pread_rows(fd, ext_at, ext_rows, out, where) == min(rows)
        # a file that ends before its rows
        os.truncate(path, len(blob) - 1)
        with pytest.raises(EOFError):
            stats.pread_rows(fd, ext_at, ext_rows, out, where)
        with pytest.raises(ValueError):
            stats.pread_rows(fd, ext_at, ext_rows, out, np.zeros(1000, dtype=np.intp))
        with pytest.raises(ValueError):
            stats.pread_rows(fd, ext_at, ext_rows - 1, out)
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", [None, "step"])
def test_pread_rows_splits_long_runs_into_reads_and_scans_each(tmp_path, where):
    """Rows of 24 KB in one extent, runs longer than a read's ~4 MiB (174 rows): every
    row lands in its place and the first bad row is found wherever it is."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((700, 3000))
    path = tmp_path / "wide.bin"
    order = group_layout(700, 400, 0, 700)[0] if where else np.arange(700)
    place = None
    if where:
        place = np.empty(700, dtype=np.intp)
        place[order] = np.arange(700)
    for bad in ([], [174], [175], [699, 350], [0]):
        Xb = X.copy()
        Xb[bad, 7] = np.nan
        path.write_bytes(Xb.tobytes())
        out = np.empty_like(X)
        fd = os.open(path, os.O_RDONLY)
        try:
            got = stats.pread_rows(fd, np.array([0], dtype=np.int64), np.array([700], dtype=np.intp),
                                   out, place)
        finally:
            os.close(fd)
        assert got == (min(bad) if bad else -1)
        assert np.array_equal(out, Xb[order], equal_nan=True)


def test_take_rows_refuses_bad_indices():
    X = np.zeros((4, 3))
    with pytest.raises(IndexError):
        stats.take_rows(X, np.array([0, 1, 2, 4], dtype=np.intp), np.empty((4, 3)))
    with pytest.raises(ValueError):
        stats.take_rows(X, np.array([0, 1], dtype=np.intp), np.empty((4, 3)))


def _shard(n, seed, dtype=np.float32, classes=2):
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6)).astype(dtype)
    y = np.argmax(X[:, :classes], axis=1)
    lo, hi = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
    return X[lo:hi], y[lo:hi]


def _all(ok):
    assert MPI.COMM_WORLD.allreduce(bool(ok), op=MPI.LAND)


@pytest.mark.mpi
@pytest.mark.parametrize("copy_X", [True, False])
@pytest.mark.parametrize("batch", [32, "full", 1024], ids=["copied", "one step", "in place"])
def test_a_bad_row_found_by_the_layout_is_the_agreed_error_and_the_model_stays(copy_X, batch):
    comm = MPI.COMM_WORLD
    X, y = _shard(3000, 1)
    clf = SGDClassifier(max_iter=2, batch_size=64, tol=None, random_state=0).fit(X, y)
    coef, classes = clf.coef_.copy(), clf.classes_.copy()
    X3, y3 = _shard(3000, 2, classes=3)
    last = comm.size - 1
    if comm.rank == last:
        X3[len(X3) // 2, 4] = np.nan
        X3[len(X3) - 1, 0] = np.inf
    clf.set_params(batch_size=batch)
    with pytest.raises(DataError) as info:
        clf.fit(X3, y3, copy_X=copy_X)
    # the same message everywhere, naming the first bad row of the caller's order
    _all(f"local row {len(X3) // 2 if comm.rank == last else 0}" in str(info.value) or
         comm.rank != last)
    _all(len(set(comm.allgather(str(info.value)))) == 1)
    _all(np.array_equal(clf.coef_, coef) and np.array_equal(clf.classes_, classes))


@pytest.mark.mpi
def test_the_fused_scan_trains_the_model_of_the_scanned_copy():
    """The copy with the fused scan and the in-place permutation (copy_X=False, scanned
    after it) store the same rows: the same model, bit for bit."""
    X, y = _shard(2500, 3, np.float64)
    y = X @ np.arange(1.0, 7.0)
    a = SGDRegressor(max_iter=3, batch_size=48, tol=None, random_state=0).fit(X, y)
    b = SGDRegressor(max_iter=3, batch_size=48, tol=None, random_state=0).fit(X.copy(), y,
                                                                               copy_X=False)
    _all(np.array_equal(a.coef_, b.coef_) and np.array_equal(a.intercept_, b.intercept_))


@pytest.mark.mpi
@pytest.mark.parametrize("batch", [256, 1024])
def test_a_short_fit_visits_the_rows_in_place_and_trains_the_copied_layouts_model(
        batch, monkeypatch):
    """One or two epochs read the caller's blocks where they are (no copy into step order,
    the caller's array untouched even with copy_X=False); the model is the copied
    layout's (forced here by making the in-place visit look expensive), up to the
    summation order of sub-blocks that straddle two blocks."""
    from mpiml.models import session
    X, y = _shard(6000, 4, np.float64)
    assert session.visit_in_place(batch, 2) and not session.visit_in_place(batch, 50)
    before = X.copy()
    kw = dict(max_iter=2, batch_size=batch, tol=None, random_state=0, learning_rate="constant",
              eta0=0.05)
    a = SGDClassifier(**kw).fit(X, y, copy_X=False)
    _all(np.array_equal(X, before))
    monkeypatch.setattr(session, "IN_PLACE_EXTRA", 1e9)
    b = SGDClassifier(**kw).fit(X, y)
    _all(np.allclose(a.coef_, b.coef_, rtol=1e-10, atol=1e-12) and
         np.allclose(a.intercept_, b.intercept_, rtol=1e-10, atol=1e-12))
    _all(a.t_ == b.t_)


@pytest.mark.parametrize("y", [np.random.default_rng(0).integers(0, 2, 5000),
                               np.random.default_rng(1).integers(-5, 9, 300).astype(np.int8),
                               np.array([True, False, True]), np.array([7]),
                               np.random.default_rng(2).integers(0, 1 << 20, 300),
                               np.array(["b", "a", "b"]), np.array([0.0, 1e9, 0.0]),
                               np.random.default_rng(3).integers(0, 3, 4000).astype(np.float64),
                               np.random.default_rng(4).integers(-7, 4, 500).astype(np.float32),
                               np.array([-0.0, 2.0, 0.0, 65535.0]), np.array([-1.0, 65535.0]),
                               np.array([2**64 - 1, 2**64 - 3, 2**64 - 1], dtype=np.uint64),
                               np.array([-2**63, -2**63 + 5, 2**63 - 1]),
                               np.array([1e9, 1e9 + 64, 1e9], dtype=np.float32),
                               np.random.default_rng(5).integers(-3, 3, 700).astype(np.int16)],
                         ids=["int64", "int8", "bool", "one", "wide range", "str", "float wide range",
                              "float64 integers", "float32 integers", "float 2^16 - 1 apart",
                              "float 2^16 apart", "uint64 near 2^64", "int64 full range",
                              "float32 1e9", "int16"])
def test_label_counting_is_numpys_unique(y):
    """The classes and each row's index among them (as the fit spreads it, through a
    table of codes, and the index sum a model-parallel group compares) are numpy's."""
    from mpiml.models.training import _counted_labels, _index_sum, _spread_codes, _unique_labels
    classes, codes = _unique_labels(y)
    ref_classes, ref_inverse = np.unique(y, return_inverse=True)
    assert np.array_equal(classes, ref_classes) and classes.dtype == ref_classes.dtype
    inverse = _spread_codes(codes, np.arange(classes.shape[0]))
    assert inverse.dtype == np.float64 and np.array_equal(inverse, ref_inverse)
    table = np.arange(classes.shape[0]) * 3.0 - 1.0
    assert np.array_equal(_spread_codes(codes, table), table[ref_inverse])
    assert _index_sum(codes) == float(ref_inverse.sum())
    # which labels are counted rather than sorted
    span = float(ref_classes[-1]) - float(ref_classes[0]) if y.dtype.kind != "U" else None
    assert (_counted_labels(y) is not None) == (span is not None and span < 1 << 16)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_label_counting_refuses_nan_and_infinity_anywhere(dtype):
    """A NaN or an infinity among float labels, first or later, is not counted (the kernel
    checks each value before it indexes its counts)."""
    from mpiml._kernels.stats import label_counts
    for y in ([0.0, 1.0, np.nan, 1.0], [np.nan, 0.0, 1.0], [0.0, np.inf], [-np.inf, 0.0],
              [1.0, 0.0, np.nan]):
        assert label_counts(np.array(y, dtype=dtype), 1 << 16) is None
    lo, counts = label_counts(np.array([3.0, 1.0, 3.0], dtype=dtype), 1 << 16)
    assert lo == 1.0 and counts.tolist() == [1, 0, 2]


def test_label_counts_equal_numpys_unique_on_random_label_sets():
    """The counting kernel (one pass in a window around the first label, else two) against
    numpy's unique, over random label sets of every integer and float type: ranges up to
    and beyond 2^16, at the ends of each type's range, with fractions, NaN and infinity."""
    from mpiml._kernels.stats import label_counts
    rng = np.random.default_rng(7)
    types = [np.int8, np.int16, np.int32, np.longlong, np.uint8, np.uint16, np.uint32,
             np.ulonglong, np.float32, np.float64]
    for case in range(1500):
        dt = types[case % len(types)]
        if np.dtype(dt).kind in "iu":
            tmin, tmax = int(np.iinfo(dt).min), int(np.iinfo(dt).max)
        else:
            tmin, tmax = -10**6, 10**6
        span = int(rng.choice([0, 1, 3, 200, 30000, 40000, 65535, 65536, 70000, 2**40]))
        where = rng.random()
        base = tmin if where < 0.15 else tmax - span if where < 0.3 else \
            tmin + int(rng.random() * (tmax - tmin))
        base = max(tmin, min(base, tmax))
        y = np.array([min(tmax, max(tmin, base + int(rng.random() * (span + 1))))
                      for _ in range(int(rng.integers(1, 60)))], dtype=dt)
        if y.dtype.kind == "f":
            for value, p in ((0.5, 0.2), (np.nan, 0.1), (np.inf, 0.05)):
                if rng.random() < p:
                    y[rng.integers(y.size)] = value if value != 0.5 else y[0] + 0.5
        got = label_counts(y, 1 << 16)
        finite = y.dtype.kind != "f" or (np.all(np.isfinite(y)) and np.all(y == np.floor(y)))
        if not finite or float(y.max()) - float(y.min()) >= 1 << 16:
            assert got is None, (dt, y)
            continue
        values, counts = np.unique(y, return_counts=True)
        assert got is not None and int(got[0]) == int(values[0]), (dt, y)
        expect = np.zeros(int(values[-1]) - int(values[0]) + 1, dtype=np.intp)
        expect[[int(v) - int(values[0]) for v in values]] = counts
        assert np.array_equal(got[1], expect), (dt, y)


@pytest.mark.parametrize("y", [np.array([0.5, -1.0, 0.5]), np.array([0.0, 1.0, 1.5]),
                               np.array([1.0, 2.0, 3.0 + 1e-9])])
def test_labels_that_are_not_classes_get_scikit_learns_error(y):
    """Float labels that are not all integers are refused with scikit-learn's message
    (counted labels skip its check: it accepts every integer)."""
    from mpiml.models.training import _counted_labels, _unique_labels
    assert _counted_labels(y) is None
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        _unique_labels(y)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        SGDClassifier(max_iter=1, comm=MPI.COMM_SELF).fit(np.zeros((3, 2)), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1000, 7), (5, 3000), (1, 1), (0, 4), (333, 100)])
def test_the_finiteness_scan_finds_the_first_bad_row(dtype, shape):
    """io.first_nonfinite_row (the kernel's one-pass scan for C-contiguous rows, numpy's by
    blocks for others) names the first row holding a NaN or an infinity, as numpy does."""
    from mpiml.io import first_nonfinite_row
    rng = np.random.default_rng(shape[0])
    X = rng.standard_normal(shape).astype(dtype)
    assert first_nonfinite_row(X) is None and first_nonfinite_row(X[:, ::2]) is None
    if not X.size:
        return
    for value in (np.nan, np.inf, -np.inf):
        for _ in range(4):
            bad = X.copy()
            rows = rng.choice(shape[0], size=min(shape[0], 2), replace=False)
            bad[rows, rng.integers(0, shape[1], len(rows))] = value
            expect = int(np.flatnonzero(~np.isfinite(bad).all(axis=1))[0])
            assert first_nonfinite_row(bad) == expect
            strided = np.asfortranarray(bad)
            assert first_nonfinite_row(strided) == expect
    big = np.full(shape, np.finfo(dtype).max, dtype=dtype)      # finite, however large
    assert first_nonfinite_row(big) is None


@pytest.mark.parametrize("epochs", [1, 5])      # rows visited in place; copied into step order
def test_train_scans_the_rows_once_when_it_loads_them(tmp_path, monkeypatch, epochs):
    """``mpiml train``'s fit makes no NaN / infinity scan of the rows load_hdf5 read and
    scanned; the same fit of an array that nobody scanned does scan it (and a bad row in
    the file is still refused at load: test_cli's NaN / Inf cases)."""
    import h5py
    from mpiml import io
    from mpiml.models import session, training
    from mpiml.pipeline import train_from_file
    rng = np.random.default_rng(5)
    X = rng.standard_normal((600, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.float64)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["X"], f["y"] = X, y
    scans = []

    def counting(where, real):
        def scan(a):
            scans.append((where, a.shape))
            return real(a)
        return scan

    monkeypatch.setattr(io, "first_nonfinite_row", counting("load", io.first_nonfinite_row))
    # the read from where the file stores the rows scans them as it reads them
    real_pread = io.pread_rows
    monkeypatch.setattr(io, "pread_rows", lambda fd, at, rows, out, *a: scans.append(
        ("load", out.shape)) or real_pread(fd, at, rows, out, *a))
    monkeypatch.setattr(session, "first_nonfinite_row", counting("fit", session.first_nonfinite_row))
    monkeypatch.setattr(training, "first_nonfinite_row", counting("fit", training.first_nonfinite_row))
    fused = []
    real_take = session.take_rows
    monkeypatch.setattr(session, "take_rows", lambda *a: fused.append(1) or real_take(*a))
    kw = dict(max_iter=epochs, tol=None, batch_size=32, random_state=0, comm=MPI.COMM_SELF)
    est, _ = train_from_file(SGDClassifier(**kw), str(tmp_path / "d.h5"))
    assert [w for w, s in scans if s == X.shape] == ["load"], scans
    # the reference: the same rows given to fit() directly are scanned by the fit
    scans.clear()
    ref = SGDClassifier(**kw).fit(X, y)
    assert ("fit", X.shape) in scans or fused, scans
    assert np.array_equal(est.coef_, ref.coef_) and np.array_equal(est.intercept_, ref.intercept_)


@pytest.mark.parametrize("kw", [dict(max_iter=3), dict(max_iter=3, verbose=1), dict(max_iter=1),
                                dict(max_iter=3, solver="hybrid"), dict(max_iter=3, solver="lbfgs")],
                         ids=["sgd", "verbose", "in place", "hybrid", "lbfgs"])
def test_a_fit_frees_its_copy_of_the_rows_when_it_returns(kw, capsys):
    """No reference cycle keeps the fit's rows (the layout's copy, the engine's plan)
    alive after fit returns: with Python's cyclic garbage collector off, the memory the
    fit allocated is back when it returns (a cycle through the progress display's poll
    kept an 8 MB copy here, and 400 MB on the bench_sgd rows, until a collection)."""
    import gc
    import tracemalloc
    rng = np.random.default_rng(6)
    X = rng.standard_normal((20000, 50))
    y = (X[:, 0] > 0).astype(np.float64)
    SGDClassifier(tol=None, random_state=0, comm=MPI.COMM_SELF, **kw).fit(X, y)   # imports, caches
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        est = SGDClassifier(tol=None, random_state=0, comm=MPI.COMM_SELF, **kw).fit(X, y)
        kept = tracemalloc.get_traced_memory()[0] - before
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        gc.enable()
    assert est.coef_.shape == (1, 50)
    assert kept < X.nbytes / 8, (kept, peak)


def _count_scans(monkeypatch):
    from mpiml.models import session
    calls = []
    real = session.first_nonfinite_row
    monkeypatch.setattr(session, "first_nonfinite_row", lambda a: calls.append(a.shape) or real(a))
    return calls


@pytest.mark.mpi
@pytest.mark.parametrize("model", ["binary", "multiclass", "regressor", "partial_fit"])
@pytest.mark.parametrize("where", ["nan", "inf", "-inf in a later block"])
def test_the_first_epoch_stands_for_the_scan_of_rows_visited_in_place(model, where, monkeypatch):
    """A short fit visiting the rows in place makes no scan of its own: the first epoch's
    margins stand for it. Clean rows: not scanned at all, and the model of a fit that
    scans first. A NaN / infinity on one rank (whatever its column, also a column whose
    weight is still zero): the same agreed DataError naming the caller's first bad row,
    and a fitted model stays as it was."""
    from mpiml.models import session
    comm = MPI.COMM_WORLD
    X, y = _shard(8000, 7, np.float64, classes=3 if model == "multiclass" else 2)
    if model == "regressor":
        y = X @ np.arange(1.0, 7.0)
    Est = SGDRegressor if model == "regressor" else SGDClassifier
    kw = dict(max_iter=1, batch_size=1024, tol=None, random_state=0)
    assert session.visit_in_place(1024, 1)
    calls = _count_scans(monkeypatch)
    a = Est(**kw).fit(X, y)
    _all(calls == [])
    monkeypatch.setattr(session, "IN_PLACE_EXTRA", 1e9)     # the copied layout, scanned
    b = Est(**kw).fit(X, y)
    monkeypatch.undo()
    _all(np.allclose(a.coef_, b.coef_, rtol=1e-10, atol=1e-12))
    est = Est(**kw).fit(X, y)
    coef = est.coef_.copy()
    last = comm.size - 1
    bad = X.copy()
    row = len(X) // 3 if where != "-inf in a later block" else len(X) - 5
    if comm.rank == last:
        bad[row, {"nan": 5, "inf": 0}.get(where, 2)] = {"nan": np.nan, "inf": np.inf}.get(where, -np.inf)
        bad[row + 2, 1] = np.nan
    calls = _count_scans(monkeypatch)
    with pytest.raises(DataError) as info:
        if model == "partial_fit":
            est.partial_fit(bad, y)
        else:
            est.fit(bad, y)
    _all(len(set(comm.allgather(str(info.value)))) == 1)
    msg = str(info.value)
    _all("NaN or infinity" in msg and (comm.rank != last or f"local row {row}" in msg))
    _all(np.array_equal(est.coef_, coef))
    # scanned where flagged: the rank holding the bad row, and ranks whose later margins
    # met the NaN the Allreduce spread into the weights
    _all(len(calls) == 1 if comm.rank == last else len(calls) <= 1)


@pytest.mark.mpi
def test_margins_that_overflow_are_not_bad_rows(monkeypatch):
    """Finite values so large that a float32 margin overflows are flagged by the kernel,
    scanned, found finite: no DataError; the fit goes on and ends as the fit that scans
    first does (here: diverged, the overflowing margins' losses being infinite)."""
    from mpiml.errors import TrainingError
    from mpiml.models import session
    X, y = _shard(6000, 8, np.float32)
    X[::7, 0] = 3e38
    kw = dict(max_iter=1, batch_size=1024, tol=None, random_state=0, learning_rate="constant",
              eta0=1e-3, alpha=0.0)
    calls = _count_scans(monkeypatch)
    with pytest.raises(TrainingError, match="diverged") as a:
        SGDClassifier(**kw).fit(X, y)
    _all(len(calls) == 1)
    monkeypatch.setattr(session, "IN_PLACE_EXTRA", 1e9)
    with pytest.raises(TrainingError, match="diverged") as b:
        SGDClassifier(**kw).fit(X, y)
    _all(str(a.value) == str(b.value))


# ------------------------------------------------------------------ rows read in step order
def _write_rows(path, X, y, **kw):
    import h5py
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X, **kw)
        f["y"] = y


@pytest.mark.mpi
@pytest.mark.parametrize("stored", [dict(chunks=(37, 6)), dict(), dict(chunks=(37, 6),
                                                                        compression="gzip")],
                         ids=["chunks", "contiguous", "compressed (h5py, then permuted)"])
@pytest.mark.parametrize("batch", [64, 1000])
def test_load_in_step_order_is_the_layouts_order_of_the_shard(comm, shared_tmp, stored, batch):
    from mpiml import load_hdf5
    path = os.path.join(shared_tmp, "rows.h5")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((997, 6)).astype(np.float32)
    y = rng.integers(0, 3, 997).astype(np.float64)
    if comm.rank == 0:
        _write_rows(path, X, y, **stored)
    comm.barrier()
    Xf, yf = load_hdf5(path)
    Xs, ys = load_hdf5(path, step_order=batch)
    offset = sum(comm.allgather(Xf.shape[0])[:comm.rank])
    perm, _ = group_layout(997, batch, offset, Xf.shape[0])
    perm = np.arange(Xf.shape[0]) if perm is None else perm
    assert np.array_equal(Xs, Xf[perm]) and np.array_equal(ys, yf[perm])
    # a bad row is named by its row in the file, as in file order
    if comm.rank == 0:
        X[[700, 650], [1, 4]] = [np.inf, np.nan]
        _write_rows(path, X, y, **stored)
    comm.barrier()
    with pytest.raises(DataError, match=r"at row 650( \(on rank [\d, ]+\))?$"):
        load_hdf5(path, step_order=batch)


@pytest.mark.mpi
@pytest.mark.parametrize("model,kw", [
    ("classifier", dict(max_iter=5, batch_size=32)),
    ("classifier", dict(max_iter=3, batch_size=64, class_weight="balanced", momentum=0.9)),
    ("regressor", dict(max_iter=4, batch_size=16, penalty="elasticnet")),
    ("classifier", dict(max_iter=1, batch_size=1024))],
    ids=["5 epochs", "class weights", "regressor", "1 epoch (in place, file order)"])
def test_train_reads_into_step_order_and_trains_the_file_orders_model(
        comm, shared_tmp, model, kw, monkeypatch):
    """``mpiml train`` reads the rows straight into the fit's step order when the fit would
    copy them: the model is the one of ``fit`` on the rows in file order, bit for bit, and
    the fit moves no row (no copy, no in-place permutation)."""
    from mpiml import io, load_hdf5
    from mpiml.models import session
    from mpiml.pipeline import train_from_file
    path = os.path.join(shared_tmp, "rows.h5")
    rng = np.random.default_rng(7)
    X = rng.standard_normal((1201, 5)).astype(np.float32)
    y = (X @ rng.standard_normal(5) > 0).astype(np.float64) if model == "classifier" else \
        X @ rng.standard_normal(5)
    if comm.rank == 0:
        _write_rows(path, X, y, chunks=(64, 5))
    comm.barrier()
    Est = SGDClassifier if model == "classifier" else SGDRegressor
    kw = dict(kw, tol=None, random_state=3, learning_rate="constant", eta0=0.01)
    loads = []
    real_load = io.load_rows

    def load(*a, **k):
        loads.append((k.get("step_order"), real_load(*a, **k)))
        return loads[-1][1]
    monkeypatch.setattr("mpiml.pipeline.load_rows", load)
    moved = []
    for name in ("take_rows", "permute_rows"):
        real = getattr(session, name)
        monkeypatch.setattr(session, name, lambda *a, real=real: moved.append(1) or real(*a))
    est, _ = train_from_file(Est(**kw), path)
    copies = not session.visit_in_place(kw["batch_size"], kw["max_iter"])
    assert copies == (kw["batch_size"] < 1024)
    # asked for the step order; read in it exactly when the fit would copy
    assert len(loads) == 1 and callable(loads[0][0])
    assert (loads[0][1][2] is not None) == copies
    assert comm.allgather(bool(moved)) == [False] * comm.size
    Xl, yl = load_hdf5(path)
    moved.clear()
    ref = Est(**kw).fit(Xl, yl)
    assert bool(moved) == copies          # the same fit of file-order rows copies them
    np.testing.assert_array_equal(est.coef_, ref.coef_)
    np.testing.assert_array_equal(est.intercept_, ref.intercept_)


@pytest.mark.parametrize("b_read,b_fit", [(32, 32), (32, 64), (64, 1000), (16, 4000)])
def test_a_layout_starts_from_rows_in_any_step_order(b_read, b_fit):
    """Rows held in one step order (read so) are laid out for another batch size (a resume
    whose checkpoint changed it, a rebatch): the layout of the rows in their own order."""
    from mpiml.models.checkpointing import fingerprint
    from mpiml.models.session import Layout
    from mpiml.comm import get_comm
    rng = np.random.default_rng(b_fit)
    X = rng.standard_normal((1500, 4))
    y = rng.standard_normal(1500)
    order, _ = group_layout(4000, b_read, 1000, 1500)
    order = np.arange(1500) if order is None else order
    held = Layout(X[order].copy(), y[order], None, 4000, 1000, b_fit, own=True, order=order)
    ref = Layout(X.copy(), y, None, 4000, 1000, b_fit, own=True)
    assert np.array_equal(held.X, ref.X) and np.array_equal(held.y, ref.y)
    grid = get_comm(MPI.COMM_SELF).grid(1)
    assert fingerprint(grid, X[order], 1000, 4000, 4, None, order) == \
        fingerprint(grid, X, 1000, 4000, 4, None)
