"""``SGDClassifier`` / ``SGDRegressor`` with an exact solver (``solver="lbfgs" | "owlqn" |
"newton-cg" | "hybrid"``): the optimum of the SGD objective ``(1/n) sum_i s_i loss_i +
alpha R(w)`` against independent references (scikit-learn's LogisticRegression with
``C = 1 / (alpha n)``, Ridge with ``alpha n``, Lasso with ``alpha``, a scipy solution of
the fixed-epsilon Huber objective), hosted by the fit session: checkpoints, resume
mid-solve (bitwise at the same rank count), signals, run directory, operator mistakes.
MPI tests run at 1, 2 and 3 ranks (``--only-mpi``); the others launch ``mpiexec``.
"""
import json
import os
import warnings

import h5py
import numpy as np
import pytest
from launch import clean_env, make_binary, mpirun
# the data, the uneven row split and the comparisons of the exact estimators' tests
from test_exact_solvers import TIGHT, _binary, _close, _huber_reference, _multi, _regression, _uneven
from mpi4py import MPI
from sklearn import linear_model as sk

from mpiml import SGDClassifier, SGDRegressor
from mpiml.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

def _flat(est):
    return np.append(np.ravel(est.coef_), est.intercept_)


def _sk_logistic(X, y, alpha, **kw):
    ref = sk.LogisticRegression(C=1.0 / (alpha * len(y)), tol=1e-12, max_iter=10000, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ref.fit(X, y)


# ------------------------------------------------------------------ against references
@pytest.mark.mpi
@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg", "hybrid"])
def test_binary_logistic_reaches_scikit_learns_optimum(comm, solver):
    X, y = _binary()
    Xl, yl = _uneven(comm, X, y)
    got = SGDClassifier(alpha=0.01, solver=solver, **TIGHT).fit(Xl, yl)
    ref = _sk_logistic(X, y, 0.01)
    _close(_flat(got), np.append(ref.coef_, ref.intercept_))
    assert got.solver_status_ == "converged" and got.n_iter_ == len(got.loss_curve_)


@pytest.mark.mpi
@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
def test_softmax_reaches_scikit_learns_multinomial_optimum(comm, solver):
    X, y = _multi()
    Xl, yl = _uneven(comm, X, y)
    got = SGDClassifier(alpha=0.003, solver=solver, **TIGHT).fit(Xl, yl)
    ref = _sk_logistic(X, y, 0.003)
    # the softmax is invariant to a common shift: compare centred parameters
    a, b = np.column_stack([got.coef_, got.intercept_]), np.column_stack([ref.coef_,
                                                                          ref.intercept_])
    _close(a - a.mean(axis=0), b - b.mean(axis=0))
    np.testing.assert_array_equal(got.predict(Xl), ref.predict(Xl))


@pytest.mark.mpi
def test_weights_reach_scikit_learns_weighted_optimum(comm):
    X, y = _binary(seed=3)
    sw = np.random.default_rng(4).uniform(0.2, 3.0, size=len(y))
    Xl, yl, swl = _uneven(comm, X, y, sw)
    got = SGDClassifier(alpha=0.01, solver="lbfgs", class_weight={0: 2.0, 1: 0.5},
                        **TIGHT).fit(Xl, yl, sample_weight=swl)
    ref = _sk_logistic(X, y, 0.01, class_weight={0: 2.0, 1: 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X, y, sample_weight=sw)
    _close(_flat(got), np.append(ref.coef_, ref.intercept_))


@pytest.mark.mpi
@pytest.mark.parametrize("solver", ["lbfgs", "newton-cg"])
def test_squared_error_reaches_ridges_optimum(comm, solver):
    X, y = _regression()
    Xl, yl = _uneven(comm, X, y)
    got = SGDRegressor(alpha=0.02, solver=solver, **TIGHT).fit(Xl, yl)
    ref = sk.Ridge(alpha=0.02 * len(y), tol=1e-14).fit(X, y)
    _close(_flat(got), np.append(ref.coef_, ref.intercept_))


@pytest.mark.mpi
@pytest.mark.parametrize("solver", ["owlqn", "hybrid"])
def test_l1_reaches_the_lassos_optimum_with_its_exact_zeros(comm, solver):
    """(1/n) sum r^2 / 2 + alpha |w|_1 is scikit-learn's Lasso objective."""
    X, y = _regression(d=10, seed=5)
    X[:, 6:] *= 0.05                     # weak features the penalty zeroes
    Xl, yl = _uneven(comm, X, y)
    got = SGDRegressor(penalty="l1", alpha=0.05, solver=solver, **TIGHT).fit(Xl, yl)
    ref = sk.Lasso(alpha=0.05, tol=1e-14, max_iter=100000).fit(X, y)
    assert np.any(ref.coef_ == 0) and np.any(ref.coef_ != 0)
    np.testing.assert_array_equal(got.coef_ == 0, ref.coef_ == 0)
    _close(_flat(got), np.append(ref.coef_, ref.intercept_))


@pytest.mark.mpi
def test_huber_reaches_the_scipy_optimum(comm):
    X, y = _regression(seed=9, outliers=True)
    Xl, yl = _uneven(comm, X, y)
    got = SGDRegressor(loss="huber", epsilon=0.5, alpha=0.01, solver="lbfgs",
                       **TIGHT).fit(Xl, yl)
    _close(_flat(got), _huber_reference(X, y, 0.5, 0.01))


@pytest.mark.mpi
def test_any_rank_count_gives_the_same_model(comm):
    X, y = _multi(seed=6)
    Xl, yl = _uneven(comm, X, y)
    world = SGDClassifier(alpha=0.003, solver="lbfgs", **TIGHT).fit(Xl, yl)
    single = SGDClassifier(alpha=0.003, solver="lbfgs", comm=MPI.COMM_SELF, **TIGHT).fit(X, y)
    np.testing.assert_allclose(world.coef_, single.coef_, rtol=1e-8, atol=1e-10)
    flat = _flat(world)
    assert all(np.array_equal(flat, other) for other in comm.allgather(flat))


@pytest.mark.mpi
def test_validation_never_changes_the_solve(comm):
    X, y = _binary(seed=7)
    Xl, yl = _uneven(comm, X, y)
    plain = SGDClassifier(alpha=0.01, solver="lbfgs", **TIGHT).fit(Xl, yl)
    seen = []

    class Record:
        def on_epoch_end(self, est, logs):
            seen.append(logs)
            return False

    watched = SGDClassifier(alpha=0.01, solver="lbfgs", **TIGHT).fit(
        Xl, yl, validation=(Xl[::2], yl[::2]), callbacks=[Record()])
    assert np.array_equal(_flat(plain), _flat(watched))
    assert [r["iteration"] for r in seen] == list(range(1, plain.n_iter_))
    assert all("val_accuracy" in r and r["grad_max"] >= 0 for r in seen)
    assert plain.loss_curve_ == watched.loss_curve_


@pytest.mark.mpi
def test_a_callback_stops_the_solve_on_every_rank(comm):
    X, y = _binary(seed=8)
    Xl, yl = _uneven(comm, X, y)

    class StopAt3:
        reason = "test callback"

        def on_epoch_end(self, est, logs):
            return logs["iteration"] >= 3

    got = SGDClassifier(alpha=0.01, solver="lbfgs", **TIGHT).fit(Xl, yl, callbacks=[StopAt3()])
    assert got.n_iter_ == 3 and got.solver_status_ == "stopped"
    assert got.stopped_by_ == "test callback"


# ------------------------------------------------------------------ parameters
def test_exact_solver_settings_are_checked():
    X, y = _binary(n=40)
    for est, said in [
        (SGDClassifier(loss="hinge", solver="lbfgs"), "smooth loss"),
        (SGDClassifier(penalty="l1", solver="lbfgs"), "needs solver='owlqn'"),
        (SGDClassifier(solver="lbfgs", sync="local:4"), "sync, compress and overlap"),
        (SGDClassifier(solver="cg"), "unknown solver"),
    ]:
        with pytest.raises(ConfigError, match=said):
            est.fit(X, y)
    # partial_fit makes SGD epochs: absent with an exact solver (as scikit-learn's MLP
    # with lbfgs), present with sgd
    assert not hasattr(SGDClassifier(solver="lbfgs"), "partial_fit")
    assert hasattr(SGDClassifier(), "partial_fit")


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_binary(tmp_path_factory.mktemp("solve"), 3000, 11, features=12)


SOLVE = ["--model", "logistic", "--solver", "lbfgs", "--alpha", "0.001", "--tol", "1e-9",
         "--quiet", "--progress", "none"]


def _train(n, data, out, *extra, env=None):
    return mpirun(n, ["train", "--data", data / "train.h5", "--out", out] + SOLVE +
                  [str(a) for a in extra], data, env=env)


def _coef(path):
    with h5py.File(path, "r") as f:
        return f["coef"][()], f["intercept"][()]


def test_resume_mid_solve_gives_the_same_model_bit_for_bit(data, tmp_path):
    """A signal after iteration 4 checkpoints the whole solver state (point, gradient,
    L-BFGS memory) and exits 75; the resumed run at the same rank count ends with the
    uninterrupted run's model, bit for bit; at another rank count, to summation order."""
    code, _, err, _ = _train(2, data, tmp_path / "ref.h5")
    assert code == 0, err
    ck = tmp_path / "ck"
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                             env=clean_env(MPIML_TEST_SIGNAL="1:4:SIGUSR1"))
    assert code == 75, err
    assert "stopped by a signal" in err and "Traceback" not in err
    assert not (tmp_path / "m.h5").exists()
    (saved,) = os.listdir(ck)
    with h5py.File(ck / saved, "r") as f:
        assert f.attrs["n_iter"] == 5 and f["solver_s"].shape[0] == 5
    code, out, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                               "--resume", ck)
    assert code == 0, err
    ref = _coef(tmp_path / "ref.h5")
    got = _coef(tmp_path / "m.h5")
    assert all(np.array_equal(a, b) for a, b in zip(ref, got)), (ref, got)
    # the same checkpoint resumed at 3 ranks: the same optimum to summation order
    ck3 = tmp_path / "ck3"
    code, _, err, _ = _train(2, data, tmp_path / "m3.h5", "--checkpoint-dir", ck3,
                             env=clean_env(MPIML_TEST_SIGNAL="0:4:SIGUSR1"))
    assert code == 75, err
    code, _, err, _ = _train(3, data, tmp_path / "m3.h5", "--checkpoint-dir", ck3,
                             "--resume", ck3)
    assert code == 0, err
    np.testing.assert_allclose(_coef(tmp_path / "m3.h5")[0], ref[0], rtol=1e-7)


