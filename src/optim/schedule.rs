//! Cosine learning-rate decay with linear warm-up, stepped per iteration.

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CosineSchedule {
    pub base_lr: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
    /// Learning rate at the end of the schedule.
    pub min_lr: f32,
}

impl CosineSchedule {
    /// The learning rate for step `t` (0-based): linear from `base_lr /
    /// warmup_steps` up to `base_lr` over the warm-up, then
    /// `min + (base - min) * (1 + cos(pi * p)) / 2` with `p` the fraction of the
    /// remaining steps done.
    pub fn lr(&self, t: usize) -> f32 {
        if t < self.warmup_steps {
            return self.base_lr * (t + 1) as f32 / self.warmup_steps as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let p = ((t - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * p).cos());
        (self.min_lr as f64 + (self.base_lr - self.min_lr) as f64 * cos) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = CosineSchedule {
            base_lr: 0.1,
            warmup_steps: 10,
            total_steps: 110,
            min_lr: 0.0,
        };
        assert!((s.lr(0) - 0.01).abs() < 1e-7);
        assert!((s.lr(9) - 0.1).abs() < 1e-7);
        assert!((s.lr(10) - 0.1).abs() < 1e-7);
        assert!((s.lr(60) - 0.05).abs() < 1e-6);
        assert!(s.lr(110).abs() < 1e-7);
        assert!(s.lr(500).abs() < 1e-7);
        for t in 10..110 {
            assert!(s.lr(t + 1) <= s.lr(t));
        }
    }
}
