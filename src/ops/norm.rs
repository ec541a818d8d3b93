//! Batch normalization over the channel dimension of NCHW (or N x C) input.

use super::{grad_like, output, same_device};
use crate::autograd::{self, Grads};
use crate::backend::BnGeom;
use crate::tensor::Tensor;
use crate::{bail, Result};

/// Running statistics and hyper-parameters of one batch-norm call.
pub struct BatchNormArgs<'a> {
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    /// Batch statistics (and running-stat update) when true; running
    /// statistics when false.
    pub train: bool,
    pub momentum: f32,
    pub eps: f32,
}

/// The checked geometry of a batch-norm call on `x` (`what` names it in
/// the errors).
fn geometry(
    what: &str,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    a: &BatchNormArgs,
) -> Result<BnGeom> {
    let (n, c, hw) = match x.dims() {
        [n, c] => (*n, *c, 1),
        [n, c, h, w] => (*n, *c, h * w),
        _ => bail!(
            Shape,
            "{what}: expected [N, C] or [N, C, H, W] input, got {}",
            x.shape()
        ),
    };
    for (name, t) in [
        ("gamma", gamma),
        ("beta", beta),
        ("running_mean", a.running_mean),
        ("running_var", a.running_var),
    ] {
        if t.dims() != [c] {
            bail!(
                Shape,
                "{what}: {name} has shape {}, expected [{c}] for input {}",
                t.shape(),
                x.shape()
            );
        }
    }
    same_device(what, &[x, gamma, beta, a.running_mean, a.running_var])?;
    if a.train && n * hw < 2 {
        bail!(
            Shape,
            "{what}: training needs more than one value per channel, got input {}",
            x.shape()
        );
    }
    let g = BnGeom {
        n,
        c,
        hw,
        eps: a.eps,
        momentum: a.momentum,
    };
    Ok(g)
}

/// `gamma * (x - mean) / sqrt(var + eps) + beta` per channel.
pub fn batch_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, a: BatchNormArgs) -> Result<Tensor> {
    let g = geometry("batch_norm", x, gamma, beta, &a)?;
    let c = g.c;
    let be = x.device().backend();
    let record = a.train && autograd::should_record(&[x, gamma, beta]);
    let y = output(x.shape().clone(), x.device(), record)?;
    if !a.train {
        be.batchnorm_fwd_eval(
            &g,
            &x.storage(),
            &gamma.storage(),
            &beta.storage(),
            &a.running_mean.storage(),
            &a.running_var.storage(),
            &mut y.storage_mut(),
        )?;
        return Ok(y);
    }
    let mean = output([c], x.device(), false)?;
    let invstd = output([c], x.device(), false)?;
    be.batchnorm_fwd_train(
        &g,
        &x.storage(),
        &gamma.storage(),
        &beta.storage(),
        &mut a.running_mean.storage_mut(),
        &mut a.running_var.storage_mut(),
        &mut y.storage_mut(),
        &mut mean.storage_mut(),
        &mut invstd.storage_mut(),
    )?;
    if y.tracked() {
        let (x, gamma, beta) = (x.clone(), gamma.clone(), beta.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let (dx, dgamma, dbeta) = (grad_like(&x)?, grad_like(&gamma)?, grad_like(&beta)?);
            x.device().backend().batchnorm_bwd(
                &g,
                &x.storage(),
                &gy.storage(),
                &gamma.storage(),
                &mean.storage(),
                &invstd.storage(),
                &mut dx.storage_mut(),
                &mut dgamma.storage_mut(),
                &mut dbeta.storage_mut(),
            )?;
            grads.accumulate(&x, dx)?;
            grads.accumulate(&gamma, dgamma)?;
            grads.accumulate(&beta, dbeta)
        });
    }
    Ok(y)
}

