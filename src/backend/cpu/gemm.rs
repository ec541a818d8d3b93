//! Row-major SGEMM on top of the `gemm` crate's packed, blocked micro-kernels.

use crate::backend::GemmGeom;

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

/// `c = alpha * op(a) op(b) + beta * c`. `parallel` lets the kernel split the
/// work over rayon threads; pass false when the caller already parallelizes.
pub fn sgemm(g: &GemmGeom, a: &[f32], b: &[f32], c: &mut [f32], parallel: bool) {
    let lda = if g.trans_a { g.m } else { g.k };
    let ldb = if g.trans_b { g.k } else { g.n };
    sgemm_ld(g, (a, lda), (b, ldb), (c, g.n), parallel);
}

/// [`sgemm`] on matrices stored with row strides of their own (`(data, ld)`,
/// `ld` counted in the stored, untransposed layout), e.g. a block of columns
/// of a wider matrix.
pub fn sgemm_ld(
    g: &GemmGeom,
    (a, lda): (&[f32], usize),
    (b, ldb): (&[f32], usize),
    (c, ldc): (&mut [f32], usize),
    parallel: bool,
) {
    let GemmGeom {
        m,
        n,
        k,
        trans_a,
        trans_b,
        alpha,
        beta,
    } = *g;
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    assert!(
        fits(a.len(), a_rows, a_cols, lda)
            && fits(b.len(), b_rows, b_cols, ldb)
            && fits(c.len(), m, n, ldc),
        "sgemm: buffers too small for {g:?} with row strides {lda}, {ldb}, {ldc}"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            row[..n]
                .iter_mut()
                .for_each(|v| *v = if beta == 0.0 { 0.0 } else { *v * beta });
        }
        return;
    }
    let (a_rs, a_cs) = strides(trans_a, lda);
    let (b_rs, b_cs) = strides(trans_b, ldb);
    let par = parallelism(parallel, m, n, k);
    // SAFETY: the assert above guarantees every index the strides reach is in
    // bounds, and `c` does not alias `a` or `b` (Rust borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        );
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
