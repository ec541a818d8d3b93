//! Building a [`Graph`] node by node. The builder tracks each node's channel
//! count (so layers size themselves from their input), draws the
//! initialization from one generator in node order, and refuses a name used
//! twice: every parameter, quantizer and output name is assigned exactly
//! once, here.

use super::{Graph, Node, NodeId, Op};
use crate::backend::Device;
use crate::nn::{Activation, Conv2d, ConvBn, Linear};
use crate::ops::{AvgPool2dParams, Conv2dParams, MaxPool2dParams};
use crate::rng::Rng;
use crate::{bail, Result};
use std::collections::HashSet;
use std::sync::Mutex;

pub struct GraphBuilder {
    rng: Rng,
    device: Device,
    nodes: Vec<Node>,
    /// Output channels of each node.
    channels: Vec<usize>,
    names: HashSet<String>,
}

impl GraphBuilder {
    /// A graph whose input has `channels` channels; initialization draws
    /// from `Rng::new(seed)` in the order nodes are added.
    pub fn new(channels: usize, device: &Device, seed: u64) -> Result<(GraphBuilder, NodeId)> {
        if channels == 0 {
            bail!(Usage, "a network needs at least one input channel");
        }
        let mut b = GraphBuilder {
            rng: Rng::new(seed),
            device: device.clone(),
            nodes: Vec::new(),
            channels: Vec::new(),
            names: HashSet::new(),
        };
        let x = b.push("input", Op::Input { channels }, vec![], channels)?;
        Ok((b, x))
    }

    pub fn channels(&self, x: NodeId) -> usize {
        self.channels[x]
    }