def test_run_directory_records_every_iteration(data, tmp_path):
    run = tmp_path / "run"
    code, out, err, _ = _train(2, data, tmp_path / "m.h5", "--run-dir", run)
    assert code == 0, err
    assert "solved by lbfgs" in out
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    its = [r for r in lines if "iteration" in r]
    end = [r for r in lines if r.get("event") == "end"]
    assert [r["iteration"] for r in its] == list(range(1, len(its) + 1))
    assert all(b["loss"] <= a["loss"] for a, b in zip(its, its[1:]))     # a descent method
    assert end and end[0]["status"] == "converged"
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    assert os.listdir(run / "checkpoints")           # the final state, resumable


@pytest.mark.parametrize("extra,said", [
    (["--model", "mlp", "--solver", "lbfgs"], "--solver lbfgs is not a solver of --model mlp"),
    (["--model", "hinge", "--solver", "owlqn"], "needs a smooth loss"),
    (["--model", "logistic", "--max-iter", "5"], "--max-iter counts the iterations"),
    (["--model", "logistic", "--solver", "newton-cg", "--penalty", "l1"], "needs solver='owlqn'"),
])
def test_operator_mistakes_get_one_message(data, tmp_path, extra, said):
    code, out, err, _ = mpirun(2, ["train", "--data", data / "train.h5", "--out",
                                   tmp_path / "m.h5", "--quiet"] + extra, data)
    assert code != 0 and said in err, err
    assert "Traceback" not in err and err.count("mpiml: error") == 1, err
    assert not (tmp_path / "m.h5").exists()


