#!/usr/bin/env python3
"""ONNX Runtime's QLinearAveragePool outputs for `tests/quant_ort_avgpool.rs`.

Writes tests/data/quant/ort_qlinear_avgpool.json: random int8 inputs, their
quantization parameters, the pooling attributes and what ONNX Runtime's CPU
provider returns for com.microsoft QLinearAveragePool (NCHW, int8). The Rust
test compares qat's integer average pooling (QUANT_SPEC S6) with these.

The script also re-computes each output with the float formula read from
ORT's source (onnxruntime/contrib_ops/cpu/quantization/qlinear_pool.cc) and
asserts that it reproduces ORT exactly, which pins the formula down:
  v   = fl32(s_x * (q - z_x))                (every input dequantized)
  sum = fl32 sum of v over the window's input cells, row-major order
  avg = fl32(sum / d)   d = kh*kw with count_include_pad, else input cells
  y   = clamp(nearbyintf(fl32(fl32(avg / s_y) + z_y)), -128, 127)
(nearbyintf in the default rounding mode: round half to even.) When the
kernel covers the whole (unpadded) input ORT takes its global-average-pool
path instead; no case here does.

Run from the repository root (needs numpy, onnx, onnxruntime):
    python3 scripts/gen_ort_qavgpool.py
"""

import datetime
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

OUT = os.path.join("tests", "data", "quant", "ort_qlinear_avgpool.json")
F = np.float32

# (name, N, C, H, W, kernel, stride, pad, count_include_pad, ceil_mode)
CASES = [
    ("k3s2p1_excl", 2, 3, 9, 7, (3, 3), (2, 2), (1, 1), 0, 0),
    ("k3s2p1_incl", 2, 3, 9, 7, (3, 3), (2, 2), (1, 1), 1, 0),
    ("k3s1p1_excl", 1, 4, 8, 8, (3, 3), (1, 1), (1, 1), 0, 0),
    ("k3s1p1_incl", 1, 4, 8, 8, (3, 3), (1, 1), (1, 1), 1, 0),
    ("k2s2_ceil_excl", 2, 2, 7, 9, (2, 2), (2, 2), (0, 0), 0, 1),
    ("k3x2_s2x1_p1x0_excl", 2, 2, 7, 6, (3, 2), (2, 1), (1, 0), 0, 0),
    ("k5x3_s3x2_p2x1_ceil_excl", 1, 2, 10, 7, (5, 3), (3, 2), (2, 1), 0, 1),
    ("k7_s1_on_9x9", 1, 8, 9, 9, (7, 7), (1, 1), (0, 0), 0, 0),
    # ceil_mode windows past the padding: ORT divides by kh*kw there, PyTorch
    # (and qat) by the window clipped to the padded input.
    ("k3s2p1_ceil_incl", 1, 3, 8, 6, (3, 3), (2, 2), (1, 1), 1, 1),
]
PARAMS = [  # (s_x, z_x, s_y, z_y)
    (0.037, -5, 0.021, 3),
    (0.1, -128, 0.1, -128),
    (0.0123, 17, 0.0061, -40),
]


def out_len(size, k, s, p, ceil):
    num = size + 2 * p - k
    o = (-(-num // s) if ceil else num // s) + 1
    if ceil and (o - 1) * s >= size + p:
        o -= 1
    return o


def ort_formula(x, sx, zx, sy, zy, k, s, p, incl, oh, ow):
    n, c, h, w = x.shape
    v = (F(sx) * (x.astype(np.int32) - zx).astype(F)).astype(F)
    y = np.zeros((n, c, oh, ow), dtype=np.int8)
    for b in range(n):
        for ch in range(c):
            for oy in range(oh):
                h0 = oy * s[0] - p[0]
                h1, h0 = min(h0 + k[0], h), max(h0, 0)
                for ox in range(ow):
                    w0 = ox * s[1] - p[1]
                    w1, w0 = min(w0 + k[1], w), max(w0, 0)
                    acc = F(0)
                    for iy in range(h0, h1):
                        for ix in range(w0, w1):
                            acc = F(acc + v[b, ch, iy, ix])
                    d = k[0] * k[1] if incl else (h1 - h0) * (w1 - w0)
                    avg = F(acc / F(d))
                    t = F(F(avg / F(sy)) + F(zy))
                    y[b, ch, oy, ox] = int(np.clip(np.rint(t), -128, 127))
    return y


def run_ort(x, sx, zx, sy, zy, k, s, p, incl, ceil):
    node = helper.make_node(
        "QLinearAveragePool",
        ["x", "x_scale", "x_zero_point", "y_scale", "y_zero_point"],
        ["y"],
        domain="com.microsoft",
        kernel_shape=list(k),
        strides=list(s),
        pads=[p[0], p[1], p[0], p[1]],
        count_include_pad=incl,
        ceil_mode=ceil,
    )
    inits = [
        helper.make_tensor("x_scale", TensorProto.FLOAT, [], [sx]),
        helper.make_tensor("x_zero_point", TensorProto.INT8, [], [zx]),
        helper.make_tensor("y_scale", TensorProto.FLOAT, [], [sy]),
        helper.make_tensor("y_zero_point", TensorProto.INT8, [], [zy]),
    ]
    g = helper.make_graph(
        [node],
        "qavgpool",
        [helper.make_tensor_value_info("x", TensorProto.INT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def main():
    rng = np.random.default_rng(20261201)
    cases = []
    for name, n, c, h, w, k, s, p, incl, ceil in CASES:
        for j, (sx, zx, sy, zy) in enumerate(PARAMS):
            x = rng.integers(-128, 128, size=(n, c, h, w), dtype=np.int8)
            y = run_ort(x, sx, zx, sy, zy, k, s, p, incl, ceil)
            oh, ow = out_len(h, k[0], s[0], p[0], ceil), out_len(w, k[1], s[1], p[1], ceil)
            assert y.shape == (n, c, oh, ow), f"{name}: ORT output shape {y.shape}, expected {(n, c, oh, ow)}"
            ref = ort_formula(x, sx, zx, sy, zy, k, s, p, incl, oh, ow)
            assert np.array_equal(ref, y), f"{name}/{j}: the float formula does not reproduce ORT"
            cases.append({
                "name": f"{name}/{j}",
                "shape": [n, c, h, w],
                "kernel": list(k),
                "stride": list(s),
                "pad": list(p),
                "count_include_pad": bool(incl),
                "ceil_mode": bool(ceil),
                "s_x": sx,
                "z_x": zx,
                "s_y": sy,
                "z_y": zy,
                "x": x.reshape(-1).tolist(),
                "y": y.reshape(-1).tolist(),
            })
    meta = {
        "onnxruntime_version": ort.__version__,
        "onnx_version": onnx.__version__,
        "numpy_version": np.__version__,
        "script": "scripts/gen_ort_qavgpool.py",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "provider": "CPUExecutionProvider, 1 thread, graph optimizations off",
        "formula_reproduces_ort": True,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
        f.write("\n")
    print(f"{OUT}: {len(cases)} cases, ORT {ort.__version__}; the float formula reproduces ORT on all of them")


if __name__ == "__main__":
    main()
