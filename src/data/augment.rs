//! Data augmentation on `u8` CHW images: random shift-crop with zero padding
//! and random horizontal flip (the standard ResNet recipe for small images).
//!
//! It runs before normalization, so the padding is true black (pixel 0), and
//! it draws all its randomness from the [`Rng`] it is given: the same stream
//! gives the same image on any thread.

use super::dataset::ImageDims;
use crate::rng::Rng;

/// Pad by `padding` pixels on every side, crop a random window of the
/// original size, then mirror left-right with probability 1/2 if `flip`.
/// CIFAR uses padding 4 on 32x32; for 28x28 Fashion-MNIST, 2 is common.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    pub padding: usize,
    pub flip: bool,
}

impl Augment {
    pub fn new(padding: usize, flip: bool) -> Self {
        Augment { padding, flip }
    }

    /// Writes an augmented copy of `src` into `dst`. Draws, in this order: the
    /// vertical shift, the horizontal shift, the flip bit (always three draws,
    /// so the stream does not depend on the settings in between).
    ///
    /// # Panics
    /// If `src` or `dst` do not hold `dims.numel()` values.
    pub fn apply(&self, src: &[u8], dst: &mut [u8], dims: ImageDims, rng: &mut Rng) {
        let range = 2 * self.padding as u64 + 1;
        let pad = self.padding as isize;
        let dy = rng.below(range) as isize - pad;
        let dx = rng.below(range) as isize - pad;
        let flip = rng.next_u32() & 1 == 1;
        shift_crop(src, dst, dims, dy, dx);
        if self.flip && flip {
            hflip(dst, dims);
        }
    }
}

/// `dst[c][y][x] = src[c][y + dy][x + dx]`, or 0 outside the source: the
/// window at offset `(pad + dy, pad + dx)` of the image zero-padded by `pad`.
/// A shift of `(0, 0)` is the original image (padding removed).
///
/// # Panics
/// If `src` or `dst` do not hold `dims.numel()` values.
pub fn shift_crop(src: &[u8], dst: &mut [u8], dims: ImageDims, dy: isize, dx: isize) {
    assert_eq!(src.len(), dims.numel(), "shift_crop: source size");
    assert_eq!(dst.len(), dims.numel(), "shift_crop: destination size");
    let (h, w) = (dims.height as isize, dims.width as isize);
    // Destination columns whose source column x + dx lies inside the image.
    let x0 = (-dx).clamp(0, w);
    let x1 = (w - dx).clamp(x0, w);
    let plane = dims.height * dims.width;
    for (s, d) in src.chunks_exact(plane).zip(dst.chunks_exact_mut(plane)) {
        for (y, row) in d.chunks_exact_mut(dims.width).enumerate() {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h || x0 == x1 {
                row.fill(0);
                continue;
            }
            let start = (sy * w + x0 + dx) as usize;
            row[..x0 as usize].fill(0);
            row[x0 as usize..x1 as usize].copy_from_slice(&s[start..start + (x1 - x0) as usize]);
            row[x1 as usize..].fill(0);
        }
    }
}

/// Mirrors every row left-right, in place.
///
/// # Panics
/// If `img` does not hold `dims.numel()` values.
pub fn hflip(img: &mut [u8], dims: ImageDims) {
    assert_eq!(img.len(), dims.numel(), "hflip: image size");
    for row in img.chunks_exact_mut(dims.width) {
        row.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(dims: ImageDims) -> Vec<u8> {
        (0..dims.numel()).map(|i| (i % 251 + 1) as u8).collect()
    }

    #[test]
    fn flip_twice_is_identity() {
        let dims = ImageDims::new(2, 3, 5);
        let img = ramp(dims);
        let mut x = img.clone();
        hflip(&mut x, dims);
        assert_ne!(x, img);
        assert_eq!(&x[..5], &[5, 4, 3, 2, 1]);
        hflip(&mut x, dims);
        assert_eq!(x, img);
    }

    #[test]
    fn zero_shift_removes_the_padding() {
        let dims = ImageDims::new(1, 28, 28);
        let img = ramp(dims);
        let mut out = vec![0xAA; dims.numel()];
        shift_crop(&img, &mut out, dims, 0, 0);
        assert_eq!(out, img);
    }

    #[test]
    fn shift_moves_content_and_fills_zeros() {
        let dims = ImageDims::new(1, 3, 3);
        let img: Vec<u8> = (1..=9).collect();
        let mut out = vec![0xAA; 9];
        // Window at the top-left corner of the padded image.
        shift_crop(&img, &mut out, dims, -1, -1);
        assert_eq!(out, [0, 0, 0, 0, 1, 2, 0, 4, 5]);
        shift_crop(&img, &mut out, dims, 1, 2);
        assert_eq!(out, [6, 0, 0, 9, 0, 0, 0, 0, 0]);
        // Shifts past the image give black, not a panic.
        shift_crop(&img, &mut out, dims, 0, 5);
        assert_eq!(out, [0; 9]);
        shift_crop(&img, &mut out, dims, -7, 0);
        assert_eq!(out, [0; 9]);
    }

    #[test]
    fn augment_keeps_shape_and_is_deterministic() {
        let dims = ImageDims::new(1, 28, 28);
        let img = ramp(dims);
        let aug = Augment::new(2, true);
        let run = |seed| {
            let mut out = vec![0; dims.numel()];
            aug.apply(&img, &mut out, dims, &mut Rng::new(seed));
            out
        };
        assert_eq!(run(1).len(), dims.numel());
        assert_eq!(run(1), run(1));
        assert!((0..20).any(|s| run(s) != run(1)));
        // Without padding or flip the image passes through unchanged.
        let mut out = vec![0; dims.numel()];
        Augment::new(0, false).apply(&img, &mut out, dims, &mut Rng::new(9));
        assert_eq!(out, img);
    }
}
