//! The ops MobileNetV2 and imported CNN graphs add (issue 10): ReLU6 /
//! hardtanh, average pooling and concatenation, forward and backward through
//! the op layer, against direct f64 references written here from the
//! definitions, on odd shapes, on the CPU and on the emulated CUDA device.
//! Gradient checks are in `tests/gradcheck.rs`, PyTorch goldens in
//! `tests/golden_pytorch.rs`, kernel-vs-CPU parity in `tests/cuda_parity.rs`.

mod common;

use common::randn;
use qat::ops::{self, AvgPool2dParams};
use qat::rng::Rng;
use qat::{Device, Tensor};

fn devices() -> Vec<Device> {
    vec![Device::cpu(), Device::parse("cuda-emu").unwrap()]
}

/// `|got - want| <= atol + rtol * |want|` everywhere; NaN never passes.
#[track_caller]
fn close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g as f64 - w).abs() <= atol + rtol * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// `sum(y * r)` backpropagated: returns the gradients of `xs`.
fn grads_of(y: &Tensor, r: &[f32], xs: &[&Tensor]) -> Vec<Vec<f32>> {
    let rt = Tensor::from_vec(r.to_vec(), [1, r.len()], y.device()).unwrap();
    let loss = common::weighted_sum(y, &rt).unwrap();
    let g = loss.backward().unwrap();
    xs.iter()
        .map(|x| g.get(x).expect("no gradient").to_vec().unwrap())
        .collect()
}

// ---- ReLU6 / hardtanh ---------------------------------------------------------

#[test]
fn relu6_forward_and_gradient_at_and_around_kinks() {
    let mut rng = Rng::new(1);
    let mut x: Vec<f32> = randn(&mut rng, 3 * 5 * 7)
        .iter()
        .map(|v| v * 4.0 + 3.0)
        .collect();
    let kinks = [
        0.0f32,
        -0.0,
        6.0,
        f32::from_bits(1),                  // smallest positive
        -f32::from_bits(1),                 // largest negative
        f32::from_bits(6f32.to_bits() - 1), // just below 6
        f32::from_bits(6f32.to_bits() + 1), // just above 6
    ];
    x[..kinks.len()].copy_from_slice(&kinks);
    for dev in devices() {
        let xt = Tensor::param(x.clone(), [3, 5, 7], &dev).unwrap();
        let y = ops::relu6(&xt).unwrap();
        let want: Vec<f64> = x.iter().map(|&v| (v as f64).clamp(0.0, 6.0)).collect();
        close("relu6 y", &y.to_vec().unwrap(), &want, 0.0, 0.0);
        let r = randn(&mut rng, x.len());
        let dx = &grads_of(&y, &r, &[&xt])[0];
        // 1 strictly inside (0, 6), 0 at the kinks and outside.
        let want: Vec<f64> = x
            .iter()
            .zip(&r)
            .map(|(&v, &r)| if 0.0 < v && v < 6.0 { r as f64 } else { 0.0 })
            .collect();
        close("relu6 dx", dx, &want, 0.0, 0.0);
        for (i, k) in kinks.iter().enumerate() {
            let inside = *k > 0.0 && *k < 6.0;
            assert_eq!(dx[i] != 0.0, inside, "gradient at {k:e}");
        }
    }
}

#[test]
fn hardtanh_nan_and_bad_bounds() {
    for dev in devices() {
        let x = Tensor::param(vec![f32::NAN, -2.0, 0.5, 3.0], [4], &dev).unwrap();
        let y = ops::hardtanh(&x, -1.0, 1.0).unwrap();
        let v = y.to_vec().unwrap();
        assert!(v[0].is_nan(), "NaN stays NaN");
        assert_eq!(&v[1..], &[-1.0, 0.5, 1.0]);
        let dx = &grads_of(&y, &[1.0; 4], &[&x])[0];
        assert_eq!(dx, &[0.0, 0.0, 1.0, 0.0], "NaN gets gradient 0");
        for (lo, hi) in [(1.0, -1.0), (f32::NAN, 1.0)] {
            let e = ops::hardtanh(&x, lo, hi).unwrap_err().to_string();
            assert!(e.contains("hardtanh"), "{e}");
        }
    }
}

// ---- average pooling --------------------------------------------------------

