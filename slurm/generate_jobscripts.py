#!/usr/bin/env python3
"""Write one Slurm job script per (nodes, ranks, rows) point of a scaling config.

    python slurm/generate_jobscripts.py benchmarks/scaling.json [--out-dir DIR]
    for f in DIR/*.sbatch; do sbatch "$f"; done
    python slurm/generate_jobscripts.py benchmarks/scaling.json --collect   # the table

Each script makes its dataset once (``mpiml make-data``, shared by every point of the
same size, written under a temporary name and renamed) and then runs ``mpiml train``
through the body of ``slurm/train.sbatch``: the same launcher choice (srun or
mpiexec), time-limit signal, checkpoint, requeue and resume. ``mpiml train`` prints
its load and training times; ``--stats`` writes per-epoch communication counters.
``--collect`` reads the job logs back into one table (CSV on stdout); a run that was
resumed is marked, its time covers only the part after the resume.

The config (JSON):

    {"name": "scaling", "model": "logistic", "features": 100, "epochs": 3,
     "batch_size": 256, "time": "00:20:00", "launcher": "srun", "srun_mpi": "pmi2",
     "sbatch": ["--partition=compute"],            # extra #SBATCH lines, optional
     "setup": ["module load python/3.11", "source ~/venvs/mpiml/bin/activate"],
     "data_dir": "data", "out_dir": "jobs",
     "grid": {"nodes": [1, 2], "ranks": [1, 2, 4, 8], "rows": [1000000, 4000000]},
     "points": [{"nodes": 4, "ranks": 16, "rows": 16000000}]}

``grid`` is expanded to every combination with nodes <= ranks; ``points`` adds single
points; either may be left out. Relative paths are relative to the directory sbatch
is run from.
"""
import argparse
import csv
import itertools
import json
import os
import re
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, "train.sbatch")
DEFAULTS = {"name": "scaling", "model": "logistic", "features": 100, "epochs": 3,
            "batch_size": 256, "time": "00:20:00", "launcher": "srun", "srun_mpi": "pmi2",
            "mpiexec": "mpiexec", "signal_seconds": 120, "sbatch": [], "setup": [],
            "data_dir": "data", "out_dir": "jobs", "seed": 0, "extra": ""}


def points(cfg):
    """The (nodes, ranks, rows) points of a config, in order, without repeats."""
    out = []
    grid = cfg.get("grid")
    if grid:
        for nodes, ranks, rows in itertools.product(grid["nodes"], grid["ranks"], grid["rows"]):
            if nodes <= ranks:
                out.append((int(nodes), int(ranks), int(rows)))
    for p in cfg.get("points", []):
        out.append((int(p["nodes"]), int(p["ranks"]), int(p["rows"])))
    seen = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def check(cfg):
    unknown = set(cfg) - set(DEFAULTS) - {"grid", "points"}
    if unknown:
        raise SystemExit(f"unknown config key(s): {', '.join(sorted(unknown))}")
    if cfg["launcher"] not in ("srun", "mpiexec"):
        raise SystemExit("launcher must be srun or mpiexec")
    pts = points(cfg)
    if not pts:
        raise SystemExit("the config has no points (give 'grid' and/or 'points')")
    for nodes, ranks, rows in pts:
        if min(nodes, ranks, rows) < 1:
            raise SystemExit(f"bad point nodes={nodes} ranks={ranks} rows={rows}")
    return pts


def train_body():
    """slurm/train.sbatch after its #SBATCH lines."""
    with open(TRAIN) as fh:
        lines = fh.read().splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    return "# --- the rest is slurm/train.sbatch\n" + "\n".join(lines[last + 1:])


def job_name(cfg, nodes, ranks, rows):
    return f"{cfg['name']}-n{nodes}-r{ranks}-{rows}"


