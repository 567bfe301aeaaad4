"""scikit-learn's conformance suite (``sklearn.utils.estimator_checks``) on every public
mpiml estimator and transformer, at one process (issue 19, item 2).

Every check passes or is an expected failure listed below with its reason; strict, so
an expected failure that starts passing fails the run and gets taken off the list.
Checks skipped through tags count as expected failures: mpiml declares no
``poor_score`` or ``non_deterministic`` tag, so none are skipped that way.
"""
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from mpiml import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor
from mpiml.models.glm import LogisticRegression
from mpiml.models.regression import ElasticNet, EpsilonHuberRegressor, LinearRegression, Ridge
from mpiml.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

# A weight of k is k copies of a row only in expectation for SGD: the copies are
# separate updates at separate places in the shuffled epoch (scikit-learn lists the same
# check as an expected failure of its own SGD and MLP estimators).
_WEIGHTS = {"check_sample_weight_equivalence_on_dense_data":
            "SGD: a weight of k is not k shuffled copies of a row (also scikit-learn's xfail)"}

ESTIMATORS = [
    SGDClassifier(random_state=0),
    # scaler="standard": some checks fit unscaled rows (features ~ N(100, 1)) on which the
    # default learning rate diverges; mpiml then raises TrainingError where scikit-learn
    # returns weights of 1e11. Internal standardization is mpiml's own answer to that.
    SGDRegressor(random_state=0, scaler="standard"),
    MLPClassifier(random_state=0),
    MLPRegressor(random_state=0),
    StandardScaler(),
    MinMaxScaler(),
    MaxAbsScaler(),
    # the SGD models' objective solved exactly (issue 20); the weight check still fails:
    # alpha weighs against the mean loss over the n rows, and k copies of a row add k - 1
    # rows to n where a weight of k does not
    SGDClassifier(solver="lbfgs"), SGDRegressor(solver="lbfgs"),
    # the exact solvers (issue 20): a weight of k is k copies of a row at the optimum
    LogisticRegression(), LinearRegression(), Ridge(), ElasticNet(), EpsilonHuberRegressor(),
]

EXPECTED = {"SGDClassifier": _WEIGHTS, "SGDRegressor": _WEIGHTS, "MLPClassifier": _WEIGHTS,
            "MLPRegressor": _WEIGHTS, "StandardScaler": {}, "MinMaxScaler": {}, "MaxAbsScaler": {},
            "LogisticRegression": {}, "LinearRegression": {}, "Ridge": {}, "ElasticNet": {},
            "EpsilonHuberRegressor": {}}


def _expected(est):
    expected = dict(EXPECTED[type(est).__name__])
    if "check_sample_weight_equivalence_on_dense_data" in expected and \
            est.__sklearn_tags__().input_tags.sparse:
        # the SGD models that take CSR rows (issue 21): the same check on sparse rows
        expected["check_sample_weight_equivalence_on_sparse_data"] = \
            expected["check_sample_weight_equivalence_on_dense_data"]
    return expected


def test_at_most_three_expected_failures_per_estimator():
    assert {type(e).__name__ for e in ESTIMATORS} == set(EXPECTED)
    assert all(len(v) <= 3 for v in EXPECTED.values())


@pytest.mark.timeout(120)
@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected, xfail_strict=True)
def test_scikit_learn_conformance(estimator, check):
    check(estimator)
