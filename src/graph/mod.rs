//! The network graph: the one description of a model that every pass reads
//! (FP32 forward, QAT forward, the lowering to the integer-exact model, both
//! ONNX exports, the quantizer list, checkpoints, `verify`).
//!
//! A [`Graph`] is a list of [`Node`]s in topological order; node `i` reads
//! the outputs of earlier nodes and produces one tensor. Each node has a
//! unique name, which is three things at once: the prefix of its parameters
//! (`layer1.0.conv1` owns `layer1.0.conv1.conv.weight`, ...), the name of
//! its activation quantizer in QAT models, and the name of its output in the
//! traces and the ONNX graphs. [`GraphBuilder`] assigns every name exactly
//! once.
//!
//! Where activations are quantized is derived from the node kinds (see
//! [`Op::is_quantized`]): the input, every convolution, residual add,
//! average pool, global average pool, concat and linear layer carries an
//! activation quantizer;
//! max pooling and flattening keep the quantization of their input (int8
//! max pooling is exact on the quantized values).

mod builder;
mod forward;
mod spec;

pub use builder::GraphBuilder;
pub use forward::Observer;
pub use spec::{ActSpec, ConvSpec, GraphSpec, NodeSpec, OpSpec};

use crate::backend::Device;
use crate::nn::{
    join, ActQuant, ActQuantState, Activation, Conv2d, ConvBn, Linear, Mode, Module, Named,
    QatFlags,
};
use crate::ops::{AvgPool2dParams, MaxPool2dParams};
use crate::quant::params::Scheme;
use crate::tensor::Tensor;
use crate::{bail, Result};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Index of a node in its graph.
pub type NodeId = usize;

/// What a node computes.
pub enum Op {
    /// The network input, `[N, channels, H, W]` floats.
    Input {
        channels: usize,
    },
    /// Convolution, batch norm and an activation: folded into one
    /// quantized convolution (S4) in QAT and int8.
    ConvBn(ConvBn),
    /// A convolution with bias and no batch norm (an already-folded
    /// network), with its activation.
    Conv {
        conv: Conv2d,
        act: Activation,
    },
    /// `a + b` of two tensors of one shape, then an optional ReLU (S7).
    Add {
        relu: bool,
    },
    MaxPool(MaxPool2dParams),
    /// Average pooling over windows (S6, one divisor per window).
    AvgPool(AvgPool2dParams),
    /// `[N, C, H, W] -> [N, C]` mean over the plane (S6).
    GlobalAvgPool,
    /// `[N, prod(...)]` of the input.
    Flatten,
    /// Fully connected layer on `[N, C]`.
    Linear(Linear),
    /// The inputs joined along the channel axis (S12): each input is
    /// requantized to the node's own activation quantization.
    Concat,
}

impl Op {
    /// Whether the node's output has an activation quantizer of its own in
    /// a QAT model (the others share their input's).
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Op::MaxPool(_) | Op::Flatten)
    }

    /// A short name of the kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::ConvBn(_) => "conv+bn",
            Op::Conv { .. } => "conv",
            Op::Add { .. } => "add",
            Op::MaxPool(_) => "max pool",
            Op::AvgPool(_) => "average pool",
            Op::GlobalAvgPool => "global average pool",
            Op::Flatten => "flatten",
            Op::Linear(_) => "linear",
            Op::Concat => "concat",
        }
    }
}

/// One node: its name, what it computes, which nodes it reads, and its
/// activation quantizer once the graph is quantized.
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
    pub quant: Option<ActQuant>,
}

impl Node {
    /// The activation quantizer, or an error saying the model is not a QAT
    /// model.
    pub fn quantizer(&self) -> Result<&ActQuant> {
        match &self.quant {
            Some(q) => Ok(q),
            None => bail!(
                Usage,
                "{} has no activation quantizer: the model is not a QAT model",
                self.name
            ),
        }
    }
}

/// A network: nodes in topological order, the last one its output.
pub struct Graph {
    nodes: Vec<Node>,
    device: Device,
    flags: Mutex<QatFlags>,
}

