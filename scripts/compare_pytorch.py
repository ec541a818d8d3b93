#!/usr/bin/env python3
"""qat's import, PTQ and QAT fine-tuning side by side with PyTorch's own
(`torch.ao.quantization`, x86 backend, per-channel weights) on the same FP32
model: the README's "Bring your own model: qat vs PyTorch" table.

Usage:
  compare_pytorch.py --arch resnet18|mobilenet_v2 [--out DIR] [--qat BIN]
                     [--fp32-epochs E] [--ft-epochs F] [--calib N] [--data DIR]
  compare_pytorch.py --table [--out DIR]     (the markdown table of OUT/*)

Steps (each is skipped when its result is already in OUT/ARCH/results.json,
so a killed run continues where it stopped):
  1. PyTorch trains torchvision's ARCH in FP32 on Fashion-MNIST (first conv
     with 1 input channel, 10 classes, 28x28 input, nothing else changed), with
     qat's from-scratch recipe: SGD, momentum 0.9, weight decay 5e-4 on conv
     and linear weights, batch 128, lr 0.1 with a one-epoch linear warm-up then
     cosine to 0, label smoothing 0.1, shift by up to 2 pixels and mirror.
  2. Exports it with `torch.onnx.export(dynamo=False, opset 13,
     training=TrainingMode.PRESERVE)` (Conv and BatchNormalization kept) and
     measures ONNX Runtime's FP32 top-1 on the 10,000 test images.
  3. qat: `import`, `eval` (FP32), `calibrate --method minmax|percentile|mse
     --images N` then `eval` (int8, integer-exact), `train --init` (the
     fine-tuning recipe, F epochs, the same label smoothing), `eval`,
     `export`, `verify --images 10000` (the PTQ percentile model: 1000).
  4. PyTorch: FX graph mode PTQ (`prepare_fx` with
     `get_default_qconfig_mapping("x86")`, calibrated on the same first N
     training images, unaugmented, `convert_fx`) and QAT (`prepare_qat_fx` with
     `get_default_qat_qconfig_mapping("x86")`, the same fine-tuning recipe as
     qat's: F epochs, lr 0.001 cosine to 0, no warm-up, the same label
     smoothing, batch-norm statistics
     frozen at 30% and observers at 40% of the run, the same augmentation),
     evaluated as converted int8 models on the x86 engine.

Normalization everywhere: pixels / 255, then (x - 0.2860) / 0.3530 (qat's
Fashion-MNIST constants). Needs torch, torchvision, onnx, onnxruntime and a
release build of qat (`cargo build --release`). Threads: torch and ORT use
all cores (set OMP_NUM_THREADS to change).

Tested with PyTorch 2.15.0, torchvision 0.29.2, onnx 1.23.2, ONNX Runtime
1.32.0 (2026-12-01).
"""

import argparse
import copy
import gzip
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision

MEAN, STD = 0.2860, 0.3530
BATCH = 128


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data


