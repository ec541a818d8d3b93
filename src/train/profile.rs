//! `qat train --profile N`: where a training step's time goes. The model and
//! data are set up as `train` would (same flags), then N steps (after two
//! warm-up steps) run on the device behind a
//! [`crate::backend::profile::Profiler`]. Each phase of the step (data,
//! forward with the loss, backward, optimizer) is timed as a whole, and
//! within it every backend primitive; the rest of a phase ("outside the
//! backend": autograd bookkeeping, host-side tensor code, allocation) is
//! the difference. Nothing is written: no checkpoint, no log.
//!
//! QAT runs with the flags of the schedule's main phase: weights and
//! activations fake-quantized, observers updating, batch norm training.

use super::TrainConfig;
use crate::backend::profile::{kind, OpTime, Phase};
use crate::data::{DataSpec, SourceOptions};
use crate::nn::{Mode, Module, QatFlags};
use crate::optim::{Sgd, SgdConfig};
use crate::{bail, ops, Device, Result, Tensor};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Steps run before the measured ones (caches, first allocations).
pub const WARMUP_STEPS: usize = 2;

/// The measured steps.
#[derive(Clone, Debug)]
pub struct StepProfile {
    pub device: String,
    pub mode: &'static str,
    pub steps: usize,
    pub batch_size: usize,
    /// Wall time of each phase over all measured steps.
    pub phases: BTreeMap<Phase, Duration>,
    /// Each primitive's calls and time, per phase.
    pub ops: BTreeMap<(Phase, &'static str), OpTime>,
}

impl StepProfile {
    pub fn total(&self) -> Duration {
        self.phases.values().sum()
    }

    pub fn images_per_sec(&self) -> f64 {
        (self.steps * self.batch_size) as f64 / self.total().as_secs_f64().max(1e-12)
    }

    /// Time inside the backend during `phase`.
    pub fn in_backend(&self, phase: Phase) -> Duration {
        self.ops
            .iter()
            .filter(|((p, _), _)| *p == phase)
            .map(|(_, t)| t.time)
            .sum()
    }

    /// The report: per phase, per kind of primitive, then every primitive.
    pub fn table(&self) -> String {
        let steps = self.steps.max(1) as f64;
        let total = self.total().as_secs_f64().max(1e-12);
        let ms = |d: Duration| 1e3 * d.as_secs_f64() / steps;
        let pct = |d: Duration| 100.0 * d.as_secs_f64() / total;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} training on {}: {} steps of {} images after {WARMUP_STEPS} warm-up steps, {:.2} ms/step, {:.1} images/s",
            self.mode,
            self.device,
            self.steps,
            self.batch_size,
            1e3 * total / steps,
            self.images_per_sec()
        );
        let _ = writeln!(s, "\n{:<34} {:>10} {:>7}", "phase", "ms/step", "share");
        for (&p, &d) in &self.phases {
            let inside = self.in_backend(p);
            let _ = writeln!(s, "{:<34} {:>10.3} {:>6.1}%", p.name(), ms(d), pct(d));
            let _ = writeln!(
                s,
                "{:<34} {:>10.3} {:>6.1}%",
                format!("  {} outside the backend", p.name()),
                ms(d.saturating_sub(inside)),
                pct(d.saturating_sub(inside))
            );
        }
        let mut kinds: BTreeMap<(Phase, &str), (u64, Duration)> = BTreeMap::new();
        for (&(p, op), t) in &self.ops {
            let e = kinds.entry((p, kind(op))).or_default();
            e.0 += t.calls;
            e.1 += t.time;
        }
        let mut rows: Vec<_> = kinds.into_iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
        let _ = writeln!(
            s,
            "\n{:<11} {:<22} {:>10} {:>10} {:>7}",
            "phase", "kind", "calls/step", "ms/step", "share"
        );
        for ((p, k), (calls, d)) in rows {
            let _ = writeln!(
                s,
                "{:<11} {:<22} {:>10.1} {:>10.3} {:>6.1}%",
                p.name(),
                k,
                calls as f64 / steps,
                ms(d),
                pct(d)
            );
        }
        let mut ops: Vec<_> = self.ops.iter().collect();
        ops.sort_by_key(|o| std::cmp::Reverse(o.1.time));
        let _ = writeln!(
            s,
            "\n{:<11} {:<24} {:>10} {:>10} {:>7}",
            "phase", "primitive", "calls/step", "ms/step", "share"
        );
        for ((p, op), t) in ops {
            let _ = writeln!(
                s,
                "{:<11} {:<24} {:>10.1} {:>10.3} {:>6.1}%",
                p.name(),
                op,
                t.calls as f64 / steps,
                ms(t.time),
                pct(t.time)
            );
        }
        s
    }
}

