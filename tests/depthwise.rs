//! Depthwise convolution (`groups == c_in`, `c_out = m * c_in`; issue 10
//! part 4): the dedicated kernels of the CPU backend
//! (`src/backend/cpu/depthwise.rs`) and of the CUDA backend
//! (`kernels/depthwise.cu`, run here on the emulator, and on a GPU when one
//! works), which every caller reaches through `conv2d_fwd` / `conv2d_bwd_data`
//! / `conv2d_bwd_weight` / `qconv2d`, checked against
//! - a direct convolution in f64 written out below, on odd shapes (all three
//!   passes and the bias gradient, outputs poisoned with NaN first);
//! - the grouped-GEMM path: a depthwise convolution equals a dense one whose
//!   weight is block-diagonal;
//! - PyTorch golden values (`tests/data/golden/depthwise.json`, written by
//!   `scripts/gen_golden.py depthwise` with PyTorch 2.15.0);
//! - central finite differences (`common::gradcheck`);
//! - for int8, a direct integer convolution plus `quant::Requant` (exact).
//!
//! Determinism: backward-weight gives the same bits with 1, 2 and 3 rayon
//! threads, and repeated runs on the emulated device give the same bits.
//!
//! Tolerances: a sum of `k` f32 products is within `k * 2^-23 * sum|terms|`
//! of the exact value (recursive summation, each step rounded once); the
//! checks allow `1.2e-7 * (k + 2) * sum|terms| + 1e-30` element by element,
//! with the `sum|terms|` computed by the reference.

mod common;

use qat::autograd::Grads;
use qat::backend::cuda::{self, probe};
use qat::backend::{Conv2dGeom, QConvArgs, Storage};
use qat::ops::{self, Conv2dParams};
use qat::quant::Requant;
use qat::rng::Rng;
use qat::{Device, Tensor};
use serde_json::Value;

fn geom(
    (n, c, h, w, m): (usize, usize, usize, usize, usize),
    (kh, kw): (usize, usize),
    stride: (usize, usize),
    pad: (usize, usize),
    dilation: (usize, usize),
) -> Conv2dGeom {
    Conv2dGeom {
        n,
        c_in: c,
        h,
        w,
        c_out: c * m,
        kh,
        kw,
        stride,
        pad,
        dilation,
        groups: c,
    }
    .validate()
    .unwrap()
}

/// Odd shapes: the issue's N=3 C=5 9x7 stride 2 pad 1 dilation 2 first, then
/// multipliers 2 and 3, 1x1 to 7x7, strides 1 to 3, unequal axes, one-row
/// and one-column images, padding wider than the kernel reach, and planes
/// long enough for the CPU's 128-wide blocks.
fn shapes() -> Vec<Conv2dGeom> {
    vec![
        geom((3, 5, 9, 7, 1), (3, 3), (2, 2), (1, 1), (2, 2)),
        geom((2, 4, 8, 8, 1), (3, 3), (1, 1), (1, 1), (1, 1)),
        geom((2, 6, 9, 10, 1), (3, 3), (2, 2), (1, 1), (1, 1)),
        geom((1, 3, 11, 13, 2), (5, 5), (1, 1), (2, 2), (1, 1)),
        geom((2, 2, 15, 12, 3), (7, 7), (2, 2), (3, 3), (1, 1)),
        geom((3, 3, 1, 6, 1), (3, 3), (1, 1), (1, 1), (1, 1)),
        geom((2, 3, 6, 1, 2), (3, 3), (2, 1), (1, 1), (1, 1)),
        geom((2, 3, 6, 5, 3), (3, 1), (1, 2), (0, 1), (1, 1)),
        geom((1, 4, 5, 5, 1), (1, 1), (2, 2), (0, 0), (1, 1)),
        geom((2, 3, 4, 4, 1), (3, 3), (3, 3), (2, 2), (1, 1)),
        geom((2, 3, 7, 9, 1), (5, 3), (2, 1), (2, 0), (1, 3)),
        geom((2, 2, 3, 3, 1), (2, 2), (1, 1), (3, 3), (1, 1)),
        geom((2, 5, 40, 33, 1), (3, 3), (1, 1), (1, 1), (1, 1)),
        geom((1, 2, 23, 31, 2), (3, 3), (2, 2), (1, 1), (1, 1)),
    ]
}

