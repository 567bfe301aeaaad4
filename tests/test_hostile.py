"""Trust at the edges (issue 18): operator mistakes and hostile files, one scenario per
rule, each through the command line at 2 ranks, each checked the same way:

* every rank exits with the expected code (checked rank by rank);
* exactly one ``mpiml: error`` line, of the expected error class, and no traceback;
* no output and no temporary left in the working directory, beyond what the scenario
  expects;
* no file outside the working directory touched, and every input byte-identical.

The error class is printed by the test hook ``MPIML_TEST_ERROR_CLASS`` (messages are
not matched: scikit-learn conformance will reword them).
"""
import hashlib
import json
import os
import stat
import time

import h5py
import numpy as np
import pytest

from launch import MPIML, clean_env, mpirun, rank_exits

pytestmark = pytest.mark.launcher

TRAIN = ["train", "--model", "logistic", "--epochs", 2, "--batch-size", 32, "--quiet"]


def _tree(root):
    """path -> (kind, sha256) of everything under ``root``."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[p] = ("file", hashlib.sha256(fh.read()).hexdigest())
            else:
                out[p] = ("link" if stat.S_ISLNK(st.st_mode) else "dir", None)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A module directory: ``work/`` (the jobs' cwd) with data, models and checkpoints,
    and ``outside/`` that no job may touch."""
    root = tmp_path_factory.mktemp("hostile")
    work, outside = root / "work", root / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret.bin").write_bytes(np.arange(600, dtype=np.float64).tobytes())
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 3))
    with h5py.File(work / "d.h5", "w") as f:
        f["X"], f["y"] = X, (X[:, 0] > 0).astype(np.int64)
    with h5py.File(work / "d2.h5", "w") as f:              # same shape, other rows
        f["X"], f["y"] = X[::-1].copy(), (X[::-1, 0] > 0).astype(np.int64)
    for name, extra in (("m.h5", []), ("mlp.h5", ["--model", "mlp", "--hidden", "4"])):
        code, _, err, _ = mpirun(1, TRAIN + ["--data", "d.h5", "--out", name] + extra, work)
        assert code == 0, err
    code, _, err, _ = mpirun(1, TRAIN + ["--data", "d.h5", "--out", "c.h5", "--checkpoint-dir",
                                         "ck"], work)
    assert code == 0, err
    return root


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def _checkpoint_copy(base, name):
    """A new checkpoint directory ``work/name`` holding a copy of the module's newest
    checkpoint, to be damaged by a test: ``(directory, checkpoint file)``."""
    work = base / "work"
    ck = work / name
    ck.mkdir()
    src = sorted((work / "ck").glob("ckpt-*.h5"))[-1]
    return ck, _copy(src, ck / src.name)


def run(base, args, *, cls="DataError", code=1, leaves=(), setup=None, n=2, env=None):
    """Run one scenario and check everything the module doc lists. ``leaves``: paths
    (relative to work/) the scenario may create. Returns stderr."""
    work, outside = base / "work", base / "outside"
    if setup is not None:
        setup(work)
    before, before_out = _tree(work), _tree(outside)
    got, _, err, seconds = mpirun(n, args, work, wrap=True,
                                  env=env or clean_env(MPIML_TEST_ERROR_CLASS=1))
    assert rank_exits(err) == [code] * n, err
    assert seconds < 30, seconds
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("mpiml: error")]
    if code == 1:
        assert len(errors) == 1 and errors[0].startswith(f"mpiml: error [{cls}]"), err
    after = _tree(work)
    allowed = {str(work / p) for p in leaves}
    new = [p for p in after if p not in before
           and not any(p == a or p.startswith(a + os.sep) for a in allowed)]
    assert not new, f"left behind: {new}\n{err}"
    changed = [p for p, v in before.items() if after.get(p) != v
               and not any(p == a or p.startswith(a + os.sep) for a in allowed)]
    assert not changed, f"inputs changed: {changed}\n{err}"
    assert _tree(outside) == before_out, "a file outside the working directory changed"
    return err


# ------------------------------------------------------------------ rule 1: one message
STR = h5py.string_dtype("utf-8")


