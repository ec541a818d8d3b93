//! The settings of a training run that shape its arithmetic, each with the
//! flag that sets it: what `--resume` takes from the checkpoint (a flag that
//! contradicts it is an error naming both values), and the range checks of
//! a configuration.

use super::{QatSchedule, TrainConfig};
use crate::{bail, Result};
use std::path::PathBuf;

/// A setting whose value differs between two configurations.
#[derive(Clone, Debug, PartialEq)]
pub struct SettingDiff {
    /// The flag that sets it (`--epochs`; `--qat/--fp32` for the mode).
    pub flag: &'static str,
    /// The value in the configuration being checked.
    pub ours: String,
    /// The value it is checked against (the checkpoint's).
    pub saved: String,
}

/// The flag names of [`TrainConfig::settings`], in order.
pub const SETTING_FLAGS: &[&str] = &[
    "--arch",
    "--qat/--fp32",
    "--data",
    "--epochs",
    "--batch-size",
    "--lr",
    "--momentum",
    "--wd",
    "--nesterov",
    "--label-smoothing",
    "--warmup-epochs",
    "--seed",
    "--act-quant-start",
    "--freeze-bn",
    "--freeze-observers",
    "--observer-momentum",
    "--scheme",
    "--train-limit",
    "--val-limit",
    "--init",
    "--calibration-images",
    "--calibration-method",
];

impl TrainConfig {
    /// Every setting that shapes the run (schedule, optimizer, QAT schedule,
    /// data and its limits), as `(flag, value)` in [`SETTING_FLAGS`] order.
    /// The output folder, progress, `--stop-after` and the decoding threads
    /// are not settings: they may change when a run is resumed.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let q = |f: fn(&QatSchedule) -> f32| {
            self.qat.map_or("none (FP32)".into(), |q| f(&q).to_string())
        };
        let limit = |l: Option<usize>| l.map_or("all".into(), |n| n.to_string());
        let values = [
            self.arch.clone(),
            if self.qat.is_some() { "qat" } else { "fp32" }.into(),
            // Components, so that `dir/` and `dir` are the same folder.
            self.data_dir
                .components()
                .collect::<PathBuf>()
                .display()
                .to_string(),
            self.epochs.to_string(),
            self.batch_size.to_string(),
            self.lr.to_string(),
            self.momentum.to_string(),
            self.weight_decay.to_string(),
            self.nesterov.to_string(),
            self.label_smoothing.to_string(),
            self.warmup_epochs.to_string(),
            self.seed.to_string(),
            q(|q| q.act_quant_start),
            q(|q| q.freeze_bn),
            q(|q| q.freeze_observers),
            q(|q| q.observer_momentum),
            self.qat
                .map_or("none (FP32)".into(), |q| q.scheme.name().to_string()),
            limit(self.train_limit),
            limit(self.val_limit),
            self.init.as_ref().map_or("none".into(), |p| {
                p.components().collect::<PathBuf>().display().to_string()
            }),
            self.calibration_images.to_string(),
            self.calibration_method.clone(),
        ];
        SETTING_FLAGS.iter().copied().zip(values).collect()
    }

    /// The settings in which `self` differs from `saved`.
    pub fn setting_differences(&self, saved: &TrainConfig) -> Vec<SettingDiff> {
        self.settings()
            .into_iter()
            .zip(saved.settings())
            .filter(|((_, a), (_, b))| a != b)
            .map(|((flag, ours), (_, saved))| SettingDiff { flag, ours, saved })
            .collect()
    }

    /// Range checks of every setting (the CLI checks each flag as it parses
    /// it; this covers configurations built in code).
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f32| -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                bail!(Usage, "{name} must be a positive number, got {v}");
            }
            Ok(())
        };
        let fraction = |name: &str, v: f32| -> Result<()> {
            if !(v.is_finite() && (0.0..1.0).contains(&v)) {
                bail!(Usage, "{name} must lie in [0, 1), got {v}");
            }
            Ok(())
        };
        if self.epochs == 0 {
            bail!(Usage, "--epochs must be at least 1");
        }
        if self.batch_size == 0 {
            bail!(Usage, "--batch-size must be at least 1");
        }
        positive("--lr", self.lr)?;
        fraction("--momentum", self.momentum)?;
        fraction("--label-smoothing", self.label_smoothing)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                Usage,
                "--wd must be zero or positive, got {}",
                self.weight_decay
            );
        }
        if !(self.warmup_epochs.is_finite()
            && self.warmup_epochs >= 0.0
            && self.warmup_epochs <= self.epochs as f32)
        {
            bail!(
                Usage,
                "--warmup-epochs must lie in [0, --epochs] = [0, {}], got {}",
                self.epochs,
                self.warmup_epochs
            );
        }
        if self.train_limit == Some(0) || self.val_limit == Some(0) {
            bail!(Usage, "--train-limit and --val-limit must be at least 1");
        }
        if let Some(n) = self.stop_after {
            if n == 0 || n > self.epochs {
                bail!(
                    Usage,
                    "--stop-after must lie in [1, --epochs] = [1, {}], got {n}",
                    self.epochs
                );
            }
        }
        if !(self.progress_secs.is_finite() && self.progress_secs > 0.0) {
            bail!(
                Usage,
                "--progress-secs must be a positive number, got {}",
                self.progress_secs
            );
        }
        Ok(())
    }
}
