#!/usr/bin/env python3
"""Generate the PyTorch golden data checked by tests/golden_pytorch.rs.

Script: scripts/gen_golden.py
Made with: PyTorch 2.15.0 (build 2.15.0+cu132, run on the CPU only), NumPy 2.4.6,
on 2026-11-26.
Run:    python3 scripts/gen_golden.py [FILE ...]   (from the repository root;
        FILE names which files to write, e.g. relu6 depthwise; default all)
Writes: tests/data/golden/{conv2d,batch_norm,cross_entropy,max_pool2d,
        global_avg_pool,linear,relu6,avg_pool2d,concat,depthwise}.json
        (relu6, avg_pool2d, concat and depthwise added on 2026-12-01 with the
        same PyTorch 2.15.0; the older files were left as they were)

Precision: every input is drawn in float32 (torch.manual_seed fixed per file)
and written as the shortest decimal that round-trips to that float32, so the
Rust test feeds bit-identical inputs. PyTorch then computes in float64 on those
exact values and the results are rounded to float32. The references are thus
the correctly rounded answers for the given f32 inputs, and the test
tolerances measure only our f32 kernels' error.

Gradients use an upstream gradient r of random normals: loss = (y * r).sum(),
so dx = J^T r (cross-entropy is already a scalar and is differentiated
directly). Every JSON file records the torch version, this script's path and
the date; each case stores flat float lists in row-major order with their
shapes and the op's parameters.
"""

import datetime
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

SCRIPT = "scripts/gen_golden.py"
OUT_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "golden"))
DATE = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
PRECISION = (
    "inputs drawn in float32; PyTorch computes in float64 on the exact float32 "
    "inputs; outputs rounded to float32"
)

torch.set_num_threads(1)


def f32_list(t):
    """Flat list of the float32 values of `t`, each as its shortest round-trip decimal."""
    a = t.detach().to(torch.float32).contiguous().view(-1).numpy()
    # str(np.float32) is the shortest decimal that parses back to the same float32.
    return [float(str(v)) for v in a]


def arr(t):
    return {"shape": list(t.shape), "data": f32_list(t)}


def randn(*shape, scale=1.0, shift=0.0):
    """float32 normals, returned as float64 holding exactly those values."""
    return (torch.randn(*shape, dtype=torch.float32) * scale + shift).to(torch.float32).double()


def leaf(t):
    return t.clone().requires_grad_(True)


def write(name, cases, extra_meta=None):
    meta = {
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "script": SCRIPT,
        "date": DATE,
        "precision": PRECISION,
    }
    meta.update(extra_meta or {})
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name + ".json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{path}: {len(cases)} cases, {os.path.getsize(path)} bytes")


# ---------------------------------------------------------------------------
# conv2d: forward and input/weight/bias gradients.


