#!/usr/bin/env python3
"""Golden values of PyTorch fake quantization for `tests/quant_golden.rs`.

Produces tests/data/quant/fake_quant_golden.json: forward outputs and
straight-through gradients of torch.fake_quantize_per_tensor_affine
(activations: quant_min=-128, quant_max=127, int zero point) and
torch.fake_quantize_per_channel_affine (weights: axis 0, zero point 0,
quant_min=-127, quant_max=127), as QUANT_SPEC S3 defines them.

Generated with PyTorch 2.15.0+cu132 (CPU), NumPy 2.4.6; the versions used are
also recorded in the JSON. Run from the repository root:

    python3 scripts/gen_quant_golden.py

Division versus multiplication: the spec (and qat) compute RNE(x / s) with a
true float32 division, as ONNX QuantizeLinear does; PyTorch computes
RNE(x * (1 / s)) with inv_scale = fl32(1 / s). The two differ by one float32
ulp on some inputs, which can move a value across a rounding boundary. Every
input kept here satisfies rint(fl32(x / s)) == rint(fl32(x * fl32(1 / s)))
(checked in float32 with NumPy), so both definitions give the same answer and
the goldens test the shared rounding, clamping and gradient rules. The
power-of-two-scale cases contain exact ties (x / s = k + 1/2 exactly, where
division and multiplication agree), so round-half-to-even is tested too.
The script also asserts that PyTorch's output equals a NumPy re-implementation
of the spec formula on every kept element. Separately, "div_vs_mul_deviation"
lists inputs where the two do round apart (about 1 in 10^6 random inputs),
with PyTorch's output and the spec's: qat follows the spec there.
"""

import json
import os

import numpy as np
import torch

F = np.float32
OUT = os.path.join("tests", "data", "quant", "fake_quant_golden.json")


def div_mul_agree(x, s):
    """Elements where fl32 division and PyTorch's fl32 multiply by fl32(1/s) round alike."""
    s = F(s)
    inv = F(1.0) / s
    return np.rint(x / s) == np.rint(x * inv)


REPLACED = [0]


def keep_agreeing(rng, x, s, make):
    """Replaces the elements of x where division and multiplication disagree."""
    for _ in range(100):
        bad = ~div_mul_agree(x, s)
        REPLACED[0] += int(bad.sum())
        if not bad.any():
            return x
        x[bad] = make(rng, int(bad.sum()))
    raise RuntimeError("could not find agreeing inputs")


def spec_fake_quant(x, s, z, qmin, qmax):
    """QUANT_SPEC S3 in float32 with a true division."""
    s = F(s)
    r = np.rint(x / s) + F(z)
    q = np.clip(r, F(qmin), F(qmax))
    return ((q - F(z)) * s).astype(F), (r >= qmin) & (r <= qmax)


def to_list(a):
    return [float(v) for v in np.asarray(a, dtype=F).reshape(-1)]


def per_tensor_case(name, rng, x, s, z):
    s = F(s)
    x = x.astype(F)
    dy = rng.standard_normal(x.shape).astype(F)
    xt = torch.tensor(x, requires_grad=True)
    y = torch.fake_quantize_per_tensor_affine(xt, float(s), int(z), -128, 127)
    y.backward(torch.tensor(dy))
    y = y.detach().numpy()
    dx = xt.grad.numpy()
    want_y, mask = spec_fake_quant(x, s, z, -128, 127)
    assert np.array_equal(y.view(np.uint32), want_y.view(np.uint32)), name
    assert np.array_equal(dx, np.where(mask, dy, F(0))), name
    return {
        "name": name,
        "kind": "per_tensor",
        "shape": list(x.shape),
        "scale": float(s),
        "zero_point": int(z),
        "quant_min": -128,
        "quant_max": 127,
        "x": to_list(x),
        "dy": to_list(dy),
        "y": to_list(y),
        "dx": to_list(dx),
    }


def per_channel_case(name, rng, w, scales):
    scales = np.asarray(scales, dtype=F)
    w = w.astype(F)
    dy = rng.standard_normal(w.shape).astype(F)
    wt = torch.tensor(w, requires_grad=True)
    zp = torch.zeros(len(scales), dtype=torch.int32)
    y = torch.fake_quantize_per_channel_affine(wt, torch.tensor(scales), zp, 0, -127, 127)
    y.backward(torch.tensor(dy))
    y = y.detach().numpy()
    dx = wt.grad.numpy()
    inner = w.size // len(scales)
    flat, fy, fdx = w.reshape(len(scales), inner), y.reshape(len(scales), inner), dx.reshape(len(scales), inner)
    for c, s in enumerate(scales):
        want_y, mask = spec_fake_quant(flat[c], s, 0, -127, 127)
        assert np.array_equal(fy[c].view(np.uint32), want_y.view(np.uint32)), (name, c)
        assert np.array_equal(fdx[c], np.where(mask, dy.reshape(len(scales), inner)[c], F(0))), (name, c)
    return {
        "name": name,
        "kind": "per_channel",
        "shape": list(w.shape),
        "scale": to_list(scales),
        "zero_point": 0,
        "quant_min": -127,
        "quant_max": 127,
        "x": to_list(w),
        "dy": to_list(dy),
        "y": to_list(y),
        "dx": to_list(dx),
    }


