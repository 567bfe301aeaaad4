"""``mpiml doctor``: is MPI / h5py / the build / Slurm set up right here?

Each check prints ``ok``, ``warn`` or ``FAIL`` with what it found and, for every
problem, a concrete fix. The exit code is 1 if any check failed.
"""
import os
import shutil
import subprocess
import sys

__all__ = ["run_checks", "main"]

_ALLREDUCE = (
    "from mpi4py import MPI; import numpy as np; c = MPI.COMM_WORLD; "
    "b = np.full(4, float(c.Get_rank() + 1)); c.Allreduce(MPI.IN_PLACE, b); "
    "print(c.Get_size(), int(b[0])) if c.Get_rank() == 0 else None"
)


def _launcher_env():
    """Variables that a launcher sets for each process, and the size they announce."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if var in os.environ:
            try:
                return var, int(os.environ[var])
            except ValueError:
                pass
    return None, None


def run_checks(comm=None):
    """Run the checks; returns a list of (status, name, finding, fix)."""
    results = []

    def add(status, name, finding, fix=""):
        results.append((status, name, finding, fix))

    size = _check_mpi(add)
    if size is None:
        return results
    _check_allreduce(add, size)
    _check_h5py(add)
    _check_kernels(add)
    _check_environment(add, size)
    return results


def _check_mpi(add):
    """mpi4py, the MPI library, thread support and the launcher; the rank count (None
    when mpi4py does not import)."""
    try:
        import mpi4py
        from mpi4py import MPI
    except ImportError as exc:
        add("FAIL", "mpi4py", f"cannot import mpi4py: {exc}",
            "pip install mpi4py (with the site MPI: MPICC=mpicc pip install --no-binary mpi4py "
            "mpi4py; without one: pip install mpich mpi4py)")
        return None
    library = MPI.Get_library_version().strip().splitlines()[0]
    add("ok", "mpi4py", f"mpi4py {mpi4py.__version__}, {library}, MPI {'%d.%d' % MPI.Get_version()}")
    provided = MPI.Query_thread()
    if provided >= MPI.THREAD_MULTIPLE:
        add("ok", "thread support", "MPI_THREAD_MULTIPLE (the watchdog can ask other ranks)")
    else:
        add("warn", "thread support", f"thread level {provided} < MPI_THREAD_MULTIPLE: the watchdog "
            "reports only its own rank", "use an MPI built with thread support (MPICH and Open MPI are)")

    world = MPI.COMM_WORLD
    size = world.Get_size()
    var, announced = _launcher_env()
    if announced is not None and announced != size:
        add("FAIL", "launcher", f"{var}={announced} but this process sees {size} rank(s): the "
            "launcher and mpi4py's MPI do not talk to each other, so every process runs alone",
            "with the mpich wheel use `mpiexec` from the same environment, or `srun --mpi=pmi2`; "
            "with a site MPI, build mpi4py against it (MPICC=mpicc pip install --no-binary mpi4py "
            "mpi4py) and use its mpiexec or the srun --mpi type the site documents")
    elif var:
        add("ok", "launcher", f"started by a launcher ({var}={announced}), {size} rank(s)")
    else:
        add("ok", "launcher", "not started by a launcher (a single process)")
    return size


def _check_allreduce(add, size):
    """A real Allreduce: over this job's ranks, or a 2-process job started here."""
    if size > 1:
        import numpy as np
        from mpi4py import MPI
        world = MPI.COMM_WORLD
        b = np.full(4, float(world.Get_rank() + 1))
        world.Allreduce(MPI.IN_PLACE, b)
        expect = size * (size + 1) // 2
        if int(b[0]) == expect:
            add("ok", "allreduce", f"Allreduce over the {size} ranks of this job: correct")
        else:
            add("FAIL", "allreduce", f"Allreduce gave {b[0]}, expected {expect}",
                "the MPI installation is broken: check `mpiexec -n 2 python -c 'from mpi4py import MPI'`")
    else:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
        if mpiexec is None:
            add("FAIL", "mpiexec", "no mpiexec on PATH",
                "pip install mpich (laptops, CI) or load the site's MPI module")
        else:
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith(("PMI_", "PMIX_", "HYDRA_", "OMPI_", "MPIR_", "SLURM_"))}
            try:
                p = subprocess.run([mpiexec, "-n", "2", sys.executable, "-c", _ALLREDUCE],
                                   capture_output=True, text=True, timeout=30, env=env)
                out = p.stdout.split()
                if p.returncode == 0 and out == ["2", "3"]:
                    add("ok", "allreduce", f"a 2-process Allreduce with {mpiexec}: correct")
                elif p.returncode == 0 and out[:1] == ["1"]:
                    add("FAIL", "allreduce", f"{mpiexec} started 2 processes that each saw 1 rank",
                        "that mpiexec belongs to a different MPI than mpi4py: use the one next to "
                        "python (pip install mpich) or rebuild mpi4py against the site MPI")
                else:
                    add("FAIL", "allreduce", f"{mpiexec} -n 2 failed (exit {p.returncode}): "
                        f"{(p.stderr or p.stdout).strip()[-300:]}",
                        "run it by hand to see the error; as root, Open MPI needs "
                        "--allow-run-as-root")
            except subprocess.TimeoutExpired:
                add("FAIL", "allreduce", f"{mpiexec} -n 2 did not finish in 30 s",
                    "a hang at start-up usually means a firewall or wrong network interface: "
                    "for MPICH try FI_PROVIDER=tcp or MPIR_CVAR_CH4_NETMOD=ofi")


