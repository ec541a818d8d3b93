//! Validation of a parsed model and its lowering into an execution plan:
//! opsets, the single float input and output, every node's op, attributes,
//! input types, constant initializers and shapes (inferred per image, with
//! checked arithmetic and bounded sizes). Any problem is an error naming the
//! node and what is wrong.

use super::layout::{reshape_dims, BroadcastAdd, Shape, Transpose};
use super::load::{
    checked_dims, decode_tensor, onnx_type_name, Const, Data, ElemType, MAX_ELEMENTS,
};
use super::lookup;
use super::ops::{AddTable, ConcatInput, ConvOp, PoolOp};
use crate::quant::params::{ACT_QMAX, ACT_QMIN};
use crate::quant::{pool, AddRequant, Requant};
use crate::{bail, Error, Result};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, AttributeProto, ModelProto, NodeProto, ValueInfoProto};
use std::collections::{BTreeMap, HashMap};

/// Accepted versions of the standard opset: the int8 semantics of the ops
/// used are those of QLinearConv-10 through every later version up to 23
/// (QuantizeLinear/DequantizeLinear gained per-axis scales in 13, float8
/// in 19 and blocked quantization in 21, none of which changes the int8
/// per-tensor and per-axis forms read here; MaxPool takes int8 from 12 on,
/// checked at the node).
pub const OPSET_RANGE: std::ops::RangeInclusive<i64> = 10..=23;
/// Accepted IR versions: 3 (the first with opsets) to 14 (what onnx 1.23
/// writes); later versions add element types, not changes to these ops.
pub const IR_RANGE: std::ops::RangeInclusive<i64> = 3..=14;
/// Largest reduction length of a convolution: with `|x - z| <= 255` and
/// `|w| <= 128` the int32 sum stays below 2^31.
const MAX_CONV_K: usize = 65_000;
/// Bound on strides, pads and dilations read from attributes.
const MAX_ATTR: i64 = 1 << 16;

/// One value of the graph, per image (the batch dimension is implicit).
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    pub ty: ElemType,
    pub dims: Vec<usize>,
}

impl Slot {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Quantize {
        scale: f32,
        zero_point: i32,
    },
    Conv(Box<ConvOp>),
    Add(Box<AddTable>),
    MaxPool(PoolOp),
    Gap {
        hw: usize,
        z_in: i32,
        rq: Requant,
    },
    /// Integer average pooling of one image (`geom.n == 1`), input and
    /// output scales, zero points.
    AvgPool {
        geom: pool::AvgPool2dGeom,
        scales: [f32; 2],
        z_in: i32,
        z_out: i32,
    },
    Concat(Vec<ConcatInput>),
    /// Clip of int8 values to `[lo, hi]` (the ReLU or ReLU6 of a symmetric
    /// activation, whose clamp is narrower than the int8 range).
    Clip {
        lo: i8,
        hi: i8,
    },
    /// A copy with new per-image dimensions (Flatten, Reshape, Identity).
    Flatten,
    Transpose(Transpose),
    /// QLinearAdd with broadcasting or a constant input.
    BroadcastAdd(Box<BroadcastAdd>),
    /// QLinearLeakyRelu / QLinearSigmoid: `y = table[x as u8]`.
    Lookup(Box<[i8; 256]>),
    Dequantize {
        scale: f32,
        zero_point: i32,
    },
}

#[derive(Clone, Debug)]
pub struct Step {
    pub node: String,
    /// The ONNX op (after QDQ fusion, the QLinear op of the fused group).
    pub op_type: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A validated graph, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub slots: Vec<Slot>,
    pub steps: Vec<Step>,
    /// Slot 0 is the float input `[C, H, W]`.
    pub input: usize,
    /// A fixed batch size, when the input declares one.
    pub batch: Option<usize>,
    pub output: usize,
    pub metadata: BTreeMap<String, String>,
}

fn node_label(n: &NodeProto, i: usize) -> String {
    if n.name.is_empty() {
        format!("#{i} ({})", n.op_type)
    } else {
        n.name.clone()
    }
}

/// `producer_name` of the models `qat export` writes.
pub const QAT_PRODUCER: &str = "qat";

/// The `metadata_props` keys of every model `qat export` writes (it has
/// written all of them since its first version), in the order it writes
/// them.
pub const QAT_METADATA_KEYS: [&str; 14] = [
    "producer",
    "arch",
    "precision",
    "input_name",
    "input_dtype",
    "input_layout",
    "input_size",
    "pixel_range",
    "normalization",
    "mean",
    "std",
    "class_names",
    "output_name",
    "output",
];

/// A model written by `qat export` (`producer_name` "qat") is complete: it
/// has its graph, its opsets and every metadata entry. Protobuf cannot tell
/// a file cut exactly between two top-level fields from a whole one (the
/// `onnx` package and ONNX Runtime load such a prefix), and `metadata_props`
/// come last in the file, so this is what catches such a cut in qat's own
/// files, which would otherwise lose the `mean`, `std` or `class_names` that
/// users need to prepare inputs.
fn check_complete(m: &ModelProto) -> Result<()> {
    if m.producer_name != QAT_PRODUCER {
        return Ok(());
    }
    const WHY: &str = "every model qat export writes has it, so this file is truncated \
(cut between two fields) or was edited: copy it again, or export it again with `qat export`";
    if m.graph.is_none() {
        bail!(Onnx, "the model has no graph: {WHY}");
    }
    if m.opset_import.is_empty() {
        bail!(Onnx, "the model has no opset_import: {WHY}");
    }
    for key in QAT_METADATA_KEYS {
        if !m.metadata_props.iter().any(|e| e.key == key) {
            bail!(Onnx, "metadata_props has no '{key}' entry: {WHY}");
        }
    }
    Ok(())
}

