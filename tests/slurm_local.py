"""A single-node Slurm for the tests (started from a plain pytest process).

Needs the Debian packages slurmctld, slurmd and slurm-client (`.ci/run` installs
them when it runs as root with apt-get) and root; otherwise the Slurm tests are
skipped with the reason.
"""
import os
import shutil
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
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def unavailable():
    """Why a local Slurm cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "a local Slurm needs root"
    for tool in ("slurmctld", "slurmd", "srun", "sinfo", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install slurmctld slurmd slurm-client)"
    return None


class LocalSlurm:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mpiml-slurm-")
        os.makedirs(os.path.join(self.dir, "state"))
        os.makedirs(os.path.join(self.dir, "spool"))
        self.conf = os.path.join(self.dir, "slurm.conf")
        host = socket.gethostname().split(".")[0]
        with open(self.conf, "w") as fh:
            fh.write(CONF.format(host=host, d=self.dir, cpus=os.cpu_count(), port=16817,
                                 port2=16818))
        self.env = dict(os.environ, SLURM_CONF=self.conf)

    def start(self, wait=30):
        subprocess.run(["slurmctld", "-c", "-i"], env=self.env, check=True)
        subprocess.run(["slurmd"], env=self.env, check=True)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            p = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True,
                               text=True)
            if p.returncode == 0 and p.stdout.strip() in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"local Slurm did not come up; see {self.dir}")

    def stop(self):
        for name in ("slurmd.pid", "slurmctld.pid"):
            try:
                with open(os.path.join(self.dir, name)) as fh:
                    os.kill(int(fh.read().strip()), 15)
            except (OSError, ValueError):
                pass
        time.sleep(0.5)
        shutil.rmtree(self.dir, ignore_errors=True)
