#!/usr/bin/env python3
"""A PyTorch replica of qat's built-in `small` ResNet, its Fashion-MNIST
augmentation and its SGD recipe, for timing qat's training step against
PyTorch's (`profile_torch_step.py`, `bench_train_vs_torch.py` import it).

The model (src/models/resnet.rs, `ResNetKind::Small`): a 3x3 stem conv
(1 -> 16, stride 1, pad 1, no bias) + batch norm + ReLU, no max pool; three
stages of two basic blocks, widths 16, 32, 64, stride 2 on the first block
of stages 2 and 3; a block is conv3x3+BN+ReLU, conv3x3+BN, the shortcut
(identity, or a 1x1 stride-s conv + BN `downsample` when the shape changes),
add, ReLU; global average pooling, then a linear layer 64 -> 10 with bias.
Batch norm with eps 1e-5, momentum 0.1. Module names are qat's node names
(`stem.conv`, `layer2.0.downsample.bn`, `fc`), so the state dict has qat's
parameter names (plus PyTorch's `num_batches_tracked`, which qat lacks).
Initialization is PyTorch's default: it does not matter for speed.

QAT (`prepare_qat_model`): eager-mode `torch.ao.quantization`, Conv+BN(+ReLU)
fused by `fuse_modules_qat`, the x86 qconfig (`get_default_qat_qconfig`:
per-channel symmetric int8 weights, per-tensor uint8 activations, moving
average min/max observers fused with the fake quantization), `prepare_qat`.
Activations are fake-quantized where qat puts its quantizers: the input,
every Conv+BN(+ReLU) output, every add+ReLU output, the pooled features and
the logits.

Data (src/data/augment.rs, fashion_mnist.rs): per image, a shift of -2..2
pixels in each direction with zero padding (a random 28x28 window of the
image padded by 2), then a horizontal mirror with probability 1/2, on the
uint8 pixels; then x / 255, (x - 0.2860) / 0.3530. Shuffled every epoch.

Recipe: SGD, momentum 0.9, weight decay 5e-4 on conv and linear weights
only (not on biases or batch norm), batch 128, lr 0.1, cross-entropy.

  torch_small_resnet.py --check-params CHECKPOINT
      asserts that the replica's tensors (names, shapes, total count) equal
      the `model/<name>` tensors of a qat FP32 checkpoint
      (`qat train --fp32 --epochs 1 --train-limit 256 --out DIR`).
"""

import argparse
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530
PADDING = 2
BATCH = 128
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
BN_EPS, BN_MOMENTUM = 1e-5, 0.1


class ConvBn(nn.Module):
    """qat's ConvBn unit: conv (no bias) + batch norm (+ ReLU)."""

    def __init__(self, c_in, c_out, k, stride, pad, relu):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, stride, pad, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU() if relu else None

    def forward(self, x):
        x = self.bn(self.conv(x))
        return self.relu(x) if self.relu is not None else x

    def fuse_list(self, prefix):
        names = [f"{prefix}.conv", f"{prefix}.bn"]
        return names + [f"{prefix}.relu"] if self.relu is not None else names


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = ConvBn(c_in, c_out, 3, stride, 1, True)
        self.conv2 = ConvBn(c_out, c_out, 3, 1, 1, False)
        self.downsample = (
            ConvBn(c_in, c_out, 1, stride, 0, False)
            if stride != 1 or c_in != c_out
            else None
        )
        # add + ReLU as a module, so that QAT observes its output.
        self.add = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        short = self.downsample(x) if self.downsample is not None else x
        return self.add.add_relu(y, short)