def test_resuming_with_another_solver_is_refused(data, tmp_path):
    ck = tmp_path / "ck"
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck)
    assert code == 0, err
    before = sorted((p.name, p.read_bytes()) for p in ck.iterdir())
    code, _, err, _ = mpirun(2, ["train", "--data", data / "train.h5", "--out",
                                 tmp_path / "m2.h5", "--model", "logistic", "--quiet",
                                 "--checkpoint-dir", ck, "--resume", ck], data)
    assert code != 0 and "made with solver='lbfgs' (here 'sgd')" in err, err
    assert "Traceback" not in err
    assert sorted((p.name, p.read_bytes()) for p in ck.iterdir()) == before


def test_a_damaged_solver_state_is_refused(data, tmp_path):
    ck = tmp_path / "ck"
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                             env=clean_env(MPIML_TEST_SIGNAL="0:3:SIGUSR1"))
    assert code == 75, err
    (saved,) = os.listdir(ck)
    with h5py.File(ck / saved, "r+") as f:
        s = f["solver_s"][()]
        del f["solver_s"]
        f["solver_s"] = -s                     # pairs with s.y < 0
    code, _, err, _ = _train(2, data, tmp_path / "m.h5", "--checkpoint-dir", ck,
                             "--resume", ck)
    assert code != 0 and "solver state is damaged" in err, err
    assert "Traceback" not in err and not (tmp_path / "m.h5").exists()


