"""Exact full-batch solvers for smooth convex objectives: L-BFGS, OWL-QN, Newton-CG.

The solvers see an objective only through ``fun(x) -> (f, g)`` (and ``hessp(x, v)`` for
Newton-CG). :class:`mpiml.models.glm.Objective` makes each of those calls one read of this
rank's rows and one packed ``Allreduce``; every other step here -- the two-loop
recursion, the line search, the stopping tests -- works on the reduced values only, so
it runs identically on every rank and no rank ever broadcasts a decision.

Stopping (the rule scipy's L-BFGS-B applies for scikit-learn's ``lbfgs``):

* ``max |g_i| <= tol`` -- ``g`` the gradient (L-BFGS, Newton-CG) or the pseudo-gradient
  (OWL-QN: the steepest-descent direction of the L1-penalised objective, zero where a
  coefficient is at zero and the penalty dominates); or
* ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= 64 * machine epsilon``
  (no more progress to be made in float64); or
* the line search finds no acceptable step: reported as not converged, as scipy does
  (L-BFGS first drops its curvature pairs and tries once more along the steepest
  descent); or ``max_iter`` iterations.

The line search takes strong-Wolfe steps, and also Hager & Zhang's approximate-Wolfe
steps where the decrease is below the rounding of ``f`` (:func:`_within_rounding`): a
gradient tolerance the loss alone cannot resolve is still reached.
"""
from collections import deque, namedtuple

import numpy as np

__all__ = ["FTOL", "Result", "lbfgs", "newton_cg", "owlqn"]

# the relative loss change below which an iteration counts as no progress (scipy's
# L-BFGS-B ftol as scikit-learn sets it)
FTOL = 64 * np.finfo(np.float64).eps

# x: the solution; f: its objective; n_iter: iterations made; status: "converged",
# "max_iter" or "line_search"; n_evals: function/gradient evaluations (Allreduces)
Result = namedtuple("Result", "x f n_iter status n_evals")


class _AtPoint:
    """``v -> hessp(x, v)`` at a fixed ``x``."""

    def __init__(self, hessp, x):
        self.hessp, self.x = hessp, x

    def __call__(self, v):
        return self.hessp(self.x, v)


class _Counted:
    """``fun`` with a count of its calls."""

    def __init__(self, fun):
        self.fun, self.calls = fun, 0

    def __call__(self, x):
        self.calls += 1
        return self.fun(x)


def _no_progress(f_old, f_new):
    return f_old - f_new <= FTOL * max(abs(f_old), abs(f_new), 1.0)


def _two_loop(g, memory):
    """H g for the L-BFGS inverse-Hessian approximation of the pairs ``memory``."""
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(memory):
        a = rho * (s @ q)
        q -= a * y
        alphas.append(a)
    if memory:
        s, y, _ = memory[-1]
        q *= (s @ y) / (y @ y)
    for (s, y, rho), a in zip(memory, reversed(alphas)):
        b = rho * (y @ q)
        q += (a - b) * s
    return q


def _remember(memory, s, y):
    sy = s @ y
    if sy > 1e-10 * (y @ y) and sy > 0:      # keep the approximation positive definite
        memory.append((s, y, 1.0 / sy))


def _interpolate(lo, hi):
    """Minimiser of the cubic through two (step, f, slope) points, kept inside the middle
    80% of the bracket (bisection when the cubic gives nothing usable)."""
    (a0, f0, d0), (a1, f1, d1) = lo[:3], hi[:3]
    left, right = min(a0, a1), max(a0, a1)
    width = right - left
    a = np.nan
    if np.isfinite(f1) and a0 != a1:
        e1 = d0 + d1 - 3.0 * (f0 - f1) / (a0 - a1)
        disc = e1 * e1 - d0 * d1
        if disc >= 0:
            e2 = np.copysign(np.sqrt(disc), a1 - a0)
            den = d1 - d0 + 2.0 * e2
            if den != 0:
                a = a1 - (a1 - a0) * (d1 + e2 - e1) / den
    if not np.isfinite(a) or not left + 0.1 * width <= a <= right - 0.1 * width:
        a = 0.5 * (left + right)
    return a


