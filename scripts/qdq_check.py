#!/usr/bin/env python3
"""ONNX Runtime on qat's QDQ exports (docs/INT8.md, "The QDQ graph").

Usage: qdq_check.py DIR

DIR holds manifest.json (written by tests/onnx_qdq.rs) and the files it
names. Each case has a QOperator export (`qoperator`), its QDQ exports
(`qdq`: one file per bias form), float input images (`input`, .npy), and
optionally their labels (`labels`), the int8 executor's tensors of the
QOperator graph (`tensors`, checked node by node by ort_check.py's rules)
and the zero point every activation must have (`zero_point`). For each
case:

- onnx.checker.check_model(full_check=True) on every model;
- every activation zero point equals `zero_point` when given (0 for the
  symmetric scheme);
- ONNX Runtime (CPU provider, ORT_ENABLE_EXTENDED) writes its optimized
  graph of each QDQ model (`optimized_model_filepath`), with the session
  option `session.qdqisint8allowed=1` (int8 kernels, as on ARM) and with
  the default options (on x86 ORT converts int8 Q/DQ pairs to uint8 where
  the QuantizeLinear has a single consumer and fuses only those). With the
  option every Conv of the QDQ graph must have become a QLinearConv (none
  left as Conv or FusedConv); for both, the ops left outside integer
  kernels are listed;
- the logits of ORT on each QDQ model (both option sets) against ORT on the
  QOperator model: the differing logits and top-1 are counted; with the
  option the top-1 must be the same on every image and the logits
  identical;
- with `tensors`: ort_check.py's node-by-node and end-to-end checks of the
  QOperator graph against the executor.

Prints every count and exits non-zero on any violation.
"""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ort_check  # noqa: E402

# Ops that compute on integers in ORT's CPU provider (after its QDQ fusion).
INTEGER_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "QLinearConv",
    "QLinearAdd",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearConcat",
    "MaxPool",
    "Flatten",
}


def run(model_path: Path, x: np.ndarray, level=None, dump: Path = None, int8=False) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if int8:
        # Keep int8 Q/DQ as int8 on x86 (ORT converts them to uint8 by
        # default, and only where a QuantizeLinear has a single consumer).
        opts.add_session_config_entry("session.qdqisint8allowed", "1")
    if level is not None:
        opts.graph_optimization_level = level
    if dump is not None:
        opts.optimized_model_filepath = str(dump)
    s = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def activation_zero_points(model: onnx.ModelProto):
    """The activation zero points of a qat export (QOperator or QDQ): the
    `<tensor>.zero_point` initializers (not the weights' or biases')."""
    return {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if t.name.endswith(".zero_point")
        and not t.name.endswith(("weight_zero_point", "bias_zero_point"))
    }


def check_zero_points(case, label, model) -> bool:
    if "zero_point" not in case:
        return True
    zps = activation_zero_points(model)
    bad = [k for k, v in zps.items() if int(v) != case["zero_point"]]
    print(f"    {label}: {len(zps)} activation zero points, all {case['zero_point']}: {not bad}")
    if bad or not zps:
        print(f"    FAIL: zero points {bad[:5]} are not {case['zero_point']}")
        return False
    return True


def check_case(case, d: Path) -> bool:
    ok = True
    name = case["name"]
    x = np.load(d / case["input"])
    labels = np.load(d / case["labels"]) if case.get("labels") else None
    qop_path = d / case["qoperator"]
    qop = onnx.load(qop_path)
    onnx.checker.check_model(qop, full_check=True)
    ref = run(qop_path, x)
    print(f"[{name}] QOperator: onnx.checker ok ({len(qop.graph.node)} nodes), {x.shape[0]} images")
    if labels is not None:
        print(f"  ORT QOperator top-1 {100.0 * np.mean(ref.argmax(1) == labels):.2f}%")
    ok &= check_zero_points(case, case["qoperator"], qop)
    for f in case["qdq"]:
        path = d / f
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        convs = sum(n.op_type == "Conv" for n in m.graph.node)
        print(f"  {f}: onnx.checker ok ({len(m.graph.node)} nodes, {convs} Conv)")
        ok &= check_zero_points(case, f, m)
        for int8 in (True, False):
            mode = "qdqisint8allowed=1" if int8 else "default options"
            dump = d / (f + (".int8" if int8 else ".default") + ".optimized.onnx")
            run(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, dump, int8)
            opt = onnx.load(dump)
            ops = Counter(n.op_type for n in opt.graph.node)
            fused = ops.get("QLinearConv", 0)
            left = {k: v for k, v in ops.items() if k in ("Conv", "FusedConv")}
            floats = {k: v for k, v in ops.items() if k not in INTEGER_OPS}
            print(
                f"    ORT ({mode}) optimized graph: {fused} QLinearConv of {convs} Conv; "
                f"unfused: {left or 'none'}; float ops left: {floats or 'none'}"
            )
            print(f"      ops: {dict(sorted(ops.items()))}")
            if int8 and (left or fused != convs):
                print("    FAIL: every Conv must become a QLinearConv")
                ok = False
            got = run(path, x, int8=int8)
            n_diff = int(np.count_nonzero(got.view(np.uint32) != ref.view(np.uint32)))
            top1 = int(np.count_nonzero(got.argmax(1) != ref.argmax(1)))
            acc = ""
            if labels is not None:
                acc = f"; top-1 {100.0 * np.mean(got.argmax(1) == labels):.2f}%"
            print(
                f"    ORT QDQ ({mode}) vs ORT QOperator: {n_diff} of {got.size} logits "
                f"differ, {top1} of {got.shape[0]} top-1 differ{acc}"
            )
            if int8 and (n_diff or top1):
                print("    FAIL: the fused QDQ graph must give ORT the QOperator graph's logits")
                ok = False
    if case.get("tensors"):
        qcase = {
            "name": f"{name} (QOperator vs executor)",
            "model": case["qoperator"],
            "input": case["input"],
            "tensors": case["tensors"],
            "logits": "logits",
            "expect": case.get("expect", "add"),
        }
        ok &= ort_check.check_int8(qcase, d)
    return ok


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    d = Path(sys.argv[1])
    manifest = json.loads((d / "manifest.json").read_text())
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    ok = True
    for case in manifest["cases"]:
        ok &= check_case(case, d)
    print("QDQ check: PASS" if ok else "QDQ check: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
