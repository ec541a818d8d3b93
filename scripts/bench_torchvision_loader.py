#!/usr/bin/env python3
"""Per-core decode+augment throughput of torchvision's ImageNet pipeline, the
reference for examples/imagenet_throughput.rs (same files, same machine).

One process, one torch thread (what one DataLoader worker does): for every
JPEG under ROOT/train, torchvision's default ImageFolder loader
(PIL.Image.open(...).convert("RGB"), libjpeg-turbo inside Pillow) then
RandomResizedCrop(224) + RandomHorizontalFlip() + ToTensor() + Normalize;
for ROOT/val, Resize(256) + CenterCrop(224) + ToTensor() + Normalize.
Also the decode alone, for the decoder comparison in docs/PERF.md.

Usage: python3 scripts/bench_torchvision_loader.py [ROOT] [PASSES]
"""
import glob
import os
import sys
import time

import PIL
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def pil_loader(path):
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def rate(files, fn, passes):
    fn(files[0])  # warm up
    best = 0.0
    for _ in range(passes):
        t = time.perf_counter()
        for p in files:
            fn(p)
        best = max(best, len(files) / (time.perf_counter() - t))
    return best


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qat-bench-imagefolder"
    passes = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train = sorted(glob.glob(os.path.join(root, "train", "*", "*.jpg")))
    val = sorted(glob.glob(os.path.join(root, "val", "*", "*.jpg")))
    norm = T.Normalize(MEAN, STD)
    train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    val_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm])
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}, "
          f"1 thread, {len(train)} train / {len(val)} val images, best of {passes} passes")
    r = rate(train, pil_loader, passes)
    print(f"decode (PIL, libjpeg-turbo)        {r:8.1f} img/s  {1e3 / r:6.2f} ms/img")
    r = rate(train, lambda p: train_tf(pil_loader(p)), passes)
    print(f"train: decode+RRC+flip+normalize   {r:8.1f} img/s  {1e3 / r:6.2f} ms/img")
    r = rate(val, lambda p: val_tf(pil_loader(p)), passes)
    print(f"val: decode+resize+crop+normalize  {r:8.1f} img/s  {1e3 / r:6.2f} ms/img")

    # The DataLoader as a training script uses it: batches of 64, shuffled,
    # worker processes (persistent, so start-up is not counted).
    ds = torchvision.datasets.ImageFolder(os.path.join(root, "train"), train_tf)
    for workers in [1, os.cpu_count()]:
        dl = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers,
                                         persistent_workers=True, drop_last=True)
        for _ in dl:  # warm up the workers
            pass
        best = 0.0
        for _ in range(passes):
            t = time.perf_counter()
            n = sum(len(y) for _, y in dl)
            best = max(best, n / (time.perf_counter() - t))
        print(f"DataLoader, {workers} worker(s)            {best:8.1f} img/s  {1e3 / best:6.2f} ms/img")
        if workers > 1:
            print(f"  per worker                        {best / workers:8.1f} img/s")
        del dl


if __name__ == "__main__":
    main()
