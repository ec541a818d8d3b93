//! An FP32 ONNX graph (as `torch.onnx.export` writes torchvision's ResNets
//! and MobileNetV2, in eval mode with BN folded into Conv, or keeping
//! BatchNormalization) translated into a network [`Graph`].
//!
//! Nodes are read in the file's (topological) order. Patterns become one
//! graph node: Conv [+ BatchNormalization] [+ Relu | Clip(0, 6)] is a Conv+BN
//! unit (or a Conv with bias), Add [+ Relu] a residual add, Gemm or MatMul
//! [+ Add] a linear layer, GlobalAveragePool [+ Flatten | Reshape | Squeeze]
//! the pooled features. Identity and inference Dropout pass their input
//! through. Anything else is an error naming the node, its op and what is
//! supported: nothing is dropped silently.

use super::tensor::{decode, Constant};
use crate::backend::Device;
use crate::graph::{Graph, GraphBuilder, NodeId};
use crate::nn::{Activation, BatchNorm2d, Conv2d, ConvBn, Linear};
use crate::ops::{AvgPool2dParams, Conv2dParams, MaxPool2dParams};
use crate::tensor::Tensor;
use crate::{bail, Error, Result};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, AttributeProto, ModelProto, NodeProto};
use std::collections::{HashMap, HashSet};

/// The ops the importer reads.
pub const SUPPORTED: &str = "Conv, BatchNormalization (after a Conv), Relu, Clip(0, 6) as ReLU6 \
(after a Conv, BatchNormalization or Add), Add, MaxPool, AveragePool, GlobalAveragePool, Flatten, \
Reshape and Squeeze used as a flatten, Gemm, MatMul (+ Add), Concat (channels), Identity, \
Dropout (inference), Constant, Cast of a constant to float";

/// Accepted standard opsets.
pub const OPSETS: std::ops::RangeInclusive<i64> = 7..=23;

/// What the graph's input is.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub channels: usize,
    pub hw: [usize; 2],
}

/// An imported graph with what the file said about it.
pub struct Imported {
    pub graph: Graph,
    pub input: InputSpec,
    pub num_classes: usize,
    /// ONNX nodes read (constants included).
    pub onnx_nodes: usize,
    /// The ONNX node each graph node came from, in graph order.
    pub sources: Vec<String>,
}

/// The shape of a value, per image.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// `[C, H, W]`.
    Map(usize, usize, usize),
    /// `[C]` (pooled or flattened features).
    Flat(usize),
}

#[derive(Clone, Copy, Debug)]
struct Value {
    node: NodeId,
    shape: Shape,
    /// A global average pool's `[C, 1, 1]` in ONNX, `[C]` in the graph.
    pooled: bool,
}

fn fail(n: &NodeProto, msg: impl std::fmt::Display) -> Error {
    Error::Onnx(format!("node '{}' ({}): {msg}", label(n), n.op_type))
}

fn label(n: &NodeProto) -> String {
    if n.name.is_empty() {
        n.output.first().cloned().unwrap_or_default()
    } else {
        n.name.clone()
    }
}

struct Attrs<'a>(HashMap<&'a str, &'a AttributeProto>);

impl<'a> Attrs<'a> {
    fn new(n: &'a NodeProto, allowed: &[&str]) -> Result<Self> {
        let mut m = HashMap::new();
        for a in &n.attribute {
            if !allowed.contains(&a.name.as_str()) {
                return Err(fail(
                    n,
                    format!(
                        "attribute '{}' is not supported (accepted: {})",
                        a.name,
                        allowed.join(", ")
                    ),
                ));
            }
            m.insert(a.name.as_str(), a);
        }
        Ok(Attrs(m))
    }
    fn int(&self, n: &NodeProto, name: &str, default: i64) -> Result<i64> {
        match self.0.get(name) {
            None => Ok(default),
            Some(a) if a.type_.value() == AttributeType::INT as i32 => Ok(a.i),
            Some(_) => Err(fail(n, format!("attribute '{name}' must be an int"))),
        }
    }
    fn float(&self, n: &NodeProto, name: &str, default: f32) -> Result<f32> {
        match self.0.get(name) {
            None => Ok(default),
            Some(a) if a.type_.value() == AttributeType::FLOAT as i32 => Ok(a.f),
            Some(_) => Err(fail(n, format!("attribute '{name}' must be a float"))),
        }
    }
    fn ints(&self, n: &NodeProto, name: &str) -> Result<Option<Vec<i64>>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(a) if a.type_.value() == AttributeType::INTS as i32 => Ok(Some(a.ints.clone())),
            Some(_) => Err(fail(
                n,
                format!("attribute '{name}' must be a list of ints"),
            )),
        }
    }
    /// A 2-element attribute of values in `[lo, 2^16]` (default `default`).
    fn pair(&self, n: &NodeProto, name: &str, lo: i64, default: [usize; 2]) -> Result<[usize; 2]> {
        match self.ints(n, name)? {
            None => Ok(default),
            Some(v) if v.len() == 2 && v.iter().all(|&x| (lo..=1 << 16).contains(&x)) => {
                Ok([v[0] as usize, v[1] as usize])
            }
            Some(v) => Err(fail(
                n,
                format!("{name} {v:?}: expected two values in [{lo}, 65536] (2-d only)"),
            )),
        }
    }
    /// Symmetric 2-d pads `[h, w]` from ONNX's `[h_begin, w_begin, h_end,
    /// w_end]`.
    fn pads(&self, n: &NodeProto) -> Result<[usize; 2]> {
        match self.ints(n, "pads")? {
            None => Ok([0, 0]),
            Some(v) if v.len() == 4 && v.iter().all(|&x| (0..=1 << 16).contains(&x)) => {
                if v[0] != v[2] || v[1] != v[3] {
                    return Err(fail(
                        n,
                        format!("pads {v:?} are not symmetric, which is not supported"),
                    ));
                }
                Ok([v[0] as usize, v[1] as usize])
            }
            Some(v) => Err(fail(n, format!("pads {v:?}: expected four values >= 0"))),
        }
    }
    fn no_auto_pad(&self, n: &NodeProto) -> Result<()> {
        if let Some(a) = self.0.get("auto_pad") {
            if a.s != b"NOTSET" {
                return Err(fail(
                    n,
                    format!(
                        "auto_pad {} is not supported (explicit pads only)",
                        String::from_utf8_lossy(&a.s)
                    ),
                ));
            }
        }
        Ok(())
    }
}

