#!/usr/bin/env python3
"""Where a training step of the PyTorch replica of qat's `small` ResNet
(`torch_small_resnet.py`) spends its time: the PyTorch side of
`qat train --profile N`.

Each step has qat's phases, timed with a wall clock: data (draw the batch,
augment, normalize), forward with the loss (and `loss.item()`, as qat reads
the loss), backward, optimizer (`zero_grad` + `step`). A first pass of N
steps (after `--warmup` steps) runs without the profiler and gives the phase
table and images/s; a second pass of N steps runs under `torch.profiler`
(CPU) and gives the per-op table: each op's self CPU time, attributed to the
phase whose `record_function` range contains it and grouped into qat's kinds
(convolution, batch norm, fake-quant, observers, elementwise, pooling, gemm,
loss, memory, optimizer, other). "outside the ops" is the phase's time that no
aten op accounts for (Python, autograd bookkeeping, the profiler itself).

Usage:
  profile_torch_step.py [--mode fp32|qat|both] [--threads 2] [--steps 20]
                        [--warmup 2] [--limit 12800] [--data DIR] [--top 25]
  profile_torch_step.py --mode qat --no-profiler --json   (one line of JSON:
                        images/s and phase ms/step; what the bench reads)

Threads: `torch.set_num_threads(--threads)`; the script also sets
OMP_NUM_THREADS and MKL_NUM_THREADS to it before importing torch.
Needs torch (tested with 2.15.0, CPU); not part of `cargo test`.
"""

import argparse
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

PHASES = ("data", "forward", "backward", "optimizer")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["fp32", "qat", "both"], default="both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--limit", type=int, default=12800, help="first N training images")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=25, help="ops listed in the per-op table")
    ap.add_argument("--no-profiler", action="store_true", help="phase timings only")
    ap.add_argument("--json", action="store_true", help="print one JSON line (implies --no-profiler)")
    return ap.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_small_resnet as tsr  # noqa: E402

warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")


GENERIC = ("elementwise", "memory", "other")


def kind(name: str, phase: str) -> str:
    """qat's kinds (src/backend/profile.rs `kind`) for a torch op name; an
    op renamed "op (Node)" takes the kind of its autograd node."""
    n = name.lower()
    if n.endswith(")") and " (" in n:
        n = n[n.rindex(" (") + 2 : -1]
    if phase == "optimizer" and not n.startswith(("aten::zero", "aten::fill")):
        return "optimizer"
    if "fake_quant" in n or "fakequant" in n or "fused_moving_avg_obs_fq" in n or "fusedmovingavgobs" in n:
        return "fake-quant"
    if "aminmax" in n or n in ("aten::min", "aten::max", "aten::_aminmax"):
        return "observers"
    if "conv" in n:
        return "convolution"
    if "batch_norm" in n or "batchnorm" in n:
        return "batch norm"
    if "pool" in n or n in ("aten::mean", "meanbackward1", "aten::mean_backward"):
        return "pooling"
    if any(k in n for k in ("addmm", "aten::mm", "aten::linear", "addmmbackward", "mmbackward", "tbackward")):
        return "gemm"
    if any(k in n for k in ("log_softmax", "nll_loss", "cross_entropy", "logsoftmax", "nllloss")):
        return "loss"
    if any(
        k in n
        for k in (
            "add",
            "relu",
            "threshold",
            "mul",
            "div",
            "sub",
            "clamp",
            "where",
            "neg",
            "sqrt",
            "rsqrt",
            "reciprocal",
        )
    ):
        return "elementwise"
    if any(
        k in n
        for k in (
            "empty",
            "zeros",
            "zero_",
            "fill_",
            "copy_",
            "clone",
            "contiguous",
            "aten::to",
            "_to_copy",
            "resize",
            "ones",
        )
    ):
        return "memory"
    return "other"


class Step:
    def __init__(self, mode, args):
        torch.manual_seed(args.seed)
        self.model = tsr.build_model(mode == "qat")
        self.opt = tsr.make_optimizer(self.model)
        self.gen = torch.Generator().manual_seed(args.seed)
        x, y = tsr.load_train(args.data, args.limit)
        self.batches = tsr.batches(x, y, self.gen)
        self.augment = tsr.Augment()

    def run(self, times, record=False):
        """One step; adds each phase's wall time to `times`."""
        rf = torch.profiler.record_function if record else None

        def phase(name, fn):
            t = time.perf_counter()
            if rf is None:
                r = fn()
            else:
                with rf("phase:" + name):
                    r = fn()
            times[name] += time.perf_counter() - t
            return r

        def data():
            xb, yb = next(self.batches)
            return self.augment(xb, self.gen), yb

        x, y = phase("data", data)

        def forward():
            loss = F.cross_entropy(self.model(x), y)
            loss.item()
            return loss

        loss = phase("forward", forward)
        phase("backward", loss.backward)

        def optimizer():
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

        phase("optimizer", optimizer)


def timed_pass(step, steps):
    times = defaultdict(float)
    for _ in range(steps):
        step.run(times)
    return times


GRAD_NODE = "autograd::engine::evaluate_function: "


