#!/usr/bin/env python3
"""ONNX Runtime's own int8 graphs of one of qat's FP32 exports, and ORT as
the referee of the int8 executor on them (tests/onnx_ort_quantized.rs).

Usage:
  ort_quantize.py quantize FP32.onnx FMNIST_DIR OUT_DIR [N_TEST [VARIANT,...]]
  ort_quantize.py check OUT_DIR

`quantize` runs `onnxruntime.quantization.quantize_static` on FP32.onnx
(per-channel unless the variant says otherwise, MinMax calibrated on the
first 200 Fashion-MNIST training images through a CalibrationDataReader,
normalized with the model's `mean`/`std` metadata) in every form listed in
VARIANTS: QOperator and QDQ, S8S8 and U8S8 (activations int8 or uint8,
weights int8), each with and without
`onnxruntime.quantization.shape_inference.quant_pre_process`, per-tensor,
asymmetric weights (`WeightSymmetric=False`), symmetric activations
(`ActivationSymmetric=True`), uint8 weights (U8U8) and QDQ with the ReLUs
kept (`QDQKeepRemovableActivations=True`). It writes
OUT_DIR/<variant>.onnx, the first N_TEST (default 64) Fashion-MNIST test
images as OUT_DIR/input.npy and OUT_DIR/variants.json.

`check` reads OUT_DIR/manifest.json, written by the test after the
executor ran each graph that it accepts: for every executor step, the
names of its int8 (or uint8) inputs and its output, and the .npy files of
every tensor it computed (uint8 tensors as uint8). For each step the
sub-graph of the ORT graph between those tensors (for QDQ graphs the
DequantizeLinear -> op -> QuantizeLinear group that ORT's QDQ transformer
fuses) runs alone in ORT's CPU provider, default optimization level, on
the executor's own inputs, and its output is compared with the
executor's: every step must agree exactly except QLinearAdd / Add (1 LSB,
rate below ADD_RATE_LIMIT; ADD_RATE_LIMIT_U8 with uint8 activations) and
QLinearAveragePool (1 LSB, rate below
1e-2). The whole graph is then run end to end and differing logits are
counted. ORT's U8S8 kernels on x86 without VNNI (AVX2 `vpmaddubsw`)
saturate int16 pair sums: on such a CPU, a U8S8 graph whose convolutions
differ is reported with the line `SATURATION <variant> ...` instead of
failing, and the test records it as a skipped check.

Prints every count and exits non-zero on any violation.
"""

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

CALIBRATION_IMAGES = 200
ADD_RATE_LIMIT = 1e-5
# ORT's QLinearAdd on uint8 differs more often (measured up to 1.05e-5 on
# the ResNet-18 graph; docs/INT8.md): its limit.
ADD_RATE_LIMIT_U8 = 1e-4
ONE_LSB_OPS = {"QLinearAdd": ADD_RATE_LIMIT, "Add": ADD_RATE_LIMIT, "QLinearAveragePool": 1e-2,
               "AveragePool": 1e-2}
# Steps whose result depends on ORT's int8 GEMM (saturation on AVX2 U8S8).
GEMM_OPS = {"QLinearConv", "Conv", "QGemm", "Gemm", "QLinearMatMul", "MatMul"}

# name: (format, activation type, weight type, pre-process, per-channel, extra options)
VARIANTS = {}
for fmt in ("qop", "qdq"):
    for act in ("s8", "u8"):
        for pre in (True, False):
            VARIANTS[f"{fmt}_{act}s8{'_pre' if pre else ''}"] = (fmt, act, "s8", pre, True, {})
for fmt in ("qop", "qdq"):
    VARIANTS[f"{fmt}_u8s8_pre_tensor"] = (fmt, "u8", "s8", True, False, {})
    VARIANTS[f"{fmt}_s8s8_pre_asymw"] = (fmt, "s8", "s8", True, True, {"WeightSymmetric": False})
    VARIANTS[f"{fmt}_u8s8_pre_asymw"] = (fmt, "u8", "s8", True, True, {"WeightSymmetric": False})
    VARIANTS[f"{fmt}_s8s8_pre_syma"] = (fmt, "s8", "s8", True, True, {"ActivationSymmetric": True})
    VARIANTS[f"{fmt}_u8u8_pre"] = (fmt, "u8", "u8", True, True, {})
# ReLU kept between Conv/Add and QuantizeLinear: ORT's QDQ fusion drops it
# when the zero point makes it redundant.
VARIANTS["qdq_u8s8_pre_relu"] = ("qdq", "u8", "s8", True, True, {"QDQKeepRemovableActivations": True})
VARIANTS["qdq_s8s8_pre_relu"] = ("qdq", "s8", "s8", True, True, {"QDQKeepRemovableActivations": True})