def _h5_edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def _replace(f, name, data, dtype=None):
    del f[name]
    f.create_dataset(name, data=np.array(data, dtype=object if dtype else None), dtype=dtype)


@pytest.mark.parametrize("case", ["no coef", "scaler of the wrong length", "unknown model type",
                                  "mlp layer count", "NaN weight", "coef of the wrong width",
                                  "classes missing", "negative n_features",
                                  "classes not UTF-8", "classes unsorted", "compound classes",
                                  "feature names of the wrong length", "feature names repeated"])
def test_model_file_checks_are_one_message(base, case):
    work = base / "work"
    src = work / ("mlp.h5" if case == "mlp layer count" else "m.h5")
    bad = _copy(src, work / f"bad-{case.replace(' ', '-')}.h5")
    edits = {
        "no coef": lambda f: f.__delitem__("coef"),
        "scaler of the wrong length": lambda f: (f.attrs.__setitem__("scaler", "standard"),
                                                 f.create_dataset("scaler/offset", data=[0.0]),
                                                 f.create_dataset("scaler/scale", data=[1.0])),
        "unknown model type": lambda f: f.attrs.__setitem__("model_type", "Nope"),
        "mlp layer count": lambda f: f.attrs.__setitem__("n_layers", 7),
        "NaN weight": lambda f: f["coef"].__setitem__(0, np.nan),
        "coef of the wrong width": lambda f: f.attrs.__setitem__("n_features_in", 5),
        "classes missing": lambda f: f.__delitem__("classes"),
        "negative n_features": lambda f: f.attrs.__setitem__("n_features_in", -3),
        "classes not UTF-8": lambda f: _replace(f, "classes", [b"a", b"\xff"], STR),
        "classes unsorted": lambda f: _replace(f, "classes", ["b", "a"], STR),
        "compound classes": lambda f: _replace(f, "classes", np.zeros(2, dtype="i4,f8")),
        "feature names of the wrong length": lambda f: f.create_dataset(
            "feature_names", data=["a", "b"], dtype=STR),
        "feature names repeated": lambda f: f.create_dataset(
            "feature_names", data=["a", "b", "a"], dtype=STR),
    }
    _h5_edit(bad, edits[case])
    run(base, ["score", "--model", bad.name, "--data", "d.h5"])


def test_a_diverging_fit_is_one_message(base):
    run(base, ["train", "--model", "linear", "--lr", "1e6", "--epochs", 30, "--batch-size", 16,
               "--data", "d.h5",
               "--out", "div.h5", "--quiet"], cls="TrainingError")


@pytest.mark.parametrize("option", ["--stats", "--run-dir", "--checkpoint-dir"])
def test_unwritable_outputs_are_refused_before_the_data_is_read(base, option):
    # the data file would be refused too (10^12 rows); the output is checked first
    work = base / "work"
    with h5py.File(work / "huge.h5", "w") as f:
        f.create_dataset("X", shape=(10 ** 12, 10), dtype="f4", chunks=(1024, 10))
        f.create_dataset("y", shape=(10 ** 12,), dtype="f8", chunks=(1024,))
    target = "no-such-dir/x" if option == "--stats" else "/proc/no-such-dir"
    run(base, TRAIN + ["--data", "huge.h5", "--out", "o.h5", option, target], cls="OutputError")


# ------------------------------------------------------------------ rule 2: file values
@pytest.mark.parametrize("field,value", [("step", -3), ("step", 10 ** 6), ("epoch", 1.5),
                                         ("t", float("nan")), ("batch", 0), ("n_iter", -1),
                                         ("seed", "x")])
def test_checkpoint_fields_are_validated(base, field, value):
    ck, bad = _checkpoint_copy(base, f"ck-{field}-{value}")
    _h5_edit(bad, lambda f: f.attrs.__setitem__(field, value))
    run(base, TRAIN + ["--data", "d.h5", "--out", "o.h5", "--epochs", 4, "--resume", ck.name])