def _within_rounding(f, f0, d, d0, c2):
    """Hager & Zhang's approximate Wolfe conditions: ``f`` no higher than ``f0`` by more
    than float64 can resolve in a sum of this size (:data:`FTOL` relative) and the slope
    ``d`` down to ``c2`` of ``d0`` in magnitude. Near the optimum the decrease a step can
    make falls below rounding (``|g| ~ 1e-9`` predicts ``1e-17`` on ``f ~ 0.3``): the
    sufficient-decrease test then compares noise, and the slope decides alone."""
    return bool(np.isfinite(f) and f <= f0 + FTOL * max(abs(f0), 1.0) and abs(d) <= -c2 * d0)


def _zoom(fun, x, p, f0, d0, lo, hi, c1, c2, evals):
    """Nocedal & Wright's zoom: a step between ``lo`` and ``hi`` (tuples step, f, slope,
    gradient) satisfying the strong Wolfe conditions (or their approximate form,
    :func:`_within_rounding`), or None."""
    for _ in range(evals):
        a = _interpolate(lo, hi)
        f, g = fun(x + a * p)
        d = g @ p
        if _within_rounding(f, f0, d, d0, c2):
            return a, f, g
        if not np.isfinite(f) or f > f0 + c1 * a * d0 or f >= lo[1]:
            hi = (a, f, d, g)
            continue
        if abs(d) <= -c2 * d0:
            return a, f, g
        if d * (hi[0] - lo[0]) >= 0:
            hi = lo
        lo = (a, f, d, g)
        if abs(hi[0] - lo[0]) <= 1e-16 * max(1.0, abs(lo[0])):
            break
    # the best point with sufficient decrease, if the bracket collapsed before curvature
    return (lo[0], lo[1], lo[3]) if lo[0] > 0 else None


def wolfe_search(fun, x, f0, g0, p, step=1.0, c1=1e-4, c2=0.9, evals=40):
    """A step ``a`` along the descent direction ``p`` satisfying the strong Wolfe
    conditions (bracketing, then :func:`_zoom`), or their approximate form where the
    decrease is below rounding (:func:`_within_rounding`); returns ``(a, f, g)`` or None."""
    d0 = g0 @ p
    prev = (0.0, f0, d0, g0)
    a = step
    for i in range(evals):
        f, g = fun(x + a * p)
        d = g @ p
        if _within_rounding(f, f0, d, d0, c2):
            return a, f, g
        if not np.isfinite(f) or f > f0 + c1 * a * d0 or (i > 0 and f >= prev[1]):
            return _zoom(fun, x, p, f0, d0, prev, (a, f, d, g), c1, c2, evals)
        if abs(d) <= -c2 * d0:
            return a, f, g
        if d >= 0:
            return _zoom(fun, x, p, f0, d0, (a, f, d, g), prev, c1, c2, evals)
        prev = (a, f, d, g)
        a *= 2.0
    return None


def _pairs(start, memory):
    """The (s, y, rho) memory of a saved state (``rho`` recomputed: the same bits)."""
    pairs = deque(maxlen=memory)
    if start is not None:
        for s, y in start["pairs"]:
            pairs.append((np.array(s, dtype=np.float64), np.array(y, dtype=np.float64),
                          1.0 / (s @ y)))
    return pairs


def _state(x, f, g, pairs, it, evals, gmax, **extra):
    """What :func:`lbfgs` / :func:`owlqn` / :func:`newton_cg` pass to ``on_iter`` after an
    iteration that did not end the solve: everything a later call needs (as ``start``) to
    continue exactly as this one would have."""
    return dict(x=x, f=f, g=g, pairs=[(s, y) for s, y, _ in pairs], it=it, evals=evals,
                gmax=gmax, **extra)


def _begin(fun, x0, start):
    """``(x, f, g, first iteration)``: evaluated at ``x0``, or taken from ``start``."""
    if start is None:
        x = np.array(x0, dtype=np.float64)
        f, g = fun(x)
        return x, f, g, 0
    fun.calls = int(start["evals"])
    return (np.array(start["x"], dtype=np.float64), float(start["f"]),
            np.array(start["g"], dtype=np.float64), int(start["it"]))