def read_idx_images(path: Path, n: int) -> np.ndarray:
    """The first n images of an IDX file (gzip or plain) as float [n, 1, 28, 28] in [0, 1]."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3)]
    count, h, w = dims
    n = min(n, count)
    pix = np.frombuffer(raw, dtype=np.uint8, count=n * h * w, offset=16)
    return pix.reshape(n, 1, h, w).astype(np.float32) / np.float32(255.0)


def find_idx(d: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (d / name).exists():
            return d / name
    raise SystemExit(f"{stem} not found in {d}")


def normalized(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    meta = {p.key: p.value for p in model.metadata_props}
    mean = np.array(json.loads(meta.get("mean", "[0]")), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.array(json.loads(meta.get("std", "[1]")), dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def quantize(fp32: Path, data: Path, out: Path, n_test: int, only=None) -> int:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(fp32)
    input_name = model.graph.input[0].name
    calib = normalized(model, read_idx_images(find_idx(data, "train-images-idx3-ubyte"),
                                              CALIBRATION_IMAGES))
    test = normalized(model, read_idx_images(find_idx(data, "t10k-images-idx3-ubyte"), n_test))
    np.save(out / "input.npy", test)
    # The same images as raw little-endian float32, for the Rust test.
    test.astype("<f4").tofile(out / "input.f32")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calib[i: i + 20]} for i in range(0, len(calib), 20)])

        def get_next(self):
            return next(self.batches, None)

    pre = out / "preprocessed.fp32.onnx"
    # Symbolic shape inference needs sympy; ONNX shape inference suffices for
    # fixed image sizes.
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    types = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
    formats = {"qop": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
    variants = {}
    for name, (fmt, act, wt, pre_process, per_channel, extra) in VARIANTS.items():
        if only and name not in only:
            continue
        path = out / f"{name}.onnx"
        quantize_static(str(pre if pre_process else fp32), str(path), Reader(),
                        quant_format=formats[fmt], per_channel=per_channel,
                        activation_type=types[act], weight_type=types[wt],
                        extra_options=dict(extra))
        q = onnx.load(path)
        ops = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in q.graph.node})
        variants[name] = {"model": path.name, "format": fmt, "activations": act, "weights": wt,
                          "pre_process": pre_process, "per_channel": per_channel,
                          "extra_options": extra, "ir_version": q.ir_version,
                          "opsets": {o.domain or "ai.onnx": o.version for o in q.opset_import},
                          "ops": ops}
        print(f"{name}: {len(q.graph.node)} nodes, ops {' '.join(ops)}")
    (out / "variants.json").write_text(json.dumps(variants, indent=1))
    return 0


def session(model: onnx.ModelProto, int8_allowed: bool = False) -> ort.InferenceSession:
    """ORT's CPU provider at its default optimization level (ORT_ENABLE_ALL,
    which fuses QDQ groups). With `int8_allowed`, session option
    `session.qdqisint8allowed=1`: on x86 ORT otherwise leaves QDQ groups
    with int8 activations unfused (their Conv / MatMul run in float)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if int8_allowed:
        opts.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def subgraph(model: onnx.ModelProto, inputs, output: str, values) -> onnx.ModelProto:
    """The nodes that compute `output` from the tensors `inputs` (and
    initializers), with `inputs` as graph inputs typed from the executor's
    arrays."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    nodes, used_inits, seen = [], {}, set()
    stack = [output]
    while stack:
        t = stack.pop()
        if t in seen or t in inputs or not t:
            continue
        seen.add(t)
        if t in inits:
            used_inits[t] = inits[t]
            continue
        n = producer.get(t)
        if n is None:
            raise SystemExit(f"tensor {t} is neither computed from {inputs} nor an initializer")
        if id(n) not in {id(m) for m in nodes}:
            nodes.append(n)
            stack.extend(n.input)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    nodes.sort(key=lambda n: order[id(n)])
    g_in = [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(values[i].dtype),
                                          values[i].shape) for i in inputs]
    o = values[output]
    g_out = [helper.make_tensor_value_info(output, helper.np_dtype_to_tensor_dtype(o.dtype),
                                           o.shape)]
    g = helper.make_graph(nodes, "step", g_in, g_out, list(used_inits.values()))
    return helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)


def has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def check_case(case, d: Path, vnni: bool) -> bool:
    model = onnx.load(d / case["model"])
    x = np.load(d / "input.npy")
    values = {name: np.load(d / f) for name, f in case["tensors"].items()}
    values[model.graph.input[0].name] = x
    u8 = case["activations"] == "u8" or case["weights"] == "u8"
    # QDQ with int8 activations: ORT fuses them into integer ops only with
    # session.qdqisint8allowed=1 (x86 default: float Conv between DQ and
    # Q). The integer form is the referee; the default's differences are
    # printed beside it.
    strict = case["format"] == "qdq" and case["activations"] == "s8"
    print(f"[{case['name']}] {len(model.graph.node)} ORT nodes, {len(case['steps'])} executor steps"
          + (" (ORT with session.qdqisint8allowed=1; 'default': without)" if strict else ""))
    print(f"  {'step':<40} {'op':<26} {'elements':>9} {'diffs':>6} {'max|d|':>6}"
          + (f" {'default':>8}" if strict else ""))
    default_diffs = 0
    ok, gemm_diffs = True, 0
    lsb = {}
    for step in case["steps"]:
        out, op = step["output"], step["op"]
        if out not in values or values[out].dtype == np.float32:
            continue
        m = subgraph(model, step["inputs"], out, values)
        ort_ops = "+".join(n.op_type for n in m.graph.node)
        feeds = {i: values[i] for i in step["inputs"]}
        got = session(m, strict).run(None, feeds)[0]
        want = values[out]
        extra = ""
        if strict:
            d0 = session(m).run(None, feeds)[0]
            n0 = int(np.count_nonzero(d0 != want)) if d0.shape == want.shape else want.size
            default_diffs += n0
            extra = f" {n0:>8}"
        if got.shape != want.shape or got.dtype != want.dtype:
            print(f"  FAIL {step['node']}: ORT {got.dtype}{got.shape} vs executor "
                  f"{want.dtype}{want.shape}")
            ok = False
            continue
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        n_diff, max_d = int(np.count_nonzero(diff)), int(diff.max(initial=0))
        label = op if len(ort_ops) > 40 else f"{op} ({ort_ops})" if ort_ops != op else op
        print(f"  {step['node'][:40]:<40} {label[:26]:<26} {want.size:>9} {n_diff:>6} {max_d:>6}"
              + extra)
        kind = next((k for k in ONE_LSB_OPS if k == op), None)
        if kind:
            e, dn = lsb.get(kind, (0, 0))
            lsb[kind] = (e + want.size, dn + n_diff)
            if max_d > 1:
                print(f"  FAIL {step['node']}: {op} differs by {max_d} LSB (> 1)")
                ok = False
        elif n_diff:
            if op in GEMM_OPS:
                gemm_diffs += n_diff
            print(f"  FAIL {step['node']}: {op} must agree exactly")
            ok = False
    for kind, (e, dn) in lsb.items():
        rate = dn / e
        limit = ONE_LSB_OPS[kind]
        if kind in ("QLinearAdd", "Add") and case["activations"] == "u8":
            limit = ADD_RATE_LIMIT_U8
        print(f"  {kind}: {dn} 1-LSB differences in {e} outputs (rate {rate:.2e}, limit {limit:.0e})")
        if rate >= limit:
            print(f"  FAIL: {kind} difference rate over the limit")
            ok = False
    if strict:
        print(f"  ORT default options (int8 QDQ Conv in float on x86): {default_diffs} differing "
              "outputs over all steps")
    logits = session(model, strict).run(None, {model.graph.input[0].name: x})[0]
    want = values["logits"]
    n_diff = int(np.count_nonzero(logits.view(np.uint32) != want.view(np.uint32)))
    rows = int(np.count_nonzero((logits != want).any(axis=1)))
    same = int(np.count_nonzero(logits.argmax(1) == want.argmax(1)))
    print(f"  end to end: {n_diff} of {want.size} logits differ ({rows} of {want.shape[0]} images; "
          f"same top-1 on {same})")
    if not ok and u8 and not vnni and gemm_diffs:
        print(f"SATURATION {case['name']}: {gemm_diffs} differing convolution/GEMM outputs on a CPU "
              "without VNNI, where ORT's U8S8 kernels (vpmaddubsw) saturate int16 pair sums")
        return True
    return ok


def check(d: Path) -> int:
    manifest = json.loads((d / "manifest.json").read_text())
    vnni = has_vnni()
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, CPU VNNI: {vnni}")
    ok = True
    for case in manifest["cases"]:
        ok &= check_case(case, d, vnni)
    print("ORT check: PASS" if ok else "ORT check: FAIL")
    return 0 if ok else 1


def main() -> int:
    if len(sys.argv) >= 5 and sys.argv[1] == "quantize":
        n = int(sys.argv[5]) if len(sys.argv) > 5 else 64
        only = sys.argv[6].split(",") if len(sys.argv) > 6 else None
        return quantize(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), n, only)
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        return check(Path(sys.argv[2]))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
