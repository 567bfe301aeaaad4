"""Watch and steer a running 2-rank job through its run directory (mpiml ctl), and
plot it (mpiml plot). The job is a real mpiexec; the commands come from another
process, as a user's would."""
import json
import os
import struct
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.launcher

from launch import MPIEXEC, MPIML, clean_env  # noqa: E402

JOB = os.path.join(os.path.dirname(__file__), "ctl_job.py")


def _start(tmp_path, *extra):
    run = tmp_path / "run"
    p = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", JOB, str(run),
                          str(tmp_path / "model.h5"), *map(str, extra)], env=clean_env(),
                         cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (run / "status.json").exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the job never wrote its status"
        time.sleep(0.1)
    return p, run


def ctl(run, *words, timeout=60):
    r = subprocess.run([MPIML, "ctl", str(run), *map(str, words)], capture_output=True,
                       text=True, env=clean_env(), timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def _finish(p):
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


def _events(run):
    with open(run / "metrics.jsonl") as fh:
        return [json.loads(line) for line in fh if '"event"' in line]


def test_set_then_stop_applies_at_the_same_step_on_every_rank(tmp_path):
    p, run = _start(tmp_path)
    try:
        code, out = ctl(run, "status")
        assert code == 0 and "state         running" in out, out
        code, out = ctl(run, "set", "lr=0.05", "batch_size=32")
        assert code == 0 and out.startswith("applied at step "), out
        time.sleep(1.0)
        code, out = ctl(run, "stop")
        assert code == 0 and "stopping" in out, out
    finally:
        result = _finish(p)
    assert result["stopped_by"].startswith("mpiml ctl stop at step ")
    assert result["n_iter"] < 100000
    # the changes are the fit's live values; the constructor's parameters stay as given
    assert result["live"] == {"eta0": 0.05, "batch_size": 32}
    assert result["eta0"] == 0.01 and result["batch_size"] == 16
    assert [(ch["param"], ch["value"], ch["by"]) for ch in result["changes"]] == \
        [("eta0", 0.05, "ctl"), ("batch_size", 32, "ctl")]
    # lr changed at the same step on both ranks: otherwise their weights would differ
    assert result["identical_on_all_ranks"]
    assert (tmp_path / "model.h5").exists()
    cmds = [e for e in _events(run) if e["event"] == "command"]
    assert [c["command"] for c in cmds] == ["set lr=0.05 batch_size=32", "stop"]
    assert all(c["status"] == "applied" and c["step"] > 0 for c in cmds)
    assert cmds[0]["step"] < cmds[1]["step"]
    assert _events(run)[-1]["stopped_by"] == result["stopped_by"]
    # the change is in the later epochs' records
    epochs = [json.loads(line) for line in open(run / "metrics.jsonl") if '"event"' not in line]
    assert epochs[0]["lr"] == 0.01 and epochs[-1]["lr"] == 0.05
    assert {"compute", "communication", "waiting", "io"} <= set(epochs[-1]["time"])
    assert "val_accuracy" in epochs[-1]


def test_pause_resume_checkpoint_and_rejections(tmp_path):
    p, run = _start(tmp_path)
    try:
        code, out = ctl(run, "pause")
        assert code == 0 and "paused" in out, out
        _, status = ctl(run, "status")
        assert "paused" in status
        step = json.load(open(run / "status.json"))["step"]
        time.sleep(1.5)                                    # nobody moves while paused
        assert json.load(open(run / "status.json"))["step"] == step
        code, out = ctl(run, "pause")
        assert code == 1 and "already paused" in out, out
        code, out = ctl(run, "resume")
        assert code == 0 and "resumed" in out, out
        code, out = ctl(run, "checkpoint")
        assert code == 0 and "checkpoint written" in out, out
        # rejected by ctl itself
        code, out = ctl(run, "set", "lr=-1")
        assert code == 1 and "must be a positive number" in out
        code, out = ctl(run, "set", "batch_size=abc")
        assert code == 1 and "must be a positive integer" in out
        # rejected by the job: files that bypass ctl
        for name, text in [("a-malformed", "{not json"), ("b-badvalue",
                           '{"command": ["set", "lr=-1"]}'), ("c-unknown", '{"command": ["jump"]}')]:
            with open(run / "control" / f"{name}.json", "w") as fh:
                fh.write(text)
        deadline = time.monotonic() + 30
        while len(list((run / "responses").glob("[abc]-*.json"))) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        reasons = {f.name: json.load(open(f))["message"] for f in (run / "responses").glob("[abc]-*")}
        assert "malformed" in reasons["a-malformed.json"]
        assert "must be a positive number" in reasons["b-badvalue.json"]
        assert "unknown command" in reasons["c-unknown.json"]
        code, out = ctl(run, "status")
        assert "running" in out                            # the run went on
        code, out = ctl(run, "stop")
        assert code == 0
    finally:
        result = _finish(p)
    assert result["identical_on_all_ranks"]
    # the mid-run checkpoint is loadable and resumable
    from mpiml.checkpoint import read_checkpoint
    from mpi4py import MPI
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.h5"))
    assert len(ckpts) == 2                                 # the command's and the final one
    state, arrays = read_checkpoint(str(ckpts[0]), comm=MPI.COMM_SELF)
    assert 0 < state["t"] and arrays["w"].shape == (11,)
    cmds = [e for e in _events(run) if e["event"] == "command"]
    assert [c["status"] for c in cmds if c["command"] in ("pause", "resume", "checkpoint")] == \
        ["applied", "rejected", "applied", "applied"]


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_plot_of_a_real_run(tmp_path):
    p, run = _start(tmp_path)
    try:
        time.sleep(2.0)
        ctl(run, "set", "lr=0.02")
        time.sleep(0.5)
        ctl(run, "stop")
    finally:
        _finish(p)
    out = tmp_path / "run.png"
    r = subprocess.run([MPIML, "plot", str(run), "--out", str(out)], capture_output=True,
                       text=True, env=clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert _png_size(out) == (1200, 800) and out.stat().st_size > 20000
    r = subprocess.run([MPIML, "plot", str(tmp_path), "--out", str(out)], capture_output=True,
                       text=True, env=clean_env(), timeout=120)
    assert r.returncode == 1 and "no metrics log" in r.stderr


def test_a_pause_longer_than_the_watchdog_timeout_is_not_a_hang(tmp_path):
    p, run = _start(tmp_path, 2.0)                        # --comm-timeout 2 s
    try:
        assert ctl(run, "pause")[0] == 0
        time.sleep(5.0)
        assert p.poll() is None                            # the watchdog did not end it
        assert ctl(run, "resume")[0] == 0
        time.sleep(0.5)
        assert ctl(run, "stop")[0] == 0
    finally:
        result = _finish(p)
    assert result["identical_on_all_ranks"]
