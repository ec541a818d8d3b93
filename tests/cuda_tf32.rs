//! The TF32 tensor-core path of the CUDA backend (`--precision tf32`):
//! - the two instructions it rests on, `cvt.rna.tf32.f32` and
//!   `mma.sync.m16n8k8` with TF32 inputs, against scalar references written
//!   from the PTX ISA's definitions (rounding to nearest with ties away from
//!   zero to 10 mantissa bits; the documented fragment layouts);
//! - the GEMM and the three convolution passes on the tensor-core core
//!   (kernels/tile_gemm.cuh) against the CPU backend.
//!
//! Each product runs on the emulated device (always) and on a real GPU of
//! compute capability 8.0+ when one works (else a recorded skip).
//!
//! Tolerances, stated once: TF32 keeps 10 of FP32's 23 mantissa bits, and
//! rounding to nearest errs by at most 2^-11 relative, so a product of two
//! rounded operands is within about 2^-10 of the exact one. Against the CPU's
//! FP32 product a result may therefore be off by `2^-10 * sum |a| |b|` (plus
//! FP32 summation error); against the CPU product of the *rounded* operands
//! only the FP32 summation error remains, the tolerance of the FP32 parity
//! tests (`1e-5 * K + 1e-4 relative`). Both are checked, and the TF32 result
//! must differ from the FP32 kernel's somewhere (it is not the FP32 path).

mod common;

use qat::backend::cuda::{self, probe, CudaBackend, KernelRuntime};
use qat::backend::{Conv2dGeom, GemmGeom, Precision, Storage};
use qat::rng::Rng;
use qat::Device;
use std::ffi::c_void;
use std::sync::Arc;

/// `QAT_PARITY_DEVICES=gpu` (the GPU check) skips the emulator, which CI ran.
fn gpu_only() -> bool {
    std::env::var("QAT_PARITY_DEVICES").is_ok_and(|v| v == "gpu")
}

/// The TF32 devices to test, each with its FP32 twin (same runtime).
fn devices() -> Vec<(Device, Device)> {
    let mut out = Vec::new();
    if !gpu_only() {
        out.push((
            cuda::emulated_device_with(Precision::Tf32),
            cuda::emulated_device(),
        ));
    }
    if let Some(d) = common::gpu_or_skip("cuda_tf32 on a real GPU", Precision::Tf32) {
        out.push((d, cuda::gpu_device().unwrap()));
    }
    out
}

/// Kernel runtimes for the instruction-level checks.
fn runtimes() -> Vec<Arc<dyn KernelRuntime>> {
    let mut out = Vec::new();
    if !gpu_only() {
        out.push(CudaBackend::emulated().runtime().clone());
    }
    let gpu = probe::cuda_driver()
        .map_err(qat::Error::Device)
        .and_then(|_| CudaBackend::gpu(0))
        .and_then(|b| b.with_precision(Precision::Tf32));
    match gpu {
        Ok(b) => out.push(b.runtime().clone()),
        Err(e) if std::env::var("QAT_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("QAT_REQUIRE_GPU=1 but no TF32-capable GPU: {e}")
        }
        Err(e) => common::skip_gpu(
            "cuda_tf32 instructions on a real GPU",
            &format!("no usable TF32 GPU ({e}); checked on the emulator only"),
        ),
    }
    assert!(!out.is_empty(), "no device to check the instructions on");
    out
}

/// cvt.rna.tf32.f32 from its definition: the nearest value with 10 explicit
/// mantissa bits (spacing 2^(e - 10) for exponent e, 2^-136 among
/// subnormals), ties away from zero; overflow to infinity.
fn tf32_reference(x: f32) -> f32 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let a = x.abs() as f64;
    let e = a.log2().floor().max(-126.0);
    let q = 2f64.powf(e - 10.0);
    let r = (a / q + 0.5).floor() * q;
    (r as f32).copysign(x)
}

