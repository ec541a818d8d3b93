#!/usr/bin/env python3
"""Generate the FP32 ONNX and torchvision state_dict fixtures for `qat import`.

Script: scripts/gen_import_fixtures.py
Made with: PyTorch 2.15.0 (build 2.15.0+cu132, run on the CPU only),
        torchvision 0.29.2 (+cu132; the newest on the package index, its
        metadata asks for torch>=2.14.0), onnx 1.23.2, onnxruntime 1.32.0
        (CPUExecutionProvider), onnxscript 0.7.2 (installed but not used: every
        export here is the TorchScript exporter), safetensors 0.8.0,
        NumPy 2.4.6.
Run:    python scripts/gen_import_fixtures.py [OUTDIR] [--full DIR]
        (from the repository root; OUTDIR defaults to tests/data/import;
        --full DIR also writes full-size torchvision resnet18/34/50 and
        mobilenet_v2 exports and state_dicts to DIR, for local checks only:
        they are tens of MB each and are not committed; --full-only skips the
        small fixtures)

Exporter: `torch.onnx.export(..., dynamo=False)`, the TorchScript exporter. It
is deprecated in torch 2.15 (a DeprecationWarning) but still present, and it
writes plain standard ONNX ops (Conv, Clip, Gemm, Flatten, ...). Every export
has a static input shape (no dynamic axes), input name "input", output name
"logits", export_params=True, keep_initializers_as_inputs=False.

Export modes (recorded per case in manifest.json):
  eval      model.eval(), training=TrainingMode.EVAL, do_constant_folding=True
            (the defaults): BatchNormalization is folded into the Conv before
            it, which gets a bias.
  preserve  model.eval(), training=TrainingMode.PRESERVE,
            do_constant_folding=True (the default): Conv and
            BatchNormalization(epsilon, momentum; training_mode left at 0)
            stay separate nodes, with the BN parameters and running statistics
            as initializers named after the torch modules.

BatchNorm statistics are made non-trivial before any export so that folding
matters: each BN's weight is drawn from U(0.5, 1.5) and its bias from
N(0, 0.2^2); then running statistics are reset and re-estimated from a few
train-mode forward passes on random inputs with momentum=None (a cumulative
average, so eval-mode activations keep a sane scale through the depth);
momentum is put back to 0.1 afterwards (num_batches_tracked ends at the number
of passes). Every case seeds torch with its own fixed seed, so reruns give the
same tensors.

Small fixtures written to OUTDIR (see tests/data/import/README.md):
  NAME.onnx, NAME.input.npy (float32 NCHW), NAME.ort_logits.npy (ONNX Runtime
  CPU provider on that input, float32), NAME.torch_logits.npy (the torch model
  in eval mode, float32), for each ONNX case; mobilenet_v2_x035.safetensors
  (+ .input.npy, .torch_logits.npy); manifest.json describing all of them.
  About 7.0 MB in all, more than the 3 MB aimed for: mobilenet_v2 keeps its
  1280-channel last conv at width 0.25 (250k parameters), so each of the three
  fp32 mnv2 exports is ~1 MB, and the x0.35 state_dict is 1.7 MB.
"""

import argparse
import collections
import datetime
import json
import os
import re
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import safetensors
import safetensors.torch
import torch
import torch.nn as nn
import torchvision
from onnx import helper, numpy_helper
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

SCRIPT = "scripts/gen_import_fixtures.py"
DEFAULT_OUT = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "import")
)
DATE = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript exporter)"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

torch.set_num_threads(1)
# The TorchScript exporter warns that it is deprecated, and PRESERVE mode warns
# about constant folding; both are expected here.
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*constant folding.*")


def versions():
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


# ---------------------------------------------------------------- models ---


