#!/usr/bin/env python3
"""The int8 executor beside ONNX Runtime, on the same images, in one run.

Times three sides on the same float images, in the same batches:
  * ours: the executor on the int8 graph (`examples/bench_executor.rs`, in a
    subprocess that sits idle while ORT runs);
  * ORT int8: ONNX Runtime's CPU provider on the same int8 graph;
  * ORT fp32: ONNX Runtime on the FP32 export of the same model.
The sides alternate turn by turn (who goes first rotates every round), so
they see the same machine load; a turn runs every image once. Figures are
images/s, the median over rounds; ratios are medians of per-round ratios.

    scripts/bench_executor.py --int8 m.int8.onnx --fp32 m.fp32.onnx \\
        --images fmnist --n 2000 --batch 100 --threads 2 --rounds 5

`--images fmnist` reads the Fashion-MNIST test set (IDX files, as `qat
train` does) and normalizes it with the model's metadata; `--images random`
draws normal images of the model's input size (for ImageNet-size models).
Needs numpy and onnxruntime.
"""

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist/"


def metadata(path):
    m = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in m.metadata_props}


def fmnist_images(n, meta):
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"]:
        p = os.path.join(FMNIST, name)
        if os.path.exists(p):
            raw = (gzip.open if p.endswith(".gz") else open)(p, "rb").read()
            break
    else:
        sys.exit(f"no Fashion-MNIST test images in {FMNIST}")
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:n]
    mean = np.array(json.loads(meta["mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.array(json.loads(meta["std"]), np.float32).reshape(1, -1, 1, 1)
    return ((x.astype(np.float32) / 255.0 - mean) / std).astype(np.float32)


def random_images(n, meta, seed=0):
    c, h, w = (int(v) for v in meta["input_size"].split("x"))
    return np.random.default_rng(seed).standard_normal((n, c, h, w), np.float32)


class Ours:
    def __init__(self, model, images, batch, threads):
        subprocess.run(["cargo", "build", "--quiet", "--release", "--example", "bench_executor"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "examples", "bench_executor")
        self.tmp = tempfile.NamedTemporaryFile(suffix=".f32", delete=False)
        images.astype("<f4").tofile(self.tmp.name)
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([binary, model, self.tmp.name, str(batch)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = json.loads(self.proc.stdout.readline())

    def run(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("the executor subprocess failed")
        return json.loads(line)["secs"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()
        os.unlink(self.tmp.name)


class Ort:
    def __init__(self, model, images, batch, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name
        self.batches = [images[i:i + batch] for i in range(0, len(images), batch)]

    def run(self):
        t = time.perf_counter()
        for b in self.batches:
            self.sess.run(None, {self.name: b})
        return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--int8", required=True)
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--images", choices=["fmnist", "random"], default="fmnist")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--label", default=None, help="name of the model in the table")
    args = ap.parse_args()

    meta = metadata(args.int8)
    images = fmnist_images(args.n, meta) if args.images == "fmnist" else random_images(args.n, meta)
    n = len(images)
    sides = {
        "ours": Ours(args.int8, images, args.batch, args.threads),
        "ort_int8": Ort(args.int8, images, args.batch, args.threads),
        "ort_fp32": Ort(args.fp32, images, args.batch, args.threads),
    }
    names = list(sides)
    for s in names:  # warm-up turn each
        sides[s].run()
    secs = {s: [] for s in names}
    for r in range(args.rounds):
        order = names[r % 3:] + names[:r % 3]
        for s in order:
            secs[s].append(sides[s].run())
        print(f"round {r + 1}: " + ", ".join(f"{s} {n / secs[s][-1]:.1f} img/s" for s in names), file=sys.stderr)
    sides["ours"].close()
    ips = {s: statistics.median(n / t for t in secs[s]) for s in names}
    ratio = {s: statistics.median(secs[s][i] / secs["ours"][i] for i in range(args.rounds)) for s in names[1:]}
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    label = args.label or os.path.basename(args.int8)
    print(f"<!-- {cpu}; {args.threads} threads; ORT {ort.__version__}; executor path {sides['ours'].info['isa']}; "
          f"{n} images, batch {args.batch}, {args.rounds} rounds; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} -->")
    print("| model | images | batch | ours img/s | ORT int8 img/s | ORT fp32 img/s | ours / ORT int8 | ours / ORT fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {label} | {n} | {args.batch} | {ips['ours']:.1f} | {ips['ort_int8']:.1f} | {ips['ort_fp32']:.1f} "
          f"| {ratio['ort_int8']:.2f}x | {ratio['ort_fp32']:.2f}x |")


if __name__ == "__main__":
    main()
