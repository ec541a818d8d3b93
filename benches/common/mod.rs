//! What `benches/cpu_kernels.rs` and `examples/bench_shapes.rs` share: the
//! shapes they time, deterministic inputs, and the naive references every
//! kernel is checked against before it is timed (STYLE.md point 2).
//!
//! The example pulls this file in with `#[path]`, so the criterion bench and
//! the side-by-side comparison with numpy / PyTorch time the same problems.
#![allow(dead_code)] // each includer uses a different subset

use qat::backend::cpu::CpuBackend;
use qat::backend::{Backend, Conv2dGeom, GemmGeom, Storage};

/// Square GEMM sizes (`m = n = k`).
pub const GEMM_SIZES: [usize; 4] = [256, 512, 1024, 2048];

/// The three convolution passes that training runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvOp {
    Forward,
    BackwardData,
    BackwardWeight,
}

impl ConvOp {
    pub const ALL: [ConvOp; 3] = [
        ConvOp::Forward,
        ConvOp::BackwardData,
        ConvOp::BackwardWeight,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ConvOp::Forward => "fwd",
            ConvOp::BackwardData => "bwd_data",
            ConvOp::BackwardWeight => "bwd_weight",
        }
    }
    pub fn parse(s: &str) -> Option<ConvOp> {
        ConvOp::ALL.into_iter().find(|op| op.name() == s)
    }
}

/// A square-input, square-kernel convolution without groups or dilation.
pub fn conv(
    n: usize,
    c_in: usize,
    hw: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
) -> Conv2dGeom {
    Conv2dGeom {
        n,
        c_in,
        h: hw,
        w: hw,
        c_out,
        kh: k,
        kw: k,
        stride: (stride, stride),
        pad: (pad, pad),
        dilation: (1, 1),
        groups: 1,
    }
}

/// A depthwise 3x3 convolution, padding 1 (MobileNetV2's).
pub fn depthwise(n: usize, c: usize, hw: usize, stride: usize) -> Conv2dGeom {
    Conv2dGeom {
        groups: c,
        ..conv(n, c, hw, c, 3, stride, 1)
    }
}

/// Every timed convolution: ResNet-18's, MobileNetV2's, then the small
/// Fashion-MNIST ResNet's.
pub fn conv_shapes() -> Vec<(&'static str, Conv2dGeom)> {
    let mut v = resnet_shapes();
    v.extend(mobilenet_shapes());
    v.extend(small_resnet_shapes());
    v
}

/// The small ResNet that `qat train` trains on Fashion-MNIST (28x28, widths
/// 16-32-64), at its batch of 128: each distinct convolution once (a
/// training step runs the `s1` shape 4 times, `s2` and `s3` 3 times each).
pub fn small_resnet_shapes() -> Vec<(&'static str, Conv2dGeom)> {
    vec![
        ("fm_stem_1-16_28_k3_n128", conv(128, 1, 28, 16, 3, 1, 1)),
        ("fm_s1_16-16_28_k3_n128", conv(128, 16, 28, 16, 3, 1, 1)),
        ("fm_s2a_16-32_28_k3s2_n128", conv(128, 16, 28, 32, 3, 2, 1)),
        ("fm_s2ds_16-32_28_k1s2_n128", conv(128, 16, 28, 32, 1, 2, 0)),
        ("fm_s2_32-32_14_k3_n128", conv(128, 32, 14, 32, 3, 1, 1)),
        ("fm_s3a_32-64_14_k3s2_n128", conv(128, 32, 14, 64, 3, 2, 1)),
        ("fm_s3ds_32-64_14_k1s2_n128", conv(128, 32, 14, 64, 1, 2, 0)),
        ("fm_s3_64-64_7_k3_n128", conv(128, 64, 7, 64, 3, 1, 1)),
    ]
}

