//! Kernel benchmarks on a real GPU: GEMM, convolution forward / backward-data
//! / backward-weight at ResNet-18 (ImageNet, batch 32) shapes and at
//! MobileNetV2 depthwise and pointwise shapes (batch 32), and batch norm.
//! Each case is warmed up, then timed with CUDA events over several runs
//! (median reported). GEMM-like kernels report TFLOP/s and the ratio to cuBLAS
//! SGEMM on the same M x N x K, which for a convolution is the size of its
//! implicit GEMM: a reference, not an equal task. GEMM and the ResNet-18
//! convolutions run twice: FP32 (CUDA cores) against cuBLAS SGEMM in its
//! default FP32 math, and TF32 (`--precision tf32`, tensor cores) against
//! cuBLAS SGEMM with `CUBLAS_TF32_TENSOR_OP_MATH`. Batch norm
//! reports effective GB/s (bytes each kernel must read and write).
//!
//! `cargo bench --bench cuda_kernels`; without a GPU it prints that it was
//! skipped and exits 0. `QAT_BENCH_QUICK=1` runs fewer repeats.

use cudarc::driver::{result, sys};
use qat::backend::cuda::{probe, CudaBackend};
use qat::backend::{Backend, BnGeom, Conv2dGeom, GemmGeom, Precision, Storage};

struct Timer {
    start: sys::CUevent,
    stop: sys::CUevent,
}

impl Timer {
    fn new() -> Self {
        let start = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();
        let stop = result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).unwrap();
        Timer { start, stop }
    }
    /// Median milliseconds of `f` over `reps` timed runs after `warm` untimed ones.
    fn median_ms(&self, warm: usize, reps: usize, mut f: impl FnMut()) -> f64 {
        for _ in 0..warm {
            f();
        }
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            // SAFETY: events of the current context, recorded on the null
            // stream that the backend launches on.
            unsafe {
                result::event::record(self.start, std::ptr::null_mut()).unwrap();
                f();
                result::event::record(self.stop, std::ptr::null_mut()).unwrap();
                result::event::synchronize(self.stop).unwrap();
                times.push(result::event::elapsed(self.start, self.stop).unwrap() as f64);
            }
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        times[times.len() / 2]
    }
}

fn dptr(s: &Storage) -> u64 {
    match s {
        Storage::Device(b) => b.ptr(),
        Storage::Host(_) => unreachable!(),
    }
}

/// Row-major C (m x n) = A (m x k) B (k x n) through column-major cuBLAS:
/// C^T = B^T A^T.
struct Cublas(cudarc::cublas::sys::cublasHandle_t);

impl Cublas {
    fn new() -> Option<Self> {
        // SAFETY: only dlopens.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return None;
        }
        cudarc::cublas::result::create_handle().ok().map(Cublas)
    }
    /// FP32 math (cuBLAS's default) or TF32 tensor-core math.
    fn set_precision(&self, p: Precision) {
        use cudarc::cublas::sys::cublasMath_t::{CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH};
        let mode = match p {
            Precision::Fp32 => CUBLAS_DEFAULT_MATH,
            Precision::Tf32 => CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: a valid handle.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(self.0, mode) };
    }
    fn sgemm(&self, m: usize, n: usize, k: usize, a: u64, b: u64, c: u64) {
        use cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: device buffers of the right sizes; default stream.
        unsafe {
            cudarc::cublas::result::sgemm(
                self.0,
                CUBLAS_OP_N,
                CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                b as *const f32,
                n as i32,
                a as *const f32,
                k as i32,
                &beta,
                c as *mut f32,
                n as i32,
            )
            .unwrap();
        }
    }
}

struct Row {
    name: String,
    ms: f64,
    rate: String,
    vs_cublas: String,
}

/// Times the forward, backward-data and backward-weight passes of `g` on
/// `be` (random inputs), one row each, labelled `name` and with the rate and
/// cuBLAS columns that `rate` and `vs` make of the median milliseconds.
fn conv_rows(
    be: &CudaBackend,
    timer: &Timer,
    (warm, reps): (usize, usize),
    name: &str,
    g: &Conv2dGeom,
    rate: &dyn Fn(f64) -> String,
    vs: &dyn Fn(f64) -> String,
) -> Vec<Row> {
    let rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    let x = be.upload(&rand(g.x_len())).unwrap();
    let w = be.upload(&rand(g.w_len())).unwrap();
    let dy = be.upload(&rand(g.y_len())).unwrap();
    let (mut y, mut dx, mut dw) = (
        be.zeros(g.y_len()).unwrap(),
        be.zeros(g.x_len()).unwrap(),
        be.zeros(g.w_len()).unwrap(),
    );
    let row = |pass: &str, ms: f64| Row {
        name: format!("{name} {pass}"),
        ms,
        rate: rate(ms),
        vs_cublas: vs(ms),
    };
    vec![
        row(
            "fwd",
            timer.median_ms(warm, reps, || {
                be.conv2d_fwd(g, &x, &w, None, &mut y).unwrap()
            }),
        ),
        row(
            "bwd-data",
            timer.median_ms(warm, reps, || {
                be.conv2d_bwd_data(g, &dy, &w, &mut dx).unwrap()
            }),
        ),
        row(
            "bwd-weight",
            timer.median_ms(warm, reps, || {
                be.conv2d_bwd_weight(g, &x, &dy, &mut dw, None).unwrap()
            }),
        ),
    ]
}

