//! Row-major SGEMM on the register-tiled kernels of [`tile`], and the
//! float64 GEMM of the integer-exact convolution on the `gemm` crate.

use super::tile;
use crate::backend::GemmGeom;
use rayon::prelude::*;

/// Strides (row, column) of `op(X)` for a row-major matrix stored with row
/// stride `ld`, untransposed or transposed.
fn strides(trans: bool, ld: usize) -> (isize, isize) {
    if trans {
        (1, ld as isize)
    } else {
        (ld as isize, 1)
    }
}

/// Whether a row-major `rows x cols` matrix with row stride `ld` fits in `len`.
fn fits(len: usize, rows: usize, cols: usize, ld: usize) -> bool {
    rows == 0 || cols == 0 || (ld >= cols && len >= (rows - 1) * ld + cols)
}

/// `c = alpha * op(a) op(b) + beta * c`, row-major, on the broadcast kernel
/// of [`tile`]: every element of `op(a) op(b)` is one fused multiply-add
/// chain over `k` in order, so a row of `c` has the same bits whatever `m`,
/// the split over threads or the instruction set (a batch of one image gives
/// the bits it has in any larger batch). `c` is not read when `beta == 0`.
/// `parallel` lets the rows be split over rayon threads; pass false when
/// the caller already parallelizes.
pub fn sgemm(g: &GemmGeom, a: &[f32], b: &[f32], c: &mut [f32], parallel: bool) {
    let GemmGeom {
        m,
        n,
        k,
        trans_a,
        trans_b,
        alpha,
        beta,
    } = *g;
    let lda = if trans_a { m } else { k };
    let ldb = if trans_b { k } else { n };
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(
        fits(a.len(), a_rows, a_cols, lda)
            && fits(b.len(), b_rows, b_cols, ldb)
            && fits(c.len(), m, n, n),
        "sgemm: buffers too small for {g:?}"
    );
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if k == 0 {
        c.iter_mut()
            .for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
        return;
    }
    let (mr, nr) = tile::broadcast_tile();
    // op(b) row-major, rows padded to whole tiles.
    let ldp = n.next_multiple_of(nr);
    let (b_rs, b_cs) = strides(trans_b, ldb);
    let mut bp = vec![0.0f32; k * ldp];
    for (kk, row) in bp.chunks_exact_mut(ldp).enumerate() {
        for (j, v) in row[..n].iter_mut().enumerate() {
            *v = b[kk * b_rs as usize + j * b_cs as usize];
        }
    }
    let (a_rs, a_cs) = strides(trans_a, lda);
    let (a_rs, a_cs) = (a_rs as usize, a_cs as usize);
    let threads = if parallel && m * n * k >= 64 * 64 * 64 {
        rayon::current_num_threads()
    } else {
        1
    };
    let rows = m.div_ceil(4 * threads).next_multiple_of(mr);
    let job = |(jb, c_rows): (usize, &mut [f32])| {
        let (i0, mj) = (jb * rows, c_rows.len() / n);
        let packed = tile::pack_rows(&a[i0 * a_rs..], (a_rs, a_cs), mj, k, mr);
        let plain = alpha == 1.0 && beta == 0.0;
        let mut t = if plain {
            Vec::new()
        } else {
            vec![0.0f32; mj * n]
        };
        let out = if plain { &mut c_rows[..] } else { &mut t[..] };
        tile::broadcast_gemm(
            (mj, n, k),
            &packed,
            (&bp, tile::BRows::Strided(ldp)),
            (out, tile::Dest::rows(n)),
            None,
        );
        if !plain {
            for (v, &p) in c_rows.iter_mut().zip(&t) {
                *v = if beta == 0.0 {
                    alpha * p
                } else {
                    alpha * p + beta * *v
                };
            }
        }
    };
    if threads > 1 {
        c.par_chunks_mut(rows * n).enumerate().for_each(job);
    } else {
        c.chunks_mut(rows * n).enumerate().for_each(job);
    }
}

fn parallelism(parallel: bool, m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if parallel && (m * n * k) >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    }
}

/// `c = a b` in float64, row-major, no transposes. Exact for integer
/// operands whose products and sums stay below 2^53 (the integer-exact
/// convolution relies on this).
pub fn dgemm(m: usize, n: usize, k: usize, a: &[f64], b: &[f64], c: &mut [f64], parallel: bool) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "dgemm: buffers too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    // SAFETY: as in `sgemm`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(parallel, m, n, k),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every transpose combination, odd sizes, `alpha`/`beta`, against a
    /// float64 reference; and each row of `c` has the same bits when its
    /// row of `op(a)` is multiplied alone (`m = 1`).
    #[test]
    fn sgemm_matches_float64_and_rows_do_not_depend_on_m() {
        let mut rng = Rng::new(3);
        for (m, n, k) in [
            (37usize, 53usize, 29usize),
            (1, 7, 300),
            (70, 10, 64),
            (9, 130, 1),
        ] {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 0.0), (-2.0, 0.75)] {
                    let g = GemmGeom {
                        trans_a,
                        trans_b,
                        alpha,
                        beta,
                        ..GemmGeom::new(m, n, k)
                    };
                    let mut draw = |len: usize| -> Vec<f32> {
                        (0..len).map(|_| rng.uniform() - 0.5).collect()
                    };
                    let (a, b, c0) = (draw(m * k), draw(k * n), draw(m * n));
                    let at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] } as f64;
                    let bt = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] } as f64;
                    let mut c = c0.clone();
                    sgemm(&g, &a, &b, &mut c, true);
                    for i in 0..m {
                        for j in 0..n {
                            let s: f64 = (0..k).map(|p| at(i, p) * bt(p, j)).sum();
                            let want = alpha as f64 * s + beta as f64 * c0[i * n + j] as f64;
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{g:?} c[{i}][{j}] = {got}, want {want}"
                            );
                        }
                    }
                    if trans_a || beta != 0.0 {
                        continue;
                    }
                    for i in [0, m / 2, m - 1] {
                        let mut row = vec![0.0f32; n];
                        let g1 = GemmGeom { m: 1, ..g };
                        sgemm(&g1, &a[i * k..][..k], &b, &mut row, true);
                        let same = row
                            .iter()
                            .zip(&c[i * n..][..n])
                            .all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{g:?}: row {i} alone differs");
                    }
                }
            }
        }
    }
}
