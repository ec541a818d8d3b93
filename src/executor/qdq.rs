//! QDQ graphs: the fusion of `DequantizeLinear -> op -> QuantizeLinear`
//! groups into the integer ops the executor runs, the way ONNX Runtime's QDQ
//! transformer (`QDQSelectorActionTransformer`, CPU provider) fuses them
//! before it runs a QDQ graph. A pass over the node list before validation:
//! each group it recognizes becomes one QOperator node (named like the
//! group's op, producing the QuantizeLinear's output), which the validator
//! then checks like any other; a group it does not recognize is left as it
//! is, and its float op is then reported as not integer-only.
//!
//! The groups (ORT's selectors; docs/INT8.md, "QDQ graphs"):
//!
//! - `Conv` with DequantizeLinear on its input, on a constant weight and
//!   optionally on a constant int32 bias, and one QuantizeLinear after it,
//!   becomes `QLinearConv`; int8 activations need int8 weights, the input
//!   and output types must agree. The bias DequantizeLinear's own scale is
//!   not used (ORT takes its int32 values as QLinearConv's bias, which
//!   assumes the scale `s_x * s_w`).
//! - `Gemm` (beta 1 with a bias) becomes com.microsoft `QGemm`, `MatMul`
//!   with a constant B becomes `QLinearMatMul`, `Add` becomes
//!   com.microsoft `QLinearAdd` (all types equal), `GlobalAveragePool`,
//!   `AveragePool`, `LeakyRelu` and `Sigmoid` their com.microsoft QLinear
//!   forms, `Concat` with every input dequantized `QLinearConcat`.
//! - A `Relu` between the op and its QuantizeLinear is dropped when the
//!   quantization makes it redundant (the output zero point is the type's
//!   minimum, so the clamp at zero is the integer range's own), likewise a
//!   `Clip` with constant bounds outside the quantized range; otherwise the
//!   group is not fused.
//! - `MaxPool`, `Flatten`, `Reshape` and `Transpose` whose DequantizeLinear
//!   and QuantizeLinear have the same scale and zero point run on the
//!   quantized tensor directly (both are dropped); a `Relu` / `Clip` group
//!   of that kind that the quantization makes redundant (above) is the
//!   identity (ORT removes the Relu before such a QuantizeLinear, then the
//!   DequantizeLinear -> QuantizeLinear pair, which is exact), and on int8
//!   any other one is an int8 `Clip` to the quantized bounds (exact: see
//!   `int8_clip_bounds`; the ReLU of symmetric activations, which ORT
//!   computes in float between the two, with the same result).
//!
//! DequantizeLinear nodes left without a consumer are then removed.

use super::load::{Const, Data, ElemType};
use onnx_protobuf::{AttributeProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// The node list after fusion.
pub struct Fused {
    pub nodes: Vec<NodeProto>,
    /// Whether each node of `nodes` was made by fusion (it may use the
    /// com.microsoft domain without the model importing it).
    pub fused: Vec<bool>,
    /// Zero-point constants for DequantizeLinear / QuantizeLinear nodes
    /// that had none (0 of the tensor's type).
    pub consts: Vec<(String, Const)>,
}

struct Graph<'a> {
    nodes: &'a [NodeProto],
    consts: &'a HashMap<String, Const>,
    producer: HashMap<&'a str, usize>,
    /// Number of node inputs reading each tensor.
    uses: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    outputs: HashSet<&'a str>,
    extra: Vec<(String, Const)>,
}

fn is_op(n: &NodeProto, op: &str) -> bool {
    n.op_type == op && (n.domain.is_empty() || n.domain == "ai.onnx")
}

fn input(n: &NodeProto, i: usize) -> Option<&str> {
    n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
}