/// Direct depthwise convolution in f64: calls `f(y_index, x_index, w_index)`
/// for every multiply-add, straight from the definition.
fn for_each_tap(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
    let (oh, ow, m) = (g.out_h(), g.out_w(), g.c_out / g.c_in);
    for n in 0..g.n {
        for o in 0..g.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ki in 0..g.kh {
                        for kj in 0..g.kw {
                            let iy =
                                (oy * g.stride.0 + ki * g.dilation.0) as isize - g.pad.0 as isize;
                            let ix =
                                (ox * g.stride.1 + kj * g.dilation.1) as isize - g.pad.1 as isize;
                            if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                continue;
                            }
                            let yi = ((n * g.c_out + o) * oh + oy) * ow + ox;
                            let xi = ((n * g.c_in + o / m) * g.h + iy as usize) * g.w + ix as usize;
                            f(yi, xi, (o * g.kh + ki) * g.kw + kj);
                        }
                    }
                }
            }
        }
    }
}

/// Exact values, `sum |terms|` and term counts of one pass.
struct Want {
    v: Vec<f64>,
    abs: Vec<f64>,
    terms: Vec<usize>,
}

impl Want {
    fn new(len: usize) -> Want {
        Want {
            v: vec![0.0; len],
            abs: vec![0.0; len],
            terms: vec![0; len],
        }
    }
    fn add(&mut self, i: usize, a: f32, b: f32) {
        let t = a as f64 * b as f64;
        self.v[i] += t;
        self.abs[i] += t.abs();
        self.terms[i] += 1;
    }
}

fn reference(g: &Conv2dGeom, x: &[f32], w: &[f32], b: &[f32], dy: &[f32]) -> [Want; 4] {
    let (mut y, mut dx, mut dw, mut db) = (
        Want::new(g.y_len()),
        Want::new(g.x_len()),
        Want::new(g.w_len()),
        Want::new(g.c_out),
    );
    for_each_tap(g, |yi, xi, wi| {
        y.add(yi, x[xi], w[wi]);
        dx.add(xi, dy[yi], w[wi]);
        dw.add(wi, dy[yi], x[xi]);
    });
    let ohw = g.out_h() * g.out_w();
    for (i, &d) in dy.iter().enumerate() {
        let o = (i / ohw) % g.c_out;
        y.add(i, b[o], 1.0);
        db.add(o, d, 1.0);
    }
    [y, dx, dw, db]
}

#[track_caller]
fn check(what: &str, got: &[f32], want: &Want) {
    assert_eq!(got.len(), want.v.len(), "{what}: length");
    for (i, &g) in got.iter().enumerate() {
        let tol = 1.2e-7 * (want.terms[i] + 2) as f64 * want.abs[i] + 1e-30;
        let err = (g as f64 - want.v[i]).abs();
        assert!(
            err <= tol,
            "{what}: element {i}: got {g}, want {} (|err| {err:.3e}, tol {tol:.3e})",
            want.v[i]
        );
    }
}

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// The CPU, the emulated CUDA device, and a GPU when one works.
fn devices() -> Vec<Device> {
    let mut out = vec![Device::cpu(), cuda::emulated_device()];
    match probe::cuda_driver()
        .map_err(qat::Error::Device)
        .and_then(|_| cuda::gpu_device())
    {
        Ok(d) => out.push(d),
        Err(e) => println!("no GPU ({e}): CPU and emulator only"),
    }
    out
}

fn up(d: &Device, v: &[f32]) -> Storage {
    d.backend().upload(v).unwrap()
}

fn down(d: &Device, s: &Storage) -> Vec<f32> {
    d.backend().download(s).unwrap()
}