def _check_h5py(add):
    try:
        import h5py
        mpi_io = bool(h5py.get_config().mpi)
        add("ok", "h5py", f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}, MPI-IO "
            f"{'yes' if mpi_io else 'no (serial: each rank reads its own rows; fine for mpiml)'}")
    except ImportError as exc:
        add("FAIL", "h5py", f"cannot import h5py: {exc}", "pip install h5py")


def _check_kernels(add):
    try:
        from ._kernels import sgd, stats  # noqa: F401 - stats: the scaler's kernels
        add("ok", "kernels", f"compiled (sgd, stats; {', '.join(sgd.DTYPES)}), flags "
            f"{sgd.COMPILE_FLAGS}")
        if "-march=native" in sgd.COMPILE_FLAGS:
            add("warn", "kernels", "built with -march=native: may crash (SIGILL) on other CPUs",
                "rebuild without MPIML_NATIVE for a cluster-wide install")
    except ImportError as exc:
        add("FAIL", "kernels", f"the compiled kernels do not import: {exc}",
            "reinstall with `pip install .` (needs a C compiler); do not run from the source tree")
    from .parallel import compiled
    why = compiled.available()
    if why is None:
        add("ok", "step loop", f"several ranks: {compiled.describe()}")
    else:
        add("warn", "step loop", f"several ranks: {compiled.describe()}",
            "reinstall with an MPI compiler wrapper on PATH (the `mpich` wheel's, or the site "
            "MPI's mpicc) for the compiled loop: `pip install mpich` then `pip install .`")
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        pass
    simd = [f for f in ("avx512f", "avx2") if f" {f}" in flags]
    if simd:
        add("ok", "cpu", f"SIMD for the kernels' clones: {', '.join(simd)}")


def _check_environment(add, size):
    """Thread variables and Slurm."""
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        if os.environ.get(v) not in (None, "1") and size > 1:
            add("warn", "threads", f"{v}={os.environ[v]} with {size} ranks: cores oversubscribed",
                f"export {v}=1 (mpiml limits BLAS threads itself only while it computes)")
    if "SLURM_JOB_ID" in os.environ:
        add("ok", "slurm", f"inside Slurm job {os.environ['SLURM_JOB_ID']} "
            f"({os.environ.get('SLURM_NTASKS', '?')} tasks)")
        step_tasks = os.environ.get("SLURM_STEP_NUM_TASKS")
        in_step = os.environ.get("SLURM_STEP_ID", "batch") not in ("batch", "extern")
        if in_step and step_tasks and step_tasks.isdigit() and int(step_tasks) != size:
            add("FAIL", "slurm", f"srun started {step_tasks} tasks but this one sees {size} rank(s): "
                "the srun PMI type does not match the MPI",
                "with the mpich wheel: srun --mpi=pmi2; with Open MPI: srun --mpi=pmix; "
                "`srun --mpi=list` shows what the cluster supports")
        elif size == 1 and os.environ.get("SLURM_NTASKS", "1") != "1":
            add("warn", "slurm", "more than one task allocated but this is a single process",
                "run `srun -n N mpiml ...` (srun --mpi=pmi2 with the mpich wheel)")
    elif shutil.which("sbatch"):
        add("ok", "slurm", "Slurm commands found (not inside a job)")


def main(comm=None, stream=None):
    """Print the checks (rank 0 only); return the exit code."""
    from mpi4py import MPI
    results = run_checks(comm)
    if MPI.COMM_WORLD.Get_rank() == 0:
        out = stream or sys.stdout
        for status, name, finding, fix in results:
            out.write(f"{status:4s}  {name:15s} {finding}\n")
            if fix:
                out.write(f"{'':21s}fix: {fix}\n")
        bad = sum(1 for r in results if r[0] == "FAIL")
        out.write(f"\n{'no problems found' if not bad else f'{bad} problem(s) found'}\n")
        out.flush()
    return 1 if any(r[0] == "FAIL" for r in results) else 0
