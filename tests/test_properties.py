"""Property-based tests of the kernels (hypothesis; serial, no deadline).

For finite inputs: the loss and its gradient are finite, the loss is >= 0, and
the kernel's gradient matches central finite differences of its own loss.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpiml._kernels import sgd

LOSSES = {"squared": sgd.SquaredLoss, "huber": lambda: sgd.Huber(0.3), "log": sgd.LogLoss,
          "hinge": sgd.Hinge, "multinomial": sgd.Multinomial}
finite = st.floats(-20, 20, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def problems(draw):
    name = draw(st.sampled_from(sorted(LOSSES)))
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 6))
    K = draw(st.integers(2, 4)) if name == "multinomial" else 1
    X = draw(arrays(np.float64, (n, d), elements=finite))
    W = draw(arrays(np.float64, (K, d), elements=st.floats(-2, 2, width=64)))
    b = draw(arrays(np.float64, (K,), elements=st.floats(-2, 2, width=64)))
    if name == "multinomial":
        y = draw(arrays(np.float64, (n,), elements=st.integers(0, K - 1).map(float)))
    elif name in ("log", "hinge"):
        y = draw(arrays(np.float64, (n,), elements=st.sampled_from([-1.0, 1.0])))
    else:
        y = draw(arrays(np.float64, (n,), elements=finite))
    return name, X, y, W, b


def _loss_and_grad(name, X, y, W, b):
    K = W.shape[0]
    e = sgd.Engine(np.ascontiguousarray(X), y, K, LOSSES[name]())
    e.set_params(np.concatenate([W.ravel(), b]))
    e.grad(0, X.shape[0])
    return e.buf_arr[-2], e.buf_arr[:-2].copy()


@settings(deadline=None, max_examples=200)
@given(problems())
def test_loss_finite_nonnegative_gradient_matches_finite_differences(problem):
    name, X, y, W, b = problem
    loss, grad = _loss_and_grad(name, X, y, W, b)
    assert np.isfinite(loss) and loss >= 0.0
    assert np.all(np.isfinite(grad))
    theta = np.concatenate([W.ravel(), b])
    K, d = W.shape
    h = 1e-6
    for j in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[j] += h
        tm[j] -= h
        lp = _loss_and_grad(name, X, y, tp[:K * d].reshape(K, d), tp[K * d:])[0]
        lm = _loss_and_grad(name, X, y, tm[:K * d].reshape(K, d), tm[K * d:])[0]
        fd = (lp - lm) / (2 * h)
        # the hinge and Huber kinks: finite differences straddling a kink are one-sided
        if name in ("hinge", "huber") and abs(fd - grad[j]) > 1e-4 * max(1, abs(fd)):
            margins = X @ W.T + b
            kink = 1.0 if name == "hinge" else 0.3
            r = margins[:, 0] * y if name == "hinge" else margins[:, 0] - y
            if np.min(np.abs(np.abs(r) - kink)) < 1e-4 * (1 + np.abs(X).max() * 10):
                continue
        assert fd == pytest.approx(grad[j], rel=1e-4, abs=1e-5 * max(1.0, abs(loss)))


@settings(deadline=None, max_examples=100)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-700, 700, width=64)))
def test_logistic_loss_is_stable_at_extreme_margins(p):
    y = np.where(np.arange(p.size) % 2, 1.0, -1.0)
    for single in (False, True):
        loss = sgd.LogLoss()
        loss.single = single
        values, g = loss.loss_grad(p[:, None], y)
        assert np.all(np.isfinite(values)) and np.all(values >= 0)
        assert np.all(np.abs(g) <= 1.0)
