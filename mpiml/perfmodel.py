"""An alpha-beta (latency-bandwidth) model of mpiml's training step.

A step is local compute followed by the communication of the sync mode:

    step(p) = compute(b) + comm(mode, p)
    compute(b) = c0 + b / rate                   (c0: per-step overhead, rate: samples/s of one rank)
    allreduce(n, p) = ceil(log2 p) * alpha + 2 (p - 1) / p * n / bandwidth

``allreduce`` is the usual lower envelope of MPI's algorithms: the latency term of a
recursive-doubling/tree schedule and the bandwidth term of a ring or
reduce-scatter + allgather (Rabenseifner) schedule, which MPICH and Open MPI switch
between by message size. At p = 2 it is ``alpha + n / bandwidth``, so alpha and the
bandwidth are fitted on a two-rank Allreduce micro-benchmark alone (:func:`fit`),
and the compute terms on one-rank steps alone (:func:`fit_compute`); the model is
then checked on multi-rank training steps that took no part in either fit.

Communication per step for each sync mode (n = bytes of the packed gradient buffer,
w = bytes of the weights, S = parameter servers):

* ``allreduce``: one Allreduce of n;
* ``local:H``: one Allreduce of w every H steps;
* ``fp16`` (``--compress fp16``): one Allreduce of n / 2;
* ``topk:R`` (``--compress topk:R``): one Allgather of R x params (index, value) pairs;
* ``ps:S``: each worker sends n and receives w every step; a server handles
  (p - S) / S workers, so the step cannot be shorter than the server's share of the
  traffic.

Not modelled: waiting for slower ranks (load imbalance, noisy neighbours), memory
bandwidth shared by the ranks of one node, overlap of communication with compute,
network contention beyond the per-link bandwidth.
"""
import math
import re

import numpy as np

from .errors import ConfigError

# name -> (alpha in seconds, bandwidth in bytes/s, description). Order-of-magnitude
# figures for an MPI Allreduce between nodes (small-message latency, large-message
# per-link bandwidth); measure yours with benchmarks/run.py --parts allreduce.
INTERCONNECTS = {
    "ethernet-10g": (25e-6, 1.1e9, "10 Gb Ethernet, TCP"),
    "ethernet-100g": (4e-6, 11e9, "100 Gb Ethernet with RoCE"),
    "omnipath": (1.5e-6, 11e9, "Intel Omni-Path 100 Gb/s"),
    "infiniband-edr": (1.5e-6, 11e9, "InfiniBand EDR 100 Gb/s"),
    "infiniband-hdr": (1.5e-6, 22e9, "InfiniBand HDR 200 Gb/s"),
    "infiniband-ndr": (1.2e-6, 45e9, "InfiniBand NDR 400 Gb/s"),
    "slingshot-11": (2.0e-6, 22e9, "HPE Slingshot-11 200 Gb/s"),
}
DEFAULT_INTERCONNECT = "infiniband-hdr"

_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_BW_UNITS = {"b/s": 1 / 8, "kb/s": 1e3 / 8, "mb/s": 1e6 / 8, "gb/s": 1e9 / 8,
             "B/s": 1.0, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9, "TB/s": 1e12,
             "KiB/s": 1024.0, "MiB/s": 1024.0 ** 2, "GiB/s": 1024.0 ** 3}
_NUMBER = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"


