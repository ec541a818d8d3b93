#!/usr/bin/env python3
"""qat's training step against the PyTorch replica of its `small` ResNet
(`torch_small_resnet.py`), side by side: images/s of the training loop only,
on the same images (the first `--limit` Fashion-MNIST training images,
shuffled, augmented), batch 128, FP32 and QAT, 1 and 2 threads.

Ours: `RAYON_NUM_THREADS=T qat train --profile STEPS --train-limit LIMIT
--device cpu [--fp32]`, which sets the run up as `train` does and times
STEPS steps after 2 warm-up steps (data, forward, backward, optimizer; no
validation, no checkpoint); its first line gives images/s. The profiling
wrapper costs one clock read and one lock per backend call (a few hundred
per step). PyTorch: `profile_torch_step.py --no-profiler --json` with the
same STEPS, 2 warm-up steps and `torch.set_num_threads(T)`.

Each side runs in its own process, one at a time; in every round each
configuration runs ours then PyTorch, the order swapped every other round.
Printed: images/s per round, the median over the rounds of the per-round
ratio ours/PyTorch, the 1-minute load average before and after each run,
the CPU model and its SIMD flags. The machine should be quiet (load < 2):
figures under load measure the other tenants.

Usage:
  bench_train_vs_torch.py [--qat target/release/qat] [--rounds 3]
      [--steps 100] [--limit 12800] [--threads 1,2] [--modes fp32,qat]
      [--python PY] [--json OUT.json] [--markdown]

`--steps 100` with `--limit 12800` is one pass over the 12,800 images.
Needs a release build (`cargo build --release`) and torch; not part of
`cargo test`.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def cpu_info():
    model, flags = "?", []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    simd = [f for f in flags if f in ("avx2", "fma") or f.startswith("avx512") or f == "avx_vnni"]
    return model, os.cpu_count(), simd


def run_ours(args, mode, threads):
    cmd = [
        args.qat,
        "train",
        "--profile",
        str(args.steps),
        "--train-limit",
        str(args.limit),
        "--data",
        args.data,
        "--device",
        "cpu",
        "--quiet",
    ]
    if mode == "fp32":
        cmd.append("--fp32")
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}{out.stdout}")
    text = out.stdout + out.stderr
    m = re.search(r"training on .*?\((\d+) threads?\).*?([\d.]+) images/s", text)
    if not m:
        sys.exit(f"no images/s in the output of {' '.join(cmd)}:\n{text}")
    if int(m.group(1)) != threads:
        sys.exit(f"ours ran {m.group(1)} threads, asked for {threads}")
    return float(m.group(2))


def run_torch(args, mode, threads):
    cmd = [
        args.python,
        str(HERE / "profile_torch_step.py"),
        "--mode",
        mode,
        "--threads",
        str(threads),
        "--steps",
        str(args.steps),
        "--limit",
        str(args.limit),
        "--data",
        args.data,
        "--json",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}{out.stdout}")
    line = [l for l in out.stdout.splitlines() if l.startswith("{")][-1]
    r = json.loads(line)
    if r["threads"] != threads:
        sys.exit(f"PyTorch ran {r['threads']} threads, asked for {threads}")
    return r["images_per_s"]


def timed(fn, *a):
    before = os.getloadavg()[0]
    v = fn(*a)
    return {"images_per_s": v, "load": [before, os.getloadavg()[0]]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qat", default=str(ROOT / "target/release/qat"))
    ap.add_argument("--python", default=sys.executable, help="the Python with torch")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--limit", type=int, default=12800)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--modes", default="fp32,qat")
    ap.add_argument("--json", help="write every run here")
    ap.add_argument("--markdown", action="store_true", help="the summary as a markdown table")
    args = ap.parse_args()
    if not Path(args.qat).exists():
        sys.exit(f"{args.qat} not found: cargo build --release")
    threads = [int(t) for t in args.threads.split(",")]
    modes = args.modes.split(",")
    model, cores, simd = cpu_info()
    print(f"CPU: {model}, {cores} logical cores, {' '.join(simd) or 'no AVX2/AVX-512'}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{args.rounds} rounds, {args.steps} steps of 128 images each, first {args.limit} training images\n")
    configs = [(m, t) for t in threads for m in modes]
    runs = {c: [] for c in configs}
    print(f"{'round':>5} {'mode':<5} {'thr':>3} {'ours img/s':>10} {'torch img/s':>11} {'ratio':>6}  load before/after (ours; torch)")
    for r in range(args.rounds):
        for mode, t in configs:
            sides = [("ours", run_ours), ("torch", run_torch)]
            if r % 2:
                sides.reverse()
            res = {name: timed(fn, args, mode, t) for name, fn in sides}
            res["ratio"] = res["ours"]["images_per_s"] / res["torch"]["images_per_s"]
            runs[(mode, t)].append(res)
            lo, lt = res["ours"]["load"], res["torch"]["load"]
            print(
                f"{r + 1:>5} {mode:<5} {t:>3} {res['ours']['images_per_s']:>10.1f} "
                f"{res['torch']['images_per_s']:>11.1f} {res['ratio']:>6.2f}  "
                f"{lo[0]:.2f}/{lo[1]:.2f}; {lt[0]:.2f}/{lt[1]:.2f}",
                flush=True,
            )
    loads = [l for rs in runs.values() for x in rs for s in ("ours", "torch") for l in x[s]["load"]]
    print(f"\nload average (1 min) over the runs: {min(loads):.2f} to {max(loads):.2f}")
    if max(loads) > 2:
        print("the machine was not quiet (load > 2): rerun on a quiet machine for figures to keep")
    if args.markdown:
        print("\n| mode | threads | qat img/s (rounds) | PyTorch img/s (rounds) | qat / PyTorch (rounds) | median |")
        print("|---|--:|---|---|---|--:|")
    else:
        print(f"\n{'mode':<5} {'thr':>3} {'ours img/s':>20} {'torch img/s':>20} {'ratios':>18} {'median':>7}")
    for (mode, t), rs in runs.items():
        ours = " / ".join(f"{x['ours']['images_per_s']:.0f}" for x in rs)
        theirs = " / ".join(f"{x['torch']['images_per_s']:.0f}" for x in rs)
        ratios = " / ".join(f"{x['ratio']:.2f}" for x in rs)
        med = statistics.median(x["ratio"] for x in rs)
        if args.markdown:
            print(f"| {mode.upper()} | {t} | {ours} | {theirs} | {ratios} | {med:.2f}x |")
        else:
            print(f"{mode:<5} {t:>3} {ours:>20} {theirs:>20} {ratios:>18} {med:>6.2f}x")
    for t in threads:
        if "fp32" in modes and "qat" in modes:
            q = {s: statistics.median(x[s]["images_per_s"] for x in runs[("qat", t)]) for s in ("ours", "torch")}
            f = {s: statistics.median(x[s]["images_per_s"] for x in runs[("fp32", t)]) for s in ("ours", "torch")}
            print(
                f"QAT step / FP32 step, {t} thread(s), medians: ours {f['ours'] / q['ours']:.2f}x, "
                f"PyTorch {f['torch'] / q['torch']:.2f}x"
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "cpu": model,
                    "cores": cores,
                    "simd": simd,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "steps": args.steps,
                    "limit": args.limit,
                    "runs": [{"mode": m, "threads": t, "rounds": rs} for (m, t), rs in runs.items()],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
