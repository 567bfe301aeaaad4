"""The alpha-beta performance model (mpiml.perfmodel), `mpiml bench model`, and the
benchmark suite's smoke run (benchmarks/run.py --suite smoke) at 1, 2 and 3 ranks."""
import json
import math
import os
import sys

import numpy as np
import pytest

from mpiml import perfmodel as pm
from mpiml.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("text,value", [("1.5us", 1.5e-6), ("2 µs", 2e-6), ("0.3ms", 3e-4),
                                        ("4e-6s", 4e-6), ("800ns", 8e-7)])
def test_parse_time(text, value):
    assert pm.parse_time(text) == pytest.approx(value)


@pytest.mark.parametrize("text,value", [("12GB/s", 12e9), ("100Gb/s", 12.5e9),
                                        ("3GiB/s", 3 * 2 ** 30), ("500 MB/s", 5e8)])
def test_parse_bandwidth(text, value):
    assert pm.parse_bandwidth(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["12", "fast", "-3GB/s", "12 GB", "0GB/s"])
def test_bad_bandwidth_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="bandwidth"):
        pm.parse_bandwidth(bad)


def test_allreduce_formula():
    a, bw, n = 2e-6, 10e9, 1 << 20
    assert pm.allreduce_time(n, 1, a, bw) == 0.0
    assert pm.allreduce_time(n, 2, a, bw) == pytest.approx(a + n / bw)
    assert pm.allreduce_time(n, 1024, a, bw) == pytest.approx(10 * a + 2 * 1023 / 1024 * n / bw)
    assert pm.allreduce_time(n, 3, a, bw) == pytest.approx(2 * a + 2 * 2 / 3 * n / bw)


@pytest.mark.parametrize("ranks", [[2], [2, 4, 8, 64]])
def test_fit_recovers_alpha_and_bandwidth(ranks):
    rng = np.random.default_rng(0)
    a, bw = 3e-6, 4e9
    pts = [(n, p, pm.allreduce_time(n, p, a, bw) * (1 + 0.02 * rng.standard_normal()))
           for p in ranks for n in (8, 512, 32768, 1 << 20, 1 << 22)]
    fa, fbw = pm.fit(pts)
    assert fa == pytest.approx(a, rel=0.05) and fbw == pytest.approx(bw, rel=0.05)


def test_fit_needs_two_sizes_on_several_ranks():
    with pytest.raises(ConfigError, match="at least two"):
        pm.fit([(8, 1, 1e-6), (1024, 1, 2e-6)])


def test_fit_compute():
    c0, rate = 5e-6, 2e7
    c0f, ratef = pm.fit_compute([(b, c0 + b / rate) for b in (64, 256, 1024)])
    assert c0f == pytest.approx(c0) and ratef == pytest.approx(rate)
    # one batch size: no constant to fit
    assert pm.fit_compute([(256, 256 / rate)]) == (0.0, pytest.approx(rate))
    # noisy timings where the larger batch timed faster: c0 = 0 and the rate through the origin
    c0f, ratef = pm.fit_compute([(256, 2e-5), (512, 1.9e-5)])
    u = np.array([256 / 2e-5, 512 / 1.9e-5])
    assert c0f == 0.0 and ratef == pytest.approx(u @ u / u.sum())
    assert 256 / 2e-5 < ratef < 512 / 1.9e-5
    with pytest.raises(ConfigError):
        pm.fit_compute([(256, 0.0)])


def test_sync_modes():
    kw = dict(alpha=1e-6, bandwidth=1e10)
    g, w = 8000, 7952
    full = pm.comm_time("allreduce", 64, g, w, **kw)
    assert pm.comm_time("local:8", 64, g, w, **kw) == pytest.approx(
        pm.allreduce_time(w, 64, **kw) / 8)
    assert pm.comm_time("fp16", 64, g, w, **kw) == pytest.approx(pm.allreduce_time(g / 2, 64, **kw))
    assert pm.comm_time("fp16", 64, g, w, **kw) < full
    # one server for 63 workers: the server's share of the traffic bounds the step
    assert pm.comm_time("ps:1", 64, g, w, **kw) == pytest.approx(63 * (g + w) / 1e10)
    with pytest.raises(ConfigError):
        pm.comm_time("ps:4", 4, g, w, **kw)
    with pytest.raises(ConfigError):
        pm.comm_time("bogus", 4, g, w, **kw)


def test_predict_weak_and_strong():
    kw = dict(c0=1e-6, rate=1e7, batch=256, grad_bytes=856, weight_bytes=808, alpha=1.5e-6,
              bandwidth=12e9)
    weak = pm.predict([1, 16, 1024, 4096], **kw)
    assert weak[0]["efficiency"] == 1.0
    effs = [r["efficiency"] for r in weak]
    assert all(x > y for x, y in zip(effs, effs[1:]))
    strong = pm.predict([1, 2, 4], scaling="strong", **kw)
    assert strong[0]["efficiency"] == pytest.approx(1.0)
    assert strong[2]["compute_s"] == pytest.approx(1e-6 + 64 / 1e7)