class SmallResNet(nn.Module):
    def __init__(self, in_channels=1, num_classes=10, widths=(16, 32, 64), blocks=(2, 2, 2)):
        super().__init__()
        self.quant = nn.Identity()  # the input quantizer under QAT
        self.stem = ConvBn(in_channels, widths[0], 3, 1, 1, True)
        c = widths[0]
        for s, (n, w) in enumerate(zip(blocks, widths)):
            layer = []
            for b in range(n):
                layer.append(BasicBlock(c, w, 2 if b == 0 and s > 0 else 1))
                c = w
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        self.gap_quant = nn.Identity()  # the pooled features' quantizer under QAT
        self.fc = nn.Linear(c, num_classes)
        self.stages = len(blocks)

    def forward(self, x):
        x = self.stem(self.quant(x))
        for s in range(self.stages):
            x = getattr(self, f"layer{s + 1}")(x)
        x = self.gap_quant(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return self.fc(x)

    def fuse_lists(self):
        out = []
        for name, m in self.named_modules():
            if isinstance(m, ConvBn):
                out.append(m.fuse_list(name))
        return out


def build_model(qat: bool) -> nn.Module:
    """The replica in training mode, FP32 or prepared for QAT."""
    model = SmallResNet()
    if qat:
        model = prepare_qat_model(model)
    return model.train()


def prepare_qat_model(model: SmallResNet) -> nn.Module:
    import torch.ao.quantization as tq

    torch.backends.quantized.engine = "x86"
    model.train()
    model = tq.fuse_modules_qat(model, model.fuse_lists())
    qconfig = tq.get_default_qat_qconfig("x86")
    model.qconfig = qconfig
    tq.prepare_qat(model, inplace=True)
    # Eager mode observes module outputs only: the input and the pooled
    # features (a functional op) get their fake-quantizers explicitly.
    model.quant = qconfig.activation()
    model.gap_quant = qconfig.activation()
    return model


def make_optimizer(model: nn.Module) -> torch.optim.SGD:
    """SGD with weight decay on conv and linear weights only."""
    decay, rest = [], []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):  # fused QAT modules are subclasses
            decay.append(m.weight)
            if m.bias is not None:
                rest.append(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            rest += [m.weight, m.bias]
    params = {id(p) for p in model.parameters()}
    assert params == {id(p) for p in decay + rest}, "a parameter outside the groups"
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": rest, "weight_decay": 0.0},
        ],
        lr=LR,
        momentum=MOMENTUM,
    )


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_train(data_dir=DATA_DIR, limit=None):
    """The first `limit` training images (uint8 [N, 1, 28, 28]) and labels."""
    d = Path(data_dir)

    def find(stem):
        for name in (stem + ".gz", stem):
            if (d / name).exists():
                return d / name
        sys.exit(f"{stem}(.gz) not found in {d}")

    images = read_idx(find("train-images-idx3-ubyte"))
    labels = read_idx(find("train-labels-idx1-ubyte"))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


class Augment:
    """Shift by up to `padding` pixels (zero fill) and mirror, per image,
    vectorized over the batch; then normalize."""

    def __init__(self, h=28, w=28, padding=PADDING):
        self.h, self.w, self.p = h, w, padding
        self.rows = torch.arange(h).view(1, h, 1)
        self.cols = torch.arange(w).view(1, 1, w)

    def __call__(self, x_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c = x_u8.shape[:2]
        p = self.p
        padded = F.pad(x_u8, (p, p, p, p))  # zeros
        oy = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (n, 1, 1), generator=gen)
        flip = torch.randint(0, 2, (n, 1, 1), generator=gen).bool()
        cols = torch.where(flip, self.w - 1 - self.cols, self.cols)
        ri = (self.rows + oy).expand(n, self.h, self.w)
        ci = (cols + ox).expand(n, self.h, self.w)
        idx = (ri * (self.w + 2 * p) + ci).view(n, 1, -1).expand(n, c, -1)
        out = padded.flatten(2).gather(2, idx).view(n, c, self.h, self.w)
        return (out.float() / 255.0 - MEAN) / STD


def batches(x_u8, y, gen, batch=BATCH):
    """Endless shuffled epochs of (uint8 images, labels), full batches only."""
    n = x_u8.shape[0]
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            j = perm[i : i + batch]
            yield x_u8[j], y[j]


def read_safetensors_header(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def check_params(checkpoint) -> int:
    """Asserts that the FP32 replica's tensors are qat's, by name and shape.
    Returns the parameter count."""
    header = read_safetensors_header(checkpoint)
    ours = {
        k[len("model/") :]: tuple(v["shape"])
        for k, v in header.items()
        if k.startswith("model/")
    }
    if not ours:
        sys.exit(f"{checkpoint}: no model/<name> tensors")
    model = SmallResNet()
    theirs = {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    only_ours = sorted(set(ours) - set(theirs))
    only_theirs = sorted(set(theirs) - set(ours))
    assert not only_ours and not only_theirs, f"names differ: only in qat {only_ours}, only in the replica {only_theirs}"
    bad = [(k, ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]]
    assert not bad, f"shapes differ (name, qat, replica): {bad}"
    count = sum(p.numel() for p in model.parameters())
    ours_params = sum(
        int(np.prod(s)) for k, s in ours.items() if not k.endswith(("running_mean", "running_var"))
    )
    assert count == ours_params, f"parameter count: replica {count}, qat {ours_params}"
    print(
        f"ok: {len(ours)} tensors equal by name and shape, {count} parameters "
        f"(+ {sum(int(np.prod(s)) for k, s in ours.items()) - count} batch-norm statistics)"
    )
    return count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check-params", metavar="CHECKPOINT", required=True)
    args = ap.parse_args()
    check_params(args.check_params)


if __name__ == "__main__":
    main()