/// MobileNetV2 on 224x224, batch 32: the depthwise 3x3 layers (input size
/// and stride as named; `dw_` shapes), and four of its pointwise 1x1
/// projections (`pw_`).
pub fn mobilenet_shapes() -> Vec<(&'static str, Conv2dGeom)> {
    vec![
        ("dw_32_112_s1_n32", depthwise(32, 32, 112, 1)),
        ("dw_96_112_s2_n32", depthwise(32, 96, 112, 2)),
        ("dw_144_56_s1_n32", depthwise(32, 144, 56, 1)),
        ("dw_144_56_s2_n32", depthwise(32, 144, 56, 2)),
        ("dw_192_28_s1_n32", depthwise(32, 192, 28, 1)),
        ("dw_384_14_s1_n32", depthwise(32, 384, 14, 1)),
        ("dw_576_14_s2_n32", depthwise(32, 576, 14, 2)),
        ("dw_960_7_s1_n32", depthwise(32, 960, 7, 1)),
        ("pw_32-16_112_n32", conv(32, 32, 112, 16, 1, 1, 0)),
        ("pw_144-24_56_n32", conv(32, 144, 56, 24, 1, 1, 0)),
        ("pw_384-64_14_n32", conv(32, 384, 14, 64, 1, 1, 0)),
        ("pw_960-320_7_n32", conv(32, 960, 7, 320, 1, 1, 0)),
    ]
}

/// ResNet-18 convolutions (ImageNet sizes), and one pointwise convolution.
/// The batch grows as the maps shrink, so each 3x3 layer costs 1.8-7.4
/// GFLOP per pass.
pub fn resnet_shapes() -> Vec<(&'static str, Conv2dGeom)> {
    vec![
        ("stem_3-64_224_k7s2_n8", conv(8, 3, 224, 64, 7, 2, 3)),
        ("l1_64-64_56_k3_n8", conv(8, 64, 56, 64, 3, 1, 1)),
        ("l2_128-128_28_k3_n16", conv(16, 128, 28, 128, 3, 1, 1)),
        ("l3_256-256_14_k3_n32", conv(32, 256, 14, 256, 3, 1, 1)),
        ("l4_512-512_7_k3_n32", conv(32, 512, 7, 512, 3, 1, 1)),
        ("ds_128-256_28_k1s2_n32", conv(32, 128, 28, 256, 1, 2, 0)),
        // Not in ResNet-18 (ResNet-50's bottleneck reduction): a 1x1
        // stride-1 convolution, which skips im2col.
        ("pw_256-64_56_k1_n8", conv(8, 256, 56, 64, 1, 1, 0)),
    ]
}

/// Uniform values in [-1, 1) from a fixed seed (xorshift64*).
pub fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let bits = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

// ---- naive references ---------------------------------------------------------

/// `c = alpha * op(a) op(b) + beta * c`, row-major, f64 accumulation.
pub fn naive_gemm(g: &GemmGeom, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..g.m {
        for j in 0..g.n {
            let mut s = 0.0f64;
            for p in 0..g.k {
                let av = if g.trans_a {
                    a[p * g.m + i]
                } else {
                    a[i * g.k + p]
                };
                let bv = if g.trans_b {
                    b[j * g.k + p]
                } else {
                    b[p * g.n + j]
                };
                s += av as f64 * bv as f64;
            }
            let old = if g.beta == 0.0 {
                0.0
            } else {
                g.beta as f64 * c[i * g.n + j] as f64
            };
            c[i * g.n + j] = (g.alpha as f64 * s + old) as f32;
        }
    }
}

