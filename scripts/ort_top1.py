#!/usr/bin/env python3
"""Top-1/top-5 of an exported ONNX model in ONNX Runtime on the Fashion-MNIST
test set: the figure a user deploying the graph would measure.

Usage: ort_top1.py MODEL.onnx [--data DIR] [--images N] [--batch B]

The images are prepared as the model's `metadata_props` say (pixels / 255,
then `(x - mean) / std`, NCHW float32), exactly as `qat eval` does. Ties
between logits go to the lowest class index (numpy's argmax), as in qat's
own counting. Needs numpy, onnx and onnxruntime (scripts/test.sh installs
them in target/test-venv).
"""

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or raw) as a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if data.size != int(np.prod(dims)):
        raise SystemExit(f"{path}: {data.size} values for dimensions {dims}")
    return data.reshape(dims)


def find(data: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data / name).exists():
            return data / name
    raise SystemExit(f"{data}: no {stem}(.gz); install Debian's dataset-fashion-mnist or pass --data")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="ONNX model written by `qat export`")
    ap.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                    help="folder with the Fashion-MNIST IDX files (default: Debian's)")
    ap.add_argument("--images", type=int, default=10000, help="first N test images (default 10000)")
    ap.add_argument("--batch", type=int, default=500, help="images per ORT run (default 500)")
    args = ap.parse_args()

    model = onnx.load(args.model)
    meta = {p.key: p.value for p in model.metadata_props}
    mean = np.array(json.loads(meta["mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["std"]), dtype=np.float32)
    images = read_idx(find(args.data, "t10k-images-idx3-ubyte"))[: args.images]
    labels = read_idx(find(args.data, "t10k-labels-idx1-ubyte"))[: args.images].astype(np.int64)
    x = images.astype(np.float32)[:, None, :, :] / np.float32(255.0)
    x = (x - mean[None, :, None, None]) / std[None, :, None, None]

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    top1 = top5 = 0
    for i in range(0, len(x), args.batch):
        logits = sess.run(None, {name: x[i : i + args.batch]})[0]
        y = labels[i : i + args.batch]
        top1 += int(np.count_nonzero(logits.argmax(1) == y))
        # Top-5 with ties to the lowest index: a stable sort of -logits.
        order = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        top5 += int(np.count_nonzero((order == y[:, None]).any(axis=1)))
    n = len(x)
    print(
        f"{args.model}: onnxruntime {ort.__version__} ({meta.get('precision', '?')}), "
        f"{n} images: top-1 {100 * top1 / n:.2f}% top-5 {100 * top5 / n:.2f}%"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
