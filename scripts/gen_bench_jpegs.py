#!/usr/bin/env python3
"""Writes a small ImageFolder of photo-like 500x375 JPEGs for the loader
throughput benchmark (examples/imagenet_throughput.rs and
scripts/bench_torchvision_loader.py read the same files).

Each image: a smooth random colour field (low-resolution noise upsampled
bicubically), gradients, a few filled shapes with hard edges, and fine
sensor-like noise, saved by PIL at quality 90 with 4:2:0 chroma subsampling
(the usual camera/ImageNet settings), so the decoders see realistic entropy.

Usage: python3 scripts/gen_bench_jpegs.py [OUT] [N_TRAIN] [N_VAL]
       (defaults: /tmp/qat-bench-imagefolder 320 50)
"""
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

W, H, CLASSES = 500, 375, 10


def photo(rng):
    low = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((W, H), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base += 40 * np.sin(xx / rng.uniform(20, 80))[..., None] * rng.uniform(-1, 1, 3)
    base += (yy / H * rng.uniform(-60, 60))[..., None]
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.integers(0, W), rng.integers(0, H)
        x1, y1 = x0 + rng.integers(10, 200), y0 + rng.integers(10, 150)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, size=(H, W, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qat-bench-imagefolder"
    n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 320
    n_val = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    rng = np.random.default_rng(0)
    for split, n in [("train", n_train), ("val", n_val)]:
        for i in range(n):
            d = os.path.join(out, split, f"class{i % CLASSES:02d}")
            os.makedirs(d, exist_ok=True)
            photo(rng).save(os.path.join(d, f"{i:05d}.jpg"), quality=90, subsampling=2)
    print(f"wrote {n_train} train and {n_val} val {W}x{H} JPEGs under {out}")


if __name__ == "__main__":
    main()