@pytest.mark.mpi
def test_ctl_commands_during_a_solve(comm, shared_tmp):
    """`mpiml ctl` reaches a solve through the control words of its reductions: `set`
    is rejected (the objective stays fixed), `checkpoint` writes one at that iteration,
    and neither changes the result."""
    from mpiml.runctl import _atomic_json
    X, y = _binary(seed=12)
    Xl, yl = _uneven(comm, X, y)
    plain = SGDClassifier(alpha=0.01, solver="lbfgs", **TIGHT).fit(Xl, yl)
    run = os.path.join(shared_tmp, "run")
    ids = []

    class Send:
        def on_epoch_end(self, est, logs):
            if logs["iteration"] == 2:
                if comm.rank == 0:
                    for i, words in enumerate((["set", "alpha=0.1"], ["checkpoint"])):
                        ids.append(f"0000000000000000000{i}-test")
                        _atomic_json(os.path.join(run, "control", f"{ids[-1]}.json"),
                                     {"id": ids[-1], "command": words})
                import time
                time.sleep(0.3)            # past rank 0's poll interval
            return False

    steered = SGDClassifier(alpha=0.01, solver="lbfgs", run_dir=run, **TIGHT).fit(
        Xl, yl, callbacks=[Send()])
    assert np.array_equal(_flat(plain), _flat(steered))
    if comm.rank == 0:
        answers = [json.load(open(os.path.join(run, "responses", f"{i}.json"))) for i in ids]
        assert answers[0]["status"] == "rejected" and "no live hyper-parameters" in \
            answers[0]["message"]
        assert answers[1]["status"] == "applied"
        # the checkpoint the command asked for, beside the final one
        assert len(os.listdir(os.path.join(run, "checkpoints"))) == 2


@pytest.mark.mpi
@pytest.mark.parametrize("solver", ["lbfgs", "hybrid"])
def test_scaled_features_reach_the_optimum_on_standardized_rows(comm, solver):
    """scaler="standard": the solve runs on globally standardized rows (and the hybrid's
    SGD epoch on the same rows), as scikit-learn on StandardScaler's output."""
    from sklearn.preprocessing import StandardScaler
    X, y = _binary(n=401, seed=13)
    X = X * [1.0, 10.0, 100.0, 0.1, 1.0] + 5.0
    Xl, yl = _uneven(comm, X, y)
    got = SGDClassifier(alpha=1e-3, solver=solver, scaler="standard", **TIGHT).fit(Xl, yl)
    Xs = StandardScaler().fit_transform(X)
    ref = _sk_logistic(Xs, y, 1e-3)
    _close(_flat(got), np.append(ref.coef_, ref.intercept_))
    np.testing.assert_array_equal(got.predict(Xl), ref.predict(_uneven(comm, Xs)[0]))