class TinyResNet(ResNet):
    """torchvision's ResNet with small widths and a configurable input.

    Module names, `_make_layer` (downsample = conv1x1 + BN where the shape
    changes), weight init and `forward` are torchvision's own (inherited);
    only the widths, the stem width and conv1's input channels differ.
    """

    def __init__(self, block, planes, stem=8, in_channels=1, num_classes=10):
        nn.Module.__init__(self)
        norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer
        self.inplanes = stem
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], 1)
        self.layer2 = self._make_layer(block, planes[1], 1, stride=2)
        self.layer3 = self._make_layer(block, planes[2], 1, stride=2)
        self.layer4 = self._make_layer(block, planes[3], 1, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def mnv2_w025_1ch():
    m = torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10)
    old = m.features[0][0]
    conv = nn.Conv2d(1, old.out_channels, kernel_size=3, stride=2, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out")  # as torchvision inits its convs
    m.features[0][0] = conv
    return m


def resnet_tiny():
    return TinyResNet(BasicBlock, planes=(8, 16, 32, 64), stem=8)


def resnet_tiny_bottleneck():
    # Bottleneck expansion 4: block outputs 16, 32, 64, 128 channels.
    return TinyResNet(Bottleneck, planes=(4, 8, 16, 32), stem=8)


SMALL_MODELS = {
    "mnv2_w025": dict(
        build=mnv2_w025_1ch,
        seed=1001,
        input_shape=[3, 1, 28, 28],
        num_classes=10,
        desc="torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10), features.0.0 "
        "replaced by Conv2d(1, 8, 3, stride=2, padding=1, bias=False); classifier = Dropout(0.2), Linear(1280, 10)",
    ),
    "resnet_tiny": dict(
        build=resnet_tiny,
        seed=1002,
        input_shape=[3, 1, 28, 28],
        num_classes=10,
        desc="torchvision ResNet structure (subclass of torchvision.models.resnet.ResNet, inherited forward) "
        "with BasicBlock, 1 block per stage, conv1 Conv2d(1, 8, 7, 2, 3), stage widths 8, 16, 32, 64, fc Linear(64, 10)",
    ),
    "resnet_tiny_bottleneck": dict(
        build=resnet_tiny_bottleneck,
        seed=1003,
        input_shape=[3, 1, 28, 28],
        num_classes=10,
        desc="torchvision ResNet structure with Bottleneck, 1 block per stage, conv1 Conv2d(1, 8, 7, 2, 3), "
        "planes 4, 8, 16, 32 (block outputs 16, 32, 64, 128), fc Linear(128, 10)",
    ),
}

# (suffix, opset, mode)
SMALL_EXPORTS = [("eval_op13", 13, "eval"), ("eval_op18", 18, "eval"), ("preserve_op13", 13, "preserve")]


def make_bn_nontrivial(model, input_shape, seed, passes=4, batch=8):
    """Random BN affine parameters, then running stats from train-mode passes."""
    g = torch.Generator().manual_seed(seed + 7)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g) * 0.2)
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        shape = [batch] + list(input_shape[1:])
        for _ in range(passes):
            model(torch.randn(shape, generator=g))
        for bn in bns:
            bn.momentum = 0.1
    model.eval()
    return model


# ---------------------------------------------------------------- export ---


def export(model, x, path, opset, mode):
    kw = dict(
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        export_params=True,
        do_constant_folding=True,
    )
    if mode == "preserve":
        kw["training"] = torch.onnx.TrainingMode.PRESERVE
    elif mode == "eval":
        kw["training"] = torch.onnx.TrainingMode.EVAL
    else:
        raise ValueError(mode)
    model.eval()
    torch.onnx.export(model, (x,), path, **kw)
    onnx.checker.check_model(onnx.load(path))


def ort_run(path, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0].astype(np.float32)


# -------------------------------------------------------------- analysis ---

COMMON_OPS = {
    "Conv", "BatchNormalization", "Relu", "Clip", "Add", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Flatten", "Reshape", "Squeeze", "Gemm", "MatMul", "Concat",
    "Identity", "Constant", "Shape", "Gather", "Unsqueeze",
}


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _jsonable(v):
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v).tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    return v


