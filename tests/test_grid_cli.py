"""The 2-D process grid through the command line: 4 ranks as 2 data-parallel x 2
model-parallel (oversubscribed on small machines, so the problems are tiny)."""
import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.launcher

from launch import mpirun, rank_exits  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("grid")
    code, _, err, _ = mpirun(1, ["make-data", "--task", "multiclass", "--classes", 5, "--rows",
                                 1200, "--features", 7, "--seed", 4, "--dtype", "float64",
                                 "--out", d / "mc.h5"], d)
    assert code == 0, err
    return d


@pytest.mark.parametrize("model,shard", [("softmax", "classes"), ("softmax", "features"),
                                         ("hinge", "features")])
def test_2x2_grid_gives_the_one_rank_model(data, tmp_path, model, shard):
    common = ["train", "--data", data / "mc.h5", "--model", model, "--epochs", 2,
              "--batch-size", 64, "--lr", 0.05, "--momentum", 0.5, "--quiet"]
    code, out, err, _ = mpirun(1, common + ["--out", tmp_path / "one.h5"], tmp_path)
    assert code == 0, err
    code, out, err, _ = mpirun(4, common + ["--model-parallel", 2, "--shard", shard,
                                            "--out", tmp_path / "grid.h5"], tmp_path, timeout=120)
    assert code == 0, err
    assert f"4 ranks = 2 data-parallel x 2 model-parallel ({shard})" in out
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "grid.h5") as b:
        np.testing.assert_allclose(b["coef"][()], a["coef"][()], rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(b["intercept"][()], a["intercept"][()], rtol=1e-8, atol=1e-12)
    # predictions of the saved model: one rank, and 4 ranks holding it split 2 ways
    for n, k in ((1, 1), (4, 2)):
        code, _, err, _ = mpirun(n, ["predict", "--model", tmp_path / "grid.h5", "--data",
                                     data / "mc.h5", "--out", tmp_path / f"p{n}.h5",
                                     "--model-parallel", k], tmp_path, timeout=120)
        assert code == 0, err
    with h5py.File(tmp_path / "p1.h5") as a, h5py.File(tmp_path / "p4.h5") as b:
        np.testing.assert_array_equal(a["pred"][()], b["pred"][()])


def test_mlp_on_a_2x2_grid_gives_the_one_rank_model(data, tmp_path):
    common = ["train", "--data", data / "mc.h5", "--model", "mlp", "--hidden", "9,5",
              "--epochs", 2, "--batch-size", 64, "--solver", "sgd", "--lr", 0.05, "--quiet"]
    code, _, err, _ = mpirun(1, common + ["--out", tmp_path / "one.h5"], tmp_path)
    assert code == 0, err
    code, out, err, _ = mpirun(4, common + ["--model-parallel", 2, "--out", tmp_path / "grid.h5"],
                               tmp_path, timeout=120)
    assert code == 0, err
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "grid.h5") as b:
        for name in ("coef_0", "intercept_0", "coef_1", "coef_2", "intercept_2"):
            np.testing.assert_allclose(b[name][()], a[name][()], rtol=1e-8, atol=1e-12)
    code, out, err, _ = mpirun(3, ["score", "--model", tmp_path / "grid.h5", "--data",
                                   data / "mc.h5", "--json"], tmp_path, timeout=120)
    assert code == 0 and '"accuracy"' in out, err


def test_dry_run_prints_the_layout(data, tmp_path):
    code, out, err, _ = mpirun(4, ["train", "--data", data / "mc.h5", "--model", "logistic",
                                   "--model-parallel", 2, "--out", tmp_path / "m.h5",
                                   "--dry-run"], tmp_path, timeout=120)
    assert code == 0, err
    assert "4 rank(s) = 2 data-parallel x 2 model-parallel" in out
    assert "shard 1: ranks [1, 3] share it" in out
    assert "rank 3: rows 600:1200, features 4:7 of 7" in out
    assert not (tmp_path / "m.h5").exists()
    code, out, err, _ = mpirun(2, ["train", "--data", data / "mc.h5", "--model", "mlp",
                                   "--hidden", "4096,4096", "--model-parallel", 2, "--out",
                                   tmp_path / "m.h5", "--dry-run"], tmp_path, timeout=120)
    assert code == 0, err
    assert "rank 1: rows 0:1200, hidden units 2048:4096 of 4096, 2048:4096 of 4096" in out


