//! torchvision's ImageNet transforms on decoded RGB images:
//! `RandomResizedCrop(224) + RandomHorizontalFlip()` for training,
//! `Resize(256) + CenterCrop(224)` for validation, each followed by
//! `ToTensor() + Normalize(mean, std)`.
//!
//! Geometry is torchvision's exactly: [`RandomResizedCrop::get_params`] is a
//! transcription of `torchvision.transforms.RandomResizedCrop.get_params`
//! (same draws in the same order, Python's round-half-to-even, the same
//! float widths), and [`resize_output_size`] / [`center_crop_offset`] are
//! those of `transforms.functional`. `tests/imagenet_geometry.rs` replays
//! draws recorded from torchvision itself.
//!
//! Resampling is PIL's bilinear filter with antialiasing (the
//! `antialias=True` semantics of torchvision on PIL images): a triangle
//! filter stretched by the downscale factor, support clamped to the crop,
//! weights normalized. It runs separably (rows, then columns) in `f32`, where
//! PIL uses 22-bit fixed-point weights and rounds to `u8` after each pass;
//! the results differ by at most one grey level (checked against PIL in
//! `tests/imagenet_geometry.rs`). Crop, resize, flip and normalization are
//! fused: only the source pixels that reach the output are read, and the
//! output is written once, normalized, CHW.

use super::decode::RgbImage;
use crate::rng::Rng;

/// Where the random numbers of a transform come from: our [`Rng`] in
/// training, recorded torchvision draws in the geometry test.
pub trait Draws {
    /// Like `torch.empty(1).uniform_(lo, hi).item()`: an `f32` sample.
    fn uniform(&mut self, lo: f32, hi: f32) -> f32;
    /// Like `torch.randint(lo, hi, (1,)).item()`: uniform in `lo..hi`.
    fn randint(&mut self, lo: i64, hi: i64) -> i64;
}

impl Draws for Rng {
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.uniform_range(lo, hi)
    }

    fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }
}

/// A crop in source pixels, torchvision's `(i, j, h, w)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Python's `round()` (half to even), as torchvision's `int(round(x))`.
fn py_round(x: f64) -> usize {
    x.round_ties_even().max(0.0) as usize
}

/// `RandomResizedCrop(size, scale, ratio)`, bilinear.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RandomResizedCrop {
    pub size: usize,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

