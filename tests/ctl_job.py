"""A long-running training for tests/test_control.py, steered from outside with
``mpiml ctl``; prints one JSON line from rank 0 at the end."""
import json
import sys

import numpy as np

from mpiml import SGDClassifier, get_comm


def main(run_dir, out, comm_timeout=600.0):
    c = get_comm()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 10))
    y = (X @ rng.normal(size=10) > 0).astype(int)
    lo, hi = c.chunk(len(X))
    est = SGDClassifier(learning_rate="constant", eta0=0.01, momentum=0.5, tol=None,
                        max_iter=100000, batch_size=16, random_state=0, run_dir=run_dir,
                        comm_timeout=comm_timeout)
    est.fit(X[lo:hi], y[lo:hi], validation=(X[lo:hi][:500], y[lo:hi][:500]))
    est.save(out)
    flat = np.concatenate([est.coef_.ravel(), est.intercept_])
    same = all(np.array_equal(flat, other) for other in c.allgather(flat))
    c.print0(json.dumps({"n_iter": est.n_iter_, "stopped_by": est.stopped_by_, "eta0": est.eta0,
                         "batch_size": est.batch_size, "live": est.live_params_,
                         "changes": est.param_changes_, "identical_on_all_ranks": same}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(float, sys.argv[3:]))