def lbfgs(fun, x0, tol, max_iter, memory=10, start=None, on_iter=None):
    """Minimise ``fun`` (``x -> (f, g)``) from ``x0`` by L-BFGS with a strong-Wolfe line
    search; see the module doc for the stopping rule. Returns a :class:`Result`.

    ``on_iter(state)`` is called after every iteration that does not end the solve (it
    may raise to stop it); ``start``, such a state, continues a solve where it was."""
    fun = _Counted(fun)
    x, f, g, first = _begin(fun, x0, start)
    pairs = _pairs(start, memory)
    for it in range(first, max_iter):
        if np.max(np.abs(g), initial=0.0) <= tol:
            return Result(x, f, it, "converged", fun.calls)
        p = -_two_loop(g, pairs)
        if not g @ p < 0:                 # not a descent direction: restart
            pairs.clear()
            p = -g
        step = 1.0 if pairs else min(1.0, 1.0 / np.linalg.norm(g))
        found = wolfe_search(fun, x, f, g, p, step)
        if found is None and pairs:
            # the quasi-Newton direction failed (its curvature pairs can be stale near the
            # optimum): restart once from steepest descent before giving up
            pairs.clear()
            p = -g
            found = wolfe_search(fun, x, f, g, p, min(1.0, 1.0 / np.linalg.norm(g)))
        if found is None:
            return Result(x, f, it, "line_search", fun.calls)
        a, f_new, g_new = found
        _remember(pairs, a * p, g_new - g)
        x, f_old, f, g = x + a * p, f, f_new, g_new
        if _no_progress(f_old, f):
            return Result(x, f, it + 1, "converged", fun.calls)
        if on_iter is not None and it + 1 < max_iter:
            on_iter(_state(x, f, g, pairs, it + 1, fun.calls, np.max(np.abs(g), initial=0.0),
                           F=f))
    done = np.max(np.abs(g), initial=0.0) <= tol
    return Result(x, f, max_iter, "converged" if done else "max_iter", fun.calls)


def pseudo_gradient(x, g, l1):
    """The minimum-norm subgradient of ``f + sum(l1 * |x|)`` (``g`` the gradient of the
    smooth part ``f``): zero where ``x_i = 0`` and ``|g_i| <= l1_i``."""
    pg = g + l1 * np.sign(x)
    zero = x == 0
    right, left = g + l1, g - l1
    pg[zero] = np.where(right[zero] < 0, right[zero], np.where(left[zero] > 0, left[zero], 0.0))
    return pg


def _owl_step(fun, x, F, pg, p, l1, step, c1=1e-4, evals=60):
    """Backtracking along ``p`` projected on the orthant of ``x`` (signs of ``x``, or of
    ``-pg`` where ``x_i = 0``): coordinates that would cross zero stay at exactly zero.
    Returns ``(x_new, F_new, f_new, g_new)`` or None."""
    orthant = np.where(x != 0, np.sign(x), np.sign(-pg))
    for _ in range(evals):
        xn = x + step * p
        xn[np.sign(xn) != orthant] = 0.0
        f, g = fun(xn)
        Fn = f + l1 @ np.abs(xn)
        if np.isfinite(Fn) and Fn <= F + c1 * (pg @ (xn - x)):
            return xn, Fn, f, g
        step *= 0.5
    return None


