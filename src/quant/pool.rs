//! Global average pooling in the integer domain (spec S6): the sum over a
//! channel's `H*W` positions is exact in int32, and the division by `H*W` is
//! folded into the R1 multiplier `M = fl32(s_in / fl32(s_out * fl32(H*W)))`,
//! so pooling is one more requantization. Max pooling needs nothing here: it
//! works on q directly and keeps (s, z).

use super::params::{ACT_QMAX, ACT_QMIN};
use super::requant::Requant;
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
