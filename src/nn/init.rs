//! Weight initializers (torchvision's ResNet conventions).

use crate::rng::Rng;

/// Kaiming normal with `fan_out` and ReLU gain: std = sqrt(2 / fan_out),
/// fan_out = out_channels * kh * kw (torchvision ResNet convs).
pub fn kaiming_normal_fan_out(rng: &mut Rng, len: usize, fan_out: usize) -> Vec<f32> {
    let std = (2.0 / fan_out as f32).sqrt();
    (0..len).map(|_| rng.normal() * std).collect()
}

/// Uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's Linear default
/// for the bias, and its effective weight range).
pub fn uniform_fan_in(rng: &mut Rng, len: usize, fan_in: usize) -> Vec<f32> {
    let b = 1.0 / (fan_in as f32).sqrt();
    (0..len).map(|_| rng.uniform_range(-b, b)).collect()
}
