//! Every primitive of the CUDA backend against the CPU backend (the
//! reference), on random shapes that include sizes not divisible by any tile
//! (128 for the GEMM/convolution tiles, 256 threads, 32 lanes), on
//! - the emulated CUDA device (always: the kernels compiled for the host), and
//! - the real GPU, when one works (otherwise a recorded skip: tests/common/skip.rs).
//!
//! Outputs are poisoned with NaN before each launch, so an element a kernel
//! forgets to write fails the comparison. Tolerances are `atol + rtol * |ref|`
//! per element, stated at each test.
//!
//! Environment: `QAT_REQUIRE_GPU=1` turns a missing GPU into a failure (the
//! GPU check sets it); `QAT_PARITY_DEVICES=gpu` skips the emulator.

mod common;

use qat::backend::cuda::{self, probe};
use qat::backend::{
    AvgPool2dGeom, BnGeom, ConcatGeom, Conv2dGeom, FqTensor, GemmGeom, PairMap, Pool2dGeom,
    Precision, QAddArgs, QConvArgs, QGapArgs, SgdStep, Storage,
};
use qat::quant::observer_words;
use qat::quant::params::Scheme;
use qat::quant::EmaObserver;
use qat::rng::Rng;
use qat::Device;

fn devices() -> Vec<Device> {
    let mut out = Vec::new();
    let only_gpu = std::env::var("QAT_PARITY_DEVICES").is_ok_and(|v| v == "gpu");
    if !only_gpu {
        out.push(cuda::emulated_device());
    }
    out.extend(common::gpu_or_skip(
        "cuda_parity on a real GPU",
        Precision::Fp32,
    ));
    out
}

/// Real GPUs also get larger, ResNet-sized cases (too slow for the emulator).
fn is_gpu(d: &Device) -> bool {
    d.backend().name() != "cuda-emu"
}

fn cpu() -> Device {
    Device::cpu()
}

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn range(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    lo + rng.below((hi - lo + 1) as u64) as usize
}

fn host(v: &[f32]) -> Storage {
    Storage::Host(v.to_vec())
}

fn up(d: &Device, v: &[f32]) -> Storage {
    d.backend().upload(v).unwrap()
}

/// A device buffer full of NaN: whatever the kernel does not write stays NaN.
fn poison(d: &Device, len: usize) -> Storage {
    up(d, &vec![f32::NAN; len])
}

fn down(d: &Device, s: &Storage) -> Vec<f32> {
    d.backend().download(s).unwrap()
}

fn hv(s: &Storage) -> Vec<f32> {
    s.host().unwrap().to_vec()
}

/// `|got - want| <= atol + rtol * |want|` everywhere; NaN never passes.
#[track_caller]
fn close(what: &str, dev: &Device, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what} on {}: length",
        dev.backend().name()
    );
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= atol + rtol * w.abs();
        assert!(
            ok,
            "{what} on {}: element {i} of {}: got {g}, want {w} (atol {atol}, rtol {rtol})",
            dev.backend().name(),
            got.len()
        );
    }
}

// ---- memory and elementwise: exact ---------------------------------------------

/// Lengths around the block (256) and the emulator's grid-stride limit (1024).
const LENS: &[usize] = &[1, 7, 31, 255, 256, 257, 1000, 1025, 3001];

#[test]
fn memory_roundtrip_fill_zeros_copy() {
    for dev in devices() {
        let b = dev.backend();
        let mut rng = Rng::new(1);
        for &n in LENS {
            let x = randn(&mut rng, n);
            let s = up(&dev, &x);
            close("upload/download", &dev, &down(&dev, &s), &x, 0.0, 0.0);
            close(
                "copy",
                &dev,
                &down(&dev, &b.copy(&s).unwrap()),
                &x,
                0.0,
                0.0,
            );
            close(
                "zeros",
                &dev,
                &down(&dev, &b.zeros(n).unwrap()),
                &vec![0.0; n],
                0.0,
                0.0,
            );
            let mut f = poison(&dev, n);
            b.fill(&mut f, 2.5).unwrap();
            close("fill", &dev, &down(&dev, &f), &vec![2.5; n], 0.0, 0.0);
        }
        let s = b.zeros(0).unwrap();
        assert!(down(&dev, &s).is_empty());
        assert!(
            s.host().is_err(),
            "host() of device memory must be an error"
        );
    }
}

/// Elementwise ops: exact (same single rounding per element).
#[test]
fn elementwise_ops() {
    let c = cpu();
    for dev in devices() {
        let (b, r) = (dev.backend(), c.backend());
        let mut rng = Rng::new(2);
        for &n in LENS {
            let (x, z, y0) = (randn(&mut rng, n), randn(&mut rng, n), randn(&mut rng, n));

            let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
            r.add(&host(&x), &host(&z), &mut want).unwrap();
            b.add(&up(&dev, &x), &up(&dev, &z), &mut got).unwrap();
            close("add", &dev, &down(&dev, &got), &hv(&want), 0.0, 0.0);

            let (mut want, mut got) = (host(&y0), up(&dev, &y0));
            r.axpy(-0.7, &host(&x), &mut want).unwrap();
            b.axpy(-0.7, &up(&dev, &x), &mut got).unwrap();
            close("axpy", &dev, &down(&dev, &got), &hv(&want), 1e-6, 1e-6);

            let (mut want, mut got) = (host(&x), up(&dev, &x));
            r.scale(1.3, &mut want).unwrap();
            b.scale(1.3, &mut got).unwrap();
            close("scale", &dev, &down(&dev, &got), &hv(&want), 0.0, 0.0);

            let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
            r.relu_fwd(&host(&x), &mut want).unwrap();
            b.relu_fwd(&up(&dev, &x), &mut got).unwrap();
            close("relu_fwd", &dev, &down(&dev, &got), &hv(&want), 0.0, 0.0);
            let yv = hv(&want);

            let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
            r.relu_bwd(&host(&yv), &host(&z), &mut want).unwrap();
            b.relu_bwd(&up(&dev, &yv), &up(&dev, &z), &mut got).unwrap();
            close("relu_bwd", &dev, &down(&dev, &got), &hv(&want), 0.0, 0.0);
        }
    }
}

/// Clamp (ReLU6, hardtanh) forward and backward: exact, including inputs at
/// the bounds, their float32 neighbours and NaN.
#[test]
fn clamp_fwd_bwd() {
    let c = cpu();
    for dev in devices() {
        let (b, r) = (dev.backend(), c.backend());
        let mut rng = Rng::new(20);
        for &n in LENS {
            for (lo, hi) in [(0.0f32, 6.0f32), (-0.5, 2.0), (1.0, 1.0)] {
                let mut x: Vec<f32> = randn(&mut rng, n).iter().map(|v| v * 4.0 + 2.0).collect();
                // Every seventh value on a bound or just beside it, one NaN.
                let special = [
                    lo,
                    hi,
                    f32::from_bits(lo.to_bits() + 1),
                    f32::from_bits(hi.to_bits() - 1),
                    -0.0,
                    f32::NAN,
                ];
                for (i, v) in x.iter_mut().enumerate().step_by(7) {
                    *v = special[(i / 7) % special.len()];
                }
                let dy = randn(&mut rng, n);
                let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
                r.clamp_fwd(lo, hi, &host(&x), &mut want).unwrap();
                b.clamp_fwd(lo, hi, &up(&dev, &x), &mut got).unwrap();
                let (g, w) = (down(&dev, &got), hv(&want));
                for (i, (gv, wv)) in g.iter().zip(&w).enumerate() {
                    assert!(
                        gv.to_bits() == wv.to_bits() || (gv.is_nan() && wv.is_nan()),
                        "clamp_fwd [{lo}, {hi}] on {}: element {i} of {n}: got {gv}, want {wv}",
                        dev.backend().name()
                    );
                    assert_eq!(wv.is_nan(), x[i].is_nan(), "NaN must stay NaN");
                }
                let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
                r.clamp_bwd(lo, hi, &host(&x), &host(&dy), &mut want)
                    .unwrap();
                b.clamp_bwd(lo, hi, &up(&dev, &x), &up(&dev, &dy), &mut got)
                    .unwrap();
                close("clamp_bwd", &dev, &down(&dev, &got), &hv(&want), 0.0, 0.0);
            }
        }
    }
}