def phase_of(ev):
    """The phase whose range holds `ev`, and the autograd node that ran it
    (None in the forward)."""
    e, node = ev, None
    while e is not None:
        if node is None and e.name.startswith(GRAD_NODE):
            node = e.name[len(GRAD_NODE) :]
        if e.name.startswith("phase:"):
            return e.name[len("phase:") :], node
        e = e.cpu_parent
    return None, None


def profiled_pass(step, steps):
    times = defaultdict(float)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step.run(times, record=True)
    # (phase, op) -> calls, self seconds. In the backward, a generic op
    # (mul, copy_, ...) run by a fake-quant's autograd node is named after
    # that node and counted as fake-quant, as qat's fake_quant_*_bwd is (the
    # mask multiply). Other nodes keep their ops' own kinds: the gradient
    # accumulation the engine runs under ConvolutionBackward0 is elementwise.
    ops = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.name.startswith("phase:"):
            continue
        p, node = phase_of(ev)
        if p is None:
            continue
        name = ev.name
        if node and kind(name, p) in GENERIC and kind(node, p) == "fake-quant":
            name = f"{name} ({node})"
        o = ops[(p, name)]
        o[0] += 1
        o[1] += ev.self_cpu_time_total * 1e-6
    return times, ops


def report(mode, args, times, ops, prof_times):
    n, b = args.steps, tsr.BATCH
    total = sum(times.values())
    print(
        f"{mode.upper()} PyTorch {torch.__version__}, {torch.get_num_threads()} threads: {n} steps of {b} "
        f"images after {args.warmup} warm-up steps, {1e3 * total / n:.2f} ms/step, {n * b / total:.1f} images/s"
    )
    print(f"\n{'phase (no profiler)':<34} {'ms/step':>10} {'share':>7}")
    for p in PHASES:
        print(f"{p:<34} {1e3 * times[p] / n:>10.3f} {100 * times[p] / total:>6.1f}%")
    if ops is None:
        return
    ptotal = sum(prof_times.values())
    print(
        f"\nunder the profiler: {1e3 * ptotal / n:.2f} ms/step; per-op self CPU time, shares of that step\n"
        f"\n{'phase':<34} {'ms/step':>10} {'share':>7}"
    )
    for p in PHASES:
        inside = sum(t for (q, _), (_, t) in ops.items() if q == p)
        print(f"{p:<34} {1e3 * prof_times[p] / n:>10.3f} {100 * prof_times[p] / ptotal:>6.1f}%")
        out = max(prof_times[p] - inside, 0.0)
        print(f"{'  ' + p + ' outside the ops':<34} {1e3 * out / n:>10.3f} {100 * out / ptotal:>6.1f}%")
    kinds = defaultdict(lambda: [0, 0.0])
    for (p, name), (c, t) in ops.items():
        k = kinds[(p, kind(name, p))]
        k[0] += c
        k[1] += t
    print(f"\n{'phase':<11} {'kind':<22} {'calls/step':>10} {'ms/step':>10} {'share':>7}")
    for (p, k), (c, t) in sorted(kinds.items(), key=lambda r: -r[1][1]):
        print(f"{p:<11} {k:<22} {c / n:>10.1f} {1e3 * t / n:>10.3f} {100 * t / ptotal:>6.1f}%")
    totals = defaultdict(float)
    for (p, k), (_, t) in kinds.items():
        totals[k] += t
    print(f"\n{'kind, all phases':<34} {'ms/step':>10} {'share':>7}")
    for k, t in sorted(totals.items(), key=lambda r: -r[1]):
        print(f"{k:<34} {1e3 * t / n:>10.3f} {100 * t / ptotal:>6.1f}%")
    print(f"\n{'phase':<11} {'op':<52} {'calls/step':>10} {'ms/step':>10} {'share':>7}")
    for (p, name), (c, t) in sorted(ops.items(), key=lambda r: -r[1][1])[: args.top]:
        print(f"{p:<11} {name[:52]:<52} {c / n:>10.1f} {1e3 * t / n:>10.3f} {100 * t / ptotal:>6.1f}%")


def main():
    args = ARGS
    torch.set_num_threads(args.threads)
    modes = ["fp32", "qat"] if args.mode == "both" else [args.mode]
    for i, mode in enumerate(modes):
        step = Step(mode, args)
        load_before = os.getloadavg()[0]
        warm = defaultdict(float)
        for _ in range(args.warmup):
            step.run(warm)
        times = timed_pass(step, args.steps)
        load_after = os.getloadavg()[0]
        if args.json:
            total = sum(times.values())
            print(
                json.dumps(
                    {
                        "side": "torch",
                        "mode": mode,
                        "threads": torch.get_num_threads(),
                        "steps": args.steps,
                        "batch": tsr.BATCH,
                        "images_per_s": args.steps * tsr.BATCH / total,
                        "phases_ms": {p: 1e3 * times[p] / args.steps for p in PHASES},
                        "load": [load_before, load_after],
                    }
                ),
                flush=True,
            )
            continue
        ops = prof_times = None
        if not args.no_profiler:
            prof_times, ops = profiled_pass(step, args.steps)
        if i:
            print()
        print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
        report(mode, args, times, ops, prof_times)


if __name__ == "__main__":
    main()
