//! Average pooling in the integer domain (spec S6): the sum over a window
//! (for global pooling, a channel's `H*W` positions) is exact in int32, and
//! the division by the window's divisor `d` is folded into the R1 multiplier
//! `M_d = fl32(s_in / fl32(s_out * fl32(d)))`, so pooling is one more
//! requantization. Max pooling needs nothing here: it works on q directly
//! and keeps (s, z).

use super::params::{ACT_QMAX, ACT_QMIN};
use super::requant::Requant;
pub use crate::backend::AvgPool2dGeom;
use crate::{bail, Result};

/// `M = fl32(s_in / fl32(s_out * fl32(H*W)))` (S6), in this order.
#[inline]
pub fn gap_multiplier(s_in: f32, s_out: f32, hw: usize) -> f32 {
    s_in / (s_out * hw as f32)
}

/// The R1 of a global average pool with `hw = H*W` inputs per channel and
/// output zero point `z_out` (no ReLU: the full int8 range).
pub fn gap_requant(s_in: f32, s_out: f32, hw: usize, z_out: i32) -> Result<Requant> {
    Requant::new(gap_multiplier(s_in, s_out, hw), z_out, ACT_QMIN, ACT_QMAX)
}

/// Global average pooling of `x` (NCHW with N*C = `out.len()` planes of `hw`
/// values each): `acc = sum(x_q - z_in)` per plane, then R1 with `rq`.
pub fn global_avg_pool(x: &[i8], hw: usize, z_in: i32, rq: &Requant, out: &mut [i8]) -> Result<()> {
    if hw == 0 || x.len() != out.len() * hw {
        bail!(
            Shape,
            "{} inputs do not make {} planes of {hw}",
            x.len(),
            out.len()
        );
    }
    // |x_q - z_in| <= 255, so the sum fits int32 for any realistic H*W.
    if hw > (i32::MAX / 255) as usize {
        bail!(
            Shape,
            "pooling window of {hw} values overflows the int32 accumulator"
        );
    }
    for (o, plane) in out.iter_mut().zip(x.chunks_exact(hw)) {
        let acc: i32 = plane.iter().map(|&q| q as i32 - z_in).sum();
        *o = rq.apply(acc);
    }
    Ok(())
}