def test_a_checkpoint_learning_rate_of_inf_is_refused(base):
    ck, bad = _checkpoint_copy(base, "ck-lr")

    def edit(f):
        params = json.loads(f.attrs["params"])
        params["eta0"] = float("inf")
        f.attrs["params"] = json.dumps(params)
    _h5_edit(bad, edit)
    run(base, TRAIN + ["--data", "d.h5", "--out", "o.h5", "--epochs", 4, "--resume", ck.name])


# ------------------------------------------------------------------ rule 3: other files
def _external(work, kind):
    path = work / f"ext-{kind}.h5"
    y = np.zeros(100)
    if kind == "storage":
        with h5py.File(path, "w") as f:
            f.create_dataset("X", shape=(100, 3), dtype="f8",
                             external=[(str(work.parent / "outside" / "secret.bin"), 0,
                                        h5py.h5f.UNLIMITED)])
            f["y"] = y
    elif kind == "link":
        with h5py.File(path, "w") as f:
            f["X"] = h5py.ExternalLink("d.h5", "/X")
            f["y"] = y
    else:
        lay = h5py.VirtualLayout(shape=(200, 3), dtype="f8")
        lay[:] = h5py.VirtualSource(str(work / "d.h5"), "X", shape=(200, 3))
        with h5py.File(path, "w") as f:
            f.create_virtual_dataset("X", lay)
            f["y"] = np.zeros(200)
    return path.name


@pytest.mark.parametrize("kind", ["storage", "link", "virtual"])
def test_data_never_reads_another_file(base, kind):
    name = _external(base / "work", kind)
    run(base, TRAIN + ["--data", name, "--out", "o.h5"])


def test_a_model_with_an_external_link_is_refused(base):
    work = base / "work"
    bad = _copy(work / "m.h5", work / "m-ext.h5")

    def edit(f):
        del f["intercept"]
        f["intercept"] = h5py.ExternalLink("m.h5", "/intercept")
    _h5_edit(bad, edit)
    run(base, ["export", bad.name, "--onnx", "o.onnx"])


# ------------------------------------------------------------------ rule 4: writes
def test_a_command_id_is_a_name_not_a_path(base):
    """Commands whose ``id`` is a path, sent to a running job: answered under the file's
    own name inside the run directory, nothing written anywhere else."""
    import subprocess

    from launch import MPIEXEC
    work = base / "work"
    before_out = _tree(base / "outside")
    p = subprocess.Popen([MPIEXEC, "-n", "2", MPIML] + [str(a) for a in TRAIN] +
                         ["--data", "d.h5", "--out", "o-id.h5", "--run-dir", "run-id",
                          "--epochs", "100000"], cwd=work, env=clean_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        status = work / "run-id" / "status.json"
        deadline = time.monotonic() + 60
        while not (status.exists() and json.loads(status.read_text()).get("state") == "running"):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.1)
        control = work / "run-id" / "control"
        for i, cid in enumerate(["../../../outside/pwned", "/tmp/pwned-abs", "a/b"]):
            (control / f"c{i}.json").write_text(json.dumps({"id": cid, "command": ["stop"]}))
        responses = work / "run-id" / "responses"
        while len([r for r in os.listdir(responses) if r.startswith("c")]) < 3:
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.1)
        got = {r: json.loads((responses / r).read_text())["status"]
               for r in os.listdir(responses) if r.startswith("c")}
        assert got == {"c0.json": "rejected", "c1.json": "rejected", "c2.json": "rejected"}
        assert p.poll() is None                   # none of them stopped the run
        code = subprocess.run([MPIML, "ctl", "run-id", "stop"], cwd=work, env=clean_env(),
                              capture_output=True, timeout=60).returncode
        assert code == 0
    finally:
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert not os.path.exists("/tmp/pwned-abs.json")
    assert _tree(base / "outside") == before_out


