"""Explanations computed where the rows live: SHAP values and permutation importance.

* **Linear SHAP** (linear, logistic, softmax models; interventional, features
  independent): ``phi[i, j] = w_j (x_ij - mean_j)`` in margin (log-odds) space,
  base value ``w . mean + b``; the background mean is the global mean of the
  background rows (default: the explained rows), one Allreduce.
* **Kernel SHAP** (any model, e.g. MLPs): the weighted linear regression of
  Lundberg & Lee over feature coalitions, with the efficiency constraint. The
  coalitions come from a seed (all coalitions, exactly weighted, when there are no
  more than ``nsamples``), so every row gets the same coalitions whatever rank it
  lives on, and the regression matrix is solved once for all rows; each coalition's
  value is the model's mean output over the background rows (broadcast from rank
  0), evaluated for a block of rows at once.
* **Permutation importance**: the global drop of the model's score when one feature
  is permuted, over ``repeats`` permutations (mean and standard deviation). The
  permutation of a feature is one permutation of the *global* row index, drawn from
  ``(seed, feature, repeat)``; each rank gathers the feature's column (one
  Allgatherv) and takes the permuted values of its rows, so the result does not
  depend on the rank count.
"""
import itertools
import math

import numpy as np

from .comm import get_comm

__all__ = ["linear_shap", "linear_shap_sparse", "sparse_abs_sum", "kernel_shap",
           "permutation_importance", "global_mean", "summarise_importance", "plot_importance",
           "model_output"]


def _is_csr(X):
    return getattr(X, "format", None) == "csr"


def global_mean(X, comm=None):
    """Column means of every rank's rows (one Allreduce); ``X`` dense or CSR."""
    c = get_comm(comm)
    if _is_csr(X):      # float64 sums of the stored values, column by column
        nz = X.indptr[-1]
        sums = np.bincount(X.indices[:nz], weights=X.data[:nz].astype(np.float64),
                           minlength=X.shape[1])
    else:
        X = np.asarray(X)
        sums = X.sum(axis=0, dtype=np.float64)
    buf = np.concatenate([sums, [float(X.shape[0])]])
    c.Allreduce(buf)
    return buf[:-1] / max(buf[-1], 1.0)


def linear_shap(coef, intercept, X, background_mean):
    """Exact interventional SHAP of a linear model in margin space.

    Returns ``(values, base)``: values (n, d) for one output or (n, K, d), base (K,)."""
    W = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    b = np.asarray(intercept, dtype=np.float64).ravel()
    base = W @ background_mean + b
    X = np.asarray(X)
    # float32 data: values in float32 (one pass, half the memory), else float64
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    Xc = X.astype(dtype, copy=True)
    Xc -= background_mean.astype(dtype)
    if W.shape[0] == 1:
        Xc *= W[0].astype(dtype)
        return Xc, base
    return Xc[:, None, :] * W.astype(dtype)[None, :, :], base


def linear_shap_sparse(coef, intercept, X, background_mean):
    """Linear SHAP of CSR rows without densifying: ``(stored, offset, base)`` with
    ``phi[i, k*d + j] = stored[i, k*d + j] + offset[k*d + j]``, where ``stored`` is a CSR
    matrix (n, K*d) holding ``W[k, j] * x_ij`` at the rows' stored entries (zero
    elsewhere) and ``offset = -W * mean`` (K*d) is the same for every row."""
    import scipy.sparse as sp
    W = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    b = np.asarray(intercept, dtype=np.float64).ravel()
    K, d = W.shape
    base = W @ background_mean + b
    X = X.tocsr()
    counts = np.diff(X.indptr)
    cols = (X.indices[None, :] + d * np.arange(K)[:, None])         # (K, nnz)
    vals = X.data[None, :].astype(np.float64) * W[:, X.indices]     # (K, nnz)
    # row i: its K blocks of entries one after the other
    order = np.argsort(np.repeat(np.repeat(np.arange(X.shape[0]), counts)[None, :], K,
                                 axis=0).ravel(), kind="stable")
    indptr = np.concatenate([[0], np.cumsum(counts * K)])
    stored = sp.csr_matrix((vals.ravel()[order], cols.ravel()[order], indptr),
                           shape=(X.shape[0], K * d))
    return stored, -(W * background_mean).ravel(), base


def sparse_abs_sum(stored, offset, n_rows):
    """Column sums of ``|phi|`` over ``n_rows`` rows from :func:`linear_shap_sparse`'s
    parts (a row's unstored columns hold ``offset``)."""
    m = offset.size
    idx = stored.indices[:stored.indptr[-1]]
    phi = np.abs(stored.data[:idx.size] + offset[idx])
    sums = np.bincount(idx, weights=phi, minlength=m)
    present = np.bincount(idx, minlength=m)
    return sums + (n_rows - present) * np.abs(offset)


def _kernel_weight(d, s):
    return (d - 1) / (math.comb(d, s) * s * (d - s))