def analyze(model_proto):
    """Op counts and the patterns an importer has to recognise."""
    g = model_proto.graph
    inits = {i.name: i for i in g.initializer}
    consts = {}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    producer = {o: n for n in g.node for o in n.output}

    def value_of(name):
        if name in inits:
            return numpy_helper.to_array(inits[name]).tolist(), "initializer"
        if name in consts:
            return consts[name].tolist(), "Constant node"
        if name == "":
            return None, "absent"
        p = producer.get(name)
        return None, f"computed by {p.op_type if p else 'graph input'}"

    op_counts = dict(sorted(collections.Counter(n.op_type for n in g.node).items()))
    info = {"op_types": op_counts}
    info["ops_outside_common_set"] = sorted(set(op_counts) - COMMON_OPS)

    # Classifier: the Gemm/MatMul and what feeds its data input.
    heads = []
    for n in g.node:
        if n.op_type in ("Gemm", "MatMul"):
            h = {"op": n.op_type, "attrs": _jsonable(_attrs(n)), "inputs": list(n.input)}
            w = n.input[1]
            if w not in inits and w in producer and producer[w].op_type == "Cast":
                w = producer[w].input[0]  # the fp16 case: Cast(initializer)
            if w in inits:
                h["weight_shape"] = list(inits[w].dims)
            p = producer.get(n.input[0])
            if p is not None:
                f = {"op": p.op_type, "attrs": _jsonable(_attrs(p))}
                if p.op_type in ("Reshape", "Squeeze", "Unsqueeze") and len(p.input) > 1:
                    val, src = value_of(p.input[1])
                    f["shape_or_axes_input"] = val
                    f["shape_or_axes_from"] = src
                pp = producer.get(p.input[0])
                f["fed_by"] = pp.op_type if pp is not None else "graph input"
                h["data_input_from"] = f
            heads.append(h)
    info["classifier"] = heads

    # ReLU6 and friends: Clip with min/max as inputs or attributes.
    clips = []
    for n in g.node:
        if n.op_type == "Clip":
            a = _attrs(n)
            if "min" in a or "max" in a:
                form = ("attributes", a.get("min"), a.get("max"))
            else:
                mn = value_of(n.input[1]) if len(n.input) > 1 else (None, "absent")
                mx = value_of(n.input[2]) if len(n.input) > 2 else (None, "absent")
                form = ("inputs", mn[0], mn[1], mx[0], mx[1])
            clips.append(json.dumps(_jsonable(list(form))))
    info["clip_forms"] = dict(collections.Counter(clips))

    # BatchNormalization attributes.
    bn_attrs = collections.Counter(
        json.dumps(_jsonable(_attrs(n)), sort_keys=True) for n in g.node if n.op_type == "BatchNormalization"
    )
    info["batchnorm_attrs"] = dict(bn_attrs)
    info["batchnorm_outputs"] = sorted({len(n.output) for n in g.node if n.op_type == "BatchNormalization"})

    # Identity nodes: what they read (the exporter dedups identical tensors into Identity).
    ids = collections.Counter(
        "initializer" if n.input[0] in inits else (producer[n.input[0]].op_type if n.input[0] in producer else "graph input")
        for n in g.node
        if n.op_type == "Identity"
    )
    info["identity_inputs"] = dict(ids)

    # Pool attributes.
    pools = collections.Counter(
        n.op_type + " " + json.dumps(_jsonable(_attrs(n)), sort_keys=True)
        for n in g.node
        if n.op_type in ("MaxPool", "AveragePool")
    )
    info["pool_attrs"] = dict(pools)

    # Initializers: dtypes and naming.
    names = [i.name for i in g.initializer]
    dtypes = collections.Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in g.initializer)
    info["initializers"] = {
        "count": len(names),
        "dtypes": dict(dtypes),
        "named_onnx_prefix": sum(1 for s in names if s.startswith("onnx::")),
        "named_like_modules": sum(1 for s in names if re.match(r"^[A-Za-z_][\w]*(\.[\w]+)+$", s)),
        "examples": names[:6],
    }
    info["conv_with_bias"] = sum(1 for n in g.node if n.op_type == "Conv" and len(n.input) == 3 and n.input[2])
    info["opset"] = [(o.domain, o.version) for o in model_proto.opset_import]
    info["ir_version"] = model_proto.ir_version
    info["producer"] = f"{model_proto.producer_name} {model_proto.producer_version}"
    return info