def test_two_jobs_predicting_into_one_file_do_not_mix(base):
    """Two concurrent predicts with different models into one --out: the file holds one
    model's predictions, whole."""
    import subprocess
    work = base / "work"
    code, _, err, _ = mpirun(1, TRAIN + ["--data", "d.h5", "--out", "m2.h5", "--lr", "1",
                                         "--epochs", 1], work)
    assert code == 0, err
    refs = {}
    for m in ("m.h5", "m2.h5"):
        code, _, err, _ = mpirun(2, ["predict", "--model", m, "--data", "d.h5", "--out",
                                     f"ref-{m}", "--block-rows", 16], work)
        assert code == 0, err
        with h5py.File(work / f"ref-{m}", "r") as f:
            refs[m] = f["pred"][()]
    assert not np.array_equal(refs["m.h5"], refs["m2.h5"])
    from launch import MPIEXEC
    for _ in range(3):
        procs = [subprocess.Popen([MPIEXEC, "-n", "2", MPIML, "predict", "--model", m, "--data",
                                   "d.h5", "--out", "shared.h5", "--block-rows", "16"], cwd=work,
                                  env=clean_env(), stderr=subprocess.PIPE)
                 for m in ("m.h5", "m2.h5")]
        assert all(p.wait(timeout=60) == 0 for p in procs)
        with h5py.File(work / "shared.h5", "r") as f:
            got = f["pred"][()]
        assert any(np.array_equal(got, r) for r in refs.values()), "predictions mixed"
    assert not [p for p in os.listdir(work) if ".part-" in p or ".tmp-" in p]


# ------------------------------------------------------------------ rule 5: inputs
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "stats is the data"])
def test_an_output_is_never_an_input(base, how):
    work = base / "work"
    out = {"same path": "d.h5", "symlink": "d-sym.h5", "hard link": "d-hard.h5"}.get(how, "o.h5")
    if how == "symlink" and not (work / out).exists():
        os.symlink("d.h5", work / out)
    if how == "hard link" and not (work / out).exists():
        os.link(work / "d.h5", work / out)
    extra = ["--stats", "d.h5"] if how == "stats is the data" else []
    run(base, TRAIN + ["--data", "d.h5", "--out", out] + extra, cls="OutputError")


def test_predict_convert_and_export_never_overwrite_their_input(base):
    run(base, ["predict", "--model", "m.h5", "--data", "d.h5", "--out", "d.h5"], cls="OutputError")
    run(base, ["predict", "--model", "m.h5", "--data", "d.h5", "--out", "m.h5"], cls="OutputError")
    run(base, ["export", "m.h5", "--onnx", "m.h5"], cls="OutputError")
    (base / "work" / "in.csv").write_text("1,2,0\n3,4,1\n")
    run(base, ["convert", "in.csv", "--out", "in.csv"], cls="OutputError")


# ------------------------------------------------------------------ rule 6: one run per dir
def test_a_checkpoint_directory_belongs_to_one_run(base):
    work = base / "work"
    args = TRAIN + ["--data", "d.h5", "--out", "o6.h5", "--checkpoint-dir", "ck6"]
    code, _, err, _ = mpirun(2, args, work)
    assert code == 0, err
    run(base, args, cls="ConfigError")                        # a fresh run is refused
    first = sorted(os.listdir(work / "ck6"))
    run(base, args + ["--overwrite"], code=0, leaves=["o6.h5", "ck6"])
    assert sorted(os.listdir(work / "ck6")) == first        # the same run again, replaced
    # another model, or other rows of the same shape, cannot resume it
    run(base, ["train", "--model", "hinge", "--epochs", 3, "--batch-size", 32, "--quiet",
               "--data", "d.h5", "--out", "o6b.h5", "--resume", "ck6"])
    run(base, TRAIN + ["--data", "d2.h5", "--out", "o6b.h5", "--epochs", 3, "--resume", "ck6"])


def test_a_checkpoint_without_a_fingerprint_resumes_with_a_warning(base):
    ck, old = _checkpoint_copy(base, "ck-old")
    _h5_edit(old, lambda f: f.attrs.__delitem__("fingerprint"))
    err = run(base, TRAIN + ["--data", "d.h5", "--out", "o-old.h5", "--epochs", 3, "--resume",
                             ck.name], code=0, leaves=["o-old.h5", "ck-old"])
    assert err.count("has no data fingerprint") == 1, err