def owlqn(fun, x0, l1, tol, max_iter, memory=10, start=None, on_iter=None):
    """Minimise ``f(x) + sum(l1 * |x|)`` (``fun`` gives the smooth part and its gradient,
    ``l1`` the per-coordinate L1 weights, 0 where not penalised) by OWL-QN (Andrew & Gao
    2007): L-BFGS on the pseudo-gradient, directions and steps kept in one orthant, so
    coefficients the penalty zeroes are exactly 0. Returns a :class:`Result` whose ``f``
    includes the L1 term. ``start`` / ``on_iter``: as :func:`lbfgs`'s."""
    fun = _Counted(fun)
    l1 = np.asarray(l1, dtype=np.float64)
    x, f, g, first = _begin(fun, x0, start)
    F = f + l1 @ np.abs(x)
    pairs = _pairs(start, memory)
    for it in range(first, max_iter):
        pg = pseudo_gradient(x, g, l1)
        if np.max(np.abs(pg), initial=0.0) <= tol:
            return Result(x, F, it, "converged", fun.calls)
        p = -_two_loop(pg, pairs)
        p[p * pg >= 0] = 0.0              # keep each coordinate a descent coordinate
        if not np.any(p):
            pairs.clear()
            p = -pg
        step = 1.0 if pairs else min(1.0, 1.0 / np.linalg.norm(pg))
        found = _owl_step(fun, x, F, pg, p, l1, step)
        if found is None:
            return Result(x, F, it, "line_search", fun.calls)
        xn, Fn, fn, gn = found
        _remember(pairs, xn - x, gn - g)
        x, F_old, F, f, g = xn, F, Fn, fn, gn
        if _no_progress(F_old, F):
            return Result(x, F, it + 1, "converged", fun.calls)
        if on_iter is not None and it + 1 < max_iter:
            gmax = np.max(np.abs(pseudo_gradient(x, g, l1)), initial=0.0)
            on_iter(_state(x, f, g, pairs, it + 1, fun.calls, gmax, F=F))
    done = np.max(np.abs(pseudo_gradient(x, g, l1)), initial=0.0) <= tol
    return Result(x, F, max_iter, "converged" if done else "max_iter", fun.calls)


def _truncated_cg(hessp, g, max_cg):
    """An approximate solution of ``H p = -g`` by conjugate gradients, stopped at the
    relative residual ``min(0.5, sqrt(|g|))`` (superlinear local convergence) or at
    negative curvature (then the last iterate, or ``-g`` on the first). Returns the
    solution and the number of products made."""
    gnorm = np.linalg.norm(g)
    target = min(0.5, np.sqrt(gnorm)) * gnorm
    p = np.zeros_like(g)
    r = -g.copy()
    d = r.copy()
    rr = r @ r
    for used in range(1, max_cg + 1):
        Hd = hessp(d)
        curv = d @ Hd
        if curv <= 1e-16 * (d @ d):
            return (p if np.any(p) else -g), used
        a = rr / curv
        p += a * d
        r -= a * Hd
        rr_new = r @ r
        if np.sqrt(rr_new) <= target:
            break
        d = r + (rr_new / rr) * d
        rr = rr_new
    return p, used


def newton_cg(fun, hessp, x0, tol, max_iter, max_cg=200, start=None, on_iter=None):
    """Minimise ``fun`` (``x -> (f, g)``) by truncated Newton: each iteration solves the
    Newton system with conjugate gradients on Hessian-vector products ``hessp(x, v)``,
    then takes a strong-Wolfe step (usually the full step). Returns a :class:`Result`;
    ``n_evals`` counts gradient evaluations and Hessian-vector products. ``start`` /
    ``on_iter``: as :func:`lbfgs`'s (a state's ``evals`` counts both kinds)."""
    fun = _Counted(fun)
    x, f, g, first = _begin(fun, x0, start)
    products = 0
    for it in range(first, max_iter):
        if np.max(np.abs(g), initial=0.0) <= tol:
            return Result(x, f, it, "converged", fun.calls + products)
        p, used = _truncated_cg(_AtPoint(hessp, x), g, max_cg)
        products += used
        if not g @ p < 0:
            p = -g
        found = wolfe_search(fun, x, f, g, p, 1.0)
        if found is None:
            return Result(x, f, it, "line_search", fun.calls + products)
        a, f_new, g_new = found
        x, f_old, f, g = x + a * p, f, f_new, g_new
        if _no_progress(f_old, f):
            return Result(x, f, it + 1, "converged", fun.calls + products)
        if on_iter is not None and it + 1 < max_iter:
            # products are folded into the evaluation count a continued solve starts from
            fun.calls, products = fun.calls + products, 0
            on_iter(_state(x, f, g, (), it + 1, fun.calls, np.max(np.abs(g), initial=0.0),
                           F=f))
    done = np.max(np.abs(g), initial=0.0) <= tol
    return Result(x, f, max_iter, "converged" if done else "max_iter", fun.calls + products)