/// Forward (with and without bias), backward-data, backward-weight and the
/// bias gradient on every device, against the direct f64 convolution.
#[test]
fn all_passes_match_direct_f64_convolution() {
    for dev in devices() {
        let be = dev.backend();
        let mut rng = Rng::new(101);
        for g in shapes() {
            let (x, w, b, dy) = (
                randn(&mut rng, g.x_len()),
                randn(&mut rng, g.w_len()),
                randn(&mut rng, g.c_out),
                randn(&mut rng, g.y_len()),
            );
            let [want_y, want_dx, want_dw, want_db] = reference(&g, &x, &w, &b, &dy);
            let what = |op: &str| format!("{op} on {} for {g:?}", be.name());
            let (xd, wd, bd, dyd) = (up(&dev, &x), up(&dev, &w), up(&dev, &b), up(&dev, &dy));

            let nan = |n: usize| up(&dev, &vec![f32::NAN; n]);
            let mut y = nan(g.y_len());
            be.conv2d_fwd(&g, &xd, &wd, Some(&bd), &mut y).unwrap();
            check(&what("forward"), &down(&dev, &y), &want_y);
            // Without bias: the reference minus the bias term.
            let mut y = nan(g.y_len());
            be.conv2d_fwd(&g, &xd, &wd, None, &mut y).unwrap();
            let ohw = g.out_h() * g.out_w();
            let mut nob = Want {
                v: want_y.v.clone(),
                abs: want_y.abs.clone(),
                terms: want_y.terms.clone(),
            };
            for i in 0..g.y_len() {
                let bv = b[(i / ohw) % g.c_out] as f64;
                nob.v[i] -= bv;
                nob.abs[i] -= bv.abs();
                nob.terms[i] -= 1;
            }
            check(&what("forward without bias"), &down(&dev, &y), &nob);

            let mut dx = nan(g.x_len());
            be.conv2d_bwd_data(&g, &dyd, &wd, &mut dx).unwrap();
            check(&what("backward-data"), &down(&dev, &dx), &want_dx);

            let (mut dw, mut db) = (nan(g.w_len()), nan(g.c_out));
            be.conv2d_bwd_weight(&g, &xd, &dyd, &mut dw, Some(&mut db))
                .unwrap();
            check(&what("backward-weight"), &down(&dev, &dw), &want_dw);
            check(&what("bias gradient"), &down(&dev, &db), &want_db);
            let mut dw = nan(g.w_len());
            be.conv2d_bwd_weight(&g, &xd, &dyd, &mut dw, None).unwrap();
            check(
                &what("backward-weight without bias"),
                &down(&dev, &dw),
                &want_dw,
            );
        }
    }
}

/// The dense weight `[c_out, c_in, kh, kw]` equivalent to a depthwise one:
/// output channel `o` sees only input channel `o / m`.
fn block_diagonal(g: &Conv2dGeom, w: &[f32]) -> Vec<f32> {
    let (kk, m) = (g.kh * g.kw, g.c_out / g.c_in);
    let mut dense = vec![0.0; g.c_out * g.c_in * kk];
    for o in 0..g.c_out {
        dense[(o * g.c_in + o / m) * kk..][..kk].copy_from_slice(&w[o * kk..][..kk]);
    }
    dense
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}: element {i}: {a} vs {b}"
        );
    }
}

/// Through `ops::conv2d` on the CPU: the depthwise kernels give what the
/// dense GEMM path gives for the block-diagonal weight (output, input
/// gradient, and the diagonal blocks of the weight gradient).
#[test]
fn matches_the_gemm_path_on_a_block_diagonal_weight() {
    let dev = Device::cpu();
    let mut rng = Rng::new(7);
    for g in shapes() {
        let (x, w, dy) = (
            randn(&mut rng, g.x_len()),
            randn(&mut rng, g.w_len()),
            randn(&mut rng, g.y_len()),
        );
        let dense_w = block_diagonal(&g, &w);
        let p = Conv2dParams {
            stride: g.stride,
            pad: g.pad,
            dilation: g.dilation,
            groups: g.groups,
        };
        let run = |w: &[f32], cg: usize, groups: usize| {
            let xt = Tensor::param(x.clone(), [g.n, g.c_in, g.h, g.w], &dev).unwrap();
            let wt = Tensor::param(w.to_vec(), [g.c_out, cg, g.kh, g.kw], &dev).unwrap();
            let y = ops::conv2d(&xt, &wt, None, Conv2dParams { groups, ..p }).unwrap();
            let r = Tensor::from_vec(dy.clone(), [1, g.y_len()], &dev).unwrap();
            let grads: Grads = common::weighted_sum(&y, &r).unwrap().backward().unwrap();
            let gx = grads.get(&xt).unwrap().to_vec().unwrap();
            let gw = grads.get(&wt).unwrap().to_vec().unwrap();
            (y.to_vec().unwrap(), gx, gw)
        };
        let (y, dx, dw) = run(&w, 1, g.groups);
        let (y_d, dx_d, dw_d) = run(&dense_w, g.c_in, 1);
        let what = format!("{g:?}");
        close(&format!("forward {what}"), &y, &y_d, 1e-5);
        close(&format!("backward-data {what}"), &dx, &dx_d, 1e-5);
        let (kk, m) = (g.kh * g.kw, g.c_out / g.c_in);
        let diag: Vec<f32> = (0..g.c_out)
            .flat_map(|o| dw_d[(o * g.c_in + o / m) * kk..][..kk].to_vec())
            .collect();
        close(&format!("backward-weight {what}"), &dw, &diag, 1e-4);
    }
}