def activations(rng, s, z, n):
    """Values over the whole grid, beyond both clamp edges, and at the edges."""
    s = F(s)
    lo, hi = (-128 - z) * s, (127 - z) * s
    span = hi - lo

    def make(rng, k):
        return rng.uniform(lo - 0.2 * span, hi + 0.2 * span, k).astype(F)

    x = make(rng, n)
    # Around the clamp edges: RNE(x / s) + z at qmin/qmax +- 0.4 / 0.6.
    edges = np.array([(q - z + d) * s for q in (-128, 127) for d in (-0.6, -0.4, 0.4, 0.6)], dtype=F)
    grid = (np.arange(-128, 128, 17) - z).astype(F) * s  # exactly on the grid
    x = np.concatenate([x, edges, grid, np.array([0.0, -0.0], dtype=F)])
    return keep_agreeing(rng, x, s, make)


def weights(rng, shape, amax_scale):
    """Gaussian weights; scales from a fraction of each channel's max so some clip."""
    w = (rng.standard_normal(shape) * 0.1).astype(F)
    w[1] = 0.0  # an all-zero channel gets the 2^-23 floor
    amax = np.abs(w.reshape(shape[0], -1)).max(axis=1).astype(F)
    scales = np.maximum((amax * F(amax_scale)) / F(127), F(2.0**-23)).astype(F)
    flat = w.reshape(shape[0], -1)
    for c, s in enumerate(scales):
        def make(rng, k, s=s):
            return (rng.standard_normal(k) * 0.1).astype(F)
        flat[c] = keep_agreeing(rng, flat[c].copy(), s, make)
    return flat.reshape(shape), scales


def main():
    rng = np.random.default_rng(20261126)
    cases = []
    cases.append(per_tensor_case("act_generic", rng, activations(rng, 0.0371, 17, 400), 0.0371, 17))
    cases.append(per_tensor_case("act_relu_z-128", rng, activations(rng, 0.02, -128, 300), 0.02, -128))
    cases.append(per_tensor_case("act_z127", rng, activations(rng, 0.5, 127, 200), 0.5, 127))
    # Exact ties with a power-of-two scale: x / s = k + 1/2, with odd and even z.
    k = np.arange(-140, 140, dtype=F)
    for z in (3, -4):
        ties = (k + F(0.5)) * F(0.0625)
        cases.append(per_tensor_case(f"act_ties_pow2_z{z}", rng, ties, 0.0625, z))
    w, s = weights(rng, (8, 3, 3, 3), 0.8)
    cases.append(per_channel_case("conv_oihw_8x3x3x3", rng, w, s))
    w, s = weights(rng, (10, 16), 1.0)
    cases.append(per_channel_case("fc_10x16", rng, w, s))
    # Exact ties per channel: scales 2^-6 and 2^-3.
    kt = np.arange(-130, 130, dtype=F)
    wt = np.stack([(kt + F(0.5)) * F(2.0**-6), (kt + F(0.5)) * F(2.0**-3)])
    cases.append(per_channel_case("fc_ties_pow2", rng, wt, [2.0**-6, 2.0**-3]))
    # The documented deviation: inputs where PyTorch's x * (1 / s) rounds
    # differently from the spec's x / s. qat follows the spec (QuantizeLinear).
    s_d, z_d = F(0.0371), 17
    half = ((np.arange(-140, 110) + F(0.5)) * s_d).astype(F)  # near x / s = k + 1/2
    cand = np.concatenate([half.view(np.int32) + d for d in (-2, -1, 0, 1, 2)]).view(F)
    cand = cand[~div_mul_agree(cand, s_d)][:8]
    assert len(cand) == 8
    torch_y = torch.fake_quantize_per_tensor_affine(torch.tensor(cand), float(s_d), z_d, -128, 127).numpy()
    spec_y, _ = spec_fake_quant(cand, s_d, z_d, -128, 127)
    assert not np.any(torch_y == spec_y)
    deviation = {
        "scale": float(s_d),
        "zero_point": z_d,
        "x": to_list(cand),
        "torch_y": to_list(torch_y),
        "spec_y": to_list(spec_y),
    }
    out = {
        "generator": "scripts/gen_quant_golden.py",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "note": "inputs chosen so that fl32(x / s) and fl32(x * fl32(1 / s)) round alike",
        "cases": cases,
        "div_vs_mul_deviation": deviation,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    n = sum(len(c["x"]) for c in cases)
    print(f"wrote {OUT}: {len(cases)} cases, {n} values, torch {torch.__version__}")
    print(f"{REPLACED[0]} random inputs redrawn where x / s and x * (1 / s) round apart")


if __name__ == "__main__":
    main()