pub fn build_plan(m: &ModelProto) -> Result<Plan> {
    check_complete(m)?;
    if !IR_RANGE.contains(&m.ir_version) {
        bail!(
            Onnx,
            "IR version {} is not supported (accepted: {}..={})",
            m.ir_version,
            IR_RANGE.start(),
            IR_RANGE.end()
        );
    }
    let mut std_opset: Option<i64> = None;
    let mut ms_opset = None;
    for o in &m.opset_import {
        match o.domain.as_str() {
            "" | "ai.onnx" => std_opset = Some(o.version),
            "com.microsoft" => ms_opset = Some(o.version),
            _ => {}
        }
    }
    match std_opset {
        Some(v) if OPSET_RANGE.contains(&v) => {}
        Some(v) => bail!(
            Onnx,
            "opset {v} of the standard domain is not supported (accepted: {}..={})",
            OPSET_RANGE.start(),
            OPSET_RANGE.end()
        ),
        None => bail!(Onnx, "the model imports no standard opset"),
    }
    let Some(g) = m.graph.as_ref() else {
        bail!(Onnx, "the model has no graph");
    };
    if !g.sparse_initializer.is_empty() {
        bail!(Onnx, "sparse initializers are not supported");
    }
    let mut consts: HashMap<String, Const> = HashMap::new();
    for t in &g.initializer {
        if t.name.is_empty() {
            bail!(Onnx, "an initializer has no name");
        }
        let c = decode_tensor(t)?;
        if consts.insert(t.name.clone(), c).is_some() {
            bail!(Onnx, "initializer '{}' is defined twice", t.name);
        }
    }

    let mut b = PlanBuilder {
        opset: std_opset.unwrap_or(0),
        float_consts: Default::default(),
        consts,
        slots: Vec::new(),
        by_name: HashMap::new(),
        steps: Vec::new(),
    };

    // The one float input (initializers may also be listed as inputs).
    let inputs: Vec<&ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !b.consts.contains_key(&i.name))
        .collect();
    if inputs.len() != 1 {
        bail!(
            Onnx,
            "the graph has {} non-constant inputs; exactly one image input is supported",
            inputs.len()
        );
    }
    let (input_dims, batch) = input_shape(inputs[0])?;
    let input = b.add_slot(&inputs[0].name, ElemType::F32, input_dims, "graph input")?;

    // QDQ groups fused into integer ops, as ONNX Runtime does.
    let outputs: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let fused = super::qdq::fuse(&g.node, &b.consts, &outputs);
    for (name, c) in fused.consts {
        b.consts.entry(name).or_insert(c);
    }

    for (i, n) in fused.nodes.iter().enumerate() {
        let label = node_label(n, i);
        b.node(n, &label).map_err(|e| match e {
            Error::Onnx(msg) if msg.starts_with("node '") || msg.starts_with(FLOAT_ISLAND) => {
                Error::Onnx(msg)
            }
            Error::Onnx(msg) | Error::Numerical(msg) | Error::Shape(msg) => {
                Error::Onnx(format!("node '{label}' ({}): {msg}", n.op_type))
            }
            other => other,
        })?;
        if n.domain == "com.microsoft" && ms_opset != Some(1) && !fused.fused[i] {
            bail!(
                Onnx,
                "node '{label}' ({}): uses the com.microsoft domain, which the model does not import at version 1",
                n.op_type
            );
        }
    }

    if g.output.len() != 1 {
        bail!(
            Onnx,
            "the graph has {} outputs; exactly one (float logits) is supported",
            g.output.len()
        );
    }
    let out_name = &g.output[0].name;
    let Some(&output) = b.by_name.get(out_name) else {
        bail!(Onnx, "graph output '{out_name}' is produced by no node");
    };
    if b.float_consts.contains(&output) {
        bail!(
            Onnx,
            "graph output '{out_name}' is a dequantized constant, not computed from the input"
        );
    }
    if b.slots[output].ty != ElemType::F32 {
        bail!(
            Onnx,
            "graph output '{out_name}' is {}, expected float",
            b.slots[output].ty.name()
        );
    }
    let metadata = m
        .metadata_props
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    Ok(Plan {
        slots: b.slots,
        steps: b.steps,
        input,
        batch,
        output,
        metadata,
    })
}

/// `[batch, C, H, W]` float; C, H, W fixed and positive.
fn input_shape(vi: &ValueInfoProto) -> Result<(Vec<usize>, Option<usize>)> {
    let what = format!("graph input '{}'", vi.name);
    let Some(tp) = vi.type_.as_ref() else {
        bail!(Onnx, "{what} has no type");
    };
    let Some(type_proto::Value::TensorType(t)) = &tp.value else {
        bail!(Onnx, "{what} is not a tensor");
    };
    if ElemType::from_onnx(t.elem_type) != Some(ElemType::F32) {
        bail!(
            Onnx,
            "{what} is {}, expected float",
            onnx_type_name(t.elem_type)
        );
    }
    let Some(shape) = t.shape.as_ref() else {
        bail!(Onnx, "{what} has no shape");
    };
    if shape.dim.len() != 4 {
        bail!(
            Onnx,
            "{what} has rank {}, expected 4 (NCHW)",
            shape.dim.len()
        );
    }
    let batch = match &shape.dim[0].value {
        Some(dimension::Value::DimValue(v)) if *v > 0 => Some(
            usize::try_from(*v).map_err(|_| Error::Onnx(format!("{what}: batch {v} too large")))?,
        ),
        Some(dimension::Value::DimValue(v)) => bail!(Onnx, "{what}: batch dimension {v}"),
        _ => None,
    };
    let mut dims = Vec::new();
    for (i, d) in shape.dim[1..].iter().enumerate() {
        match &d.value {
            Some(dimension::Value::DimValue(v)) if *v > 0 => dims.push(*v),
            _ => bail!(
                Onnx,
                "{what}: dimension {} must be a fixed positive size",
                i + 1
            ),
        }
    }
    let (dims, _) = checked_dims(&dims, &what)?;
    Ok((dims, batch))
}

struct PlanBuilder {
    /// The standard opset the model imports.
    opset: i64,
    /// Float slots of dequantized constants, which no step computes: only
    /// float ops (refused) can read them.
    float_consts: std::collections::HashSet<usize>,
    consts: HashMap<String, Const>,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    steps: Vec<Step>,
}

/// The attributes of a node, by name, with the allowed set checked.
struct Attrs<'a>(HashMap<&'a str, &'a AttributeProto>);

impl<'a> Attrs<'a> {
    fn new(n: &'a NodeProto, allowed: &[&str]) -> Result<Self> {
        let mut m = HashMap::new();
        for a in &n.attribute {
            if !allowed.contains(&a.name.as_str()) {
                bail!(Onnx, "attribute '{}' is not supported", a.name);
            }
            if m.insert(a.name.as_str(), a).is_some() {
                bail!(Onnx, "attribute '{}' appears twice", a.name);
            }
        }
        Ok(Attrs(m))
    }

    fn float(&self, name: &str, default: f32) -> Result<f32> {
        match self.0.get(name) {
            None => Ok(default),
            Some(a) if a.type_.value() == AttributeType::FLOAT as i32 => Ok(a.f),
            Some(_) => bail!(Onnx, "attribute '{name}' must be a float"),
        }
    }

    fn int(&self, name: &str, default: i64) -> Result<i64> {
        match self.0.get(name) {
            None => Ok(default),
            Some(a) if a.type_.value() == AttributeType::INT as i32 => Ok(a.i),
            Some(_) => bail!(Onnx, "attribute '{name}' must be an int"),
        }
    }

    /// An INTS attribute of exactly `len` values in `[lo, MAX_ATTR]`.
    fn ints(&self, name: &str, len: usize, lo: i64) -> Result<Option<Vec<usize>>> {
        let Some(a) = self.0.get(name) else {
            return Ok(None);
        };
        if a.type_.value() != AttributeType::INTS as i32 {
            bail!(Onnx, "attribute '{name}' must be a list of ints");
        }
        if a.ints.len() != len {
            bail!(
                Onnx,
                "attribute '{name}' has {} values, expected {len}",
                a.ints.len()
            );
        }
        if let Some(v) = a.ints.iter().find(|&&v| v < lo || v > MAX_ATTR) {
            bail!(
                Onnx,
                "attribute '{name}' has value {v} outside [{lo}, {MAX_ATTR}]"
            );
        }
        Ok(Some(a.ints.iter().map(|&v| v as usize).collect()))
    }

    /// The `auto_pad` attribute.
    fn auto_pad(&self) -> Result<AutoPad> {
        let Some(a) = self.0.get("auto_pad") else {
            return Ok(AutoPad::NotSet);
        };
        if a.type_.value() != AttributeType::STRING as i32 {
            bail!(Onnx, "attribute 'auto_pad' must be a string");
        }
        if self.0.contains_key("pads") && a.s != b"NOTSET" {
            bail!(Onnx, "auto_pad and pads are both set");
        }
        Ok(match a.s.as_slice() {
            b"NOTSET" => AutoPad::NotSet,
            b"VALID" => AutoPad::Valid,
            b"SAME_UPPER" => AutoPad::Same { upper: true },
            b"SAME_LOWER" => AutoPad::Same { upper: false },
            other => bail!(
                Onnx,
                "auto_pad '{}' is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER",
                String::from_utf8_lossy(other)
            ),
        })
    }

    fn check_auto_pad(&self) -> Result<()> {
        if let Some(a) = self.0.get("auto_pad") {
            if a.type_.value() != AttributeType::STRING as i32 || a.s != b"NOTSET" {
                bail!(Onnx, "auto_pad must be NOTSET (explicit pads)");
            }
        }
        Ok(())
    }
}