# ----------------------------------------------------------- fp16 weights ---


def fp16_initializers(model_proto, with_cast):
    """Copy of model_proto with every float initializer stored as float16.

    with_cast: the fp16 initializer is renamed NAME.fp16 and a Cast(to=FLOAT)
    node placed first in the graph writes NAME, so every consumer still reads a
    float tensor under its old name. Without it the graph mixes float16
    weights and float32 activations in one op, which ONNX does not allow.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model_proto)
    g = m.graph
    casts = []
    for init in g.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        new = numpy_helper.from_array(a, name + ".fp16" if with_cast else name)
        init.CopyFrom(new)
        if with_cast:
            casts.append(
                helper.make_node("Cast", [name + ".fp16"], [name], name="Cast_fp16_" + name, to=onnx.TensorProto.FLOAT)
            )
    if casts:
        nodes = casts + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    return m


# ----------------------------------------------------------------- small ---


REPO_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def shown_path(path):
    """`path` relative to the repository root when it lies inside it."""
    a = os.path.abspath(path)
    r = os.path.relpath(a, REPO_ROOT)
    return a if r.startswith("..") else r


def fsize(outdir, f):
    return os.path.getsize(os.path.join(outdir, f))


def write_small(outdir):
    os.makedirs(outdir, exist_ok=True)
    cases = []
    for base, spec in SMALL_MODELS.items():
        torch.manual_seed(spec["seed"])
        model = spec["build"]()
        make_bn_nontrivial(model, spec["input_shape"], spec["seed"])
        x = torch.randn(spec["input_shape"], generator=torch.Generator().manual_seed(spec["seed"] + 1))
        with torch.no_grad():
            torch_logits = model(x).numpy().astype(np.float32)
        xn = x.numpy().astype(np.float32)
        for suffix, opset, mode in SMALL_EXPORTS:
            name = f"{base}_{suffix}"
            files = {
                "onnx": name + ".onnx",
                "input": name + ".input.npy",
                "ort_logits": name + ".ort_logits.npy",
                "torch_logits": name + ".torch_logits.npy",
            }
            path = os.path.join(outdir, files["onnx"])
            export(model, x, path, opset, mode)
            np.save(os.path.join(outdir, files["input"]), xn)
            ort_logits = ort_run(path, xn)
            np.save(os.path.join(outdir, files["ort_logits"]), ort_logits)
            np.save(os.path.join(outdir, files["torch_logits"]), torch_logits)
            info = analyze(onnx.load(path))
            cases.append(
                {
                    "name": name,
                    "model": spec["desc"],
                    "seed": spec["seed"],
                    "files": files,
                    "file_bytes": {k: fsize(outdir, f) for k, f in files.items()},
                    "opset": opset,
                    "export_mode": mode,
                    "exporter": EXPORTER,
                    "training_mode": "EVAL" if mode == "eval" else "PRESERVE",
                    "do_constant_folding": True,
                    "input_name": INPUT_NAME,
                    "output_name": OUTPUT_NAME,
                    "input_shape": spec["input_shape"],
                    "num_classes": spec["num_classes"],
                    "op_types": info["op_types"],
                    "initializers_fp16": False,
                    "cast_nodes_added": False,
                    "max_abs_ort_minus_torch": float(np.abs(ort_logits - torch_logits).max()),
                    "max_abs_torch_logit": float(np.abs(torch_logits).max()),
                    "graph": info,
                }
            )
            print(f"{name}: {info['op_types']}  max|ort-torch|={cases[-1]['max_abs_ort_minus_torch']:.3g}")

        if base == "mnv2_w025":
            cases.append(write_fp16_case(outdir, base + "_eval_op13", cases[-3], xn, torch_logits))

    st = write_state_dict_fixture(outdir)
    manifest = {
        "script": SCRIPT,
        "date": DATE,
        "versions": versions(),
        "command": f"python {SCRIPT} {shown_path(outdir)}",
        "notes": [
            "eval: TrainingMode.EVAL + constant folding, BatchNormalization folded into Conv (with bias).",
            "preserve: TrainingMode.PRESERVE on a model in eval mode; Conv and BatchNormalization kept, "
            "BN with epsilon and momentum attributes and one output (inference form).",
            "The TorchScript exporter deduplicates initializers with identical contents into Identity nodes; "
            "see graph.identity_inputs.",
            "ort_logits: onnxruntime CPUExecutionProvider, default graph optimizations, 1 thread.",
            "torch_logits: the fp32 torch model in eval mode on the same input.",
        ],
        "cases": cases,
        "state_dicts": [st],
    }
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(outdir, f)) for f in os.listdir(outdir))
    print(f"wrote {outdir}: {total} bytes")


def write_fp16_case(outdir, src_name, src_case, xn, torch_logits):
    src = onnx.load(os.path.join(outdir, src_case["files"]["onnx"]))
    # First see whether ORT accepts fp16 initializers feeding fp32 ops as they are.
    nocast = fp16_initializers(src, with_cast=False)
    try:
        ort.InferenceSession(nocast.SerializeToString(), providers=["CPUExecutionProvider"])
        cast_free = "accepted"
    except Exception as e:  # expected: type mismatch
        cast_free = f"rejected: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
    m = fp16_initializers(src, with_cast=True)
    onnx.checker.check_model(m)
    name = "mnv2_w025_eval_op13_fp16w"
    files = {
        "onnx": name + ".onnx",
        "input": name + ".input.npy",
        "ort_logits": name + ".ort_logits.npy",
        "torch_logits": name + ".torch_logits.npy",
    }
    path = os.path.join(outdir, files["onnx"])
    onnx.save(m, path)
    np.save(os.path.join(outdir, files["input"]), xn)
    ort_logits = ort_run(path, xn)
    np.save(os.path.join(outdir, files["ort_logits"]), ort_logits)
    np.save(os.path.join(outdir, files["torch_logits"]), torch_logits)
    info = analyze(m)
    case = {
        "name": name,
        "model": f"{src_name}.onnx with every float initializer converted to float16",
        "source_case": src_name,
        "files": files,
        "file_bytes": {k: fsize(outdir, f) for k, f in files.items()},
        "opset": src_case["opset"],
        "export_mode": "eval",
        "exporter": EXPORTER + ", then initializers rewritten with onnx " + onnx.__version__,
        "training_mode": "EVAL",
        "do_constant_folding": True,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": src_case["input_shape"],
        "num_classes": src_case["num_classes"],
        "op_types": info["op_types"],
        "initializers_fp16": True,
        "cast_nodes_added": True,
        "cast_nodes": "each float16 initializer NAME.fp16 is read by one Cast(to=FLOAT) node, placed first "
        "in the graph, whose output keeps the old name NAME; Constant nodes (Clip min/max) stay float32",
        "cast_free_variant_in_onnxruntime": cast_free,
        "max_abs_ort_minus_torch": float(np.abs(ort_logits - torch_logits).max()),
        "max_abs_torch_logit": float(np.abs(torch_logits).max()),
        "torch_logits_note": "fp32 torch model (weights not rounded), so the difference includes float16 rounding",
        "graph": info,
    }
    print(f"{name}: {info['op_types']}  max|ort-torch|={case['max_abs_ort_minus_torch']:.3g}  cast-free: {cast_free}")
    return case


def write_state_dict_fixture(outdir):
    seed = 2001
    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10)
    make_bn_nontrivial(model, [2, 3, 64, 64], seed, passes=4, batch=4)
    x = torch.randn([2, 3, 64, 64], generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits = model(x).numpy().astype(np.float32)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    raw_bytes = sum(v.numel() * v.element_size() for v in sd.values())
    dtype = "float32"
    if raw_bytes > 2 * 1024 * 1024:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
        dtype = "float16"
    stem = "mobilenet_v2_x035"
    files = {
        "safetensors": stem + ".safetensors",
        "input": stem + ".input.npy",
        "torch_logits": stem + ".torch_logits.npy",
    }
    safetensors.torch.save_file(sd, os.path.join(outdir, files["safetensors"]), metadata={"source": SCRIPT})
    np.save(os.path.join(outdir, files["input"]), x.numpy().astype(np.float32))
    np.save(os.path.join(outdir, files["torch_logits"]), logits)
    dtypes = collections.Counter(str(v.dtype).replace("torch.", "") for v in sd.values())
    print(f"{stem}: {len(sd)} tensors {dict(dtypes)}, {fsize(outdir, files['safetensors'])} bytes")
    return {
        "name": stem,
        "model": "torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10), 3 input channels",
        "seed": seed,
        "files": files,
        "file_bytes": {k: fsize(outdir, f) for k, f in files.items()},
        "saved_with": "safetensors.torch.save_file(model.state_dict()) (all tensors, num_batches_tracked included)",
        "float_dtype": dtype,
        "tensor_dtypes": dict(dtypes),
        "num_tensors": len(sd),
        "input_shape": [2, 3, 64, 64],
        "num_classes": 10,
        "max_abs_torch_logit": float(np.abs(logits).max()),
        "torch_logits": "eval-mode torch output on the input, float32",
    }


# ------------------------------------------------------------------ full ---

FULL_MODELS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
}
FULL_EXPORTS = [("eval_op13", 13, "eval"), ("eval_op18", 18, "eval"), ("preserve_op13", 13, "preserve")]


def write_full(fulldir):
    os.makedirs(fulldir, exist_ok=True)
    report = {"script": SCRIPT, "date": DATE, "versions": versions(), "models": {}}
    for i, (name, ctor) in enumerate(FULL_MODELS.items()):
        seed = 3001 + i
        torch.manual_seed(seed)
        model = ctor(weights=None)
        make_bn_nontrivial(model, [1, 3, 224, 224], seed, passes=1, batch=2)
        x = torch.randn([1, 3, 224, 224], generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            logits = model(x).numpy().astype(np.float32)
        xn = x.numpy().astype(np.float32)
        np.save(os.path.join(fulldir, name + ".input.npy"), xn)
        np.save(os.path.join(fulldir, name + ".torch_logits.npy"), logits)
        sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(sd, os.path.join(fulldir, name + ".safetensors"))
        entry = {"state_dict": name + ".safetensors", "state_dict_tensors": len(sd), "exports": {}}
        for suffix, opset, mode in FULL_EXPORTS:
            fname = f"{name}_{suffix}.onnx"
            path = os.path.join(fulldir, fname)
            export(model, x, path, opset, mode)
            ol = ort_run(path, xn)
            np.save(os.path.join(fulldir, f"{name}_{suffix}.ort_logits.npy"), ol)
            info = analyze(onnx.load(path))
            info["file_bytes"] = os.path.getsize(path)
            info["max_abs_ort_minus_torch"] = float(np.abs(ol - logits).max())
            info["max_abs_torch_logit"] = float(np.abs(logits).max())
            entry["exports"][suffix] = info
            print(f"{fname}: {info['op_types']} max|ort-torch|={info['max_abs_ort_minus_torch']:.3g}")
        report["models"][name] = entry
    with open(os.path.join(fulldir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"wrote {fulldir}/report.json")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", nargs="?", default=DEFAULT_OUT)
    ap.add_argument("--full", metavar="DIR", help="also write full-size torchvision exports to DIR (not committed)")
    ap.add_argument("--full-only", action="store_true", help="with --full: skip the small fixtures")
    args = ap.parse_args(argv)
    if not args.full_only:
        write_small(args.outdir)
    if args.full:
        write_full(args.full)


if __name__ == "__main__":
    main(sys.argv[1:])