/// Training batch norm of `x * s[c]` (`s` of shape `[C]`): the QAT unit's
/// convolution output divided by its fold factor, then normalized with
/// batch statistics. On a backend that
/// [fuses](crate::backend::Backend::fuses_scaled_batchnorm) it, one op that
/// never stores the product, with the values and gradients (to `x`, `s`,
/// `gamma`, `beta`) of `batch_norm(scale_channels(x, s, 1), ..)`; that pair
/// elsewhere, and outside training.
pub fn batch_norm_scaled(
    x: &Tensor,
    s: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    a: BatchNormArgs,
) -> Result<Tensor> {
    let be = x.device().backend();
    if !a.train || !be.fuses_scaled_batchnorm() {
        return batch_norm(&super::scale_channels(x, s, 1)?, gamma, beta, a);
    }
    let g = geometry("batch_norm_scaled", x, gamma, beta, &a)?;
    if s.dims() != [g.c] {
        bail!(
            Shape,
            "batch_norm_scaled: scale has shape {}, expected [{}] for input {}",
            s.shape(),
            g.c,
            x.shape()
        );
    }
    x.check_same_device(s, "batch_norm_scaled")?;
    let record = autograd::should_record(&[x, s, gamma, beta]);
    let y = output(x.shape().clone(), x.device(), record)?;
    let mean = output([g.c], x.device(), false)?;
    let invstd = output([g.c], x.device(), false)?;
    be.batchnorm_fwd_train_scaled(
        &g,
        &x.storage(),
        &s.storage(),
        &gamma.storage(),
        &beta.storage(),
        &mut a.running_mean.storage_mut(),
        &mut a.running_var.storage_mut(),
        &mut y.storage_mut(),
        &mut mean.storage_mut(),
        &mut invstd.storage_mut(),
    )?;
    if y.tracked() {
        let (x, s, gamma, beta) = (x.clone(), s.clone(), gamma.clone(), beta.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let (dx, ds) = (grad_like(&x)?, grad_like(&s)?);
            let (dgamma, dbeta) = (grad_like(&gamma)?, grad_like(&beta)?);
            x.device().backend().batchnorm_bwd_scaled(
                &g,
                &x.storage(),
                &s.storage(),
                &gy.storage(),
                &gamma.storage(),
                &mean.storage(),
                &invstd.storage(),
                &mut dx.storage_mut(),
                &mut ds.storage_mut(),
                &mut dgamma.storage_mut(),
                &mut dbeta.storage_mut(),
            )?;
            grads.accumulate(&x, dx)?;
            grads.accumulate(&s, ds)?;
            grads.accumulate(&gamma, dgamma)?;
            grads.accumulate(&beta, dbeta)
        });
    }
    Ok(y)
}

/// `relu(batch_norm(x, ..))` in training: on a backend that
/// [fuses](crate::backend::Backend::fuses_batchnorm_relu) them one op
/// whose ReLU runs in batch norm's passes, with the values and gradients of
/// the two ops; the two ops elsewhere, and outside training.
pub fn batch_norm_relu(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    a: BatchNormArgs,
) -> Result<Tensor> {
    let be = x.device().backend();
    if !a.train || !be.fuses_batchnorm_relu() {
        return super::relu(&batch_norm(x, gamma, beta, a)?);
    }
    let g = geometry("batch_norm_relu", x, gamma, beta, &a)?;
    let record = autograd::should_record(&[x, gamma, beta]);
    let y = output(x.shape().clone(), x.device(), record)?;
    let mean = output([g.c], x.device(), false)?;
    let invstd = output([g.c], x.device(), false)?;
    let affine = output([2 * g.c], x.device(), false)?;
    be.batchnorm_relu_fwd_train(
        &g,
        &x.storage(),
        &gamma.storage(),
        &beta.storage(),
        &mut a.running_mean.storage_mut(),
        &mut a.running_var.storage_mut(),
        &mut y.storage_mut(),
        &mut mean.storage_mut(),
        &mut invstd.storage_mut(),
        &mut affine.storage_mut(),
    )?;
    if y.tracked() {
        let (x, gamma, beta) = (x.clone(), gamma.clone(), beta.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let (dx, dgamma, dbeta) = (grad_like(&x)?, grad_like(&gamma)?, grad_like(&beta)?);
            x.device().backend().batchnorm_relu_bwd(
                &g,
                &x.storage(),
                &affine.storage(),
                &gy.storage(),
                &gamma.storage(),
                &mean.storage(),
                &invstd.storage(),
                &mut dx.storage_mut(),
                &mut dgamma.storage_mut(),
                &mut dbeta.storage_mut(),
            )?;
            grads.accumulate(&x, dx)?;
            grads.accumulate(&gamma, dgamma)?;
            grads.accumulate(&beta, dbeta)
        });
    }
    Ok(y)
}