/// Concatenation of pieces of different widths into a NaN-poisoned output
/// (every element must be written by some piece), and the split back: exact.
#[test]
fn concat_fwd_bwd() {
    let c = cpu();
    for dev in devices() {
        let mut rng = Rng::new(21);
        // (outer, widths of the pieces)
        let cases: Vec<(usize, Vec<usize>)> = vec![
            (1, vec![1]),
            (2, vec![10, 15, 25]),   // 3 NCHW inputs, 2/3/5 channels of 5x1
            (3, vec![1, 4]),         // 1x1 maps
            (7, vec![257, 31, 300]), // > one block per row
            (300, vec![3, 0, 5]),    // an empty piece, many rows
        ];
        for (outer, widths) in cases {
            let row: usize = widths.iter().sum();
            let mut geoms = Vec::new();
            let mut offset = 0;
            for &inner in &widths {
                geoms.push(ConcatGeom {
                    outer,
                    inner,
                    row,
                    offset,
                });
                offset += inner;
            }
            let xs: Vec<Vec<f32>> = widths.iter().map(|&w| randn(&mut rng, outer * w)).collect();
            let (mut want, mut got) = (host(&vec![0.0; outer * row]), poison(&dev, outer * row));
            for (g, x) in geoms.iter().zip(&xs) {
                c.backend().concat_fwd(g, &host(x), &mut want).unwrap();
                dev.backend().concat_fwd(g, &up(&dev, x), &mut got).unwrap();
            }
            let what = format!("concat_fwd {outer} x {widths:?}");
            close(&what, &dev, &down(&dev, &got), &hv(&want), 0.0, 0.0);
            let dy = randn(&mut rng, outer * row);
            for g in &geoms {
                let (mut want, mut got) = (host(&vec![0.0; g.x_len()]), poison(&dev, g.x_len()));
                c.backend().concat_bwd(g, &host(&dy), &mut want).unwrap();
                dev.backend()
                    .concat_bwd(g, &up(&dev, &dy), &mut got)
                    .unwrap();
                close(
                    &format!("concat_bwd {g:?}"),
                    &dev,
                    &down(&dev, &got),
                    &hv(&want),
                    0.0,
                    0.0,
                );
            }
        }
        // A piece that does not fit its rows is an error, not a stray write.
        let bad = ConcatGeom {
            outer: 2,
            inner: 3,
            row: 4,
            offset: 2,
        };
        let mut y = poison(&dev, 8);
        assert!(dev
            .backend()
            .concat_fwd(&bad, &up(&dev, &[0.0; 6]), &mut y)
            .is_err());
    }
}

/// add_row_bias exact; sum_rows: 1e-5 + 1e-5 relative (summation order).
#[test]
fn row_bias_and_sum_rows() {
    let c = cpu();
    for dev in devices() {
        let mut rng = Rng::new(3);
        for (rows, cols) in [(1, 1), (3, 300), (257, 5), (40, 33), (1, 1030)] {
            let (bias, y0) = (randn(&mut rng, cols), randn(&mut rng, rows * cols));
            let (mut want, mut got) = (host(&y0), up(&dev, &y0));
            c.backend()
                .add_row_bias(rows, cols, &host(&bias), &mut want)
                .unwrap();
            dev.backend()
                .add_row_bias(rows, cols, &up(&dev, &bias), &mut got)
                .unwrap();
            close(
                "add_row_bias",
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );

            let (mut want, mut got) = (host(&vec![0.0; cols]), poison(&dev, cols));
            c.backend()
                .sum_rows(rows, cols, &host(&y0), &mut want)
                .unwrap();
            dev.backend()
                .sum_rows(rows, cols, &up(&dev, &y0), &mut got)
                .unwrap();
            close(
                "sum_rows",
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-5 * rows as f32,
                1e-5,
            );
        }
    }
}

// ---- GEMM ---------------------------------------------------------------------

/// Tolerance `1e-5 * k + 1e-4 relative`: both sides sum k products in
/// different orders (and the GPU may fuse multiply-adds).
#[test]
fn gemm_all_transposes_and_odd_sizes() {
    let c = cpu();
    let mut rng = Rng::new(4);
    let mut cases = vec![
        (1, 1, 1),
        (128, 128, 8),
        (129, 130, 9),
        (5, 3, 300),
        (70, 45, 33),
        (200, 1, 17),
        (1, 260, 4),
    ];
    for _ in 0..4 {
        cases.push((
            range(&mut rng, 1, 200),
            range(&mut rng, 1, 200),
            range(&mut rng, 1, 150),
        ));
    }
    for dev in devices() {
        let mut cases = cases.clone();
        if is_gpu(&dev) {
            cases.extend([(513, 1025, 700), (1024, 1024, 1024), (4096, 10, 512)]);
        }
        for (i, &(m, n, k)) in cases.iter().enumerate() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (alpha, beta) = if i % 2 == 0 { (1.0, 0.0) } else { (0.5, 0.75) };
                let g = GemmGeom {
                    m,
                    n,
                    k,
                    trans_a: ta,
                    trans_b: tb,
                    alpha,
                    beta,
                };
                let (a, bm, c0) = (
                    randn(&mut rng, m * k),
                    randn(&mut rng, k * n),
                    randn(&mut rng, m * n),
                );
                let mut want = host(&c0);
                c.backend()
                    .gemm(&g, &host(&a), &host(&bm), &mut want)
                    .unwrap();
                // beta == 0 must not read C: poison it.
                let mut got = if beta == 0.0 {
                    poison(&dev, m * n)
                } else {
                    up(&dev, &c0)
                };
                dev.backend()
                    .gemm(&g, &up(&dev, &a), &up(&dev, &bm), &mut got)
                    .unwrap();
                close(
                    &format!("gemm {g:?}"),
                    &dev,
                    &down(&dev, &got),
                    &hv(&want),
                    1e-5 * k as f32,
                    1e-4,
                );
            }
        }
    }
}

// ---- convolution ----------------------------------------------------------------