# ------------------------------------------------------------------ rule 7: control plane
def test_stale_and_broken_command_files_are_answered_once_and_set_aside(base):
    work = base / "work"

    def setup(w):
        control = w / "run7" / "control"
        control.mkdir(parents=True)
        (control / "old.json").write_text(json.dumps({"id": "old", "command": ["pause"]}))
        (control / "dir.json").mkdir()
        (control / "deep.json").write_text("[" * 50 + "]" * 50)
        (control / "big.json").write_text(" " * 70000)
        os.symlink(str(w.parent / "outside" / "secret.bin"), control / "link.json")
    t0 = time.monotonic()
    run(base, TRAIN + ["--data", "d.h5", "--out", "o7.h5", "--run-dir", "run7", "--epochs", 3],
        code=0, leaves=["o7.h5", "run7"], setup=setup)
    assert time.monotonic() - t0 < 20          # the stale pause did not hang the run
    control = work / "run7" / "control"
    assert [e for e in os.listdir(control) if e.endswith(".json")] == []
    responses = {p: json.loads((work / "run7" / "responses" / p).read_text())
                 for p in os.listdir(work / "run7" / "responses")}
    assert {r["status"] for r in responses.values()} == {"rejected"}
    assert "old.json" in responses


def test_ctl_values_must_be_finite_and_in_range(base):
    import subprocess
    work = base / "work"
    for words in (["set", "lr=inf"], ["set", "lr=nan"], ["set", "batch_size=100000000000"],
                  ["set", "alpha=1e300"]):
        p = subprocess.run([MPIML, "ctl", "run7", *words], cwd=work, capture_output=True,
                           text=True, timeout=30, env=clean_env())
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr


def test_ctl_to_a_finished_run_answers_at_once(base):
    import subprocess
    t0 = time.monotonic()
    p = subprocess.run([MPIML, "ctl", "run7", "stop"], cwd=base / "work", capture_output=True,
                       text=True, timeout=30, env=clean_env())
    assert p.returncode != 0 and "finished" in p.stdout + p.stderr
    assert time.monotonic() - t0 < 5


def test_a_signal_without_a_checkpoint_directory_keeps_the_work(base):
    work = base / "work"
    env = clean_env(MPIML_TEST_ERROR_CLASS=1, MPIML_TEST_SIGNAL="1:10:SIGUSR1")
    run(base, TRAIN + ["--data", "d.h5", "--out", "o-sig.h5", "--epochs", 50], code=75,
        leaves=["o-sig.h5.checkpoints"], env=env)
    assert not (work / "o-sig.h5").exists()
    assert len(list((work / "o-sig.h5.checkpoints").glob("ckpt-*.h5"))) == 1
    run(base, TRAIN + ["--data", "d.h5", "--out", "o-sig.h5", "--epochs", 50, "--resume",
                       "o-sig.h5.checkpoints"], code=0, leaves=["o-sig.h5", "o-sig.h5.checkpoints"])


# ------------------------------------------------------------------ rule 8: converters
@pytest.mark.parametrize("case", ["nan", "overflow", "huge index"])
def test_converters_refuse_what_they_cannot_represent(base, case):
    work = base / "work"
    if case == "nan":
        (work / "nan.csv").write_text("a,b,y\n1,nan,0\n2,3,1\n")
        args = ["convert", "nan.csv", "--label-column", "y", "--out", "o8.h5"]
    elif case == "overflow":
        (work / "big.csv").write_text("a,y\n1e300,0\n2,1\n")
        args = ["convert", "big.csv", "--label-column", "y", "--out", "o8.h5"]
    else:
        # a dense X this wide cannot fit (the default, CSR, converts it: test_sparse_io)
        (work / "huge.svm").write_text("1 1000000000000:1\n")
        args = ["convert", "huge.svm", "--dense", "--out", "o8.h5"]
    run(base, args)


