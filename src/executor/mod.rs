//! The int8 reference executor: loads an ONNX file, validates it, and runs it
//! with integer arithmetic only (spec S5-S8).
//!
//! It shares no code with the QAT model's forward pass except the spec's
//! integer routines in [`crate::quant`]: [`crate::quant::Requant`] (R1),
//! [`crate::quant::AddRequant`] (S7), [`crate::quant::pool`] (S6) and the
//! QuantizeLinear / DequantizeLinear formulas of [`crate::quant::fake`] at the
//! graph's float boundary.
//!
//! - [`load`]: file reading, protobuf parsing, initializer decoding;
//! - [`wire`]: the wire-format check before the parse (truncation,
//!   protobuf's merging of repeated message fields);
//! - [`validate`]: opsets, ops, attributes, types, shapes, constants, and the
//!   execution plan with every multiplier precomputed;
//! - [`ops`]: the integer kernels (rayon over images and channels or pixel
//!   blocks);
//! - [`gemm`]: the packed int8 GEMM (AVX-512 VNNI, AVX2, scalar; chosen at
//!   run time) and the vectorized R1 that QLinearConv runs on.
//!
//! - [`qdq`]: the fusion of QDQ groups (DequantizeLinear -> op ->
//!   QuantizeLinear) into QLinear ops, as ONNX Runtime's QDQ transformer does;
//! - [`lookup`]: the 256-entry tables of QLinearLeakyRelu and QLinearSigmoid,
//!   built with ONNX Runtime's float formulas;
//! - [`layout`]: Transpose, Reshape's shape rules, broadcasting QLinearAdd.
//!
//! Supported, int8 or uint8 (a uint8 tensor is held as int8 `v - 128` with
//! its zero points shifted alike, which every op here computes exactly):
//! QuantizeLinear, DequantizeLinear, QLinearConv (per-tensor or per-channel
//! weight scales and zero points, int32 bias, `auto_pad`), QLinearMatMul,
//! MaxPool (`ceil_mode`, dilations), Flatten, Reshape (constant shape),
//! Transpose (batch axis kept), Clip and Identity from the standard domain
//! (opsets 10-23), and QLinearAdd (with broadcasting and constant inputs),
//! QGemm, QLinearAveragePool, QLinearConcat (channel axis),
//! QLinearGlobalAveragePool, QLinearLeakyRelu and QLinearSigmoid from
//! `com.microsoft` version 1; QDQ graphs of Conv, Gemm, MatMul, Add,
//! pooling, Concat, LeakyRelu, Sigmoid, Flatten, Reshape and Transpose. A
//! float op between quantized ones is an error (`not integer-only: node ...
//! computes in float`). A malformed or unsupported file is an error naming
//! the node and the problem, never a panic; sizes in the file are checked
//! before they decide any allocation.

pub mod gemm;
pub mod layout;
pub mod load;
pub mod lookup;
pub mod ops;
pub mod qdq;
pub mod validate;
pub mod wire;

use crate::{bail, Result};
use load::ElemType;
use std::collections::BTreeMap;
use std::path::Path;
use validate::{Op, Plan};

/// Largest number of elements of one batched activation.
const MAX_BATCH_ELEMENTS: usize = 1 << 32;

/// One int8 tensor computed by the executor.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecTensor {
    pub name: String,
    /// With the batch dimension first.
    pub shape: Vec<usize>,
    /// The values; for a uint8 tensor ([`ExecTensor::uint8`]) each is
    /// `v - 128` of the uint8 value `v` (see [`ExecTensor::to_u8`]).
    pub values: Vec<i8>,
    /// Whether the graph declares the tensor uint8.
    pub uint8: bool,
}

impl ExecTensor {
    /// The uint8 values of a uint8 tensor (`values[i] + 128`).
    pub fn to_u8(&self) -> Vec<u8> {
        self.values
            .iter()
            .map(|&v| (v as i32 + 128) as u8)
            .collect()
    }
}

