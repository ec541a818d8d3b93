//! A graph's topology as data: every node's name, inputs, kind and layer
//! shapes, without weights. Checkpoints of graphs that no built-in builder
//! makes (imported networks) carry it, and [`Graph::from_spec`] rebuilds the
//! graph from it (zero weights, which the checkpoint then fills).

use super::{Graph, GraphBuilder, NodeId, Op};
use crate::backend::Device;
use crate::nn::{Activation, BatchNorm2d, Conv2d, ConvBn, Linear};
use crate::ops::{AvgPool2dParams, Conv2dParams, MaxPool2dParams};
use crate::tensor::Tensor;
use crate::{bail, Result};
use serde::{Deserialize, Serialize};

/// The nodes of a graph in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    pub nodes: Vec<NodeSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub inputs: Vec<NodeId>,
    #[serde(flatten)]
    pub op: OpSpec,
}

/// A node's kind and the shapes of its layers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpSpec {
    Input {
        channels: usize,
    },
    ConvBn {
        conv: ConvSpec,
        act: ActSpec,
        eps: f32,
        momentum: f32,
    },
    Conv {
        conv: ConvSpec,
        act: ActSpec,
    },
    Add {
        relu: bool,
    },
    MaxPool {
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
    },
    AvgPool {
        kernel: [usize; 2],
        stride: [usize; 2],
        pad: [usize; 2],
        count_include_pad: bool,
        ceil_mode: bool,
    },
    GlobalAvgPool,
    Flatten,
    Linear {
        c_in: usize,
        c_out: usize,
        bias: bool,
    },
    Concat,
}

/// A convolution's weight shape `[c_out, c_in / groups, kernel]` and
/// geometry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
    pub bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActSpec {
    None,
    Relu,
    Relu6,
}

impl From<Activation> for ActSpec {
    fn from(a: Activation) -> Self {
        match a {
            Activation::None => ActSpec::None,
            Activation::Relu => ActSpec::Relu,
            Activation::Relu6 => ActSpec::Relu6,
        }
    }
}

impl From<ActSpec> for Activation {
    fn from(a: ActSpec) -> Self {
        match a {
            ActSpec::None => Activation::None,
            ActSpec::Relu => Activation::Relu,
            ActSpec::Relu6 => Activation::Relu6,
        }
    }
}

/// The most parameters a spec may describe (about 4 GB of float32): a
/// larger count means an edited or corrupt file, refused before allocating.
const MAX_PARAMS: usize = 1 << 30;

impl ConvSpec {
    fn of(c: &Conv2d) -> ConvSpec {
        let d = c.weight.dims();
        let p = c.params;
        ConvSpec {
            c_in: d[1] * p.groups,
            c_out: d[0],
            kernel: [d[2], d[3]],
            stride: [p.stride.0, p.stride.1],
            pad: [p.pad.0, p.pad.1],
            dilation: [p.dilation.0, p.dilation.1],
            groups: p.groups,
            bias: c.bias.is_some(),
        }
    }

    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: (self.stride[0], self.stride[1]),
            pad: (self.pad[0], self.pad[1]),
            dilation: (self.dilation[0], self.dilation[1]),
            groups: self.groups,
        }
    }

    fn weight_len(&self) -> Option<usize> {
        if self.groups == 0 || !self.c_in.is_multiple_of(self.groups) {
            return None;
        }
        (self.c_in / self.groups)
            .checked_mul(self.c_out)?
            .checked_mul(self.kernel[0])?
            .checked_mul(self.kernel[1])
    }

    /// A convolution of this shape with zero weights.
    fn zeros(&self, dev: &Device) -> Result<Conv2d> {
        let weight = Tensor::param(
            vec![0.0; self.weight_len().unwrap_or(0)],
            [
                self.c_out,
                self.c_in / self.groups.max(1),
                self.kernel[0],
                self.kernel[1],
            ],
            dev,
        )?;
        let bias = if self.bias {
            Some(Tensor::param(vec![0.0; self.c_out], [self.c_out], dev)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            params: self.params(),
        })
    }
}