    /// The channels of node `x`, which `name` reads; an error when `x` does
    /// not exist yet.
    fn ch(&self, name: &str, x: NodeId) -> Result<usize> {
        match self.channels.get(x) {
            Some(&c) => Ok(c),
            None => bail!(
                Usage,
                "node '{name}' reads node {x}, which does not exist yet"
            ),
        }
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<NodeId>, channels: usize) -> Result<NodeId> {
        if !self.names.insert(name.to_string()) {
            bail!(Usage, "the graph has two nodes named '{name}'");
        }
        if let Some(&bad) = inputs.iter().find(|&&i| i >= self.nodes.len()) {
            bail!(
                Usage,
                "node '{name}' reads node {bad}, which does not exist yet"
            );
        }
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs,
            quant: None,
        });
        self.channels.push(channels);
        Ok(self.nodes.len() - 1)
    }

    /// Conv (no bias) + batch norm (+ ReLU), Kaiming-initialized.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_bn(
        &mut self,
        name: &str,
        x: NodeId,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        relu: bool,
    ) -> Result<NodeId> {
        let act = if relu {
            Activation::Relu
        } else {
            Activation::None
        };
        self.conv_bn_with(name, x, c_out, kernel, Conv2dParams::new(stride, pad), act)
    }

    /// Conv (no bias, any geometry: groups for depthwise) + batch norm +
    /// `act`, Kaiming-initialized.
    pub fn conv_bn_with(
        &mut self,
        name: &str,
        x: NodeId,
        c_out: usize,
        kernel: usize,
        params: Conv2dParams,
        act: Activation,
    ) -> Result<NodeId> {
        let c_in = self.ch(name, x)?;
        let g = params.groups.max(1);
        if !c_in.is_multiple_of(g) || !c_out.is_multiple_of(g) {
            bail!(
                Shape,
                "conv '{name}': {c_in} -> {c_out} channels cannot be split into {g} groups"
            );
        }
        let unit = ConvBn::new(
            &mut self.rng,
            &self.device,
            c_in,
            c_out,
            kernel,
            params,
            act,
        )?;
        self.push(name, Op::ConvBn(unit), vec![x], c_out)
    }

    /// A given Conv+BN unit (imported or rebuilt weights); its input
    /// channels must match `x`'s.
    pub fn conv_bn_unit(&mut self, name: &str, x: NodeId, unit: ConvBn) -> Result<NodeId> {
        let c_out = self.check_conv(name, x, &unit.conv)?;
        if unit.bn.weight.dims() != [c_out] {
            bail!(
                Shape,
                "conv '{name}': batch norm of {:?} for {c_out} channels",
                unit.bn.weight.dims()
            );
        }
        self.push(name, Op::ConvBn(unit), vec![x], c_out)
    }

    /// A given convolution with bias and no batch norm, then `act`.
    pub fn conv_unit(
        &mut self,
        name: &str,
        x: NodeId,
        conv: Conv2d,
        act: Activation,
    ) -> Result<NodeId> {
        let c_out = self.check_conv(name, x, &conv)?;
        self.push(name, Op::Conv { conv, act }, vec![x], c_out)
    }

    /// A given linear layer on `[N, C]` features with `C` = its inputs.
    pub fn linear_unit(&mut self, name: &str, x: NodeId, l: Linear) -> Result<NodeId> {
        let d = l.weight.dims().to_vec();
        let c_in = self.ch(name, x)?;
        if d.len() != 2 || d[1] != c_in || l.bias.as_ref().is_some_and(|b| b.dims() != [d[0]]) {
            bail!(
                Shape,
                "linear '{name}': weight {d:?} on {c_in} input features"
            );
        }
        self.push(name, Op::Linear(l), vec![x], d[0])
    }

    /// `[N, ...] -> [N, prod(...)]`.
    pub fn flatten(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let c = self.ch(name, x)?;
        self.push(name, Op::Flatten, vec![x], c)
    }

    /// The output channels of `conv` after checking it reads `x`'s channels.
    fn check_conv(&self, name: &str, x: NodeId, conv: &Conv2d) -> Result<usize> {
        let d = conv.weight.dims().to_vec();
        let c_in = self.ch(name, x)?;
        let g = conv.params.groups;
        if d.len() != 4 || g == 0 || d[1] * g != c_in || !d[0].is_multiple_of(g) {
            bail!(
                Shape,
                "conv '{name}': weight {d:?} with {g} groups on {c_in} input channels"
            );
        }
        if conv.bias.as_ref().is_some_and(|b| b.dims() != [d[0]]) {
            bail!(Shape, "conv '{name}': bias does not have {} values", d[0]);
        }
        Ok(d[0])
    }

    /// `a + b` (then ReLU when `relu`); both must have the same channels.
    pub fn add(&mut self, name: &str, a: NodeId, b: NodeId, relu: bool) -> Result<NodeId> {
        let (ca, cb) = (self.ch(name, a)?, self.ch(name, b)?);
        if ca != cb {
            bail!(Shape, "add '{name}': {ca} channels + {cb} channels");
        }
        self.push(name, Op::Add { relu }, vec![a, b], ca)
    }

    pub fn max_pool(&mut self, name: &str, x: NodeId, p: MaxPool2dParams) -> Result<NodeId> {
        let c = self.ch(name, x)?;
        self.push(name, Op::MaxPool(p), vec![x], c)
    }

    pub fn avg_pool(&mut self, name: &str, x: NodeId, p: AvgPool2dParams) -> Result<NodeId> {
        let c = self.ch(name, x)?;
        self.push(name, Op::AvgPool(p), vec![x], c)
    }

    /// The inputs joined along the channel axis (their planes must agree,
    /// which the forward checks).
    pub fn concat(&mut self, name: &str, xs: &[NodeId]) -> Result<NodeId> {
        if xs.len() < 2 {
            bail!(Usage, "concat '{name}' needs at least two inputs");
        }
        let c = xs
            .iter()
            .map(|&x| self.ch(name, x))
            .sum::<Result<usize>>()?;
        self.push(name, Op::Concat, xs.to_vec(), c)
    }

    pub fn global_avg_pool(&mut self, name: &str, x: NodeId) -> Result<NodeId> {
        let c = self.ch(name, x)?;
        self.push(name, Op::GlobalAvgPool, vec![x], c)
    }

    /// Fully connected layer on a `[N, C]` input (PyTorch's default init).
    pub fn linear(&mut self, name: &str, x: NodeId, c_out: usize, bias: bool) -> Result<NodeId> {
        if c_out == 0 {
            bail!(Usage, "linear '{name}' needs at least one output");
        }
        let c_in = self.ch(name, x)?;
        let l = Linear::new(&mut self.rng, &self.device, c_in, c_out, bias)?;
        self.push(name, Op::Linear(l), vec![x], c_out)
    }

    /// The graph, whose output is the last node added.
    pub fn finish(self) -> Graph {
        Graph {
            nodes: self.nodes,
            device: self.device,
            flags: Mutex::new(Default::default()),
        }
    }
}
