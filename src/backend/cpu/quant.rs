//! Quantization primitives on the CPU: fake quantization for training and the
//! integer-exact layers for evaluation. All the arithmetic is the `quant`
//! module's (the spec's single source of truth); this file only maps it over
//! tensors.

use super::conv::{col_len, im2col};
use super::depthwise;
use super::gemm::dgemm;
use super::map;
use crate::backend::{Conv2dGeom, FqTensor, QAddArgs, QConvArgs, QGapArgs};
use crate::quant::fake::{dequantize, fake_quant, quantize, ste_mask};
use crate::quant::params::{weight_scale, ACT_QMAX, ACT_QMIN, W_QMAX, W_QMIN};
use crate::quant::Requant;
use crate::Result;
use rayon::prelude::*;

pub fn fake_quant_tensor_fwd(q: &FqTensor, x: &[f32], y: &mut [f32]) {
    map::map1(x, y, |v| {
        fake_quant(v, q.scale, q.zero_point, q.qmin, q.qmax)
    });
}

pub fn fake_quant_tensor_bwd(q: &FqTensor, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map::map2(x, dy, dx, |v, d| {
        d * ste_mask(v, q.scale, q.zero_point, q.qmin, q.qmax)
    });
}

/// [`fake_quant_tensor_fwd`] of `relu(x)` (`x.max(0.0)`, as `relu_fwd`).
pub fn relu_fake_quant_tensor_fwd(q: &FqTensor, x: &[f32], y: &mut [f32]) {
    map::map1(x, y, |v| {
        fake_quant(v.max(0.0), q.scale, q.zero_point, q.qmin, q.qmax)
    });
}

/// The gradient of [`relu_fake_quant_tensor_fwd`], in the operations of
/// `fake_quant_tensor_bwd` and then `relu_bwd` on `r = relu(x)` (the same
/// bits as the two passes).
pub fn relu_fake_quant_tensor_bwd(q: &FqTensor, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    map::map2(x, dy, dx, |v, d| {
        let r = v.max(0.0);
        let g = d * ste_mask(r, q.scale, q.zero_point, q.qmin, q.qmax);
        if r > 0.0 {
            g
        } else {
            0.0
        }
    });
}

pub fn fake_quant_channel_fwd(inner: usize, w: &[f32], y: &mut [f32], scales: &mut [f32]) {
    y.par_chunks_mut(inner)
        .zip(w.par_chunks(inner))
        .zip(scales.par_iter_mut())
        .for_each(|((yc, wc), s)| {
            *s = weight_scale(wc.iter().fold(0.0f32, |m, v| m.max(v.abs())));
            yc.iter_mut()
                .zip(wc)
                .for_each(|(o, &v)| *o = fake_quant(v, *s, 0, W_QMIN, W_QMAX));
        });
}

pub fn fake_quant_channel_bwd(inner: usize, w: &[f32], scales: &[f32], dy: &[f32], dw: &mut [f32]) {
    dw.par_chunks_mut(inner)
        .zip(w.par_chunks(inner).zip(dy.par_chunks(inner)))
        .zip(scales.par_iter())
        .for_each(|((dc, (wc, dyc)), &s)| {
            for ((o, &v), &d) in dc.iter_mut().zip(wc).zip(dyc) {
                *o = d * ste_mask(v, s, 0, W_QMIN, W_QMAX);
            }
        });
}

pub fn channel_dot(outer: usize, c: usize, inner: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
    let sums = map::channel_sums2((outer, c, inner), a, b, |_, x, y| {
        (x as f64 * y as f64, 0.0)
    });
    for (o, (s, _)) in out.iter_mut().zip(sums) {
        *o = s as f32;
    }
}

/// The int8 value behind an activation stored as `(q - z) * s`.
#[inline]
fn recover(x: f32, s: f32, z: i32) -> i32 {
    quantize(x, s, z, ACT_QMIN, ACT_QMAX)
}