impl<'a> Graph<'a> {
    fn new(
        nodes: &'a [NodeProto],
        consts: &'a HashMap<String, Const>,
        outputs: &'a [String],
    ) -> Self {
        let mut producer = HashMap::new();
        let mut uses: HashMap<&str, usize> = HashMap::new();
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                producer.entry(o.as_str()).or_insert(i);
            }
            for t in n.input.iter().filter(|t| !t.is_empty()) {
                *uses.entry(t.as_str()).or_default() += 1;
                consumers.entry(t.as_str()).or_default().push(i);
            }
        }
        Graph {
            nodes,
            consts,
            producer,
            uses,
            consumers,
            outputs: outputs.iter().map(String::as_str).collect(),
            extra: Vec::new(),
        }
    }

    fn producer(&self, t: &str) -> Option<&'a NodeProto> {
        self.producer.get(t).map(|&i| &self.nodes[i])
    }

    /// The DequantizeLinear producing `t`, if it is one (per-tensor or
    /// per-axis, no blocks).
    fn dq(&self, t: &str) -> Option<&'a NodeProto> {
        self.producer(t).filter(|n| {
            is_op(n, "DequantizeLinear")
                && (2..=3).contains(&n.input.len())
                && input(n, 0).is_some()
                && input(n, 1).is_some()
        })
    }

    /// The quantized type of tensor `t`: an initializer's, or that of the
    /// QuantizeLinear that produced it.
    fn qtype(&self, t: &str) -> Option<ElemType> {
        if let Some(c) = self.consts.get(t) {
            return Some(c.data.elem_type());
        }
        let q = self.producer(t).filter(|n| is_op(n, "QuantizeLinear"))?;
        match input(q, 2) {
            Some(z) => self.consts.get(z).map(|c| c.data.elem_type()),
            None => Some(ElemType::U8),
        }
    }

    /// The type of a DequantizeLinear's input (its zero point's, else the
    /// input's own).
    fn dq_type(&self, dq: &NodeProto) -> Option<ElemType> {
        match input(dq, 2) {
            Some(z) => self.consts.get(z).map(|c| c.data.elem_type()),
            None => self.qtype(&dq.input[0]),
        }
    }

    fn q_type(&self, q: &NodeProto) -> Option<ElemType> {
        match input(q, 2) {
            Some(z) => self.consts.get(z).map(|c| c.data.elem_type()),
            None => Some(ElemType::U8),
        }
    }

    /// A zero-point input name for a QDQ node: its own, or a constant 0 of
    /// type `ty` made for it.
    fn zero_point(&mut self, n: &NodeProto, ty: ElemType) -> String {
        if let Some(z) = input(n, 2) {
            return z.to_string();
        }
        let name = format!("{}::zero_point", n.output[0]);
        let data = match ty {
            ElemType::U8 => Data::U8(vec![0]),
            _ => Data::I8(vec![0]),
        };
        self.extra
            .push((name.clone(), Const { dims: vec![], data }));
        name
    }

    /// `(x_q, x_scale, x_zero_point)` of a DequantizeLinear.
    fn dq_triple(&mut self, dq: &NodeProto, ty: ElemType) -> [String; 3] {
        [
            dq.input[0].clone(),
            dq.input[1].clone(),
            self.zero_point(dq, ty),
        ]
    }

    /// The single consumer of `t` (one edge, not a graph output).
    fn sole_consumer(&self, t: &str) -> Option<&'a NodeProto> {
        if self.outputs.contains(t) || self.uses.get(t) != Some(&1) {
            return None;
        }
        self.consumers.get(t).map(|c| &self.nodes[c[0]])
    }

    fn index(&self, n: &NodeProto) -> usize {
        self.producer[n.output[0].as_str()]
    }

    /// The QuantizeLinear after `target` (through a redundant Relu/Clip
    /// when `allow_clip`), with the nodes it replaces.
    fn q_after(&self, target: &NodeProto, allow_clip: bool) -> Option<(&'a NodeProto, Vec<usize>)> {
        if target.output.len() != 1 {
            return None;
        }
        let next = self.sole_consumer(&target.output[0])?;
        let mut removed = vec![];
        let q = if allow_clip && (is_op(next, "Relu") || is_op(next, "Clip")) {
            let q = self.sole_consumer(next.output.first()?)?;
            if !is_op(q, "QuantizeLinear") || !self.clip_is_redundant(next, q) {
                return None;
            }
            removed.push(self.index(next));
            q
        } else {
            next
        };
        if !is_op(q, "QuantizeLinear")
            || input(q, 1).is_none()
            || q.attribute.iter().any(|a| {
                (a.name == "block_size" && a.i != 0) || (a.name == "axis" && !self.scalar(q, 1))
            })
        {
            return None;
        }
        removed.push(self.index(q));
        Some((q, removed))
    }

    fn scalar(&self, n: &NodeProto, i: usize) -> bool {
        input(n, i)
            .and_then(|t| self.consts.get(t))
            .is_some_and(|c| c.dims.iter().product::<usize>() == 1)
    }

    fn f32_scalar(&self, t: Option<&str>) -> Option<f32> {
        match &self.consts.get(t?)?.data {
            Data::F32(v) if v.len() == 1 => Some(v[0]),
            _ => None,
        }
    }

    fn zp_value(&self, n: &NodeProto, ty: ElemType) -> Option<i32> {
        let Some(z) = input(n, 2) else {
            return Some(0);
        };
        match (&self.consts.get(z)?.data, ty) {
            (Data::I8(v), ElemType::I8) if v.len() == 1 => Some(v[0] as i32),
            (Data::U8(v), ElemType::U8) if v.len() == 1 => Some(v[0] as i32),
            _ => None,
        }
    }

    /// The float bounds `[lo, hi]` of a Relu (`[0, inf]`) or of a Clip with
    /// constant scalar bounds (missing ones infinite); None otherwise.
    fn clip_bounds(&self, clip: &NodeProto) -> Option<(f32, f32)> {
        if is_op(clip, "Relu") {
            return Some((0.0, f32::INFINITY));
        }
        if !clip.attribute.is_empty() {
            return None;
        }
        let bound = |i: usize, default: f32| match input(clip, i) {
            None => Some(default),
            Some(t) => self.f32_scalar(Some(t)),
        };
        Some((bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?))
    }

    /// ReLU before a QuantizeLinear whose zero point is the type's minimum,
    /// or a Clip with constant bounds covering the quantized range, changes
    /// nothing after quantization.
    fn clip_is_redundant(&self, clip: &NodeProto, q: &NodeProto) -> bool {
        let Some(ty) = self.q_type(q) else {
            return false;
        };
        let (Some(s), Some(z)) = (self.f32_scalar(input(q, 1)), self.zp_value(q, ty)) else {
            return false;
        };
        let (qmin, qmax) = if ty == ElemType::U8 {
            (0, 255)
        } else {
            (-128, 127)
        };
        if is_op(clip, "Relu") {
            return z == qmin;
        }
        self.clip_bounds(clip)
            .is_some_and(|(lo, hi)| lo <= (qmin - z) as f32 * s && hi >= (qmax - z) as f32 * s)
    }

    /// The int8 bounds of `DequantizeLinear -> clip -> QuantizeLinear` with
    /// one scale `s` and zero point `z` on int8: `Q(clamp(v, lo, hi))` is
    /// `clamp(Q(v), Q(lo), Q(hi))` because `Q` is monotonic, and
    /// `Q(DQ(q)) = q`, so the group is exactly an int8 clamp to
    /// `[Q(lo), Q(hi)]` (a ReLU: `[z, 127]`). None for uint8 or bounds that
    /// are not constant scalars.
    fn int8_clip_bounds(&self, clip: &NodeProto, q: &NodeProto, ty: ElemType) -> Option<(i8, i8)> {
        if ty != ElemType::I8 {
            return None;
        }
        let s = self.f32_scalar(input(q, 1))?;
        let z = self.zp_value(q, ty)?;
        let quant = |v: f32| crate::quant::fake::quantize(v, s, z, -128, 127) as i8;
        let (lo, hi) = self.clip_bounds(clip)?;
        (lo <= hi).then(|| (quant(lo), quant(hi)))
    }

    /// The DequantizeLinear inputs `idx` of `n` (None if one is not).
    fn dqs(&self, n: &NodeProto, idx: &[usize]) -> Option<Vec<&'a NodeProto>> {
        idx.iter().map(|&i| self.dq(input(n, i)?)).collect()
    }

    fn is_const(&self, dq: &NodeProto) -> bool {
        self.consts.contains_key(&dq.input[0])
    }

    /// The fused node for target `i`, with the indices of the nodes it
    /// replaces besides the target.
    fn select(&mut self, i: usize) -> Option<(NodeProto, Vec<usize>)> {
        let nodes = self.nodes;
        let t = &nodes[i];
        if !(t.domain.is_empty() || t.domain == "ai.onnx") {
            return None;
        }
        let op = t.op_type.as_str();
        let clip = matches!(op, "Relu" | "Clip");
        let drop = clip || matches!(op, "MaxPool" | "Flatten" | "Reshape" | "Transpose");
        if drop {
            if t.output.iter().filter(|o| !o.is_empty()).count() != 1 {
                return None;
            }
            let dq = self.dq(input(t, 0)?)?;
            let (q, removed) = self.q_after(t, false)?;
            let ty = self.dq_type(dq)?;
            let same = self.q_type(q) == Some(ty)
                && self.f32_scalar(input(dq, 1)).is_some()
                && self.f32_scalar(input(dq, 1)) == self.f32_scalar(input(q, 1))
                && self.zp_value(dq, ty).is_some()
                && self.zp_value(dq, ty) == self.zp_value(q, ty)
                && self.f32_scalar(input(q, 1)).is_some_and(|s| s > 0.0);
            if !same {
                return None;
            }
            let mut n = t.clone();
            n.input[0] = dq.input[0].clone();
            n.output = vec![q.output[0].clone()];
            if clip && !self.clip_is_redundant(t, q) {
                // A clamp the quantization does not make redundant (the
                // ReLU of symmetric int8 activations): an int8 Clip.
                let (lo, hi) = self.int8_clip_bounds(t, q, ty)?;
                let mut bound = |which: &str, v: i8| {
                    let name = format!("{}::{which}", q.output[0]);
                    self.extra.push((
                        name.clone(),
                        Const {
                            dims: vec![],
                            data: Data::I8(vec![v]),
                        },
                    ));
                    name
                };
                n.op_type = "Clip".into();
                n.input = vec![dq.input[0].clone(), bound("min", lo), bound("max", hi)];
                n.attribute.clear();
            } else if clip {
                // DequantizeLinear -> Relu -> QuantizeLinear with one scale
                // and zero point, the zero point the type's minimum: the
                // identity on the quantized tensor.
                n.op_type = "Identity".into();
                n.input.truncate(1);
                n.attribute.clear();
            }
            return Some((n, removed));
        }
        let (new_op, domain) = match op {
            "Conv" => ("QLinearConv", ""),
            "Gemm" => ("QGemm", "com.microsoft"),
            "MatMul" => ("QLinearMatMul", ""),
            "Add" => ("QLinearAdd", "com.microsoft"),
            "GlobalAveragePool" => ("QLinearGlobalAveragePool", "com.microsoft"),
            "AveragePool" => ("QLinearAveragePool", "com.microsoft"),
            "Concat" => ("QLinearConcat", "com.microsoft"),
            "LeakyRelu" => ("QLinearLeakyRelu", "com.microsoft"),
            "Sigmoid" => ("QLinearSigmoid", "com.microsoft"),
            _ => return None,
        };
        let unary = matches!(op, "LeakyRelu" | "Sigmoid");
        let (q, removed) = self.q_after(t, !unary)?;
        let ty_y = self.q_type(q)?;
        let y = [q.input[1].clone(), self.zero_point(q, ty_y)];
        let mut attrs: Vec<AttributeProto> = t.attribute.clone();
        let inputs: Vec<String> = match op {
            "Conv" | "Gemm" | "MatMul" => {
                let n_in = t.input.iter().filter(|s| !s.is_empty()).count();
                let has_bias = op != "MatMul" && input(t, 2).is_some();
                if n_in != 2 + has_bias as usize || (op == "MatMul" && t.input.len() != 2) {
                    return None;
                }
                let idx: &[usize] = if has_bias { &[0, 1, 2] } else { &[0, 1] };
                let dqs = self.dqs(t, idx)?;
                let (tx, tw) = (self.dq_type(dqs[0])?, self.dq_type(dqs[1])?);
                if !self.is_const(dqs[1]) || tx != ty_y || (tx == ElemType::I8 && tw != tx) {
                    return None;
                }
                if has_bias {
                    let b = self.consts.get(&dqs[2].input[0])?;
                    if b.data.elem_type() != ElemType::I32 {
                        return None;
                    }
                }
                if op == "Gemm" {
                    let beta = attrs.iter().find(|a| a.name == "beta").map_or(1.0, |a| a.f);
                    if has_bias && beta != 1.0 {
                        return None;
                    }
                    attrs.retain(|a| a.name != "beta");
                }
                let x = self.dq_triple(dqs[0], tx);
                let w = self.dq_triple(dqs[1], tw);
                let mut v: Vec<String> = x.into_iter().chain(w).collect();
                let bias = has_bias.then(|| dqs[2].input[0].clone());
                match op {
                    "Conv" => {
                        v.extend(y);
                        v.extend(bias);
                    }
                    "Gemm" => {
                        v.push(bias.unwrap_or_default());
                        v.extend(y);
                    }
                    _ => v.extend(y),
                }
                v
            }
            "Add" => {
                if t.input.len() != 2 {
                    return None;
                }
                let dqs = self.dqs(t, &[0, 1])?;
                let (ta, tb) = (self.dq_type(dqs[0])?, self.dq_type(dqs[1])?);
                if ta != tb || ta != ty_y {
                    return None;
                }
                let a = self.dq_triple(dqs[0], ta);
                let b = self.dq_triple(dqs[1], tb);
                a.into_iter().chain(b).chain(y).collect()
            }
            "GlobalAveragePool" | "AveragePool" | "LeakyRelu" | "Sigmoid" => {
                if t.input.len() != 1 {
                    return None;
                }
                let dq = self.dq(input(t, 0)?)?;
                let tx = self.dq_type(dq)?;
                if tx != ty_y {
                    return None;
                }
                self.dq_triple(dq, tx).into_iter().chain(y).collect()
            }
            "Concat" => {
                let idx: Vec<usize> = (0..t.input.len()).collect();
                let dqs = self.dqs(t, &idx)?;
                let mut v: Vec<String> = y.into();
                for dq in dqs {
                    if self.dq_type(dq)? != ty_y {
                        return None;
                    }
                    v.extend(self.dq_triple(dq, ty_y));
                }
                v
            }
            _ => unreachable!(),
        };
        let mut n = NodeProto::new();
        n.name = t.name.clone();
        n.op_type = new_op.into();
        n.domain = domain.into();
        n.input = inputs;
        n.output = vec![q.output[0].clone()];
        n.attribute = attrs;
        Some((n, removed))
    }
}