/// Gradients of `ops::conv2d` with groups == C against central finite
/// differences, for x, w and the bias (the issue's odd shape, a multiplier-2
/// 5x5 case and a stride-(1, 2) dilated one).
#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::new(11);
    for g in [
        geom((3, 5, 9, 7, 1), (3, 3), (2, 2), (1, 1), (2, 2)),
        geom((2, 2, 7, 6, 2), (5, 5), (1, 1), (2, 2), (1, 1)),
        geom((1, 3, 6, 9, 1), (3, 3), (1, 2), (1, 0), (2, 1)),
    ] {
        let p = Conv2dParams {
            stride: g.stride,
            pad: g.pad,
            dilation: g.dilation,
            groups: g.groups,
        };
        let inputs = [
            (randn(&mut rng, g.x_len()), vec![g.n, g.c_in, g.h, g.w]),
            (randn(&mut rng, g.w_len()), vec![g.c_out, 1, g.kh, g.kw]),
            (randn(&mut rng, g.c_out), vec![g.c_out]),
        ];
        common::gradcheck(23, &inputs, 40, 1e-2, 2e-3, 2e-3, |t| {
            ops::conv2d(&t[0], &t[1], Some(&t[2]), p)
        });
    }
}

/// Backward-weight (which reduces over the batch and the pixels) gives the
/// same bits with 1, 2 and 3 threads, and the emulated device gives the same
/// bits run after run.
#[test]
fn backward_weight_is_deterministic() {
    let mut rng = Rng::new(5);
    let g = geom((5, 6, 21, 19, 2), (3, 3), (2, 2), (1, 1), (1, 1));
    let (x, dy) = (randn(&mut rng, g.x_len()), randn(&mut rng, g.y_len()));
    let cpu = Device::cpu();
    let run = |dev: &Device| {
        let mut dw = up(dev, &vec![f32::NAN; g.w_len()]);
        let mut db = up(dev, &vec![f32::NAN; g.c_out]);
        dev.backend()
            .conv2d_bwd_weight(&g, &up(dev, &x), &up(dev, &dy), &mut dw, Some(&mut db))
            .unwrap();
        let mut v = down(dev, &dw);
        v.extend(down(dev, &db));
        v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>()
    };
    let want = run(&cpu);
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(
            pool.install(|| run(&cpu)),
            want,
            "{threads} threads: other bits"
        );
    }
    let emu = cuda::emulated_device();
    assert_eq!(run(&emu), run(&emu), "emulated device: other bits");
}

// ---- PyTorch golden values ---------------------------------------------------------

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/golden/depthwise.json"
);

fn floats(c: &Value, key: &str) -> Option<(Vec<usize>, Vec<f32>)> {
    let a = c.get(key).filter(|a| !a.is_null())?;
    let shape = a["shape"]
        .as_array()?
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = a["data"]
        .as_array()?
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    Some((shape, data))
}

fn pair(c: &Value, key: &str) -> (usize, usize) {
    let a = c[key].as_array().unwrap();
    (
        a[0].as_u64().unwrap() as usize,
        a[1].as_u64().unwrap() as usize,
    )
}