fn conv_cases() -> Vec<(Conv2dGeom, bool)> {
    let geom = |n,
                c_in,
                h,
                w,
                c_out,
                k: (usize, usize),
                s: (usize, usize),
                p: (usize, usize),
                d: (usize, usize),
                groups| {
        Conv2dGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k.0,
            kw: k.1,
            stride: s,
            pad: p,
            dilation: d,
            groups,
        }
    };
    let mut cases = vec![
        (geom(2, 3, 9, 9, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1), true),
        (
            geom(1, 3, 15, 13, 8, (7, 7), (2, 2), (3, 3), (1, 1), 1),
            false,
        ), // ResNet stem
        (
            geom(2, 20, 6, 6, 130, (3, 3), (2, 2), (1, 1), (1, 1), 1),
            true,
        ), // Kc = 180 and 130 > one tile
        (
            geom(1, 16, 5, 7, 16, (1, 1), (2, 2), (0, 0), (1, 1), 1),
            false,
        ), // downsample 1x1
        (geom(2, 4, 7, 7, 6, (3, 3), (1, 1), (2, 2), (2, 2), 2), true), // dilated, groups
        (
            geom(1, 6, 8, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 6),
            false,
        ), // depthwise
        (geom(1, 2, 1, 1, 3, (1, 1), (1, 1), (0, 0), (1, 1), 1), true),
        (
            geom(3, 5, 11, 4, 7, (2, 3), (3, 1), (1, 0), (1, 1), 1),
            true,
        ), // rectangular everything
    ];
    let mut rng = Rng::new(5);
    while cases.len() < 14 {
        let groups = [1, 1, 2][range(&mut rng, 0, 2)];
        let k = range(&mut rng, 1, 3);
        let g = geom(
            range(&mut rng, 1, 3),
            groups * range(&mut rng, 1, 6),
            range(&mut rng, 1, 12),
            range(&mut rng, 1, 12),
            groups * range(&mut rng, 1, 9),
            (k, range(&mut rng, 1, 3)),
            (range(&mut rng, 1, 2), range(&mut rng, 1, 2)),
            (range(&mut rng, 0, 1), range(&mut rng, 0, 1)),
            (range(&mut rng, 1, 2), 1),
            groups,
        );
        if let Ok(g) = g.validate() {
            cases.push((g, rng.below(2) == 0));
        }
    }
    cases
}