impl PlanBuilder {
    fn add_slot(&mut self, name: &str, ty: ElemType, dims: Vec<usize>, by: &str) -> Result<usize> {
        if name.is_empty() {
            bail!(Onnx, "{by}: an output has no name");
        }
        if self.by_name.contains_key(name) || self.consts.contains_key(name) {
            bail!(Onnx, "{by}: tensor '{name}' is defined more than once");
        }
        if dims.contains(&0) {
            bail!(Onnx, "{by}: tensor '{name}' of {dims:?} per image is empty");
        }
        let n = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= MAX_ELEMENTS);
        if n.is_none() {
            bail!(
                Onnx,
                "{by}: tensor '{name}' of {dims:?} per image exceeds {MAX_ELEMENTS} elements"
            );
        }
        self.slots.push(Slot {
            name: name.to_string(),
            ty,
            dims,
        });
        self.by_name.insert(name.to_string(), self.slots.len() - 1);
        Ok(self.slots.len() - 1)
    }

    /// A computed (non-constant) input of type `ty`.
    fn act(&self, n: &NodeProto, i: usize, ty: ElemType) -> Result<usize> {
        let name = &n.input[i];
        let Some(&s) = self.by_name.get(name) else {
            if self.consts.contains_key(name) {
                bail!(
                    Onnx,
                    "input {i} '{name}' must be computed, not an initializer"
                );
            }
            bail!(
                Onnx,
                "input {i} '{name}' is not produced by any earlier node or the graph input"
            );
        };
        if self.slots[s].ty != ty {
            bail!(
                Onnx,
                "input {i} '{name}' is {}, expected {}",
                self.slots[s].ty.name(),
                ty.name()
            );
        }
        Ok(s)
    }

    fn konst(&self, n: &NodeProto, i: usize) -> Result<&Const> {
        let name = &n.input[i];
        match self.consts.get(name) {
            Some(c) => Ok(c),
            None => bail!(
                Onnx,
                "input {i} '{name}' must be an initializer (missing or computed)"
            ),
        }
    }

    /// A positive finite float scale, scalar or one value per channel.
    fn scales(&self, n: &NodeProto, i: usize, per_channel: Option<usize>) -> Result<Vec<f32>> {
        let c = self.konst(n, i)?;
        let Data::F32(v) = &c.data else {
            bail!(
                Onnx,
                "scale input {i} '{}' is {}, expected float",
                n.input[i],
                c.data.elem_type().name()
            );
        };
        scalar_or_per_channel(n, i, "scale", &c.dims, v.len(), per_channel)?;
        if let Some(s) = v.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!(
                Onnx,
                "scale input {i} '{}' holds {s}, not a positive finite number",
                n.input[i]
            );
        }
        Ok(v.clone())
    }

    fn scale(&self, n: &NodeProto, i: usize) -> Result<f32> {
        Ok(self.scales(n, i, None)?[0])
    }

    /// An int8 or uint8 zero point, scalar or per channel, in the int8
    /// domain the executor computes in (uint8 values shifted by -128, see
    /// [`ElemType::U8`]), with its type.
    fn zero_points(
        &self,
        n: &NodeProto,
        i: usize,
        per_channel: Option<usize>,
    ) -> Result<(Vec<i32>, ElemType)> {
        let c = self.konst(n, i)?;
        let v: Vec<i32> = match &c.data {
            Data::I8(v) => v.iter().map(|&z| z as i32).collect(),
            Data::U8(v) => v.iter().map(|&z| z as i32 - 128).collect(),
            other => bail!(
                Onnx,
                "zero point input {i} '{}' is {}, expected int8 or uint8",
                n.input[i],
                other.elem_type().name()
            ),
        };
        scalar_or_per_channel(n, i, "zero point", &c.dims, v.len(), per_channel)?;
        Ok((v, c.data.elem_type()))
    }

    /// A scalar zero point and the type it gives the tensor it belongs to.
    /// The weight zero points of a convolution or GEMM (input `i`, of the
    /// weight's type `wty`, scalar or per output channel) in the int8
    /// domain, one per output channel, after checking that the int32
    /// accumulator cannot overflow: `max |w - z_w| * 255 * k < 2^31`.
    fn weight_zero(
        &self,
        n: &NodeProto,
        i: usize,
        wty: ElemType,
        c_out: usize,
        weight: &[i8],
        k: usize,
    ) -> Result<Vec<i32>> {
        let (z, zt) = self.zero_points(n, i, Some(c_out))?;
        if zt != wty {
            bail!(
                Onnx,
                "weight zero point '{}' is {} but the weight is {}",
                n.input[i],
                zt.name(),
                wty.name()
            );
        }
        let z = if z.len() == 1 { vec![z[0]; c_out] } else { z };
        let max_w = (0..c_out)
            .map(|o| {
                weight[o * k..][..k]
                    .iter()
                    .map(|&w| (w as i64 - z[o] as i64).abs())
                    .max()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        if max_w * 255 * k as i64 > i32::MAX as i64 {
            bail!(
                Onnx,
                "reduction length {k} with weights up to {max_w} from their zero point could \
overflow the int32 accumulator"
            );
        }
        Ok(z)
    }

    fn zero_point_typed(&self, n: &NodeProto, i: usize) -> Result<(i32, ElemType)> {
        let (v, ty) = self.zero_points(n, i, None)?;
        Ok((v[0], ty))
    }

    /// The scalar zero point of a tensor of type `ty` (int8 or uint8): its
    /// type must be the tensor's, as ONNX requires.
    fn zero_point_for(&self, n: &NodeProto, i: usize, ty: ElemType) -> Result<i32> {
        let (z, zt) = self.zero_point_typed(n, i)?;
        if zt != ty {
            bail!(
                Onnx,
                "zero point input {i} '{}' is {} but the tensor it belongs to is {}",
                n.input[i],
                zt.name(),
                ty.name()
            );
        }
        Ok(z)
    }

    /// A computed int8 or uint8 input, with its type.
    fn qact(&self, n: &NodeProto, i: usize) -> Result<(usize, ElemType)> {
        let name = &n.input[i];
        match self.by_name.get(name).map(|&s| (s, self.slots[s].ty)) {
            Some((s, ty @ (ElemType::I8 | ElemType::U8))) => Ok((s, ty)),
            Some((_, ElemType::F32)) => bail!(Onnx, "{}", float_input(n, i)),
            _ => Ok((self.act(n, i, ElemType::I8)?, ElemType::I8)),
        }
    }

    fn arity(n: &NodeProto, lo: usize, hi: usize) -> Result<()> {
        if n.input.len() < lo || n.input.len() > hi {
            bail!(
                Onnx,
                "has {} inputs, expected {}",
                n.input.len(),
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo} to {hi}")
                }
            );
        }
        if let Some(i) = n.input[..lo].iter().position(String::is_empty) {
            bail!(Onnx, "required input {i} is empty");
        }
        let outputs = n.output.iter().filter(|o| !o.is_empty()).count();
        if n.output.is_empty() || n.output[0].is_empty() || outputs != 1 {
            bail!(Onnx, "must have exactly one output");
        }
        Ok(())
    }

    fn push(
        &mut self,
        n: &NodeProto,
        label: &str,
        op: Op,
        inputs: Vec<usize>,
        ty: ElemType,
        dims: Vec<usize>,
    ) -> Result<()> {
        let output = self.add_slot(&n.output[0], ty, dims, &format!("node '{label}'"))?;
        self.steps.push(Step {
            node: label.to_string(),
            op_type: n.op_type.clone(),
            op,
            inputs,
            output,
        });
        Ok(())
    }

    fn node(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        let domain = n.domain.as_str();
        match (domain, n.op_type.as_str()) {
            ("" | "ai.onnx", "QuantizeLinear") => {
                Self::arity(n, 2, 3)?;
                let attrs = Attrs::new(n, &["axis", "block_size", "output_dtype", "saturate"])?;
                if attrs.int("block_size", 0)? != 0 {
                    bail!(Onnx, "blocked quantization (block_size) is not supported");
                }
                let x = self.act(n, 0, ElemType::F32)?;
                if self.float_consts.contains(&x) {
                    bail!(Onnx, "{}", float_input(n, 0));
                }
                let scale = self.scale(n, 1)?;
                // Without a zero point the output is uint8 with zero point 0
                // (or the type `output_dtype` names).
                let dtype = attrs.int("output_dtype", 0)?;
                let (zero_point, ty) = if n.input.len() == 3 && !n.input[2].is_empty() {
                    self.zero_point_typed(n, 2)?
                } else {
                    match ElemType::from_onnx(dtype as i32) {
                        _ if dtype == 0 => (-128, ElemType::U8),
                        Some(ElemType::U8) => (-128, ElemType::U8),
                        Some(ElemType::I8) => (0, ElemType::I8),
                        _ => bail!(
                            Onnx,
                            "output_dtype {} is not supported (int8 or uint8)",
                            onnx_type_name(dtype as i32)
                        ),
                    }
                };
                if dtype != 0 && ElemType::from_onnx(dtype as i32) != Some(ty) {
                    bail!(
                        Onnx,
                        "output_dtype {} differs from the zero point's type {}",
                        onnx_type_name(dtype as i32),
                        ty.name()
                    );
                }
                let dims = self.slots[x].dims.clone();
                self.push(
                    n,
                    label,
                    Op::Quantize { scale, zero_point },
                    vec![x],
                    ty,
                    dims,
                )
            }
            ("" | "ai.onnx", "DequantizeLinear") => {
                Self::arity(n, 2, 3)?;
                let attrs = Attrs::new(n, &["axis", "block_size", "output_dtype"])?;
                if attrs.int("block_size", 0)? != 0 {
                    bail!(Onnx, "blocked quantization (block_size) is not supported");
                }
                if attrs.int("output_dtype", 0)? > 1 {
                    bail!(Onnx, "only float output (output_dtype 1) is supported");
                }
                // A constant dequantized for a float op that no QDQ group
                // took in (e.g. a Conv followed by a float
                // BatchNormalization): a float tensor no step computes, so
                // that the op reading it is reported as computing in float.
                if let Some(c) = self.consts.get(&n.input[0]) {
                    let dims = c.dims.clone();
                    let s = self.add_slot(
                        &n.output[0],
                        ElemType::F32,
                        dims,
                        &format!("node '{label}'"),
                    )?;
                    self.float_consts.insert(s);
                    return Ok(());
                }
                let (x, ty) = self.qact(n, 0)?;
                let scale = self.scale(n, 1)?;
                let zero_point = if n.input.len() == 3 && !n.input[2].is_empty() {
                    self.zero_point_for(n, 2, ty)?
                } else if ty == ElemType::U8 {
                    -128
                } else {
                    0
                };
                let dims = self.slots[x].dims.clone();
                self.push(
                    n,
                    label,
                    Op::Dequantize { scale, zero_point },
                    vec![x],
                    ElemType::F32,
                    dims,
                )
            }
            ("" | "ai.onnx", "QLinearConv") => self.qlinear_conv(n, label),
            ("com.microsoft", "QGemm") => self.qgemm(n, label),
            ("" | "ai.onnx", "QLinearMatMul") => self.qlinear_matmul(n, label),
            ("com.microsoft", "QLinearAdd") => self.qlinear_add(n, label),
            ("com.microsoft", "QLinearLeakyRelu" | "QLinearSigmoid") => {
                self.qlinear_lookup(n, label)
            }
            ("" | "ai.onnx", "Transpose") => {
                Self::arity(n, 1, 1)?;
                let attrs = Attrs::new(n, &["perm"])?;
                let (x, ty) = self.qact(n, 0)?;
                let perm = match attrs.0.get("perm") {
                    None => None,
                    Some(a) if a.type_.value() == AttributeType::INTS as i32 => {
                        Some(a.ints.as_slice())
                    }
                    Some(_) => bail!(Onnx, "attribute 'perm' must be a list of ints"),
                };
                let t = Transpose::new(perm, &self.slots[x].dims)?;
                let dims = t.out_dims.clone();
                self.push(n, label, Op::Transpose(t), vec![x], ty, dims)
            }
            ("" | "ai.onnx", "Reshape") => {
                Self::arity(n, 2, 2)?;
                let attrs = Attrs::new(n, &["allowzero"])?;
                let (x, ty) = self.qact(n, 0)?;
                let c = self.konst(n, 1)?;
                let Data::I64(shape) = &c.data else {
                    bail!(
                        Onnx,
                        "shape input 1 '{}' is {}, expected an int64 initializer",
                        n.input[1],
                        c.data.elem_type().name()
                    );
                };
                if c.dims.len() != 1 {
                    bail!(Onnx, "shape input 1 '{}' must be 1-D", n.input[1]);
                }
                let dims =
                    reshape_dims(shape, &self.slots[x].dims, attrs.int("allowzero", 0)? != 0)?;
                self.push(n, label, Op::Flatten, vec![x], ty, dims)
            }
            ("" | "ai.onnx", "MaxPool") => self.max_pool(n, label),
            ("com.microsoft", "QLinearGlobalAveragePool") => {
                Self::arity(n, 5, 5)?;
                let attrs = Attrs::new(n, &["channels_last"])?;
                if attrs.int("channels_last", 0)? != 0 {
                    bail!(Onnx, "channels_last = 1 is not supported");
                }
                let (x, tx) = self.qact(n, 0)?;
                let d = self.slots[x].dims.clone();
                if d.len() != 3 {
                    bail!(Onnx, "input has rank {}, expected 4 (NCHW)", d.len() + 1);
                }
                let hw = d[1] * d[2];
                if hw == 0 || hw > (i32::MAX / 255) as usize {
                    bail!(Onnx, "pooling window of {hw} values is not supported");
                }
                let (s_in, z_in) = (self.scale(n, 1)?, self.zero_point_for(n, 2, tx)?);
                let (s_out, (z_out, ty)) = (self.scale(n, 3)?, self.zero_point_typed(n, 4)?);
                let rq = pool::gap_requant(s_in, s_out, hw, z_out)?;
                self.push(
                    n,
                    label,
                    Op::Gap { hw, z_in, rq },
                    vec![x],
                    ty,
                    vec![d[0], 1, 1],
                )
            }
            ("com.microsoft", "QLinearAveragePool") => self.qlinear_avg_pool(n, label),
            ("com.microsoft", "QLinearConcat") => self.qlinear_concat(n, label),
            ("" | "ai.onnx", "Clip") => {
                // Opset 11 on: the bounds are (optional) inputs.
                Self::arity(n, 1, 3)?;
                Attrs::new(n, &[])?;
                let x = self.act(n, 0, ElemType::I8)?;
                let bound = |i: usize, default: i8| -> Result<i8> {
                    if n.input.len() <= i || n.input[i].is_empty() {
                        return Ok(default);
                    }
                    let c = self.konst(n, i)?;
                    match &c.data {
                        Data::I8(v) if c.dims.len() <= 1 && v.len() == 1 => Ok(v[0]),
                        _ => bail!(
                            Onnx,
                            "bound input {i} '{}' must be an int8 scalar (the input is int8)",
                            n.input[i]
                        ),
                    }
                };
                let (lo, hi) = (bound(1, i8::MIN)?, bound(2, i8::MAX)?);
                if lo > hi {
                    bail!(Onnx, "min {lo} is above max {hi}");
                }
                let dims = self.slots[x].dims.clone();
                self.push(n, label, Op::Clip { lo, hi }, vec![x], ElemType::I8, dims)
            }
            ("" | "ai.onnx", "Identity") => {
                Self::arity(n, 1, 1)?;
                Attrs::new(n, &[])?;
                let (x, ty) = self.qact(n, 0)?;
                let dims = self.slots[x].dims.clone();
                self.push(n, label, Op::Flatten, vec![x], ty, dims)
            }
            ("" | "ai.onnx", "Flatten") => {
                Self::arity(n, 1, 1)?;
                let attrs = Attrs::new(n, &["axis"])?;
                let (x, ty) = self.qact(n, 0)?;
                // Per image: dims without the batch; the batch is axis 0.
                let d = self.slots[x].dims.clone();
                let rank = d.len() as i64 + 1;
                let axis = attrs.int("axis", 1)?;
                let axis = if axis < 0 { axis + rank } else { axis };
                if axis == 0 {
                    bail!(
                        Onnx,
                        "axis 0 would merge the batch into one row, which is not supported"
                    );
                }
                if !(1..=rank).contains(&axis) {
                    bail!(Onnx, "axis {axis} is outside [-{rank}, {rank}]");
                }
                let k = axis as usize - 1;
                let dims = if k == 0 {
                    vec![self.slots[x].numel()]
                } else {
                    vec![d[..k].iter().product(), d[k..].iter().product()]
                };
                self.push(n, label, Op::Flatten, vec![x], ty, dims)
            }
            ("" | "ai.onnx", "ConvInteger" | "MatMulInteger") => bail!(
                Onnx,
                "{} writes int32 for float ops to rescale (ONNX Runtime's dynamic \
quantization, with DynamicQuantizeLinear computing scales at run time), so the graph is not a \
static int8 one; quantize it statically (quantize_static, QOperator or QDQ) for the executor",
                n.op_type
            ),
            (d, op) => {
                // A float op between quantized ones (an input computed in
                // float, i.e. after a DequantizeLinear).
                if let Some(i) = (0..n.input.len()).find(|&i| {
                    self.by_name
                        .get(&n.input[i])
                        .is_some_and(|&s| self.slots[s].ty == ElemType::F32)
                }) {
                    bail!(Onnx, "{}", float_input(n, i));
                }
                let d = if d.is_empty() { "ai.onnx" } else { d };
                bail!(
                    Onnx,
                    "op {op} of domain {d} is not supported by the int8 executor (supported: \
QuantizeLinear, DequantizeLinear, QLinearConv, QLinearMatMul, MaxPool, Flatten, Reshape, \
Transpose, Clip, Identity and, from com.microsoft, QLinearAdd, QGemm, QLinearGlobalAveragePool, \
QLinearAveragePool, QLinearConcat, QLinearLeakyRelu, QLinearSigmoid; and DequantizeLinear -> \
op -> QuantizeLinear groups of Conv, Gemm, MatMul, Add, GlobalAveragePool, AveragePool, \
LeakyRelu, Sigmoid, MaxPool, Concat, Flatten, Reshape, Transpose, which are fused into those)"
                )
            }
        }
    }

    /// Input `i` of a binary QLinear op: computed (int8 or uint8), or an
    /// int8 / uint8 initializer (uint8 values shifted into the int8 domain).
    fn qoperand(&self, n: &NodeProto, i: usize) -> Result<(Shape<'_>, ElemType)> {
        if let Some(c) = self.consts.get(&n.input[i]) {
            let Some(v) = c.data.to_int8_domain() else {
                bail!(
                    Onnx,
                    "input {i} '{}' is a {} initializer, expected int8 or uint8",
                    n.input[i],
                    c.data.elem_type().name()
                );
            };
            return Ok((Shape::Constant(&c.dims, v), c.data.elem_type()));
        }
        let (s, ty) = self.qact(n, i)?;
        Ok((Shape::Computed(&self.slots[s].dims), ty))
    }

    /// com.microsoft QLinearAdd: elementwise on equal shapes, else numpy
    /// broadcasting (either input may be a constant).
    fn qlinear_add(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        Self::arity(n, 8, 8)?;
        Attrs::new(n, &[])?;
        let (sa, ta) = self.qoperand(n, 0)?;
        let (sb, tb) = self.qoperand(n, 3)?;
        let (z_c, ty) = self.zero_point_typed(n, 7)?;
        let rq = AddRequant::new(
            self.scale(n, 1)?,
            self.zero_point_for(n, 2, ta)?,
            self.scale(n, 4)?,
            self.zero_point_for(n, 5, tb)?,
            self.scale(n, 6)?,
            z_c,
            false,
        )?;
        if let (Shape::Computed(da), Shape::Computed(db)) = (&sa, &sb) {
            if da == db {
                let dims = da.to_vec();
                let inputs = vec![self.by_name[&n.input[0]], self.by_name[&n.input[3]]];
                return self.push(
                    n,
                    label,
                    Op::Add(Box::new(AddTable::new(rq))),
                    inputs,
                    ty,
                    dims,
                );
            }
        }
        if matches!((&sa, &sb), (Shape::Constant(..), Shape::Constant(..))) {
            bail!(Onnx, "both inputs are constants: nothing is computed");
        }
        let inputs: Vec<usize> = [0, 3]
            .iter()
            .filter_map(|&i| self.by_name.get(&n.input[i]).copied())
            .collect();
        let op = BroadcastAdd::new(rq, sa, sb)?;
        let dims = op.out_dims.clone();
        self.push(n, label, Op::BroadcastAdd(Box::new(op)), inputs, ty, dims)
    }

    /// com.microsoft QLinearLeakyRelu / QLinearSigmoid: inputs X, X_scale,
    /// X_zero_point (optional), Y_scale, Y_zero_point (optional), one type
    /// for X and Y; run as ONNX Runtime's 256-entry table.
    fn qlinear_lookup(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        Self::arity(n, 4, 5)?;
        let leaky = n.op_type == "QLinearLeakyRelu";
        let attrs = Attrs::new(n, if leaky { &["alpha"] } else { &[] })?;
        let (x, ty) = self.qact(n, 0)?;
        let zero = |i: usize| -> Result<i32> {
            if n.input.len() > i && !n.input[i].is_empty() {
                self.zero_point_for(n, i, ty)
            } else {
                Ok(if ty == ElemType::U8 { -128 } else { 0 })
            }
        };
        let (s_x, z_x) = (self.scale(n, 1)?, zero(2)?);
        let (s_y, z_y) = (self.scale(n, 3)?, zero(4)?);
        let act = if leaky {
            let alpha = attrs.float("alpha", 0.01)?;
            if !alpha.is_finite() {
                bail!(Onnx, "alpha {alpha} is not finite");
            }
            lookup::Activation::LeakyRelu { alpha }
        } else {
            lookup::Activation::Sigmoid
        };
        let table = lookup::build_table(act, s_x, z_x, s_y, z_y);
        let dims = self.slots[x].dims.clone();
        self.push(n, label, Op::Lookup(table), vec![x], ty, dims)
    }

    fn qlinear_conv(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        Self::arity(n, 8, 9)?;
        let attrs = Attrs::new(
            n,
            &[
                "auto_pad",
                "dilations",
                "group",
                "kernel_shape",
                "pads",
                "strides",
            ],
        )?;
        let (x, tx) = self.qact(n, 0)?;
        let d = self.slots[x].dims.clone();
        if d.len() != 3 {
            bail!(
                Onnx,
                "input has rank {}, only 2-d convolutions (rank 4) are supported",
                d.len() + 1
            );
        }
        let (c_in, h, w) = (d[0], d[1], d[2]);
        let wc = self.konst(n, 3)?;
        let Some(weight) = wc.data.to_int8_domain() else {
            bail!(
                Onnx,
                "weight '{}' is {}, expected int8 or uint8",
                n.input[3],
                wc.data.elem_type().name()
            );
        };
        if wc.dims.len() != 4 {
            bail!(
                Onnx,
                "weight '{}' has shape {:?}, expected 4-d OIHW",
                n.input[3],
                wc.dims
            );
        }
        let (c_out, cg, kh, kw) = (wc.dims[0], wc.dims[1], wc.dims[2], wc.dims[3]);
        let group = attrs.int("group", 1)?;
        if group < 1 || group as usize > c_in.max(1) {
            bail!(Onnx, "group {group} is invalid for {c_in} input channels");
        }
        let groups = group as usize;
        if c_out == 0 || cg == 0 || kh == 0 || kw == 0 || cg * groups != c_in || c_out % groups != 0
        {
            bail!(
                Onnx,
                "weight shape {:?} does not fit {c_in} input channels with group {groups}",
                wc.dims
            );
        }
        if let Some(k) = attrs.ints("kernel_shape", 2, 1)? {
            if k != [kh, kw] {
                bail!(
                    Onnx,
                    "kernel_shape {k:?} differs from the weight's {:?}",
                    [kh, kw]
                );
            }
        }
        let stride = attrs.ints("strides", 2, 1)?.unwrap_or(vec![1, 1]);
        let dil = attrs.ints("dilations", 2, 1)?.unwrap_or(vec![1, 1]);
        let eff_h = dil[0] * (kh - 1) + 1;
        let eff_w = dil[1] * (kw - 1) + 1;
        let pads = match attrs.auto_pad()? {
            AutoPad::NotSet => attrs.ints("pads", 4, 0)?.unwrap_or(vec![0; 4]),
            AutoPad::Valid => vec![0; 4],
            AutoPad::Same { upper } => {
                let (ph, pw) = (
                    same_pads(h, stride[0], eff_h, upper),
                    same_pads(w, stride[1], eff_w, upper),
                );
                vec![ph.0, pw.0, ph.1, pw.1]
            }
        };
        let k = cg * kh * kw;
        if k > MAX_CONV_K {
            bail!(
                Onnx,
                "reduction length {k} could overflow the int32 accumulator"
            );
        }
        let (ph, pw) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
        if ph < eff_h || pw < eff_w {
            bail!(
                Onnx,
                "kernel {kh}x{kw} (dilations {dil:?}) does not fit input {h}x{w} with pads {pads:?}"
            );
        }
        let (out_h, out_w) = ((ph - eff_h) / stride[0] + 1, (pw - eff_w) / stride[1] + 1);
        let col = k.checked_mul(out_h * out_w).filter(|&v| v <= MAX_ELEMENTS);
        if col.is_none() {
            bail!(
                Onnx,
                "convolution of {k} x {out_h}x{out_w} exceeds the size limit"
            );
        }
        let s_x = self.scale(n, 1)?;
        let z_x = self.zero_point_for(n, 2, tx)?;
        let s_w = self.scales(n, 4, Some(c_out))?;
        let weight_zero = self.weight_zero(n, 5, wc.data.elem_type(), c_out, &weight, k)?;
        let s_y = self.scale(n, 6)?;
        let (z_y, ty) = self.zero_point_typed(n, 7)?;
        let bias = if n.input.len() == 9 && !n.input[8].is_empty() {
            let bc = self.konst(n, 8)?;
            match &bc.data {
                Data::I32(v) if bc.dims.len() == 1 && v.len() == c_out => v.clone(),
                _ => bail!(
                    Onnx,
                    "bias '{}' must be int32 of shape [{c_out}], got {} {:?}",
                    n.input[8],
                    bc.data.elem_type().name(),
                    bc.dims
                ),
            }
        } else {
            vec![0; c_out]
        };
        let requant = (0..c_out)
            .map(|c| {
                let s_w = s_w[if s_w.len() == 1 { 0 } else { c }];
                Requant::from_scales(s_x, s_w, s_y, z_y, false)
                    .map_err(|e| Error::Onnx(format!("output channel {c}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        debug_assert!(requant.iter().all(|r| r.lo == ACT_QMIN && r.hi == ACT_QMAX));
        let op = ConvOp {
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride: (stride[0], stride[1]),
            pad_begin: (pads[0], pads[1]),
            dilation: (dil[0], dil[1]),
            groups,
            out_h,
            out_w,
            z_x,
            weight,
            weight_zero,
            bias,
            requant,
            prepared: Default::default(),
        };
        // Pack the weights now, at plan time.
        op.prepare();
        self.push(
            n,
            label,
            Op::Conv(Box::new(op)),
            vec![x],
            ty,
            vec![c_out, out_h, out_w],
        )
    }

    /// The computed `[N, K]` input of a GEMM (per image `[K]`, or a pooled
    /// `[C, 1, 1]`).
    fn gemm_input(&self, n: &NodeProto) -> Result<(usize, ElemType, usize)> {
        let (a, ty) = self.qact(n, 0)?;
        let d = &self.slots[a].dims;
        if d.len() != 1 && !(d.len() == 3 && d[1] == 1 && d[2] == 1) {
            bail!(
                Onnx,
                "input 0 '{}' has shape {:?} per image; a matrix [N, K] is expected",
                n.input[0],
                d
            );
        }
        Ok((a, ty, d[0]))
    }

    /// A constant int8 / uint8 matrix `B` (input `i`) as the `[M, K]`
    /// weight of a 1x1 convolution (int8 domain), with its type.
    fn gemm_weight(
        &self,
        n: &NodeProto,
        i: usize,
        k: usize,
        trans_b: bool,
    ) -> Result<(Vec<i8>, ElemType, usize)> {
        let c = self.konst(n, i)?;
        let Some(v) = c.data.to_int8_domain() else {
            bail!(
                Onnx,
                "B '{}' is {}, expected int8 or uint8",
                n.input[i],
                c.data.elem_type().name()
            );
        };
        let (rows, cols) = match c.dims[..] {
            [r, c] => (r, c),
            _ => bail!(
                Onnx,
                "B '{}' has shape {:?}, expected a matrix",
                n.input[i],
                c.dims
            ),
        };
        let (kb, m) = if trans_b { (cols, rows) } else { (rows, cols) };
        if kb != k || m == 0 {
            bail!(
                Onnx,
                "B '{}' of shape {:?}{} does not fit an input of {k} columns",
                n.input[i],
                c.dims,
                if trans_b { " (transB)" } else { "" }
            );
        }
        if k > MAX_CONV_K {
            bail!(
                Onnx,
                "reduction length {k} could overflow the int32 accumulator"
            );
        }
        let w = if trans_b {
            v
        } else {
            let mut t = vec![0i8; v.len()];
            for r in 0..k {
                for col in 0..m {
                    t[col * k + r] = v[r * m + col];
                }
            }
            t
        };
        Ok((w, c.data.elem_type(), m))
    }

    /// A GEMM as the 1x1 convolution of a `[K, 1, 1]` image; `s_a` already
    /// includes QGemm's `alpha`.
    #[allow(clippy::too_many_arguments)]
    fn push_gemm(
        &mut self,
        n: &NodeProto,
        label: &str,
        a: usize,
        k: usize,
        (s_a, z_a): (f32, i32),
        (weight, weight_zero, s_w): (Vec<i8>, Vec<i32>, Vec<f32>),
        bias: Vec<i32>,
        (s_y, z_y, ty): (f32, i32, ElemType),
    ) -> Result<()> {
        let m = weight.len() / k;
        let requant = (0..m)
            .map(|c| {
                let s_w = s_w[if s_w.len() == 1 { 0 } else { c }];
                Requant::from_scales(s_a, s_w, s_y, z_y, false)
                    .map_err(|e| Error::Onnx(format!("output column {c}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let op = ConvOp {
            c_in: k,
            h: 1,
            w: 1,
            c_out: m,
            kh: 1,
            kw: 1,
            stride: (1, 1),
            pad_begin: (0, 0),
            dilation: (1, 1),
            groups: 1,
            out_h: 1,
            out_w: 1,
            z_x: z_a,
            weight,
            weight_zero,
            bias,
            requant,
            prepared: Default::default(),
        };
        op.prepare();
        self.push(n, label, Op::Conv(Box::new(op)), vec![a], ty, vec![m])
    }

    /// com.microsoft QGemm: `Y = alpha * (A - z_a)(B - z_b) + C` requantized
    /// with `M = fl32(fl32(fl32(alpha * s_a) * s_b) / s_y)`, as ONNX
    /// Runtime's kernel computes the output scale; lowered onto a 1x1
    /// convolution.
    fn qgemm(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        Self::arity(n, 6, 9)?;
        let attrs = Attrs::new(n, &["alpha", "transA", "transB"])?;
        if attrs.int("transA", 0)? != 0 {
            bail!(Onnx, "transA = 1 is not supported");
        }
        let trans_b = attrs.int("transB", 0)? != 0;
        let alpha = attrs.float("alpha", 1.0)?;
        if !(alpha.is_finite() && alpha > 0.0) {
            bail!(Onnx, "alpha {alpha} is not a positive finite number");
        }
        let has = |i: usize| n.input.len() > i && !n.input[i].is_empty();
        if !has(7) {
            bail!(
                Onnx,
                "QGemm without y_scale (float output) is not supported: the executor's \
computed tensors are int8"
            );
        }
        let (a, ta, k) = self.gemm_input(n)?;
        let s_a = self.scale(n, 1)?;
        let z_a = self.zero_point_for(n, 2, ta)?;
        let (weight, wty, m) = self.gemm_weight(n, 3, k, trans_b)?;
        let s_w = self.scales(n, 4, Some(m))?;
        let weight_zero = self.weight_zero(n, 5, wty, m, &weight, k)?;
        let bias = if has(6) {
            let c = self.konst(n, 6)?;
            match &c.data {
                Data::I32(v) if v.len() == m && c.dims.iter().product::<usize>() == m => v.clone(),
                Data::I32(v) if v.len() == 1 => vec![v[0]; m],
                _ => bail!(
                    Onnx,
                    "C '{}' must be int32 of shape [{m}], [1, {m}] or a scalar, got {} {:?}",
                    n.input[6],
                    c.data.elem_type().name(),
                    c.dims
                ),
            }
        } else {
            vec![0; m]
        };
        let s_y = self.scale(n, 7)?;
        if !has(8) {
            bail!(
                Onnx,
                "y_zero_point is required with y_scale (without it ONNX Runtime writes float)"
            );
        }
        let (z_y, ty) = self.zero_point_typed(n, 8)?;
        self.push_gemm(
            n,
            label,
            a,
            k,
            (alpha * s_a, z_a),
            (weight, weight_zero, s_w),
            bias,
            (s_y, z_y, ty),
        )
    }

    /// QLinearMatMul of a computed `[N, K]` A and a constant `[K, M]` B
    /// (per-column scales and zero points allowed).
    fn qlinear_matmul(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        Self::arity(n, 8, 8)?;
        Attrs::new(n, &[])?;
        let (a, ta, k) = self.gemm_input(n)?;
        let s_a = self.scale(n, 1)?;
        let z_a = self.zero_point_for(n, 2, ta)?;
        let (weight, wty, m) = self.gemm_weight(n, 3, k, false)?;
        let s_w = self.scales(n, 4, Some(m))?;
        let weight_zero = self.weight_zero(n, 5, wty, m, &weight, k)?;
        let s_y = self.scale(n, 6)?;
        let (z_y, ty) = self.zero_point_typed(n, 7)?;
        self.push_gemm(
            n,
            label,
            a,
            k,
            (s_a, z_a),
            (weight, weight_zero, s_w),
            vec![0; m],
            (s_y, z_y, ty),
        )
    }

    fn qlinear_avg_pool(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        Self::arity(n, 5, 5)?;
        let attrs = Attrs::new(
            n,
            &[
                "auto_pad",
                "ceil_mode",
                "channels_last",
                "count_include_pad",
                "kernel_shape",
                "pads",
                "strides",
            ],
        )?;
        attrs.check_auto_pad()?;
        if attrs.int("channels_last", 0)? != 0 {
            bail!(Onnx, "channels_last = 1 is not supported");
        }
        let ceil_mode = attrs.int("ceil_mode", 0)? != 0;
        let count_include_pad = attrs.int("count_include_pad", 0)? != 0;
        if ceil_mode && count_include_pad {
            bail!(
                Onnx,
                "ceil_mode with count_include_pad is not supported (ONNX Runtime's divisor for \
the last windows differs from the integer rule, S6)"
            );
        }
        let (x, tx) = self.qact(n, 0)?;
        let d = self.slots[x].dims.clone();
        if d.len() != 3 {
            bail!(Onnx, "input has rank {}, expected 4 (NCHW)", d.len() + 1);
        }
        let Some(k) = attrs.ints("kernel_shape", 2, 1)? else {
            bail!(Onnx, "kernel_shape is required");
        };
        let stride = attrs.ints("strides", 2, 1)?.unwrap_or(vec![1, 1]);
        let pads = attrs.ints("pads", 4, 0)?.unwrap_or(vec![0; 4]);
        if pads[0] != pads[2] || pads[1] != pads[3] {
            bail!(
                Onnx,
                "pads {pads:?} are not symmetric, which is not supported"
            );
        }
        let geom = pool::AvgPool2dGeom {
            n: 1,
            c: d[0],
            h: d[1],
            w: d[2],
            kh: k[0],
            kw: k[1],
            stride: (stride[0], stride[1]),
            pad: (pads[0], pads[1]),
            count_include_pad,
            ceil_mode,
        }
        .validate()
        .map_err(|e| Error::Onnx(e.to_string()))?;
        if geom.kh * geom.kw > (i32::MAX / 255) as usize {
            bail!(Onnx, "pooling window of {k:?} is not supported");
        }
        let scales = [self.scale(n, 1)?, self.scale(n, 3)?];
        let z_in = self.zero_point_for(n, 2, tx)?;
        let (z_out, ty) = self.zero_point_typed(n, 4)?;
        // Every divisor's R1 must exist (scales checked above).
        for dv in 1..=geom.kh * geom.kw {
            pool::gap_requant(scales[0], scales[1], dv, z_out)?;
        }
        let dims = vec![d[0], geom.out_h(), geom.out_w()];
        let op = Op::AvgPool {
            geom,
            scales,
            z_in,
            z_out,
        };
        self.push(n, label, op, vec![x], ty, dims)
    }

    fn qlinear_concat(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        let k = n.input.len();
        if k < 5 || !(k - 2).is_multiple_of(3) {
            bail!(
                Onnx,
                "has {k} inputs: expected Y_scale, Y_zero_point, then a (tensor, scale, zero point) \
triple per input"
            );
        }
        Self::arity(n, k, k)?;
        let attrs = Attrs::new(n, &["axis"])?;
        let (s_y, (z_y, ty)) = (self.scale(n, 0)?, self.zero_point_typed(n, 1)?);
        let mut inputs = Vec::new();
        let mut parts = Vec::new();
        let mut dims: Option<Vec<usize>> = None;
        for t in (2..k).step_by(3) {
            let (x, tx) = self.qact(n, t)?;
            let d = self.slots[x].dims.clone();
            if d.len() != 3 {
                bail!(
                    Onnx,
                    "input {t} has rank {}, expected 4 (NCHW)",
                    d.len() + 1
                );
            }
            match &mut dims {
                None => dims = Some(d.clone()),
                Some(acc) if acc[1..] == d[1..] => acc[0] += d[0],
                Some(acc) => bail!(
                    Onnx,
                    "input {t} has planes {}x{}, the first input {}x{}: only channels may differ",
                    d[1],
                    d[2],
                    acc[1],
                    acc[2]
                ),
            }
            let (s_x, z_x) = (self.scale(n, t + 1)?, self.zero_point_for(n, t + 2, tx)?);
            parts.push(ConcatInput::new(self.slots[x].numel(), s_x, z_x, s_y, z_y));
            inputs.push(x);
        }
        let axis = attrs.int("axis", i64::MIN)?;
        if axis != 1 && axis != -3 {
            bail!(
                Onnx,
                "axis {axis}: only the channel axis (1) of NCHW tensors is supported"
            );
        }
        let dims = dims.unwrap_or_default();
        self.push(n, label, Op::Concat(parts), inputs, ty, dims)
    }

    fn max_pool(&mut self, n: &NodeProto, label: &str) -> Result<()> {
        if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
            bail!(Onnx, "the Indices output is not supported");
        }
        Self::arity(n, 1, 1)?;
        let attrs = Attrs::new(
            n,
            &[
                "auto_pad",
                "ceil_mode",
                "dilations",
                "kernel_shape",
                "pads",
                "storage_order",
                "strides",
            ],
        )?;
        if attrs.int("storage_order", 0)? != 0 {
            bail!(Onnx, "storage_order = 1 is not supported");
        }
        let ceil_mode = attrs.int("ceil_mode", 0)? != 0;
        let (x, ty) = self.qact(n, 0)?;
        if self.opset < 12 {
            bail!(
                Onnx,
                "MaxPool on {} needs opset 12 or later (the model imports {})",
                ty.name(),
                self.opset
            );
        }
        let d = self.slots[x].dims.clone();
        if d.len() != 3 {
            bail!(Onnx, "input has rank {}, expected 4 (NCHW)", d.len() + 1);
        }
        let Some(k) = attrs.ints("kernel_shape", 2, 1)? else {
            bail!(Onnx, "kernel_shape is required");
        };
        let stride = attrs.ints("strides", 2, 1)?.unwrap_or(vec![1, 1]);
        let dil = attrs.ints("dilations", 2, 1)?.unwrap_or(vec![1, 1]);
        let eff = [dil[0] * (k[0] - 1) + 1, dil[1] * (k[1] - 1) + 1];
        let pads = match attrs.auto_pad()? {
            AutoPad::NotSet => attrs.ints("pads", 4, 0)?.unwrap_or(vec![0; 4]),
            AutoPad::Valid => vec![0; 4],
            AutoPad::Same { upper } => {
                let (ph, pw) = (
                    same_pads(d[1], stride[0], eff[0], upper),
                    same_pads(d[2], stride[1], eff[1], upper),
                );
                vec![ph.0, pw.0, ph.1, pw.1]
            }
        };
        if pads[0] >= eff[0] || pads[2] >= eff[0] || pads[1] >= eff[1] || pads[3] >= eff[1] {
            bail!(
                Onnx,
                "pads {pads:?} must be smaller than the kernel {eff:?}"
            );
        }
        let (ph, pw) = (d[1] + pads[0] + pads[2], d[2] + pads[1] + pads[3]);
        if ph < eff[0] || pw < eff[1] {
            bail!(
                Onnx,
                "kernel {k:?} (dilations {dil:?}) does not fit input {}x{} with pads {pads:?}",
                d[1],
                d[2]
            );
        }
        // ceil_mode: one more window where a partial one remains, unless it
        // would start past the input and its begin padding (ONNX's rule).
        let out = |span: usize, eff: usize, s: usize, len: usize, pad: usize| {
            if !ceil_mode {
                return (span - eff) / s + 1;
            }
            let o = (span - eff).div_ceil(s) + 1;
            if (o - 1) * s >= len + pad {
                o - 1
            } else {
                o
            }
        };
        let op = PoolOp {
            c: d[0],
            h: d[1],
            w: d[2],
            kh: k[0],
            kw: k[1],
            stride: (stride[0], stride[1]),
            dilation: (dil[0], dil[1]),
            pad_begin: (pads[0], pads[1]),
            out_h: out(ph, eff[0], stride[0], d[1], pads[0]),
            out_w: out(pw, eff[1], stride[1], d[2], pads[1]),
        };
        let dims = vec![d[0], op.out_h, op.out_w];
        self.push(n, label, Op::MaxPool(op), vec![x], ty, dims)
    }
}

/// ONNX `auto_pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AutoPad {
    NotSet,
    Valid,
    /// `SAME_UPPER` (the odd cell at the end) or `SAME_LOWER`.
    Same {
        upper: bool,
    },
}

/// `(begin, end)` padding of one axis under `SAME_UPPER` / `SAME_LOWER`:
/// the output has `ceil(len / stride)` cells, and the total padding
/// `max((out - 1) * stride + eff - len, 0)` is split with the odd cell at
/// the end (upper) or the beginning (lower), as ONNX specifies.
fn same_pads(len: usize, stride: usize, eff: usize, upper: bool) -> (usize, usize) {
    let out = len.div_ceil(stride);
    let total = ((out - 1) * stride + eff).saturating_sub(len);
    let small = total / 2;
    if upper {
        (small, total - small)
    } else {
        (total - small, small)
    }
}

/// The message for a node whose input `i` is a float tensor computed in the
/// graph: the executor runs integer-only graphs.
fn float_input(n: &NodeProto, i: usize) -> String {
    let name = if n.name.is_empty() {
        format!("#? ({})", n.op_type)
    } else {
        n.name.clone()
    };
    let hint = match n.op_type.as_str() {
        "BatchNormalization" => {
            "fold it into the convolution before quantizing (for ONNX Runtime's quantize_static: \
run onnxruntime.quantization.shape_inference.quant_pre_process first)"
        }
        "Relu" | "Clip" => {
            "quantize with asymmetric activations, whose zero point after a ReLU is the type's \
minimum, so that the quantizer can drop it (ONNX Runtime keeps it with ActivationSymmetric)"
        }
        _ => "quantize it, or fold it into a neighbouring quantized op",
    };
    format!(
        "{FLOAT_ISLAND}: node '{name}' ({}) computes in float (its input {i} '{}' is a float \
tensor, e.g. the output of a DequantizeLinear); the executor runs only integer graphs: {hint}",
        n.op_type, n.input[i]
    )
}

/// The start of the error for a float op between quantized ones.
pub const FLOAT_ISLAND: &str = "not integer-only";

/// Quantization parameter input `i` of `n` (`what`: "scale" or "zero
/// point") holds one value (a scalar or a 1-element vector), or, where
/// `per_channel` is `Some(k)`, a vector of `k`.
fn scalar_or_per_channel(
    n: &NodeProto,
    i: usize,
    what: &str,
    dims: &[usize],
    len: usize,
    per_channel: Option<usize>,
) -> Result<()> {
    let ok =
        (dims.len() <= 1 && len == 1) || per_channel.is_some_and(|k| dims.len() == 1 && len == k);
    if !ok {
        bail!(
            Onnx,
            "{what} input {i} '{}' has shape {dims:?}, expected a scalar{}",
            n.input[i],
            per_channel.map_or(String::new(), |k| format!(" or [{k}]"))
        );
    }
    Ok(())
}
