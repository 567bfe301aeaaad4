"""A model fitted on a DataFrame carries its column names to ``mpiml explain``'s
output (issue 19, item 3): the printed importance, the SHAP file and the permutation
JSON name the features as the DataFrame did."""
import json

import h5py
import numpy as np
import pandas as pd
import pytest
from mpi4py import MPI

from launch import mpirun
from mpiml import SGDClassifier

pytestmark = pytest.mark.launcher

NAMES = ["height", "width", "mass", "colour"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("names")
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 4))
    y = (3 * X[:, 2] - X[:, 0] > 0).astype(int)
    est = SGDClassifier(max_iter=5, tol=None, random_state=0, batch_size=16, comm=MPI.COMM_SELF)
    est.fit(pd.DataFrame(X, columns=NAMES), y)
    est.save(str(d / "model.h5"))
    with h5py.File(d / "data.h5", "w") as f:
        f["X"], f["y"] = X, y
    return d


@pytest.mark.timeout(120)
def test_shap_output_names_the_features(work):
    code, out, err, _ = mpirun(2, ["explain", "--model", work / "model.h5", "--data",
                                   work / "data.h5", "--out", work / "shap.h5",
                                   "--progress", "none"], work)
    assert code == 0, err
    ranked = [line.split()[1] for line in out.splitlines() if line[:4].strip().endswith(".")]
    assert ranked[0] == "mass" and set(ranked) == set(NAMES), out
    with h5py.File(work / "shap.h5", "r") as f:
        assert list(f["feature_names"].asstr()[()]) == NAMES
        assert f["shap"].shape == (300, 4)


@pytest.mark.timeout(120)
def test_permutation_json_names_the_features(work):
    code, out, err, _ = mpirun(2, ["explain", "--model", work / "model.h5", "--data",
                                   work / "data.h5", "--method", "permutation", "--out",
                                   work / "perm.json", "--progress", "none"], work)
    assert code == 0, err
    with open(work / "perm.json") as fh:
        got = json.load(fh)
    assert got["feature_names"] == NAMES
    assert NAMES[int(np.argmax(got["mean"]))] == "mass"
