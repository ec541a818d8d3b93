//! The layers of a ResNet.

use super::{init, join, ActQuant, Mode, Module, Named, QatFlags, Role};
use crate::backend::Device;
use crate::ops::{self, BatchNormArgs, Conv2dParams};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// 2-d convolution with OIHW weights, Kaiming-initialized.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: Conv2dParams,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rng: &mut Rng,
        device: &Device,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        params: Conv2dParams,
        bias: bool,
    ) -> Result<Self> {
        let cg = c_in / params.groups.max(1);
        let len = c_out * cg * kernel * kernel;
        let w = init::kaiming_normal_fan_out(rng, len, c_out * kernel * kernel);
        let weight = Tensor::param(w, [c_out, cg, kernel, kernel], device)?;
        let bias = if bias {
            Some(Tensor::param(vec![0.0; c_out], [c_out], device)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight,
            bias,
            params,
        })
    }
    pub fn out_channels(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        ops::conv2d(x, &self.weight, self.bias.as_ref(), self.params)
    }
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        out.push(Named {
            name: join(prefix, "weight"),
            tensor: self.weight.clone(),
            role: Role::Weight,
        });
        if let Some(b) = &self.bias {
            out.push(Named {
                name: join(prefix, "bias"),
                tensor: b.clone(),
                role: Role::Bias,
            });
        }
    }
}

/// Batch norm with PyTorch's defaults (momentum 0.1, eps 1e-5).
pub struct BatchNorm2d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub momentum: f32,
    pub eps: f32,
}

impl BatchNorm2d {
    pub fn new(device: &Device, c: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            weight: Tensor::param(vec![1.0; c], [c], device)?,
            bias: Tensor::param(vec![0.0; c], [c], device)?,
            running_mean: Tensor::zeros([c], device)?,
            running_var: Tensor::full([c], 1.0, device)?,
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// The arguments of one call: batch statistics when `train`.
    fn args(&self, train: bool) -> BatchNormArgs<'_> {
        BatchNormArgs {
            running_mean: &self.running_mean,
            running_var: &self.running_var,
            train,
            momentum: self.momentum,
            eps: self.eps,
        }
    }

    /// The training forward followed by a ReLU ([`ops::batch_norm_relu`]).
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        ops::batch_norm_relu(x, &self.weight, &self.bias, self.args(true))
    }

    /// The training forward of `x * s[c]` ([`ops::batch_norm_scaled`]).
    pub fn forward_scaled(&self, x: &Tensor, s: &Tensor) -> Result<Tensor> {
        ops::batch_norm_scaled(x, s, &self.weight, &self.bias, self.args(true))
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        ops::batch_norm(x, &self.weight, &self.bias, self.args(mode == Mode::Train))
    }
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        out.push(Named {
            name: join(prefix, "weight"),
            tensor: self.weight.clone(),
            role: Role::Norm,
        });
        out.push(Named {
            name: join(prefix, "bias"),
            tensor: self.bias.clone(),
            role: Role::Norm,
        });
        out.push(Named {
            name: join(prefix, "running_mean"),
            tensor: self.running_mean.clone(),
            role: Role::Buffer,
        });
        out.push(Named {
            name: join(prefix, "running_var"),
            tensor: self.running_var.clone(),
            role: Role::Buffer,
        });
    }
}

/// Fully connected layer, `[out, in]` weights, PyTorch's default init.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(
        rng: &mut Rng,
        device: &Device,
        fin: usize,
        fout: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = Tensor::param(
            init::uniform_fan_in(rng, fout * fin, fin),
            [fout, fin],
            device,
        )?;
        let bias = if bias {
            Some(Tensor::param(
                init::uniform_fan_in(rng, fout, fin),
                [fout],
                device,
            )?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        out.push(Named {
            name: join(prefix, "weight"),
            tensor: self.weight.clone(),
            role: Role::Weight,
        });
        if let Some(b) = &self.bias {
            out.push(Named {
                name: join(prefix, "bias"),
                tensor: b.clone(),
                role: Role::Bias,
            });
        }
    }
}

/// Convolution, batch norm and an optional ReLU: the unit convolutional
/// networks are built from, and the unit quantization-aware training folds
/// (S4): in [`ConvBn::forward_qat`] weights are folded and fake-quantized
/// per channel, and the output goes through the node's activation
/// quantizer.
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    pub act: Activation,
}

/// The activation after a convolution (or a residual add).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    /// `min(max(x, 0), 6)` (MobileNet); in int8 the requantization clamp
    /// (spec S11).
    Relu6,
}

impl Activation {
    pub fn apply(self, y: Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(y),
            Activation::Relu => ops::relu(&y),
            Activation::Relu6 => ops::relu6(&y),
        }
    }
}

impl ConvBn {
    /// A `kernel` x `kernel` convolution (no bias) with geometry `params`
    /// (stride, padding, groups), batch norm and `act`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rng: &mut Rng,
        device: &Device,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        params: Conv2dParams,
        act: Activation,
    ) -> Result<Self> {
        Ok(ConvBn {
            conv: Conv2d::new(rng, device, c_in, c_out, kernel, params, false)?,
            bn: BatchNorm2d::new(device, c_out)?,
            act,
        })
    }

    /// The QAT training forward (S4). While batch norm trains:
    /// `w_fold = W * gamma / sigma_run` is fake-quantized per channel, the
    /// convolution output is divided by the same factor and normalized with
    /// batch statistics (so `y = conv(x, fq(w_fold)) * sigma_run / sigma_B +
    /// beta - gamma * mu_B / sigma_B`), running statistics keep updating.
    /// After the freeze: `conv(x, fq(w_fold)) + b_fold` with the running
    /// statistics. Gradients reach W, gamma and beta through the fold. The
    /// result goes through `quant`, the unit's activation quantizer.
    pub fn forward_qat(
        &self,
        x: &Tensor,
        mode: Mode,
        flags: QatFlags,
        quant: &ActQuant,
    ) -> Result<Tensor> {
        let bn = &self.bn;
        let sf = ops::bn_fold_factor(&bn.weight, &bn.running_var, bn.eps)?;
        let w_fold = ops::scale_channels(&self.conv.weight, &sf, 0)?;
        let (w_q, _) = ops::fake_quant_channel(&w_fold)?;
        let y = if flags.bn_frozen || mode == Mode::Eval {
            let shift = ops::neg_mul(&sf, &bn.running_mean)?;
            let b_fold = ops::add(&bn.bias, &shift)?;
            ops::conv2d(x, &w_q, Some(&b_fold), self.conv.params)?
        } else {
            let y = ops::conv2d(x, &w_q, None, self.conv.params)?;
            let inv = ops::reciprocal(&sf)?;
            bn.forward_scaled(&y, &inv)?
        };
        match self.act {
            Activation::Relu => quant.forward_relu(&y, mode, flags),
            act => quant.forward(&act.apply(y)?, mode, flags),
        }
    }
}

impl Module for ConvBn {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.conv.forward(x, mode)?;
        match self.act {
            // Batch norm and ReLU in the same passes where the backend can.
            Activation::Relu if mode == Mode::Train => self.bn.forward_relu(&y),
            act => act.apply(self.bn.forward(&y, mode)?),
        }
    }
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        self.conv.collect(&join(prefix, "conv"), out);
        self.bn.collect(&join(prefix, "bn"), out);
    }
}