/// Every case of `depthwise.json` (PyTorch 2.15.0 computed in f64 on the f32
/// inputs, rounded to f32), on the CPU and the emulated device: forward and
/// the gradients of `(y * r).sum()` with respect to x, w and the bias.
/// Tolerance `1e-5 + 1e-4 |want|` (dw and db: `1e-4 + 1e-4 |want|`, sums
/// over up to 3 * 7 * 10 positions).
#[test]
fn pytorch_golden_values() {
    let text = std::fs::read_to_string(GOLDEN)
        .unwrap_or_else(|e| panic!("{GOLDEN}: {e}; run `python3 scripts/gen_golden.py depthwise`"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["meta"]["script"], "scripts/gen_golden.py");
    let torch = v["meta"]["torch_version"].as_str().unwrap();
    assert!(torch.starts_with("2.15.0"), "made with torch {torch}");
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8, "depthwise.json: expected 8 cases");
    for dev in [Device::cpu(), cuda::emulated_device()] {
        for c in cases {
            let name = c["name"].as_str().unwrap();
            let (xs, x) = floats(c, "x").unwrap();
            let (ws, w) = floats(c, "w").unwrap();
            let groups = c["groups"].as_u64().unwrap() as usize;
            assert_eq!((xs[1], ws[1]), (groups, 1), "{name}: not depthwise");
            let p = Conv2dParams {
                stride: pair(c, "stride"),
                pad: pair(c, "pad"),
                dilation: pair(c, "dilation"),
                groups,
            };
            let xt = Tensor::param(x, xs, &dev).unwrap();
            let wt = Tensor::param(w, ws, &dev).unwrap();
            let bt = floats(c, "b").map(|(s, d)| Tensor::param(d, s, &dev).unwrap());
            let y = ops::conv2d(&xt, &wt, bt.as_ref(), p).unwrap();
            let g = p.geom(&xt, &wt).unwrap();
            assert!(g.is_depthwise(), "{name}");
            let (_, r) = floats(c, "r").unwrap();
            let r = Tensor::from_vec(r, [1, y.numel()], &dev).unwrap();
            let grads = common::weighted_sum(&y, &r).unwrap().backward().unwrap();
            let cmp = |what: &str, got: &Tensor, key: &str, atol: f32| {
                let (shape, want) = floats(c, key).unwrap();
                assert_eq!(got.dims(), shape.as_slice(), "{name} {what}: shape");
                let got = got.to_vec().unwrap();
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= atol + 1e-4 * b.abs(),
                        "{name} {what} on {}: element {i}: got {a}, PyTorch {b}",
                        dev.backend().name()
                    );
                }
            };
            cmp("y", &y, "y", 1e-5);
            cmp("dx", grads.get(&xt).unwrap(), "dx", 1e-5);
            cmp("dw", grads.get(&wt).unwrap(), "dw", 1e-4);
            if let Some(b) = &bt {
                cmp("db", grads.get(b).unwrap(), "db", 1e-4);
            }
        }
    }
}

// ---- int8 -------------------------------------------------------------------------

/// `qconv2d` with groups == C on the CPU and every CUDA device, against a
/// direct integer convolution and the spec's `Requant` (exact, bit for
/// bit), with and without a fused ReLU.
#[test]
fn int8_depthwise_is_exact() {
    let mut rng = Rng::new(3);
    let devs = devices();
    for (k, g) in shapes().into_iter().enumerate() {
        let relu = k % 2 == 0;
        let (s_x, z_x, s_y) = (0.02, rng.below(256) as i32 - 128, 0.05);
        let z_y = if relu { -128 } else { 3 };
        let q = QConvArgs {
            s_x,
            z_x,
            s_y,
            z_y,
            lo: if relu { z_y } else { -128 },
            hi: 127,
        };
        let xq: Vec<i32> = (0..g.x_len())
            .map(|_| rng.below(256) as i32 - 128)
            .collect();
        let x: Vec<f32> = xq.iter().map(|&v| (v - z_x) as f32 * s_x).collect();
        let wq: Vec<i32> = (0..g.w_len())
            .map(|_| rng.below(255) as i32 - 127)
            .collect();
        let w: Vec<f32> = wq.iter().map(|&v| v as f32).collect();
        let bias: Vec<i32> = (0..g.c_out)
            .map(|_| rng.below(20001) as i32 - 10000)
            .collect();
        let mult: Vec<f32> = (0..g.c_out).map(|_| 1e-4 + rng.uniform() * 2e-3).collect();

        let mut acc = vec![0i64; g.y_len()];
        for_each_tap(&g, |yi, xi, wi| {
            acc[yi] += (xq[xi] - z_x) as i64 * wq[wi] as i64
        });
        let ohw = g.out_h() * g.out_w();
        let want: Vec<f32> = acc
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let o = (i / ohw) % g.c_out;
                let rq = Requant::new(mult[o], z_y, q.lo, q.hi).unwrap();
                let qy = rq.apply((a + bias[o] as i64) as i32) as i32;
                (qy - z_y) as f32 * s_y
            })
            .collect();
        for dev in &devs {
            let mut y = up(dev, &vec![f32::NAN; g.y_len()]);
            dev.backend()
                .qconv2d(
                    &g,
                    &q,
                    &up(dev, &x),
                    &up(dev, &w),
                    &up(dev, &Storage::from_i32(&bias)),
                    &up(dev, &mult),
                    &mut y,
                )
                .unwrap();
            let got = down(dev, &y);
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "qconv2d on {} for {g:?}: element {i}: {a} vs {b}",
                    dev.backend().name()
                );
            }
        }
    }
}