@pytest.mark.parametrize("model,classes,hidden,dtype", [("logistic", 2, (), "float32"),
                                                        ("softmax", 5, (), "float64"),
                                                        ("mlp", 4, (16, 8), "float32")])
def test_model_bytes_match_what_training_sends(tmp_path, model, classes, hidden, dtype):
    """The gradient buffer the model assumes is the one mpiml reduces each step
    (bytes_per_rank in the run directory's metrics log = steps x buffer bytes)."""
    from mpi4py import MPI

    from mpiml import MLPClassifier, SGDClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 12)).astype(dtype)
    y = rng.integers(0, classes, 1000)
    kw = dict(batch_size=100, max_iter=1, tol=None, random_state=0, comm=MPI.COMM_SELF,
              run_dir=str(tmp_path / "run"))
    if model == "mlp":
        MLPClassifier(hidden_layer_sizes=hidden, **kw).fit(X, y)
    else:
        SGDClassifier(multi_class="multinomial" if model == "softmax" else "auto", **kw).fit(X, y)
    with open(tmp_path / "run" / "metrics.jsonl") as fh:
        rec = [json.loads(line) for line in fh if '"epoch"' in line][0]
    grad, _ = pm.model_bytes(model, 12, classes, hidden, dtype)
    assert rec["bytes_per_rank"] == 10 * grad


# ------------------------------------------------------------------ launched runs
@pytest.mark.launcher
def test_cli_bench_model_matches_the_library(tmp_path):
    from launch import mpirun

    code, out, err, _ = mpirun(2, ["bench", "model", "--ranks", "16,1024", "--alpha", "1.5us",
                                   "--beta", "12GB/s", "--rate", "2e7", "--step-overhead",
                                   "1us", "--model", "softmax", "--classes", "10", "--json"],
                               tmp_path)
    assert code == 0, err
    doc = json.loads(out)
    grad, w = pm.model_bytes("softmax", 100, 10)
    ref = pm.predict([16, 1024], c0=1e-6, rate=2e7, batch=256, grad_bytes=grad,
                     weight_bytes=w, alpha=1.5e-6, bandwidth=12e9)
    for got, want in zip(doc["projection"], ref, strict=True):
        assert got == pytest.approx(want)


@pytest.mark.launcher
def test_cli_bench_model_measures_compute_and_prints_a_table(tmp_path):
    from launch import mpirun

    code, out, err, _ = mpirun(1, ["bench", "model", "--interconnect", "ethernet-10g"], tmp_path)
    assert code == 0, err
    assert "measured here" in out and "4096" in out and "efficiency" in out


@pytest.mark.launcher
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("args,message", [(["--beta", "12"], "bandwidth must be"),
                                          (["--ranks", "16,x"], "--ranks and --hidden"),
                                          (["--sync", "ps:9", "--ranks", "4"], "needs more than"),
                                          (["--interconnect", "carrier-pigeon"],
                                           "unknown interconnect")])
def test_cli_bench_model_bad_input(tmp_path, n, args, message):
    from launch import mpirun, rank_exits

    code, out, err, seconds = mpirun(n, ["bench", "model", "--rate", "1e7"] + args, tmp_path,
                                     wrap=True)
    assert seconds < 30
    assert err.count("mpiml: error:") == 1 and message in err, err
    assert rank_exits(err) == [1] * n


@pytest.mark.launcher
@pytest.mark.parametrize("n", [1, 2, 3])
def test_benchmark_suite_smoke(tmp_path, n):
    import subprocess

    from launch import MPIEXEC, clean_env

    script = os.path.join(REPO, "benchmarks", "run.py")
    p = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", script,
                        "--suite", "smoke", "--out", str(tmp_path / "res")], cwd=tmp_path,
                       env=clean_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    res = tmp_path / "res"
    with open(res / "allreduce.json") as fh:
        ar = json.load(fh)
    assert [r["bytes"] for r in ar["rows"]] == [8, 4096, 262144]
    assert all(r["raw_s"] > 0 and r["mpiml_s"] > 0 for r in ar["rows"])
    with open(res / "scaling.json") as fh:
        sc = json.load(fh)["rows"]
    # every model, both kinds, at 1..n ranks; the split adds up to no more than the epoch
    assert len(sc) == 3 * 2 * n
    for r in sc:
        split = sum(r["split_s_per_epoch"].values())
        assert split <= r["epoch_s"] * 1.05 + 1e-3 and math.isfinite(r["loss"])
    with open(res / "kernel.json") as fh:
        assert json.load(fh)["speedup_over_sklearn"] > 0
    assert (res / "scaling.png").exists() and (res / "allreduce.png").exists()
    if n == 1:
        assert not (res / "model.json").exists()      # alpha and beta need 2+ ranks
        assert "needs the allreduce part on 2+ ranks" in p.stdout
    else:
        with open(res / "model.json") as fh:
            mo = json.load(fh)
        assert len(mo["checks"]) == 3 * 2 * (n - 1)
        assert mo["alpha_s"] >= 0 and mo["bandwidth_Bps"] > 0
        assert (res / "model.png").exists()