def test_converters_read_what_others_write(base):
    """A UTF-8 BOM, a quoted CSV header, and scikit-learn's zero-based libsvm files."""
    import scipy.sparse as sp
    from sklearn.datasets import dump_svmlight_file, load_svmlight_file
    work = base / "work"
    (work / "bom.csv").write_bytes('\ufeff"a","b","target"\n1,2,0\n3,4,1\n'.encode("utf-8"))
    run(base, ["convert", "bom.csv", "--label-column", "target", "--out", "bom.h5"], code=0,
        leaves=["bom.h5"])
    with h5py.File(work / "bom.h5", "r") as f:
        np.testing.assert_array_equal(f["X"][()], [[1, 2], [3, 4]])
        np.testing.assert_array_equal(f["y"][()], [0, 1])
    X = np.array([[0.5, 0.0, 2.0], [0.0, 1.5, 0.0]])
    dump_svmlight_file(X, [1, 0], str(work / "zb.svm"), zero_based=True)
    run(base, ["convert", "zb.svm", "--out", "zb.h5"], code=0, leaves=["zb.h5"])
    Xs, ys = load_svmlight_file(str(work / "zb.svm"), zero_based="auto")
    with h5py.File(work / "zb.h5", "r") as f:         # a CSR group in anndata's layout
        g = f["X"]
        got = sp.csr_matrix((g["data"][()], g["indices"][()], g["indptr"][()]),
                            shape=tuple(g.attrs["shape"]))
        np.testing.assert_array_equal(got.toarray(), Xs.toarray())
        np.testing.assert_array_equal(f["y"][()], ys)


# ------------------------------------------------------------------ rule 9: node memory
def test_memory_is_counted_per_node(base):
    """Each rank's share fits in the node's memory, both together do not."""
    from mpiml.io import available_memory
    avail = available_memory()
    if avail is None:
        pytest.skip("this platform does not report available memory")
    rows = int(avail * 1.5) // (10 * 4)
    work = base / "work"
    with h5py.File(work / "node.h5", "w") as f:
        f.create_dataset("X", shape=(rows, 10), dtype="f4", chunks=(1024, 10))
        f.create_dataset("y", shape=(rows,), dtype="f8", chunks=(1024,))
    err = run(base, TRAIN + ["--data", "node.h5", "--out", "o9.h5"])
    assert "node" in err


# ------------------------------------------------------------------ rule 10: orphans
def test_a_killed_writers_temporary_is_removed_at_the_next_start(base):
    work = base / "work"
    ck = work / "ck10"

    def setup(w):
        ck.mkdir(exist_ok=True)
        (ck / ".ckpt-000000000003.h5.tmp-999999999-deadbeef").write_bytes(b"half")
    run(base, TRAIN + ["--data", "d.h5", "--out", "o10.h5", "--checkpoint-dir", "ck10",
                       "--overwrite"], code=0, leaves=["o10.h5", "ck10"], setup=setup)
    assert not [p for p in os.listdir(ck) if ".tmp-" in p]


def test_a_signal_while_paused_checkpoints_and_exits_75(base):
    """A paused run does not ignore the time-limit signal: every rank checkpoints at the
    paused step and exits 75; the checkpoint resumes."""
    import signal
    import subprocess

    from launch import MPIEXEC
    work = base / "work"
    p = subprocess.Popen([MPIEXEC, "-n", "2", MPIML] +
                         [str(a) for a in TRAIN] + ["--data", "d.h5", "--out", "o-pause.h5",
                                                    "--run-dir", "run-pause", "--epochs",
                                                    "100000"],
                         cwd=work, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        status = work / "run-pause" / "status.json"
        deadline = time.monotonic() + 60
        while not (status.exists() and json.loads(status.read_text()).get("state") == "running"):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.1)
        out = subprocess.run([MPIML, "ctl", "run-pause", "pause"], cwd=work, env=clean_env(),
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "paused" in out.stdout, out.stdout + out.stderr
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGUSR1)            # mpiexec forwards it to the ranks
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    err = err.decode()
    assert p.returncode == 75, err                # the ranks' own exit code, through mpiexec
    assert err.count("stopped by a signal; checkpoint written") == 1, err
    assert took < 10, took
    assert not (work / "o-pause.h5").exists()
    assert list((work / "run-pause" / "checkpoints").glob("ckpt-*.h5"))