/// A loaded and validated int8 graph.
#[derive(Clone, Debug)]
pub struct Executor {
    plan: Plan,
}

enum Value {
    F32(Vec<f32>),
    I8(Vec<i8>),
}

impl Executor {
    /// Reads, parses and validates an ONNX file.
    pub fn load(path: &Path) -> Result<Self> {
        let m = load::read_model(path)?;
        Self::from_model(&m).map_err(|e| match e {
            crate::Error::Onnx(msg) => crate::Error::Onnx(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses and validates a serialized model.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_model(&load::parse_model(bytes)?)
    }

    pub fn from_model(m: &onnx_protobuf::ModelProto) -> Result<Self> {
        Ok(Executor {
            plan: validate::build_plan(m)?,
        })
    }

    /// The model's `metadata_props`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.plan.metadata
    }

    /// `[C, H, W]` of one input image.
    pub fn input_dims(&self) -> &[usize] {
        &self.plan.slots[self.plan.input].dims
    }

    /// Per-image dimensions of the output.
    pub fn output_dims(&self) -> &[usize] {
        &self.plan.slots[self.plan.output].dims
    }

    /// The node names in execution order, with their op (for a fused
    /// DequantizeLinear -> op -> QuantizeLinear group, the QLinear op it
    /// became), and the names of their computed inputs and output.
    pub fn nodes(&self) -> Vec<(String, &str)> {
        self.plan
            .steps
            .iter()
            .map(|s| (s.node.clone(), s.op_type.as_str()))
            .collect()
    }

    /// Per step: the names of its computed input tensors and of its output.
    pub fn step_tensors(&self) -> Vec<(Vec<&str>, &str)> {
        let name = |i: usize| self.plan.slots[i].name.as_str();
        self.plan
            .steps
            .iter()
            .map(|s| (s.inputs.iter().map(|&i| name(i)).collect(), name(s.output)))
            .collect()
    }

    /// Runs `n` images (NCHW float, normalized) and returns the float output.
    pub fn run(&self, images: &[f32], n: usize) -> Result<Vec<f32>> {
        Ok(self.execute(images, n, false)?.0)
    }

    /// Like [`Executor::run`], also returning every int8 tensor of the
    /// graph in execution order.
    pub fn run_trace(&self, images: &[f32], n: usize) -> Result<(Vec<f32>, Vec<ExecTensor>)> {
        self.execute(images, n, true)
    }

    fn execute(&self, images: &[f32], n: usize, keep: bool) -> Result<(Vec<f32>, Vec<ExecTensor>)> {
        let p = &self.plan;
        let per_image = p.slots[p.input].numel();
        if let Some(b) = p.batch {
            if b != n {
                bail!(Onnx, "the graph has a fixed batch of {b}, got {n} images");
            }
        }
        if n.checked_mul(per_image) != Some(images.len()) {
            bail!(
                Shape,
                "{} input values are not {n} images of {:?}",
                images.len(),
                p.slots[p.input].dims
            );
        }
        for s in &p.slots {
            if n.checked_mul(s.numel())
                .is_none_or(|v| v > MAX_BATCH_ELEMENTS)
            {
                bail!(
                    Usage,
                    "a batch of {n} images is too large for tensor '{}'",
                    s.name
                );
            }
        }
        // The last step that reads each slot, to free values early.
        let mut last_use = vec![usize::MAX; p.slots.len()];
        for (i, st) in p.steps.iter().enumerate() {
            for &s in &st.inputs {
                last_use[s] = i;
            }
        }
        let mut values: Vec<Option<Value>> = (0..p.slots.len()).map(|_| None).collect();
        values[p.input] = Some(Value::F32(images.to_vec()));
        let mut trace = Vec::new();
        for (i, st) in p.steps.iter().enumerate() {
            let len = n * p.slots[st.output].numel();
            let out = {
                let get_i8 = |k: usize| -> Result<&[i8]> {
                    match values[st.inputs[k]].as_ref() {
                        Some(Value::I8(v)) => Ok(v),
                        _ => bail!(Onnx, "node '{}': input {k} is not an int8 value", st.node),
                    }
                };
                match &st.op {
                    Op::Quantize { scale, zero_point } => {
                        let Some(Value::F32(x)) = values[st.inputs[0]].as_ref() else {
                            bail!(Onnx, "node '{}': input is not a float value", st.node);
                        };
                        let mut y = vec![0i8; len];
                        ops::quantize_input(x, *scale, *zero_point, &mut y);
                        Value::I8(y)
                    }
                    Op::Conv(c) => {
                        let mut y = vec![0i8; len];
                        c.run(&st.node, get_i8(0)?, n, &mut y)?;
                        Value::I8(y)
                    }
                    Op::Add(t) => {
                        let mut y = vec![0i8; len];
                        t.run(get_i8(0)?, get_i8(1)?, &mut y)?;
                        Value::I8(y)
                    }
                    Op::MaxPool(pool) => {
                        let mut y = vec![0i8; len];
                        pool.run(get_i8(0)?, n, &mut y);
                        Value::I8(y)
                    }
                    Op::Gap { hw, z_in, rq } => {
                        let mut y = vec![0i8; len];
                        let planes = p.slots[st.output].numel();
                        ops::gap(get_i8(0)?, *hw, *z_in, rq, &mut y, planes)?;
                        Value::I8(y)
                    }
                    Op::AvgPool {
                        geom,
                        scales,
                        z_in,
                        z_out,
                    } => {
                        let mut y = vec![0i8; len];
                        ops::avg_pool(geom, scales, *z_in, *z_out, get_i8(0)?, &mut y)?;
                        Value::I8(y)
                    }
                    Op::Concat(parts) => {
                        let xs = (0..parts.len()).map(get_i8).collect::<Result<Vec<_>>>()?;
                        let args: Vec<_> = parts.iter().zip(xs).collect();
                        let mut y = vec![0i8; len];
                        ops::concat(&args, &mut y, n);
                        Value::I8(y)
                    }
                    Op::Clip { lo, hi } => {
                        Value::I8(get_i8(0)?.iter().map(|v| (*v).clamp(*lo, *hi)).collect())
                    }
                    Op::Flatten => Value::I8(get_i8(0)?.to_vec()),
                    Op::Transpose(t) => {
                        let mut y = vec![0i8; len];
                        t.run(get_i8(0)?, n, &mut y);
                        Value::I8(y)
                    }
                    Op::BroadcastAdd(add) => {
                        let xs = (0..st.inputs.len())
                            .map(get_i8)
                            .collect::<Result<Vec<_>>>()?;
                        let mut y = vec![0i8; len];
                        add.run(&xs, n, &mut y)?;
                        Value::I8(y)
                    }
                    Op::Lookup(table) => {
                        let mut y = vec![0i8; len];
                        lookup::apply(table, get_i8(0)?, &mut y);
                        Value::I8(y)
                    }
                    Op::Dequantize { scale, zero_point } => {
                        let mut y = vec![0f32; len];
                        ops::dequantize_output(get_i8(0)?, *scale, *zero_point, &mut y);
                        Value::F32(y)
                    }
                }
            };
            if keep {
                if let Value::I8(v) = &out {
                    let s = &p.slots[st.output];
                    let mut shape = vec![n];
                    shape.extend_from_slice(&s.dims);
                    trace.push(ExecTensor {
                        name: s.name.clone(),
                        shape,
                        values: v.clone(),
                        uint8: s.ty == ElemType::U8,
                    });
                }
            }
            values[st.output] = Some(out);
            for &s in &st.inputs {
                if last_use[s] == i && s != p.output {
                    values[s] = None;
                }
            }
        }
        match values[p.output].take() {
            Some(Value::F32(v)) => Ok((v, trace)),
            _ => bail!(Onnx, "the graph output was not computed"),
        }
    }
}