fn main() {
    // The GPU check sets QAT_REQUIRE_GPU=1: there, no GPU is a failure.
    let skip = |why: String| {
        println!("cuda_kernels: SKIPPED ({why})");
        let required = std::env::var("QAT_REQUIRE_GPU").is_ok_and(|v| v == "1");
        std::process::exit(if required { 1 } else { 0 });
    };
    if let Err(why) = probe::cuda_driver() {
        skip(format!("no GPU: {why}"));
    }
    let be = match CudaBackend::gpu(0) {
        Ok(b) => b,
        Err(e) => return skip(format!("GPU unusable: {e}")),
    };
    let quick = std::env::var("QAT_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (warm, reps) = if quick { (2, 5) } else { (3, 15) };
    println!("cuda_kernels on {}", be.name());
    be.synchronize().unwrap(); // binds the context to this thread
    let timer = Timer::new();
    let cublas = Cublas::new();
    if cublas.is_none() {
        println!("(cuBLAS not found: no reference column)");
    }
    let rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    let mut rows: Vec<Row> = Vec::new();
    // The TF32 twin of the backend (same context and buffers), where the
    // GPU has tensor cores for it.
    let be_tf32 = be.with_precision(Precision::Tf32);
    if let Err(e) = &be_tf32 {
        println!("(no TF32 rows: {e})");
    }
    let precisions: Vec<(Precision, &CudaBackend)> = std::iter::once((Precision::Fp32, &be))
        .chain(be_tf32.as_ref().ok().map(|b| (Precision::Tf32, b)))
        .collect();

    let cublas_ms = |m: usize, n: usize, k: usize, p: Precision| -> Option<f64> {
        let cb = cublas.as_ref()?;
        cb.set_precision(p);
        let (a, b, c) = (
            be.zeros(m * k).unwrap(),
            be.zeros(k * n).unwrap(),
            be.zeros(m * n).unwrap(),
        );
        let c_ptr = dptr(&c);
        Some(timer.median_ms(warm, reps, || cb.sgemm(m, n, k, dptr(&a), dptr(&b), c_ptr)))
    };

    // ---- GEMM -------------------------------------------------------------------
    for &(p, mm) in &precisions {
        for (m, n, k) in [
            (1024, 1024, 1024),
            (4096, 4096, 4096),
            (4095, 4097, 1000),
            (32, 1000, 512),
        ] {
            let g = GemmGeom::new(m, n, k);
            let (a, b) = (
                be.upload(&rand(m * k)).unwrap(),
                be.upload(&rand(k * n)).unwrap(),
            );
            let mut c = be.zeros(m * n).unwrap();
            let ms = timer.median_ms(warm, reps, || mm.gemm(&g, &a, &b, &mut c).unwrap());
            let tf = g.flops() / ms / 1e9;
            let vs = cublas_ms(m, n, k, p)
                .map(|r| format!("{:.2}", r / ms))
                .unwrap_or("-".into());
            rows.push(Row {
                name: format!("gemm {m}x{n}x{k} {}", p.name()),
                ms,
                rate: format!("{tf:.2} TFLOP/s"),
                vs_cublas: vs,
            });
        }
    }

    // ---- convolution at ResNet-18 shapes, batch 32 ----------------------------------
    let conv = |name: &str, c_in, hw, c_out, k, s, p| {
        let g = Conv2dGeom {
            n: 32,
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
        (name.to_string(), g.validate().unwrap())
    };
    let convs = [
        conv("conv1 7x7/2 3->64 @224", 3, 224, 64, 7, 2, 3),
        conv("layer1 3x3 64->64 @56", 64, 56, 64, 3, 1, 1),
        conv("layer2 3x3/2 64->128 @56", 64, 56, 128, 3, 2, 1),
        conv("layer3 3x3 256->256 @14", 256, 14, 256, 3, 1, 1),
        conv("layer4 3x3 512->512 @7", 512, 7, 512, 3, 1, 1),
        conv("down 1x1/2 128->256 @28", 128, 28, 256, 1, 2, 0),
    ];
    for &(p, mm) in &precisions {
        for (name, g) in &convs {
            let name = format!("{name} {}", p.name());
            let (m, n, k) = (g.n * g.out_h() * g.out_w(), g.c_out, g.c_in * g.kh * g.kw);
            let reference = cublas_ms(m, n, k, p);
            let tf = |ms: f64| format!("{:.2} TFLOP/s", g.flops() / ms / 1e9);
            let vs = |ms: f64| {
                reference
                    .map(|r| format!("{:.2}", r / ms))
                    .unwrap_or("-".into())
            };
            rows.extend(conv_rows(mm, &timer, (warm, reps), &name, g, &tf, &vs));
        }
    }

    // ---- depthwise and pointwise convolution at MobileNetV2 shapes, batch 32 ----------
    // Depthwise layers are memory-bound: the rate column is the effective
    // bandwidth of the tensors each pass must read and write once (x, dy,
    // y or dx; weights are negligible). Pointwise layers report TFLOP/s.
    let mobile = |name: &str, c_in, hw, c_out, k, s, groups| {
        let g = Conv2dGeom {
            n: 32,
            c_in,
            h: hw,
            w: hw,
            c_out,
            kh: k,
            kw: k,
            stride: (s, s),
            pad: (k / 2, k / 2),
            dilation: (1, 1),
            groups,
        };
        (name.to_string(), g.validate().unwrap())
    };
    let mobiles = [
        mobile("dw 3x3 32 @112", 32, 112, 32, 3, 1, 32),
        mobile("dw 3x3/2 96 @112", 96, 112, 96, 3, 2, 96),
        mobile("dw 3x3 144 @56", 144, 56, 144, 3, 1, 144),
        mobile("dw 3x3/2 144 @56", 144, 56, 144, 3, 2, 144),
        mobile("dw 3x3 192 @28", 192, 28, 192, 3, 1, 192),
        mobile("dw 3x3 384 @14", 384, 14, 384, 3, 1, 384),
        mobile("dw 3x3/2 576 @14", 576, 14, 576, 3, 2, 576),
        mobile("dw 3x3 960 @7", 960, 7, 960, 3, 1, 960),
        mobile("pw 1x1 32->16 @112", 32, 112, 16, 1, 1, 1),
        mobile("pw 1x1 144->24 @56", 144, 56, 24, 1, 1, 1),
        mobile("pw 1x1 384->64 @14", 384, 14, 64, 1, 1, 1),
        mobile("pw 1x1 960->320 @7", 960, 7, 320, 1, 1, 1),
    ];
    for (name, g) in &mobiles {
        let bytes = 4.0 * (g.x_len() + g.y_len()) as f64;
        let rate = |ms: f64| {
            if g.is_depthwise() {
                format!("{:.0} GB/s", bytes / ms / 1e6)
            } else {
                format!("{:.2} TFLOP/s", g.flops() / ms / 1e9)
            }
        };
        let reference = (!g.is_depthwise())
            .then(|| cublas_ms(g.n * g.h * g.w, g.c_out, g.c_in, Precision::Fp32))
            .flatten();
        let vs = |ms: f64| {
            reference
                .map(|r| format!("{:.2}", r / ms))
                .unwrap_or("-".into())
        };
        rows.extend(conv_rows(&be, &timer, (warm, reps), name, g, &rate, &vs));
    }

    // ---- batch norm ---------------------------------------------------------------------
    for (n, c, hw) in [(32, 64, 56 * 56), (32, 512, 7 * 7)] {
        let g = BnGeom {
            n,
            c,
            hw,
            eps: 1e-5,
            momentum: 0.1,
        };
        let len = n * c * hw;
        let x = be.upload(&rand(len)).unwrap();
        let (gamma, beta) = (be.upload(&vec![1.0; c]).unwrap(), be.zeros(c).unwrap());
        let (mut rm, mut rv) = (be.zeros(c).unwrap(), be.upload(&vec![1.0; c]).unwrap());
        let (mut y, mut sm, mut si) = (
            be.zeros(len).unwrap(),
            be.zeros(c).unwrap(),
            be.zeros(c).unwrap(),
        );
        let ms = timer.median_ms(warm, reps, || {
            be.batchnorm_fwd_train(
                &g, &x, &gamma, &beta, &mut rm, &mut rv, &mut y, &mut sm, &mut si,
            )
            .unwrap()
        });
        // stats read x twice, apply reads x and writes y
        let gbs = |bytes: f64, ms: f64| format!("{:.0} GB/s", bytes / ms / 1e6);
        let bytes = 4.0 * len as f64 * 4.0;
        rows.push(Row {
            name: format!("batchnorm fwd-train {n}x{c}x{hw}"),
            ms,
            rate: gbs(bytes, ms),
            vs_cublas: "-".into(),
        });
        let (mut dx, mut dg, mut db) = (
            be.zeros(len).unwrap(),
            be.zeros(c).unwrap(),
            be.zeros(c).unwrap(),
        );
        let ms = timer.median_ms(warm, reps, || {
            be.batchnorm_bwd(&g, &x, &y, &gamma, &sm, &si, &mut dx, &mut dg, &mut db)
                .unwrap()
        });
        // reads x, dy twice and writes dx
        let bytes = 5.0 * len as f64 * 4.0;
        rows.push(Row {
            name: format!("batchnorm bwd {n}x{c}x{hw}"),
            ms,
            rate: gbs(bytes, ms),
            vs_cublas: "-".into(),
        });
    }

    println!("\n| kernel | ms (median) | rate | cuBLAS SGEMM time / ours |");
    println!("|---|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.3} | {} | {} |",
            r.name, r.ms, r.rate, r.vs_cublas
        );
    }
}
