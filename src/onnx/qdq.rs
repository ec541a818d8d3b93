//! The QDQ form of an int8 graph (`qat export --format qdq`): the same
//! integers as the QOperator graph of [`super::export_int8`], written as
//! float ops between QuantizeLinear / DequantizeLinear pairs, the form
//! TensorRT's explicit quantization and ONNX Runtime's QDQ transformer
//! read (docs/INT8.md, "The QDQ graph").

use super::export::{
    attr_int, avg_pool_attrs, check_qparams, conv_attrs, model, pool_attrs, tensor_f32, tensor_i32,
    tensor_i8, value_info, Builder, Dim, ExportMeta,
};
use super::{INPUT_NAME, OUTPUT_NAME};
use crate::int8::{Int8Net, QConv, StepKind};
use crate::nn::Activation;
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use crate::{bail, Result};
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{ModelProto, StringStringEntryProto};
use std::collections::HashSet;

/// How the int32 bias of each convolution is stored in the QDQ graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QdqBias {
    /// `<unit>.bias_q` (int32) through a DequantizeLinear with scale
    /// `s_x * s_w[c]` and zero point 0 (what ONNX Runtime's quantizer writes
    /// and fuses exactly).
    #[default]
    Int32,
    /// The float bias `fl32(b_q * s_x * s_w[c])`, a plain initializer:
    /// TensorRT's parser accepts DequantizeLinear only on int8 (not int32)
    /// inputs. ONNX Runtime requantizes it, recovering `b_q` exactly for
    /// `|b_q| < 2^22` (checked at export).
    Float,
}

/// The QDQ graph of `m` (see the module documentation): the input
/// QuantizeLinear, then per step a DequantizeLinear of each int8 input (one
/// per consumer), the float op (Conv with per-channel int8 weights through a
/// DequantizeLinear on axis 0 and the bias as `bias` says, Add, MaxPool,
/// AveragePool, Concat, GlobalAveragePool; the classifier as a 1x1 Conv,
/// then Flatten), its float activation (Relu, or Clip to [0, 6] for ReLU6)
/// and a QuantizeLinear to the step's parameters; the logits are
/// dequantized at the end. Every int8 tensor carries the name it has in the
/// QOperator graph. Where an activation's clamp is narrower than the int8
/// range (ReLU at the symmetric scheme's zero point 0), the op's
/// QuantizeLinear (`<name>.preclip`) comes before the activation, which
/// then runs between a DequantizeLinear and a QuantizeLinear (the form
/// ONNX Runtime's quantizer writes for symmetric activations), so that the
/// op still fuses into its integer form.
pub fn export_qdq(m: &Int8Net, meta: &ExportMeta, bias: QdqBias) -> Result<ModelProto> {
    let mut q = Qdq {
        b: Builder::default(),
        bias,
        dqs: HashSet::new(),
    };
    q.b.graph.input.push(value_info(
        INPUT_NAME,
        DataType::FLOAT,
        &[
            Dim::Param("batch"),
            Dim::Value(meta.in_channels),
            Dim::Value(meta.input_hw[0]),
            Dim::Value(meta.input_hw[1]),
        ],
    ));
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
                q.b.qparams(name, step.out_q)?;
                q.quantize(INPUT_NAME, name, name);
                name.to_string()
            }
            StepKind::Conv(c) => {
                q.conv(c, &input(0)?, name)?;
                name.to_string()
            }
            StepKind::MaxPool(p) => {
                let x = input(0)?;
                let xd = q.dq(&x, name);
                let y = format!("{name}.pool");
                q.b.node("MaxPool", name, "", &[&xd], &[&y], pool_attrs(*p));
                q.b.alias(name, &x);
                q.quantize(&y, name, name);
                name.to_string()
            }
            StepKind::Add(args, relu) => {
                let (a, s) = (input(0)?, input(1)?);
                let (ad, sd) = (q.dq(&a, name), q.dq(&s, name));
                let sum = format!("{name}.sum");
                q.b.node("Add", name, "", &[&ad, &sd], &[&sum], vec![]);
                q.b.qparams(name, step.out_q)?;
                let act = if *relu {
                    Activation::Relu
                } else {
                    Activation::None
                };
                q.activate(name, &sum, act, (args.rq.lo, args.rq.hi), name)?;
                name.to_string()
            }
            StepKind::AvgPool(p) => {
                let x = input(0)?;
                let xd = q.dq(&x, name);
                let y = format!("{name}.pool");
                let attrs = avg_pool_attrs(name, *p)?;
                q.b.node("AveragePool", name, "", &[&xd], &[&y], attrs);
                q.b.qparams(name, step.out_q)?;
                q.quantize(&y, name, name);
                name.to_string()
            }
            StepKind::Concat => {
                let xs = (0..step.inputs.len())
                    .map(input)
                    .collect::<Result<Vec<String>>>()?;
                let xd: Vec<String> = xs.iter().map(|x| q.dq(x, name)).collect();
                let xd: Vec<&str> = xd.iter().map(String::as_str).collect();
                let y = format!("{name}.cat");
                q.b.node("Concat", name, "", &xd, &[&y], vec![attr_int("axis", 1)]);
                q.b.qparams(name, step.out_q)?;
                q.quantize(&y, name, name);
                name.to_string()
            }
            StepKind::GlobalAvgPool => {
                let x = input(0)?;
                let xd = q.dq(&x, name);
                let y = format!("{name}.pool");
                q.b.node("GlobalAveragePool", name, "", &[&xd], &[&y], vec![]);
                q.b.qparams(name, step.out_q)?;
                q.quantize(&y, name, name);
                name.to_string()
            }
            // The pooled [N, C, 1, 1] tensor is what the classifier reads.
            StepKind::Flatten => input(0)?,
            StepKind::Fc(c) => {
                let nchw = format!("{name}.nchw");
                q.conv(c, &input(0)?, &nchw)?;
                let flat = format!("{name}.flatten");
                let xd = q.dq(&nchw, &flat);
                q.b.node(
                    "Flatten",
                    &flat,
                    "",
                    &[&xd],
                    &[&flat],
                    vec![attr_int("axis", 1)],
                );
                q.quantize(&flat, name, name);
                name.to_string()
            }
        };
        values.push(out);
    }
    let last = values.last().cloned().unwrap_or_default();
    let (s, z) = (q.b.scale(&last), q.b.zp(&last));
    q.b.node(
        "DequantizeLinear",
        &format!("{last}.dequantize"),
        "",
        &[&last, &s, &z],
        &[OUTPUT_NAME],
        vec![],
    );
    q.b.graph.output.push(value_info(
        OUTPUT_NAME,
        DataType::FLOAT,
        &[Dim::Param("batch"), Dim::Value(m.num_classes)],
    ));
    q.b.graph.name = format!("{}_int8_qdq", meta.arch);
    let mut proto = model(q.b.graph, meta, "int8", false);
    let mut e = StringStringEntryProto::new();
    e.key = "quantization_format".into();
    e.value = "QDQ (QuantizeLinear/DequantizeLinear around float ops)".into();
    proto.metadata_props.push(e);
    Ok(proto)
}

