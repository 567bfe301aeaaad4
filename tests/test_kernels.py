"""Kernels against independent numpy implementations (serial)."""
import numpy as np
import pytest

from mpiml._kernels import sgd

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------ numpy references
def np_scalar(name, p, y, eps=0.1):
    """(loss, dloss) of the scalar losses, written independently with numpy."""
    if name == "squared":
        return 0.5 * (p - y) ** 2, p - y
    if name == "huber":
        r = p - y
        quad = np.abs(r) <= eps
        return (np.where(quad, 0.5 * r * r, eps * (np.abs(r) - 0.5 * eps)),
                np.where(quad, r, eps * np.sign(r)))
    if name == "log":
        z = y * p
        return np.logaddexp(0, -z), -y * (1.0 - 1.0 / (1.0 + np.exp(-z)))
    if name == "hinge":
        z = y * p
        return np.maximum(0, 1 - z), np.where(z < 1, -y, 0.0)
    raise KeyError(name)


def np_multinomial(M, y):
    c = y.astype(int)
    lse = np.log(np.exp(M - M.max(1, keepdims=True)).sum(1)) + M.max(1)
    P = np.exp(M - lse[:, None])
    G = P.copy()
    G[np.arange(len(c)), c] -= 1
    return lse - M[np.arange(len(c)), c], G


KERNEL_LOSS = {"squared": sgd.SquaredLoss, "huber": lambda: sgd.Huber(0.1), "log": sgd.LogLoss,
               "hinge": sgd.Hinge}


