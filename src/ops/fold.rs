//! The per-channel factors of the batch-norm fold (QUANT_SPEC S4), computed
//! on the tensors' device so that a QAT step keeps them there: `gamma /
//! sigma_run`, the folded bias shift and the reciprocal that undoes the fold
//! while batch norm trains. Each forward and backward is one [`PairMap`]
//! launch, with the bits of the host expressions they replace.

use super::{grad_like, output, same_device};
use crate::autograd::{self, Grads};
use crate::backend::PairMap;
use crate::tensor::Tensor;
use crate::{bail, Result};

fn same_shape(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        bail!(
            Shape,
            "{what}: shapes {} and {} differ",
            a.shape(),
            b.shape()
        );
    }
    same_device(what, &[a, b])
}

/// `y = op(a, b)` into a fresh tensor, tracked when `tracked`.
fn pair(op: PairMap, a: &Tensor, b: &Tensor, tracked: bool) -> Result<Tensor> {
    let y = output(a.shape().clone(), a.device(), tracked)?;
    a.device()
        .backend()
        .pair_map(op, &a.storage(), &b.storage(), &mut y.storage_mut())?;
    Ok(y)
}

/// Records the backward `d input = op(dy, other)` for `y`, a [`pair`] of
/// `input` (the tensor that gets the gradient) and `other` (a constant).
fn record_pair_grad(y: &Tensor, op: PairMap, input: &Tensor, other: Tensor) {
    let input = input.clone();
    autograd::record(y, move |gy: &Tensor, grads: &mut Grads| {
        let dx = grad_like(&input)?;
        input.device().backend().pair_map(
            op,
            &gy.storage(),
            &other.storage(),
            &mut dx.storage_mut(),
        )?;
        grads.accumulate(&input, dx)
    });
}

/// `gamma / sqrt(running_var + eps)`, the factor that folds batch norm into
/// the convolution weights; the gradient reaches `gamma` only (the running
/// variance is a statistic), as `dy * (1 / sigma)`.
pub fn bn_fold_factor(gamma: &Tensor, running_var: &Tensor, eps: f32) -> Result<Tensor> {
    same_shape("bn_fold_factor", gamma, running_var)?;
    let sigma = pair(PairMap::SqrtAdd(eps), running_var, running_var, false)?;
    let y = pair(
        PairMap::Div,
        gamma,
        &sigma,
        autograd::should_record(&[gamma]),
    )?;
    if y.tracked() {
        record_pair_grad(&y, PairMap::MulRecip, gamma, sigma);
    }
    Ok(y)
}

/// `-x * c` with `c` a constant (the running mean: its value at this call is
/// kept for the backward, `dy * -c`).
pub fn neg_mul(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    same_shape("neg_mul", x, c)?;
    let y = pair(PairMap::NegMul, x, c, autograd::should_record(&[x]))?;
    if y.tracked() {
        record_pair_grad(&y, PairMap::NegMul, x, c.detach_copy()?);
    }
    Ok(y)
}

/// `1 / x`, with the gradient `dy * (-1 / (x * x))`.
pub fn reciprocal(x: &Tensor) -> Result<Tensor> {
    let y = pair(PairMap::Recip, x, x, autograd::should_record(&[x]))?;
    if y.tracked() {
        record_pair_grad(&y, PairMap::MulNegRecipSq, x, x.clone());
    }
    Ok(y)
}
