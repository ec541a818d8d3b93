//! The QAT schedule: when activation quantization starts, when observers and
//! batch-norm statistics freeze. Positions are in epochs (fractions allowed)
//! and resolve to global steps.

use crate::nn::QatFlags;
use crate::quant::params::Scheme;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct QatSchedule {
    /// Epoch at which activations start being fake-quantized (observers
    /// watch from step 0; weights are fake-quantized from step 0).
    pub act_quant_start: f32,
    /// Epoch at which batch-norm statistics freeze (exact folding from then).
    pub freeze_bn: f32,
    /// Epoch at which observers freeze (scales and zero points fixed).
    pub freeze_observers: f32,
    /// EMA weight of a new batch in the observers.
    pub observer_momentum: f32,
    /// How observed ranges become scales and zero points (S2 / S2s);
    /// checkpoints written before the option existed are asymmetric.
    #[serde(default)]
    pub scheme: Scheme,
}

impl QatSchedule {
    /// The default schedule for an `epochs`-long run: activation quantization
    /// after one epoch (half the run if shorter); batch norm frozen for the
    /// last 5% and observers for the last 2.5%. Freezing batch norm removes
    /// the normalization from the training forward, which is only stable once
    /// the cosine learning rate has decayed (below about 1% of its peak):
    /// freezing at 80% of a from-scratch run (lr ~ 0.1 * peak) diverged in
    /// our Fashion-MNIST experiments, freezing at 95% did not.
    pub fn default_for(epochs: usize) -> Self {
        let e = epochs as f32;
        QatSchedule {
            act_quant_start: if epochs >= 2 { 1.0 } else { 0.5 * e },
            freeze_bn: 0.95 * e,
            freeze_observers: 0.975 * e,
            observer_momentum: 0.1,
            scheme: Scheme::Asymmetric,
        }
    }

    /// Fine-tuning a trained (and calibrated) model: activations quantized
    /// from the first step, batch norm frozen at 30% and observers at 40%
    /// of the run (torchvision's QAT reference freezes them after 3 and 4
    /// of its 10 epochs).
    pub fn fine_tune(epochs: usize) -> Self {
        let e = epochs as f32;
        QatSchedule {
            act_quant_start: 0.0,
            freeze_bn: 0.3 * e,
            freeze_observers: 0.4 * e,
            observer_momentum: 0.1,
            scheme: Scheme::Asymmetric,
        }
    }

    /// Rejects schedules that cannot work: negative positions, or observers
    /// frozen before they saw a batch.
    pub fn validate(&self, steps_per_epoch: usize) -> crate::Result<()> {
        let all = [self.act_quant_start, self.freeze_bn, self.freeze_observers];
        if all.iter().any(|v| !v.is_finite() || *v < 0.0) {
            crate::bail!(
                Usage,
                "QAT schedule positions must be non-negative epochs, got {all:?}"
            );
        }
        if Self::step_of(self.freeze_observers, steps_per_epoch) == 0 {
            crate::bail!(Usage, "--freeze-observers {} freezes the observers before they see any batch: use a later epoch", self.freeze_observers);
        }
        if !(self.observer_momentum > 0.0 && self.observer_momentum <= 1.0) {
            crate::bail!(
                Usage,
                "--observer-momentum must lie in (0, 1], got {}",
                self.observer_momentum
            );
        }
        Ok(())
    }

    /// The global step at which epoch position `epoch` (fractions allowed)
    /// begins.
    pub fn step_of(epoch: f32, steps_per_epoch: usize) -> u64 {
        (epoch.max(0.0) as f64 * steps_per_epoch as f64).round() as u64
    }

    /// The flags in force at global step `step`.
    pub fn flags(&self, step: u64, steps_per_epoch: usize) -> QatFlags {
        QatFlags {
            quantize_acts: step >= Self::step_of(self.act_quant_start, steps_per_epoch),
            observe: step < Self::step_of(self.freeze_observers, steps_per_epoch),
            bn_frozen: step >= Self::step_of(self.freeze_bn, steps_per_epoch),
        }
    }

    /// True at the step where observers freeze.
    pub fn freezes_observers_at(&self, step: u64, steps_per_epoch: usize) -> bool {
        step == Self::step_of(self.freeze_observers, steps_per_epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_in_order() {
        let s = QatSchedule::default_for(20);
        assert_eq!(
            (s.act_quant_start, s.freeze_bn, s.freeze_observers),
            (1.0, 19.0, 19.5)
        );
        let f = s.flags(0, 100);
        assert!(!f.quantize_acts && f.observe && !f.bn_frozen);
        let f = s.flags(100, 100);
        assert!(f.quantize_acts && f.observe && !f.bn_frozen);
        let f = s.flags(1920, 100);
        assert!(f.quantize_acts && f.observe && f.bn_frozen);
        let f = s.flags(1950, 100);
        assert!(!f.observe && s.freezes_observers_at(1950, 100));
    }
}