fn run_kernel(
    rt: &Arc<dyn KernelRuntime>,
    name: &str,
    inputs: &[&[f32]],
    out_len: usize,
    threads: u32,
    extra: Option<i32>,
) -> Vec<f32> {
    let mut bufs: Vec<(u64, usize)> = Vec::new();
    for v in inputs {
        let p = rt.alloc(4 * v.len()).unwrap();
        rt.upload(p, v).unwrap();
        bufs.push((p, 4 * v.len()));
    }
    let out = rt.alloc(4 * out_len).unwrap();
    bufs.push((out, 4 * out_len));
    let mut ptrs: Vec<u64> = bufs.iter().map(|b| b.0).collect();
    let mut n = extra.unwrap_or(0);
    let mut args: Vec<*mut c_void> = ptrs.iter_mut().map(|p| (p as *mut u64).cast()).collect();
    if extra.is_some() {
        args.push((&mut n as *mut i32).cast());
    }
    // SAFETY: the callers pass the kernel's parameters in order (device
    // pointers to buffers of the right sizes, then the optional int).
    unsafe { rt.launch(name, (1, 1, 1), (threads, 1, 1), 0, &mut args) }.unwrap();
    let mut got = vec![0f32; out_len];
    rt.download(out, &mut got).unwrap();
    for (p, bytes) in bufs {
        // SAFETY: allocated above, not used afterwards.
        unsafe { rt.free(p, bytes) };
    }
    got
}

#[test]
fn tf32_rounding_is_round_to_nearest_ties_away() {
    let mut xs: Vec<f32> = vec![
        1.0,
        -1.0,
        f32::from_bits(0x3f80_1000), // exactly halfway between two TF32 values: away
        f32::from_bits(0xbf80_1000),
        f32::from_bits(0x3f80_0fff), // just below halfway: down
        f32::from_bits(0x3f80_3000), // halfway above an odd TF32 value: away (not to even)
        f32::from_bits(0x3fff_f000), // carries into the exponent
        f32::MAX,                    // rounds to infinity
        f32::MIN_POSITIVE,
        f32::from_bits(0x0000_1000), // subnormal tie
        f32::from_bits(0x0000_0fff),
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
    ];
    let mut rng = Rng::new(11);
    xs.extend((0..200).map(|_| rng.normal() * 10f32.powi(rng.below(20) as i32 - 10)));
    for rt in runtimes() {
        let got = run_kernel(
            &rt,
            "tf32_round_semantics",
            &[&xs],
            xs.len(),
            64,
            Some(xs.len() as i32),
        );
        for (&x, &g) in xs.iter().zip(&got) {
            let want = tf32_reference(x);
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "{}: tf32({x:e} = {:#010x}) = {:#010x}, want {:#010x}",
                rt.name(),
                x.to_bits(),
                g.to_bits(),
                want.to_bits()
            );
        }
        let nan = run_kernel(&rt, "tf32_round_semantics", &[&[f32::NAN]], 1, 32, Some(1));
        assert!(nan[0].is_nan(), "{}: tf32(NaN) = {}", rt.name(), nan[0]);
    }
}

/// One mma.m16n8k8 through the documented fragments: exact on small
/// integers (every sum is representable), and on random values equal to the
/// exact product of the TF32-rounded operands up to FP32 rounding of the sum.
#[test]
fn mma_m16n8k8_follows_the_documented_fragments() {
    let mut rng = Rng::new(12);
    for rt in runtimes() {
        for case in 0..4 {
            let gen = |rng: &mut Rng, n: usize| -> Vec<f32> {
                if case == 0 {
                    (0..n).map(|_| rng.below(19) as f32 - 9.0).collect()
                } else {
                    (0..n).map(|_| rng.normal()).collect()
                }
            };
            let (a, b, c) = (gen(&mut rng, 128), gen(&mut rng, 64), gen(&mut rng, 128));
            let d = run_kernel(&rt, "mma_tf32_semantics", &[&a, &b, &c], 128, 32, None);
            for i in 0..16 {
                for j in 0..8 {
                    let mut s = c[i * 8 + j] as f64;
                    let mut mag = s.abs();
                    for k in 0..8 {
                        let p = tf32_reference(a[i * 8 + k]) as f64
                            * tf32_reference(b[k * 8 + j]) as f64;
                        s += p;
                        mag += p.abs();
                    }
                    let got = d[i * 8 + j] as f64;
                    let tol = if case == 0 { 0.0 } else { mag * 2f64.powi(-22) };
                    assert!(
                        (got - s).abs() <= tol,
                        "{}: case {case}, D[{i}][{j}] = {got}, want {s} (tolerance {tol})",
                        rt.name()
                    );
                }
            }
        }
    }
}