/// Direct f64 average pooling: pads the plane explicitly with markers
/// (input / padding / beyond the padding), then averages each window over
/// its input cells, dividing by its input cells or by its input and padding
/// cells. Returns `(y, dx)` for upstream gradient `r`.
fn avg_pool_ref(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    p: AvgPool2dParams,
    r: &[f32],
) -> (Vec<f64>, Vec<f64>, (usize, usize)) {
    let ((kh, kw), (sh, sw), (ph, pw)) = (p.kernel, p.stride, p.pad);
    let out = |size: usize, k: usize, s: usize, pad: usize| {
        let num = size + 2 * pad - k;
        let mut o = if p.ceil_mode {
            num.div_ceil(s)
        } else {
            num / s
        } + 1;
        if p.ceil_mode && (o - 1) * s >= size + pad {
            o -= 1;
        }
        o
    };
    let (oh, ow) = (out(h, kh, sh, ph), out(w, kw, sw, pw));
    // The padded canvas covers every window, even those past the padding.
    let (hh, ww) = ((oh - 1) * sh + kh, (ow - 1) * sw + kw);
    let hh = hh.max(h + 2 * ph);
    let ww = ww.max(w + 2 * pw);
    // 2: input, 1: padding, 0: beyond the padding
    let kind = |y: usize, x: usize| -> u8 {
        let inside = |v: usize, pad: usize, size: usize| v >= pad && v < pad + size;
        let in_pad = |v: usize, pad: usize, size: usize| v < size + 2 * pad;
        if inside(y, ph, h) && inside(x, pw, w) {
            2
        } else if in_pad(y, ph, h) && in_pad(x, pw, w) {
            1
        } else {
            0
        }
    };
    let mut y = vec![0.0f64; n * c * oh * ow];
    let mut dx = vec![0.0f64; n * c * h * w];
    for plane in 0..n * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut sum, mut cells, mut inputs) = (0.0f64, 0usize, 0usize);
                for dy in 0..kh {
                    for dxk in 0..kw {
                        let (cy, cx) = (oy * sh + dy, ox * sw + dxk);
                        assert!(cy < hh && cx < ww);
                        match kind(cy, cx) {
                            2 => {
                                sum += x[plane * h * w + (cy - ph) * w + (cx - pw)] as f64;
                                cells += 1;
                                inputs += 1;
                            }
                            1 => cells += 1,
                            _ => {}
                        }
                    }
                }
                let div = if p.count_include_pad { cells } else { inputs } as f64;
                let o = (plane * oh + oy) * ow + ox;
                y[o] = sum / div;
                for dy in 0..kh {
                    for dxk in 0..kw {
                        let (cy, cx) = (oy * sh + dy, ox * sw + dxk);
                        if kind(cy, cx) == 2 {
                            dx[plane * h * w + (cy - ph) * w + (cx - pw)] += r[o] as f64 / div;
                        }
                    }
                }
            }
        }
    }
    (y, dx, (oh, ow))
}

#[test]
fn avg_pool2d_against_f64_reference() {
    let shapes = [(2, 3, 9, 7), (1, 2, 8, 6), (3, 1, 5, 11), (1, 2, 10, 7)];
    let params = [
        ((3, 3), (2, 2), (1, 1)),
        ((3, 2), (2, 1), (1, 1)),
        ((2, 2), (2, 2), (0, 0)),
        ((5, 3), (3, 2), (2, 1)),
        ((3, 3), (1, 1), (1, 1)),
        ((1, 1), (2, 3), (0, 0)),
    ];
    let mut rng = Rng::new(2);
    for dev in devices() {
        for &shape in &shapes {
            for &(kernel, stride, pad) in &params {
                for count_include_pad in [false, true] {
                    for ceil_mode in [false, true] {
                        let p = AvgPool2dParams {
                            kernel,
                            stride,
                            pad,
                            count_include_pad,
                            ceil_mode,
                        };
                        let (n, c, h, w) = shape;
                        if h + 2 * pad.0 < kernel.0 || w + 2 * pad.1 < kernel.1 {
                            continue;
                        }
                        let x = randn(&mut rng, n * c * h * w);
                        let xt = Tensor::param(x.clone(), [n, c, h, w], &dev).unwrap();
                        let y = ops::avg_pool2d(&xt, p).unwrap();
                        let r = randn(&mut rng, y.numel());
                        let (want_y, want_dx, (oh, ow)) = avg_pool_ref(&x, shape, p, &r);
                        let what = format!("{} {shape:?} {p:?}", dev.backend().name());
                        assert_eq!(y.dims(), &[n, c, oh, ow], "{what}: output shape");
                        close(
                            &format!("{what}: y"),
                            &y.to_vec().unwrap(),
                            &want_y,
                            1e-6,
                            1e-5,
                        );
                        let dx = &grads_of(&y, &r, &[&xt])[0];
                        close(&format!("{what}: dx"), dx, &want_dx, 1e-6, 1e-5);
                    }
                }
            }
        }
    }
}

/// The divisor at a corner of a 3x3 / pad 1 pool: 9 with count_include_pad
/// (PyTorch's default), 4 without (ONNX AveragePool's default).
#[test]
fn avg_pool2d_border_divisors() {
    let x = Tensor::from_vec(vec![1.0; 16], [1, 1, 4, 4], &Device::cpu()).unwrap();
    let incl = ops::avg_pool2d(&x, AvgPool2dParams::new(3, 1, 1, true)).unwrap();
    let excl = ops::avg_pool2d(&x, AvgPool2dParams::new(3, 1, 1, false)).unwrap();
    let (incl, excl) = (incl.to_vec().unwrap(), excl.to_vec().unwrap());
    assert_eq!(incl[0], 4.0 / 9.0); // corner: 4 inputs, 9 cells
    assert_eq!(incl[1], 6.0 / 9.0); // edge: 6 inputs
    assert_eq!(incl[5], 1.0); // interior
    assert!(excl.iter().all(|&v| v == 1.0), "{excl:?}");
}