/// Profiles `steps` training steps of `cfg` on `device`.
pub fn profile(cfg: &TrainConfig, device: &Device, steps: usize) -> Result<StepProfile> {
    if steps == 0 {
        bail!(Usage, "--profile needs at least 1 step");
    }
    cfg.validate()?;
    let source = DataSpec::from_path(&cfg.data_dir).open(&SourceOptions {
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        train_limit: cfg.train_limit,
        val_limit: Some(1),
        workers: cfg.workers,
    })?;
    let mut info = super::source_info(cfg, source.as_ref());
    let (dev, prof) = device.profiled();
    let mut model = super::new_model(cfg, &mut info, &dev)?;
    super::prepare_quantizers(&mut model, cfg, source.as_ref(), &dev, false)?;
    if cfg.qat.is_some() {
        model.set_qat_flags(QatFlags {
            quantize_acts: true,
            observe: true,
            bn_frozen: false,
        });
    }
    let mut sgd = Sgd::new(
        &model.parameters(),
        SgdConfig {
            lr: cfg.lr,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            nesterov: cfg.nesterov,
            decay_all: false,
        },
    )?;
    let mut phases: BTreeMap<Phase, Duration> = BTreeMap::new();
    let mut batches = std::iter::from_fn(|| Some(source.train_batches(0, 0))).flatten();
    prof.take();
    for step in 0..WARMUP_STEPS + steps {
        if step == WARMUP_STEPS {
            prof.take();
            phases.clear();
        }
        let timed = |p: Phase, phases: &mut BTreeMap<Phase, Duration>, t: Instant| -> Result<()> {
            dev.backend().synchronize()?;
            *phases.entry(p).or_default() += t.elapsed();
            Ok(())
        };
        prof.set_phase(Phase::Data);
        let t = Instant::now();
        let Some(b) = batches.next() else {
            bail!(Data, "no training batches: the training set is empty");
        };
        let shape = b.shape();
        let x = Tensor::from_vec(b.images, shape, &dev)?;
        timed(Phase::Data, &mut phases, t)?;
        prof.set_phase(Phase::Forward);
        let t = Instant::now();
        let logits = model.forward(&x, Mode::Train)?;
        let loss = ops::cross_entropy(&logits, &b.labels, cfg.label_smoothing)?;
        let loss_v = loss.item()?;
        timed(Phase::Forward, &mut phases, t)?;
        if !loss_v.is_finite() {
            bail!(
                Numerical,
                "the training loss became {loss_v} at profiled step {step}"
            );
        }
        prof.set_phase(Phase::Backward);
        let t = Instant::now();
        let grads = loss.backward()?;
        timed(Phase::Backward, &mut phases, t)?;
        prof.set_phase(Phase::Optimizer);
        let t = Instant::now();
        sgd.step(&grads, cfg.lr)?;
        drop(grads);
        timed(Phase::Optimizer, &mut phases, t)?;
    }
    Ok(StepProfile {
        device: device.backend().name(),
        mode: if cfg.qat.is_some() { "QAT" } else { "FP32" },
        steps,
        batch_size: cfg.batch_size,
        phases,
        ops: prof.take(),
    })
}