def parse_time(text):
    """'1.5us', '2 µs', '0.3ms', '4e-6s' -> seconds."""
    m = re.fullmatch(_NUMBER + r"(ns|us|µs|ms|s)\s*", str(text))
    if not m:
        raise ConfigError(f"latency must be a number with a unit (ns, us, ms, s), e.g. 1.5us; "
                          f"got {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_bandwidth(text):
    """'12GB/s', '100Gb/s' (bits), '3.5 GiB/s' -> bytes per second."""
    m = re.fullmatch(_NUMBER + r"([KMGT]?i?[bB]/s)\s*", str(text))
    unit = m.group(2) if m else None
    if unit is not None and unit not in _BW_UNITS:
        unit = unit[0].lower() + unit[1:] if unit.endswith("b/s") else unit
    if unit not in _BW_UNITS:
        raise ConfigError(f"bandwidth must be a number with a unit (GB/s, MB/s, Gb/s, GiB/s), "
                          f"e.g. 12GB/s; got {text!r}")
    value = float(m.group(1)) * _BW_UNITS[unit]
    if value <= 0:
        raise ConfigError(f"bandwidth must be positive, got {text!r}")
    return value


def log2p(p):
    return math.ceil(math.log2(p)) if p > 1 else 0


def allreduce_time(nbytes, p, alpha, bandwidth):
    """Seconds for an Allreduce of ``nbytes`` over ``p`` ranks."""
    if p <= 1:
        return 0.0
    return log2p(p) * alpha + 2.0 * (p - 1) / p * nbytes / bandwidth


def allgather_time(nbytes_each, p, alpha, bandwidth):
    if p <= 1:
        return 0.0
    return log2p(p) * alpha + (p - 1) * nbytes_each / bandwidth


def fit(points):
    """Fit (alpha, bandwidth) to Allreduce timings ``[(nbytes, p, seconds), ...]``.

    Least squares on the relative error (each row divided by its time), so the 8-byte
    and the megabyte timings count alike; both terms kept non-negative."""
    pts = [(n, p, t) for n, p, t in points if p > 1 and t > 0]
    if len(pts) < 2:
        raise ConfigError("fitting alpha and beta needs Allreduce timings of at least two "
                          "message sizes on 2 or more ranks")
    A = np.array([[log2p(p), 2.0 * (p - 1) / p * n] for n, p, _ in pts])
    t = np.array([t for _, _, t in pts])
    coef = nnls2(A / t[:, None], np.ones(len(t)))
    alpha, inv_bw = coef
    if inv_bw <= 0:
        raise ConfigError("the Allreduce timings show no growth with message size: "
                          "measure larger messages to fit the bandwidth")
    return float(alpha), float(1.0 / inv_bw)


def nnls2(A, b):
    """Non-negative least squares for two unknowns (enumerate the active sets)."""
    best, best_r = np.zeros(2), math.inf
    sol = np.linalg.lstsq(A, b, rcond=None)[0]
    candidates = [sol]
    for j in range(2):
        col = A[:, j]
        x = np.zeros(2)
        x[j] = max(float(col @ b) / float(col @ col), 0.0) if col @ col > 0 else 0.0
        candidates.append(x)
    for x in candidates:
        if np.all(x >= 0):
            r = float(np.sum((A @ x - b) ** 2))
            if r < best_r:
                best, best_r = x, r
    return best


def fit_compute(points):
    """Fit (c0, rate) to one-rank step timings ``[(batch, seconds_per_step), ...]``.

    When the timings do not grow with the batch size (short, noisy measurements, where a
    larger batch happened to time faster), there is no per-step constant to separate from the
    rate: the fit falls back to ``c0 = 0`` and the rate that fits ``t = batch / rate`` best in
    relative error, so a projection is still made from what was measured."""
    if not points or any(b <= 0 or s <= 0 for b, s in points):
        raise ConfigError("compute timings need positive batch sizes and step times")
    b = np.array([float(b) for b, _ in points])
    t = np.array([float(s) for _, s in points])
    if len(set(b)) >= 2:
        c0, inv_rate = nnls2(np.column_stack([np.ones_like(b), b]) / t[:, None], np.ones(len(t)))
        if inv_rate > 0:
            return float(c0), float(1.0 / inv_rate)
    u = b / t                                   # minimise sum((u * inv_rate - 1) ** 2)
    return 0.0, float((u @ u) / u.sum())


def comm_time(mode, p, grad_bytes, weight_bytes, alpha, bandwidth, compute=0.0):
    """Seconds of communication per step for a sync mode (see the module doc):
    ``allreduce``, ``local:H``, ``ps:S`` (as ``--sync``) or ``fp16``, ``topk:R`` (as
    ``--compress``, with synchronous Allreduce)."""
    from .parallel.sync import parse_compress, parse_sync

    mode = str(mode)
    if mode.startswith(("fp16", "topk")):
        kind, ratio = parse_compress(mode)
        if kind == "fp16":
            return allreduce_time(grad_bytes / 2, p, alpha, bandwidth)
        k = max(1, math.ceil(ratio * weight_bytes / 8))
        return allgather_time(8 * k, p, alpha, bandwidth)      # int32 index + float32 value
    kind, arg = parse_sync(mode)
    if kind == "local":
        return allreduce_time(weight_bytes, p, alpha, bandwidth) / arg
    if kind == "ps":
        workers = p - arg
        if workers < 1:
            raise ConfigError(f"sync {mode!r} needs more than {arg} ranks")
        own = 2 * alpha + (grad_bytes + weight_bytes) / bandwidth
        server = workers / arg * (grad_bytes + weight_bytes) / bandwidth
        return max(own, server - compute)
    return allreduce_time(grad_bytes, p, alpha, bandwidth)


def predict(ranks, *, c0, rate, batch, grad_bytes, weight_bytes, alpha, bandwidth,
            mode="allreduce", scaling="weak"):
    """Predicted step time, samples/s and efficiency at each rank count.

    ``scaling="weak"``: ``batch`` is per rank; ``"strong"``: ``batch`` is the global batch,
    split over the ranks. Efficiency is compute time over step time (weak) or the
    one-rank step time over p times the p-rank step time (strong)."""
    rows = []
    t1 = c0 + batch / rate
    for p in ranks:
        local = batch if scaling == "weak" else batch / p
        compute = c0 + local / rate
        comm = comm_time(mode, p, grad_bytes, weight_bytes, alpha, bandwidth, compute)
        step = compute + comm
        glob = local * p
        eff = compute / step if scaling == "weak" else t1 / (p * step)
        rows.append({"ranks": p, "compute_s": compute, "comm_s": comm, "step_s": step,
                     "samples_per_s": glob / step, "efficiency": eff})
    return rows


def model_bytes(model, features, classes=2, hidden=(), dtype="float64"):
    """(gradient buffer bytes, weight bytes) of one model, as mpiml packs them."""
    if model in ("mlp", "mlp-regression"):
        sizes = [features, *hidden, classes if model == "mlp" and classes > 2 else 1]
        params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        item = 4 if dtype == "float32" else 8
    else:
        outputs = classes if model == "softmax" or (model in ("logistic", "hinge") and classes > 2) \
            else 1
        params = outputs * (features + 1)
        item = 8                              # linear models reduce in float64
    # loss, count and the control words travel in the same buffer
    return (params + 6) * item, params * item


def measure_compute(model, features, classes=2, hidden=(), batches=(64, 256, 1024),
                    rows=65536, dtype="float32", seed=0):
    """Time one-rank epochs at several batch sizes on random data; return
    ``[(batch, seconds_per_step), ...]`` (median of three epochs each)."""
    from mpi4py import MPI

    from .models import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, features)).astype(dtype)
    if model in ("linear", "huber", "mlp-regression"):
        y = X[:, 0].astype(np.float64)
    else:
        y = rng.integers(0, classes, rows)
    out = []
    for b in batches:
        kw = dict(batch_size=b, max_iter=4, tol=None, random_state=0, comm=MPI.COMM_SELF)
        if model == "mlp":
            est = MLPClassifier(hidden_layer_sizes=tuple(hidden), **kw)
        elif model == "mlp-regression":
            est = MLPRegressor(hidden_layer_sizes=tuple(hidden), **kw)
        elif model in ("linear", "huber"):
            est = SGDRegressor(loss="squared_error" if model == "linear" else "huber", eta0=1e-3,
                               **kw)
        else:
            est = SGDClassifier(loss="hinge" if model == "hinge" else "log_loss",
                                multi_class="multinomial" if model == "softmax" else "auto",
                                learning_rate="constant", eta0=0.01, **kw)
        est.fit(X, y)
        steps = math.ceil(rows / b)
        out.append((b, float(np.median(est.epoch_times_[1:])) / steps))
    return out
