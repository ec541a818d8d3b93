//! The float passes over a [`Graph`]: the FP32 forward and, once the graph
//! is quantized, the QAT forward with fake quantization at every quantized
//! node (S3, S4). Each node's output is dropped after its last reader.

use super::{Graph, Node, Op};
use crate::nn::{Activation, Mode, Module, QatFlags};
use crate::ops;
use crate::tensor::Tensor;
use crate::{bail, Result};

/// A callback given every node's output in a forward pass: the node's index
/// and the tensor.
pub type Observer<'a> = &'a mut dyn FnMut(usize, &Tensor) -> Result<()>;

impl Graph {
    pub(super) fn run(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.run_observed(x, mode, None)
    }

    /// The forward pass ([`Module::forward`]), handing every node's output
    /// to `observe` as it is computed (calibration reads activations this
    /// way).
    pub fn forward_observed(&self, x: &Tensor, mode: Mode, observe: Observer) -> Result<Tensor> {
        self.run_observed(x, mode, Some(observe))
    }

    fn run_observed(
        &self,
        x: &Tensor,
        mode: Mode,
        mut observe: Option<Observer>,
    ) -> Result<Tensor> {
        let flags = self.is_quantized().then(|| self.qat_flags());
        let n = self.nodes.len();
        // The last node reading each output (the output node reads itself).
        let mut last_use: Vec<usize> = (0..n).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for &j in &node.inputs {
                last_use[j] = i;
            }
        }
        let mut values: Vec<Option<Tensor>> = vec![None; n];
        for (i, node) in self.nodes.iter().enumerate() {
            let inputs: Vec<&Tensor> = node
                .inputs
                .iter()
                .map(|&j| {
                    values[j]
                        .as_ref()
                        .expect("inputs come before their readers")
                })
                .collect();
            let y = match flags {
                None => fp32_node(node, x, &inputs, mode)?,
                Some(f) => qat_node(node, x, &inputs, mode, f)?,
            };
            if let Some(f) = observe.as_mut() {
                f(i, &y)?;
            }
            for &j in &node.inputs {
                if last_use[j] == i {
                    values[j] = None;
                }
            }
            values[i] = Some(y);
        }
        Ok(values[n - 1].take().expect("the output was computed"))
    }
}

fn input<'a>(node: &Node, inputs: &[&'a Tensor], k: usize) -> Result<&'a Tensor> {
    match inputs.get(k) {
        Some(t) => Ok(t),
        None => bail!(Usage, "{} ({}) has no input {k}", node.name, node.op.kind()),
    }
}

/// A node of the float forward.
fn fp32_node(node: &Node, x: &Tensor, inputs: &[&Tensor], mode: Mode) -> Result<Tensor> {
    let a = || input(node, inputs, 0);
    Ok(match &node.op {
        Op::Input { .. } => x.clone(),
        Op::ConvBn(u) => u.forward(a()?, mode)?,
        Op::Conv { conv, act } => act.apply(conv.forward(a()?, mode)?)?,
        Op::Add { relu: false } => ops::add(a()?, input(node, inputs, 1)?)?,
        Op::Add { relu: true } => ops::add_relu(a()?, input(node, inputs, 1)?)?,
        Op::MaxPool(p) => ops::max_pool2d(a()?, *p)?,
        Op::AvgPool(p) => ops::avg_pool2d(a()?, *p)?,
        Op::GlobalAvgPool => ops::global_avg_pool(a()?)?,
        Op::Flatten => ops::flatten(a()?)?,
        Op::Linear(l) => l.forward(a()?, mode)?,
        Op::Concat => ops::concat(inputs, 1)?,
    })
}

/// A node of the QAT forward: weights fake-quantized per channel (folded
/// with batch norm for ConvBn), outputs through the node's activation
/// quantizer.
fn qat_node(
    node: &Node,
    x: &Tensor,
    inputs: &[&Tensor],
    mode: Mode,
    flags: QatFlags,
) -> Result<Tensor> {
    let a = || input(node, inputs, 0);
    let y = match &node.op {
        Op::Input { .. } => x.clone(),
        // The unit applies its quantizer itself (after its activation).
        Op::ConvBn(u) => return u.forward_qat(a()?, mode, flags, node.quantizer()?),
        Op::Conv { conv, act } => {
            let (w_q, _) = ops::fake_quant_channel(&conv.weight)?;
            let y = ops::conv2d(a()?, &w_q, conv.bias.as_ref(), conv.params)?;
            match &node.quant {
                Some(q) if *act == Activation::Relu => return q.forward_relu(&y, mode, flags),
                _ => act.apply(y)?,
            }
        }
        Op::Add { relu } => {
            let sum = ops::add(a()?, input(node, inputs, 1)?)?;
            match &node.quant {
                // ReLU and quantizer in one pass where the backend can.
                Some(q) if *relu => return q.forward_relu(&sum, mode, flags),
                _ => relu_if(*relu, sum)?,
            }
        }
        Op::MaxPool(p) => ops::max_pool2d(a()?, *p)?,
        Op::AvgPool(p) => ops::avg_pool2d(a()?, *p)?,
        Op::GlobalAvgPool => ops::global_avg_pool(a()?)?,
        Op::Flatten => ops::flatten(a()?)?,
        Op::Linear(l) => {
            let (w_q, _) = ops::fake_quant_channel(&l.weight)?;
            ops::linear(a()?, &w_q, l.bias.as_ref())?
        }
        // The inputs are fake-quantized already; the node's quantizer below
        // requantizes the joined tensor, as the int8 concat does per input.
        Op::Concat => ops::concat(inputs, 1)?,
    };
    match &node.quant {
        Some(q) => q.forward(&y, mode, flags),
        None => Ok(y),
    }
}

fn relu_if(relu: bool, y: Tensor) -> Result<Tensor> {
    if relu {
        ops::relu(&y)
    } else {
        Ok(y)
    }
}
