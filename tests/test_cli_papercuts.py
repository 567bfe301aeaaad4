"""Command-line papercuts (issue 19, item 5): --grid given twice extends the grid,
`train --help` lists --resume as an option, re-running a finished search says what to
do before it starts, predict writes integer class labels as integers."""
import h5py
import numpy as np
import pytest

from launch import mpirun


def _sub(verb):
    from mpiml.cli import build_parser
    parser = build_parser()
    return parser, next(a for a in parser._actions if hasattr(a, "choices") and a.choices
                        and verb in a.choices).choices[verb]


def test_grid_given_twice_extends_the_grid():
    parser, _ = _sub("tune")
    args = parser.parse_args(["tune", "--data", "d.h5", "--model", "logistic", "--out", "m.h5",
                              "--grid", "lr=0.1,0.2", "--grid", "alpha=1e-4", "batch_size=8"])
    assert args.grid == ["lr=0.1,0.2", "alpha=1e-4", "batch_size=8"]


def test_train_and_tune_each_list_their_own_resume():
    _, train = _sub("train")
    _, tune = _sub("tune")
    assert "--resume DIR" in train.format_help() and "newest checkpoint" in train.format_help()
    assert "--resume DIR" in tune.format_help() and "journaled" in tune.format_help()


@pytest.mark.launcher
def test_a_finished_search_says_what_to_do_before_it_starts(tmp_path):
    code, _, err, _ = mpirun(1, ["make-data", "--task", "binary", "--rows", 300, "--features", 3,
                                 "--out", tmp_path / "d.h5"], tmp_path)
    assert code == 0, err
    args = ["tune", "--data", tmp_path / "d.h5", "--model", "logistic", "--epochs", 1,
            "--grid", "lr=0.1,0.2", "--cv", 2, "--out", tmp_path / "m.h5", "--quiet"]
    code, _, err, _ = mpirun(2, args, tmp_path)
    assert code == 0, err
    code, out, err, _ = mpirun(2, args, tmp_path)
    assert code == 1 and "--resume" in err and "mpiml tune:" not in out, out + err


@pytest.mark.launcher
def test_predict_writes_integer_labels_as_integers(tmp_path):
    code, _, err, _ = mpirun(1, ["make-data", "--task", "multiclass", "--rows", 300, "--features",
                                 3, "--out", tmp_path / "d.h5"], tmp_path)
    assert code == 0, err
    for args in (["train", "--data", tmp_path / "d.h5", "--model", "softmax", "--epochs", 1,
                  "--out", tmp_path / "m.h5", "--quiet"],
                 ["predict", "--model", tmp_path / "m.h5", "--data", tmp_path / "d.h5",
                  "--out", tmp_path / "p.h5"]):
        code, _, err, _ = mpirun(2, args, tmp_path)
        assert code == 0, err
    with h5py.File(tmp_path / "p.h5", "r") as f, h5py.File(tmp_path / "d.h5", "r") as d:
        assert f["pred"].dtype.kind == "i"
        assert set(np.unique(f["pred"][()])) <= set(np.unique(d["y"][()]))
