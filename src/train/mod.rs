//! The training loop: data, model, SGD with a cosine schedule, per-epoch
//! validation, metrics.

pub mod metrics;
pub mod plot;

use crate::autograd::no_grad;
use crate::backend::Device;
use crate::data::{Dataset, FashionMnist, Loader, LoaderConfig, Split};
use crate::models::{Arch, ResNet};
use crate::nn::{Mode, Module};
use crate::optim::{CosineSchedule, Sgd, SgdConfig};
use crate::tensor::Tensor;
use crate::{bail, ops, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use metrics::{Accuracy, EpochRecord, MetricsLog};
use std::path::PathBuf;
use std::time::Instant;

/// Everything a training run needs; the CLI fills it from flags.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub arch: Arch,
    pub data_dir: PathBuf,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    pub label_smoothing: f32,
    pub warmup_epochs: f32,
    pub seed: u64,
    pub out: PathBuf,
    /// Use only the first N training images (smoke runs).
    pub train_limit: Option<usize>,
    /// Use only the first N validation images.
    pub val_limit: Option<usize>,
    pub progress: bool,
}

/// Final figures of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    pub records: Vec<EpochRecord>,
}

fn load_split(cfg: &TrainConfig, split: Split, limit: Option<usize>) -> Result<Dataset> {
    let mut d = FashionMnist::load(&cfg.data_dir, split)?;
    if let Some(n) = limit {
        d.truncate(n);
    }
    Ok(d)
}

/// Loss and accuracy of `model` in eval mode over `loader`'s epoch 0.
pub fn evaluate(model: &ResNet, loader: &Loader, device: &Device) -> Result<(f64, Accuracy)> {
    no_grad(|| {
        let mut acc = Accuracy::default();
        let mut loss_sum = 0.0;
        for b in loader.epoch(0) {
            let shape = b.shape();
            let x = Tensor::from_vec(b.images, shape, device)?;
            let logits = model.forward(&x, Mode::Eval)?;
            loss_sum += ops::cross_entropy(&logits, &b.labels, 0.0)?.item()? as f64 * b.n as f64;
            acc.add(&logits.to_vec()?, &b.labels);
        }
        Ok((loss_sum / acc.seen.max(1) as f64, acc))
    })
}

/// Trains `cfg.arch` on Fashion-MNIST, validating every epoch.
pub fn train(cfg: &TrainConfig, device: &Device) -> Result<Summary> {
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        bail!(Usage, "--batch-size and --epochs must be positive");
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let train_data = load_split(cfg, Split::Train, cfg.train_limit)?;
    let val_data = load_split(cfg, Split::Test, cfg.val_limit)?;
    let classes = train_data.num_classes();
    let dims = train_data.dims();
    let norm = FashionMnist::normalize();
    let train_loader = Loader::new(
        train_data,
        LoaderConfig::train(
            cfg.batch_size,
            cfg.seed,
            norm.clone(),
            Some(FashionMnist::augment()),
        ),
    )?;
    let val_loader = Loader::new(val_data, LoaderConfig::eval(256, norm))?;
    let steps_per_epoch = train_loader.batches_per_epoch();
    if steps_per_epoch == 0 {
        bail!(
            Usage,
            "batch size {} exceeds the {} training images",
            cfg.batch_size,
            train_loader.dataset().len()
        );
    }

    let model = ResNet::new(cfg.arch, dims.channels, classes, device, cfg.seed)?;
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
    let schedule = CosineSchedule {
        base_lr: cfg.lr,
        warmup_steps: (cfg.warmup_epochs * steps_per_epoch as f32).round() as usize,
        total_steps: cfg.epochs * steps_per_epoch,
        min_lr: 0.0,
    };
    let log = MetricsLog::new(&cfg.out.join("metrics.jsonl"));
    let mut records = Vec::new();
    let mut step = 0usize;
    for epoch in 0..cfg.epochs {
        let bar = progress_bar(cfg.progress, steps_per_epoch as u64, epoch, cfg.epochs);
        let start = Instant::now();
        let (mut loss_sum, mut acc) = (0.0f64, Accuracy::default());
        let mut lr = cfg.lr;
        for b in train_loader.epoch(epoch as u64) {
            lr = schedule.lr(step);
            let shape = b.shape();
            let x = Tensor::from_vec(b.images, shape, device)?;
            let logits = model.forward(&x, Mode::Train)?;
            let loss = ops::cross_entropy(&logits, &b.labels, cfg.label_smoothing)?;
            let loss_v = loss.item()?;
            if !loss_v.is_finite() {
                crate::autograd::clear_tape();
                bail!(Numerical, "loss became {loss_v} at epoch {epoch}, step {step}: lower --lr or check the data");
            }
            let grads = loss.backward()?;
            sgd.step(&grads, lr)?;
            loss_sum += loss_v as f64 * b.n as f64;
            acc.add(&logits.to_vec()?, &b.labels);
            step += 1;
            let secs = start.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% lr {lr:.4} {:.0} img/s",
                loss_sum / acc.seen as f64,
                acc.top1(),
                acc.seen as f64 / secs
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_secs = start.elapsed().as_secs_f64();
        let (val_loss, val_acc) = evaluate(&model, &val_loader, device)?;
        let rec = EpochRecord {
            epoch: epoch + 1,
            mode: "fp32".into(),
            lr,
            train_loss: loss_sum / acc.seen.max(1) as f64,
            train_top1: acc.top1(),
            val_loss,
            val_top1: val_acc.top1(),
            val_top5: val_acc.top5(),
            images_per_sec: acc.seen as f64 / train_secs,
            epoch_seconds: start.elapsed().as_secs_f64(),
        };
        eprintln!(
            "epoch {}/{}: train loss {:.4} top-1 {:.2}% | val loss {:.4} top-1 {:.2}% top-5 {:.2}% | {:.0} img/s, {:.0} s",
            rec.epoch,
            cfg.epochs,
            rec.train_loss,
            rec.train_top1,
            rec.val_loss,
            rec.val_top1,
            rec.val_top5,
            rec.images_per_sec,
            rec.epoch_seconds
        );
        log.append(&rec)?;
        records.push(rec);
    }
    Ok(Summary { records })
}

fn progress_bar(enabled: bool, len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
    bar
}
