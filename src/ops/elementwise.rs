//! Elementwise ops: residual add, ReLU, and hardtanh / ReLU6 (a clamp).

use super::{grad_like, output, same_device, unary_op};
use crate::autograd::{self, Grads};
use crate::tensor::Tensor;
use crate::{bail, Result};

/// The checked output of a residual add of `a` and `b` (equal shapes, one
/// device), tracked when either input is.
fn sum_output(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        bail!(Shape, "add: shapes {} and {} differ", a.shape(), b.shape());
    }
    same_device("add", &[a, b])?;
    output(
        a.shape().clone(),
        a.device(),
        autograd::should_record(&[a, b]),
    )
}

/// `a + b` for tensors of equal shape.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let y = sum_output(a, b)?;
    a.device()
        .backend()
        .add(&a.storage(), &b.storage(), &mut y.storage_mut())?;
    if y.tracked() {
        let (a, b) = (a.clone(), b.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            // Both inputs get `gy` itself: `accumulate` never adds into a
            // shared gradient in place.
            grads.accumulate(&b, gy.clone())?;
            grads.accumulate(&a, gy.clone())
        });
    }
    Ok(y)
}

/// `max(a + b, 0)`, a residual add and its ReLU: one pass where the
/// backend fuses them ([`crate::backend::Backend::fuses_add_relu`]), else
/// [`add`] then [`relu`]; the same bits and gradients either way (the
/// ReLU's gradient, handed to both inputs).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !a.device().backend().fuses_add_relu() {
        return relu(&add(a, b)?);
    }
    let y = sum_output(a, b)?;
    a.device()
        .backend()
        .add_relu(&a.storage(), &b.storage(), &mut y.storage_mut())?;
    if y.tracked() {
        let (a, b, y_saved) = (a.clone(), b.clone(), y.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let dx = grad_like(&a)?;
            a.device().backend().relu_bwd(
                &y_saved.storage(),
                &gy.storage(),
                &mut dx.storage_mut(),
            )?;
            grads.accumulate(&b, dx.clone())?;
            grads.accumulate(&a, dx)
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
        // The backward reads `y` itself (no copy): op outputs are never
        // written after the op, only gradients are accumulated in place.
        let (x, y_saved) = (x.clone(), y.clone());
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

/// `clamp(x, min, max)` with PyTorch's `hardtanh` gradient: `dy` passes
/// where `min < x < max` and is 0 outside **and at the bounds** (checked
/// against PyTorch 2.15.0, where `torch.clamp` agrees; see
/// `scripts/gen_golden.py`). A NaN input stays NaN and gets gradient 0
/// (PyTorch's own NaN gradient depends on the tensor's length: 1 on its
/// scalar path, 0 on its vectorized one).
pub fn hardtanh(x: &Tensor, min: f32, max: f32) -> Result<Tensor> {
    if min.is_nan() || max.is_nan() || min > max {
        bail!(
            Usage,
            "hardtanh: bounds [{min}, {max}] must be numbers with min <= max"
        );
    }
    unary_op(
        x,
        x.shape().clone(),
        |be, x, y| be.clamp_fwd(min, max, x, y),
        move |be, x, gy, dx| be.clamp_bwd(min, max, x, gy, dx),
    )
}

/// `min(max(x, 0), 6)` (`torch.nn.functional.relu6`, which is
/// `hardtanh(x, 0, 6)`): the gradient is 1 for `0 < x < 6` and 0 elsewhere,
/// including `x = 0` and `x = 6` exactly.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    hardtanh(x, 0.0, 6.0)
}
