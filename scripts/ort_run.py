#!/usr/bin/env python3
"""ONNX Runtime beside the int8 executor, for `qat run --against ort`.

Usage: ort_run.py MODEL.onnx [KEY=VALUE ...]

Each KEY=VALUE is an ONNX Runtime session config entry
(`SessionOptions.add_session_config_entry`), e.g.
session.qdqisint8allowed=1.

`qat run` starts this script once and talks to it over stdin/stdout, one
line each way:

- on start it prints a JSON line {"ort": version, "tensors": [[name, op,
  dtype], ...], "output": name}: every int8/uint8 tensor a node writes,
  with the op of that node, exposed as an extra graph output so that one
  session returns them all (ONNX Runtime's CPU provider, default graph
  optimizations, so QDQ graphs are fused as in a deployment);
- then, for each line "IN.npy OUTDIR" it reads the float32 NCHW batch,
  runs the session and writes OUTDIR/<k>.npy for the k-th entry of
  "tensors" and OUTDIR/output.npy for the model's output, and prints "ok";
- any failure prints one line "error: ..." and exits 1.

An empty line or end of input ends it.
"""

import json
import sys
from pathlib import Path


def fail(msg: str) -> None:
    print(f"error: {msg}", flush=True)
    sys.exit(1)


# Ops whose output takes the element type of input k (the output zero point).
ZERO_POINT_INPUT = {
    "QuantizeLinear": 2,
    "QLinearConv": 7,
    "QLinearAdd": 7,
    "QLinearMul": 7,
    "QLinearMatMul": 7,
    "QGemm": 8,
    "QLinearGlobalAveragePool": 4,
    "QLinearAveragePool": 4,
    "QLinearConcat": 1,
    "QLinearLeakyRelu": 4,
    "QLinearSigmoid": 4,
}
# Ops whose output is float whatever their inputs.
FLOAT_OUT = {"DequantizeLinear"}


def int_tensors(model, TensorProto, shape_inference):
    """[name, op, "int8"|"uint8"] of every int8/uint8 tensor a node writes.

    Element types come from ONNX shape inference where it knows the op, else
    from the op's output zero point, else (MaxPool, Flatten, Reshape, ...)
    from the first input; com.microsoft ops are unknown to shape inference,
    so the rules carry the types through them."""
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 (the rules below then decide alone)
        inferred = model
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    ints = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8"}
    out = []
    for node in model.graph.node:
        for name in node.output:
            if not name:
                continue
            t = types.get(name)
            if t is None:
                k = ZERO_POINT_INPUT.get(node.op_type)
                if node.op_type in FLOAT_OUT:
                    t = TensorProto.FLOAT
                elif k is not None:
                    zp = node.input[k] if len(node.input) > k else ""
                    # QuantizeLinear without a zero point gives uint8; QGemm
                    # without one gives float.
                    default = TensorProto.UINT8 if node.op_type == "QuantizeLinear" else TensorProto.FLOAT
                    t = types.get(zp, default) if zp else default
                elif node.input:
                    t = types.get(node.input[0])
                types[name] = t
            if t in ints:
                out.append([name, node.op_type, ints[t]])
    return out


def main() -> None:
    if len(sys.argv) < 2:
        fail("usage: ort_run.py MODEL.onnx [KEY=VALUE ...]")
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, shape_inference
    except ImportError as e:
        fail(f"cannot import numpy, onnx and onnxruntime ({e})")
    try:
        model = onnx.load(sys.argv[1])
    except Exception as e:  # noqa: BLE001 (any parse failure is the user's file)
        fail(f"ONNX cannot read {sys.argv[1]}: {e}")
    tensors = int_tensors(model, TensorProto, shape_inference)
    outputs = {o.name for o in model.graph.output}
    for name, _, dtype in tensors:
        if name not in outputs:
            t = TensorProto.INT8 if dtype == "int8" else TensorProto.UINT8
            model.graph.output.append(helper.make_tensor_value_info(name, t, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    for entry in sys.argv[2:]:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            fail(f"session config entry {entry!r} is not KEY=VALUE")
        try:
            opts.add_session_config_entry(key, value)
        except Exception as e:  # noqa: BLE001
            fail(f"ONNX Runtime refuses session config entry {entry!r}: {e}")
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        fail(f"ONNX Runtime cannot load the graph: {e}")
    inp = sess.get_inputs()[0].name
    out_name = model.graph.output[0].name
    names = [t[0] for t in tensors]
    print(json.dumps({"ort": ort.__version__, "tensors": tensors, "output": out_name}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            break
        src, dst = line.split(" ", 1)
        try:
            x = np.load(src)
            got = sess.run([out_name] + names, {inp: x})
        except Exception as e:  # noqa: BLE001
            fail(f"ONNX Runtime failed on {src}: {e}")
        d = Path(dst)
        np.save(d / "output.npy", np.ascontiguousarray(got[0], dtype=np.float32))
        for k, a in enumerate(got[1:]):
            np.save(d / f"{k}.npy", np.ascontiguousarray(a))
        print("ok", flush=True)


if __name__ == "__main__":
    main()