struct Reader<'m> {
    consts: HashMap<String, Constant>,
    values: HashMap<String, Value>,
    /// Readers of each value name (node indices).
    readers: HashMap<&'m str, Vec<usize>>,
    nodes: &'m [NodeProto],
    /// Nodes already folded into an earlier graph node.
    taken: HashSet<usize>,
    b: GraphBuilder,
    names: HashSet<String>,
    sources: Vec<String>,
    dev: Device,
    output: &'m str,
}

/// Reads `m` into a graph on `dev`.
pub fn import(m: &ModelProto, dev: &Device) -> Result<Imported> {
    let Some(g) = m.graph.as_ref() else {
        bail!(Onnx, "the model has no graph");
    };
    for o in &m.opset_import {
        if (o.domain.is_empty() || o.domain == "ai.onnx") && !OPSETS.contains(&o.version) {
            bail!(
                Onnx,
                "opset {} is not supported (accepted: {}..={})",
                o.version,
                OPSETS.start(),
                OPSETS.end()
            );
        }
    }
    let mut consts = HashMap::new();
    for t in &g.initializer {
        consts.insert(t.name.clone(), decode(t)?);
    }
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !consts.contains_key(&i.name))
        .collect();
    let [input] = inputs.as_slice() else {
        bail!(
            Onnx,
            "the graph has {} inputs besides its initializers; one image input is supported",
            inputs.len()
        );
    };
    let input = input_spec(input)?;
    if g.output.len() != 1 {
        bail!(
            Onnx,
            "the graph has {} outputs; one (the logits) is supported",
            g.output.len()
        );
    }
    let (b, x) = GraphBuilder::new(input.channels, dev, 0)?;
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for name in &n.input {
            readers.entry(name.as_str()).or_default().push(i);
        }
    }
    let mut r = Reader {
        consts,
        values: HashMap::new(),
        readers,
        nodes: &g.node,
        taken: HashSet::new(),
        b,
        names: HashSet::from(["input".to_string()]),
        sources: vec![input.name.clone()],
        dev: dev.clone(),
        output: &g.output[0].name,
    };
    r.values.insert(
        input.name.clone(),
        Value {
            node: x,
            shape: Shape::Map(input.channels, input.hw[0], input.hw[1]),
            pooled: false,
        },
    );
    // Constants first (Constant nodes, and Identity or Cast of a constant):
    // a fused pattern may read one that the file lists after its first node.
    for (i, n) in g.node.iter().enumerate() {
        let of_const = n.input.first().is_some_and(|x| r.consts.contains_key(x));
        if n.op_type == "Constant"
            || (of_const && matches!(n.op_type.as_str(), "Identity" | "Cast"))
        {
            r.node(i)?;
            r.taken.insert(i);
        }
    }
    for i in 0..g.node.len() {
        if !r.taken.contains(&i) {
            r.node(i)?;
        }
    }
    let out = &g.output[0].name;
    let Some(v) = r.values.get(out).copied() else {
        bail!(
            Onnx,
            "the graph output '{out}' is not computed by the supported nodes"
        );
    };
    let num_classes = match v.shape {
        Shape::Flat(c) if v.node + 1 == r.sources.len() => c,
        _ => bail!(
            Onnx,
            "the graph output '{out}' must be the last layer's [N, classes] logits (a linear \
classifier); it has shape {:?}",
            v.shape
        ),
    };
    let onnx_nodes = g.node.len();
    Ok(Imported {
        graph: r.b.finish(),
        input,
        num_classes,
        onnx_nodes,
        sources: r.sources,
    })
}