impl RandomResizedCrop {
    /// torchvision's defaults: scale 0.08..1, ratio 3/4..4/3.
    pub fn new(size: usize) -> Self {
        RandomResizedCrop {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// The crop box for an image of `height` x `width`: ten attempts at an
    /// area fraction uniform in `scale` and a log-uniform aspect ratio, each
    /// kept only if it fits; else the centre crop with the ratio clamped.
    pub fn get_params(&self, height: usize, width: usize, draws: &mut impl Draws) -> CropBox {
        let area = (height * width) as f64;
        // torch.log(torch.tensor(ratio)): float32, correctly rounded (f32::ln
        // can be one ulp off, which changes the draws' range).
        let ln32 = |r: f64| f64::from(r as f32).ln() as f32;
        let log_ratio = (ln32(self.ratio.0), ln32(self.ratio.1));
        for _ in 0..10 {
            let target_area =
                area * f64::from(draws.uniform(self.scale.0 as f32, self.scale.1 as f32));
            // torch.exp of a float32 tensor (rounded to f32), then .item().
            let log_r = draws.uniform(log_ratio.0, log_ratio.1);
            let aspect_ratio = f64::from(f64::from(log_r).exp() as f32);
            let w = py_round((target_area * aspect_ratio).sqrt());
            let h = py_round((target_area / aspect_ratio).sqrt());
            if 0 < w && w <= width && 0 < h && h <= height {
                let top = draws.randint(0, (height - h + 1) as i64) as usize;
                let left = draws.randint(0, (width - w + 1) as i64) as usize;
                return CropBox {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (min_r, max_r) = (
            self.ratio.0.min(self.ratio.1),
            self.ratio.0.max(self.ratio.1),
        );
        let (w, h) = if in_ratio < min_r {
            (width, py_round(width as f64 / min_r))
        } else if in_ratio > max_r {
            (py_round(height as f64 * max_r), height)
        } else {
            (width, height)
        };
        CropBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes
/// `size`, the longer `int(size * long / short)`. Returns `(height, width)`.
pub fn resize_output_size(height: usize, width: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (new_long, size)
    } else {
        (size, new_long)
    }
}

/// torchvision's `CenterCrop`: `int(round((image - crop) / 2.0))` (the crop
/// is never larger than the image here: Resize(256) comes first).
pub fn center_crop_offset(image: usize, crop: usize) -> usize {
    py_round((image.saturating_sub(crop)) as f64 / 2.0)
}

/// One axis of a resampling: the source interval `[box0, box1)` (source
/// pixels, fractional allowed) is resized to `out_full` pixels, of which
/// `[first, first + count)` are kept; the filter reads source pixels in
/// `[lo, hi)` only (the crop: torchvision crops before resizing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Axis {
    pub box0: f64,
    pub box1: f64,
    pub lo: usize,
    pub hi: usize,
    pub out_full: usize,
    pub first: usize,
    pub count: usize,
}

impl Axis {
    /// The same axis on an image decoded at `1/k` size (`scaled` pixels).
    pub fn reduced(&self, k: usize, scaled: usize) -> Axis {
        if k == 1 {
            return *self;
        }
        let kf = k as f64;
        let lo = (self.lo / k).min(scaled.saturating_sub(1));
        let hi = self.hi.div_ceil(k).clamp(lo + 1, scaled);
        Axis {
            box0: self.box0 / kf,
            box1: self.box1 / kf,
            lo,
            hi,
            ..*self
        }
    }
}

/// Filter taps for each kept output pixel: source start (absolute), length,
/// and `max_len` weights per pixel.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    max_len: usize,
}

/// PIL's `precompute_coeffs` for the bilinear (triangle) filter.
fn taps(a: &Axis) -> Taps {
    let in_size = a.hi - a.lo;
    let (in0, in1) = (a.box0 - a.lo as f64, a.box1 - a.lo as f64);
    let scale = (in1 - in0) / a.out_full as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support is 1
    let max_len = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut t = Taps {
        start: Vec::with_capacity(a.count),
        len: Vec::with_capacity(a.count),
        weights: vec![0.0; a.count * max_len],
        max_len,
    };
    let mut k = vec![0.0f64; max_len];
    for (o, xx) in (a.first..a.first + a.count).enumerate() {
        let center = in0 + (xx as f64 + 0.5) * scale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let xmax = ((center + support + 0.5).trunc() as i64).clamp(0, in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(max_len);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let d = ((x + xmin) as f64 - center + 0.5) * ss;
            let w = (1.0 - d.abs()).max(0.0);
            *kx = w;
            ww += w;
        }
        for (dst, &kx) in t.weights[o * max_len..][..n].iter_mut().zip(&k) {
            *dst = if ww != 0.0 { (kx / ww) as f32 } else { 0.0 };
        }
        t.start.push(a.lo + xmin.min(in_size.saturating_sub(1)));
        t.len.push(n.max(1));
        if n == 0 {
            // Degenerate (cannot happen for a non-empty box): nearest pixel.
            t.weights[o * max_len] = 1.0;
        }
    }
    t
}

/// Resamples `img` along `x` and `y`, mirrors horizontally if `flip`, and
/// writes `(v / 255 - mean[c]) / std[c]` into `dst` (CHW, `3 * y.count *
/// x.count` values).
pub fn resample_normalize(
    img: &RgbImage,
    x: &Axis,
    y: &Axis,
    flip: bool,
    mean: &[f32],
    std: &[f32],
    dst: &mut [f32],
) {
    let (ow, oh) = (x.count, y.count);
    assert_eq!(dst.len(), 3 * ow * oh, "resample_normalize: output size");
    assert!(x.hi <= img.width && y.hi <= img.height && x.lo < x.hi && y.lo < y.hi);
    let tx = taps(x);
    let ty = taps(y);
    // Source rows the vertical pass reads.
    let r0 = *ty.start.iter().min().unwrap_or(&y.lo);
    let r1 = ty
        .start
        .iter()
        .zip(&ty.len)
        .map(|(s, l)| s + l)
        .max()
        .unwrap_or(y.lo + 1)
        .min(img.height);
    // Horizontal pass: rows r0..r1, HWC f32.
    let mut tmp = vec![0.0f32; (r1 - r0) * ow * 3];
    let stride = img.width * 3;
    for (r, trow) in (r0..r1).zip(tmp.chunks_exact_mut(ow * 3)) {
        let src = &img.data[r * stride..(r + 1) * stride];
        for (o, out) in trow.chunks_exact_mut(3).enumerate() {
            let (s, n) = (tx.start[o], tx.len[o]);
            let w = &tx.weights[o * tx.max_len..o * tx.max_len + n];
            let px = &src[s * 3..(s + n) * 3];
            let (mut a0, mut a1, mut a2) = (0.0f32, 0.0f32, 0.0f32);
            for (p, &wk) in px.chunks_exact(3).zip(w) {
                a0 += wk * f32::from(p[0]);
                a1 += wk * f32::from(p[1]);
                a2 += wk * f32::from(p[2]);
            }
            out[0] = a0;
            out[1] = a1;
            out[2] = a2;
        }
    }
    // Vertical pass, normalization, flip; CHW output.
    let plane = ow * oh;
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * std[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| mean[c] / std[c]);
    let mut acc = vec![0.0f32; ow * 3];
    for o in 0..oh {
        let (s, n) = (ty.start[o], ty.len[o]);
        let w = &ty.weights[o * ty.max_len..o * ty.max_len + n];
        acc.iter_mut().for_each(|v| *v = 0.0);
        for (k, &wk) in w.iter().enumerate() {
            let row = &tmp[(s + k - r0) * ow * 3..(s + k - r0 + 1) * ow * 3];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += wk * v;
            }
        }
        for (c, ch) in dst.chunks_exact_mut(plane).enumerate() {
            let out = &mut ch[o * ow..(o + 1) * ow];
            for (xo, v) in out.iter_mut().enumerate() {
                let src_x = if flip { ow - 1 - xo } else { xo };
                *v = acc[src_x * 3 + c] * scale[c] - shift[c];
            }
        }
    }
}

/// The two axes of a crop box resized to `size` x `size`.
pub fn crop_axes(b: &CropBox, size: usize) -> (Axis, Axis) {
    let axis = |start: usize, len: usize| Axis {
        box0: start as f64,
        box1: (start + len) as f64,
        lo: start,
        hi: start + len,
        out_full: size,
        first: 0,
        count: size,
    };
    (axis(b.left, b.width), axis(b.top, b.height))
}

/// The two axes of `Resize(resize) + CenterCrop(crop)` on a `height` x
/// `width` image.
pub fn eval_axes(height: usize, width: usize, resize: usize, crop: usize) -> (Axis, Axis) {
    let (nh, nw) = resize_output_size(height, width, resize);
    let axis = |len: usize, out: usize| Axis {
        box0: 0.0,
        box1: len as f64,
        lo: 0,
        hi: len,
        out_full: out,
        first: center_crop_offset(out, crop),
        count: crop.min(out),
    };
    (axis(width, nw), axis(height, nh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding() {
        assert_eq!(py_round(2.5), 2);
        assert_eq!(py_round(3.5), 4);
        assert_eq!(py_round(2.4999), 2);
    }

    #[test]
    fn resize_keeps_the_short_side() {
        assert_eq!(resize_output_size(375, 500, 256), (256, 341));
        assert_eq!(resize_output_size(500, 375, 256), (341, 256));
        assert_eq!(resize_output_size(300, 300, 256), (256, 256));
    }

    #[test]
    fn identity_resample_is_exact() {
        let (w, h) = (5, 4);
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
        let img = RgbImage {
            width: w,
            height: h,
            data: data.clone(),
        };
        let b = CropBox {
            top: 0,
            left: 0,
            height: h,
            width: w,
        };
        let (x, mut y) = crop_axes(&b, w);
        y.out_full = h;
        y.count = h;
        let mut out = vec![0.0; 3 * w * h];
        resample_normalize(&img, &x, &y, false, &[0.0; 3], &[1.0; 3], &mut out);
        for c in 0..3 {
            for i in 0..w * h {
                let want = f32::from(data[i * 3 + c]) / 255.0;
                assert!((out[c * w * h + i] - want).abs() < 1e-6);
            }
        }
        // A flip mirrors every row.
        let mut flipped = vec![0.0; 3 * w * h];
        resample_normalize(&img, &x, &y, true, &[0.0; 3], &[1.0; 3], &mut flipped);
        assert_eq!(flipped[0], out[w - 1]);
    }

    #[test]
    fn fallback_clamps_the_ratio() {
        struct Never;
        impl Draws for Never {
            fn uniform(&mut self, _: f32, hi: f32) -> f32 {
                hi
            }
            fn randint(&mut self, lo: i64, _: i64) -> i64 {
                lo
            }
        }
        // 10 x 1000: no attempt fits, so the widest crop of ratio 4/3.
        let b = RandomResizedCrop::new(224).get_params(10, 1000, &mut Never);
        assert_eq!((b.height, b.width, b.top, b.left), (10, 13, 0, 493));
    }
}
