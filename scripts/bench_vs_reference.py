#!/usr/bin/env python3
"""Our CPU backend beside numpy (OpenBLAS) and PyTorch CPU, in one run.

Times, on the shapes of benches/cpu_kernels.rs (listed by the Rust example
`bench_shapes --list`, so both sides agree):
  * square GEMM: ours vs numpy `a @ b` (float32);
  * conv2d forward, backward-data and backward-weight at ResNet-18 shapes
    and at MobileNetV2 shapes (batch 32: the depthwise 3x3 layers, `dw_*`,
    `groups == channels`, and four pointwise 1x1 projections, `pw_*-*`):
    ours vs PyTorch `F.conv2d` with the same `groups` (forward under
    no_grad; backward through autograd, `torch.autograd.grad` on the input
    or on the weight). `--only dw_,pw_` times just the MobileNetV2 shapes.

Our side runs in a `bench_shapes --serve` subprocess that sits idle while the
reference runs, and the two alternate request by request (rotating who goes
first every round), so both see the same machine load. Each turn is one
warm-up call and 3-50 timed calls (about 20 GFLOP); its figure is the fastest
call. Table figures are medians over rounds; the ratio is the median of the
per-round ratios. `--baseline BIN` adds a third side, another build of
`bench_shapes` (e.g. from main), and an ours/baseline column; `--threads 1`
compares single-threaded kernels, which a loaded machine disturbs far less.

Run it as docs/PERF.md says:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 scripts/bench_vs_reference.py

(those two variables pin OpenBLAS to an older, slower kernel on some
processors here; unset them for this command only). Needs numpy, torch and
threadpoolctl (`pip install threadpoolctl`).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import threadpoolctl
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Ours:
    """A `bench_shapes --serve` subprocess: this tree's, built here, or a
    prebuilt binary (`--baseline`, e.g. built from another commit)."""

    def __init__(self, threads, binary=None):
        if binary is None:
            subprocess.run(["cargo", "build", "--quiet", "--release", "--example", "bench_shapes"], cwd=ROOT, check=True)
            binary = os.path.join(ROOT, "target", "release", "examples", "bench_shapes")
        cmd, env = [binary], dict(os.environ, RAYON_NUM_THREADS=str(threads))
        run = subprocess.run(cmd + ["--list"], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        self.shapes = json.loads(run.stdout)
        self.proc = subprocess.Popen(
            cmd + ["--serve"], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def time(self, kind, name, reps):
        self.proc.stdin.write(f"{kind} {name} {reps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("bench_shapes --serve exited (a kernel check failed?)")
        reply = json.loads(line)
        if "error" in reply:
            sys.exit(f"bench_shapes: {reply['error']}")
        return reply["secs"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def time_runs(reps, fn):
    """Wall time of each of `reps` calls after one warm-up call (as ours)."""
    fn()
    secs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t)
    return secs


def numpy_gemm(size, reps):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    b = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    c = np.empty((size, size), np.float32)
    return time_runs(reps, lambda: np.matmul(a, b, out=c))


def torch_conv(s, op, reps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(s["n"], s["c_in"], s["h"], s["w"], generator=g) * 2 - 1
    w = torch.rand(s["c_out"], s["c_in"] // s["groups"], s["kh"], s["kw"], generator=g) * 2 - 1
    kw = dict(stride=tuple(s["stride"]), padding=tuple(s["pad"]), dilation=tuple(s["dilation"]), groups=s["groups"])
    if op == "fwd":
        def run():
            with torch.no_grad():
                F.conv2d(x, w, None, **kw)
        return time_runs(reps, run)
    wrt = x if op == "bwd_data" else w
    wrt.requires_grad_(True)
    y = F.conv2d(x, w, None, **kw)
    dy = torch.rand(y.shape, generator=g) * 2 - 1
    return time_runs(reps, lambda: torch.autograd.grad(y, wrt, dy, retain_graph=True))


def environment():
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "blas": [
            {k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer", "prefix")}
            for i in threadpoolctl.threadpool_info()
        ],
    }
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per shape (default 5)")
    ap.add_argument(
        "--gflop-per-request",
        type=float,
        default=20.0,
        help="timed runs per request: this much work, 3 to 50 runs (default 20 GFLOP)",
    )
    ap.add_argument("--only", default="", help="run only shapes whose name or kind contains one of these (comma-separated)")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--threads", type=int, default=2, help="threads for every side (default 2, the machine's cores)")
    ap.add_argument(
        "--settle",
        type=float,
        default=0.3,
        help="seconds of idleness before each side's turn, so the other side's spinning worker threads are asleep (default 0.3)",
    )
    ap.add_argument(
        "--baseline",
        help="a bench_shapes binary built from another commit: also time it, interleaved, and print ours/baseline",
    )
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(limits=args.threads, user_api="blas")
    ours = Ours(args.threads)
    base = Ours(args.threads, args.baseline) if args.baseline else None
    if ours.shapes["threads"] != args.threads:
        sys.exit(f"ours runs {ours.shapes['threads']} rayon threads, references {args.threads}")
    env = environment()
    env["loadavg_start"] = os.getloadavg()
    print(json.dumps(env, indent=1), file=sys.stderr)

    # (kind, name, flops, reference label, reference timer)
    jobs = []
    for size in ours.shapes["gemm"]:
        jobs.append(("gemm", str(size), 2.0 * size**3, "numpy", lambda r, size=size: numpy_gemm(size, r)))
    for s in ours.shapes["conv"]:
        for op in ours.shapes["conv_ops"]:
            jobs.append((op, s["name"], s["flops"], "torch", lambda r, s=s, op=op: torch_conv(s, op, r)))
    only = args.only.split(",")
    jobs = [j for j in jobs if any(o in j[0] or o in j[1] for o in only)]

    results = {(kind, name): {"ours": [], "ref": [], "ratio": [], "base": [], "vs_base": []} for kind, name, *_ in jobs}
    for rnd in range(args.rounds):
        for kind, name, flops, _, ref in jobs:
            r = results[(kind, name)]
            reps = min(50, max(3, round(args.gflop_per_request * 1e9 / flops)))
            # Rotate who goes first, so no side always runs on a warmer machine.
            sides = [("ours", lambda: ours.time(kind, name, reps)), ("ref", lambda: ref(reps))]
            if base:
                sides.append(("base", lambda: base.time(kind, name, reps)))
            shift = rnd % len(sides)
            gflops = {}
            for side, timer in sides[shift:] + sides[:shift]:
                # Let the previous side's idle worker threads go to sleep
                # first: OpenBLAS' threads spin for a while after a call and
                # would share the cores with the next side's turn.
                time.sleep(args.settle)
                gflops[side] = flops / min(timer()) / 1e9
                r[side].append(gflops[side])
            r["ratio"].append(gflops["ours"] / gflops["ref"])
            if base:
                r["vs_base"].append(gflops["ours"] / gflops["base"])
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    ours.close()
    if base:
        base.close()
    env["loadavg_end"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) at start {env['loadavg_start']}, at end {env['loadavg_end']}")

    header = ["op", "shape", "ours ms", "ref ms", "ours GFLOP/s", "ref GFLOP/s", "ref", "ours/ref", "ours/ref range"]
    if base:
        header += ["base GFLOP/s", "ours/base"]
    rows = []
    for kind, name, flops, label, _ in jobs:
        r = results[(kind, name)]
        med = {k: statistics.median(v) for k, v in r.items() if v}
        ms = lambda gf: f"{flops / (gf * 1e9) * 1e3:.2f}"
        row = [kind, name, ms(med["ours"]), ms(med["ref"]), f"{med['ours']:.0f}", f"{med['ref']:.0f}", label]
        row.append(f"{med['ratio']:.2f}")
        row.append(f"{min(r['ratio']):.2f}-{max(r['ratio']):.2f}")
        if base:
            row += [f"{med['base']:.0f}", f"{med['vs_base']:.2f}"]
        rows.append(row)
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i < 2 or i == 6 else "--:" for i in range(len(header))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        for row in [header] + rows:
            print("  ".join(str(x).ljust(w) if i < 2 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths))))
    if args.json:
        with open(args.json, "w") as f:
            out = [{"kind": k, "name": n, **v} for (k, n), v in results.items()]
            json.dump({"environment": env, "rounds": args.rounds, "results": out}, f, indent=1)


if __name__ == "__main__":
    main()
