//! Modules: layers that own named parameters and buffers and compose into
//! models. A module's forward takes a [`Mode`]; parameters and buffers are
//! addressed by dotted names built with [`join`]: a [`ConvBn`] unit keeps its
//! convolution under `conv` and its batch norm under `bn`, so a ResNet has
//! `stem.conv.weight`, `layer1.0.conv1.conv.weight`,
//! `layer1.0.conv1.bn.running_var`, `layer2.0.downsample.bn.bias` and
//! `fc.weight`. Checkpoints store these as `model/<name>` (and the momentum
//! as `momentum/<name>`), the float ONNX export keeps them, and the int8
//! export names a folded unit by its prefix (`layer1.0.conv1`).

mod act_quant;
mod init;
mod layers;

pub use act_quant::{ActQuant, ActQuantState, QatFlags};
pub use init::{kaiming_normal_fan_out, uniform_fan_in};
pub use layers::{Activation, BatchNorm2d, Conv2d, ConvBn, Linear};

use crate::tensor::Tensor;
use crate::Result;

/// Training (batch statistics, tape recording) or evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What a named tensor is for; optimizers use it for parameter groups (no
/// weight decay on biases and norm parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Weight,
    Bias,
    /// Batch-norm scale and shift.
    Norm,
    /// State that is saved but not trained (running statistics, observers).
    Buffer,
}

impl Role {
    pub fn trainable(self) -> bool {
        self != Role::Buffer
    }
}

/// A tensor of a module, with its dotted name.
#[derive(Clone, Debug)]
pub struct Named {
    pub name: String,
    pub tensor: Tensor,
    pub role: Role,
}

pub trait Module {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;
    /// Appends every parameter and buffer, names prefixed with `prefix`.
    fn collect(&self, prefix: &str, out: &mut Vec<Named>);

    /// All parameters and buffers, in a stable order.
    fn state(&self) -> Vec<Named> {
        let mut v = Vec::new();
        self.collect("", &mut v);
        v
    }
    /// The trainable parameters only.
    fn parameters(&self) -> Vec<Named> {
        self.state()
            .into_iter()
            .filter(|n| n.role.trainable())
            .collect()
    }
}

/// `prefix.name`, or `name` at the top level.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