/// Integer-exact convolution: `(x_q - z_x)` and `w_q` are small integers, so
/// float64 GEMM accumulates them exactly (every partial sum stays far below
/// 2^53); the accumulator then goes through the integer R1 of `quant`.
/// Depthwise convolutions take the direct f32 kernels instead, exact too
/// (see [`depthwise::exact_for_int8`]): the same integers, so the same bits.
pub fn qconv2d(
    g: &Conv2dGeom,
    q: &QConvArgs,
    x: &[f32],
    w_q: &[f32],
    bias_q: &[i32],
    multipliers: &[f32],
    y: &mut [f32],
) -> Result<()> {
    if g.is_depthwise() && depthwise::exact_for_int8(g) {
        qconv2d_depthwise(g, q, x, w_q, bias_q, multipliers, y)
    } else {
        qconv2d_gemm(g, q, x, w_q, bias_q, multipliers, y)
    }
}

fn requants(q: &QConvArgs, multipliers: &[f32]) -> Result<Vec<Requant>> {
    multipliers
        .iter()
        .map(|&m| Requant::new(m, q.z_y, q.lo, q.hi))
        .collect()
}

/// `acc + bias` through R1, stored as `(q_y - z_y) * s_y`.
#[inline]
fn requant_store(acc: i64, bias: i32, rq: &Requant, q: &QConvArgs) -> f32 {
    let total = acc + bias as i64;
    debug_assert!(
        total.unsigned_abs() < 1 << 31,
        "accumulator {total} overflows int32 (S10.2)"
    );
    let qy = rq.apply(total.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
    dequantize(qy as i32, q.s_y, q.z_y)
}

/// The general path: per image and group, im2col of the recovered
/// `(q_x - z_x)` and a float64 GEMM.
fn qconv2d_gemm(
    g: &Conv2dGeom,
    q: &QConvArgs,
    x: &[f32],
    w_q: &[f32],
    bias_q: &[i32],
    multipliers: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let requant = requants(q, multipliers)?;
    let w: Vec<f64> = w_q.iter().map(|&v| v as f64).collect();
    let ohw = g.out_h() * g.out_w();
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    let kk = cg * g.kh * g.kw;
    let x_img_len = g.c_in * g.h * g.w;
    let parallel_images = g.n >= rayon::current_num_threads();
    let run = |i: usize, y_img: &mut [f32], par: bool| {
        let xi: Vec<f64> = x[i * x_img_len..][..x_img_len]
            .iter()
            .map(|&v| (recover(v, q.s_x, q.z_x) - q.z_x) as f64)
            .collect();
        let mut col = vec![0.0f64; col_len(g)];
        let mut acc = vec![0.0f64; og * ohw];
        for grp in 0..g.groups {
            im2col(g, &xi, grp, &mut col);
            dgemm(og, ohw, kk, &w[grp * og * kk..], &col, &mut acc, par);
            for (o_local, (yrow, arow)) in y_img[grp * og * ohw..][..og * ohw]
                .chunks_mut(ohw)
                .zip(acc.chunks(ohw))
                .enumerate()
            {
                let o = grp * og + o_local;
                for (out, &a) in yrow.iter_mut().zip(arow) {
                    *out = requant_store(a as i64, bias_q[o], &requant[o], q);
                }
            }
        }
    };
    let chunk = g.c_out * ohw;
    if parallel_images {
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| run(i, c, false));
    } else {
        y.chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| run(i, c, true));
    }
    Ok(())
}

/// Depthwise: the recovered `(q_x - z_x)` go through the direct f32 forward
/// kernel, whose every partial sum is an integer below 2^24 and therefore
/// exact; then R1 per element.
fn qconv2d_depthwise(
    g: &Conv2dGeom,
    q: &QConvArgs,
    x: &[f32],
    w_q: &[f32],
    bias_q: &[i32],
    multipliers: &[f32],
    y: &mut [f32],
) -> Result<()> {
    let requant = requants(q, multipliers)?;
    let xr: Vec<f32> = x
        .par_iter()
        .map(|&v| (recover(v, q.s_x, q.z_x) - q.z_x) as f32)
        .collect();
    depthwise::forward(g, &xr, &w_q[..g.w_len()], None, y);
    let ohw = g.out_h() * g.out_w();
    y.par_chunks_mut(ohw.max(1))
        .enumerate()
        .for_each(|(p, plane)| {
            let o = p % g.c_out;
            for v in plane {
                *v = requant_store(*v as i64, bias_q[o], &requant[o], q);
            }
        });
    Ok(())
}