impl GraphSpec {
    /// The number of parameters and buffers the spec describes, or `None`
    /// when a shape is invalid or the count overflows.
    pub fn param_count(&self) -> Option<usize> {
        let mut total = 0usize;
        for n in &self.nodes {
            let k = match &n.op {
                OpSpec::ConvBn { conv, .. } => conv.weight_len()?.checked_add(4 * conv.c_out)?,
                OpSpec::Conv { conv, .. } => conv
                    .weight_len()?
                    .checked_add(conv.bias as usize * conv.c_out)?,
                OpSpec::Linear { c_in, c_out, bias } => c_in
                    .checked_mul(*c_out)?
                    .checked_add(*bias as usize * c_out)?,
                _ => 0,
            };
            total = total.checked_add(k)?;
        }
        Some(total)
    }
}

impl Graph {
    /// The topology of this graph (no weights).
    pub fn spec(&self) -> GraphSpec {
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeSpec {
                name: n.name.clone(),
                inputs: n.inputs.clone(),
                op: match &n.op {
                    Op::Input { channels } => OpSpec::Input {
                        channels: *channels,
                    },
                    Op::ConvBn(u) => OpSpec::ConvBn {
                        conv: ConvSpec::of(&u.conv),
                        act: u.act.into(),
                        eps: u.bn.eps,
                        momentum: u.bn.momentum,
                    },
                    Op::Conv { conv, act } => OpSpec::Conv {
                        conv: ConvSpec::of(conv),
                        act: (*act).into(),
                    },
                    Op::Add { relu } => OpSpec::Add { relu: *relu },
                    Op::MaxPool(p) => OpSpec::MaxPool {
                        kernel: [p.kernel.0, p.kernel.1],
                        stride: [p.stride.0, p.stride.1],
                        pad: [p.pad.0, p.pad.1],
                    },
                    Op::AvgPool(p) => OpSpec::AvgPool {
                        kernel: [p.kernel.0, p.kernel.1],
                        stride: [p.stride.0, p.stride.1],
                        pad: [p.pad.0, p.pad.1],
                        count_include_pad: p.count_include_pad,
                        ceil_mode: p.ceil_mode,
                    },
                    Op::GlobalAvgPool => OpSpec::GlobalAvgPool,
                    Op::Flatten => OpSpec::Flatten,
                    Op::Linear(l) => {
                        let d = l.weight.dims();
                        OpSpec::Linear {
                            c_in: d[1],
                            c_out: d[0],
                            bias: l.bias.is_some(),
                        }
                    }
                    Op::Concat => OpSpec::Concat,
                },
            })
            .collect();
        GraphSpec { nodes }
    }

    /// The graph `spec` describes, on `dev`, with zero weights and unit
    /// batch-norm statistics (load a checkpoint into it). Every node is
    /// checked as the builder checks it (names, inputs, channel counts).
    pub fn from_spec(spec: &GraphSpec, dev: &Device) -> Result<Graph> {
        match spec.param_count() {
            Some(n) if n <= MAX_PARAMS => {}
            _ => bail!(
                Data,
                "the graph description has an invalid layer shape or more than {MAX_PARAMS} parameters"
            ),
        }
        let Some(NodeSpec {
            op: OpSpec::Input { channels },
            ..
        }) = spec.nodes.first()
        else {
            bail!(Data, "the graph description does not start with its input");
        };
        let (mut b, _) = GraphBuilder::new(*channels, dev, 0)?;
        for (i, n) in spec.nodes.iter().enumerate().skip(1) {
            let name = n.name.as_str();
            let one = || -> Result<NodeId> {
                match n.inputs.as_slice() {
                    [x] => Ok(*x),
                    _ => bail!(Data, "node {i} '{name}' must have one input"),
                }
            };
            match &n.op {
                OpSpec::Input { .. } => bail!(Data, "node {i} '{name}': a second input"),
                OpSpec::ConvBn {
                    conv,
                    act,
                    eps,
                    momentum,
                } => {
                    let mut bn = BatchNorm2d::new(dev, conv.c_out)?;
                    bn.eps = *eps;
                    bn.momentum = *momentum;
                    let unit = ConvBn {
                        conv: conv.zeros(dev)?,
                        bn,
                        act: (*act).into(),
                    };
                    b.conv_bn_unit(name, one()?, unit)?;
                }
                OpSpec::Conv { conv, act } => {
                    b.conv_unit(name, one()?, conv.zeros(dev)?, (*act).into())?;
                }
                OpSpec::Add { relu } => match n.inputs.as_slice() {
                    [a, c] => {
                        b.add(name, *a, *c, *relu)?;
                    }
                    _ => bail!(Data, "add '{name}' must have two inputs"),
                },
                OpSpec::MaxPool {
                    kernel,
                    stride,
                    pad,
                } => {
                    let p = MaxPool2dParams {
                        kernel: (kernel[0], kernel[1]),
                        stride: (stride[0], stride[1]),
                        pad: (pad[0], pad[1]),
                    };
                    b.max_pool(name, one()?, p)?;
                }
                OpSpec::AvgPool {
                    kernel,
                    stride,
                    pad,
                    count_include_pad,
                    ceil_mode,
                } => {
                    let p = AvgPool2dParams {
                        kernel: (kernel[0], kernel[1]),
                        stride: (stride[0], stride[1]),
                        pad: (pad[0], pad[1]),
                        count_include_pad: *count_include_pad,
                        ceil_mode: *ceil_mode,
                    };
                    b.avg_pool(name, one()?, p)?;
                }
                OpSpec::GlobalAvgPool => {
                    b.global_avg_pool(name, one()?)?;
                }
                OpSpec::Flatten => {
                    b.flatten(name, one()?)?;
                }
                OpSpec::Linear { c_in, c_out, bias } => {
                    let weight = Tensor::param(vec![0.0; c_in * c_out], [*c_out, *c_in], dev)?;
                    let bias = if *bias {
                        Some(Tensor::param(vec![0.0; *c_out], [*c_out], dev)?)
                    } else {
                        None
                    };
                    b.linear_unit(name, one()?, Linear { weight, bias })?;
                }
                OpSpec::Concat => {
                    b.concat(name, &n.inputs)?;
                }
            }
        }
        Ok(b.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{self, Arch};
    use crate::nn::Module;

    /// Every built-in architecture survives spec -> JSON -> spec -> graph
    /// with the same topology and parameter names and shapes.
    #[test]
    fn specs_round_trip_for_every_builtin_architecture() {
        let dev = Device::cpu();
        for (arch, name) in Arch::ALL {
            if matches!(
                name,
                "resnet34" | "resnet50" | "mobilenet_v2" | "mobilenet_v2_x0.75"
            ) {
                continue; // the same builders as their smaller siblings; slow to build
            }
            let g = models::build(arch, 1, 10, &dev, 0).unwrap();
            let spec = g.spec();
            let json = serde_json::to_string(&spec).unwrap();
            let back: GraphSpec = serde_json::from_str(&json).unwrap();
            assert_eq!(back, spec, "{name}");
            let h = Graph::from_spec(&back, &dev).unwrap();
            assert_eq!(h.spec(), spec, "{name}");
            let shapes = |g: &Graph| -> Vec<(String, Vec<usize>)> {
                g.state()
                    .into_iter()
                    .map(|n| (n.name, n.tensor.dims().to_vec()))
                    .collect()
            };
            assert_eq!(shapes(&g), shapes(&h), "{name}");
            let count: usize = shapes(&g)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(spec.param_count(), Some(count), "{name}");
        }
    }

    #[test]
    fn absurd_or_malformed_specs_are_refused() {
        let dev = Device::cpu();
        let g = models::build(Arch::Small, 1, 10, &dev, 0).unwrap();
        let mut spec = g.spec();
        if let OpSpec::Linear { c_in, .. } = &mut spec.nodes.last_mut().unwrap().op {
            *c_in = 1 << 40;
        }
        assert!(Graph::from_spec(&spec, &dev).is_err());
        let mut spec = g.spec();
        spec.nodes[3].inputs = vec![7];
        assert!(Graph::from_spec(&spec, &dev).is_err());
        let mut spec = g.spec();
        spec.nodes.remove(0);
        assert!(Graph::from_spec(&spec, &dev).is_err());
    }
}