/// cp.async (kernels/async_copy.cuh): 4- and 16-byte copies and zero fills
/// land by the wait of their group and, after a barrier, are seen by the
/// other lanes (the layout of `cp_async_semantics` in kernels/selfcheck.cu).
#[test]
fn cp_async_groups_copy_and_zero_fill() {
    let src: Vec<f32> = (0..128).map(|i| 1.0 + i as f32).collect();
    for rt in runtimes() {
        let out = run_kernel(&rt, "cp_async_semantics", &[&src], 320, 32, None);
        for l in 0..32 {
            let l1 = (l + 1) % 32;
            let mut want = vec![(l, src[l1]), (32 + l, 0.0)];
            for j in 0..4 {
                want.push((64 + 4 * l + j, src[4 * l1 + j]));
                want.push((192 + 4 * l + j, 0.0));
            }
            for (i, w) in want {
                assert!(
                    out[i].to_bits() == w.to_bits(),
                    "{}: out[{i}] = {}, want {w}",
                    rt.name(),
                    out[i]
                );
            }
        }
    }
}

/// `QatDivisor` (kernels/common.cuh) divides exactly like `/` over its whole
/// documented range: divisors 1..2^31 (small ones, powers of two and their
/// neighbours, the largest) with numerators at and around multiples of the
/// divisor and at 2^31 - 1.
#[test]
fn divisor_matches_integer_division() {
    let mut rng = Rng::new(31);
    let mut ds: Vec<i32> = (1..=64).collect();
    for e in 2..31 {
        let p = 1i64 << e;
        ds.extend(
            [p - 1, p, p + 1]
                .iter()
                .map(|&v| v.min(i32::MAX as i64) as i32),
        );
    }
    ds.extend([i32::MAX, i32::MAX - 1, 3 * 7 * 28, 224 * 224, 56 * 56]);
    for _ in 0..64 {
        ds.push(1 + rng.below(i32::MAX as u64) as i32);
    }
    let (mut d, mut n) = (Vec::new(), Vec::new());
    for &dv in &ds {
        let mut ns = vec![
            0i64,
            1,
            dv as i64 - 1,
            dv as i64,
            dv as i64 + 1,
            i32::MAX as i64,
        ];
        for _ in 0..8 {
            let q = rng.below((i32::MAX / dv).max(1) as u64) as i64;
            ns.extend([
                q * dv as i64 - 1,
                q * dv as i64,
                q * dv as i64 + dv as i64 - 1,
            ]);
        }
        for nv in ns
            .into_iter()
            .filter(|&v| (0..=i32::MAX as i64).contains(&v))
        {
            d.push(dv);
            n.push(nv as i32);
        }
    }
    let bits = |v: &[i32]| -> Vec<f32> { v.iter().map(|&x| f32::from_bits(x as u32)).collect() };
    for rt in runtimes() {
        let q = run_kernel(
            &rt,
            "divisor_semantics_i32",
            &[&bits(&d), &bits(&n)],
            d.len(),
            256,
            Some(d.len() as i32),
        );
        for i in 0..d.len() {
            let got = q[i].to_bits() as i32;
            assert_eq!(got, n[i] / d[i], "{}: {} / {}", rt.name(), n[i], d[i]);
        }
    }
}

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn host(v: &[f32]) -> Storage {
    Storage::Host(v.to_vec())
}

fn up(d: &Device, v: &[f32]) -> Storage {
    d.backend().upload(v).unwrap()
}

fn down(d: &Device, s: &Storage) -> Vec<f32> {
    d.backend().download(s).unwrap()
}

fn round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| tf32_reference(x)).collect()
}

fn abs(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.abs()).collect()
}

/// The three checks of the module comment for one product: `got` (TF32
/// device), `fp32` (the FP32 kernel on the same inputs), `exact_rounded`
/// (CPU on rounded operands), `exact` (CPU on the raw operands), `mag` (CPU
/// on their absolute values), `k` the reduction length.
struct Outcome<'a> {
    got: &'a [f32],
    fp32: &'a [f32],
    exact_rounded: &'a [f32],
    exact: &'a [f32],
    mag: &'a [f32],
    k: usize,
}

