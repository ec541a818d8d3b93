//! Differentiable operations. Each op checks shapes (returning errors that name
//! them), runs the backend forward, and records its backward closure.

use crate::autograd::{self, Grads};
use crate::tensor::{Shape, Tensor};
use crate::{bail, Result};

/// A view of `x` under another shape with the same number of elements.
pub fn reshape(x: &Tensor, shape: Shape) -> Result<Tensor> {
    if shape.numel() != x.numel() {
        bail!(Shape, "cannot reshape {} into {shape}", x.shape());
    }
    let s = x.device().backend().copy(&x.storage())?;
    let y = Tensor::from_storage(s, shape, x.device().clone(), autograd::should_record(&[x]));
    if y.tracked() {
        let x = x.clone();
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let g = reshape_untracked(gy, x.shape().clone())?;
            grads.accumulate(&x, g)
        });
    }
    Ok(y)
}

fn reshape_untracked(x: &Tensor, shape: Shape) -> Result<Tensor> {
    autograd::no_grad(|| reshape(x, shape))
}