pub fn qadd(q: &QAddArgs, a: &[f32], b: &[f32], y: &mut [f32]) {
    let add = q.rq;
    y.par_iter_mut()
        .zip(a.par_iter().zip(b.par_iter()))
        .for_each(|(o, (&va, &vb))| {
            let qa = recover(va, q.s_a, add.z_a) as i8;
            let qb = recover(vb, q.s_b, add.z_b) as i8;
            *o = dequantize(add.apply(qa, qb) as i32, q.s_c, add.z_c);
        });
}

pub fn qgap(q: &QGapArgs, x: &[f32], y: &mut [f32]) -> Result<()> {
    let rq = Requant::new(q.m, q.z_out, ACT_QMIN, ACT_QMAX)?;
    y.par_iter_mut().enumerate().for_each(|(p, o)| {
        let acc: i32 = x[p * q.hw..][..q.hw]
            .iter()
            .map(|&v| recover(v, q.s_in, q.z_in) - q.z_in)
            .sum();
        *o = dequantize(rq.apply(acc) as i32, q.s_out, q.z_out);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The depthwise int8 path gives the same bits as the general im2col +
    /// float64 GEMM path, on random int8 data with groups == C (multipliers
    /// 1 to 3, strides, padding, dilation, 3x3 to 7x7, fused ReLU or not).
    #[test]
    fn depthwise_qconv2d_matches_the_gemm_path() {
        let mut rng = Rng::new(31);
        let mut cases = 0;
        while cases < 40 {
            let c = 2 + rng.below(6) as usize;
            let m = 1 + rng.below(3) as usize;
            let k = [1, 3, 5, 7][rng.below(4) as usize];
            let g = Conv2dGeom {
                n: 1 + rng.below(3) as usize,
                c_in: c,
                h: 1 + rng.below(14) as usize,
                w: 1 + rng.below(14) as usize,
                c_out: c * m,
                kh: k,
                kw: [k, 3][rng.below(2) as usize],
                stride: (1 + rng.below(2) as usize, 1 + rng.below(2) as usize),
                pad: (rng.below(4) as usize, rng.below(4) as usize),
                dilation: (1 + rng.below(2) as usize, 1 + rng.below(2) as usize),
                groups: c,
            };
            let Ok(g) = g.validate() else { continue };
            cases += 1;
            let relu = rng.below(2) == 0;
            let (s_x, z_x, s_y) = (0.03, rng.below(256) as i32 - 128, 0.02);
            let z_y = if relu {
                -128
            } else {
                rng.below(21) as i32 - 10
            };
            let q = QConvArgs {
                s_x,
                z_x,
                s_y,
                z_y,
                lo: if relu { z_y } else { -128 },
                hi: 127,
            };
            let x: Vec<f32> = (0..g.x_len())
                .map(|_| (rng.below(256) as i32 - 128 - z_x) as f32 * s_x)
                .collect();
            let w: Vec<f32> = (0..g.w_len())
                .map(|_| rng.below(255) as f32 - 127.0)
                .collect();
            let bias: Vec<i32> = (0..g.c_out)
                .map(|_| rng.below(40001) as i32 - 20000)
                .collect();
            let mult: Vec<f32> = (0..g.c_out).map(|_| 1e-4 + rng.uniform() * 3e-3).collect();
            let mut want = vec![f32::NAN; g.y_len()];
            qconv2d_gemm(&g, &q, &x, &w, &bias, &mult, &mut want).unwrap();
            let mut got = vec![f32::NAN; g.y_len()];
            qconv2d(&g, &q, &x, &w, &bias, &mult, &mut got).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{g:?} {q:?}: depthwise and GEMM paths differ"
            );
        }
    }
}