def conv_case(name, n, c_in, hw, c_out, k, stride=(1, 1), pad=(0, 0), dilation=(1, 1), groups=1, bias=True):
    x = leaf(randn(n, c_in, *hw))
    w = leaf(randn(c_out, c_in // groups, *k, scale=(c_in // groups * k[0] * k[1]) ** -0.5))
    b = leaf(randn(c_out, scale=0.5)) if bias else None
    y = F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dilation, groups=groups)
    r = randn(*y.shape)
    (y * r).sum().backward()
    case = {
        "name": name,
        "stride": list(stride),
        "pad": list(pad),
        "dilation": list(dilation),
        "groups": groups,
        "x": arr(x),
        "w": arr(w),
        "b": arr(b) if bias else None,
        "y": arr(y),
        "r": arr(r),
        "dx": arr(x.grad),
        "dw": arr(w.grad),
        "db": arr(b.grad) if bias else None,
    }
    return case


def gen_conv():
    torch.manual_seed(20261126)
    cases = [
        conv_case("plain_3x3_pad1", 2, 3, (8, 8), 4, (3, 3), pad=(1, 1)),
        conv_case("plain_3x3_pad1_nobias", 2, 3, (8, 8), 4, (3, 3), pad=(1, 1), bias=False),
        conv_case("stride2_odd_13x11", 2, 3, (13, 11), 5, (3, 3), stride=(2, 2), pad=(1, 1)),
        conv_case("kernel3x5_pad1x2", 2, 3, (9, 10), 4, (3, 5), pad=(1, 2)),
        # Every parameter differs between h and w: catches swapped axes.
        conv_case("asym_s2x1_p0x2_d1x2_k5x3", 2, 3, (11, 9), 4, (5, 3), stride=(2, 1), pad=(0, 2), dilation=(1, 2)),
        conv_case("dilation2", 2, 4, (10, 10), 4, (3, 3), pad=(2, 2), dilation=(2, 2), bias=False),
        conv_case("groups2", 2, 4, (8, 8), 6, (3, 3), pad=(1, 1), groups=2),
        conv_case("depthwise_3x3", 2, 6, (9, 9), 6, (3, 3), pad=(1, 1), groups=6, bias=False),
        # n = 1: the CPU backend parallelizes inside the GEMM instead of over images.
        conv_case("depthwise_3x3_s2_n1", 1, 8, (10, 7), 8, (3, 3), stride=(2, 2), pad=(1, 1), groups=8),
        conv_case("pointwise_1x1_s2", 2, 8, (9, 9), 16, (1, 1), stride=(2, 2), bias=False),
        conv_case("resnet_stem_7x7_s2_p3", 2, 3, (32, 32), 8, (7, 7), stride=(2, 2), pad=(3, 3), bias=False),
        conv_case("batch5_3x3_s1_p1", 5, 4, (6, 6), 3, (3, 3), pad=(1, 1)),
    ]
    write("conv2d", cases)


# ---------------------------------------------------------------------------
# batch_norm: training (output, running stats, gradients) and eval.


def bn_case(name, shape, train, momentum=0.1, eps=1e-5):
    c = shape[1]
    # Per-channel offset and scale so the batch statistics are far from (0, 1).
    bshape = [1, c] + [1] * (len(shape) - 2)
    x = randn(*shape) * (torch.rand(c, dtype=torch.float32).double() * 2 + 0.5).view(bshape) + randn(c, scale=2.0).view(bshape)
    # Round to float32 again after the affine map: the inputs must be exact f32 values.
    x = leaf(x.float().double())
    gamma = leaf(randn(c, scale=0.5, shift=1.0))
    beta = leaf(randn(c, scale=0.5))
    rm0 = randn(c, scale=0.5)
    rv0 = (torch.rand(c, dtype=torch.float32) + 0.5).double()
    rm, rv = rm0.clone(), rv0.clone()
    y = F.batch_norm(x, rm, rv, gamma, beta, training=train, momentum=momentum, eps=eps)
    case = {
        "name": name,
        "train": train,
        "momentum": momentum,
        "eps": eps,
        "x": arr(x),
        "gamma": arr(gamma),
        "beta": arr(beta),
        "running_mean_in": arr(rm0),
        "running_var_in": arr(rv0),
        "y": arr(y),
        # PyTorch updates running_var with the unbiased batch variance.
        "running_mean_out": arr(rm),
        "running_var_out": arr(rv),
    }
    if train:
        r = randn(*y.shape)
        (y * r).sum().backward()
        case.update({"r": arr(r), "dx": arr(x.grad), "dgamma": arr(gamma.grad), "dbeta": arr(beta.grad)})
    return case


def gen_bn():
    torch.manual_seed(1126)
    cases = [
        bn_case("train_4d", (4, 3, 5, 5), True),
        bn_case("train_4d_odd", (3, 5, 7, 6), True),
        bn_case("train_2d", (8, 5), True),
        bn_case("train_4d_momentum0.3_eps1e-3", (2, 4, 3, 3), True, momentum=0.3, eps=1e-3),
        bn_case("eval_4d", (4, 3, 5, 5), False),
        bn_case("eval_2d", (8, 5), False),
    ]
    write("batch_norm", cases)


# ---------------------------------------------------------------------------
# cross_entropy: mean reduction, with and without label smoothing.


def ce_case(name, n, k, eps, scale=1.0, shift=0.0):
    z = leaf(randn(n, k, scale=scale, shift=shift))
    labels = torch.randint(0, k, (n,))
    loss = F.cross_entropy(z, labels, reduction="mean", label_smoothing=eps)
    loss.backward()
    return {
        "name": name,
        "label_smoothing": eps,
        "logits": arr(z),
        "labels": labels.tolist(),
        "loss": f32_list(loss.view(1))[0],
        "dlogits": arr(z.grad),
    }


def gen_ce():
    torch.manual_seed(7)
    cases = [
        ce_case("ls0", 6, 10, 0.0),
        ce_case("ls0.1", 6, 10, 0.1),
        ce_case("ls0_wide_batch", 16, 5, 0.0, scale=3.0),
        ce_case("ls0.1_wide_batch", 16, 5, 0.1, scale=3.0),
        # Large logits: a kernel without the max subtraction overflows exp().
        ce_case("ls0.1_large_logits", 4, 7, 0.1, scale=20.0, shift=80.0),
    ]
    write("cross_entropy", cases)


# ---------------------------------------------------------------------------
# max_pool2d 3x3 s2 p1 (the ResNet stem pool), including ties.


def first_max_in_window_indices(x, k, s, p):
    """Flat per-plane argmax of each window, first maximum in row-major order."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = torch.empty(n, c, oh, ow, dtype=torch.long)
    xs = x.detach()
    for i in range(n):
        for ch in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    best, idx = None, None
                    for ki in range(k):
                        for kj in range(k):
                            iy, ix = oy * s + ki - p, ox * s + kj - p
                            if 0 <= iy < h and 0 <= ix < w:
                                v = xs[i, ch, iy, ix].item()
                                if best is None or v > best:
                                    best, idx = v, iy * w + ix
                    out[i, ch, oy, ox] = idx
    return out


def pool_case(name, x, k=3, s=2, p=1):
    x = leaf(x)
    y, ind = F.max_pool2d(x, k, s, p, return_indices=True)
    r = randn(*y.shape)
    (y * r).sum().backward()
    ours = first_max_in_window_indices(x, k, s, p)
    tie_rule_matches = bool(torch.equal(ind, ours))
    assert tie_rule_matches, f"{name}: PyTorch's max_pool2d tie rule is not first-max in row-major window order"
    ties = 0
    # Count windows whose maximum occurs more than once.
    xs = x.detach()
    n, c, h, w = xs.shape
    for i in range(n):
        for ch in range(c):
            for oy in range(y.shape[2]):
                for ox in range(y.shape[3]):
                    y0, y1 = max(oy * s - p, 0), min(oy * s - p + k, h)
                    x0, x1 = max(ox * s - p, 0), min(ox * s - p + k, w)
                    win = xs[i, ch, y0:y1, x0:x1]
                    ties += int((win == win.max()).sum().item() > 1)
    return {
        "name": name,
        "kernel": [k, k],
        "stride": [s, s],
        "pad": [p, p],
        "x": arr(x),
        "y": arr(y),
        "r": arr(r),
        "dx": arr(x.grad),
        "windows_with_ties": ties,
        "tie_rule_first_max_row_major": tie_rule_matches,
    }


def gen_pool():
    torch.manual_seed(33)
    cases = [
        pool_case("random_9x9", randn(2, 3, 9, 9)),
        pool_case("random_8x10", randn(2, 2, 8, 10)),
        # Small integers: most windows hold their maximum several times.
        pool_case("ties_small_ints", torch.randint(-2, 2, (2, 2, 7, 8)).double()),
        # All negative: -inf padding (not zero padding) decides the border outputs.
        pool_case("all_negative_ties", -torch.randint(1, 3, (1, 3, 6, 5)).double()),
    ]
    for cse in cases:
        print(f"  max_pool2d {cse['name']}: {cse['windows_with_ties']} windows with ties, tie rule checked")
    write("max_pool2d", cases, {"tie_rule": "gradient goes to the first maximum in row-major window order (checked against return_indices)"})


# ---------------------------------------------------------------------------
# global average pooling (adaptive_avg_pool2d to 1x1) and linear.


def gap_case(name, shape):
    x = leaf(randn(*shape, shift=0.5))
    y = F.adaptive_avg_pool2d(x, 1).flatten(1)
    r = randn(*y.shape)
    (y * r).sum().backward()
    return {"name": name, "x": arr(x), "y": arr(y), "r": arr(r), "dx": arr(x.grad)}


def gen_gap():
    torch.manual_seed(44)
    write("global_avg_pool", [gap_case("7x7", (2, 4, 7, 7)), gap_case("1x1", (3, 5, 1, 1)), gap_case("4x6", (2, 3, 4, 6))])


def linear_case(name, n, fin, fout, bias):
    x = leaf(randn(n, fin))
    w = leaf(randn(fout, fin, scale=fin ** -0.5))
    b = leaf(randn(fout, scale=0.5)) if bias else None
    y = F.linear(x, w, b)
    r = randn(*y.shape)
    (y * r).sum().backward()
    return {
        "name": name,
        "x": arr(x),
        "w": arr(w),
        "b": arr(b) if bias else None,
        "y": arr(y),
        "r": arr(r),
        "dx": arr(x.grad),
        "dw": arr(w.grad),
        "db": arr(b.grad) if bias else None,
    }


def gen_linear():
    torch.manual_seed(55)
    write("linear", [linear_case("bias_5x7_to_4", 5, 7, 4, True), linear_case("nobias_3x64_to_10", 3, 64, 10, False),
                     linear_case("bias_17x33_to_9", 17, 33, 9, True)])


# ---------------------------------------------------------------------------
# relu6 / hardtanh at and around the kinks, avg_pool2d, concat.


def f32_neighbours(v):
    """v and the float32 values just below and above it."""
    v = np.float32(v)
    return [float(np.nextafter(v, np.float32(-np.inf))), float(v), float(np.nextafter(v, np.float32(np.inf)))]


def kink_gradients(fn):
    """The gradient fn passes at each of 0, 6, -0 and NaN, on a 1-element and
    a 64-element tensor (PyTorch's scalar and vectorized CPU paths)."""
    out = {}
    for n in (1, 64):
        for name, v in (("0", 0.0), ("6", 6.0), ("-0", -0.0), ("nan", float("nan"))):
            x = torch.full((n,), v, dtype=torch.float32, requires_grad=True)
            fn(x).sum().backward()
            out[f"n{n}_x{name}"] = x.grad[0].item()
    return out


def relu6_case(name, x, lo=0.0, hi=6.0):
    x = leaf(x)
    y = F.relu6(x) if (lo, hi) == (0.0, 6.0) else F.hardtanh(x, lo, hi)
    r = randn(*y.shape)
    (y * r).sum().backward()
    return {"name": name, "min": lo, "max": hi, "x": arr(x), "y": arr(y), "r": arr(r), "dx": arr(x.grad)}


def gen_relu6():
    torch.manual_seed(66)
    # Every kink and its float32 neighbours, then O(1) values on both sides.
    kinks = f32_neighbours(0.0) + f32_neighbours(6.0) + [-0.0, -3.0, 3.0, 7.5, 1e-30, 6.0 - 1e-5]
    kinks = torch.tensor(kinks + [0.0, 6.0] * 26, dtype=torch.float32).double()  # 64 values: vectorized path
    small = torch.tensor(f32_neighbours(0.0) + f32_neighbours(6.0) + [0.0, 6.0, -0.0], dtype=torch.float32).double()
    cases = [
        relu6_case("kinks_64", kinks.view(2, 1, 4, 8)),
        relu6_case("kinks_9", small.view(1, 1, 3, 3)),
        relu6_case("random_both_sides", randn(3, 4, 5, 3, scale=4.0, shift=3.0)),
        relu6_case("hardtanh_m0.5_2", randn(2, 3, 7, scale=2.0), lo=-0.5, hi=2.0),
    ]
    # The conventions, measured on this PyTorch (the values the tests rely on).
    relu6_kinks = kink_gradients(F.relu6)
    clamp_kinks = kink_gradients(lambda t: torch.clamp(t, 0.0, 6.0))
    for k in ("n1_x0", "n1_x6", "n64_x0", "n64_x6", "n1_x-0", "n64_x-0"):
        assert relu6_kinks[k] == 0.0, f"relu6 gradient at the kink {k} is {relu6_kinks[k]}, not 0"
    print(f"  relu6 kink gradients: {relu6_kinks}")
    print(f"  clamp(0, 6) kink gradients: {clamp_kinks}")
    write("relu6", cases, {
        "kink_rule": "relu6 = hardtanh(0, 6); gradient 1 for 0 < x < 6, 0 elsewhere, 0 at x = 0, -0 and 6 exactly",
        "relu6_kink_gradients": {k: (v if v == v else "nan") for k, v in relu6_kinks.items()},
        "clamp_kink_gradients": {k: (v if v == v else "nan") for k, v in clamp_kinks.items()},
    })


def avg_case(name, shape, k, s, p, incl, ceil):
    x = leaf(randn(*shape))
    y = F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=incl)
    r = randn(*y.shape)
    (y * r).sum().backward()
    return {
        "name": name,
        "kernel": list(k),
        "stride": list(s),
        "pad": list(p),
        "count_include_pad": incl,
        "ceil_mode": ceil,
        "x": arr(x),
        "y": arr(y),
        "r": arr(r),
        "dx": arr(x.grad),
    }


def gen_avg_pool():
    torch.manual_seed(77)
    cases = [
        avg_case("k3s2p1_incl_9x7", (2, 3, 9, 7), (3, 3), (2, 2), (1, 1), True, False),
        avg_case("k3s2p1_excl_9x7", (2, 3, 9, 7), (3, 3), (2, 2), (1, 1), False, False),
        avg_case("k3s1p1_excl_6x5", (1, 2, 6, 5), (3, 3), (1, 1), (1, 1), False, False),
        avg_case("k2s2_ceil_excl_7x9", (2, 2, 7, 9), (2, 2), (2, 2), (0, 0), False, True),
        avg_case("k2s2_ceil_incl_7x9", (2, 2, 7, 9), (2, 2), (2, 2), (0, 0), True, True),
        # ceil_mode windows hang past the padding: divisor below 9 there.
        avg_case("k3s2p1_ceil_incl_8x6", (1, 3, 8, 6), (3, 3), (2, 2), (1, 1), True, True),
        avg_case("k3s2p1_ceil_excl_8x6", (1, 3, 8, 6), (3, 3), (2, 2), (1, 1), False, True),
        # Every parameter differs between h and w: catches swapped axes.
        avg_case("k3x2_s2x1_p1x0_incl_7x6", (2, 2, 7, 6), (3, 2), (2, 1), (1, 0), True, False),
        avg_case("k5x3_s3x2_p2x1_ceil_excl_10x7", (1, 2, 10, 7), (5, 3), (3, 2), (2, 1), False, True),
        avg_case("k7_global_7x7", (2, 3, 7, 7), (7, 7), (1, 1), (0, 0), False, False),
    ]
    write("avg_pool2d", cases, {
        "divisor_rule": "count_include_pad: window clipped to [-pad, size + pad) (kh*kw except ceil_mode windows past the padding); else the input positions in the window",
    })


def concat_case(name, shapes, axis):
    xs = [leaf(randn(*sh)) for sh in shapes]
    y = torch.cat(xs, dim=axis)
    r = randn(*y.shape)
    (y * r).sum().backward()
    return {
        "name": name,
        "axis": axis,
        "xs": [arr(x) for x in xs],
        "y": arr(y),
        "r": arr(r),
        "dxs": [arr(x.grad) for x in xs],
    }


def gen_concat():
    torch.manual_seed(88)
    cases = [
        concat_case("channels_2_3_5", [(2, 2, 5, 3), (2, 3, 5, 3), (2, 5, 5, 3)], 1),
        concat_case("channels_1x1_1_4", [(3, 1, 1, 1), (3, 4, 1, 1)], 1),
        concat_case("height_axis2", [(2, 3, 4, 5), (2, 3, 1, 5)], 2),
    ]
    write("concat", cases)
# depthwise conv2d (groups == C_in, C_out = multiplier * C_in): forward and
# input/weight/bias gradients on odd shapes, for tests/depthwise.rs.


def gen_depthwise():
    torch.manual_seed(20261201)
    dw = conv_case
    cases = [
        # The odd shape: every size odd, stride 2, pad 1, dilation 2.
        dw("n3_c5_9x7_k3_s2_p1_d2", 3, 5, (9, 7), 5, (3, 3), stride=(2, 2), pad=(1, 1), dilation=(2, 2), groups=5),
        # MobileNetV2 blocks: 3x3 pad 1, stride 1 and 2 (even and odd sizes).
        dw("n2_c6_11x11_k3_s1_p1", 2, 6, (11, 11), 6, (3, 3), pad=(1, 1), groups=6, bias=False),
        dw("n2_c7_12x9_k3_s2_p1", 2, 7, (12, 9), 7, (3, 3), stride=(2, 2), pad=(1, 1), groups=7),
        # 5x5 and 7x7, channel multiplier 2 and 3.
        dw("n1_c3_13x10_k5_s1_p2_mult2", 1, 3, (13, 10), 6, (5, 5), pad=(2, 2), groups=3),
        dw("n2_c2_15x14_k7_s2_p3_mult3", 2, 2, (15, 14), 6, (7, 7), stride=(2, 2), pad=(3, 3), groups=2, bias=False),
        # Every parameter differs between h and w.
        dw("n2_c4_10x13_k5x3_s1x2_p2x0_d1x3", 2, 4, (10, 13), 4, (5, 3), stride=(1, 2), pad=(2, 0), dilation=(1, 3), groups=4),
        # Stride 3 with padding 2: some taps of the border outputs see only padding.
        dw("n3_c3_8x7_k3_s3_p2", 3, 3, (8, 7), 3, (3, 3), stride=(3, 3), pad=(2, 2), groups=3),
        # A 1x1 depthwise conv of stride 2 (backward-data: input pixels no tap reads).
        dw("n2_c5_7x6_k1_s2_p0", 2, 5, (7, 6), 5, (1, 1), stride=(2, 2), groups=5),
    ]
    write("depthwise", cases)


def main():
    if not torch.__version__.startswith("2.15.0"):
        print(f"warning: the committed data was made with torch 2.15.0, this is {torch.__version__}", file=sys.stderr)
    gens = {
        "conv2d": gen_conv,
        "batch_norm": gen_bn,
        "cross_entropy": gen_ce,
        "max_pool2d": gen_pool,
        "global_avg_pool": gen_gap,
        "linear": gen_linear,
        "relu6": gen_relu6,
        "avg_pool2d": gen_avg_pool,
        "concat": gen_concat,
        "depthwise": gen_depthwise,
    }
    wanted = sys.argv[1:] or list(gens)
    for name in wanted:
        if name not in gens:
            sys.exit(f"unknown file {name!r}: choose from {', '.join(gens)}")
        gens[name]()


if __name__ == "__main__":
    main()
