//! Conv + BatchNorm folding for inference (S4), the one function training
//! (after BN freeze), evaluation and export all call, so the folded float32
//! values are identical everywhere.

/// `w_fold = fl32(fl32(W * gamma) / sigma)`, `b_fold = fl32(beta -
/// fl32(fl32(gamma * fl32(mu - b_conv)) / sigma))` with `sigma =
/// fl32(sqrt(fl32(var + eps)))`, per output channel (dim 0 of `w`), evaluated
/// in exactly this order in float32.
pub fn fold_conv_bn(
    w: &[f32],
    b_conv: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let c = gamma.len();
    let inner = w.len() / c.max(1);
    let mut w_fold = vec![0.0f32; w.len()];
    let mut b_fold = vec![0.0f32; c];
    for o in 0..c {
        let sigma = (var[o] + eps).sqrt();
        for (dst, &v) in w_fold[o * inner..][..inner]
            .iter_mut()
            .zip(&w[o * inner..][..inner])
        {
            *dst = (v * gamma[o]) / sigma;
        }
        let b = b_conv.map_or(0.0, |b| b[o]);
        b_fold[o] = beta[o] - (gamma[o] * (mean[o] - b)) / sigma;
    }
    (w_fold, b_fold)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folding equals conv followed by eval-mode batch norm, per channel, on
    /// a 1x1 "convolution" of a single input value.
    #[test]
    fn fold_matches_unfused_bn() {
        let w = [0.5f32, -1.25, 2.0, 0.75];
        let (gamma, beta, mean, var) = (
            [1.5f32, -0.5],
            [0.1f32, 0.2],
            [0.3f32, -0.4],
            [2.0f32, 0.25],
        );
        let (wf, bf) = fold_conv_bn(&w, Some(&[0.05, -0.02]), &gamma, &beta, &mean, &var, 1e-5);
        let x = [0.7f32, -1.1];
        for o in 0..2 {
            let conv = (w[2 * o] as f64 * x[0] as f64 + w[2 * o + 1] as f64 * x[1] as f64)
                + [0.05, -0.02][o];
            let bn = (conv - mean[o] as f64) / (var[o] as f64 + 1e-5).sqrt() * gamma[o] as f64
                + beta[o] as f64;
            let folded =
                wf[2 * o] as f64 * x[0] as f64 + wf[2 * o + 1] as f64 * x[1] as f64 + bf[o] as f64;
            assert!((bn - folded).abs() < 1e-5, "channel {o}: {bn} vs {folded}");
        }
    }
}
