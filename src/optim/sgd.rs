//! SGD with momentum (optional Nesterov) and decoupled parameter groups:
//! weights get weight decay; biases and batch-norm parameters do not (unless
//! `decay_all` is set), the usual recipe for ResNets.

use crate::autograd::{self, Grads};
use crate::backend::SgdStep;
use crate::nn::{Named, Role};
use crate::tensor::Tensor;
use crate::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// Apply weight decay to biases and norm parameters too.
    pub decay_all: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
            decay_all: false,
        }
    }
}

struct Slot {
    name: String,
    param: Tensor,
    momentum: Tensor,
    decay: bool,
}

pub struct Sgd {
    pub config: SgdConfig,
    slots: Vec<Slot>,
}

impl Sgd {
    /// Takes the trainable tensors of `params` (buffers are skipped).
    pub fn new(params: &[Named], config: SgdConfig) -> Result<Self> {
        let slots = params
            .iter()
            .filter(|p| p.role.trainable())
            .map(|p| {
                Ok(Slot {
                    name: p.name.clone(),
                    param: p.tensor.clone(),
                    momentum: Tensor::zeros(p.tensor.shape().clone(), p.tensor.device())?,
                    decay: config.decay_all || p.role == Role::Weight,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sgd { config, slots })
    }

    /// One step at learning rate `lr`. Parameters without a gradient (unused
    /// in this forward pass) are left alone, momentum included.
    pub fn step(&mut self, grads: &Grads, lr: f32) -> Result<()> {
        autograd::no_grad(|| {
            for s in &self.slots {
                let Some(g) = grads.get(&s.param) else {
                    continue;
                };
                let step = SgdStep {
                    lr,
                    momentum: self.config.momentum,
                    weight_decay: if s.decay {
                        self.config.weight_decay
                    } else {
                        0.0
                    },
                    nesterov: self.config.nesterov,
                };
                s.param.device().backend().sgd_step(
                    &step,
                    &mut s.param.storage_mut(),
                    &g.storage(),
                    &mut s.momentum.storage_mut(),
                )?;
            }
            Ok(())
        })
    }

    /// Momentum buffers by parameter name, for checkpoints.
    pub fn momentum_buffers(&self) -> Vec<(String, Tensor)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.momentum.clone()))
            .collect()
    }

    /// Overwrites the momentum buffer of parameter `name` (from a checkpoint).
    /// Errors if no trainable parameter has that name or the length differs.
    pub fn set_momentum(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let Some(slot) = self.slots.iter().find(|s| s.name == name) else {
            bail!(
                Usage,
                "no trainable parameter named `{name}` in the optimizer"
            );
        };
        slot.momentum.copy_from_slice(values)
    }
}