@pytest.mark.parametrize("n,k,message", [
    (2, 3, "model_parallel=3 needs at least 3 ranks; the job has 2"),
    (3, 2, "model_parallel=2 does not divide the 3 ranks of the job"),
])
def test_bad_model_parallel_one_message_every_rank_fails(data, tmp_path, n, k, message):
    code, out, err, secs = mpirun(n, ["train", "--data", data / "mc.h5", "--model", "softmax",
                                      "--model-parallel", k, "--out", tmp_path / "m.h5"],
                                  tmp_path, wrap=True)
    assert err.count(message) == 1, err          # printed once, by rank 0
    assert rank_exits(err) == [1] * n, err       # and every rank exits 1
    assert not (tmp_path / "m.h5").exists()


def test_signal_on_one_rank_of_the_grid_stops_every_rank_at_the_same_step(data, tmp_path):
    """SIGUSR1 reaches rank 3 only (data replica 1, model shard 1): the stop request
    travels through its data group's Allreduce and the model group's flag reduction,
    so all 4 ranks checkpoint the same update and exit 75; resuming on 1 rank gives
    the uninterrupted model."""
    from launch import clean_env
    common = ["train", "--data", data / "mc.h5", "--model", "softmax", "--epochs", 3,
              "--batch-size", 64, "--lr", 0.05, "--momentum", 0.5, "--quiet"]
    ck = tmp_path / "ck"
    env = clean_env(MPIML_TEST_SIGNAL="3:25:SIGUSR1")
    code, _, err, _ = mpirun(4, common + ["--model-parallel", 2, "--checkpoint-dir", ck,
                                          "--out", tmp_path / "m.h5"], tmp_path, timeout=120,
                             wrap=True, env=env)
    assert rank_exits(err) == [75] * 4, err
    assert sorted(p.name for p in ck.iterdir()) == ["ckpt-000000000026.h5"]
    code, _, err, _ = mpirun(1, common + ["--resume", ck, "--out", tmp_path / "m.h5"], tmp_path)
    assert code == 0, err
    code, _, err, _ = mpirun(1, common + ["--out", tmp_path / "ref.h5"], tmp_path)
    assert code == 0, err
    with h5py.File(tmp_path / "m.h5") as a, h5py.File(tmp_path / "ref.h5") as b:
        np.testing.assert_allclose(a["coef"][()], b["coef"][()], rtol=1e-8, atol=1e-12)


def test_watchdog_ends_a_grid_job_with_a_stopped_rank(data, tmp_path):
    from launch import clean_env
    env = clean_env(MPIML_TEST_SIGNAL="2:10:SIGSTOP")
    code, _, err, seconds = mpirun(4, ["train", "--data", data / "mc.h5", "--model", "mlp",
                                       "--hidden", 8, "--epochs", 50, "--batch-size", 64,
                                       "--model-parallel", 2, "--comm-timeout", 3, "--quiet",
                                       "--out", tmp_path / "m.h5"], tmp_path, timeout=120, env=env)
    assert code == 70, err
    assert err.count("mpiml: watchdog:") == 1
    assert "not answering (stopped, or hung outside MPI): rank 2\n" in err, err
    assert seconds < 3 + 20


@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_saved_with_2_way_split_predicts_identically_at_1_and_3_ranks(data, tmp_path, model):
    code, _, err, _ = mpirun(2, ["train", "--data", data / "mc.h5", "--model", model,
                                 "--hidden", 6, "--epochs", 2, "--model-parallel", 2, "--quiet",
                                 "--out", tmp_path / "m.h5"], tmp_path)
    assert code == 0, err
    preds = []
    for n, k in ((1, 1), (3, 1), (3, 3)):
        out = tmp_path / f"p{n}{k}.h5"
        code, _, err, _ = mpirun(n, ["predict", "--model", tmp_path / "m.h5", "--data",
                                     data / "mc.h5", "--out", out, "--proba",
                                     "--model-parallel", k], tmp_path, timeout=120)
        assert code == 0, err
        with h5py.File(out) as f:
            preds.append((f["pred"][()], f["proba"][()]))
    for pred, proba in preds[1:]:
        np.testing.assert_array_equal(pred, preds[0][0])
        np.testing.assert_allclose(proba, preds[0][1], rtol=1e-12, atol=1e-15)