def script(cfg, nodes, ranks, rows):
    name = job_name(cfg, nodes, ranks, rows)
    data = os.path.join(cfg["data_dir"], f"{cfg['name']}-{rows}x{cfg['features']}.h5")
    q = shlex.quote
    header = [
        "#!/bin/bash",
        f"# {name}: {ranks} rank(s) on {nodes} node(s), {rows} x {cfg['features']} "
        f"{cfg['model']}; written by slurm/generate_jobscripts.py",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks={ranks}",
        f"#SBATCH --time={cfg['time']}",
        f"#SBATCH --signal=B:USR1@{cfg['signal_seconds']}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={name}-%j.out",
    ] + [f"#SBATCH {s}" for s in cfg["sbatch"]]
    setup = cfg["setup"] or ["# (no site setup in the config: mpiml must be on PATH)"]
    env = {"MPIML_DATA": data, "MPIML_MODEL": cfg["model"], "MPIML_EPOCHS": cfg["epochs"],
           "MPIML_BATCH": cfg["batch_size"], "MPIML_OUT": f"{name}.model.h5",
           "MPIML_CKPT": f"ckpt-{name}-${{SLURM_JOB_ID}}",   # kept over a requeue
           "MPIML_LAUNCHER": cfg["launcher"], "MPIML_SRUN_MPI": cfg["srun_mpi"],
           "MPIML_MPIEXEC": cfg["mpiexec"],
           "MPIML_EXTRA": f"--stats {name}.stats.jsonl {cfg['extra']}".strip()}
    exports = [f'export {k}="{v}"' for k, v in env.items()]
    make = [
        "# the dataset of this size, made once for every point that uses it",
        f"if [ ! -e {q(data)} ]; then",
        f"    mkdir -p {q(cfg['data_dir'])}",
        f"    mpiml make-data --task binary --rows {rows} --features {cfg['features']} "
        f"--seed {cfg['seed']} --out {q(data)}.tmp-$SLURM_JOB_ID && "
        f"mv -f {q(data)}.tmp-$SLURM_JOB_ID {q(data)} || exit 1",
        "fi",
        f'echo "mpiml-bench: point nodes={nodes} ranks={ranks} rows={rows} '
        f'features={cfg["features"]} model={cfg["model"]} launcher=$MPIML_LAUNCHER"',
    ]
    return "\n".join(header + [""] + setup + [""] + exports + [""] + make + [""]
                     + [train_body(), ""])


TRAINED = re.compile(r"trained (\d+) epoch\(s\) \((\d+) in this run\) in ([0-9.]+) s "
                     r"\(([0-9.]+) M samples/s")
LOADED = re.compile(r"loaded in ([0-9.]+) s")
POINT = re.compile(r"mpiml-bench: point nodes=(\d+) ranks=(\d+) rows=(\d+)")


def collect(cfg, out_dir):
    """One CSV row per job log found for the config's points."""
    w = csv.writer(sys.stdout)
    w.writerow(["nodes", "ranks", "rows", "job_log", "load_s", "train_s", "msamples_per_s",
                "epochs", "resumed"])
    for nodes, ranks, rows in points(cfg):
        prefix = job_name(cfg, nodes, ranks, rows) + "-"
        for f in sorted(os.listdir(out_dir)):
            if not (f.startswith(prefix) and f.endswith(".out")):
                continue
            with open(os.path.join(out_dir, f), errors="replace") as fh:
                text = fh.read()
            t, lo = TRAINED.findall(text), LOADED.findall(text)
            if not t:
                w.writerow([nodes, ranks, rows, f, "", "", "", "", "not finished"])
                continue
            epochs, in_run, secs, rate = t[-1]
            w.writerow([nodes, ranks, rows, f, lo[-1] if lo else "", secs, rate, epochs,
                        "yes" if "mpiml-job: resuming from" in text else "no"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="JSON config (see the module doc)")
    ap.add_argument("--out-dir", help="where to write the scripts (default: the config's "
                                      "out_dir)")
    ap.add_argument("--collect", action="store_true",
                    help="read the job logs in --out-dir (or the current directory) into CSV")
    args = ap.parse_args(argv)
    with open(args.config) as fh:
        cfg = dict(DEFAULTS, **json.load(fh))
    pts = check(cfg)
    if args.collect:
        collect(cfg, args.out_dir or ".")
        return 0
    out_dir = args.out_dir or cfg["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    for nodes, ranks, rows in pts:
        path = os.path.join(out_dir, job_name(cfg, nodes, ranks, rows) + ".sbatch")
        with open(path, "w") as fh:
            fh.write(script(cfg, nodes, ranks, rows))
        os.chmod(path, 0o755)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