/// Forward and backward-data: `1e-5 * Kc + 1e-4 relative`, Kc the reduction
/// length; backward-weight and bias: `1e-5 * N*OH*OW + 1e-4 relative`.
#[test]
fn conv2d_fwd_bwd_data_bwd_weight() {
    let c = cpu();
    for dev in devices() {
        let mut rng = Rng::new(6);
        let mut cases = conv_cases();
        if is_gpu(&dev) {
            let big = |c_in, hw, c_out, k, s, p| Conv2dGeom {
                n: 8,
                c_in,
                h: hw,
                w: hw,
                c_out,
                kh: k,
                kw: k,
                stride: (s, s),
                pad: (p, p),
                dilation: (1, 1),
                groups: 1,
            };
            cases.extend([
                (big(3, 64, 64, 7, 2, 3), false),
                (big(64, 28, 128, 3, 2, 1), true),
                (big(130, 14, 260, 3, 1, 1), false),
                (big(256, 7, 512, 1, 1, 0), true),
            ]);
        }
        for (g, with_bias) in cases {
            let g = g.validate().unwrap();
            let (x, w, bias, dy) = (
                randn(&mut rng, g.x_len()),
                randn(&mut rng, g.w_len()),
                randn(&mut rng, g.c_out),
                randn(&mut rng, g.y_len()),
            );
            let kc = (g.c_in_per_group() * g.kh * g.kw) as f32;
            let r = (g.n * g.out_h() * g.out_w()) as f32;
            let what = |op: &str| format!("{op} {g:?}");

            let mut want = host(&vec![0.0; g.y_len()]);
            let hb = host(&bias);
            c.backend()
                .conv2d_fwd(
                    &g,
                    &host(&x),
                    &host(&w),
                    with_bias.then_some(&hb),
                    &mut want,
                )
                .unwrap();
            let mut got = poison(&dev, g.y_len());
            let db = up(&dev, &bias);
            dev.backend()
                .conv2d_fwd(
                    &g,
                    &up(&dev, &x),
                    &up(&dev, &w),
                    with_bias.then_some(&db),
                    &mut got,
                )
                .unwrap();
            close(
                &what("conv2d_fwd"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-5 * kc,
                1e-4,
            );

            let mut want = host(&vec![0.0; g.x_len()]);
            c.backend()
                .conv2d_bwd_data(&g, &host(&dy), &host(&w), &mut want)
                .unwrap();
            let mut got = poison(&dev, g.x_len());
            dev.backend()
                .conv2d_bwd_data(&g, &up(&dev, &dy), &up(&dev, &w), &mut got)
                .unwrap();
            let kd = (g.c_out_per_group() * g.kh * g.kw) as f32;
            close(
                &what("conv2d_bwd_data"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-5 * kd,
                1e-4,
            );

            let (mut want_w, mut want_b) = (host(&vec![0.0; g.w_len()]), host(&vec![0.0; g.c_out]));
            c.backend()
                .conv2d_bwd_weight(
                    &g,
                    &host(&x),
                    &host(&dy),
                    &mut want_w,
                    with_bias.then_some(&mut want_b),
                )
                .unwrap();
            let (mut got_w, mut got_b) = (poison(&dev, g.w_len()), poison(&dev, g.c_out));
            dev.backend()
                .conv2d_bwd_weight(
                    &g,
                    &up(&dev, &x),
                    &up(&dev, &dy),
                    &mut got_w,
                    with_bias.then_some(&mut got_b),
                )
                .unwrap();
            close(
                &what("conv2d_bwd_weight"),
                &dev,
                &down(&dev, &got_w),
                &hv(&want_w),
                1e-5 * r,
                1e-4,
            );
            if with_bias {
                close(
                    &what("conv2d_bwd_bias"),
                    &dev,
                    &down(&dev, &got_b),
                    &hv(&want_b),
                    1e-5 * r,
                    1e-4,
                );
            }
        }
    }
}

/// The depthwise kernels (kernels/depthwise.cu: forward, backward-data,
/// backward-weight with and without split-K, and the bias gradient) against
/// the CPU backend's direct kernels, on depthwise shapes: multipliers 1-3,
/// 1x1 to 7x7, strides 1-3, dilation, one-row images, and (GPU only)
/// MobileNetV2 sizes. Both sides accumulate each forward and backward-data
/// element with fused multiply-adds in the same tap order, so those agree to
/// rounding of the last bit at most; backward-weight sums in another order:
/// `1e-5 * N*OH*OW + 1e-4 relative`.
#[test]
fn depthwise_conv2d_kernels() {
    let c = cpu();
    for dev in devices() {
        let mut rng = Rng::new(16);
        let dw = |n, ch, h, w, m, k: (usize, usize), s: (usize, usize), p: (usize, usize), d| {
            Conv2dGeom {
                n,
                c_in: ch,
                h,
                w,
                c_out: ch * m,
                kh: k.0,
                kw: k.1,
                stride: s,
                pad: p,
                dilation: d,
                groups: ch,
            }
        };
        let mut cases = vec![
            dw(3, 5, 9, 7, 1, (3, 3), (2, 2), (1, 1), (2, 2)),
            dw(2, 6, 12, 11, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
            dw(2, 4, 13, 9, 2, (5, 5), (2, 1), (2, 2), (1, 1)),
            dw(1, 3, 17, 15, 3, (7, 7), (2, 2), (3, 3), (1, 1)),
            dw(3, 2, 1, 9, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
            dw(2, 3, 8, 7, 1, (3, 3), (3, 3), (2, 2), (1, 1)),
            dw(2, 5, 6, 6, 1, (1, 1), (2, 2), (0, 0), (1, 1)),
            dw(1, 2, 9, 20, 1, (3, 9), (1, 1), (1, 4), (1, 1)), // 9 taps a row: two column chunks
        ];
        if is_gpu(&dev) {
            cases.extend([
                dw(32, 32, 112, 112, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
                dw(32, 144, 56, 56, 1, (3, 3), (2, 2), (1, 1), (1, 1)),
                dw(32, 960, 7, 7, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
            ]);
        }
        for (k, g) in cases.into_iter().enumerate() {
            let g = g.validate().unwrap();
            assert!(g.is_depthwise());
            let with_bias = k % 2 == 0;
            let (x, w, bias, dy) = (
                randn(&mut rng, g.x_len()),
                randn(&mut rng, g.w_len()),
                randn(&mut rng, g.c_out),
                randn(&mut rng, g.y_len()),
            );
            let taps = (g.kh * g.kw * g.depthwise_multiplier()) as f32;
            let r = (g.n * g.out_h() * g.out_w()) as f32;
            let what = |op: &str| format!("depthwise {op} {g:?}");

            let mut want = host(&vec![0.0; g.y_len()]);
            let hb = host(&bias);
            c.backend()
                .conv2d_fwd(
                    &g,
                    &host(&x),
                    &host(&w),
                    with_bias.then_some(&hb),
                    &mut want,
                )
                .unwrap();
            let mut got = poison(&dev, g.y_len());
            let db = up(&dev, &bias);
            dev.backend()
                .conv2d_fwd(
                    &g,
                    &up(&dev, &x),
                    &up(&dev, &w),
                    with_bias.then_some(&db),
                    &mut got,
                )
                .unwrap();
            close(
                &what("fwd"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-6 * taps,
                1e-6,
            );

            let mut want = host(&vec![0.0; g.x_len()]);
            c.backend()
                .conv2d_bwd_data(&g, &host(&dy), &host(&w), &mut want)
                .unwrap();
            let mut got = poison(&dev, g.x_len());
            dev.backend()
                .conv2d_bwd_data(&g, &up(&dev, &dy), &up(&dev, &w), &mut got)
                .unwrap();
            close(
                &what("bwd_data"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-6 * taps,
                1e-6,
            );

            let (mut want_w, mut want_b) = (host(&vec![0.0; g.w_len()]), host(&vec![0.0; g.c_out]));
            c.backend()
                .conv2d_bwd_weight(
                    &g,
                    &host(&x),
                    &host(&dy),
                    &mut want_w,
                    with_bias.then_some(&mut want_b),
                )
                .unwrap();
            let (mut got_w, mut got_b) = (poison(&dev, g.w_len()), poison(&dev, g.c_out));
            dev.backend()
                .conv2d_bwd_weight(
                    &g,
                    &up(&dev, &x),
                    &up(&dev, &dy),
                    &mut got_w,
                    with_bias.then_some(&mut got_b),
                )
                .unwrap();
            close(
                &what("bwd_weight"),
                &dev,
                &down(&dev, &got_w),
                &hv(&want_w),
                1e-5 * r,
                1e-4,
            );
            if with_bias {
                close(
                    &what("bwd_bias"),
                    &dev,
                    &down(&dev, &got_b),
                    &hv(&want_b),
                    1e-5 * r,
                    1e-4,
                );
            }
        }
    }
}

// ---- batch norm -------------------------------------------------------------------

/// Train/eval forward and backward: `1e-4 + 1e-4 relative` (batch statistics
/// are sums over N*HW values; the CPU accumulates in f64).
#[test]
fn batchnorm_train_eval_bwd() {
    let c = cpu();
    for dev in devices() {
        let mut rng = Rng::new(7);
        // Planes of 1 to 300 values: on the emulator (8 values per chunk)
        // 1 to 38 chunks per plane, 1 to 114 partial sums per channel, planes
        // of a multiple of 4 on the float4 path, the others on the scalar one.
        let mut cases = vec![
            (2, 3, 5),
            (4, 7, 33),
            (1, 5, 1),
            (3, 2, 300),
            (2, 33, 9),
            (3, 4, 64),
            (5, 3, 100),
        ];
        if is_gpu(&dev) {
            cases.extend([(32, 64, 56 * 56), (64, 512, 49)]);
        }
        for (n, ch, hw) in cases {
            let g = BnGeom {
                n,
                c: ch,
                hw,
                eps: 1e-5,
                momentum: 0.1,
            };
            let len = n * ch * hw;
            // An offset mean tests the variance for cancellation.
            let x: Vec<f32> = randn(&mut rng, len).iter().map(|v| 3.0 + 2.0 * v).collect();
            let (gamma, beta, dy) = (
                randn(&mut rng, ch),
                randn(&mut rng, ch),
                randn(&mut rng, len),
            );
            let rm: Vec<f32> = randn(&mut rng, ch);
            let rv: Vec<f32> = randn(&mut rng, ch).iter().map(|v| 1.0 + v.abs()).collect();

            let (mut rm_w, mut rv_w) = (host(&rm), host(&rv));
            let (mut y_w, mut m_w, mut s_w) = (
                host(&vec![0.0; len]),
                host(&vec![0.0; ch]),
                host(&vec![0.0; ch]),
            );
            c.backend()
                .batchnorm_fwd_train(
                    &g,
                    &host(&x),
                    &host(&gamma),
                    &host(&beta),
                    &mut rm_w,
                    &mut rv_w,
                    &mut y_w,
                    &mut m_w,
                    &mut s_w,
                )
                .unwrap();
            let (mut rm_g, mut rv_g) = (up(&dev, &rm), up(&dev, &rv));
            let (mut y_g, mut m_g, mut s_g) =
                (poison(&dev, len), poison(&dev, ch), poison(&dev, ch));
            let (xd, gd, bd) = (up(&dev, &x), up(&dev, &gamma), up(&dev, &beta));
            dev.backend()
                .batchnorm_fwd_train(
                    &g, &xd, &gd, &bd, &mut rm_g, &mut rv_g, &mut y_g, &mut m_g, &mut s_g,
                )
                .unwrap();
            let what = |op: &str| format!("{op} {g:?}");
            close(
                &what("bn train y"),
                &dev,
                &down(&dev, &y_g),
                &hv(&y_w),
                1e-4,
                1e-4,
            );
            close(
                &what("bn save_mean"),
                &dev,
                &down(&dev, &m_g),
                &hv(&m_w),
                1e-4,
                1e-4,
            );
            close(
                &what("bn save_invstd"),
                &dev,
                &down(&dev, &s_g),
                &hv(&s_w),
                1e-4,
                1e-4,
            );
            close(
                &what("bn running_mean"),
                &dev,
                &down(&dev, &rm_g),
                &hv(&rm_w),
                1e-4,
                1e-4,
            );
            close(
                &what("bn running_var"),
                &dev,
                &down(&dev, &rv_g),
                &hv(&rv_w),
                1e-4,
                1e-4,
            );

            let mut want = host(&vec![0.0; len]);
            c.backend()
                .batchnorm_fwd_eval(
                    &g,
                    &host(&x),
                    &host(&gamma),
                    &host(&beta),
                    &host(&rm),
                    &host(&rv),
                    &mut want,
                )
                .unwrap();
            let mut got = poison(&dev, len);
            dev.backend()
                .batchnorm_fwd_eval(&g, &xd, &gd, &bd, &up(&dev, &rm), &up(&dev, &rv), &mut got)
                .unwrap();
            close(
                &what("bn eval y"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-4,
                1e-4,
            );

            let (mut dx_w, mut dg_w, mut db_w) = (
                host(&vec![0.0; len]),
                host(&vec![0.0; ch]),
                host(&vec![0.0; ch]),
            );
            c.backend()
                .batchnorm_bwd(
                    &g,
                    &host(&x),
                    &host(&dy),
                    &host(&gamma),
                    &m_w,
                    &s_w,
                    &mut dx_w,
                    &mut dg_w,
                    &mut db_w,
                )
                .unwrap();
            let (mut dx_g, mut dg_g, mut db_g) =
                (poison(&dev, len), poison(&dev, ch), poison(&dev, ch));
            // The saved statistics are the CPU's, so only the backward differs.
            let (md, sd) = (up(&dev, &hv(&m_w)), up(&dev, &hv(&s_w)));
            dev.backend()
                .batchnorm_bwd(
                    &g,
                    &xd,
                    &up(&dev, &dy),
                    &gd,
                    &md,
                    &sd,
                    &mut dx_g,
                    &mut dg_g,
                    &mut db_g,
                )
                .unwrap();
            let tol = 1e-5 * (n * hw) as f32;
            close(
                &what("bn dx"),
                &dev,
                &down(&dev, &dx_g),
                &hv(&dx_w),
                1e-4,
                1e-3,
            );
            close(
                &what("bn dgamma"),
                &dev,
                &down(&dev, &dg_g),
                &hv(&dg_w),
                tol,
                1e-4,
            );
            close(
                &what("bn dbeta"),
                &dev,
                &down(&dev, &db_g),
                &hv(&db_w),
                tol,
                1e-4,
            );
            // Deterministic: the partial sums are combined in a fixed order,
            // so a second run gives the same bits.
            let (mut dx2, mut dg2, mut db2) =
                (poison(&dev, len), poison(&dev, ch), poison(&dev, ch));
            dev.backend()
                .batchnorm_bwd(
                    &g,
                    &xd,
                    &up(&dev, &dy),
                    &gd,
                    &md,
                    &sd,
                    &mut dx2,
                    &mut dg2,
                    &mut db2,
                )
                .unwrap();
            for (first, again) in [(&dx_g, &dx2), (&dg_g, &dg2), (&db_g, &db2)] {
                let bits = |s: &Storage| -> Vec<u32> {
                    down(&dev, s).iter().map(|v| v.to_bits()).collect()
                };
                assert_eq!(bits(first), bits(again), "{}: run to run", what("bn bwd"));
            }
        }
    }
}

// ---- pooling ------------------------------------------------------------------------

/// Max pooling: exact, on inputs full of ties (values from {0, 1, 2}), so the
/// first-maximum rule of the backward pass is tested. Average pooling:
/// `1e-6 + 1e-5 relative`.
#[test]
fn maxpool_and_global_avgpool() {
    let c = cpu();
    let pool = |n, ch, h, w, k: (usize, usize), s: (usize, usize), p: (usize, usize)| Pool2dGeom {
        n,
        c: ch,
        h,
        w,
        kh: k.0,
        kw: k.1,
        stride: s,
        pad: p,
    };
    let cases = [
        pool(2, 3, 9, 9, (3, 3), (2, 2), (1, 1)), // ResNet stem pool
        pool(1, 2, 8, 6, (2, 2), (2, 2), (0, 0)),
        pool(2, 2, 7, 5, (3, 3), (1, 1), (1, 1)),
        pool(1, 3, 6, 11, (2, 3), (1, 2), (1, 1)),
        pool(3, 5, 17, 13, (3, 3), (2, 2), (1, 1)),
        pool(1, 1, 1, 1, (1, 1), (1, 1), (0, 0)),
    ];
    for dev in devices() {
        let mut rng = Rng::new(8);
        let mut cases = cases.to_vec();
        if is_gpu(&dev) {
            cases.push(pool(16, 64, 112, 112, (3, 3), (2, 2), (1, 1)));
        }
        for g in cases {
            let g = g.validate().unwrap();
            let (xl, yl) = (g.n * g.c * g.h * g.w, g.n * g.c * g.out_h() * g.out_w());
            let x: Vec<f32> = (0..xl).map(|_| rng.below(3) as f32).collect();
            let dy = randn(&mut rng, yl);
            let mut want = host(&vec![0.0; yl]);
            c.backend().maxpool2d_fwd(&g, &host(&x), &mut want).unwrap();
            let mut got = poison(&dev, yl);
            dev.backend()
                .maxpool2d_fwd(&g, &up(&dev, &x), &mut got)
                .unwrap();
            close(
                &format!("maxpool fwd {g:?}"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );

            let mut want = host(&vec![0.0; xl]);
            c.backend()
                .maxpool2d_bwd(&g, &host(&x), &host(&dy), &mut want)
                .unwrap();
            let mut got = poison(&dev, xl);
            dev.backend()
                .maxpool2d_bwd(&g, &up(&dev, &x), &up(&dev, &dy), &mut got)
                .unwrap();
            close(
                &format!("maxpool bwd {g:?}"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-6,
                1e-6,
            );
        }
        for (n, ch, hw) in [(1, 1, 1), (2, 3, 49), (3, 9, 100), (1, 17, 31)] {
            let (x, dy) = (randn(&mut rng, n * ch * hw), randn(&mut rng, n * ch));
            let mut want = host(&vec![0.0; n * ch]);
            c.backend()
                .global_avgpool_fwd(n, ch, hw, &host(&x), &mut want)
                .unwrap();
            let mut got = poison(&dev, n * ch);
            dev.backend()
                .global_avgpool_fwd(n, ch, hw, &up(&dev, &x), &mut got)
                .unwrap();
            close(
                "global_avgpool_fwd",
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-6,
                1e-5,
            );

            let mut want = host(&vec![0.0; n * ch * hw]);
            c.backend()
                .global_avgpool_bwd(n, ch, hw, &host(&dy), &mut want)
                .unwrap();
            let mut got = poison(&dev, n * ch * hw);
            dev.backend()
                .global_avgpool_bwd(n, ch, hw, &up(&dev, &dy), &mut got)
                .unwrap();
            close(
                "global_avgpool_bwd",
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-6,
                1e-5,
            );
        }
    }
}

/// Average pooling, both divisor rules, with and without ceil_mode: the CPU
/// sums in f64, the kernels in f32, so `1e-6 + 1e-5 relative`.
#[test]
fn avgpool2d_fwd_bwd() {
    let c = cpu();
    let pool =
        |n, ch, h, w, k: (usize, usize), s: (usize, usize), p: (usize, usize), incl, ceil| {
            AvgPool2dGeom {
                n,
                c: ch,
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
    let mut cases = Vec::new();
    for incl in [false, true] {
        cases.extend([
            pool(2, 3, 9, 7, (3, 3), (2, 2), (1, 1), incl, false),
            pool(1, 2, 8, 6, (3, 3), (2, 2), (1, 1), incl, true), // windows past the padding
            pool(2, 2, 7, 9, (2, 2), (2, 2), (0, 0), incl, true),
            pool(1, 3, 6, 11, (2, 3), (1, 2), (1, 1), incl, false),
            pool(1, 2, 10, 7, (5, 3), (3, 2), (2, 1), incl, true),
            pool(3, 5, 17, 13, (3, 3), (1, 1), (1, 1), incl, false),
            pool(2, 3, 7, 7, (7, 7), (1, 1), (0, 0), incl, false),
            pool(1, 1, 1, 1, (1, 1), (1, 1), (0, 0), incl, true),
        ]);
    }
    for dev in devices() {
        let mut rng = Rng::new(22);
        let mut cases = cases.clone();
        if is_gpu(&dev) {
            cases.push(pool(16, 96, 56, 56, (3, 3), (2, 2), (1, 1), false, true));
        }
        for g in cases {
            let g = g.validate().unwrap();
            let (x, dy) = (randn(&mut rng, g.x_len()), randn(&mut rng, g.y_len()));
            let mut want = host(&vec![0.0; g.y_len()]);
            c.backend().avgpool2d_fwd(&g, &host(&x), &mut want).unwrap();
            let mut got = poison(&dev, g.y_len());
            dev.backend()
                .avgpool2d_fwd(&g, &up(&dev, &x), &mut got)
                .unwrap();
            let what = format!("avgpool2d fwd {g:?}");
            close(&what, &dev, &down(&dev, &got), &hv(&want), 1e-6, 1e-5);

            let mut want = host(&vec![0.0; g.x_len()]);
            c.backend()
                .avgpool2d_bwd(&g, &host(&dy), &mut want)
                .unwrap();
            let mut got = poison(&dev, g.x_len());
            dev.backend()
                .avgpool2d_bwd(&g, &up(&dev, &dy), &mut got)
                .unwrap();
            let what = format!("avgpool2d bwd {g:?}");
            close(&what, &dev, &down(&dev, &got), &hv(&want), 1e-6, 1e-5);
        }
    }
}

// ---- loss ----------------------------------------------------------------------------

/// Softmax cross-entropy: loss and probabilities `1e-5 + 1e-4 relative`,
/// gradient `1e-6 + 1e-4 relative`.
#[test]
fn softmax_cross_entropy() {
    let c = cpu();
    for dev in devices() {
        let mut rng = Rng::new(9);
        for (rows, classes, eps) in [
            (1, 1, 0.0),
            (3, 10, 0.0),
            (37, 10, 0.1),
            (5, 300, 0.1),
            (2, 1000, 0.05),
        ] {
            let logits: Vec<f32> = randn(&mut rng, rows * classes)
                .iter()
                .map(|v| 4.0 * v)
                .collect();
            let labels: Vec<f32> = (0..rows)
                .map(|_| rng.below(classes as u64) as f32)
                .collect();
            let (mut loss_w, mut probs_w) = (host(&[0.0]), host(&vec![0.0; rows * classes]));
            c.backend()
                .softmax_xent_fwd(
                    rows,
                    classes,
                    eps,
                    &host(&logits),
                    &host(&labels),
                    &mut loss_w,
                    &mut probs_w,
                )
                .unwrap();
            let (mut loss_g, mut probs_g) = (poison(&dev, 1), poison(&dev, rows * classes));
            let (ld, lab) = (up(&dev, &logits), up(&dev, &labels));
            dev.backend()
                .softmax_xent_fwd(rows, classes, eps, &ld, &lab, &mut loss_g, &mut probs_g)
                .unwrap();
            let what = format!("softmax_xent rows {rows} classes {classes} eps {eps}");
            close(&what, &dev, &down(&dev, &loss_g), &hv(&loss_w), 1e-5, 1e-4);
            close(
                &what,
                &dev,
                &down(&dev, &probs_g),
                &hv(&probs_w),
                1e-5,
                1e-4,
            );

            let mut want = host(&vec![0.0; rows * classes]);
            c.backend()
                .softmax_xent_bwd(
                    rows,
                    classes,
                    eps,
                    &probs_w,
                    &host(&labels),
                    &host(&[0.7]),
                    &mut want,
                )
                .unwrap();
            let mut got = poison(&dev, rows * classes);
            let pd = up(&dev, &hv(&probs_w));
            dev.backend()
                .softmax_xent_bwd(rows, classes, eps, &pd, &lab, &up(&dev, &[0.7]), &mut got)
                .unwrap();
            close(&what, &dev, &down(&dev, &got), &hv(&want), 1e-6, 1e-4);
        }
    }
}

// ---- optimizer --------------------------------------------------------------------------

/// Three SGD steps, parameters and momentum buffers: `1e-6 + 1e-6 relative`.
#[test]
fn sgd_steps() {
    let c = cpu();
    for dev in devices() {
        let mut rng = Rng::new(10);
        for (momentum, nesterov, weight_decay) in
            [(0.0, false, 0.0), (0.9, false, 5e-4), (0.9, true, 1e-2)]
        {
            let s = SgdStep {
                lr: 0.1,
                momentum,
                weight_decay,
                nesterov,
            };
            let n = 1029;
            let p0 = randn(&mut rng, n);
            let (mut pw, mut bw) = (host(&p0), host(&vec![0.0; n]));
            let (mut pg, mut bg) = (up(&dev, &p0), dev.backend().zeros(n).unwrap());
            for _ in 0..3 {
                let g = randn(&mut rng, n);
                c.backend()
                    .sgd_step(&s, &mut pw, &host(&g), &mut bw)
                    .unwrap();
                dev.backend()
                    .sgd_step(&s, &mut pg, &up(&dev, &g), &mut bg)
                    .unwrap();
            }
            close(
                &format!("sgd param {s:?}"),
                &dev,
                &down(&dev, &pg),
                &hv(&pw),
                1e-6,
                1e-6,
            );
            close(
                &format!("sgd buffer {s:?}"),
                &dev,
                &down(&dev, &bg),
                &hv(&bw),
                1e-6,
                1e-6,
            );
        }
    }
}

// ---- quantization-aware training ------------------------------------------------------

/// Observers and fake quantization: exact (same division, same
/// round-half-to-even), on inputs that include exact .5 ties and values far
/// outside the grid. Per-channel scale: exact; per-channel dot: `1e-6 + 1e-6
/// relative` (both accumulate in f64).
#[test]
fn quantization_primitives() {
    let c = cpu();
    for dev in devices() {
        let (b, r) = (dev.backend(), c.backend());
        let mut rng = Rng::new(11);
        for &n in LENS {
            let x: Vec<f32> = randn(&mut rng, n).iter().map(|v| 3.0 * v).collect();
            assert_eq!(
                b.min_max(&up(&dev, &x)).unwrap(),
                r.min_max(&host(&x)).unwrap(),
                "min_max, n = {n}"
            );
        }
        for q in [
            FqTensor {
                scale: 0.05,
                zero_point: -3,
                qmin: -128,
                qmax: 127,
            },
            FqTensor {
                scale: 0.125,
                zero_point: 10,
                qmin: -128,
                qmax: 127,
            },
        ] {
            let n = 2000;
            // Half the values on exact ties k + 0.5 of the grid, some clamped.
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        (rng.below(400) as f32 - 200.0 + 0.5) * q.scale
                    } else {
                        rng.normal() * 10.0
                    }
                })
                .collect();
            let dy = randn(&mut rng, n);
            let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
            r.fake_quant_tensor_fwd(&q, &host(&x), &mut want).unwrap();
            b.fake_quant_tensor_fwd(&q, &up(&dev, &x), &mut got)
                .unwrap();
            close(
                &format!("fake_quant_tensor_fwd {q:?}"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );
            let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
            r.fake_quant_tensor_bwd(&q, &host(&x), &host(&dy), &mut want)
                .unwrap();
            b.fake_quant_tensor_bwd(&q, &up(&dev, &x), &up(&dev, &dy), &mut got)
                .unwrap();
            close(
                &format!("fake_quant_tensor_bwd {q:?}"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );
        }
        for (channels, inner) in [(5, 27), (3, 1), (4, 300), (1, 1000)] {
            let n = channels * inner;
            let mut w = randn(&mut rng, n);
            w[..inner].iter_mut().for_each(|v| *v = 0.0); // an all-zero channel
            let dy = randn(&mut rng, n);
            let (mut yw, mut sw) = (host(&vec![0.0; n]), host(&vec![0.0; channels]));
            r.fake_quant_channel_fwd(channels, inner, &host(&w), &mut yw, &mut sw)
                .unwrap();
            let (mut yg, mut sg) = (poison(&dev, n), poison(&dev, channels));
            b.fake_quant_channel_fwd(channels, inner, &up(&dev, &w), &mut yg, &mut sg)
                .unwrap();
            let what = format!("fake_quant_channel {channels}x{inner}");
            close(&what, &dev, &down(&dev, &sg), &hv(&sw), 0.0, 0.0);
            close(&what, &dev, &down(&dev, &yg), &hv(&yw), 0.0, 0.0);
            let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
            r.fake_quant_channel_bwd(channels, inner, &host(&w), &sw, &host(&dy), &mut want)
                .unwrap();
            let sd = up(&dev, &hv(&sw));
            b.fake_quant_channel_bwd(
                channels,
                inner,
                &up(&dev, &w),
                &sd,
                &up(&dev, &dy),
                &mut got,
            )
            .unwrap();
            close(&what, &dev, &down(&dev, &got), &hv(&want), 0.0, 0.0);
        }
        for (outer, ch, inner) in [(1, 1, 1), (3, 5, 7), (2, 64, 9), (130, 3, 1)] {
            let n = outer * ch * inner;
            let (x, z, s) = (randn(&mut rng, n), randn(&mut rng, n), randn(&mut rng, ch));
            let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
            r.channel_scale(outer, ch, inner, &host(&x), &host(&s), &mut want)
                .unwrap();
            b.channel_scale(outer, ch, inner, &up(&dev, &x), &up(&dev, &s), &mut got)
                .unwrap();
            close(
                "channel_scale",
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );
            let (mut want, mut got) = (host(&vec![0.0; ch]), poison(&dev, ch));
            r.channel_dot(outer, ch, inner, &host(&x), &host(&z), &mut want)
                .unwrap();
            b.channel_dot(outer, ch, inner, &up(&dev, &x), &up(&dev, &z), &mut got)
                .unwrap();
            close(
                "channel_dot",
                &dev,
                &down(&dev, &got),
                &hv(&want),
                1e-6,
                1e-6,
            );
        }
    }
}

/// The step summary: the loss copied, top-1/top-5 hits counted as
/// `Accuracy` counts them, on logits with ties (rounded to a coarse grid) and
/// class counts below and above 5.
#[test]
fn label_hits_count_like_accuracy() {
    let c = cpu();
    for dev in devices() {
        let (b, r) = (dev.backend(), c.backend());
        let mut rng = Rng::new(13);
        for &(rows, classes) in &[(1, 1), (7, 3), (300, 10), (33, 1000)] {
            let logits: Vec<f32> = randn(&mut rng, rows * classes)
                .iter()
                .map(|v| (v * 2.0).round())
                .collect();
            let labels: Vec<f32> = (0..rows)
                .map(|_| rng.below(classes as u64) as f32)
                .collect();
            let loss = [2.5f32];
            let (mut want, mut got) = (host(&[0.0; 3]), poison(&dev, 3));
            r.label_hits(
                rows,
                classes,
                &host(&logits),
                &host(&labels),
                &host(&loss),
                &mut want,
            )
            .unwrap();
            b.label_hits(
                rows,
                classes,
                &up(&dev, &logits),
                &up(&dev, &labels),
                &up(&dev, &loss),
                &mut got,
            )
            .unwrap();
            let mut acc = qat::accuracy::Accuracy::default();
            let l: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
            acc.add(&logits, &l);
            assert_eq!(hv(&want), vec![2.5, acc.top1 as f32, acc.top5 as f32]);
            assert_eq!(
                down(&dev, &got),
                hv(&want),
                "{}: {rows} x {classes}",
                dev.backend().name()
            );
        }
    }
}

/// The device-resident parts of a QAT step, bit for bit: the batch-norm fold
/// maps ([`PairMap`], each the host expression), and the observer step on
/// the device words (EMA, scale, zero point for both schemes; an invalid
/// batch recorded and skipped) with the fake quantization that reads them.
#[test]
fn device_resident_qat_step_parts() {
    let c = cpu();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for dev in devices() {
        let (b, r) = (dev.backend(), c.backend());
        let mut rng = Rng::new(12);
        for &n in LENS {
            let x: Vec<f32> = randn(&mut rng, n).iter().map(|v| v.abs() + 0.01).collect();
            let z = randn(&mut rng, n);
            for op in [
                PairMap::SqrtAdd(1e-5),
                PairMap::Div,
                PairMap::MulRecip,
                PairMap::NegMul,
                PairMap::Recip,
                PairMap::MulNegRecipSq,
            ] {
                let (mut want, mut got) = (host(&vec![0.0; n]), poison(&dev, n));
                r.pair_map(op, &host(&z), &host(&x), &mut want).unwrap();
                b.pair_map(op, &up(&dev, &z), &up(&dev, &x), &mut got)
                    .unwrap();
                let want = hv(&want);
                let expect: Vec<f32> = z.iter().zip(&x).map(|(&a, &y)| op.apply(a, y)).collect();
                assert_eq!(bits(&want), bits(&expect), "cpu pair_map {op:?}, n = {n}");
                assert_eq!(
                    bits(&down(&dev, &got)),
                    bits(&want),
                    "{}: pair_map {op:?}, n = {n}",
                    dev.backend().name()
                );
            }
        }
        for scheme in [Scheme::Asymmetric, Scheme::Symmetric] {
            let start = observer_words::encode(&EmaObserver::new(0.1), None, scheme);
            let (mut want, mut got) = (host(&start), up(&dev, &start));
            for (step, &n) in LENS.iter().enumerate() {
                let shift = if step % 2 == 0 { 1.5 } else { -0.25 };
                let x: Vec<f32> = randn(&mut rng, n).iter().map(|v| 2.0 * v + shift).collect();
                r.observe_act(&host(&x), 0.1, scheme, &mut want).unwrap();
                b.observe_act(&up(&dev, &x), 0.1, scheme, &mut got).unwrap();
                let w = hv(&want);
                assert_eq!(
                    bits(&down(&dev, &got)),
                    bits(&w),
                    "{}: observe {scheme:?} step {step}",
                    dev.backend().name()
                );
                let q = observer_words::qparams(&w);
                assert_eq!(q, scheme.qparams(w[0], w[1]).unwrap());
                let dy = randn(&mut rng, n);
                let (mut fw, mut fg) = (host(&vec![0.0; n]), poison(&dev, n));
                r.fake_quant_act_fwd(&want, -128, 127, &host(&x), &mut fw)
                    .unwrap();
                b.fake_quant_act_fwd(&got, -128, 127, &up(&dev, &x), &mut fg)
                    .unwrap();
                assert_eq!(bits(&down(&dev, &fg)), bits(&hv(&fw)), "fake_quant_act_fwd");
                let fq = FqTensor {
                    scale: q.scale,
                    zero_point: q.zero_point,
                    qmin: -128,
                    qmax: 127,
                };
                let mut direct = host(&vec![0.0; n]);
                r.fake_quant_tensor_fwd(&fq, &host(&x), &mut direct)
                    .unwrap();
                assert_eq!(bits(&hv(&fw)), bits(&hv(&direct)));
                let (mut bw, mut bg) = (host(&vec![0.0; n]), poison(&dev, n));
                r.fake_quant_act_bwd(&want, -128, 127, &host(&x), &host(&dy), &mut bw)
                    .unwrap();
                b.fake_quant_act_bwd(&got, -128, 127, &up(&dev, &x), &up(&dev, &dy), &mut bg)
                    .unwrap();
                assert_eq!(bits(&down(&dev, &bg)), bits(&hv(&bw)), "fake_quant_act_bwd");
            }
            // An infinite activation: the CPU says so at once, the device
            // records it; both keep the previous range.
            let before = hv(&want);
            let bad = vec![1.0, f32::INFINITY, -2.0];
            assert!(r.observe_act(&host(&bad), 0.1, scheme, &mut want).is_err());
            b.observe_act(&up(&dev, &bad), 0.1, scheme, &mut got)
                .unwrap_or(());
            let (w, g) = (hv(&want), down(&dev, &got));
            assert_eq!(
                bits(&g),
                bits(&w),
                "{}: invalid batch",
                dev.backend().name()
            );
            assert_eq!(bits(&w[..3]), bits(&before[..3]));
            assert_eq!(
                observer_words::status(&g).unwrap(),
                "invalid batch range [-2, inf]"
            );
        }
    }
}

// ---- integer-exact evaluation ----------------------------------------------------------

/// Activations `(q - z) * s` for random int8 `q`.
fn int8_act(rng: &mut Rng, n: usize, s: f32, z: i32) -> Vec<f32> {
    (0..n)
        .map(|_| (rng.below(256) as i32 - 128 - z) as f32 * s)
        .collect()
}

/// qconv2d, qadd, qgap: exact (integer arithmetic on both sides).
#[test]
fn int8_layers_exact() {
    let c = cpu();
    for dev in devices() {
        let (b, r) = (dev.backend(), c.backend());
        let mut rng = Rng::new(12);
        for ((g, _), relu) in conv_cases()
            .into_iter()
            .take(8)
            .zip([true, false].into_iter().cycle())
        {
            let g = g.validate().unwrap();
            let (s_x, z_x, s_y, z_y) = (0.02, -5, 0.05, if relu { -128 } else { 3 });
            let q = QConvArgs {
                s_x,
                z_x,
                s_y,
                z_y,
                lo: if relu { z_y } else { -128 },
                hi: 127,
            };
            let x = int8_act(&mut rng, g.x_len(), s_x, z_x);
            let w: Vec<f32> = (0..g.w_len())
                .map(|_| rng.below(255) as f32 - 127.0)
                .collect();
            let bias: Vec<i32> = (0..g.c_out)
                .map(|_| rng.below(20001) as i32 - 10000)
                .collect();
            let bias = Storage::from_i32(&bias);
            let m: Vec<f32> = (0..g.c_out).map(|_| 1e-4 + rng.uniform() * 2e-3).collect();
            let mut want = host(&vec![0.0; g.y_len()]);
            r.qconv2d(
                &g,
                &q,
                &host(&x),
                &host(&w),
                &host(&bias),
                &host(&m),
                &mut want,
            )
            .unwrap();
            let mut got = poison(&dev, g.y_len());
            let (xd, wd, bd, md) = (up(&dev, &x), up(&dev, &w), up(&dev, &bias), up(&dev, &m));
            b.qconv2d(&g, &q, &xd, &wd, &bd, &md, &mut got).unwrap();
            close(
                &format!("qconv2d {g:?}"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );
        }
        for (s_a, s_b, s_c, relu) in [
            (0.02, 0.03, 0.04, false),
            (0.5, 0.001, 0.1, true),
            (0.01, 0.01, 0.01, false),
        ] {
            let (z_a, z_b, z_c) = (-3, 7, if relu { -128 } else { 2 });
            let add = qat::quant::AddRequant::new(s_a, z_a, s_b, z_b, s_c, z_c, relu).unwrap();
            let q = QAddArgs {
                s_a,
                s_b,
                s_c,
                rq: add,
            };
            let n = 1500;
            let (xa, xb) = (
                int8_act(&mut rng, n, s_a, z_a),
                int8_act(&mut rng, n, s_b, z_b),
            );
            let mut want = host(&vec![0.0; n]);
            r.qadd(&q, &host(&xa), &host(&xb), &mut want).unwrap();
            let mut got = poison(&dev, n);
            b.qadd(&q, &up(&dev, &xa), &up(&dev, &xb), &mut got)
                .unwrap();
            close(
                &format!("qadd {q:?}"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );
        }
        for (n, ch, hw, m) in [
            (2, 3, 49, 0.02 / 49.0),
            (1, 70, 1, 0.9),
            (3, 5, 16, 1.0 / 16.0),
        ] {
            let q = QGapArgs {
                n,
                c: ch,
                hw,
                s_in: 0.05,
                z_in: -7,
                m,
                s_out: 0.04,
                z_out: 1,
            };
            let x = int8_act(&mut rng, n * ch * hw, q.s_in, q.z_in);
            let mut want = host(&vec![0.0; n * ch]);
            r.qgap(&q, &host(&x), &mut want).unwrap();
            let mut got = poison(&dev, n * ch);
            b.qgap(&q, &up(&dev, &x), &mut got).unwrap();
            close(
                &format!("qgap {q:?}"),
                &dev,
                &down(&dev, &got),
                &hv(&want),
                0.0,
                0.0,
            );
        }
    }
}

// ---- devices ------------------------------------------------------------------------------

#[test]
fn device_parse() {
    assert!(Device::parse("cpu").unwrap().is_cpu());
    let emu = Device::parse("cuda-emu").unwrap();
    assert!(
        emu.same(&Device::parse("cuda-emu").unwrap()),
        "cuda-emu is one process-wide device"
    );
    assert_eq!(emu.backend().name(), "cuda-emu");
    let auto = Device::parse("auto").unwrap();
    match probe::cuda_driver() {
        Ok(()) => assert!(!auto.is_cpu()),
        Err(_) => {
            assert!(auto.is_cpu());
            let e = Device::parse("cuda").expect_err("cuda without a GPU must be an error");
            assert!(e.to_string().contains("no usable GPU"), "{e}");
        }
    }
    assert!(Device::parse("tpu").is_err());
}

/// Storage of one device is rejected by another.
#[test]
fn foreign_storage_is_an_error() {
    let emu = cuda::emulated_device();
    let h = host(&[1.0, 2.0]);
    let mut y = poison(&emu, 2);
    assert!(emu.backend().relu_fwd(&h, &mut y).is_err());
}