#[track_caller]
fn check(what: &str, o: Outcome) {
    let n = o.got.len();
    assert!(
        n > 0
            && [
                o.fp32.len(),
                o.exact_rounded.len(),
                o.exact.len(),
                o.mag.len()
            ] == [n; 4]
    );
    let sum_tol = 1e-5 * o.k as f32;
    for i in 0..n {
        let (g, r) = (o.got[i], o.exact_rounded[i]);
        assert!(
            (g - r).abs() <= sum_tol + 1e-4 * r.abs(),
            "{what}: element {i} of {n}: {g}, the product of the TF32-rounded operands is {r}"
        );
        let tol = 2f32.powi(-10) * 1.01 * o.mag[i] + sum_tol + 1e-4 * o.exact[i].abs();
        assert!(
            (g - o.exact[i]).abs() <= tol,
            "{what}: element {i} of {n}: {g}, FP32 product {} (TF32 tolerance {tol})",
            o.exact[i]
        );
    }
    assert!(
        o.got.iter().zip(o.fp32).any(|(a, b)| a != b),
        "{what}: the TF32 result equals the FP32 kernel's bit for bit: the tensor-core path did not run"
    );
}

#[test]
fn tf32_gemm_matches_the_cpu_within_the_tf32_bound() {
    let cpu = Device::cpu();
    let mut rng = Rng::new(13);
    for (dev, dev32) in devices() {
        let mut cases = vec![
            (128, 128, 16),
            (129, 130, 9),
            (5, 3, 300),
            (70, 45, 33),
            (1, 260, 4),
            (200, 7, 17),
        ];
        if !dev.backend().name().starts_with("cuda-emu") {
            cases.extend([(1024, 1024, 1024), (513, 1025, 700)]);
        }
        for (i, &(m, n, k)) in cases.iter().enumerate() {
            let (ta, tb) = (i % 2 == 1, i % 3 == 1);
            let g = GemmGeom {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: tb,
                alpha: 1.0,
                beta: 0.0,
            };
            let (a, b) = (randn(&mut rng, m * k), randn(&mut rng, k * n));
            let on_cpu = |a: &[f32], b: &[f32]| {
                let mut c = host(&vec![0.0; m * n]);
                cpu.backend().gemm(&g, &host(a), &host(b), &mut c).unwrap();
                c.host().unwrap().to_vec()
            };
            let on = |d: &Device| {
                let mut c = up(d, &vec![f32::NAN; m * n]);
                d.backend()
                    .gemm(&g, &up(d, &a), &up(d, &b), &mut c)
                    .unwrap();
                down(d, &c)
            };
            check(
                &format!("gemm {g:?} on {}", dev.backend().name()),
                Outcome {
                    got: &on(&dev),
                    fp32: &on(&dev32),
                    exact_rounded: &on_cpu(&round(&a), &round(&b)),
                    exact: &on_cpu(&a, &b),
                    mag: &on_cpu(&abs(&a), &abs(&b)),
                    k,
                },
            );
        }
    }
}

fn conv_cases(gpu: bool) -> Vec<Conv2dGeom> {
    let geom =
        |n, c_in, hw: (usize, usize), c_out, k: (usize, usize), s, p, d, groups| Conv2dGeom {
            n,
            c_in,
            h: hw.0,
            w: hw.1,
            c_out,
            kh: k.0,
            kw: k.1,
            stride: (s, s),
            pad: (p, p),
            dilation: (d, d),
            groups,
        };
    let mut cases = vec![
        geom(2, 3, (9, 9), 5, (3, 3), 1, 1, 1, 1),
        geom(1, 3, (15, 13), 8, (7, 7), 2, 3, 1, 1),
        geom(2, 20, (6, 6), 130, (3, 3), 2, 1, 1, 1),
        geom(1, 16, (5, 7), 16, (1, 1), 2, 0, 1, 1),
        geom(2, 4, (7, 7), 6, (3, 3), 1, 2, 2, 2),
        geom(3, 5, (11, 4), 7, (2, 3), 1, 1, 1, 1),
    ];
    if gpu {
        cases.extend([
            geom(8, 64, (28, 28), 128, (3, 3), 2, 1, 1, 1),
            geom(8, 130, (14, 14), 260, (3, 3), 1, 1, 1, 1),
            geom(8, 256, (7, 7), 512, (1, 1), 1, 0, 1, 1),
        ]);
    }
    cases.into_iter().map(|g| g.validate().unwrap()).collect()
}

