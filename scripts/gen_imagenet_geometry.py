#!/usr/bin/env python3
"""Records torchvision's ImageNet transform geometry for tests/imagenet_geometry.rs.

Writes tests/data/imagenet/geometry.json with
- rrc: RandomResizedCrop.get_params (torchvision's own code) on many image
  sizes and seeds, with every random draw it made (the value and the range
  it was drawn from), so the Rust transcription can be fed the same draws;
- resize: Resize(256) output sizes and CenterCrop(224) offsets, measured by
  running torchvision's functions;
- resample: torchvision's resized_crop / resize+center_crop on a PIL image
  (bilinear, antialias) of a pattern the Rust test rebuilds from the same
  formula, as u8 HWC.

Run: python3 scripts/gen_imagenet_geometry.py (torch, torchvision, Pillow).
"""
import json
import os
import sys

import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "imagenet", "geometry.json")

draws = []
_uniform = torch.Tensor.uniform_
_randint = torch.randint


def uniform_(self, a=0.0, b=1.0, **kw):
    r = _uniform(self, a, b, **kw)
    draws.append({"u": r.item(), "lo": float(a), "hi": float(b)})
    return r


def randint(low, high, size, **kw):
    r = _randint(low, high, size, **kw)
    draws.append({"i": int(r.item()), "lo": int(low), "hi": int(high)})
    return r


def rrc_cases():
    sizes = [(375, 500), (500, 375), (224, 224), (32, 48), (10, 1000), (1000, 10),
             (1, 1), (3, 2), (800, 600), (333, 1000), (64, 64), (2000, 1333), (17, 5)]
    scale, ratio = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)
    cases = []
    torch.Tensor.uniform_ = uniform_
    torch.randint = randint
    try:
        for h, w in sizes:
            img = torch.empty(3, h, w)
            for seed in range(60):
                torch.manual_seed(seed)
                draws.clear()
                i, j, ch, cw = T.RandomResizedCrop.get_params(img, list(scale), list(ratio))
                cases.append({"height": h, "width": w, "draws": list(draws),
                              "box": [int(i), int(j), int(ch), int(cw)]})
    finally:
        torch.Tensor.uniform_ = _uniform
        torch.randint = _randint
    return cases


def resize_cases():
    sizes = [(375, 500), (500, 375), (256, 256), (224, 224), (333, 1000), (1000, 333),
             (257, 300), (480, 640), (2000, 1333), (300, 257), (231, 230)]
    out = []
    for h, w in sizes:
        nw, nh = F.resize(Image.new("RGB", (w, h)), 256).size
        # The top-left value of a coordinate image after CenterCrop is the offset.
        coords = torch.arange(nh * nw, dtype=torch.float64).reshape(1, nh, nw)
        v = int(F.center_crop(coords, [224, 224])[0, 0, 0].item())
        out.append({"height": h, "width": w, "resized": [nh, nw], "crop_offset": [v // nw, v % nw]})
    return out


def pattern(w, h):
    """The test image: the Rust test computes the same bytes."""
    data = bytearray()
    for y in range(h):
        for x in range(w):
            for c in range(3):
                data.append((x * 7 + y * 13 + c * 50 + ((x * y) % 17) * 5) % 256)
    return Image.frombytes("RGB", (w, h), bytes(data))


def resample_cases():
    w, h = 61, 47
    img = pattern(w, h)
    bilinear = T.InterpolationMode.BILINEAR
    out = []
    for (top, left, ch, cw, oh, ow) in [(0, 0, 47, 61, 16, 16), (3, 5, 40, 50, 40, 40),
                                        (10, 20, 5, 9, 24, 24), (0, 0, 47, 61, 47, 61),
                                        (7, 2, 33, 19, 13, 29), (1, 1, 45, 59, 100, 100)]:
        r = F.resized_crop(img, top, left, ch, cw, [oh, ow], bilinear, antialias=True)
        out.append({"kind": "crop", "box": [top, left, ch, cw], "out": [oh, ow],
                    "pixels": list(r.tobytes())})
    for resize, crop in [(24, 20), (40, 36), (47, 40)]:
        r = F.center_crop(F.resize(img, resize, bilinear, antialias=True), crop)
        out.append({"kind": "eval", "resize": resize, "crop": crop,
                    "out": [r.size[1], r.size[0]], "pixels": list(r.tobytes())})
    return {"width": w, "height": h, "cases": out}


def main():
    data = {
        "provenance": f"scripts/gen_imagenet_geometry.py, torch {torch.__version__}, "
                      f"torchvision {torchvision.__version__}, Pillow {Image.__version__}, "
                      f"Python {sys.version.split()[0]}",
        "rrc": rrc_cases(),
        "resize": resize_cases(),
        "resample": resample_cases(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    print(f"wrote {OUT}: {len(data['rrc'])} crop cases, {len(data['resize'])} resize cases, "
          f"{len(data['resample']['cases'])} resample cases")


if __name__ == "__main__":
    main()