struct Qdq {
    b: Builder,
    bias: QdqBias,
    /// The DequantizeLinear outputs written so far.
    dqs: HashSet<String>,
}

impl Qdq {
    /// The DequantizeLinear of int8 tensor `x` (`<x>.dq`), one per tensor
    /// and shared by its consumers (ONNX Runtime gives each consumer its own
    /// copy before fusing; TensorRT fuses either form). `_user` is the
    /// consumer.
    fn dq(&mut self, x: &str, _user: &str) -> String {
        let out = format!("{x}.dq");
        if self.dqs.insert(out.clone()) {
            let (s, z) = (self.b.scale(x), self.b.zp(x));
            self.b
                .node("DequantizeLinear", &out, "", &[x, &s, &z], &[&out], vec![]);
        }
        out
    }

    /// QuantizeLinear of float `x` into int8 `out` with the parameters of
    /// `params` (`<params>.scale` / `.zero_point`).
    fn quantize(&mut self, x: &str, out: &str, params: &str) {
        let (s, z) = (self.b.scale(params), self.b.zp(params));
        if out != params {
            self.b.alias(out, params);
        }
        self.b.node(
            "QuantizeLinear",
            &format!("{out}.quantize"),
            "",
            &[x, &s, &z],
            &[out],
            vec![],
        );
    }

