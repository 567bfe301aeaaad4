"""``mpiml plot RUN_DIR``: PNG curves of a run from its metrics log (matplotlib)."""
import json
import os

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run_dir):
    """(epoch records, event records) of ``run_dir/metrics.jsonl``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no metrics log in {run_dir} (metrics.jsonl): was the job "
                                "started with --run-dir?")
    epochs, events = [], []
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise ValueError(f"{path}: line {n} is not JSON") from None
            (events if "event" in rec else epochs).append(rec)
    return epochs, events


def plot_run(run_dir, out, width=12.0, height=8.0, dpi=100):
    """Write a 2 x 2 figure: loss, learning rate (with control commands marked),
    throughput and the per-rank time split, against the epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs, events = read_metrics(run_dir)
    if not epochs:
        raise ValueError(f"{run_dir}: the metrics log has no finished epoch yet")
    x = [r["epoch"] for r in epochs]
    fig, axes = plt.subplots(2, 2, figsize=(width, height), dpi=dpi)
    ax = axes[0, 0]
    ax.plot(x, [r["loss"] for r in epochs], "o-", label="training loss (mean over the epoch)")
    if any("val_loss" in r for r in epochs):
        ax.plot(x, [r.get("val_loss") for r in epochs], "s--", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.legend(loc="upper right", fontsize=8)
    val_metric = next((k for k in ("val_accuracy", "val_r2") if k in epochs[-1]), None)
    if val_metric:
        twin = ax.twinx()
        twin.plot(x, [r.get(val_metric) for r in epochs], "^:", color="tab:green",
                  label=val_metric.replace("_", " "))
        twin.set_ylabel(val_metric.replace("val_", "validation "))
        twin.legend(loc="right", fontsize=8)

    ax = axes[0, 1]
    ax.step(x, [r["lr"] for r in epochs], where="post", label="learning rate")
    step_to_epoch = [(r["step"], r["epoch"]) for r in epochs]
    for ev in events:
        if ev.get("event") == "command" and ev.get("status") == "applied":
            # the command's update number, placed between the epochs around it
            e = next((ep for st, ep in step_to_epoch if st >= ev.get("step", 0)), x[-1])
            ax.axvline(e, color="grey", linestyle=":", linewidth=1)
            ax.annotate(ev["command"], (e, ax.get_ylim()[1]), rotation=90, fontsize=7,
                        va="top", ha="right")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate (dotted: applied ctl commands)")
    ax.legend()

    ax = axes[1, 0]
    ax.plot(x, [r["samples_per_s"] / 1e6 for r in epochs], "o-", label="all ranks")
    ax.set_xlabel("epoch")
    ax.set_ylabel("throughput (million samples/s)")
    ax.set_title("Throughput")
    ax.legend()

    ax = axes[1, 1]
    if all("time" in r for r in epochs):
        for part in ("compute", "communication", "waiting", "io"):
            mean = [r["time"][part]["mean"] * 1e3 for r in epochs]
            lo = [r["time"][part]["min"] * 1e3 for r in epochs]
            hi = [r["time"][part]["max"] * 1e3 for r in epochs]
            ax.plot(x, mean, label=f"{part} (mean; band: min-max over ranks)")
            ax.fill_between(x, lo, hi, alpha=0.2)
        ax.legend(fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("time per epoch and rank (ms)")
    ax.set_title("Where the time goes")
    fig.suptitle(f"mpiml run {os.path.abspath(run_dir)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
