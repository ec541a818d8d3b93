#!/usr/bin/env python3
"""Small int8 graphs of the executor's data-movement and table ops, for
`tests/executor_ops_ort.rs`, which runs each through `qat run --against ort`
(ONNX Runtime is the referee for every int8 tensor).

Usage: gen_executor_op_graphs.py OUTDIR

Writes OUTDIR/{qop,qdq}_{int8,uint8}.onnx: a [N, 1, 28, 28] float input
(Fashion-MNIST shaped; normalize with mean 0.5, std 0.5), then

  QuantizeLinear -> QLinearConv (3x3, 10 channels, per-channel weights)
  -> QLinearLeakyRelu (alpha 0.15) -> QLinearSigmoid
  QLinearAdd broadcasting [N,10,28,28] + [N,10,1,1] (a global average pool),
  + a constant [10,1,1], a constant [1,1,1,28] first, then + the sigmoid
  -> Transpose (0,2,3,1) -> Transpose (0,3,2,1) -> Reshape [0,10,-1]
  -> Reshape [-1,10,28,28] -> QLinearGlobalAveragePool -> Flatten
  -> DequantizeLinear: logits [N, 10].

"qop" writes the QOperator nodes (com.microsoft for QLinearAdd, the
pools, LeakyRelu and Sigmoid); "qdq" the same computation as
DequantizeLinear -> float op -> QuantizeLinear groups with the same scales
and zero points, which ONNX Runtime (and the executor) fuse. Weights and
constants come from a fixed seed, so the files are the same on every run.
The scales are irregular on purpose, as calibrated ones are: with round
ratios such as 0.025 / 0.04 many sums fall within float error of a rounding
tie, where ORT's float QLinearAdd and the executor's exact one (S7) then
disagree by 1 LSB far more often than on real graphs.
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

C = 10


def build(form: str, dtype: str) -> onnx.ModelProto:
    rng = np.random.default_rng(7)
    u8 = dtype == "uint8"
    qty = TP.UINT8 if u8 else TP.INT8
    npq = np.uint8 if u8 else np.int8
    shift = 128 if u8 else 0
    inits = []
    nodes = []

    def const(name, arr):
        inits.append(nh.from_array(arr, name))
        return name

    def qparams(name, scale, zp):
        """Scale and zero point initializers of an activation (zp given in
        the int8 domain, shifted for uint8)."""
        return (const(f"{name}_s", np.array(scale, np.float32)),
                const(f"{name}_z", np.array(zp + shift, npq)))

    q_in = qparams("x", 2.0 / 255.0, 0)
    q_c = qparams("conv", 0.0307183, -5)
    q_l = qparams("leaky", 0.0251937, -20)
    q_sg = qparams("sigmoid", 1.0 / 256.0, -128)
    q_g = qparams("gap", 0.0203414, 3)
    q_a = qparams("add1", 0.0397251, -10)
    q_k = qparams("k1", 0.0489037, 2)
    q_b = qparams("add2", 0.0453362, -7)
    q_k2 = qparams("k2", 0.0311577, -1)
    q_b2 = qparams("add3", 0.0508812, -4)
    q_e = qparams("add4", 0.0521443, -12)
    q_gp = qparams("gap2", 0.0102261, 0)

    w = rng.integers(-60, 61, size=(C, 1, 3, 3)).astype(np.int8)
    sw = rng.uniform(0.005, 0.015, size=C).astype(np.float32)
    bias = rng.integers(-2000, 2001, size=C).astype(np.int32)
    k1 = (rng.integers(-40, 41, size=(C, 1, 1)) + shift).astype(npq)
    k2 = (rng.integers(-40, 41, size=(1, 1, 1, 28)) + shift).astype(npq)
    const("w", w)
    const("w_s", sw)
    const("w_z", np.zeros(C, np.int8))
    const("bias", bias)
    const("k1", k1)
    const("k2", k2)
    const("shape1", np.array([0, C, -1], np.int64))
    const("shape2", np.array([-1, C, 28, 28], np.int64))

    nodes.append(h.make_node("QuantizeLinear", ["image", *q_in], ["x"], name="quant"))
    if form == "qop":
        ms = "com.microsoft"
        nodes += [
            h.make_node("QLinearConv", ["x", *q_in, "w", "w_s", "w_z", *q_c, "bias"], ["conv"],
                        name="conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
            h.make_node("QLinearLeakyRelu", ["conv", *q_c, *q_l], ["leaky"], name="leaky",
                        domain=ms, alpha=0.15),
            h.make_node("QLinearSigmoid", ["leaky", *q_l, *q_sg], ["sigmoid"], name="sigmoid", domain=ms),
            h.make_node("QLinearGlobalAveragePool", ["conv", *q_c, *q_g], ["gap"], name="gap", domain=ms,
                        channels_last=0),
            h.make_node("QLinearAdd", ["leaky", *q_l, "gap", *q_g, *q_a], ["add1"], name="add1", domain=ms),
            h.make_node("QLinearAdd", ["add1", *q_a, "k1", *q_k, *q_b], ["add2"], name="add2", domain=ms),
            h.make_node("QLinearAdd", ["k2", *q_k2, "add2", *q_b, *q_b2], ["add3"], name="add3", domain=ms),
            h.make_node("QLinearAdd", ["add3", *q_b2, "sigmoid", *q_sg, *q_e], ["add4"], name="add4", domain=ms),
            h.make_node("Transpose", ["add4"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
            h.make_node("Transpose", ["nhwc"], ["nwhc"], name="swap", perm=[0, 3, 2, 1]),
            h.make_node("Reshape", ["nwhc", "shape1"], ["rows"], name="rows"),
            h.make_node("Reshape", ["rows", "shape2"], ["planes"], name="planes"),
            h.make_node("QLinearGlobalAveragePool", ["planes", *q_e, *q_gp], ["pooled"], name="pool",
                        domain=ms, channels_last=0),
            h.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        ]
    else:
        def dq(t, qp, axis=None, name=None):
            out = f"{name or t}_dq"
            kw = {} if axis is None else {"axis": axis}
            nodes.append(h.make_node("DequantizeLinear", [t, *qp], [out], name=f"{out}_node", **kw))
            return out

        def q(t, qp, out):
            nodes.append(h.make_node("QuantizeLinear", [t, *qp], [out], name=f"{out}_q"))
            return out

        const("bias_s", (np.float32(2.0 / 255.0) * sw).astype(np.float32))
        const("bias_z", np.zeros(C, np.int32))
        xw = dq("w", ("w_s", "w_z"), axis=0)
        xb = dq("bias", ("bias_s", "bias_z"), axis=0)
        nodes.append(h.make_node("Conv", [dq("x", q_in), xw, xb], ["conv_f"], name="conv",
                                 pads=[1, 1, 1, 1], kernel_shape=[3, 3]))
        q("conv_f", q_c, "conv")
        nodes.append(h.make_node("LeakyRelu", [dq("conv", q_c)], ["leaky_f"], name="leaky", alpha=0.15))
        q("leaky_f", q_l, "leaky")
        nodes.append(h.make_node("Sigmoid", [dq("leaky", q_l)], ["sigmoid_f"], name="sigmoid"))
        q("sigmoid_f", q_sg, "sigmoid")
        nodes.append(h.make_node("GlobalAveragePool", [dq("conv", q_c, name="conv_for_gap")], ["gap_f"],
                                 name="gap"))
        q("gap_f", q_g, "gap")

        def add(a, qa, b, qb, qo, out):
            nodes.append(h.make_node("Add", [dq(a, qa, name=f"{a}_{out}"), dq(b, qb, name=f"{b}_{out}")],
                                     [f"{out}_f"], name=out))
            q(f"{out}_f", qo, out)

        add("leaky", q_l, "gap", q_g, q_a, "add1")
        add("add1", q_a, "k1", q_k, q_b, "add2")
        add("k2", q_k2, "add2", q_b, q_b2, "add3")
        add("add3", q_b2, "sigmoid", q_sg, q_e, "add4")

        def move(op, src, out, **kw):
            ins = [dq(src, q_e, name=f"{src}_{out}")] + kw.pop("extra", [])
            nodes.append(h.make_node(op, ins, [f"{out}_f"], name=out, **kw))
            q(f"{out}_f", q_e, out)

        move("Transpose", "add4", "nhwc", perm=[0, 2, 3, 1])
        move("Transpose", "nhwc", "nwhc", perm=[0, 3, 2, 1])
        move("Reshape", "nwhc", "rows", extra=["shape1"])
        move("Reshape", "rows", "planes", extra=["shape2"])
        nodes.append(h.make_node("GlobalAveragePool", [dq("planes", q_e)], ["pooled_f"], name="pool"))
        q("pooled_f", q_gp, "pooled")
        nodes.append(h.make_node("Flatten", [dq("pooled", q_gp)], ["flat_f"], name="flatten"))
        q("flat_f", q_gp, "flat")
    nodes.append(h.make_node("DequantizeLinear", ["flat", *q_gp], ["logits"], name="dequant"))

    graph = h.make_graph(
        nodes, f"{form}_{dtype}",
        [h.make_tensor_value_info("image", TP.FLOAT, ["N", 1, 28, 28])],
        [h.make_tensor_value_info("logits", TP.FLOAT, ["N", C])],
        initializer=inits,
    )
    opsets = [h.make_opsetid("", 13), h.make_opsetid("com.microsoft", 1)]
    m = h.make_model(graph, opset_imports=opsets, producer_name="gen_executor_op_graphs")
    m.ir_version = 8
    return m


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for form in ("qop", "qdq"):
        for dtype in ("int8", "uint8"):
            m = build(form, dtype)
            if form == "qdq":
                onnx.checker.check_model(m, full_check=True)
            onnx.save(m, out / f"{form}_{dtype}.onnx")
            print(out / f"{form}_{dtype}.onnx")


if __name__ == "__main__":
    main()
