"""The epoch schedule: independent of the rank count, balanced, each row once."""
import numpy as np
import pytest

from mpiml.comm import chunk
from mpiml.parallel.data import block_rows, epoch_plan


def global_batches(n, batch, size, seed=3, epoch=1):
    """Per step, the sorted global rows processed by all ranks together, and per-rank counts."""
    plans = []
    for r in range(size):
        lo_r, hi_r = chunk(n, size, r)
        plans.append((lo_r, epoch_plan(n, batch, seed, epoch, lo_r, hi_r - lo_r)))
    n_steps = len(plans[0][1][2]) - 1
    steps, counts = [], np.zeros((n_steps, size), dtype=int)
    for s in range(n_steps):
        rows = []
        for r, (off, (lo, hi, ptr)) in enumerate(plans):
            for a, b in zip(lo[ptr[s]:ptr[s + 1]], hi[ptr[s]:ptr[s + 1]]):
                rows.append(np.arange(a, b) + off)
                counts[s, r] += b - a
        steps.append(np.sort(np.concatenate(rows)) if rows else np.zeros(0, int))
    return steps, counts


@pytest.mark.parametrize("n,batch", [(1000, 64), (1003, 100), (5000, 256), (77, 1000), (64, 8)])
def test_same_batches_on_any_rank_count(n, batch):
    ref, _ = global_batches(n, batch, 1)
    assert np.array_equal(np.sort(np.concatenate(ref)), np.arange(n))   # each row once
    for size in (2, 3, 7):
        if size > n:
            continue
        got, _ = global_batches(n, batch, size)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)


def test_batches_are_balanced_over_ranks():
    n, batch = 100_000, 256
    b = block_rows(batch)
    for size in (2, 3, 4):
        _, counts = global_batches(n, batch, size)
        share = counts.sum(axis=1, keepdims=True) / size
        # each rank's part of each batch is within about one block of its fair share
        assert np.abs(counts - share).max() <= 2 * b


def test_batch_size_and_order_vary_by_epoch():
    steps1, _ = global_batches(10_000, 128, 1, epoch=1)
    steps2, _ = global_batches(10_000, 128, 1, epoch=2)
    assert all(abs(len(s) - 128) <= block_rows(128) for s in steps1)
    assert not all(np.array_equal(a, b) for a, b in zip(steps1, steps2))


def test_full_batch_is_one_range_per_rank():
    lo, hi, ptr = epoch_plan(1000, 1000, 0, 0, 400, 300)
    assert list(lo) == [0] and list(hi) == [300] and list(ptr) == [0, 1]


@pytest.mark.parametrize("n,batch,size", [(1000, 64, 3), (1003, 100, 2), (77, 1000, 2), (5000, 256, 4)])
def test_group_layout_holds_the_same_batches(n, batch, size):
    """Reordered rows + one range per step cover exactly the rows of epoch_plan's steps."""
    from mpiml.parallel.data import group_layout, layout_plan
    for r in range(size):
        off, end = chunk(n, size, r)
        lo, hi, ptr = epoch_plan(n, batch, 5, 2, off, end - off)
        perm, gptr = group_layout(n, batch, off, end - off)
        perm = np.arange(end - off) if perm is None else perm
        assert np.array_equal(np.sort(perm), np.arange(end - off))
        llo, lhi, lptr = layout_plan(gptr, 5, 2)
        for s in range(len(ptr) - 1):
            want = np.concatenate([np.arange(a, b) for a, b in
                                   zip(lo[ptr[s]:ptr[s + 1]], hi[ptr[s]:ptr[s + 1]])] or [[]])
            got = perm[llo[s]:lhi[s]]
            np.testing.assert_array_equal(got, want)       # same rows, same order