/// Fuses the QDQ groups of `nodes` (see the module documentation).
pub fn fuse(nodes: &[NodeProto], consts: &HashMap<String, Const>, outputs: &[String]) -> Fused {
    let mut g = Graph::new(nodes, consts, outputs);
    let mut replaced: HashMap<usize, NodeProto> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    for i in 0..nodes.len() {
        if removed.contains(&i) {
            continue;
        }
        if let Some((n, gone)) = g.select(i) {
            if gone
                .iter()
                .any(|j| removed.contains(j) || replaced.contains_key(j))
            {
                continue;
            }
            replaced.insert(i, n);
            removed.extend(gone);
        }
    }
    let mut out: Vec<(NodeProto, bool)> = Vec::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        if removed.contains(&i) {
            continue;
        }
        match replaced.remove(&i) {
            Some(f) => out.push((f, true)),
            None => out.push((n.clone(), false)),
        }
    }
    // DequantizeLinear nodes whose every consumer was fused.
    if !out.iter().all(|(_, f)| !f) {
        loop {
            let used: HashSet<&str> = out
                .iter()
                .flat_map(|(n, _)| n.input.iter().map(String::as_str))
                .chain(outputs.iter().map(String::as_str))
                .collect();
            let dead: Vec<usize> = out
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| {
                    is_op(n, "DequantizeLinear")
                        && n.output.iter().all(|o| !used.contains(o.as_str()))
                })
                .map(|(i, _)| i)
                .collect();
            if dead.is_empty() {
                break;
            }
            for i in dead.into_iter().rev() {
                out.remove(i);
            }
        }
    }
    let (nodes, fused) = out.into_iter().unzip();
    Fused {
        nodes,
        fused,
        consts: g.extra,
    }
}
