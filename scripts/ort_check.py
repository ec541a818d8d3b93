#!/usr/bin/env python3
"""ONNX Runtime as the outside referee of the int8 executor (QUANT_SPEC S10.3).

Usage: ort_check.py DIR

DIR holds manifest.json (written by tests/onnx_ort.rs) and the files it
names: ONNX models exported by qat, the input images, and for int8 models
every tensor the int8 executor computed (for FP32 models, the logits of
qat's own FP32 forward). Arrays are .npy files. For each case:

- onnx.checker.check_model(full_check=True) on the model;
- int8, per node: every node runs alone in ONNX Runtime (CPU provider) on
  the executor's own inputs, and its output is compared with the executor's.
  QuantizeLinear, QLinearConv, MaxPool, QLinearGlobalAveragePool,
  QLinearConcat, Flatten and DequantizeLinear must agree exactly; QLinearAdd
  may differ by 1 LSB (ORT rounds in float with the zero point folded in, S7)
  at a rate below 1e-5, QLinearAveragePool (float sum in ORT, S6) at a rate
  below 1e-2;
- int8, end to end: the whole graph in ORT against the executor's logits.
  Graphs without residual adds or average pools ("exact") must agree
  exactly; for the others the differing logits are counted and printed (a
  1-LSB difference can move later layers);
- fp32: ORT's logits against qat's FP32 forward, to float tolerance.

Prints every count and exits non-zero on any violation.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

ADD_RATE_LIMIT = 1e-5
# Ops that may differ from the executor by 1 LSB, and how often (QUANT_SPEC S6, S7).
ONE_LSB_OPS = {"QLinearAdd": ADD_RATE_LIMIT, "QLinearAveragePool": 1e-2}
FP32_ATOL = 1e-4
FP32_RTOL = 1e-4


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )


def elem_type(a: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(a.dtype)


def single_node_model(model, node, values):
    """A graph holding only `node`, its initializers, and its computed inputs
    as graph inputs (shapes and types from the executor's arrays)."""
    inits = {t.name: t for t in model.graph.initializer}
    g_inputs, g_inits = [], []
    for name in node.input:
        if not name:
            continue
        if name in inits:
            g_inits.append(inits[name])
        else:
            a = values[name]
            g_inputs.append(helper.make_tensor_value_info(name, elem_type(a), a.shape))
    out = node.output[0]
    o = values[out]
    g_out = [helper.make_tensor_value_info(out, elem_type(o), o.shape)]
    g = helper.make_graph([node], f"single_{node.name}", g_inputs, g_out, g_inits)
    m = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
    return m


def check_int8(case, d: Path) -> bool:
    model = onnx.load(d / case["model"])
    onnx.checker.check_model(model, full_check=True)
    print(f"[{case['name']}] onnx.checker: ok ({len(model.graph.node)} nodes)")
    x = np.load(d / case["input"])
    values = {name: np.load(d / f) for name, f in case["tensors"].items()}
    values[model.graph.input[0].name] = x
    ok = True
    lsb_elems = {op: 0 for op in ONE_LSB_OPS}
    lsb_diff = {op: 0 for op in ONE_LSB_OPS}
    print(f"  {'node':<28} {'op':<26} {'elements':>10} {'diffs':>7} {'max|d|':>7}")
    for node in model.graph.node:
        out = node.output[0]
        m = single_node_model(model, node, values)
        feeds = {i.name: values[i.name] for i in m.graph.input}
        got = session(m).run(None, feeds)[0]
        want = values[out]
        if got.shape != want.shape:
            print(f"  {node.name}: ORT shape {got.shape} vs executor {want.shape}")
            ok = False
            continue
        if want.dtype == np.int8:
            diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        else:
            diff = (got.view(np.uint32) != want.view(np.uint32)).astype(np.int32)
        n_diff, max_d = int(np.count_nonzero(diff)), int(diff.max(initial=0))
        print(f"  {node.name:<28} {node.op_type:<26} {want.size:>10} {n_diff:>7} {max_d:>7}")
        if node.op_type in ONE_LSB_OPS:
            lsb_elems[node.op_type] += want.size
            lsb_diff[node.op_type] += n_diff
            if max_d > 1:
                print(f"  FAIL {node.name}: {node.op_type} differs by {max_d} LSB (> 1)")
                ok = False
        elif n_diff:
            print(f"  FAIL {node.name}: {node.op_type} must agree exactly")
            ok = False
    for op, limit in ONE_LSB_OPS.items():
        if lsb_elems[op]:
            rate = lsb_diff[op] / lsb_elems[op]
            print(
                f"  {op}: {lsb_diff[op]} 1-LSB differences in {lsb_elems[op]} outputs "
                f"(rate {rate:.2e}, limit {limit:.0e})"
            )
            if rate >= limit:
                print(f"  FAIL: {op} difference rate over the limit")
                ok = False

    # End to end.
    logits = session(model).run(None, {model.graph.input[0].name: x})[0]
    want = values[case["logits"]]
    n_diff = int(np.count_nonzero(logits.view(np.uint32) != want.view(np.uint32)))
    rows = int(np.count_nonzero((logits != want).any(axis=1)))
    top1_same = int(np.count_nonzero(logits.argmax(1) == want.argmax(1)))
    print(
        f"  end to end: {n_diff} of {want.size} logits differ ({rows} of {want.shape[0]} "
        f"images; same top-1 on {top1_same})"
    )
    if case["expect"] == "exact" and n_diff:
        print("  FAIL: a graph without adds or average pools must give identical logits")
        ok = False
    return ok


def check_fp32(case, d: Path) -> bool:
    model = onnx.load(d / case["model"])
    onnx.checker.check_model(model, full_check=True)
    print(f"[{case['name']}] onnx.checker: ok ({len(model.graph.node)} nodes)")
    x = np.load(d / case["input"])
    want = np.load(d / case["logits"])
    got = session(model).run(None, {model.graph.input[0].name: x})[0]
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    tol = FP32_ATOL + FP32_RTOL * np.abs(want.astype(np.float64)).max()
    print(
        f"  fp32 logits: max |ORT - qat| = {err.max():.3e} (tolerance {tol:.3e}), "
        f"{int(np.count_nonzero(got.argmax(1) == want.argmax(1)))} of {want.shape[0]} same top-1"
    )
    if not err.max() <= tol:
        print("  FAIL: FP32 export differs from qat's FP32 forward")
        return False
    return True


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    d = Path(sys.argv[1])
    manifest = json.loads((d / "manifest.json").read_text())
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    ok = True
    for case in manifest["cases"]:
        check = check_int8 if case["kind"] == "int8" else check_fp32
        ok &= check(case, d)
    print("ORT check: PASS" if ok else "ORT check: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