def _coalitions(d, nsamples, seed):
    """(Z, w): coalition masks (M, d) and their regression weights."""
    if 2 ** d - 2 <= nsamples:
        Z = np.array([[1.0 if j in S else 0.0 for j in range(d)]
                      for s in range(1, d) for S in itertools.combinations(range(d), s)])
        w = np.array([_kernel_weight(d, int(z.sum())) for z in Z])
        return Z, w
    rng = np.random.default_rng([int(seed), 7919])
    sizes = np.arange(1, d)
    p = np.array([(d - 1) / (s * (d - s)) for s in sizes])
    p /= p.sum()
    half = max(1, nsamples // 2)
    Z = np.zeros((2 * half, d))
    for m, s in enumerate(rng.choice(sizes, size=half, p=p)):
        Z[2 * m, rng.choice(d, size=s, replace=False)] = 1.0
        Z[2 * m + 1] = 1.0 - Z[2 * m]            # paired: the complement as well
    return Z, np.ones(2 * half)


def kernel_shap(f, X, background, nsamples=None, seed=0, block_rows=None, max_evals=200_000,
                progress=None):
    """Kernel SHAP values of this rank's rows ``X`` for a vectorised model ``f``
    (rows -> (rows, K) outputs). Local: no communication (the background is given).
    ``progress(rows done)`` is called after each block of rows (e.g.
    :meth:`mpiml.progress.Progress.update`).

    Returns ``(values, base)``: (n, d) for one output or (n, K, d), and base (K,)."""
    # the hybrid rows in the data's precision (float32 data: half the memory traffic, and
    # a float32 model needs no conversion); the regression in float64
    dtype = np.float32 if np.asarray(X).dtype == np.float32 else np.float64
    X = np.asarray(X, dtype=dtype)
    B = np.asarray(background, dtype=dtype)
    n, d = X.shape
    nsamples = nsamples or 2 * d + 2048
    Z, w = _coalitions(d, nsamples, seed)
    M = Z.shape[0]
    fb = np.atleast_2d(np.asarray(f(B), dtype=np.float64).reshape(len(B), -1))
    base = fb.mean(axis=0)
    K = base.shape[0]
    # constrained weighted least squares, eliminating the last feature
    Xr = Z[:, :-1] - Z[:, -1:]
    XtW = Xr.T * w
    P = np.linalg.solve(XtW @ Xr, XtW)                 # (d-1, M): the same for every row
    out = np.empty((n, K, d))
    if block_rows is None:
        block_rows = max(1, int(max_evals // max(M * len(B), 1)))
    for r0 in range(0, n, block_rows):
        R = X[r0:r0 + block_rows]
        r = R.shape[0]
        # hybrid inputs: the row's features in the coalition, the background's elsewhere
        H = np.where(Z[None, :, None, :] > 0, R[:, None, None, :], B[None, None, :, :])
        # (blocks of ~max_evals hybrid rows: a few MB, so the evaluation stays in cache)
        vals = np.asarray(f(H.reshape(-1, d)), dtype=np.float64).reshape(r, M, len(B), K)
        ey = vals.mean(axis=2) - base                   # (r, M, K)
        fx = np.asarray(f(R), dtype=np.float64).reshape(r, K) - base
        t = ey - Z[None, :, -1:] * fx[:, None, :]       # (r, M, K)
        phi = np.einsum("jm,rmk->rkj", P, t)            # (r, K, d-1)
        out[r0:r0 + r, :, :-1] = phi
        out[r0:r0 + r, :, -1] = fx - phi.sum(axis=2)
        if progress is not None:
            progress(r0 + r)
    return (out[:, 0, :] if K == 1 else out), base


def model_output(est):
    """The function SHAP explains: margins of a linear model, probabilities of an MLP
    classifier (class 1 for two classes), values of a regressor."""
    if hasattr(est, "predict_proba") and hasattr(est, "_net"):
        def f(A):
            p = est.predict_proba(A)
            return p[:, 1:] if p.shape[1] == 2 else p
        return f
    if hasattr(est, "_net"):
        return lambda A: est.predict(A)[:, None]
    margins = est.decision_function if hasattr(est, "decision_function") else est.predict
    return lambda A: np.asarray(margins(A)).reshape(len(A), -1)


def permutation_importance(est, X, y, repeats=5, seed=0, comm=None, progress=None):
    """Global score drop per feature: ``(mean (d,), std (d,), baseline)`` (collective).
    ``progress(features done)`` is called after each feature."""
    c = get_comm(comm)
    if _is_csr(X):
        from .errors import ConfigError
        raise ConfigError("permutation importance of CSR rows is not implemented (it would "
                          "rescore every row once per feature and repeat); use SHAP "
                          "(--method shap), exact for the linear models",
                          ranks=range(c.size))
    X = np.asarray(X)
    n_local = X.shape[0]
    counts = c.allgather(n_local)
    n = sum(counts)
    offset = sum(counts[:c.rank])
    base = est.score(X, y)
    d = X.shape[1]
    drops = np.zeros((repeats, d))
    Xp = np.array(X, copy=True)
    col = np.empty(n, dtype=X.dtype)
    for j in range(d):
        c.Allgatherv(np.ascontiguousarray(X[:, j]), col, counts)
        for r in range(repeats):
            perm = np.random.default_rng([int(seed), j, r]).permutation(n)
            Xp[:, j] = col[perm[offset:offset + n_local]]
            drops[r, j] = base - est.score(Xp, y)
        Xp[:, j] = X[:, j]
        if progress is not None:
            progress(j + 1)
    return drops.mean(axis=0), drops.std(axis=0), base


def summarise_importance(values, names=None, top=10):
    """Lines of the top features by importance (a (d,) array)."""
    order = np.argsort(-np.asarray(values))[:top]
    names = names or [f"x{j}" for j in range(len(values))]
    return [f"{i + 1:3d}. {names[j]:<12} {values[j]:.6g}" for i, j in enumerate(order)]


def plot_importance(values, out, title, std=None, names=None, top=20):
    """A horizontal bar chart of the top features (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    values = np.asarray(values)
    order = np.argsort(-values)[:top][::-1]
    names = names or [f"x{j}" for j in range(len(values))]
    fig, ax = plt.subplots(figsize=(8, max(3, 0.35 * len(order) + 1)), dpi=100)
    ax.barh([names[j] for j in order], values[order],
            xerr=None if std is None else np.asarray(std)[order], color="tab:blue")
    ax.set_xlabel(title)
    ax.set_ylabel("feature")
    ax.set_title(f"Global feature importance (top {len(order)})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