/// Calls `f(y_index, x_index, w_index)` for every multiply-add of the
/// convolution, straight from its definition. The three passes differ only in
/// which of the three operands they accumulate into.
fn for_each_tap(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (cg, og) = (g.c_in_per_group(), g.c_out_per_group());
    for n in 0..g.n {
        for o in 0..g.c_out {
            let grp = o / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let yi = ((n * g.c_out + o) * oh + oy) * ow + ox;
                    for c in 0..cg {
                        for ki in 0..g.kh {
                            for kj in 0..g.kw {
                                let iy = (oy * g.stride.0 + ki * g.dilation.0) as isize
                                    - g.pad.0 as isize;
                                let ix = (ox * g.stride.1 + kj * g.dilation.1) as isize
                                    - g.pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xi = ((n * g.c_in + grp * cg + c) * g.h + iy as usize) * g.w
                                    + ix as usize;
                                let wi = ((o * cg + c) * g.kh + ki) * g.kw + kj;
                                f(yi, xi, wi);
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn naive_conv_fwd(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![0.0f64; g.y_len()];
    for_each_tap(g, |yi, xi, wi| y[yi] += x[xi] as f64 * w[wi] as f64);
    let ohw = g.out_h() * g.out_w();
    y.iter()
        .enumerate()
        .map(|(i, &v)| (v + bias.map_or(0.0, |b| b[i / ohw % g.c_out] as f64)) as f32)
        .collect()
}

pub fn naive_conv_bwd_data(g: &Conv2dGeom, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f64; g.x_len()];
    for_each_tap(g, |yi, xi, wi| dx[xi] += dy[yi] as f64 * w[wi] as f64);
    dx.iter().map(|&v| v as f32).collect()
}

pub fn naive_conv_bwd_weight(g: &Conv2dGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dw = vec![0.0f64; g.w_len()];
    for_each_tap(g, |yi, xi, wi| dw[wi] += dy[yi] as f64 * x[xi] as f64);
    dw.iter().map(|&v| v as f32).collect()
}

/// Panics unless `|got - want| <= 1e-4 * (1 + |want|) * sqrt(terms)` everywhere.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], terms: usize) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = 1e-4 * (terms.max(1) as f32).sqrt();
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= scale * (1.0 + b.abs()),
            "{what}: element {i} is {a}, reference {b}"
        );
    }
}

// ---- running the backend ----------------------------------------------------------

fn host(s: &Storage) -> &[f32] {
    s.host().expect("CPU storage")
}

/// Buffers of one GEMM problem, ready to run repeatedly.
pub struct GemmCase {
    pub geom: GemmGeom,
    a: Storage,
    b: Storage,
    c: Storage,
}

impl GemmCase {
    pub fn new(geom: GemmGeom) -> Self {
        let (m, n, k) = (geom.m, geom.n, geom.k);
        GemmCase {
            geom,
            a: Storage::Host(random(m * k, 1)),
            b: Storage::Host(random(k * n, 2)),
            c: Storage::Host(random(m * n, 3)),
        }
    }
    pub fn square(size: usize) -> Self {
        GemmCase::new(GemmGeom::new(size, size, size))
    }
    pub fn run(&mut self, be: &CpuBackend) {
        be.gemm(&self.geom, &self.a, &self.b, &mut self.c).unwrap();
    }
}

/// Buffers of one convolution problem (input, weight, output and their
/// gradients), ready to run any of the three passes repeatedly.
pub struct ConvCase {
    pub geom: Conv2dGeom,
    x: Storage,
    w: Storage,
    bias: Storage,
    y: Storage,
    dy: Storage,
    dx: Storage,
    dw: Storage,
    dbias: Storage,
}

impl ConvCase {
    pub fn new(geom: Conv2dGeom) -> Self {
        let g = geom.validate().expect("valid conv geometry");
        ConvCase {
            geom: g,
            x: Storage::Host(random(g.x_len(), 4)),
            w: Storage::Host(random(g.w_len(), 5)),
            bias: Storage::Host(random(g.c_out, 6)),
            y: Storage::Host(vec![0.0; g.y_len()]),
            dy: Storage::Host(random(g.y_len(), 7)),
            dx: Storage::Host(vec![0.0; g.x_len()]),
            dw: Storage::Host(vec![0.0; g.w_len()]),
            dbias: Storage::Host(vec![0.0; g.c_out]),
        }
    }
    /// One pass; the forward without bias and the weight gradient without
    /// bias gradient, as in a ResNet (batch norm follows every convolution).
    pub fn run(&mut self, be: &CpuBackend, op: ConvOp) {
        let g = &self.geom;
        match op {
            ConvOp::Forward => be.conv2d_fwd(g, &self.x, &self.w, None, &mut self.y),
            ConvOp::BackwardData => be.conv2d_bwd_data(g, &self.dy, &self.w, &mut self.dx),
            ConvOp::BackwardWeight => {
                be.conv2d_bwd_weight(g, &self.x, &self.dy, &mut self.dw, None)
            }
        }
        .unwrap();
    }
    /// Runs all three passes (with bias) and compares them to the naive
    /// references.
    fn check(&mut self, be: &CpuBackend) {
        let g = self.geom;
        let terms = g.c_in_per_group() * g.kh * g.kw;
        be.conv2d_fwd(&g, &self.x, &self.w, Some(&self.bias), &mut self.y)
            .unwrap();
        let want = naive_conv_fwd(&g, host(&self.x), host(&self.w), Some(host(&self.bias)));
        assert_close(&format!("conv2d_fwd {g:?}"), host(&self.y), &want, terms);

        self.run(be, ConvOp::BackwardData);
        let want = naive_conv_bwd_data(&g, host(&self.dy), host(&self.w));
        assert_close(
            &format!("conv2d_bwd_data {g:?}"),
            host(&self.dx),
            &want,
            g.c_out * g.kh * g.kw,
        );

        be.conv2d_bwd_weight(&g, &self.x, &self.dy, &mut self.dw, Some(&mut self.dbias))
            .unwrap();
        let want = naive_conv_bwd_weight(&g, host(&self.x), host(&self.dy));
        let ohw = g.out_h() * g.out_w();
        assert_close(
            &format!("conv2d_bwd_weight {g:?}"),
            host(&self.dw),
            &want,
            g.n * ohw,
        );
        let want_db: Vec<f32> = (0..g.c_out)
            .map(|o| {
                (0..g.n)
                    .flat_map(|i| &host(&self.dy)[(i * g.c_out + o) * ohw..][..ohw])
                    .sum()
            })
            .collect();
        assert_close(
            &format!("conv2d dbias {g:?}"),
            host(&self.dbias),
            &want_db,
            g.n * ohw,
        );
    }
}

/// Checks GEMM (all transposes, alpha and beta) and the three convolution
/// passes against the naive references on small shapes that are multiples of
/// no tile. Covers both conv parallel paths (batch below and above the thread
/// count), strides, padding, dilation, groups, 1x1 and the 7x7/2 stem.
pub fn check_kernels(be: &CpuBackend) {
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let geom = GemmGeom {
            trans_a,
            trans_b,
            alpha: 0.5,
            beta: 0.25,
            ..GemmGeom::new(37, 29, 53)
        };
        let mut case = GemmCase::new(geom);
        let mut want = host(&case.c).to_vec();
        naive_gemm(&geom, host(&case.a), host(&case.b), &mut want);
        case.run(be);
        assert_close(&format!("gemm {geom:?}"), host(&case.c), &want, geom.k);
    }
    // Big enough for the crate's parallel path.
    let mut case = GemmCase::square(97);
    let mut want = host(&case.c).to_vec();
    naive_gemm(&case.geom, host(&case.a), host(&case.b), &mut want);
    case.run(be);
    assert_close("gemm 97^3", host(&case.c), &want, 97);

    let mut grouped = conv(3, 4, 11, 6, 3, 2, 1);
    grouped.w = 10;
    grouped.dilation = (2, 1);
    grouped.groups = 2;
    // Padding wider than the kernel reach: some taps see no input at all.
    let mut wide_pad = conv(2, 3, 5, 4, 5, 3, 4);
    wide_pad.w = 6;
    let mut grouped_pointwise = conv(1, 6, 9, 4, 1, 1, 0);
    grouped_pointwise.groups = 2;
    let mut banded_strided = conv(2, 16, 128, 4, 3, 2, 1);
    banded_strided.w = 72;
    // Depthwise (the direct kernels): odd sizes, stride 2, dilation,
    // channel multiplier 2, 5x5.
    let mut dw_odd = depthwise(3, 5, 9, 2);
    dw_odd.w = 7;
    dw_odd.dilation = (2, 2);
    let dw_mult2 = Conv2dGeom {
        c_out: 8,
        ..depthwise(2, 4, 11, 1)
    };
    let dw_5x5 = Conv2dGeom {
        groups: 6,
        ..conv(2, 6, 13, 6, 5, 1, 2)
    };
    for g in [
        wide_pad,
        // The last kernel column only ever sees right padding.
        conv(2, 2, 1, 3, 5, 1, 2),
        grouped_pointwise,
        conv(1, 5, 9, 7, 3, 1, 1),
        conv(3, 5, 9, 7, 3, 1, 1),
        grouped,
        conv(3, 6, 9, 10, 1, 1, 0),
        conv(3, 6, 9, 10, 1, 2, 0),
        conv(2, 3, 19, 8, 7, 2, 3),
        // Column buffers larger than one band (the lowering splits the
        // output rows), with the band boundary inside the image.
        conv(1, 16, 64, 8, 3, 1, 1),
        banded_strided,
        dw_odd,
        dw_mult2,
        dw_5x5,
        depthwise(4, 7, 14, 1),
        depthwise(1, 3, 30, 2),
    ] {
        ConvCase::new(g).check(be);
    }
}