#[test]
fn tf32_convolutions_match_the_cpu_within_the_tf32_bound() {
    let cpu = Device::cpu();
    let mut rng = Rng::new(14);
    for (dev, dev32) in devices() {
        let name = dev.backend().name();
        for g in conv_cases(!name.starts_with("cuda-emu")) {
            let (x, w, dy) = (
                randn(&mut rng, g.x_len()),
                randn(&mut rng, g.w_len()),
                randn(&mut rng, g.y_len()),
            );
            let kc = g.c_in_per_group() * g.kh * g.kw;
            let kd = g.c_out_per_group() * g.kh * g.kw;
            let r = g.n * g.out_h() * g.out_w();

            // Forward: y = conv(x, w).
            let fwd_cpu = |x: &[f32], w: &[f32]| {
                let mut y = host(&vec![0.0; g.y_len()]);
                cpu.backend()
                    .conv2d_fwd(&g, &host(x), &host(w), None, &mut y)
                    .unwrap();
                y.host().unwrap().to_vec()
            };
            let fwd = |d: &Device| {
                let mut y = up(d, &vec![f32::NAN; g.y_len()]);
                d.backend()
                    .conv2d_fwd(&g, &up(d, &x), &up(d, &w), None, &mut y)
                    .unwrap();
                down(d, &y)
            };
            check(
                &format!("conv2d_fwd {g:?} on {name}"),
                Outcome {
                    got: &fwd(&dev),
                    fp32: &fwd(&dev32),
                    exact_rounded: &fwd_cpu(&round(&x), &round(&w)),
                    exact: &fwd_cpu(&x, &w),
                    mag: &fwd_cpu(&abs(&x), &abs(&w)),
                    k: kc,
                },
            );

            // Backward-data: dx = conv_transpose(dy, w).
            let bd_cpu = |dy: &[f32], w: &[f32]| {
                let mut dx = host(&vec![0.0; g.x_len()]);
                cpu.backend()
                    .conv2d_bwd_data(&g, &host(dy), &host(w), &mut dx)
                    .unwrap();
                dx.host().unwrap().to_vec()
            };
            let bd = |d: &Device| {
                let mut dx = up(d, &vec![f32::NAN; g.x_len()]);
                d.backend()
                    .conv2d_bwd_data(&g, &up(d, &dy), &up(d, &w), &mut dx)
                    .unwrap();
                down(d, &dx)
            };
            check(
                &format!("conv2d_bwd_data {g:?} on {name}"),
                Outcome {
                    got: &bd(&dev),
                    fp32: &bd(&dev32),
                    exact_rounded: &bd_cpu(&round(&dy), &round(&w)),
                    exact: &bd_cpu(&dy, &w),
                    mag: &bd_cpu(&abs(&dy), &abs(&w)),
                    k: kd,
                },
            );

            // Backward-weight: dw = sum over pixels of dy x (split-K included).
            let bw_cpu = |x: &[f32], dy: &[f32]| {
                let mut dw = host(&vec![0.0; g.w_len()]);
                cpu.backend()
                    .conv2d_bwd_weight(&g, &host(x), &host(dy), &mut dw, None)
                    .unwrap();
                dw.host().unwrap().to_vec()
            };
            let bw = |d: &Device| {
                let mut dw = up(d, &vec![f32::NAN; g.w_len()]);
                d.backend()
                    .conv2d_bwd_weight(&g, &up(d, &x), &up(d, &dy), &mut dw, None)
                    .unwrap();
                down(d, &dw)
            };
            check(
                &format!("conv2d_bwd_weight {g:?} on {name}"),
                Outcome {
                    got: &bw(&dev),
                    fp32: &bw(&dev32),
                    exact_rounded: &bw_cpu(&round(&x), &round(&dy)),
                    exact: &bw_cpu(&x, &dy),
                    mag: &bw_cpu(&abs(&x), &abs(&dy)),
                    k: r,
                },
            );
        }
    }
}
