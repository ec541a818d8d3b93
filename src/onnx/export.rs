//! Building the ONNX graphs (see the module documentation for names).

use super::{INPUT_NAME, IR_VERSION, MS_DOMAIN, MS_OPSET, OPSET, OUTPUT_NAME};
use crate::graph::{Graph, Op};
use crate::int8::{Int8Net, QConv, StepKind};
use crate::models::Arch;
use crate::nn::{Activation, Conv2d, ConvBn};
use crate::ops::{AvgPool2dParams, Conv2dParams, MaxPool2dParams};
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use crate::quant::QParams;
use crate::saved_model::ModelInfo;
use crate::{bail, Error, Result};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// What the exported model records for its users (`metadata_props`).
pub type ExportMeta = ModelInfo;

/// Writes a model to `path` (serialized protobuf), atomically: `path` is
/// either left as it was or holds the whole model, never a part of it.
pub fn save_model(model: &ModelProto, path: &Path) -> Result<()> {
    write_bytes(&serialize(model)?, path)
}

/// The serialized model.
pub(crate) fn serialize(model: &ModelProto) -> Result<Vec<u8>> {
    model
        .write_to_bytes()
        .map_err(|e| Error::Onnx(format!("serializing the model: {e}")))
}

/// Writes serialized bytes atomically (temporary file, fsync, rename).
pub(crate) fn write_bytes(bytes: &[u8], path: &Path) -> Result<()> {
    crate::checkpoint::write_atomic(path, bytes)
}