fn input_spec(v: &onnx_protobuf::ValueInfoProto) -> Result<InputSpec> {
    let what = format!("graph input '{}'", v.name);
    let Some(type_proto::Value::TensorType(t)) = v.type_.as_ref().and_then(|t| t.value.as_ref())
    else {
        bail!(Onnx, "{what} is not a tensor");
    };
    if t.elem_type != onnx_protobuf::tensor_proto::DataType::FLOAT as i32 {
        bail!(Onnx, "{what} must be float32");
    }
    let dims: Vec<Option<i64>> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(dimension::Value::DimValue(v)) => Some(*v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match dims.as_slice() {
        [_, Some(c), Some(h), Some(w)]
            if (1..=4096).contains(c) && (1..=1 << 14).contains(h) && (1..=1 << 14).contains(w) =>
        {
            Ok(InputSpec {
                name: v.name.clone(),
                channels: *c as usize,
                hw: [*h as usize, *w as usize],
            })
        }
        _ => bail!(
            Onnx,
            "{what} has shape {dims:?}: expected [N, C, H, W] with fixed C, H and W (export with a \
fixed image size)"
        ),
    }
}

/// Output size of a window of `k` (effective) with stride `s` and symmetric
/// pad `p` over `size`, rounding down or (ceil) up.
fn window_out(size: usize, k: usize, s: usize, p: usize, ceil: bool) -> Option<usize> {
    let span = (size + 2 * p).checked_sub(k)?;
    let mut o = if ceil { span.div_ceil(s) } else { span / s } + 1;
    // A last window starting in the far padding is dropped (PyTorch, ONNX).
    if ceil && (o - 1) * s >= size + p {
        o -= 1;
    }
    Some(o)
}

impl<'m> Reader<'m> {
    fn value(&self, n: &NodeProto, k: usize) -> Result<Value> {
        let name = n.input.get(k).map(String::as_str).unwrap_or("");
        if let Some(v) = self.values.get(name) {
            return Ok(*v);
        }
        if self.consts.contains_key(name) {
            return Err(fail(
                n,
                format!("input {k} '{name}' is a constant; a computed tensor is expected"),
            ));
        }
        Err(fail(
            n,
            format!("input {k} '{name}' is not computed by an earlier supported node"),
        ))
    }

    fn konst(&self, n: &NodeProto, k: usize) -> Result<&Constant> {
        let name = n.input.get(k).map(String::as_str).unwrap_or("");
        match self.consts.get(name) {
            Some(c) => Ok(c),
            None => Err(fail(
                n,
                format!("input {k} '{name}' must be an initializer or a Constant"),
            )),
        }
    }

    fn floats(&self, n: &NodeProto, k: usize, dims: &[usize]) -> Result<Vec<f32>> {
        let c = self.konst(n, k)?;
        match c.floats() {
            Some(v) if c.dims == dims => Ok(v.to_vec()),
            Some(_) => Err(fail(
                n,
                format!(
                    "input {k} '{}' has shape {:?}, expected {dims:?}",
                    n.input[k], c.dims
                ),
            )),
            None => Err(fail(
                n,
                format!("input {k} '{}' must be floats", n.input[k]),
            )),
        }
    }

    /// The only reader of `n`'s output, when it is exactly one node that is
    /// not the graph output itself.
    fn sole_reader(&self, n: &NodeProto) -> Option<usize> {
        let out = n.output.first()?;
        if out == self.output {
            return None;
        }
        match self.readers.get(out.as_str()).map(Vec::as_slice) {
            Some([r]) => Some(*r),
            _ => None,
        }
    }

    /// The node reading `n`'s output when it has op `op`.
    fn followed_by(&self, n: &NodeProto, ops: &[&str]) -> Option<usize> {
        self.sole_reader(n)
            .filter(|&r| ops.contains(&self.nodes[r].op_type.as_str()))
    }

    /// The activation after `n` (Relu, or Clip to [0, 6]), folding it.
    fn activation(&mut self, n: &'m NodeProto) -> Result<(Activation, &'m NodeProto)> {
        let Some(r) = self.followed_by(n, &["Relu", "Clip"]) else {
            return Ok((Activation::None, n));
        };
        let a = &self.nodes[r];
        let act = if a.op_type == "Relu" {
            Attrs::new(a, &[])?;
            Activation::Relu
        } else {
            self.clip_bounds(a)?;
            Activation::Relu6
        };
        self.taken.insert(r);
        Ok((act, a))
    }

    /// A Clip must be ReLU6: min 0 and max 6 (attributes before opset 11,
    /// constant inputs after).
    fn clip_bounds(&self, n: &NodeProto) -> Result<()> {
        let attrs = Attrs::new(n, &["min", "max"])?;
        let scalar = |k: usize, attr: &str| -> Result<Option<f32>> {
            if let Some(name) = n.input.get(k).filter(|s| !s.is_empty()) {
                let c = self
                    .consts
                    .get(name)
                    .ok_or_else(|| fail(n, format!("input {k} '{name}' must be a constant")))?;
                return match c.floats() {
                    Some([v]) => Ok(Some(*v)),
                    _ => Err(fail(n, format!("input {k} '{name}' must be one float"))),
                };
            }
            attrs
                .0
                .contains_key(attr)
                .then_some(attrs.float(n, attr, 0.0))
                .transpose()
        };
        let (lo, hi) = (scalar(1, "min")?, scalar(2, "max")?);
        if lo != Some(0.0) || hi != Some(6.0) {
            return Err(fail(
                n,
                format!(
                    "Clip to [{}, {}] is not supported: only Clip(0, 6), i.e. ReLU6",
                    lo.map_or("-inf".into(), |v| v.to_string()),
                    hi.map_or("inf".into(), |v| v.to_string())
                ),
            ));
        }
        Ok(())
    }

    /// A unique graph name for the layer `n` computes: the module path of
    /// its weight (`layer1.0.conv1.weight` -> `layer1.0.conv1`), else of its
    /// ONNX node name (`/layer1/layer1.0/conv1/Conv` -> `layer1.0.conv1`;
    /// functional ops add their op: `layer1.0.add`), else op and index.
    fn name(&mut self, n: &NodeProto, weight: Option<&str>, functional: bool) -> String {
        let op = n.op_type.to_lowercase();
        let from_weight = weight
            .and_then(|w| w.strip_suffix(".weight"))
            .filter(|p| is_path(p))
            .map(str::to_string);
        let from_node = || -> Option<String> {
            let segs: Vec<&str> = n.name.trim_start_matches('/').split('/').collect();
            if segs.len() < 2 {
                return None;
            }
            // Each scope is named relative to an enclosing one
            // (`layer2.0`, `downsample`, `downsample.0`): join it to the
            // longest tail of the path it continues.
            let mut path: Vec<String> = Vec::new();
            for s in &segs[..segs.len() - 1] {
                let keep = (0..path.len())
                    .find(|&k| s.starts_with(&format!("{}.", path[k..].join("."))))
                    .unwrap_or(path.len());
                path.truncate(keep);
                path.extend(s.split('.').map(str::to_string));
            }
            let mut path = path.join(".");
            if functional {
                path = format!("{path}.{op}");
            }
            is_path(&path).then_some(path)
        };
        let base = from_weight
            .or_else(from_node)
            .unwrap_or_else(|| format!("{op}{}", self.sources.len()));
        let mut name = base.clone();
        let mut k = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    fn set(&mut self, n: &NodeProto, out: &NodeProto, node: NodeId, shape: Shape, pooled: bool) {
        self.sources.push(label(n));
        self.values.insert(
            out.output[0].clone(),
            Value {
                node,
                shape,
                pooled,
            },
        );
    }

    fn alias(&mut self, n: &NodeProto, v: Value) {
        self.values.insert(n.output[0].clone(), v);
    }

    fn one_output(n: &NodeProto) -> Result<()> {
        let used = n.output.iter().filter(|o| !o.is_empty()).count();
        if n.output.first().is_none_or(String::is_empty) || used != 1 {
            return Err(fail(n, "only the first output may be used"));
        }
        Ok(())
    }

    fn node(&mut self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let domain = n.domain.as_str();
        if !(domain.is_empty() || domain == "ai.onnx") {
            return Err(fail(
                n,
                format!("domain '{domain}' is not supported (standard ONNX ops only: {SUPPORTED})"),
            ));
        }
        if n.op_type != "Dropout" && n.op_type != "BatchNormalization" {
            Self::one_output(n)?;
        }
        match n.op_type.as_str() {
            "Constant" => self.constant(n),
            "Identity" => {
                // The exporter shares equal initializers through Identity.
                if let Some(c) = n.input.first().and_then(|i| self.consts.get(i)).cloned() {
                    self.consts.insert(n.output[0].clone(), c);
                    return Ok(());
                }
                let v = self.value(n, 0)?;
                self.alias(n, v);
                Ok(())
            }
            "Cast" => self.cast(n),
            "Dropout" => {
                // Inference: the identity (a `mask` output must be unused).
                if n.output.iter().skip(1).any(|o| !o.is_empty() && self.readers.contains_key(o.as_str())) {
                    return Err(fail(n, "the mask output is used"));
                }
                if n.input.get(2).is_some_and(|t| !t.is_empty()) {
                    let on = self.konst(n, 2)?.ints().is_some_and(|v| v.iter().any(|&x| x != 0));
                    if on {
                        return Err(fail(n, "training_mode is on"));
                    }
                }
                let v = self.value(n, 0)?;
                self.alias(n, v);
                Ok(())
            }
            "Conv" => self.conv(n),
            "Add" => self.add(n),
            "MaxPool" => self.max_pool(n),
            "AveragePool" => self.avg_pool(n),
            "GlobalAveragePool" => self.gap(n),
            "Flatten" | "Reshape" | "Squeeze" => self.flatten(n),
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n),
            "Concat" => self.concat(n),
            "BatchNormalization" => Err(fail(
                n,
                "batch normalization is supported only right after a Conv whose output nothing else reads",
            )),
            "Relu" | "Clip" => Err(fail(
                n,
                "an activation is supported only right after a Conv, BatchNormalization or Add whose \
output nothing else reads",
            )),
            op => Err(fail(
                n,
                format!("op {op} is not supported; supported: {SUPPORTED}"),
            )),
        }
    }

    fn constant(&mut self, n: &NodeProto) -> Result<()> {
        let value = n.attribute.iter().find(|a| a.name == "value");
        match (value.and_then(|a| a.t.as_ref()), n.attribute.len()) {
            (Some(t), 1) => {
                let mut c = decode(t)?;
                c.stored_as = format!("Constant {}", c.stored_as);
                self.consts.insert(n.output[0].clone(), c);
                Ok(())
            }
            _ => Err(fail(
                n,
                "only a Constant with a 'value' tensor is supported",
            )),
        }
    }

    /// A Cast of a constant to float (float16 weights in a float graph).
    fn cast(&mut self, n: &NodeProto) -> Result<()> {
        let attrs = Attrs::new(n, &["to", "saturate"])?;
        let to = attrs.int(n, "to", 0)?;
        let c = n.input.first().and_then(|i| self.consts.get(i)).cloned();
        match c {
            Some(c)
                if to == onnx_protobuf::tensor_proto::DataType::FLOAT as i64
                    && c.floats().is_some() =>
            {
                self.consts.insert(n.output[0].clone(), c);
                Ok(())
            }
            _ => Err(fail(
                n,
                "only a Cast of a float or float16 constant to float is supported",
            )),
        }
    }

    fn conv(&mut self, n: &'m NodeProto) -> Result<()> {
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
        attrs.no_auto_pad(n)?;
        let x = self.value(n, 0)?;
        let Shape::Map(c_in, h, w) = x.shape else {
            return Err(fail(n, "input is not a [N, C, H, W] feature map"));
        };
        let wc = self.konst(n, 1)?;
        if wc.dims.len() != 4 {
            return Err(fail(
                n,
                format!("weight has shape {:?}: 2-d convolutions only", wc.dims),
            ));
        }
        let (c_out, cg, kh, kw) = (wc.dims[0], wc.dims[1], wc.dims[2], wc.dims[3]);
        let groups = attrs.int(n, "group", 1)?;
        if groups < 1 || cg == 0 || cg * groups as usize != c_in || c_out % groups as usize != 0 {
            return Err(fail(
                n,
                format!(
                    "weight {:?} with group {groups} does not fit {c_in} input channels",
                    wc.dims
                ),
            ));
        }
        let kernel = attrs.pair(n, "kernel_shape", 1, [kh, kw])?;
        if kernel != [kh, kw] {
            return Err(fail(
                n,
                format!("kernel_shape {kernel:?} differs from the weight's"),
            ));
        }
        let stride = attrs.pair(n, "strides", 1, [1, 1])?;
        let dil = attrs.pair(n, "dilations", 1, [1, 1])?;
        let pad = attrs.pads(n)?;
        let out = |size, k: usize, d: usize, s, p| window_out(size, d * (k - 1) + 1, s, p, false);
        let (Some(oh), Some(ow)) = (
            out(h, kh, dil[0], stride[0], pad[0]),
            out(w, kw, dil[1], stride[1], pad[1]),
        ) else {
            return Err(fail(
                n,
                format!("kernel {kh}x{kw} does not fit the {h}x{w} input"),
            ));
        };
        let mut weight_name = n.input[1].clone();
        let weight = self.floats(n, 1, &wc.dims.clone())?;
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            Some(_) => Some(self.floats(n, 2, &[c_out])?),
            None => None,
        };
        let params = Conv2dParams {
            stride: (stride[0], stride[1]),
            pad: (pad[0], pad[1]),
            dilation: (dil[0], dil[1]),
            groups: groups as usize,
        };
        let dev = self.dev.clone();
        let conv = |bias: Option<Vec<f32>>| -> Result<Conv2d> {
            Ok(Conv2d {
                weight: Tensor::param(weight.clone(), [c_out, cg, kh, kw], &dev)?,
                bias: bias.map(|b| Tensor::param(b, [c_out], &dev)).transpose()?,
                params,
            })
        };
        let shape = Shape::Map(c_out, oh, ow);
        if let Some(r) = self.followed_by(n, &["BatchNormalization"]) {
            let bn_node = &self.nodes[r];
            let bn = self.batch_norm(bn_node, c_out, bias.as_deref())?;
            // qat's own FP32 export names a unit's tensors `U.conv.weight`
            // and `U.bn.*`: the unit is `U` again.
            if let Some(u) = weight_name.strip_suffix(".conv.weight") {
                if bn_node
                    .input
                    .get(1)
                    .is_some_and(|g| *g == format!("{u}.bn.weight"))
                {
                    weight_name = format!("{u}.weight");
                }
            }
            self.taken.insert(r);
            let (act, last) = self.activation(bn_node)?;
            let name = self.name(n, Some(&weight_name), false);
            let unit = ConvBn {
                conv: conv(None)?,
                bn,
                act,
            };
            let id = self.b.conv_bn_unit(&name, x.node, unit)?;
            self.set(n, last, id, shape, false);
        } else {
            let (act, last) = self.activation(n)?;
            let name = self.name(n, Some(&weight_name), false);
            let bias = Some(bias.unwrap_or_else(|| vec![0.0; c_out]));
            let id = self.b.conv_unit(&name, x.node, conv(bias)?, act)?;
            self.set(n, last, id, shape, false);
        }
        Ok(())
    }

    /// The batch norm after a convolution, with the convolution's bias (if
    /// any) moved into its running mean: `BN(y + b) = BN'(y)` with
    /// `mean' = mean - b`.
    fn batch_norm(
        &self,
        n: &NodeProto,
        c: usize,
        conv_bias: Option<&[f32]>,
    ) -> Result<BatchNorm2d> {
        let attrs = Attrs::new(
            n,
            &["epsilon", "momentum", "spatial", "training_mode", "is_test"],
        )?;
        if attrs.int(n, "training_mode", 0)? != 0 {
            return Err(fail(
                n,
                "training_mode = 1 is not supported (export in eval mode)",
            ));
        }
        if attrs.int(n, "spatial", 1)? != 1 {
            return Err(fail(n, "spatial = 0 is not supported"));
        }
        if n.input.len() != 5 {
            return Err(fail(n, "expected 5 inputs (X, scale, B, mean, var)"));
        }
        if n.output
            .iter()
            .skip(1)
            .any(|o| !o.is_empty() && self.readers.contains_key(o.as_str()))
        {
            return Err(fail(
                n,
                "its running-statistics outputs are used (training mode)",
            ));
        }
        let eps = attrs.float(n, "epsilon", 1e-5)?;
        // ONNX's momentum weighs the old statistics; PyTorch's the new batch.
        let momentum = 1.0 - attrs.float(n, "momentum", 0.9)?;
        if !(eps > 0.0 && eps.is_finite() && (0.0..=1.0).contains(&momentum)) {
            return Err(fail(
                n,
                format!("epsilon {eps} or momentum {} out of range", 1.0 - momentum),
            ));
        }
        let gamma = self.floats(n, 1, &[c])?;
        let beta = self.floats(n, 2, &[c])?;
        let mut mean = self.floats(n, 3, &[c])?;
        let var = self.floats(n, 4, &[c])?;
        if var.iter().any(|&v| !(v >= 0.0 && v.is_finite())) {
            return Err(fail(n, "a running variance is negative or not finite"));
        }
        if let Some(b) = conv_bias {
            for (m, &b) in mean.iter_mut().zip(b) {
                *m -= b;
            }
        }
        let dev = &self.dev;
        Ok(BatchNorm2d {
            weight: Tensor::param(gamma, [c], dev)?,
            bias: Tensor::param(beta, [c], dev)?,
            running_mean: Tensor::from_vec(mean, [c], dev)?,
            running_var: Tensor::from_vec(var, [c], dev)?,
            momentum,
            eps,
        })
    }

    fn add(&mut self, n: &'m NodeProto) -> Result<()> {
        Attrs::new(n, &[])?;
        if n.input.len() != 2 {
            return Err(fail(n, "expected two inputs"));
        }
        let (a, b) = (self.value(n, 0)?, self.value(n, 1)?);
        if a.shape != b.shape {
            return Err(fail(
                n,
                format!(
                    "inputs of shapes {:?} and {:?}: broadcasting is not supported",
                    a.shape, b.shape
                ),
            ));
        }
        let relu = match self.followed_by(n, &["Relu"]) {
            Some(r) => {
                Attrs::new(&self.nodes[r], &[])?;
                self.taken.insert(r);
                Some(r)
            }
            None => None,
        };
        let name = self.name(n, None, true);
        let id = self.b.add(&name, a.node, b.node, relu.is_some())?;
        let last = relu.map_or(n, |r| &self.nodes[r]);
        self.set(n, last, id, a.shape, a.pooled);
        Ok(())
    }

    fn pool_input(&self, n: &NodeProto) -> Result<(Value, usize, usize, usize)> {
        let x = self.value(n, 0)?;
        match x.shape {
            Shape::Map(c, h, w) => Ok((x, c, h, w)),
            Shape::Flat(_) => Err(fail(n, "input is not a [N, C, H, W] feature map")),
        }
    }

    fn max_pool(&mut self, n: &'m NodeProto) -> Result<()> {
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
        attrs.no_auto_pad(n)?;
        if attrs.int(n, "ceil_mode", 0)? != 0 {
            return Err(fail(n, "ceil_mode = 1 is not supported for max pooling"));
        }
        if attrs.pair(n, "dilations", 1, [1, 1])? != [1, 1] {
            return Err(fail(n, "dilated max pooling is not supported"));
        }
        let (x, c, h, w) = self.pool_input(n)?;
        let Some(k) = attrs.ints(n, "kernel_shape")? else {
            return Err(fail(n, "kernel_shape is required"));
        };
        let k = attrs.pair(
            n,
            "kernel_shape",
            1,
            [k.first().copied().unwrap_or(0) as usize; 2],
        )?;
        let s = attrs.pair(n, "strides", 1, [1, 1])?;
        let p = attrs.pads(n)?;
        if p[0] >= k[0] || p[1] >= k[1] {
            return Err(fail(
                n,
                format!("pads {p:?} must be smaller than the kernel {k:?}"),
            ));
        }
        let (Some(oh), Some(ow)) = (
            window_out(h, k[0], s[0], p[0], false),
            window_out(w, k[1], s[1], p[1], false),
        ) else {
            return Err(fail(
                n,
                format!("kernel {k:?} does not fit the {h}x{w} input"),
            ));
        };
        let params = MaxPool2dParams {
            kernel: (k[0], k[1]),
            stride: (s[0], s[1]),
            pad: (p[0], p[1]),
        };
        let name = self.name(n, None, false);
        let id = self.b.max_pool(&name, x.node, params)?;
        self.set(n, n, id, Shape::Map(c, oh, ow), false);
        Ok(())
    }

    fn avg_pool(&mut self, n: &'m NodeProto) -> Result<()> {
        let attrs = Attrs::new(
            n,
            &[
                "auto_pad",
                "ceil_mode",
                "count_include_pad",
                "dilations",
                "kernel_shape",
                "pads",
                "strides",
            ],
        )?;
        attrs.no_auto_pad(n)?;
        if attrs.pair(n, "dilations", 1, [1, 1])? != [1, 1] {
            return Err(fail(n, "dilated average pooling is not supported"));
        }
        let (x, c, h, w) = self.pool_input(n)?;
        if attrs.ints(n, "kernel_shape")?.is_none() {
            return Err(fail(n, "kernel_shape is required"));
        }
        let k = attrs.pair(n, "kernel_shape", 1, [1, 1])?;
        let s = attrs.pair(n, "strides", 1, [1, 1])?;
        let p = attrs.pads(n)?;
        let ceil = attrs.int(n, "ceil_mode", 0)? != 0;
        let params = AvgPool2dParams {
            kernel: (k[0], k[1]),
            stride: (s[0], s[1]),
            pad: (p[0], p[1]),
            count_include_pad: attrs.int(n, "count_include_pad", 0)? != 0,
            ceil_mode: ceil,
        };
        let g = params
            .geom(1, c, h, w)
            .map_err(|e| fail(n, e.to_string()))?;
        let name = self.name(n, None, false);
        let id = self.b.avg_pool(&name, x.node, params)?;
        self.set(n, n, id, Shape::Map(c, g.out_h(), g.out_w()), false);
        Ok(())
    }

    fn gap(&mut self, n: &'m NodeProto) -> Result<()> {
        Attrs::new(n, &[])?;
        let (x, c, _, _) = self.pool_input(n)?;
        let name = self.name(n, None, false);
        let id = self.b.global_avg_pool(&name, x.node)?;
        self.set(n, n, id, Shape::Map(c, 1, 1), true);
        Ok(())
    }

    /// Flatten(axis 1), or a Reshape / Squeeze that does the same to
    /// `[N, C, H, W]`.
    fn flatten(&mut self, n: &'m NodeProto) -> Result<()> {
        let x = self.value(n, 0)?;
        let (c, h, w) = match x.shape {
            Shape::Map(c, h, w) => (c, h, w),
            Shape::Flat(_) => {
                // Already [N, C]: a no-op flatten.
                self.alias(n, x);
                return Ok(());
            }
        };
        let features = c * h * w;
        match n.op_type.as_str() {
            "Flatten" => {
                let attrs = Attrs::new(n, &["axis"])?;
                if attrs.int(n, "axis", 1)? != 1 {
                    return Err(fail(n, "only axis = 1 (keep the batch) is supported"));
                }
            }
            "Reshape" => {
                Attrs::new(n, &["allowzero"])?;
                let shape = self.konst(n, 1)?.ints().map(<[i64]>::to_vec);
                let ok = match shape.as_deref() {
                    Some([a, b]) => {
                        (*a == 0 || *a == -1 || *a >= 1)
                            && (*b == -1 || *b == features as i64)
                            && !(*a == -1 && *b == -1)
                    }
                    _ => false,
                };
                if !ok {
                    return Err(fail(
                        n,
                        format!(
                            "reshape to {shape:?} is not a flatten of [N, {c}, {h}, {w}] (supported: \
[N or 0 or -1, -1 or {features}])"
                        ),
                    ));
                }
            }
            _ => {
                // Squeeze of the 1x1 plane: axes [2, 3] (attribute before
                // opset 13, input after).
                let attrs = Attrs::new(n, &["axes"])?;
                let axes = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(_) => self.konst(n, 1)?.ints().map(<[i64]>::to_vec),
                    None => attrs.ints(n, "axes")?,
                };
                let mut axes = axes.unwrap_or_else(|| vec![2, 3]);
                for a in &mut axes {
                    if *a < 0 {
                        *a += 4;
                    }
                }
                axes.sort_unstable();
                if h != 1 || w != 1 || axes != [2, 3] {
                    return Err(fail(
                        n,
                        format!("squeeze of axes {axes:?} of [N, {c}, {h}, {w}] is not a flatten"),
                    ));
                }
            }
        }
        if x.pooled {
            // The graph's global average pool already gives [N, C].
            self.alias(
                n,
                Value {
                    shape: Shape::Flat(c),
                    pooled: false,
                    ..x
                },
            );
            return Ok(());
        }
        let name = self.name(n, None, false);
        let id = self.b.flatten(&name, x.node)?;
        self.set(n, n, id, Shape::Flat(features), false);
        Ok(())
    }

    fn flat_input(&self, n: &NodeProto) -> Result<(Value, usize)> {
        let x = self.value(n, 0)?;
        match x.shape {
            Shape::Flat(c) => Ok((x, c)),
            Shape::Map(..) => Err(fail(
                n,
                "input is a feature map; a linear layer needs [N, C] (flatten it first)",
            )),
        }
    }

    /// A linear layer of `[c_out, c_in]` weights `w` reading `x`; the ONNX
    /// nodes `n` (which names it) to `last` (whose output it gives).
    fn linear(
        &mut self,
        (n, last): (&'m NodeProto, &'m NodeProto),
        x: Value,
        (w, c_in, c_out): (Vec<f32>, usize, usize),
        bias: Option<Vec<f32>>,
    ) -> Result<()> {
        let dev = self.dev.clone();
        let l = Linear {
            weight: Tensor::param(w, [c_out, c_in], &dev)?,
            bias: bias.map(|b| Tensor::param(b, [c_out], &dev)).transpose()?,
        };
        let weight_name = n.input[1].clone();
        let name = self.name(n, Some(&weight_name), false);
        let id = self.b.linear_unit(&name, x.node, l)?;
        self.set(n, last, id, Shape::Flat(c_out), false);
        Ok(())
    }

    fn gemm(&mut self, n: &'m NodeProto) -> Result<()> {
        let attrs = Attrs::new(n, &["alpha", "beta", "transA", "transB"])?;
        if attrs.float(n, "alpha", 1.0)? != 1.0 || attrs.int(n, "transA", 0)? != 0 {
            return Err(fail(n, "only alpha = 1 and transA = 0 are supported"));
        }
        let (x, c_in) = self.flat_input(n)?;
        let wc = self.konst(n, 1)?.clone();
        let trans_b = attrs.int(n, "transB", 0)? != 0;
        let (c_out, w) = match (wc.dims.as_slice(), wc.floats()) {
            ([o, i], Some(v)) if trans_b && *i == c_in => (*o, v.to_vec()),
            ([i, o], Some(v)) if !trans_b && *i == c_in => (*o, transpose(v, *i, *o)),
            _ => {
                return Err(fail(
                    n,
                    format!(
                        "weight of shape {:?} (transB {}) does not take {c_in} features",
                        wc.dims, trans_b as u8
                    ),
                ))
            }
        };
        let beta = attrs.float(n, "beta", 1.0)?;
        let bias = match n.input.get(2).filter(|s| !s.is_empty()) {
            None => None,
            Some(_) => {
                let c = self.konst(n, 2)?;
                let ok = c.len() == c_out && (c.dims == [c_out] || c.dims == [1, c_out]);
                match c.floats() {
                    Some(v) if ok => Some(v.iter().map(|&b| b * beta).collect()),
                    _ => {
                        return Err(fail(
                            n,
                            format!("bias of shape {:?} for {c_out} outputs", c.dims),
                        ))
                    }
                }
            }
        };
        self.linear((n, n), x, (w, c_in, c_out), bias)
    }

    fn matmul(&mut self, n: &'m NodeProto) -> Result<()> {
        Attrs::new(n, &[])?;
        let (x, c_in) = self.flat_input(n)?;
        let wc = self.konst(n, 1)?.clone();
        let (c_out, w) = match (wc.dims.as_slice(), wc.floats()) {
            ([i, o], Some(v)) if *i == c_in => (*o, transpose(v, *i, *o)),
            _ => {
                return Err(fail(
                    n,
                    format!(
                        "weight of shape {:?} does not take {c_in} features",
                        wc.dims
                    ),
                ))
            }
        };
        // A following Add of a constant [classes] vector is the bias.
        let mut bias = None;
        let mut last = n;
        if let Some(r) = self.followed_by(n, &["Add"]) {
            let a = &self.nodes[r];
            let k = usize::from(a.input.first() == n.output.first());
            if let Some(c) = a.input.get(k).and_then(|s| self.consts.get(s)) {
                if c.len() == c_out && c.dims.iter().product::<usize>() == c_out {
                    if let Some(v) = c.floats() {
                        Attrs::new(a, &[])?;
                        bias = Some(v.to_vec());
                        self.taken.insert(r);
                        last = a;
                    }
                }
            }
        }
        self.linear((n, last), x, (w, c_in, c_out), bias)
    }

    fn concat(&mut self, n: &'m NodeProto) -> Result<()> {
        let attrs = Attrs::new(n, &["axis"])?;
        let axis = attrs.int(n, "axis", i64::MIN)?;
        let xs = (0..n.input.len())
            .map(|k| self.value(n, k))
            .collect::<Result<Vec<_>>>()?;
        let Some(Shape::Map(_, h, w)) = xs.first().map(|v| v.shape) else {
            return Err(fail(n, "inputs must be [N, C, H, W] feature maps"));
        };
        if axis != 1 && axis != -3 {
            return Err(fail(
                n,
                format!("axis {axis}: only the channel axis (1) is supported"),
            ));
        }
        let mut c = 0;
        for v in &xs {
            match v.shape {
                Shape::Map(ci, hi, wi) if (hi, wi) == (h, w) => c += ci,
                s => {
                    return Err(fail(
                        n,
                        format!("input of shape {s:?} does not join [_, {h}, {w}] maps"),
                    ))
                }
            }
        }
        if xs.len() < 2 {
            let v = xs[0];
            self.alias(n, v);
            return Ok(());
        }
        let ids: Vec<NodeId> = xs.iter().map(|v| v.node).collect();
        let name = self.name(n, None, true);
        let id = self.b.concat(&name, &ids)?;
        self.set(n, n, id, Shape::Map(c, h, w), false);
        Ok(())
    }
}

/// `[rows, cols]` to `[cols, rows]`.
fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// A dotted module path (`layer1.0.conv1`): ASCII letters, digits, `_` and
/// single dots.
fn is_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}
