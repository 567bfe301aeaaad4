"""The package's structure, checked so later work cannot quietly undo it: no function
over 80 lines, no import cycle among mpiml's modules (imports inside functions count),
no test-hook environment read outside mpiml/hooks.py, and importing mpiml changes
nothing in the process's environment."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "mpiml")
MAX_LINES = 80


def _modules():
    for root, _, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                is_pkg = name.endswith(".__init__")
                if is_pkg:
                    name = name[:-len(".__init__")]
                yield name, is_pkg, path, ast.parse(open(path).read(), path)


def _exists(module):
    base = os.path.join(ROOT, *module.split("."))
    return os.path.exists(base + ".py") or os.path.isdir(base)


def import_graph():
    """module -> the mpiml modules it imports, anywhere in its body."""
    graph = {}
    for name, is_pkg, _, tree in _modules():
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "mpiml"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = name.split(".") if is_pkg else name.split(".")[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    target = ".".join(parts + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "mpiml":
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    deps.add(sub if _exists(sub) else target)
        graph[name] = deps - {name}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_function_is_longer_than_80_lines():
    long = [f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} "
            f"({node.end_lineno - node.lineno + 1} lines)"
            for _, _, path, tree in _modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, long


def test_the_modules_import_each_other_without_a_cycle():
    graph = import_graph()
    assert "mpiml.cli_train" in graph["mpiml.cli"]          # the graph sees the imports
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_test_hooks_are_read_only_in_the_hooks_module():
    readers = []
    for name, _, path, _ in _modules():
        if name != "mpiml.hooks" and "MPIML_TEST_" in open(path).read():
            readers.append(name)
    assert not readers, readers


def test_importing_mpiml_changes_no_environment_variable():
    # scikit-learn, a dependency, sets two Intel OpenMP variables when it is imported
    # (KMP_DUPLICATE_LIB_OK, KMP_INIT_AT_FORK): that is its own doing, so the comparison
    # starts after importing it; mpiml itself must change nothing
    code = ("import os, json, sklearn; before = dict(os.environ); import mpiml, mpiml.cli; "
            "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "OPENBLAS_", "MKL_", "PMI_", "HYDRA_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_shared_infrastructure_parameters_agree_across_estimators():
    """The parameters of how a fit runs (checkpoints, sync modes, dtype, comm, ...) are
    listed in each estimator's signature, as scikit-learn requires; they must not drift
    apart: same names, same defaults."""
    import inspect

    from mpiml import MLPClassifier, MLPRegressor, SGDClassifier, SGDRegressor
    infra = ("random_state", "verbose", "dtype", "checkpoint_dir", "checkpoint_every",
             "checkpoint_seconds", "keep_checkpoints", "comm_timeout", "model_parallel", "sync",
             "sync_warmup", "max_staleness", "overlap", "compress", "stats", "run_dir",
             "scaler", "comm")
    defaults = {}
    for cls in (SGDClassifier, SGDRegressor, MLPClassifier, MLPRegressor):
        params = inspect.signature(cls.__init__).parameters
        missing = [p for p in infra if p not in params]
        assert not missing, (cls.__name__, missing)
        defaults[cls.__name__] = {p: params[p].default for p in infra}
    first = defaults["SGDClassifier"]
    assert all(d == first for d in defaults.values()), defaults