/// The integer-only graph of `m` (spec S5-S8), one group of ONNX nodes per
/// lowered step: QuantizeLinear for the input, a QLinearConv per
/// convolution (per-channel int8 weights, int32 bias, ReLU folded into the
/// output zero point -128), QLinearAdd per residual add (its ReLU likewise),
/// MaxPool on int8, QLinearAveragePool, QLinearConcat (each input
/// requantized by ONNX Runtime's table, S12), QLinearGlobalAveragePool, the
/// classifier as a 1x1
/// QLinearConv then Flatten, and DequantizeLinear of the logits. Every
/// output is named after its node.
///
/// Every activation's scale and zero point is checked first (an error names
/// the quantizer), and the finished graph must pass the int8 executor's own
/// validation ([`crate::executor::validate::build_plan`]): export never
/// returns a graph that the executor refuses.
pub fn export_int8(m: &Int8Net, meta: &ExportMeta) -> Result<ModelProto> {
    let mut b = Builder::default();
    b.graph.input.push(value_info(
        INPUT_NAME,
        DataType::FLOAT,
        &[
            Dim::Param("batch"),
            Dim::Value(meta.in_channels),
            Dim::Value(meta.input_hw[0]),
            Dim::Value(meta.input_hw[1]),
        ],
    ));
    // The ONNX value holding each step's output.
    let mut values: Vec<String> = Vec::new();
    for step in &m.steps {
        let input = |k: usize| -> Result<String> {
            match step.inputs.get(k) {
                Some(&i) => Ok(values[i].clone()),
                None => bail!(Onnx, "{}: input {k} is missing", step.name),
            }
        };
        let name = step.name.as_str();
        let out = match &step.kind {
            StepKind::Quantize => {
                b.qparams(name, step.out_q)?;
                b.node(
                    "QuantizeLinear",
                    &format!("{name}.quantize"),
                    "",
                    &[
                        INPUT_NAME,
                        &format!("{name}.scale"),
                        &format!("{name}.zero_point"),
                    ],
                    &[name],
                    vec![],
                );
                name.to_string()
            }
            StepKind::Conv(c) => {
                b.qconv(c, &input(0)?, name)?;
                name.to_string()
            }
            StepKind::MaxPool(p) => {
                let x = input(0)?;
                b.node("MaxPool", name, "", &[&x], &[name], pool_attrs(*p));
                b.alias(name, &x);
                name.to_string()
            }
            StepKind::Add(args, _) => {
                let (x, short) = (input(0)?, input(1)?);
                // A ReLU clamps at the zero point: at -128 it is the int8
                // range QLinearAdd saturates to anyway, otherwise (the
                // symmetric scheme's 0) an int8 Clip follows.
                let (lo, hi) = (args.rq.lo, args.rq.hi);
                let sum = b.clipped_output(name, (lo, hi))?;
                b.qparams(name, step.out_q)?;
                b.node(
                    "QLinearAdd",
                    name,
                    MS_DOMAIN,
                    &[
                        &x,
                        &b.scale(&x),
                        &b.zp(&x),
                        &short,
                        &b.scale(&short),
                        &b.zp(&short),
                        &b.scale(name),
                        &b.zp(name),
                    ],
                    &[&sum],
                    vec![],
                );
                b.clip(name, &sum, name, (lo, hi))?;
                name.to_string()
            }
            StepKind::AvgPool(p) => {
                let x = input(0)?;
                b.qparams(name, step.out_q)?;
                b.node(
                    "QLinearAveragePool",
                    name,
                    MS_DOMAIN,
                    &[
                        &x,
                        &b.scale(&x),
                        &b.zp(&x),
                        &format!("{name}.scale"),
                        &format!("{name}.zero_point"),
                    ],
                    &[name],
                    avg_pool_attrs(name, *p)?,
                );
                name.to_string()
            }
            StepKind::Concat => {
                b.qparams(name, step.out_q)?;
                let xs = (0..step.inputs.len())
                    .map(input)
                    .collect::<Result<Vec<String>>>()?;
                let mut args = vec![format!("{name}.scale"), format!("{name}.zero_point")];
                for x in &xs {
                    args.extend([x.clone(), b.scale(x), b.zp(x)]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                b.node(
                    "QLinearConcat",
                    name,
                    MS_DOMAIN,
                    &args,
                    &[name],
                    vec![attr_int("axis", 1)],
                );
                name.to_string()
            }
            StepKind::GlobalAvgPool => {
                let x = input(0)?;
                b.qparams(name, step.out_q)?;
                b.node(
                    "QLinearGlobalAveragePool",
                    name,
                    MS_DOMAIN,
                    &[
                        &x,
                        &b.scale(&x),
                        &b.zp(&x),
                        &format!("{name}.scale"),
                        &format!("{name}.zero_point"),
                    ],
                    &[name],
                    vec![attr_int("channels_last", 0)],
                );
                name.to_string()
            }
            // The pooled [N, C, 1, 1] tensor is what the classifier reads.
            StepKind::Flatten => input(0)?,
            StepKind::Fc(c) => {
                let nchw = format!("{name}.nchw");
                b.qconv(c, &input(0)?, &nchw)?;
                b.alias(name, &nchw);
                b.node(
                    "Flatten",
                    &format!("{name}.flatten"),
                    "",
                    &[&nchw],
                    &[name],
                    vec![attr_int("axis", 1)],
                );
                name.to_string()
            }
        };
        values.push(out);
    }
    let last = values.last().cloned().unwrap_or_default();
    b.node(
        "DequantizeLinear",
        &format!("{last}.dequantize"),
        "",
        &[&last, &b.scale(&last), &b.zp(&last)],
        &[OUTPUT_NAME],
        vec![],
    );
    b.graph.output.push(value_info(
        OUTPUT_NAME,
        DataType::FLOAT,
        &[Dim::Param("batch"), Dim::Value(m.num_classes)],
    ));
    b.graph.name = format!("{}_int8", meta.arch);
    let proto = model(b.graph, meta, "int8", true);
    crate::executor::validate::build_plan(&proto).map_err(|e| {
        let e = match e {
            Error::Onnx(msg) => msg,
            other => other.to_string(),
        };
        Error::Onnx(format!(
            "the exported graph does not pass the int8 executor's validation, so export refuses it: {e}"
        ))
    })?;
    Ok(proto)
}

/// The activation parameters `q` of `quantizer` (`kind`: "frozen ",
/// "observed " or empty), or an error saying what is wrong and what to do.
pub(crate) fn check_qparams(quantizer: &str, kind: &str, q: QParams) -> Result<()> {
    match q.problem() {
        None => Ok(()),
        Some(p) => bail!(
            Onnx,
            "quantizer '{quantizer}': {kind}{p}, so no valid int8 graph can be built from it \
(the int8 executor would refuse it). The model's quantizer state is damaged or the run \
that wrote it diverged: export an earlier checkpoint, or resume from one"
        ),
    }
}

/// The float graph of `g` (its float weights; quantizers, if any, are
/// ignored): Conv, BatchNormalization (running statistics, not folded), Relu,
/// Add, MaxPool, AveragePool, Concat, GlobalAveragePool and Flatten, Gemm. Parameter tensors keep
/// the model's names (`stem.conv.weight`, `stem.bn.running_mean`, ...); the
/// ReLU after an add named `X.add` is `X.relu`.
pub fn export_fp32(g: &Graph, meta: &ExportMeta) -> Result<ModelProto> {
    let mut b = Builder::default();
    b.graph.input.push(value_info(
        INPUT_NAME,
        DataType::FLOAT,
        &[
            Dim::Param("batch"),
            Dim::Value(g.in_channels()),
            Dim::Value(meta.input_hw[0]),
            Dim::Value(meta.input_hw[1]),
        ],
    ));
    let last = g.nodes().len() - 1;
    let mut values: Vec<String> = Vec::new();
    for (i, node) in g.nodes().iter().enumerate() {
        let input = |k: usize| -> Result<String> {
            match node.inputs.get(k) {
                Some(&j) => Ok(values[j].clone()),
                None => bail!(Onnx, "{}: input {k} is missing", node.name),
            }
        };
        let name = node.name.as_str();
        let out = match &node.op {
            Op::Input { .. } => INPUT_NAME.to_string(),
            Op::ConvBn(u) => b.conv_bn_fp32(u, name, &input(0)?)?,
            Op::Conv { conv, act } => {
                let c = b.conv_fp32(
                    conv,
                    name,
                    &format!("{name}.weight"),
                    &format!("{name}.bias"),
                    &input(0)?,
                )?;
                b.act_fp32(*act, name, c)?
            }
            Op::Add { relu } => {
                b.node("Add", name, "", &[&input(0)?, &input(1)?], &[name], vec![]);
                let scope = name.strip_suffix(".add").unwrap_or(name);
                let act = if *relu {
                    Activation::Relu
                } else {
                    Activation::None
                };
                b.act_fp32(act, scope, name.to_string())?
            }
            Op::MaxPool(p) => {
                b.node("MaxPool", name, "", &[&input(0)?], &[name], pool_attrs(*p));
                name.to_string()
            }
            Op::AvgPool(p) => {
                let attrs = avg_pool_attrs(name, *p)?;
                b.node("AveragePool", name, "", &[&input(0)?], &[name], attrs);
                name.to_string()
            }
            Op::Concat => {
                let xs = (0..node.inputs.len())
                    .map(input)
                    .collect::<Result<Vec<String>>>()?;
                let xs: Vec<&str> = xs.iter().map(String::as_str).collect();
                b.node("Concat", name, "", &xs, &[name], vec![attr_int("axis", 1)]);
                name.to_string()
            }
            Op::GlobalAvgPool => {
                // ONNX keeps the 1x1 plane; our pooled features are [N, C].
                b.node(
                    "GlobalAveragePool",
                    name,
                    "",
                    &[&input(0)?],
                    &[name],
                    vec![],
                );
                let flat = format!("{name}.flatten");
                b.node(
                    "Flatten",
                    &flat,
                    "",
                    &[name],
                    &[&flat],
                    vec![attr_int("axis", 1)],
                );
                flat
            }
            Op::Flatten => {
                b.node(
                    "Flatten",
                    name,
                    "",
                    &[&input(0)?],
                    &[name],
                    vec![attr_int("axis", 1)],
                );
                name.to_string()
            }
            Op::Linear(l) => {
                let w = &l.weight;
                let wname = format!("{name}.weight");
                b.init(tensor_f32(&wname, w.dims(), &w.to_vec()?))?;
                let x = input(0)?;
                let mut inputs = vec![x.as_str(), wname.as_str()];
                let bname = format!("{name}.bias");
                if let Some(bias) = &l.bias {
                    b.init(tensor_f32(&bname, bias.dims(), &bias.to_vec()?))?;
                    inputs.push(&bname);
                }
                let out = if i == last { OUTPUT_NAME } else { name };
                b.node(
                    "Gemm",
                    name,
                    "",
                    &inputs,
                    &[out],
                    vec![attr_int("transB", 1)],
                );
                out.to_string()
            }
        };
        values.push(out);
    }
    if values.last().map(String::as_str) != Some(OUTPUT_NAME) {
        bail!(
            Onnx,
            "the float export needs a network that ends in a linear classifier"
        );
    }
    b.graph.output.push(value_info(
        OUTPUT_NAME,
        DataType::FLOAT,
        &[Dim::Param("batch"), Dim::Value(g.num_classes())],
    ));
    b.graph.name = format!("{}_fp32", meta.arch);
    Ok(model(b.graph, meta, "fp32", false))
}

pub(super) fn model(
    graph: GraphProto,
    meta: &ExportMeta,
    kind: &str,
    ms_domain: bool,
) -> ModelProto {
    let mut m = ModelProto::new();
    m.ir_version = IR_VERSION;
    m.producer_name = "qat".into();
    m.producer_version = env!("CARGO_PKG_VERSION").into();
    let family = meta.arch.parse::<Arch>().map_or("network", Arch::family);
    m.doc_string = format!(
        "{} {kind} {family} exported by qat {}",
        meta.arch,
        env!("CARGO_PKG_VERSION")
    );
    let mut opset = OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = OPSET;
    m.opset_import.push(opset);
    if ms_domain {
        let mut ms = OperatorSetIdProto::new();
        ms.domain = MS_DOMAIN.into();
        ms.version = MS_OPSET;
        m.opset_import.push(ms);
    }
    let props: Vec<(&str, String)> = vec![
        ("producer", format!("qat {}", env!("CARGO_PKG_VERSION"))),
        ("arch", meta.arch.clone()),
        ("precision", kind.to_string()),
        ("input_name", INPUT_NAME.to_string()),
        ("input_dtype", "float32".to_string()),
        ("input_layout", "NCHW".to_string()),
        (
            "input_size",
            format!(
                "{}x{}x{}",
                meta.in_channels, meta.input_hw[0], meta.input_hw[1]
            ),
        ),
        (
            "pixel_range",
            "[0, 1]: 8-bit pixels divided by 255, before normalization".to_string(),
        ),
        (
            "normalization",
            "x = (pixel / 255 - mean[c]) / std[c], per channel".to_string(),
        ),
        ("mean", json(&meta.mean)),
        ("std", json(&meta.std)),
        ("class_names", json(&meta.class_names)),
        ("output_name", OUTPUT_NAME.to_string()),
        (
            "output",
            format!("float32 logits [N, {}]", meta.class_names.len()),
        ),
    ];
    for (k, v) in props {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        m.metadata_props.push(e);
    }
    m.graph = Some(graph).into();
    m
}

/// JSON of the metadata lists (serde_json cannot fail on these types).
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[derive(Default)]
pub(super) struct Builder {
    pub(super) graph: GraphProto,
    inits: HashSet<String>,
    /// For each int8 activation, the prefix of its `.scale` / `.zero_point`.
    qp: HashMap<String, String>,
}

impl Builder {
    pub(super) fn init(&mut self, t: TensorProto) -> Result<()> {
        if !self.inits.insert(t.name.clone()) {
            bail!(Onnx, "initializer '{}' defined twice", t.name);
        }
        self.graph.initializer.push(t);
        Ok(())
    }

    pub(super) fn node(
        &mut self,
        op: &str,
        name: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = name.into();
        n.domain = domain.into();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outputs.iter().map(|s| s.to_string()).collect();
        n.attribute = attrs;
        self.graph.node.push(n);
    }

    /// `<tensor>.scale` (float scalar) and `<tensor>.zero_point` (int8
    /// scalar), verbatim.
    pub(super) fn qparams(&mut self, tensor: &str, q: QParams) -> Result<()> {
        check_qparams(tensor, "", q)?;
        self.qp.insert(tensor.to_string(), tensor.to_string());
        self.init(tensor_f32(&format!("{tensor}.scale"), &[], &[q.scale]))?;
        self.init(tensor_i8(
            &format!("{tensor}.zero_point"),
            &[],
            &[q.zero_point as i8],
        ))
    }

    /// `tensor` shares the quantization parameters of `source` (MaxPool,
    /// Flatten).
    pub(super) fn alias(&mut self, tensor: &str, source: &str) {
        let p = self.prefix(source);
        self.qp.insert(tensor.to_string(), p);
    }

    fn prefix(&self, tensor: &str) -> String {
        self.qp
            .get(tensor)
            .cloned()
            .unwrap_or_else(|| tensor.to_string())
    }

    pub(super) fn scale(&self, tensor: &str) -> String {
        format!("{}.scale", self.prefix(tensor))
    }

    pub(super) fn zp(&self, tensor: &str) -> String {
        format!("{}.zero_point", self.prefix(tensor))
    }

    /// A QLinearConv of unit `c` from tensor `x` (whose `.scale` /
    /// `.zero_point` exist) into `out`, with `out`'s parameters added under
    /// the unit's name.
    fn qconv(&mut self, c: &QConv, x: &str, out: &str) -> Result<()> {
        let n = &c.name;
        check_qparams(n, "", c.out_q)?;
        // QLinearConv saturates to [-128, 127]: an activation folds into
        // it when its clamp is that range (ReLU at zero point -128, ReLU6
        // whose 6 maps to 127 or beyond, spec S11); a narrower clamp (ReLU
        // at the symmetric scheme's zero point 0) is an int8 Clip after it.
        let bounds = c.output_bounds();
        let conv_out = self.clipped_output(out, bounds)?;
        let c_out = c.w_shape[0];
        if c.s_w.len() != c_out
            || c.bias_q.len() != c_out
            || c.w_q.len() != c.w_shape.iter().product::<usize>()
        {
            bail!(Onnx, "{n}: inconsistent weight, scale and bias sizes");
        }
        self.init(tensor_i8(&format!("{n}.weight_q"), &c.w_shape, &c.w_q))?;
        self.init(tensor_f32(&format!("{n}.weight_scale"), &[c_out], &c.s_w))?;
        self.init(tensor_i8(
            &format!("{n}.weight_zero_point"),
            &[c_out],
            &vec![0; c_out],
        ))?;
        self.init(tensor_i32(&format!("{n}.bias_q"), &[c_out], &c.bias_q))?;
        self.qparams(n, c.out_q)?;
        if out != n {
            self.alias(out, n);
        }
        let (xs, xz) = (self.scale(x), self.zp(x));
        self.node(
            "QLinearConv",
            n,
            "",
            &[
                x,
                &xs,
                &xz,
                &format!("{n}.weight_q"),
                &format!("{n}.weight_scale"),
                &format!("{n}.weight_zero_point"),
                &format!("{n}.scale"),
                &format!("{n}.zero_point"),
                &format!("{n}.bias_q"),
            ],
            &[&conv_out],
            conv_attrs(c.params, [c.w_shape[2], c.w_shape[3]]),
        );
        self.clip(n, &conv_out, out, bounds)
    }

    /// Where an op whose result is clamped to `bounds` writes it: `out`
    /// itself when the bounds are the int8 range, else `{out}.preclip`
    /// (same quantization parameters), which [`Builder::clip`] reads.
    fn clipped_output(&mut self, out: &str, bounds: (i32, i32)) -> Result<String> {
        let (lo, hi) = bounds;
        if !(ACT_QMIN..=ACT_QMAX).contains(&lo) || !(lo..=ACT_QMAX).contains(&hi) {
            bail!(Onnx, "{out}: output clamp [{lo}, {hi}] is not within int8");
        }
        Ok(if bounds == (ACT_QMIN, ACT_QMAX) {
            out.to_string()
        } else {
            format!("{out}.preclip")
        })
    }

    /// The int8 `Clip` to `bounds` (initializers `{unit}.clip.min` /
    /// `.max`) from `x` into `out` when `x` is not `out` (see
    /// [`Builder::clipped_output`]); both share `unit`'s parameters.
    fn clip(&mut self, unit: &str, x: &str, out: &str, bounds: (i32, i32)) -> Result<()> {
        if x == out {
            return Ok(());
        }
        let name = format!("{unit}.clip");
        let (lo, hi) = (format!("{name}.min"), format!("{name}.max"));
        self.init(tensor_i8(&lo, &[], &[bounds.0 as i8]))?;
        self.init(tensor_i8(&hi, &[], &[bounds.1 as i8]))?;
        self.alias(x, unit);
        self.node("Clip", &name, "", &[x, &lo, &hi], &[out], vec![]);
        Ok(())
    }

    /// A float Conv whose weight and bias initializers are `wname` and
    /// `bname`, output `{unit}.conv`... named `out`; returns `out`.
    fn conv_fp32(
        &mut self,
        c: &Conv2d,
        out: &str,
        wname: &str,
        bname: &str,
        x: &str,
    ) -> Result<String> {
        let w = &c.weight;
        let d = w.dims();
        self.init(tensor_f32(wname, d, &w.to_vec()?))?;
        let mut inputs = vec![x.to_string(), wname.to_string()];
        if let Some(b) = &c.bias {
            self.init(tensor_f32(bname, b.dims(), &b.to_vec()?))?;
            inputs.push(bname.to_string());
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.node(
            "Conv",
            out,
            "",
            &refs,
            &[out],
            conv_attrs(c.params, [d[2], d[3]]),
        );
        Ok(out.to_string())
    }

    /// `x`, a Relu of it named `{scope}.relu`, or a Clip to [0, 6] named
    /// `{scope}.relu6` (bounds `{scope}.relu6.min` / `.max`).
    pub(super) fn act_fp32(&mut self, act: Activation, scope: &str, x: String) -> Result<String> {
        Ok(match act {
            Activation::None => x,
            Activation::Relu => {
                let out = format!("{scope}.relu");
                self.node("Relu", &out, "", &[&x], &[&out], vec![]);
                out
            }
            Activation::Relu6 => {
                let out = format!("{scope}.relu6");
                let (lo, hi) = (format!("{out}.min"), format!("{out}.max"));
                self.init(tensor_f32(&lo, &[], &[0.0]))?;
                self.init(tensor_f32(&hi, &[], &[6.0]))?;
                self.node("Clip", &out, "", &[&x, &lo, &hi], &[&out], vec![]);
                out
            }
        })
    }

    /// Conv (+ BatchNormalization, + Relu) of a float unit; returns the name
    /// of its output.
    fn conv_bn_fp32(&mut self, u: &ConvBn, unit: &str, x: &str) -> Result<String> {
        let conv = self.conv_fp32(
            &u.conv,
            &format!("{unit}.conv"),
            &format!("{unit}.conv.weight"),
            &format!("{unit}.conv.bias"),
            x,
        )?;
        let bn = &u.bn;
        let mut bn_inputs = vec![conv];
        for (suffix, t) in [
            ("weight", &bn.weight),
            ("bias", &bn.bias),
            ("running_mean", &bn.running_mean),
            ("running_var", &bn.running_var),
        ] {
            let name = format!("{unit}.bn.{suffix}");
            self.init(tensor_f32(&name, t.dims(), &t.to_vec()?))?;
            bn_inputs.push(name);
        }
        let bn_out = format!("{unit}.bn");
        let refs: Vec<&str> = bn_inputs.iter().map(String::as_str).collect();
        self.node(
            "BatchNormalization",
            &bn_out,
            "",
            &refs,
            &[&bn_out],
            vec![attr_float("epsilon", bn.eps)],
        );
        self.act_fp32(u.act, unit, bn_out)
    }
}

pub(super) fn conv_attrs(p: Conv2dParams, kernel: [usize; 2]) -> Vec<AttributeProto> {
    vec![
        attr_ints("kernel_shape", &[kernel[0], kernel[1]]),
        attr_ints("strides", &[p.stride.0, p.stride.1]),
        // Begin/end order: [h_begin, w_begin, h_end, w_end].
        attr_ints("pads", &[p.pad.0, p.pad.1, p.pad.0, p.pad.1]),
        attr_ints("dilations", &[p.dilation.0, p.dilation.1]),
        attr_int("group", p.groups as i64),
    ]
}

pub(super) fn pool_attrs(p: MaxPool2dParams) -> Vec<AttributeProto> {
    vec![
        attr_ints("kernel_shape", &[p.kernel.0, p.kernel.1]),
        attr_ints("strides", &[p.stride.0, p.stride.1]),
        attr_ints("pads", &[p.pad.0, p.pad.1, p.pad.0, p.pad.1]),
    ]
}

/// AveragePool / QLinearAveragePool attributes. ONNX Runtime divides every
/// window by kh*kw under `count_include_pad` even where a `ceil_mode` window
/// hangs past the padding (S6), so that combination is refused.
pub(super) fn avg_pool_attrs(name: &str, p: AvgPool2dParams) -> Result<Vec<AttributeProto>> {
    if p.count_include_pad && p.ceil_mode {
        bail!(
            Onnx,
            "{name}: average pooling with both count_include_pad and ceil_mode cannot be exported \
(ONNX Runtime divides the last windows by a different count); use one of them"
        );
    }
    Ok(vec![
        attr_ints("kernel_shape", &[p.kernel.0, p.kernel.1]),
        attr_ints("strides", &[p.stride.0, p.stride.1]),
        attr_ints("pads", &[p.pad.0, p.pad.1, p.pad.0, p.pad.1]),
        attr_int("count_include_pad", p.count_include_pad as i64),
        attr_int("ceil_mode", p.ceil_mode as i64),
    ])
}

pub(super) fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.iter().map(|&x| x as i64).collect();
    a
}

pub(super) fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

fn tensor(name: &str, dims: &[usize], dt: DataType, raw: Vec<u8>) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.data_type = dt as i32;
    t.raw_data = raw;
    t
}

pub(super) fn tensor_f32(name: &str, dims: &[usize], v: &[f32]) -> TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, dims, DataType::FLOAT, raw)
}

pub(super) fn tensor_i8(name: &str, dims: &[usize], v: &[i8]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::INT8,
        v.iter().map(|&x| x as u8).collect(),
    )
}

pub(super) fn tensor_i32(name: &str, dims: &[usize], v: &[i32]) -> TensorProto {
    let raw = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    tensor(name, dims, DataType::INT32, raw)
}

pub(super) enum Dim<'a> {
    Param(&'a str),
    Value(usize),
}

pub(super) fn value_info(name: &str, dt: DataType, dims: &[Dim]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = Dimension::new();
        dim.value = Some(match d {
            Dim::Param(p) => dimension::Value::DimParam(p.to_string()),
            Dim::Value(v) => dimension::Value::DimValue(*v as i64),
        });
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = dt as i32;
    tt.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi.type_ = Some(tp).into();
    vi
}
