//! Differentiable operations. Each op checks shapes (returning errors that name
//! them), runs the backend forward, and records its backward closure on the
//! tape when an input is tracked.

mod concat;
mod conv;
mod elementwise;
mod fold;
mod linear;
mod loss;
mod norm;
mod pool;
mod quant;

pub use concat::concat;
pub use conv::{conv2d, Conv2dParams};
pub use elementwise::{add, add_relu, hardtanh, relu, relu6};
pub use fold::{bn_fold_factor, neg_mul, reciprocal};
pub use linear::{linear, matmul};
pub use loss::{cross_entropy, cross_entropy_with_hits};
pub use norm::{batch_norm, batch_norm_relu, batch_norm_scaled, BatchNormArgs};
pub use pool::{
    avg_pool2d, flatten, global_avg_pool, max_pool2d, AvgPool2dParams, MaxPool2dParams,
};
pub use quant::{
    fake_quant_act, fake_quant_channel, fake_quant_tensor, relu_fake_quant_act, scale_channels,
};

use crate::autograd::{self, Grads};
use crate::backend::{Backend, Device, Storage};
use crate::tensor::{Shape, Tensor};
use crate::{bail, Result};

/// A tensor for an op's output, tracked when the op records. Its contents are
/// unspecified ([`Backend::empty`]): the primitive that follows must write
/// every element (every primitive that does not say "accumulates" does).
pub(crate) fn output(shape: impl Into<Shape>, device: &Device, tracked: bool) -> Result<Tensor> {
    let shape = shape.into();
    let s = device.backend().empty(shape.numel())?;
    Ok(Tensor::from_storage(s, shape, device.clone(), tracked))
}

/// An untracked gradient buffer shaped like `t`.
pub(crate) fn grad_like(t: &Tensor) -> Result<Tensor> {
    output(t.shape().clone(), t.device(), false)
}

/// A single-input op whose backward needs only `x` and the output gradient:
/// `fwd(backend, x, y)` fills a fresh output of `shape`, and when gradients
/// flow, `bwd(backend, x, gy, dx)` is recorded for the backward pass.
pub(crate) fn unary_op(
    x: &Tensor,
    shape: impl Into<Shape>,
    fwd: impl FnOnce(&dyn Backend, &Storage, &mut Storage) -> Result<()>,
    bwd: impl FnOnce(&dyn Backend, &Storage, &Storage, &mut Storage) -> Result<()> + 'static,
) -> Result<Tensor> {
    let y = output(shape, x.device(), autograd::should_record(&[x]))?;
    fwd(x.device().backend(), &x.storage(), &mut y.storage_mut())?;
    if y.tracked() {
        let x = x.clone();
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let dx = grad_like(&x)?;
            bwd(
                x.device().backend(),
                &x.storage(),
                &gy.storage(),
                &mut dx.storage_mut(),
            )?;
            grads.accumulate(&x, dx)
        });
    }
    Ok(y)
}

/// Checks that every tensor shares the first one's device.
pub(crate) fn same_device(op: &str, ts: &[&Tensor]) -> Result<()> {
    for t in &ts[1..] {
        ts[0].check_same_device(t, op)?;
    }
    Ok(())
}

/// A copy of `x` under another shape with the same number of elements.
pub fn reshape(x: &Tensor, shape: Shape) -> Result<Tensor> {
    if shape.numel() != x.numel() {
        bail!(Shape, "cannot reshape {} into {shape}", x.shape());
    }
    let s = x.device().backend().copy(&x.storage())?;
    let y = Tensor::from_storage(s, shape, x.device().clone(), autograd::should_record(&[x]));
    if y.tracked() {
        let x = x.clone();
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let g = autograd::no_grad(|| reshape(gy, x.shape().clone()))?;
            grads.accumulate(&x, g)
        });
    }
    Ok(y)
}