#[test]
fn avg_pool2d_errors_name_the_problem() {
    let x = Tensor::zeros([1, 2, 5, 5], &Device::cpu()).unwrap();
    let e = ops::avg_pool2d(&x, AvgPool2dParams::new(3, 1, 2, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("avg_pool2d") && e.contains("padding"), "{e}");
    let e = ops::avg_pool2d(&x, AvgPool2dParams::new(7, 1, 0, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("7x7") && e.contains("5x5"), "{e}");
    let e = ops::avg_pool2d(&x, AvgPool2dParams::new(3, 0, 0, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("stride"), "{e}");
    let flat = Tensor::zeros([2, 5], &Device::cpu()).unwrap();
    let e = ops::avg_pool2d(&flat, AvgPool2dParams::new(1, 1, 0, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("NCHW") && e.contains("[2, 5]"), "{e}");
}

// ---- concat -----------------------------------------------------------------

#[test]
fn concat_three_tensors_of_different_channels() {
    let mut rng = Rng::new(3);
    let (n, h, w) = (2, 3, 5);
    let chans = [2usize, 3, 5];
    for dev in devices() {
        let data: Vec<Vec<f32>> = chans
            .iter()
            .map(|&c| randn(&mut rng, n * c * h * w))
            .collect();
        let xs: Vec<Tensor> = data
            .iter()
            .zip(chans)
            .map(|(d, c)| Tensor::param(d.clone(), [n, c, h, w], &dev).unwrap())
            .collect();
        let refs: Vec<&Tensor> = xs.iter().collect();
        let y = ops::concat(&refs, 1).unwrap();
        let total: usize = chans.iter().sum();
        assert_eq!(y.dims(), &[n, total, h, w]);
        // y[b, off_i + c, :, :] = x_i[b, c, :, :]
        let mut want = vec![0.0f64; n * total * h * w];
        let mut off = 0;
        for (d, &c) in data.iter().zip(&chans) {
            for b in 0..n {
                for ch in 0..c {
                    for p in 0..h * w {
                        want[(b * total + off + ch) * h * w + p] =
                            d[(b * c + ch) * h * w + p] as f64;
                    }
                }
            }
            off += c;
        }
        close("concat y", &y.to_vec().unwrap(), &want, 0.0, 0.0);
        let r = randn(&mut rng, y.numel());
        let dxs = grads_of(&y, &r, &refs);
        let mut off = 0;
        for (dx, &c) in dxs.iter().zip(&chans) {
            let mut want = vec![0.0f64; n * c * h * w];
            for b in 0..n {
                for ch in 0..c {
                    for p in 0..h * w {
                        want[(b * c + ch) * h * w + p] =
                            r[(b * total + off + ch) * h * w + p] as f64;
                    }
                }
            }
            close("concat dx", dx, &want, 0.0, 0.0);
            off += c;
        }
    }
}

/// Only tracked inputs get a gradient; an untracked one is just copied.
#[test]
fn concat_with_an_untracked_input() {
    let dev = Device::cpu();
    let a = Tensor::param(vec![1.0, 2.0], [1, 2], &dev).unwrap();
    let b = Tensor::from_vec(vec![3.0], [1, 1], &dev).unwrap();
    let y = ops::concat(&[&b, &a], 1).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![3.0, 1.0, 2.0]);
    let dx = &grads_of(&y, &[10.0, 20.0, 30.0], &[&a])[0];
    assert_eq!(dx, &[20.0, 30.0]);
}

#[test]
fn concat_errors_name_the_shapes() {
    let dev = Device::cpu();
    let a = Tensor::zeros([2, 3, 4, 4], &dev).unwrap();
    let b = Tensor::zeros([2, 5, 4, 3], &dev).unwrap();
    let e = ops::concat(&[&a, &b], 1).unwrap_err().to_string();
    assert!(
        e.contains("[2, 3, 4, 4]") && e.contains("[2, 5, 4, 3]"),
        "{e}"
    );
    let e = ops::concat(&[&a, &a], 4).unwrap_err().to_string();
    assert!(e.contains("axis 4"), "{e}");
    assert!(ops::concat(&[], 1).is_err());
    let c = Tensor::zeros([2, 3, 4], &dev).unwrap();
    assert!(ops::concat(&[&a, &c], 1).is_err());
    let emu = Tensor::zeros([2, 3, 4, 4], &Device::parse("cuda-emu").unwrap()).unwrap();
    let e = ops::concat(&[&a, &emu], 1).unwrap_err().to_string();
    assert!(e.contains("concat"), "{e}");
}
