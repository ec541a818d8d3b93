//! CPU kernel timings: square GEMM and the three convolution passes at
//! ResNet-18 shapes and at MobileNetV2 shapes (batch 32: its depthwise 3x3
//! layers, which run on the direct depthwise kernels, and four pointwise
//! 1x1 projections), through the public `Backend` interface.
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

mod common;

use common::{check_kernels, conv_shapes, ConvCase, ConvOp, GemmCase, GEMM_SIZES};
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use qat::backend::cpu::CpuBackend;
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

criterion_group!(benches, gemm, conv2d);
criterion_main!(benches);