    /// The activation `act` of float `y` and its QuantizeLinear into `out`,
    /// with `unit`'s parameters and int8 clamp `bounds`: the float activation
    /// then the QuantizeLinear when the clamp is the int8 range (the
    /// QuantizeLinear's saturation is then the activation, so ONNX Runtime
    /// drops the float Relu / Clip and fuses the op), otherwise a
    /// QuantizeLinear to `<out>.preclip`, a DequantizeLinear, the float
    /// activation and a QuantizeLinear.
    fn activate(
        &mut self,
        unit: &str,
        y: &str,
        act: Activation,
        bounds: (i32, i32),
        out: &str,
    ) -> Result<()> {
        let (lo, hi) = bounds;
        if !(ACT_QMIN..=ACT_QMAX).contains(&lo) || !(lo..=ACT_QMAX).contains(&hi) {
            bail!(Onnx, "{out}: output clamp [{lo}, {hi}] is not within int8");
        }
        if bounds == (ACT_QMIN, ACT_QMAX) {
            let a = self.b.act_fp32(act, unit, y.to_string())?;
            self.quantize(&a, out, unit);
            return Ok(());
        }
        if act == Activation::None {
            bail!(
                Onnx,
                "{out}: clamp [{lo}, {hi}] without an activation cannot be written as QDQ"
            );
        }
        let pre = format!("{out}.preclip");
        self.quantize(y, &pre, unit);
        let d = self.dq(&pre, &format!("{unit}.act"));
        let a = self.b.act_fp32(act, unit, d)?;
        self.quantize(&a, out, unit);
        Ok(())
    }

    /// A float Conv of unit `c` on int8 `x` (dequantized), its weights int8
    /// through a per-channel DequantizeLinear (axis 0), its bias as
    /// [`QdqBias`] says, then its activation and QuantizeLinear into `out`.
    fn conv(&mut self, c: &QConv, x: &str, out: &str) -> Result<()> {
        let n = &c.name;
        check_qparams(n, "", c.out_q)?;
        let c_out = c.w_shape[0];
        if c.s_w.len() != c_out
            || c.bias_q.len() != c_out
            || c.w_q.len() != c.w_shape.iter().product::<usize>()
        {
            bail!(Onnx, "{n}: inconsistent weight, scale and bias sizes");
        }
        let b = &mut self.b;
        let (wq, ws, wz, w) = (
            format!("{n}.weight_q"),
            format!("{n}.weight_scale"),
            format!("{n}.weight_zero_point"),
            format!("{n}.weight"),
        );
        b.init(tensor_i8(&wq, &c.w_shape, &c.w_q))?;
        b.init(tensor_f32(&ws, &[c_out], &c.s_w))?;
        b.init(tensor_i8(&wz, &[c_out], &vec![0; c_out]))?;
        b.node(
            "DequantizeLinear",
            &w,
            "",
            &[&wq, &ws, &wz],
            &[&w],
            vec![attr_int("axis", 0)],
        );
        // s_b[c] = fl32(s_x * s_w[c]) (S1, S5): the scale b_q was rounded to.
        let s_b: Vec<f32> = c.s_w.iter().map(|&s| c.in_q.scale * s).collect();
        let bias = format!("{n}.bias");
        match self.bias {
            QdqBias::Int32 => {
                let (bq, bs, bz) = (
                    format!("{n}.bias_q"),
                    format!("{n}.bias_scale"),
                    format!("{n}.bias_zero_point"),
                );
                b.init(tensor_i32(&bq, &[c_out], &c.bias_q))?;
                b.init(tensor_f32(&bs, &[c_out], &s_b))?;
                b.init(tensor_i32(&bz, &[c_out], &vec![0; c_out]))?;
                b.node(
                    "DequantizeLinear",
                    &bias,
                    "",
                    &[&bq, &bs, &bz],
                    &[&bias],
                    vec![attr_int("axis", 0)],
                );
            }
            QdqBias::Float => {
                if let Some(v) = c.bias_q.iter().find(|v| v.unsigned_abs() >= 1 << 22) {
                    bail!(
                        Onnx,
                        "{n}: int32 bias {v} is too large to round-trip through a float bias \
                         (|b_q| < 2^22 is needed): export with the int32 bias"
                    );
                }
                let f: Vec<f32> = c
                    .bias_q
                    .iter()
                    .zip(&s_b)
                    .map(|(&q, &s)| q as f32 * s)
                    .collect();
                b.init(tensor_f32(&bias, &[c_out], &f))?;
            }
        }
        let xd = self.dq(x, n);
        let y = format!("{n}.conv");
        self.b.node(
            "Conv",
            n,
            "",
            &[&xd, &w, &bias],
            &[&y],
            conv_attrs(c.params, [c.w_shape[2], c.w_shape[3]]),
        );
        self.b.qparams(n, c.out_q)?;
        self.activate(n, &y, c.act, c.output_bounds(), out)
    }
}
