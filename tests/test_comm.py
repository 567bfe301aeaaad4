"""mpiml.comm: the partition rule and agreed errors."""
import numpy as np
import pytest
from mpi4py import MPI

from mpiml.comm import Comm, chunk, chunks, get_comm
from mpiml.errors import DataError, MpimlError


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 100, 101])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_chunk_rule(n, size):
    parts = [chunk(n, size, r) for r in range(size)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    for (a, b), (c, _) in zip(parts, parts[1:]):
        assert b == c                                  # contiguous, disjoint
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 1                # balanced
    assert sizes == sorted(sizes, reverse=True)        # first ranks take the remainder
    np.testing.assert_array_equal(chunks(n, size), np.array(parts).reshape(size, 2))


def test_chunk_rejects_bad_rank():
    with pytest.raises(ValueError):
        chunk(10, 2, 2)


@pytest.mark.mpi
def test_comm_is_a_duplicate():
    c = get_comm()
    assert c is get_comm()
    assert MPI.Comm.Compare(c.mpi, MPI.COMM_WORLD) == MPI.CONGRUENT
    assert get_comm(MPI.COMM_WORLD) is get_comm(MPI.COMM_WORLD)
    assert isinstance(get_comm(MPI.COMM_SELF), Comm) and get_comm(MPI.COMM_SELF).size == 1


@pytest.mark.mpi
def test_agree_raises_on_every_rank(comm):
    # no error anywhere: returns normally
    comm.agree(None)
    # an error on the last rank only: every rank raises the same class and message
    err = DataError("bad shard") if comm.rank == comm.size - 1 else None
    with pytest.raises(DataError) as info:
        comm.agree(err)
    assert "bad shard" in str(info.value)
    assert info.value.ranks == [comm.size - 1]
    # a foreign exception becomes an MpimlError naming its type
    with pytest.raises(MpimlError, match="ZeroDivisionError"):
        comm.run(lambda: 1 / 0 if comm.rank == 0 else 1)
    verdict = comm.allreduce(1)
    assert verdict == comm.size      # everybody is still in step


@pytest.mark.mpi
def test_exscan_and_allreduce(comm):
    assert comm.exscan(comm.rank + 1) == sum(range(1, comm.rank + 1))
    buf = np.full(3, comm.rank, dtype=float)
    comm.Allreduce(buf)
    assert np.all(buf == sum(range(comm.size)))