def read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def load_split(data: Path, prefix: str):
    def find(stem):
        for name in (f"{stem}.gz", stem):
            if (data / name).exists():
                return data / name
        raise SystemExit(f"{data}: no {stem}(.gz); install Debian's dataset-fashion-mnist or pass --data")

    x = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    y = read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def normalize(u8: torch.Tensor) -> torch.Tensor:
    """[N, 28, 28] uint8 -> [N, 1, 28, 28] float, qat's normalization."""
    return ((u8.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def augment(u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift by up to 2 pixels with zero padding, mirror with probability 1/2."""
    n = u8.shape[0]
    padded = torch.nn.functional.pad(u8, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=gen)
    dx = torch.randint(0, 5, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).bool()
    out = torch.empty_like(u8)
    for i in range(n):
        img = padded[i, dy[i] : dy[i] + 28, dx[i] : dx[i] + 28]
        out[i] = img.flip(-1) if flip[i] else img
    return out


def train_batches(x, y, epoch, seed):
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(x.shape[0], generator=gen)
    for b in range(x.shape[0] // BATCH):
        idx = perm[b * BATCH : (b + 1) * BATCH]
        yield normalize(augment(x[idx], gen)), y[idx]


@torch.no_grad()
def top1(model, x, y, batch=500):
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        logits = model(normalize(x[i : i + batch]))
        correct += (logits.argmax(1) == y[i : i + batch]).sum().item()
    return 100.0 * correct / x.shape[0]


# ---------------------------------------------------------------- models


def build(arch: str) -> nn.Module:
    if arch == "resnet18":
        m = torchvision.models.resnet18(num_classes=10)
        m.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    elif arch == "mobilenet_v2":
        m = torchvision.models.mobilenet_v2(num_classes=10)
        m.features[0][0] = nn.Conv2d(1, 32, kernel_size=3, stride=2, padding=1, bias=False)
    else:
        raise SystemExit(f"unknown --arch {arch}")
    return m


def sgd(model, lr, wd):
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=0.9
    )


def lr_at(step, total, peak, warmup_steps):
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def run_epochs(model, x, y, epochs, peak, warmup_epochs, seed, smoothing, hook=None, what="train"):
    opt = sgd(model, peak, 5e-4)
    per_epoch = x.shape[0] // BATCH
    total = epochs * per_epoch
    loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
    step = 0
    for epoch in range(epochs):
        model.train()
        t0, seen, loss_sum = time.time(), 0, 0.0
        for xb, yb in train_batches(x, y, epoch, seed):
            if hook:
                hook(model, step, total)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, peak, warmup_epochs * per_epoch)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            seen += xb.shape[0]
            loss_sum += loss.item()
            if step % 50 == 0:
                log(f"{what} epoch {epoch + 1}/{epochs} step {step}/{total} loss {loss_sum / (step - epoch * per_epoch):.4f} "
                    f"{seen / (time.time() - t0):.0f} img/s")
    return model


# ---------------------------------------------------------------- PyTorch quantization


def calib_images(x, n):
    return normalize(x[:n])


def torch_ptq(fp32, x_train, n_calib):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(fp32).eval()
    example = (torch.zeros(1, 1, 28, 28),)
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), example)
    cal = calib_images(x_train, n_calib)
    with torch.no_grad():
        for i in range(0, n_calib, BATCH):
            prepared(cal[i : i + BATCH])
    return convert_fx(prepared)


def torch_qat(fp32, x_train, y_train, epochs, seed, smoothing):
    import torch.ao.nn.intrinsic.qat as nniqat
    from torch.ao.quantization import disable_observer, get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    model = copy.deepcopy(fp32).train()
    example = (torch.zeros(1, 1, 28, 28),)
    prepared = prepare_qat_fx(model, get_default_qat_qconfig_mapping("x86"), example)
    state = {"bn": False, "obs": False}

    def hook(m, step, total):
        if not state["bn"] and step >= 0.3 * total:
            m.apply(nniqat.freeze_bn_stats)
            state["bn"] = True
            log(f"torch QAT: batch-norm statistics frozen at step {step}")
        if not state["obs"] and step >= 0.4 * total:
            m.apply(disable_observer)
            state["obs"] = True
            log(f"torch QAT: observers frozen at step {step}")

    run_epochs(prepared, x_train, y_train, epochs, 0.001, 0, seed, smoothing, hook, "torch QAT")
    prepared.eval()
    return convert_fx(prepared)


# ---------------------------------------------------------------- qat


def qat(bin_path, *args):
    cmd = [str(bin_path), *map(str, args)]
    log("$ " + " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"qat failed ({out.returncode}): {' '.join(cmd)}")
    return out.stdout + out.stderr


def qat_top1(bin_path, ck, data):
    text = qat(bin_path, "eval", "--checkpoint", ck, "--data", data, "--device", "cpu")
    m = re.search(r"top-1 ([0-9.]+)%", text)
    if not m:
        raise SystemExit(f"no top-1 in qat eval output:\n{text}")
    log(text.strip().splitlines()[-1])
    return float(m.group(1))


def qat_verify(bin_path, ck, onnx_path, data, images):
    text = qat(bin_path, "verify", "--checkpoint", ck, "--onnx", onnx_path, "--data", data, "--images", images,
               "--device", "cpu")
    lines = text.strip().splitlines()
    mismatches = 0
    for line in lines:
        parts = line.split()
        # "<tensor> <values> <mismatches> <max lsb>" rows of the table.
        if len(parts) >= 3 and parts[1].isdigit() and parts[2].isdigit():
            mismatches += int(parts[2])
    passed = any(line.startswith("PASS") for line in lines)
    log(lines[-1])
    return {"mismatches": mismatches, "pass": passed, "images": images}


# ---------------------------------------------------------------- table


def print_table(out: Path):
    """The README table from every OUT/*/results.json."""
    print("| model | FP32: PyTorch / ONNX Runtime / qat import | PTQ qat: minmax / percentile / mse "
          "| PTQ PyTorch | QAT qat | QAT PyTorch | verify mismatches (QAT, PTQ) |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(out.glob("*/results.json")):
        r = json.loads(path.read_text())
        f = lambda k: f"{r[k]:.2f}" if k in r else "-"
        v = lambda k: (f"{r[k]['mismatches']} of {r[k]['images']} images" if k in r else "-")
        print(f"| {path.parent.name} | {f('torch_fp32')} / {f('ort_fp32')} / {f('qat_fp32')} "
              f"| {f('qat_ptq_minmax')} / {f('qat_ptq_percentile')} / {f('qat_ptq_mse')} "
              f"| {f('torch_ptq')} | {f('qat_qat')} | {f('torch_qat')} "
              f"| {v('verify_qat')}, {v('verify_ptq_percentile')} |")


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["resnet18", "mobilenet_v2"], help="the torchvision model (required unless --table)")
    ap.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    ap.add_argument("--qat", type=Path, default=Path("target/release/qat"), help="qat binary")
    ap.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--fp32-epochs", type=int, default=4, help="PyTorch FP32 training epochs (default 4)")
    ap.add_argument("--ft-epochs", type=int, default=1, help="QAT fine-tuning epochs, both sides (default 1)")
    ap.add_argument("--calib", type=int, default=1024, help="calibration images, both sides (default 1024)")
    ap.add_argument("--label-smoothing", type=float, default=0.1,
                    help="label smoothing of the loss, FP32 training and fine-tuning, both sides (default 0.1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["torch-fp32", "ours", "torch-quant"], help="run one part only")
    ap.add_argument("--table", action="store_true",
                    help="print the markdown table of every OUT/*/results.json and stop")
    args = ap.parse_args()
    if args.table:
        print_table(args.out)
        return
    if args.arch is None:
        ap.error("--arch is required (or --table)")

    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    torch.backends.quantized.engine = "x86"
    out = args.out / args.arch
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}

    def save():
        tmp = res_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(res_path)

    res.setdefault("versions", {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "recipe": {"fp32_epochs": args.fp32_epochs, "ft_epochs": args.ft_epochs, "calib": args.calib,
                   "label_smoothing": args.label_smoothing, "seed": args.seed},
    })
    x_train, y_train = load_split(args.data, "train")
    x_test, y_test = load_split(args.data, "t10k")
    onnx_path = out / f"{args.arch}.onnx"
    weights = out / "fp32.pt"

    # 1-2: PyTorch FP32 model and its ONNX file.
    if args.only in (None, "torch-fp32") and "torch_fp32" not in res:
        model = build(args.arch)
        t0 = time.time()
        run_epochs(model, x_train, y_train, args.fp32_epochs, 0.1, 1, args.seed, args.label_smoothing, what="fp32")
        torch.save(model.state_dict(), weights)
        res["torch_fp32"] = top1(model, x_test, y_test)
        res["torch_fp32_secs"] = round(time.time() - t0)
        log(f"PyTorch FP32 top-1 {res['torch_fp32']:.2f}%")
        model.eval()
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(onnx_path), dynamo=False, opset_version=13,
                          input_names=["image"], output_names=["logits"],
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        correct = 0
        for i in range(0, 10000, 500):
            logits = sess.run(None, {"image": normalize(x_test[i : i + 500]).numpy()})[0]
            correct += int((logits.argmax(1) == y_test[i : i + 500].numpy()).sum())
        res["ort_fp32"] = correct / 100.0
        log(f"ONNX Runtime FP32 top-1 {res['ort_fp32']:.2f}%")
        save()

    # 3: qat.
    data = str(args.data)
    if args.only in (None, "ours"):
        if not onnx_path.exists():
            raise SystemExit(f"{onnx_path} missing: run the torch-fp32 part first")
        imported = out / "imported" / "checkpoint.safetensors"
        if "qat_fp32" not in res:
            qat(args.qat, "import", onnx_path, "--out", out / "imported", "--mean", MEAN, "--std", STD, "--overwrite")
            res["qat_fp32"] = qat_top1(args.qat, imported, data)
            save()
        for method in ("minmax", "percentile", "mse"):
            key = f"qat_ptq_{method}"
            if key in res:
                continue
            qat(args.qat, "calibrate", "--checkpoint", imported, "--data", data, "--images", args.calib,
                "--method", method, "--out", out / f"ptq-{method}", "--overwrite", "--device", "cpu")
            ck = out / f"ptq-{method}" / "checkpoint.safetensors"
            res[key] = qat_top1(args.qat, ck, data)
            save()
        ft = out / "qat-ft" / "checkpoint.safetensors"
        if "qat_qat" not in res:
            t0 = time.time()
            qat(args.qat, "train", "--init", imported, "--data", data, "--epochs", args.ft_epochs,
                "--calibration-images", args.calib, "--out", out / "qat-ft", "--overwrite", "--device", "cpu",
                "--seed", args.seed, "--label-smoothing", args.label_smoothing)
            res["qat_qat_secs"] = round(time.time() - t0)
            res["qat_qat"] = qat_top1(args.qat, ft, data)
            save()
        for name, ck, images in [("qat", ft, 10000),
                                 ("ptq_percentile", out / "ptq-percentile" / "checkpoint.safetensors", 1000)]:
            key = f"verify_{name}"
            if key in res:
                continue
            onnx_int8 = ck.parent / "model.int8.onnx"
            qat(args.qat, "export", "--checkpoint", ck, "--out", onnx_int8)
            res[key] = qat_verify(args.qat, ck, onnx_int8, data, images)
            save()

    # 4: PyTorch PTQ and QAT on the same FP32 weights.
    if args.only in (None, "torch-quant"):
        if not weights.exists():
            raise SystemExit(f"{weights} missing: run the torch-fp32 part first")
        fp32 = build(args.arch)
        fp32.load_state_dict(torch.load(weights))
        if "torch_ptq" not in res:
            res["torch_ptq"] = top1(torch_ptq(fp32, x_train, args.calib), x_test, y_test)
            log(f"PyTorch PTQ int8 top-1 {res['torch_ptq']:.2f}%")
            save()
        if "torch_qat" not in res:
            t0 = time.time()
            q = torch_qat(fp32, x_train, y_train, args.ft_epochs, args.seed, args.label_smoothing)
            res["torch_qat_secs"] = round(time.time() - t0)
            res["torch_qat"] = top1(q, x_test, y_test)
            log(f"PyTorch QAT int8 top-1 {res['torch_qat']:.2f}%")
            save()

    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
