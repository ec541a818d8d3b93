//! Elementwise ops: residual add and ReLU.

use super::{grad_like, output, same_device};
use crate::autograd::{self, Grads};
use crate::tensor::Tensor;
use crate::{bail, Result};

/// `a + b` for tensors of equal shape.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!(Shape, "add: shapes {} and {} differ", a.shape(), b.shape());
    }
    same_device("add", &[a, b])?;
    let y = output(
        a.shape().clone(),
        a.device(),
        autograd::should_record(&[a, b]),
    )?;
    a.device()
        .backend()
        .add(&a.storage(), &b.storage(), &mut y.storage_mut())?;
    if y.tracked() {
        let (a, b) = (a.clone(), b.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            if b.tracked() {
                grads.accumulate(&b, gy.detach_copy()?)?;
            }
            grads.accumulate(&a, gy.clone())
        });
    }
    Ok(y)
}

/// `max(x, 0)`; the gradient passes where the output is positive.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let y = output(x.shape().clone(), x.device(), autograd::should_record(&[x]))?;
    x.device()
        .backend()
        .relu_fwd(&x.storage(), &mut y.storage_mut())?;
    if y.tracked() {
        let (x, y_saved) = (x.clone(), y.detach_copy()?);
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let dx = grad_like(&x)?;
            x.device().backend().relu_bwd(
                &y_saved.storage(),
                &gy.storage(),
                &mut dx.storage_mut(),
            )?;
            grads.accumulate(&x, dx)
        });
    }
    Ok(y)
}
