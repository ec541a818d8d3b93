//! Softmax cross-entropy, mean over the batch, with optional label smoothing.

use super::{grad_like, output};
use crate::autograd::{self, Grads};
use crate::tensor::Tensor;
use crate::{bail, Result};

/// Mean cross-entropy of `logits: [N, K]` against class indices `labels`
/// (PyTorch's `F.cross_entropy(logits, labels, label_smoothing=eps)`).
pub fn cross_entropy(logits: &Tensor, labels: &[u32], eps: f32) -> Result<Tensor> {
    Ok(cross_entropy_on_device(logits, labels, eps)?.0)
}

/// [`cross_entropy`] and the step summary `[loss, top-1 hits, top-5 hits]`
/// (untracked, on the logits' device), so that a training step reads the
/// loss and the accuracy in one copy.
pub fn cross_entropy_with_hits(
    logits: &Tensor,
    labels: &[u32],
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (loss, labels_t) = cross_entropy_on_device(logits, labels, eps)?;
    let (n, k) = logits.shape().matrix()?;
    let summary = output([3], logits.device(), false)?;
    logits.device().backend().label_hits(
        n,
        k,
        &logits.storage(),
        &labels_t.storage(),
        &loss.storage(),
        &mut summary.storage_mut(),
    )?;
    Ok((loss, summary))
}

/// The loss, and the labels as they were uploaded.
fn cross_entropy_on_device(logits: &Tensor, labels: &[u32], eps: f32) -> Result<(Tensor, Tensor)> {
    let (n, k) = logits.shape().matrix()?;
    if labels.len() != n {
        bail!(
            Shape,
            "cross_entropy: {} labels for logits {}",
            labels.len(),
            logits.shape()
        );
    }
    if n == 0 || k == 0 {
        bail!(Shape, "cross_entropy: empty logits {}", logits.shape());
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= k) {
        bail!(
            Shape,
            "cross_entropy: label {bad} out of range for {k} classes"
        );
    }
    if !(0.0..=1.0).contains(&eps) {
        bail!(
            Usage,
            "cross_entropy: label smoothing {eps} must lie in [0, 1]"
        );
    }
    let dev = logits.device();
    let be = dev.backend();
    let labels_f: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let labels_t = Tensor::from_vec(labels_f, [n], dev)?;
    let loss = output([1], dev, autograd::should_record(&[logits]))?;
    let probs = output([n, k], dev, false)?;
    be.softmax_xent_fwd(
        n,
        k,
        eps,
        &logits.storage(),
        &labels_t.storage(),
        &mut loss.storage_mut(),
        &mut probs.storage_mut(),
    )?;
    if loss.tracked() {
        let logits = logits.clone();
        let labels_t = labels_t.clone();
        autograd::record(&loss, move |gy: &Tensor, grads: &mut Grads| {
            let d = grad_like(&logits)?;
            logits.device().backend().softmax_xent_bwd(
                n,
                k,
                eps,
                &probs.storage(),
                &labels_t.storage(),
                &gy.storage(),
                &mut d.storage_mut(),
            )?;
            grads.accumulate(&logits, d)
        });
    }
    Ok((loss, labels_t))
}
