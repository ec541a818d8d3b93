//! CPU kernel timings: square GEMM and the three convolution passes at
//! ResNet-18 shapes, at MobileNetV2 shapes (batch 32: its depthwise 3x3
//! layers, which run on the direct depthwise kernels, and four pointwise
//! 1x1 projections) and at the small Fashion-MNIST ResNet's (`fm_`, batch
//! 128), through the public `Backend` interface.
//!
//! `cargo bench --bench cpu_kernels` (a few minutes on 2 cores). Every kernel
//! is first checked against a naive reference on small shapes; the timings
//! only start when all checks pass.
//!
//! Throughput is reported with `Throughput::Elements(flops)`: criterion's
//! "elements" are FLOPs here (2 per multiply-add), so its "Kelem/s / Melem/s /
//! Gelem/s" read as KFLOP/s / MFLOP/s / GFLOP/s. Both backward passes of a
//! convolution do as many multiply-adds as its forward, so all three use
//! `Conv2dGeom::flops`.
//!
//! For a comparison against numpy (OpenBLAS) and PyTorch on the same shapes,
//! see `scripts/bench_vs_reference.py` and docs/PERF.md.
//!
//! `qconv_<path>`: the int8 executor's QLinearConv (`executor::ops::ConvOp`)
//! on the same forward shapes, once per GEMM path this CPU has besides the
//! scalar one (`avx2`, `avx512-vnni`; "elements" are again 2 per
//! multiply-add). Each path is first checked against the scalar path, byte
//! for byte, on one image of every shape. The whole executor against ONNX
//! Runtime: `scripts/bench_executor.py` (docs/PERF.md).

mod common;

use common::{check_kernels, conv_shapes, ConvCase, ConvOp, GemmCase, GEMM_SIZES};
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use qat::backend::cpu::CpuBackend;
use qat::backend::Conv2dGeom;
use qat::executor::gemm::Isa;
use qat::executor::ops::ConvOp as QConv;
use qat::quant::Requant;
use std::time::Duration;

/// Few samples and short windows: each problem takes 5-300 ms per run, so
/// flat sampling with 10 samples keeps the whole suite to a few minutes.
fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
}

fn gemm(c: &mut Criterion) {
    let be = CpuBackend::new();
    check_kernels(&be);
    let mut group = c.benchmark_group("gemm");
    configure(&mut group);
    for size in GEMM_SIZES {
        let mut case = GemmCase::square(size);
        group.throughput(Throughput::Elements(case.geom.flops() as u64));
        group.bench_function(format!("{size}^3"), |b| b.iter(|| case.run(&be)));
    }
    group.finish();
}

fn conv2d(c: &mut Criterion) {
    let be = CpuBackend::new();
    check_kernels(&be);
    for op in ConvOp::ALL {
        let mut group = c.benchmark_group(format!("conv2d_{}", op.name()));
        configure(&mut group);
        for (name, geom) in conv_shapes() {
            let mut case = ConvCase::new(geom);
            group.throughput(Throughput::Elements(geom.flops() as u64));
            group.bench_function(name, |b| b.iter(|| case.run(&be, op)));
        }
        group.finish();
    }
}

/// An int8 QLinearConv of geometry `g` with deterministic weights, biases
/// and multipliers, and an int8 input for its images.
fn qconv_case(g: &Conv2dGeom) -> (QConv, Vec<i8>) {
    let out = |len: usize, k: usize, s: usize, p: usize, d: usize| {
        (len + 2 * p - d * (k - 1) - 1) / s + 1
    };
    let k = g.c_in / g.groups * g.kh * g.kw;
    let byte = |v: f32| (v * 127.0) as i8;
    let op = QConv {
        c_in: g.c_in,
        h: g.h,
        w: g.w,
        c_out: g.c_out,
        kh: g.kh,
        kw: g.kw,
        stride: g.stride,
        pad_begin: g.pad,
        dilation: g.dilation,
        groups: g.groups,
        out_h: out(g.h, g.kh, g.stride.0, g.pad.0, g.dilation.0),
        out_w: out(g.w, g.kw, g.stride.1, g.pad.1, g.dilation.1),
        z_x: -3,
        weight: common::random(g.c_out * k, 7)
            .into_iter()
            .map(byte)
            .collect(),
        weight_zero: vec![0; g.c_out],
        bias: common::random(g.c_out, 8)
            .iter()
            .map(|v| (v * 1e4) as i32)
            .collect(),
        requant: (0..g.c_out)
            .map(|c| {
                Requant::new(
                    0.02 / (k as f32).sqrt() * (1.0 + 0.01 * c as f32) / 64.0,
                    -5,
                    -128,
                    127,
                )
                .unwrap()
            })
            .collect(),
        prepared: Default::default(),
    };
    let x = common::random(g.n * g.c_in * g.h * g.w, 9)
        .into_iter()
        .map(byte)
        .collect();
    (op, x)
}

fn qconv(c: &mut Criterion) {
    let fast: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect();
    // Check every path against the scalar one on one image per shape.
    for (name, geom) in conv_shapes() {
        let (op, x) = qconv_case(&Conv2dGeom { n: 1, ..geom });
        let y_len = op.c_out * op.out_h * op.out_w;
        let mut want = vec![0i8; y_len];
        op.run_with(Isa::Scalar, name, &x, 1, &mut want).unwrap();
        for &isa in &fast {
            let mut got = vec![0i8; y_len];
            op.run_with(isa, name, &x, 1, &mut got).unwrap();
            assert!(
                got == want,
                "qconv {name}: {} differs from scalar",
                isa.name()
            );
        }
    }
    for isa in fast {
        let mut group = c.benchmark_group(format!("qconv_{}", isa.name()));
        configure(&mut group);
        for (name, geom) in conv_shapes() {
            let (op, x) = qconv_case(&geom);
            let mut y = vec![0i8; geom.n * op.c_out * op.out_h * op.out_w];
            group.throughput(Throughput::Elements(geom.flops() as u64));
            group.bench_function(name, |b| {
                b.iter(|| op.run_with(isa, name, &x, geom.n, &mut y).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, gemm, conv2d, qconv);
criterion_main!(benches);
