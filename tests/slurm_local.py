"""A single-node Slurm for the tests (started from a plain pytest process).

Needs root and the Debian packages slurmctld, slurmd and slurm-client (`.ci/run`
installs them when it runs as root with apt-get); otherwise `unavailable()` says why
and the Slurm tests are skipped with that reason.

The daemons write their logs into the instance's directory (never to the test's
output) and are stopped by their PIDs, with any job-step daemon (slurmstepd) this
instance left behind, in `stop()`.

Job IDs start at a random number for every instance. MPICH names its shared-memory
segment after a hash of the PMI job name, which under `srun --mpi=pmi2` is
"<job id>.<step id>"; a rank that is killed leaves that segment behind in /dev/shm,
and a later step with the same name attaches to the stale segment and fails or hangs
in MPI_Init. A test Slurm that numbers its jobs from 1 on every start reuses those
names; see slurm/README.md.
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time

CONF = """ClusterName=mpimltest
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
SlurmctldPort={port}
SlurmdPort={port2}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
FirstJobId={first_job}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def unavailable():
    """Why a local Slurm cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "a local Slurm needs root"
    for tool in ("slurmctld", "slurmd", "srun", "sbatch", "squeue", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install slurmctld slurmd slurm-client)"
    return None


def _free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def mpich_world_id(kvsname):
    """MPICH's world id: the FNV-1a hash of the PMI job name (``MPIR_pmi_init``)."""
    h = 2166136261
    for b in kvsname.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def _mapped_shm():
    """Names of /dev/shm files some live process has mapped."""
    names = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as fh:
                for line in fh:
                    if "/dev/shm/" in line:
                        names.add(line.rsplit("/dev/shm/", 1)[1].split()[0])
        except OSError:
            pass
    return names


class LocalSlurm:
    """``logs``: a directory to copy the daemons' logs to when they stop."""

    def __init__(self, logs=None):
        self.logs = logs
        self.dir = tempfile.mkdtemp(prefix="mpiml-slurm-")
        os.makedirs(os.path.join(self.dir, "state"))
        os.makedirs(os.path.join(self.dir, "spool"))
        self.conf = os.path.join(self.dir, "slurm.conf")
        host = socket.gethostname().split(".")[0]
        port, port2 = _free_ports(2)
        self.first_job = random.randrange(1_000_000, 60_000_000)
        with open(self.conf, "w") as fh:
            fh.write(CONF.format(host=host, d=self.dir, cpus=os.cpu_count(), port=port,
                                 port2=port2, first_job=self.first_job))
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        self.pids = {}

    def _run(self, argv, timeout=30):
        with open(os.path.join(self.dir, "commands.log"), "a") as log:
            return subprocess.run(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout)

    def _read_pid(self, name):
        try:
            with open(os.path.join(self.dir, name + ".pid")) as fh:
                return int(fh.read().strip())
        except (OSError, ValueError):
            return None

    def start(self, wait=30):
        try:
            for daemon in (["slurmctld", "-c", "-i"], ["slurmd"]):
                p = self._run(daemon)
                pid = None
                for _ in range(50):             # the daemon writes its pid file soon after
                    pid = self._read_pid(daemon[0])
                    if pid or p.returncode != 0:
                        break
                    time.sleep(0.1)
                if p.returncode != 0 or pid is None:
                    raise RuntimeError(f"{daemon[0]} did not start (exit {p.returncode}); "
                                       f"see {self.dir}")
                self.pids[daemon[0]] = pid
            end = time.monotonic() + wait
            while time.monotonic() < end:
                p = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True,
                                   text=True, timeout=10)
                if p.returncode == 0 and p.stdout.strip() in ("idle", "mixed", "allocated"):
                    return
                time.sleep(0.5)
            raise RuntimeError(f"local Slurm did not come up in {wait} s; see {self.dir}")
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def log(self, name):
        """The last lines of a daemon's log (for assertion messages)."""
        try:
            with open(os.path.join(self.dir, name)) as fh:
                return "".join(fh.readlines()[-30:])
        except OSError:
            return ""

    def _stepds(self):
        """PIDs of the slurmstepd processes of this instance (found by their SLURM_CONF)."""
        pids = []
        want = b"SLURM_CONF=" + self.conf.encode() + b"\0"
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if not fh.read().startswith(b"slurmstepd"):
                        continue
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if want in fh.read() + b"\0":
                        pids.append(int(pid))
            except OSError:
                pass
        return pids

    def stop(self, keep_logs=False):
        """Cancel the jobs, stop the daemons this instance started (by PID), then any job
        step daemon of this instance that is still there; remove what MPICH left in
        /dev/shm under this instance's job names."""
        if "slurmctld" in self.pids:
            try:
                self._run(["scancel", "-u", "root"], timeout=10)
            except subprocess.TimeoutExpired:
                pass
        pids = [p for p in (self._read_pid("slurmd"), self._read_pid("slurmctld"),
                            *self.pids.values()) if p]
        stepds = self._stepds()
        for pid in set(pids):
            _kill(pid, signal.SIGTERM)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(_alive(p) for p in pids + stepds):
            time.sleep(0.2)
        for pid in set(pids + stepds):
            _kill(pid, signal.SIGKILL)
        self.pids = {}
        self._remove_stale_shm()
        if self.logs:
            for name in ("slurmctld.log", "slurmd.log", "commands.log"):
                try:
                    shutil.copy(os.path.join(self.dir, name), self.logs)
                except OSError:
                    pass
        if not keep_logs:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_stale_shm(self):
        last = self.first_job
        try:
            with open(os.path.join(self.dir, "slurmctld.log")) as fh:
                for line in fh:
                    if "JobId=" in line:
                        num = line.split("JobId=", 1)[1].split()[0].rstrip(",")
                        if num.isdigit():
                            last = max(last, int(num))
        except OSError:
            return
        ours = {f"{mpich_world_id(f'{job}.{step}'):x}" for job in range(self.first_job, last + 1)
                for step in range(8)}
        mapped = _mapped_shm()
        for name in os.listdir("/dev/shm"):
            if (name.startswith(("mpich_shm_", "mpich_vci_")) and name not in mapped
                    and name.split("_")[2] in ours):
                try:
                    os.unlink(os.path.join("/dev/shm", name))
                except OSError:
                    pass


def _alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass
