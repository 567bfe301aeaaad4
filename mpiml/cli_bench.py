"""``mpiml bench model``: projected step time and scaling efficiency from the alpha-beta
model (:mod:`mpiml.perfmodel`), with the compute rate measured on this machine."""
import json

from .errors import ConfigError


def add_parser(sub, positive_int):
    p = sub.add_parser("bench", help="performance model: projected scaling at many ranks")
    bsub = p.add_subparsers(dest="bench_verb", metavar="WHAT", required=True)
    m = bsub.add_parser(
        "model", help="project step time and efficiency at 16-4096 ranks from alpha, beta "
                      "and the compute rate measured here",
        description="Predicts step time, samples/s and scaling efficiency of synchronous "
                    "data-parallel training with the alpha-beta model of docs/performance.md. "
                    "Network: --interconnect (defaults for common ones), --alpha/--beta, or "
                    "--fit with the JSON of benchmarks/run.py. Compute: measured here on one "
                    "core unless --rate is given.")
    m.add_argument("--ranks", default="16,64,256,1024,4096",
                   help="comma-separated rank counts (default 16,64,256,1024,4096)")
    m.add_argument("--interconnect", default=None,
                   help="network defaults: " + ", ".join(_interconnects())
                        + " (default infiniband-hdr), or 'list'")
    m.add_argument("--alpha", default=None, help="latency per message, e.g. 1.5us")
    m.add_argument("--beta", default=None,
                   help="bandwidth per link, e.g. 12GB/s (B = bytes, b = bits)")
    m.add_argument("--fit", default=None, metavar="JSON",
                   help="take alpha and beta fitted by benchmarks/run.py (its model.json or "
                        "allreduce.json)")
    m.add_argument("--model", default="logistic",
                   choices=["logistic", "hinge", "softmax", "linear", "huber", "mlp",
                            "mlp-regression"])
    m.add_argument("--features", type=positive_int, default=100)
    m.add_argument("--classes", type=positive_int, default=2)
    m.add_argument("--hidden", default="256", help="MLP hidden layer sizes, e.g. 1024,1024")
    m.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    m.add_argument("--batch", type=positive_int, default=256,
                   help="batch per rank (weak scaling) or global batch (strong), default 256")
    m.add_argument("--scaling", default="weak", choices=["weak", "strong"])
    m.add_argument("--sync", default="allreduce",
                   help="allreduce, local:H, ps:S, fp16 or topk:R (default allreduce)")
    m.add_argument("--rate", type=float, default=None,
                   help="samples/s of one rank (default: measured here on random data)")
    m.add_argument("--step-overhead", default="0us",
                   help="fixed cost per step with --rate, e.g. 5us (default 0)")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=cmd_bench)


def _interconnects():
    from .perfmodel import INTERCONNECTS
    return list(INTERCONNECTS)


def _network(args):
    from . import perfmodel as pm

    if args.fit:
        try:
            with open(args.fit) as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--fit {args.fit}: cannot read JSON ({exc})") from None
        fitted = doc.get("fit") or doc.get("allreduce_fit")
        if not fitted:
            raise ConfigError(f"--fit {args.fit}: no 'fit' entry (write it with "
                              f"benchmarks/run.py --parts allreduce on 2 or more ranks)")
        alpha, bw, source = fitted["alpha_s"], fitted["bandwidth_Bps"], f"fitted ({args.fit})"
    else:
        name = args.interconnect or pm.DEFAULT_INTERCONNECT
        if name not in pm.INTERCONNECTS:
            raise ConfigError(f"unknown interconnect {name!r}; known: "
                              + ", ".join(pm.INTERCONNECTS))
        alpha, bw, desc = pm.INTERCONNECTS[name]
        source = f"{name} defaults ({desc})"
    if args.alpha is not None:
        alpha, source = pm.parse_time(args.alpha), "given"
    if args.beta is not None:
        bw, source = pm.parse_bandwidth(args.beta), "given"
    return alpha, bw, source


def cmd_bench(args):
    from . import perfmodel as pm
    from .comm import get_comm

    c = get_comm()
    if args.interconnect == "list":
        for name, (a, bw, desc) in pm.INTERCONNECTS.items():
            c.print0(f"{name:<16} alpha {a * 1e6:5.2f} us  bandwidth {bw / 1e9:5.1f} GB/s  {desc}")
        return 0
    try:
        ranks = [int(r) for r in args.ranks.split(",")]
        hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else ()
        if min(ranks) < 1 or (hidden and min(hidden) < 1):
            raise ValueError
    except ValueError:
        raise ConfigError("--ranks and --hidden must be comma-separated positive integers",
                          ranks=range(c.size)) from None
    try:
        alpha, bw, source = _network(args)
        pm.comm_time(args.sync, max(ranks), 8, 8, alpha, bw)     # validates --sync
        grad, weights = pm.model_bytes(args.model, args.features, args.classes, hidden,
                                       args.dtype)
        if args.rate is not None:
            if args.rate <= 0:
                raise ConfigError(f"--rate must be positive, got {args.rate}")
            c0, rate, measured = pm.parse_time(args.step_overhead), args.rate, None
    except ConfigError as exc:
        raise ConfigError(str(exc), ranks=range(c.size)) from None
    if args.rate is None:
        measured = None
        if c.rank == 0:
            measured = pm.measure_compute(args.model, args.features, args.classes, hidden,
                                          dtype=args.dtype)
        measured = c.bcast(measured)
        c0, rate = pm.fit_compute(measured)
    rows = pm.predict(ranks, c0=c0, rate=rate, batch=args.batch, grad_bytes=grad,
                      weight_bytes=weights, alpha=alpha, bandwidth=bw, mode=args.sync,
                      scaling=args.scaling)
    out = {"alpha_s": alpha, "bandwidth_Bps": bw, "network": source, "model": args.model,
           "features": args.features, "classes": args.classes,
           "hidden": list(hidden) if args.model.startswith("mlp") else [],
           "gradient_bytes": grad, "sync": args.sync, "scaling": args.scaling,
           "batch": args.batch, "step_overhead_s": c0, "rate_samples_per_s": rate,
           "compute_measured": measured, "projection": rows}
    if args.json:
        c.print0(json.dumps(out))
        return 0
    unit = "per rank" if args.scaling == "weak" else "global"
    c.print0(f"network: alpha {alpha * 1e6:.3g} us, bandwidth {bw / 1e9:.3g} GB/s ({source})")
    c.print0(f"model: {args.model}, {args.features} features, gradient {grad / 1024:.1f} KiB "
             f"per Allreduce; sync {args.sync}; batch {args.batch} {unit} ({args.scaling} "
             f"scaling)")
    c.print0(f"compute: {rate / 1e6:.3g} M samples/s per rank + {c0 * 1e6:.2f} us per step "
             + ("(measured here, one core)" if measured else "(given)"))
    c.print0(f"{'ranks':>7} {'compute':>10} {'comm':>10} {'step':>10} {'samples/s':>11} "
             f"{'efficiency':>10}")
    for r in rows:
        c.print0(f"{r['ranks']:>7} {r['compute_s'] * 1e6:>8.1f}us {r['comm_s'] * 1e6:>8.1f}us "
                 f"{r['step_s'] * 1e6:>8.1f}us {r['samples_per_s']:>11.4g} "
                 f"{r['efficiency'] * 100:>9.1f}%")
    return 0
