"""Run under mpiexec by tests/test_ps_launch.py: a parameter-server fit whose servers
check their log against a sequential replay. Prints one JSON line from rank 0."""
import json
import sys

import numpy as np

from mpiml import SGDClassifier, get_comm
from mpiml import hooks
from mpiml._kernels import sgd as _k


def main(n_servers, max_staleness):
    c = get_comm()
    rng = np.random.default_rng(7)
    X = rng.normal(size=(900, 5))
    y = (X @ rng.normal(size=5) > 0).astype(int)
    workers = c.size - n_servers
    lo, hi = ((int(900 * c.rank / workers), int(900 * (c.rank + 1) / workers))
              if c.rank < workers else (0, 0))
    est = SGDClassifier(learning_rate="constant", eta0=0.05, momentum=0.3, batch_size=30,
                        max_iter=3, tol=None, random_state=0, dtype="float64",
                        sync=f"ps:{n_servers}", max_staleness=max_staleness)
    with hooks.injected(record_servers=True):   # servers keep their logs
        est.fit(X[lo:hi], y[lo:hi])
    ok = True
    flat = np.concatenate([est.coef_.ravel(), est.intercept_])
    for j, info in enumerate(est.ps_stats_["servers"]):
        if c.rank != c.size - n_servers + j:
            continue
        a, b = info["slice"]
        w, vel = np.zeros(b - a), np.zeros(b - a)
        h = est._hyper()
        seen = {}
        for version, (src, step, read, grad, count) in enumerate(info["log"], start=1):
            seen.setdefault(src, []).append(step)
            eta = _k.step_size(h["schedule"], float(version), h["eta0"], h["alpha"], h["power_t"],
                               h["optimal_init"])
            _k.sgd_update(w, vel, grad, max(0, min(5 - a, b - a)), count, eta, h["penalty"],
                          h["alpha"], h["l1_ratio"], h["momentum"], h["fit_intercept"])
        ok &= bool(np.array_equal(w, flat[a:b]))
        ok &= all(sorted(v) == list(range(len(v))) for v in seen.values())
        ok &= sorted(seen) == list(range(workers))
    ok = c.allreduce(int(ok), op=__import__("mpi4py").MPI.MIN) == 1
    same = all(np.array_equal(flat, o) for o in c.allgather(flat))
    out = {k: v for k, v in est.ps_stats_.items() if k != "servers"}
    out.update(replay_ok=ok, same_everywhere=same, score=est.score(X[lo:hi], y[lo:hi]))
    c.print0(json.dumps(out))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
