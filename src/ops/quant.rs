//! Differentiable quantization ops for training (QUANT_SPEC S3, S4): fake
//! quantization with the straight-through estimator, and per-channel scaling.

use super::{grad_like, output, unary_op};
use crate::autograd::{self, Grads};
use crate::backend::FqTensor;
use crate::quant::observer_words;
use crate::quant::params::{W_QMAX, W_QMIN};
use crate::tensor::Tensor;
use crate::{bail, Result};

/// Per-tensor fake quantization; the gradient passes where `RNE(x / s) + z`
/// lies in `[qmin, qmax]`.
pub fn fake_quant_tensor(x: &Tensor, q: FqTensor) -> Result<Tensor> {
    if !(q.scale.is_finite() && q.scale > 0.0) || q.qmin > q.qmax {
        bail!(
            Numerical,
            "fake_quant: invalid scale {} or range [{}, {}]",
            q.scale,
            q.qmin,
            q.qmax
        );
    }
    unary_op(
        x,
        x.shape().clone(),
        |be, x, y| be.fake_quant_tensor_fwd(&q, x, y),
        move |be, x, gy, dx| be.fake_quant_tensor_bwd(&q, x, gy, dx),
    )
}

/// [`fake_quant_tensor`] with the scale and zero point in force in an
/// activation quantizer's device words ([`crate::quant::observer_words`]),
/// read on the device. The backward uses a copy of the words taken here: a
/// later observer step may change them before it runs.
pub fn fake_quant_act(x: &Tensor, words: &Tensor, qmin: i32, qmax: i32) -> Result<Tensor> {
    act_quant_op(x, words, (qmin, qmax), false)
}

/// [`fake_quant_act`] of `relu(x)` in one pass, on a backend that
/// [fuses](crate::backend::Backend::fuses_relu_quant) them: the same values
/// and gradients as `fake_quant_act(&relu(x)?, ..)`, without storing the
/// ReLU's output.
pub fn relu_fake_quant_act(x: &Tensor, words: &Tensor, qmin: i32, qmax: i32) -> Result<Tensor> {
    act_quant_op(x, words, (qmin, qmax), true)
}

fn act_quant_op(
    x: &Tensor,
    words: &Tensor,
    (qmin, qmax): (i32, i32),
    relu: bool,
) -> Result<Tensor> {
    let what = if relu {
        "relu_fake_quant_act"
    } else {
        "fake_quant_act"
    };
    if words.numel() != observer_words::LEN || qmin > qmax {
        bail!(
            Shape,
            "{what}: {} observer words (need {}) or range [{qmin}, {qmax}]",
            words.numel(),
            observer_words::LEN
        );
    }
    x.check_same_device(words, what)?;
    // Only a tracked output records the backward that needs the copy.
    let kept = if autograd::should_record(&[x]) {
        words.detach_copy()?
    } else {
        words.clone()
    };
    unary_op(
        x,
        x.shape().clone(),
        |be, x, y| {
            let w = &words.storage();
            if relu {
                be.relu_fake_quant_act_fwd(w, qmin, qmax, x, y)
            } else {
                be.fake_quant_act_fwd(w, qmin, qmax, x, y)
            }
        },
        move |be, x, gy, dx| {
            let w = &kept.storage();
            if relu {
                be.relu_fake_quant_act_bwd(w, qmin, qmax, x, gy, dx)
            } else {
                be.fake_quant_act_bwd(w, qmin, qmax, x, gy, dx)
            }
        },
    )
}

/// Per-output-channel symmetric fake quantization of weights (dim 0 is the
/// channel), scales recomputed from `w` (S2: memoryless). Returns the
/// fake-quantized weights and the scales used.
pub fn fake_quant_channel(w: &Tensor) -> Result<(Tensor, Tensor)> {
    let channels = *w.dims().first().unwrap_or(&0);
    if channels == 0 {
        bail!(
            Shape,
            "fake_quant_channel: weight of shape {} has no channels",
            w.shape()
        );
    }
    let inner = w.numel() / channels;
    let y = output(w.shape().clone(), w.device(), autograd::should_record(&[w]))?;
    let scales = output([channels], w.device(), false)?;
    w.device().backend().fake_quant_channel_fwd(
        channels,
        inner,
        &w.storage(),
        &mut y.storage_mut(),
        &mut scales.storage_mut(),
    )?;
    if y.tracked() {
        let (w, s) = (w.clone(), scales.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let dw = grad_like(&w)?;
            w.device().backend().fake_quant_channel_bwd(
                channels,
                inner,
                &w.storage(),
                &s.storage(),
                &gy.storage(),
                &mut dw.storage_mut(),
            )?;
            grads.accumulate(&w, dw)
        });
    }
    debug_assert!((W_QMIN, W_QMAX) == (-127, 127));
    Ok((y, scales))
}

/// `y = x * s[c]` with `c` the index along `axis`; differentiable in `x` and
/// `s`.
pub fn scale_channels(x: &Tensor, s: &Tensor, axis: usize) -> Result<Tensor> {
    let dims = x.dims();
    if axis >= dims.len() || s.dims() != [dims[axis]] {
        bail!(
            Shape,
            "scale_channels: scale {} does not match axis {axis} of {}",
            s.shape(),
            x.shape()
        );
    }
    x.check_same_device(s, "scale_channels")?;
    let outer: usize = dims[..axis].iter().product();
    let c = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let be = x.device().backend();
    let y = output(
        x.shape().clone(),
        x.device(),
        autograd::should_record(&[x, s]),
    )?;
    be.channel_scale(
        outer,
        c,
        inner,
        &x.storage(),
        &s.storage(),
        &mut y.storage_mut(),
    )?;
    if y.tracked() {
        let (x, s) = (x.clone(), s.clone());
        autograd::record(&y, move |gy: &Tensor, grads: &mut Grads| {
            let be = x.device().backend();
            if x.tracked() {
                let dx = grad_like(&x)?;
                be.channel_scale(
                    outer,
                    c,
                    inner,
                    &gy.storage(),
                    &s.storage(),
                    &mut dx.storage_mut(),
                )?;
                grads.accumulate(&x, dx)?;
            }
            if s.tracked() {
                let ds = grad_like(&s)?;
                be.channel_dot(
                    outer,
                    c,
                    inner,
                    &gy.storage(),
                    &x.storage(),
                    &mut ds.storage_mut(),
                )?;
                grads.accumulate(&s, ds)?;
            }
            Ok(())
        });
    }
    Ok(y)
}