# ------------------------------------------------------------------ loss tables
@pytest.mark.parametrize("name,p,y,loss,dloss", [
    ("squared", 3.0, 1.0, 2.0, 2.0),
    ("squared", -1.0, 1.0, 2.0, -2.0),
    ("huber", 0.05, 0.0, 0.00125, 0.05),
    ("huber", 2.0, 0.0, 0.1 * (2.0 - 0.05), 0.1),
    ("huber", -2.0, 0.0, 0.1 * (2.0 - 0.05), -0.1),
    ("log", 0.0, 1.0, np.log(2.0), -0.5),
    ("log", 0.0, -1.0, np.log(2.0), 0.5),
    ("log", 40.0, 1.0, np.exp(-40.0), -np.exp(-40.0)),
    ("log", -40.0, 1.0, 40.0, -1.0),
    ("hinge", 0.5, 1.0, 0.5, -1.0),
    ("hinge", 2.0, 1.0, 0.0, 0.0),
    ("hinge", 0.5, -1.0, 1.5, 1.0),
])
def test_loss_table(name, p, y, loss, dloss):
    obj = KERNEL_LOSS[name]()
    assert obj.py_loss(p, y) == pytest.approx(loss, rel=1e-12, abs=1e-300)
    assert obj.py_dloss(p, y) == pytest.approx(dloss, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("name", sorted(KERNEL_LOSS))
def test_scalar_losses_match_numpy(name):
    p = RNG.normal(scale=5, size=400)
    y = RNG.choice([-1.0, 1.0], size=400) if name in ("log", "hinge") else RNG.normal(size=400)
    loss, g = KERNEL_LOSS[name]().loss_grad(p[:, None], y)
    ref_loss, ref_g = np_scalar(name, p, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g[:, 0], ref_g, rtol=1e-12, atol=1e-14)


def test_multinomial_matches_numpy():
    M = RNG.normal(scale=10, size=(300, 5))
    y = RNG.integers(0, 5, 300).astype(float)
    loss, g = sgd.Multinomial().loss_grad(M, y)
    ref_loss, ref_g = np_multinomial(M, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ minibatch gradients
CASES = [  # (kernel loss, K, how targets are drawn)
    ("squared", 1, "real"), ("huber", 1, "real"), ("log", 1, "pm1"), ("hinge", 1, "pm1"),
    ("hinge", 3, "index"), ("multinomial", 4, "index"),
]


def _problem(K, kind, n=203, d=37, dtype=np.float64):
    X = RNG.normal(size=(n, d)).astype(dtype)
    W = RNG.normal(scale=0.3, size=(K, d))
    b = RNG.normal(size=K)
    if kind == "real":
        y = X.astype(np.float64) @ W[0] + RNG.normal(size=n)
    elif kind == "pm1":
        y = RNG.choice([-1.0, 1.0], size=n)
    else:
        y = RNG.integers(0, K, n).astype(np.float64)
    return X, y, W, b


def _np_batch(name, K, X, y, W, b):
    """Summed loss, dW, db of rows X with numpy (float64)."""
    M = X.astype(np.float64) @ W.T + b
    if name == "multinomial":
        loss, G = np_multinomial(M, y)
    elif K == 1:
        loss, g = np_scalar(name, M[:, 0], y)
        G = g[:, None]
    else:  # one-vs-rest
        T = np.where(y[:, None] == np.arange(K)[None, :], 1.0, -1.0)
        loss, G = np_scalar(name, M, T)
        loss = loss.sum(1)
    return loss.sum(), G.T @ X.astype(np.float64), G.sum(0)


def _engine(name, X, y, K, **kw):
    loss = sgd.Multinomial() if name == "multinomial" else KERNEL_LOSS[name]()
    return sgd.Engine(np.ascontiguousarray(X), y, K, loss, **kw)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("name,K,kind", CASES)
def test_gradient_matches_numpy(name, K, kind, dtype, rtol):
    X, y, W, b = _problem(K, kind, dtype=dtype)
    e = _engine(name, X, y, K)
    e.set_params(np.concatenate([W.ravel(), b]))
    for lo, hi in [(0, X.shape[0]), (5, 71), (17, 18), (40, 40)]:
        e.grad(lo, hi)
        buf = e.buf_arr
        Kd = K * X.shape[1]
        ref_loss, ref_gW, ref_gb = _np_batch(name, K, X[lo:hi], y[lo:hi], W, b)
        scale = max(1.0, np.abs(ref_gW).max())
        np.testing.assert_allclose(buf[:Kd].reshape(K, -1), ref_gW, rtol=rtol, atol=rtol * scale)
        np.testing.assert_allclose(buf[Kd:Kd + K], ref_gb, rtol=rtol, atol=rtol * scale)
        assert buf[-2] == pytest.approx(ref_loss, rel=rtol, abs=1e-12)
        assert buf[-1] == hi - lo


# ------------------------------------------------------------------ the update rule
def _np_update(w, v, gsum, count, K, d, *, eta, penalty, alpha, l1_ratio, momentum, fit_intercept):
    l2 = {"l2": alpha, "elasticnet": alpha * (1 - l1_ratio)}.get(penalty, 0.0)
    l1 = {"l1": alpha, "elasticnet": alpha * l1_ratio}.get(penalty, 0.0)
    w, v = w.copy(), v.copy()
    g = gsum / count
    g[:K * d] += l2 * w[:K * d]
    if not fit_intercept:
        g[K * d:] = 0.0
    if momentum > 0:
        v = momentum * v - eta * g
        w = w + v
    else:
        w = w - eta * g
    wk = w[:K * d]
    w[:K * d] = np.sign(wk) * np.maximum(np.abs(wk) - eta * l1, 0.0)
    return w, v


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("penalty", [None, "l2", "l1", "elasticnet"])
@pytest.mark.parametrize("schedule", ["constant", "invscaling", "optimal"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_update_matches_numpy(dtype, penalty, schedule, momentum):
    K, d = 3, 11
    X, y, W, b = _problem(K, "index", n=60, d=d, dtype=dtype)
    kw = dict(eta0=0.05, alpha=0.01, l1_ratio=0.3, penalty=sgd.PENALTIES[penalty],
              schedule=sgd.SCHEDULES[schedule], power_t=0.5, momentum=momentum,
              fit_intercept=True, optimal_init=50.0)
    e = _engine("multinomial", X, y, K, **kw)
    w = np.concatenate([W.ravel(), b])
    e.set_params(w)
    v = np.zeros_like(w)
    for t in range(1, 6):
        lo, hi = 10 * t, 10 * t + 10
        e.grad(lo, hi)
        gsum, count = e.buf_arr[:-2].copy(), e.buf_arr[-1]
        eta = {"constant": 0.05, "invscaling": 0.05 / t ** 0.5,
               "optimal": 1.0 / (0.01 * (50.0 + t - 1))}[schedule]
        assert e.eta() == pytest.approx(eta, rel=1e-12)
        e.apply()
        w, v = _np_update(w, v, gsum, count, K, d, eta=eta, penalty=penalty, alpha=0.01,
                          l1_ratio=0.3, momentum=momentum, fit_intercept=True)
        np.testing.assert_allclose(e.w_arr, w, rtol=1e-12, atol=1e-14)
    assert e.t == 5


def test_l1_gives_exact_zeros():
    X, y, W, b = _problem(1, "real", n=500, d=30)
    y = X[:, :3] @ np.array([2.0, -1.0, 0.5]) + 0.01 * RNG.normal(size=500)
    e = _engine("squared", X, y, 1, eta0=0.05, alpha=0.05, penalty=sgd.PENALTIES["l1"])
    lo = np.arange(0, 500, 50, dtype=np.intp)
    for _ in range(40):
        e.run_steps(lo, lo + 50)
    w = e.w_arr[:30]
    assert np.all(w[3:] == 0.0)
    assert np.all(np.abs(w[:3]) > 0.3)


def test_penalty_grad_formula():
    w = RNG.normal(size=20)
    np.testing.assert_allclose(sgd.penalty_grad(w, sgd.PENALTIES["elasticnet"], 0.1, 0.25),
                               0.1 * 0.75 * w + 0.1 * 0.25 * np.sign(w))
    np.testing.assert_allclose(sgd.penalty_grad(w, sgd.PENALTIES[None], 0.1, 0.25), 0 * w)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_run_steps_equals_grad_apply_loop(dtype):
    X, y, W, b = _problem(1, "pm1", n=300, d=9, dtype=dtype)
    kw = dict(eta0=0.1, alpha=1e-3, penalty=sgd.PENALTIES["l2"], momentum=0.5)
    a, c = _engine("log", X, y, 1, **kw), _engine("log", X, y, 1, **kw)
    lo = np.array([200, 0, 100, 250, 40], dtype=np.intp)
    hi = np.array([250, 40, 200, 300, 100], dtype=np.intp)
    a.run_steps(lo, hi)
    for i in range(len(lo)):
        c.grad(lo[i], hi[i])
        c.apply()
    np.testing.assert_array_equal(a.w_arr, c.w_arr)
    assert a.epoch_loss == c.epoch_loss and a.epoch_count == c.epoch_count == 300



def test_fused_logistic_rows_equal_the_general_path():
    """float32 rows, one output, logistic loss: a step runs in one compiled loop
    (dense.h mpiml_logistic_step_f: margins of up to 64 rows, several ranges, then their
    loss and gradient). It makes the general path's arithmetic, bit for bit (the general
    path is what a per-row weight of 1 takes), over steps of several ranges of odd
    lengths, and flags a NaN margin the same way."""
    X, y, W, b = _problem(1, "pm1", n=300, d=37, dtype=np.float32)
    kw = dict(eta0=0.1, alpha=1e-3, penalty=sgd.PENALTIES["l2"])
    fused, general = _engine("log", X, y, 1, **kw), _engine("log", X, y, 1, **kw)
    general.set_sample_weight(np.ones(300))
    assert fused.fused and general.fused     # the weights alone select the general path
    lo = np.array([200, 0, 103, 250, 41, 17], dtype=np.intp)
    hi = np.array([250, 17, 200, 300, 103, 41], dtype=np.intp)
    ptr = np.array([0, 2, 3, 6], dtype=np.intp)
    for e in (fused, general):
        e.set_params(np.concatenate([W.ravel(), b]))
        e.set_plan(lo, hi, ptr)
        e.run_plan()
    np.testing.assert_array_equal(fused.w_arr, general.w_arr)
    assert fused.epoch_count == general.epoch_count == 300
    assert fused.epoch_loss == pytest.approx(general.epoch_loss, rel=1e-12)
    assert not fused.margins_bad and not general.margins_bad
    Xbad = X.copy()
    Xbad[123, 5] = np.nan
    for sw in (None, np.ones(300)):
        e = _engine("log", Xbad, y, 1, **kw)
        if sw is not None:
            e.set_sample_weight(sw)
        e.grad(100, 130)
        assert e.margins_bad

def test_empty_batch_is_a_no_op():
    X, y, W, b = _problem(1, "real", n=10, d=4)
    e = _engine("squared", X, y, 1, eta0=0.1)
    e.grad(3, 3)
    e.apply()
    assert e.t == 0 and not e.w_arr.any()


def test_single_precision_logistic_loss_is_accurate():
    """The vectorised float32 exp/log1p used for float32 data agree with numpy."""
    loss = sgd.LogLoss()
    loss.single = True
    p = np.linspace(-80, 80, 200001).astype(np.float32).astype(np.float64)
    y = np.where(np.arange(p.size) % 2, 1.0, -1.0)
    got, g = loss.loss_grad(p[:, None], y)
    ref = np.logaddexp(0, -y * p)
    ref_g = -y / (1 + np.exp(y * p))
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(g[:, 0], ref_g, rtol=2e-6, atol=1e-30)
