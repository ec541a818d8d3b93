//! An in-memory labelled image set, kept as `u8` pixels.
//!
//! Pixels stay `u8` until a batch is assembled: augmentation works on the
//! original values (zero padding is exactly black), and the whole
//! Fashion-MNIST training set takes 47 MB instead of 188 MB as `f32`.

use crate::{bail, Result};

/// The shape of one image, channels first (CHW).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageDims {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageDims {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        ImageDims {
            channels,
            height,
            width,
        }
    }

    /// Values per image: `channels * height * width`.
    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// `len` images of `dims`, stored back to back, each with a label below
/// `num_classes`. The constructor checks these invariants once, so the loader
/// can index without further checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    dims: ImageDims,
    num_classes: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl Dataset {
    pub fn new(
        dims: ImageDims,
        num_classes: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<Self> {
        if dims.numel() == 0 {
            bail!(Data, "dataset: empty image shape {dims:?}");
        }
        if num_classes == 0 || num_classes > 256 {
            bail!(
                Data,
                "dataset: {num_classes} classes (u8 labels allow 1..=256)"
            );
        }
        if pixels.len() != labels.len() * dims.numel() {
            bail!(
                Data,
                "dataset: {} pixel values do not make {} images of {dims:?}",
                pixels.len(),
                labels.len()
            );
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= num_classes)
        {
            bail!(
                Data,
                "dataset: label {l} of sample {i} is not below {num_classes}"
            );
        }
        Ok(Dataset {
            dims,
            num_classes,
            pixels,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn dims(&self) -> ImageDims {
        self.dims
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// All pixels, image after image, each image CHW.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Image `i` (CHW). Panics when `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.dims.numel();
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// Keeps the first `n` samples (all if `n >= len()`): for quick runs and
    /// smoke tests on a slice of a real dataset.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.pixels.truncate(n * self.dims.numel());
        }
    }

    /// Per-channel mean and standard deviation of the pixels scaled to
    /// `[0, 1]`. The sums are exact integers, so the result does not depend on
    /// summation order and is as precise as `f64` allows.
    pub fn channel_stats(&self) -> Vec<(f64, f64)> {
        let plane = self.dims.height * self.dims.width;
        let mut sums = vec![(0u64, 0u64); self.dims.channels];
        for image in self.pixels.chunks_exact(self.dims.numel()) {
            for (c, values) in image.chunks_exact(plane).enumerate() {
                for &v in values {
                    let v = u64::from(v);
                    sums[c].0 += v;
                    sums[c].1 += v * v;
                }
            }
        }
        let count = (self.len() * plane) as f64;
        sums.into_iter()
            .map(|(s, s2)| {
                let mean = s as f64 / count / 255.0;
                let var = s2 as f64 / count / (255.0 * 255.0) - mean * mean;
                (mean, var.max(0.0).sqrt())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_invariants() {
        let d = ImageDims::new(1, 2, 2);
        assert!(Dataset::new(d, 10, vec![0; 8], vec![1, 9]).is_ok());
        assert!(Dataset::new(d, 10, vec![0; 7], vec![1, 9]).is_err());
        assert!(Dataset::new(d, 10, vec![0; 8], vec![1, 10]).is_err());
        assert!(Dataset::new(ImageDims::new(1, 0, 2), 10, vec![], vec![]).is_err());
    }

    #[test]
    fn stats_of_a_known_image() {
        // Half 0, half 255: mean 0.5, std 0.5.
        let d = ImageDims::new(1, 2, 2);
        let ds = Dataset::new(d, 2, vec![0, 255, 0, 255], vec![0]).unwrap();
        let (mean, std) = ds.channel_stats()[0];
        assert!((mean - 0.5).abs() < 1e-12 && (std - 0.5).abs() < 1e-12);
    }

    #[test]
    fn truncate_keeps_a_prefix() {
        let d = ImageDims::new(1, 1, 2);
        let mut ds = Dataset::new(d, 3, vec![1, 2, 3, 4, 5, 6], vec![0, 1, 2]).unwrap();
        ds.truncate(2);
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.image(1), &[3, 4]);
        ds.truncate(10);
        assert_eq!(ds.len(), 2);
    }
}