impl Graph {
    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The output node.
    pub fn output(&self) -> &Node {
        self.nodes
            .last()
            .expect("a graph has at least its input node")
    }

    /// Channels of the input node.
    pub fn in_channels(&self) -> usize {
        match self.nodes[0].op {
            Op::Input { channels } => channels,
            _ => 0,
        }
    }

    /// Attaches an activation quantizer to every node whose output is
    /// quantized (see [`Op::is_quantized`]), making this a QAT model.
    /// `momentum` is the observers' EMA weight, `scheme` how their ranges
    /// become scales and zero points (S2, S2s).
    pub fn quantize(&mut self, momentum: f32, scheme: Scheme) {
        for n in &mut self.nodes {
            if n.op.is_quantized() {
                n.quant = Some(ActQuant::new(momentum, scheme));
            }
        }
    }

    /// The quantization scheme of the activation quantizers (asymmetric for
    /// an FP32 graph, which has none).
    pub fn scheme(&self) -> Scheme {
        self.nodes
            .iter()
            .find_map(|n| n.quant.as_ref().map(ActQuant::scheme))
            .unwrap_or_default()
    }

    pub fn is_quantized(&self) -> bool {
        self.nodes.iter().any(|n| n.quant.is_some())
    }

    pub fn qat_flags(&self) -> QatFlags {
        *self.flags.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the schedule flags used by the next training forwards.
    pub fn set_qat_flags(&self, f: QatFlags) {
        *self.flags.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// Every activation quantizer with its name (its node's), in forward
    /// order.
    pub fn quantizers(&self) -> Vec<(&str, &ActQuant)> {
        self.nodes
            .iter()
            .filter_map(|n| n.quant.as_ref().map(|q| (n.name.as_str(), q)))
            .collect()
    }

    /// Observer states by quantizer name (for checkpoints).
    pub fn save_quantizers(&self) -> Result<BTreeMap<String, ActQuantState>> {
        self.quantizers()
            .into_iter()
            .map(|(n, q)| Ok((n.to_string(), q.save()?)))
            .collect()
    }

    /// Restores observer states; every quantizer must be present.
    pub fn load_quantizers(&self, states: &BTreeMap<String, ActQuantState>) -> Result<()> {
        for (name, q) in self.quantizers() {
            match states.get(name) {
                Some(s) => q.load(s),
                None => bail!(Data, "checkpoint has no state for quantizer '{name}'"),
            }
        }
        Ok(())
    }

    /// Freezes every activation quantizer (S2).
    pub fn freeze_quantizers(&self) -> Result<()> {
        self.quantizers().iter().try_for_each(|(_, q)| q.freeze())
    }

    /// The number of classes of the output (a linear layer's outputs).
    pub fn num_classes(&self) -> usize {
        match &self.output().op {
            Op::Linear(l) => l.weight.dims()[0],
            _ => 0,
        }
    }
}

impl Module for Graph {
    /// FP32 graphs: the float forward. QAT graphs: the fake-quantized
    /// forward (training statistics in `Train` mode, folded running
    /// statistics and frozen quantizers in `Eval` mode). The integer-exact
    /// evaluation is [`crate::int8::Int8Net`], built from the graph once.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.run(x, mode)
    }

    /// Parameters and buffers of every node under the node's name: a
    /// [`ConvBn`] keeps its convolution under `conv` and its batch norm
    /// under `bn`; a plain convolution and a linear layer keep `weight` and
    /// `bias` directly.
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        for n in &self.nodes {
            let p = join(prefix, &n.name);
            match &n.op {
                Op::ConvBn(u) => u.collect(&p, out),
                Op::Conv { conv, .. } => conv.collect(&p, out),
                Op::Linear(l) => l.collect(&p, out),
                Op::Input { .. }
                | Op::Add { .. }
                | Op::MaxPool(_)
                | Op::AvgPool(_)
                | Op::GlobalAvgPool
                | Op::Flatten
                | Op::Concat => {}
            }
        }
    }
}