/// Integer average pooling (S6) of NCHW int8 `x` with the window and
/// divisor rules of `g` (PyTorch's, see [`AvgPool2dGeom`]): per output, `acc =
/// sum over the window's input positions of (x_q - z_in)` in int32, then R1
/// with `M_d` for the window's divisor `d`, zero point `z_out`, full int8
/// range. Global average pooling is the case of one `H x W` window.
pub fn avg_pool2d(
    g: &AvgPool2dGeom,
    x: &[i8],
    s_in: f32,
    z_in: i32,
    s_out: f32,
    z_out: i32,
    out: &mut [i8],
) -> Result<()> {
    let g = g.validate()?;
    if x.len() != g.x_len() || out.len() != g.y_len() {
        bail!(
            Shape,
            "avg_pool2d: {} inputs and {} outputs for {g:?}",
            x.len(),
            out.len()
        );
    }
    let window = g.kh * g.kw;
    if window > (i32::MAX / 255) as usize {
        bail!(
            Shape,
            "pooling window of {window} values overflows the int32 accumulator"
        );
    }
    // One R1 per possible divisor (at most kh*kw of them).
    let rq: Vec<Requant> = (1..=window)
        .map(|d| gap_requant(s_in, s_out, d, z_out))
        .collect::<Result<_>>()?;
    let (oh, ow) = (g.out_h(), g.out_w());
    let plane = g.h * g.w;
    for (xp, yp) in x.chunks_exact(plane).zip(out.chunks_exact_mut(oh * ow)) {
        for oy in 0..oh {
            let r = g.rows(oy);
            for ox in 0..ow {
                let c = g.cols(ox);
                let mut acc = 0i32;
                for iy in r.lo..r.hi {
                    for &q in &xp[iy * g.w + c.lo..iy * g.w + c.hi] {
                        acc += q as i32 - z_in;
                    }
                }
                yp[oy * ow + ox] = rq[r.extent * c.extent - 1].apply(acc);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::requant::requant_f32;

    #[test]
    fn gap_matches_float_formula() {
        // 2 planes of 7x7, a realistic final-stage shape.
        let hw = 49;
        let x: Vec<i8> = (0..2 * hw)
            .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
            .collect();
        let (s_in, s_out, z_in, z_out) = (0.037f32, 0.011f32, -5, 3);
        let rq = gap_requant(s_in, s_out, hw, z_out).unwrap();
        let mut out = [0i8; 2];
        global_avg_pool(&x, hw, z_in, &rq, &mut out).unwrap();
        let m = gap_multiplier(s_in, s_out, hw);
        for (c, &o) in out.iter().enumerate() {
            let acc: i32 = x[c * hw..(c + 1) * hw]
                .iter()
                .map(|&q| q as i32 - z_in)
                .sum();
            assert_eq!(o, requant_f32(acc, m, z_out, -128, 127));
        }
        assert!(global_avg_pool(&x, 50, z_in, &rq, &mut out).is_err());
        assert!(global_avg_pool(&x, 0, z_in, &rq, &mut []).is_err());
    }
}

#[cfg(test)]
mod avg_pool_tests {
    use super::*;
    use crate::quant::requant::requant_f32;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn i8(&mut self) -> i8 {
            self.next() as u8 as i8
        }
    }

    /// Window `o` on one axis, written out directly (PyTorch's rule):
    /// `(first input, end input, divisor extent)`.
    fn direct_span(
        o: usize,
        size: usize,
        k: usize,
        s: usize,
        p: usize,
        incl: bool,
    ) -> (i64, i64, i64) {
        let start = (o * s) as i64 - p as i64;
        let end = (start + k as i64).min((size + p) as i64);
        let (lo, hi) = (start.max(0), end.min(size as i64));
        (lo, hi, if incl { end - start } else { hi - lo })
    }

    fn geoms() -> Vec<AvgPool2dGeom> {
        let g =
            |n, c, h, w, k: (usize, usize), s: (usize, usize), p: (usize, usize), incl, ceil| {
                AvgPool2dGeom {
                    n,
                    c,
                    h,
                    w,
                    kh: k.0,
                    kw: k.1,
                    stride: s,
                    pad: p,
                    count_include_pad: incl,
                    ceil_mode: ceil,
                }
            };
        let mut v = Vec::new();
        for incl in [false, true] {
            v.push(g(2, 3, 7, 9, (3, 3), (2, 2), (1, 1), incl, false));
            v.push(g(1, 2, 8, 5, (3, 2), (2, 1), (1, 1), incl, true));
            v.push(g(1, 2, 6, 6, (2, 2), (2, 2), (0, 0), incl, false));
            v.push(g(2, 1, 10, 7, (5, 3), (3, 2), (2, 1), incl, true));
            v.push(g(1, 3, 7, 7, (7, 7), (1, 1), (0, 0), incl, false)); // global
        }
        v
    }

    /// Bit for bit the float32 R1 formula with `M_d = fl32(s_in / fl32(s_out
    /// * fl32(d)))`, on the accumulator and divisor computed directly.
    #[test]
    fn avg_pool_matches_float_formula() {
        let mut rng = Lcg(7);
        for g in geoms() {
            for (s_in, z_in, s_out, z_out) in [
                (0.037f32, -5, 0.021f32, 3),
                (0.1, -128, 0.1, -128),
                (0.0123, 17, 0.0061, -40),
            ] {
                let x: Vec<i8> = (0..g.x_len()).map(|_| rng.i8()).collect();
                let mut out = vec![0i8; g.y_len()];
                avg_pool2d(&g, &x, s_in, z_in, s_out, z_out, &mut out).unwrap();
                let (oh, ow) = (g.out_h(), g.out_w());
                let incl = g.count_include_pad;
                for p in 0..g.n * g.c {
                    for oy in 0..oh {
                        let (r0, r1, er) = direct_span(oy, g.h, g.kh, g.stride.0, g.pad.0, incl);
                        for ox in 0..ow {
                            let (c0, c1, ec) =
                                direct_span(ox, g.w, g.kw, g.stride.1, g.pad.1, incl);
                            let mut acc = 0i32;
                            for iy in r0..r1 {
                                for ix in c0..c1 {
                                    acc += x[p * g.h * g.w + (iy as usize) * g.w + ix as usize]
                                        as i32
                                        - z_in;
                                }
                            }
                            let d = (er * ec) as f32;
                            let m = s_in / (s_out * d);
                            let want = requant_f32(acc, m, z_out, -128, 127);
                            assert_eq!(
                                out[(p * oh + oy) * ow + ox],
                                want,
                                "{g:?} plane {p} ({oy}, {ox})"
                            );
                        }
                    }
                }
                if g.kh == g.h && g.kw == g.w && g.pad == (0, 0) {
                    // One window per plane: exactly global average pooling.
                    let rq = gap_requant(s_in, s_out, g.h * g.w, z_out).unwrap();
                    let mut gap = vec![0i8; g.n * g.c];
                    global_avg_pool(&x, g.h * g.w, z_in, &rq, &mut gap).unwrap();
                    assert_eq!(gap, out);
                }
            }
        }
    }

    /// ONNX Runtime's QLinearAveragePool (CPU, as read from its source):
    /// dequantize each input in float32, sum the window in row-major order
    /// in float32, divide by the count (with `count_include_pad`, always
    /// kh*kw), then `nearbyintf(avg / s_out + z_out)` (zero point added
    /// before rounding) and clamp.
    #[allow(clippy::too_many_arguments)]
    fn ort_qlinear_avg_pool(
        g: &AvgPool2dGeom,
        x: &[i8],
        s_in: f32,
        z_in: i32,
        s_out: f32,
        z_out: i32,
    ) -> Vec<i8> {
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut out = vec![0i8; g.y_len()];
        for p in 0..g.n * g.c {
            for oy in 0..oh {
                let (r0, r1, _) = direct_span(oy, g.h, g.kh, g.stride.0, g.pad.0, false);
                for ox in 0..ow {
                    let (c0, c1, _) = direct_span(ox, g.w, g.kw, g.stride.1, g.pad.1, false);
                    let mut sum = 0.0f32;
                    for iy in r0..r1 {
                        for ix in c0..c1 {
                            let q = x[p * g.h * g.w + iy as usize * g.w + ix as usize] as i32;
                            sum += s_in * (q - z_in) as f32;
                        }
                    }
                    let count = if g.count_include_pad {
                        g.kh * g.kw
                    } else {
                        ((r1 - r0) * (c1 - c0)) as usize
                    };
                    let avg = sum / count as f32;
                    let v = (avg / s_out + z_out as f32).round_ties_even();
                    out[(p * oh + oy) * ow + ox] = v.clamp(-128.0, 127.0) as i8;
                }
            }
        }
        out
    }

    /// Against ONNX Runtime's float computation: within 1 LSB, and rarely
    /// different at all (its float sum rounds, and it adds the zero point
    /// before rounding). Windows where ORT's divisor differs (count_include_pad
    /// with ceil_mode windows past the padding) are skipped.
    #[test]
    fn avg_pool_within_one_lsb_of_onnxruntime_formula() {
        let mut rng = Lcg(11);
        let (mut total, mut differ) = (0usize, 0usize);
        for g in geoms() {
            if g.count_include_pad && g.ceil_mode {
                continue;
            }
            for _ in 0..40 {
                let s_in = 0.001 + (rng.next() % 1000) as f32 * 1e-4;
                let s_out = s_in * (0.3 + (rng.next() % 1000) as f32 * 1e-3);
                let (z_in, z_out) = (rng.i8() as i32, rng.i8() as i32);
                let x: Vec<i8> = (0..g.x_len()).map(|_| rng.i8()).collect();
                let mut out = vec![0i8; g.y_len()];
                avg_pool2d(&g, &x, s_in, z_in, s_out, z_out, &mut out).unwrap();
                let ort = ort_qlinear_avg_pool(&g, &x, s_in, z_in, s_out, z_out);
                for (a, b) in out.iter().zip(&ort) {
                    assert!((*a as i32 - *b as i32).abs() <= 1, "{g:?}: {a} vs ORT {b}");
                    differ += (a != b) as usize;
                }
                total += out.len();
            }
        }
        eprintln!("avg_pool2d vs the ORT formula: {differ} of {total} outputs differ by 1 LSB");
        assert!(differ * 100 < total, "{differ} of {total} differ");
    }

    #[test]
    fn avg_pool_rejects_bad_sizes() {
        let g = geoms()[0];
        let x = vec![0i8; g.x_len()];
        let mut out = vec![0i8; g.y_len() + 1];
        assert!(avg_pool2d(&g, &x, 0.1, 0, 0.1, 0, &mut out).is_err());
        let bad = AvgPool2dGeom { pad: (2, 2), ..g };
        let mut out = vec![0i8; g.y_len()];
        assert!(avg_pool2d(&bad, &x, 0.1, 0, 0.1, 0, &mut out).is_err());
    }
}
