//! Softmax cross-entropy with label smoothing (PyTorch's definition:
//! target = (1 - eps) * onehot + eps / K).

use rayon::prelude::*;

pub fn xent_forward(
    rows: usize,
    classes: usize,
    eps: f32,
    logits: &[f32],
    labels: &[f32],
    probs: &mut [f32],
) -> f32 {
    let eps = eps as f64;
    // Per-row losses in parallel, summed in a fixed order so the loss is
    // bit-for-bit reproducible (resumed runs must match uninterrupted ones).
    let mut row_loss = vec![0.0f64; rows];
    probs
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(labels.par_iter())
        .zip(row_loss.par_iter_mut())
        .for_each(|(((p, z), &label), out)| {
            let max = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
            let lse = max + sum.ln();
            for (pi, &zi) in p.iter_mut().zip(z) {
                *pi = ((zi as f64 - lse).exp()) as f32;
            }
            let nll = lse - z[label as usize] as f64;
            let mean_nll = z.iter().map(|&v| lse - v as f64).sum::<f64>() / classes as f64;
            *out = (1.0 - eps) * nll + eps * mean_nll;
        });
    let total: f64 = row_loss.iter().sum();
    (total / rows as f64) as f32
}

pub fn xent_backward(
    rows: usize,
    classes: usize,
    eps: f32,
    probs: &[f32],
    labels: &[f32],
    dloss: f32,
    dlogits: &mut [f32],
) {
    let scale = dloss / rows as f32;
    let off = eps / classes as f32;
    dlogits
        .par_chunks_mut(classes)
        .zip(probs.par_chunks(classes))
        .zip(labels.par_iter())
        .for_each(|((d, p), &label)| {
            for (j, (dj, &pj)) in d.iter_mut().zip(p).enumerate() {
                let target = off + if j == label as usize { 1.0 - eps } else { 0.0 };
                *dj = scale * (pj - target);
            }
        });
}
