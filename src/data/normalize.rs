//! `u8` pixels to normalized `f32`: `(v / 255 - mean[c]) / std[c]`.
//!
//! A `u8` has only 256 values, so each channel gets a 256-entry lookup table:
//! the conversion is one load per pixel and gives the same bits on every
//! machine and thread.

use super::dataset::{Dataset, ImageDims};
use crate::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
    /// `lut[c][v]` is the normalized value of pixel `v` in channel `c`.
    lut: Vec<[f32; 256]>,
}

impl Normalize {
    /// One `(mean, std)` per channel, both on the `[0, 1]` pixel scale.
    pub fn new(mean: &[f32], std: &[f32]) -> Result<Self> {
        if mean.is_empty() || mean.len() != std.len() {
            bail!(
                Data,
                "normalize: {} means for {} stds",
                mean.len(),
                std.len()
            );
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            bail!(Data, "normalize: std {s} must be positive and finite");
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            bail!(Data, "normalize: mean {m} must be finite");
        }
        let lut = mean
            .iter()
            .zip(std)
            .map(|(&m, &s)| std::array::from_fn(|v| (v as f32 / 255.0 - m) / s))
            .collect();
        Ok(Normalize {
            mean: mean.to_vec(),
            std: std.to_vec(),
            lut,
        })
    }

    /// Scales pixels to `[0, 1]` only (mean 0, std 1 for every channel).
    ///
    /// # Panics
    /// If `channels == 0`.
    pub fn identity(channels: usize) -> Self {
        Normalize::new(&vec![0.0; channels], &vec![1.0; channels]).expect("valid constants")
    }

    /// The statistics of `data` itself (for a new dataset; prefer published
    /// constants when they exist, so evaluation uses the same numbers).
    pub fn from_dataset(data: &Dataset) -> Result<Self> {
        let (mean, std): (Vec<f32>, Vec<f32>) = data
            .channel_stats()
            .into_iter()
            .map(|(m, s)| (m as f32, s as f32))
            .unzip();
        Normalize::new(&mean, &std)
    }

    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    pub fn std(&self) -> &[f32] {
        &self.std
    }

    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Normalizes one CHW image into `dst`.
    ///
    /// # Panics
    /// If `src` or `dst` do not hold `dims.numel()` values or the channel
    /// counts differ (the loader checks this once up front).
    pub fn apply(&self, src: &[u8], dst: &mut [f32], dims: ImageDims) {
        assert_eq!(dims.channels, self.channels(), "normalize: channel count");
        assert_eq!(src.len(), dims.numel(), "normalize: source size");
        assert_eq!(dst.len(), dims.numel(), "normalize: destination size");
        let plane = dims.height * dims.width;
        for ((s, d), lut) in src
            .chunks_exact(plane)
            .zip(dst.chunks_exact_mut(plane))
            .zip(&self.lut)
        {
            for (&v, out) in s.iter().zip(d) {
                *out = lut[usize::from(v)];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_per_channel_constants() {
        let n = Normalize::new(&[0.0, 0.5], &[1.0, 0.5]).unwrap();
        let mut out = [0.0f32; 4];
        n.apply(&[0, 255, 0, 255], &mut out, ImageDims::new(2, 1, 2));
        assert_eq!(out, [0.0, 1.0, -1.0, 1.0]);
    }

    #[test]
    fn rejects_bad_constants() {
        assert!(Normalize::new(&[0.5], &[0.0]).is_err());
        assert!(Normalize::new(&[0.5], &[]).is_err());
        assert!(Normalize::new(&[f32::NAN], &[1.0]).is_err());
    }
}
