//! The training loop: data, model (FP32 or QAT), SGD with a cosine schedule,
//! the QAT schedule, per-epoch validation of the integer-exact model,
//! metrics, plots, atomic checkpoints and exact resume.

pub mod metrics;
pub mod plot;
mod schedule;

pub use schedule::QatSchedule;

use crate::autograd::no_grad;
use crate::backend::Device;
use crate::checkpoint::{Checkpoint, Position};
use crate::data::{Batch, DataSpec, Loader, SourceOptions};
use crate::int8::Int8ResNet;
use crate::models::{Arch, ResNet};
use crate::nn::{Mode, Module};
use crate::optim::{CosineSchedule, Sgd, SgdConfig};
use crate::rng::{stream, Rng};
use crate::tensor::Tensor;
use crate::{bail, ops, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use metrics::{Accuracy, EpochRecord, MetricsLog};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything a training run needs; the CLI fills it from flags. Saved in
/// every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub arch: String,
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
    /// Quantization-aware training with this schedule; FP32 when `None`.
    pub qat: Option<QatSchedule>,
    /// Use only the first N training images (smoke runs).
    pub train_limit: Option<usize>,
    /// Use only the first N validation images.
    pub val_limit: Option<usize>,
    pub progress: bool,
    /// Stop (after checkpointing) once this many epochs are done, e.g. to
    /// split a run; `--resume` continues it.
    #[serde(default)]
    pub stop_after: Option<usize>,
    /// Decoding threads for image folders (0: all cores).
    #[serde(default)]
    pub workers: usize,
}

/// What a checkpoint says about the model, so `eval` and `export` can rebuild it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    pub arch: String,
    pub in_channels: usize,
    pub num_classes: usize,
    pub class_names: Vec<String>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub input_hw: [usize; 2],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Extra {
    config: TrainConfig,
    model: ModelInfo,
    quantizers: std::collections::BTreeMap<String, crate::nn::ActQuantState>,
}

/// Final figures of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    pub records: Vec<EpochRecord>,
}

/// The checkpoint written after every epoch.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

/// Builds the model a checkpoint describes and loads its weights and
/// quantizer states.
pub fn model_from_checkpoint(
    ck: &Checkpoint,
    device: &Device,
) -> Result<(ResNet, ModelInfo, TrainConfig)> {
    let extra: Extra = serde_json::from_value(ck.extra.clone()).map_err(|e| {
        Error::Data(format!(
            "checkpoint metadata is not a qat training checkpoint: {e}"
        ))
    })?;
    let arch: Arch = extra.model.arch.parse()?;
    let mut model = ResNet::new(
        arch,
        extra.model.in_channels,
        extra.model.num_classes,
        device,
        0,
    )?;
    if extra.config.qat.is_some() {
        model.quantize(extra.config.qat.map_or(0.01, |q| q.observer_momentum));
        model.load_quantizers(&extra.quantizers)?;
    }
    ck.restore_module(&model)?;
    Ok((model, extra.model, extra.config))
}

/// Loss and accuracy over `loader`: the float model for FP32, the
/// integer-exact model (S9) for QAT.
pub fn evaluate(model: &ResNet, loader: &Loader, device: &Device) -> Result<(f64, Accuracy)> {
    evaluate_batches(model, loader.epoch(0), device)
}

/// [`evaluate`] over any batches (a [`crate::data::DataSource`]'s
/// validation batches).
pub fn evaluate_batches(
    model: &ResNet,
    batches: impl Iterator<Item = Batch>,
    device: &Device,
) -> Result<(f64, Accuracy)> {
    no_grad(|| {
        let int8 = if model.is_quantized() {
            Some(Int8ResNet::build(model)?)
        } else {
            None
        };
        let mut acc = Accuracy::default();
        let mut loss_sum = 0.0;
        for b in batches {
            let shape = b.shape();
            let x = Tensor::from_vec(b.images, shape, device)?;
            let logits = match &int8 {
                Some(m) => m.forward(&x)?,
                None => model.forward(&x, Mode::Eval)?,
            };
            loss_sum += ops::cross_entropy(&logits, &b.labels, 0.0)?.item()? as f64 * b.n as f64;
            acc.add(&logits.to_vec()?, &b.labels);
        }
        Ok((loss_sum / acc.seen.max(1) as f64, acc))
    })
}

/// Trains on `cfg.data_dir` (Fashion-MNIST or `imagenet:ROOT`, see
/// [`DataSpec`]), validating and checkpointing every epoch. With
/// `resume`, continues from `OUT/checkpoint.safetensors` exactly where it
/// stopped (same batches, same losses as an uninterrupted run).
pub fn train(cfg: &TrainConfig, device: &Device, resume: bool) -> Result<Summary> {
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        bail!(Usage, "--batch-size and --epochs must be positive");
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let ck_path = checkpoint_path(&cfg.out);
    // The data source: Fashion-MNIST in memory or an ImageFolder tree.
    let source = DataSpec::from_path(&cfg.data_dir).open(&SourceOptions {
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        train_limit: cfg.train_limit,
        val_limit: cfg.val_limit,
        workers: cfg.workers,
    })?;
    eprintln!("data: {}", source.describe());
    let dims = source.input_dims();
    let norm = source.normalize();
    let info = ModelInfo {
        arch: cfg.arch.clone(),
        in_channels: dims.channels,
        num_classes: source.num_classes(),
        class_names: source.class_names(),
        mean: norm.mean().to_vec(),
        std: norm.std().to_vec(),
        input_hw: [dims.height, dims.width],
    };
    let steps_per_epoch = source.batches_per_epoch();
    if steps_per_epoch == 0 {
        bail!(
            Usage,
            "batch size {} exceeds the {} training images",
            cfg.batch_size,
            source.train_len()
        );
    }

    if let Some(q) = &cfg.qat {
        q.validate(steps_per_epoch)?;
    }
    let arch: Arch = cfg.arch.parse()?;
    let mut model = ResNet::new(arch, info.in_channels, info.num_classes, device, cfg.seed)?;
    if let Some(q) = cfg.qat {
        model.quantize(q.observer_momentum);
    }
    let sgd_cfg = SgdConfig {
        lr: cfg.lr,
        momentum: cfg.momentum,
        weight_decay: cfg.weight_decay,
        nesterov: cfg.nesterov,
        decay_all: false,
    };
    let mut sgd = Sgd::new(&model.parameters(), sgd_cfg)?;
    let schedule = CosineSchedule {
        base_lr: cfg.lr,
        warmup_steps: (cfg.warmup_epochs * steps_per_epoch as f32).round() as usize,
        total_steps: cfg.epochs * steps_per_epoch,
        min_lr: 0.0,
    };
    if let Some(q) = &cfg.qat {
        // Once batch norm is folded for good, nothing renormalizes the
        // weights: a freeze while the learning rate is still high makes QAT
        // diverge (seen with a 1-epoch run whose warm-up covered the freeze).
        let t = QatSchedule::step_of(q.freeze_bn, steps_per_epoch) as usize;
        let lr = schedule.lr(t);
        if t < schedule.total_steps && lr > 0.1 * cfg.lr {
            eprintln!(
                "warning: batch norm freezes at epoch {} while the learning rate is still {lr:.3} \
                 ({:.0}% of its peak); QAT usually diverges after such a freeze. Use a later \
                 --freeze-bn or a shorter --warmup-epochs.",
                q.freeze_bn,
                100.0 * lr / cfg.lr
            );
        }
    }
    let log = MetricsLog::new(&cfg.out.join("metrics.jsonl"));
    let mut records = Vec::new();
    let mut start_epoch = 0;
    if resume {
        if !ck_path.exists() {
            bail!(
                Usage,
                "--resume: no checkpoint at {}; start without --resume",
                ck_path.display()
            );
        }
        let ck = Checkpoint::load(&ck_path)?;
        let (loaded, _, saved_cfg) = model_from_checkpoint(&ck, device)?;
        if saved_cfg.arch != cfg.arch || saved_cfg.qat.is_some() != cfg.qat.is_some() {
            bail!(
                Usage,
                "--resume: the checkpoint is a {} {} run; use the same --arch and --qat/--fp32",
                saved_cfg.arch,
                if saved_cfg.qat.is_some() {
                    "QAT"
                } else {
                    "FP32"
                }
            );
        }
        // Copy the loaded state into the model whose parameters the
        // optimizer holds.
        Checkpoint::from_module(&loaded)?.restore_module(&model)?;
        if cfg.qat.is_some() {
            model.load_quantizers(&loaded.save_quantizers())?;
        }
        ck.restore_optimizer(&mut sgd)?;
        start_epoch = ck.position.epoch;
        // Every random draw of the run derives from the seed; the checkpoint
        // holds the state of the next epoch's order generator. A different
        // seed would silently change the data order after the resume.
        if saved_cfg.seed != cfg.seed {
            bail!(
                Usage,
                "--resume: the checkpoint was trained with --seed {}; pass --seed {} to continue it exactly",
                saved_cfg.seed,
                saved_cfg.seed
            );
        }
        let expected = data_order_rng(cfg.seed, start_epoch).get_state();
        if ck.rng.get(DATA_ORDER_RNG).is_some_and(|s| *s != expected) {
            bail!(
                Data,
                "--resume: the checkpoint's data-order generator state differs from the one this \
                 build derives from --seed {} at epoch {start_epoch}, so the run cannot continue \
                 exactly (written by a build with other random streams?)",
                cfg.seed
            );
        }
        // Keep the metrics of the epochs the checkpoint covers.
        let kept: Vec<EpochRecord> = log
            .read()?
            .into_iter()
            .filter(|r| r.epoch <= start_epoch)
            .collect();
        log.rewrite(&kept)?;
        records = kept;
        eprintln!("resumed from {} at epoch {start_epoch}", ck_path.display());
    } else {
        // A new run: the metrics of whatever ran in this folder before go.
        log.rewrite(&[])?;
    }
    let mode_name = if cfg.qat.is_some() { "qat" } else { "fp32" };
    for epoch in start_epoch..cfg.epochs {
        let bar = progress_bar(cfg.progress, steps_per_epoch as u64, epoch, cfg.epochs);
        let start = Instant::now();
        let (mut loss_sum, mut acc) = (0.0f64, Accuracy::default());
        let mut lr = cfg.lr;
        for (i, b) in source.train_batches(epoch as u64, 0).enumerate() {
            let step = (epoch * steps_per_epoch + i) as u64;
            lr = schedule.lr(step as usize);
            if let Some(q) = cfg.qat {
                model.set_qat_flags(q.flags(step, steps_per_epoch));
                if q.freezes_observers_at(step, steps_per_epoch) {
                    model.freeze_quantizers()?;
                }
            }
            let shape = b.shape();
            let x = Tensor::from_vec(b.images, shape, device)?;
            let logits = model.forward(&x, Mode::Train)?;
            let loss = ops::cross_entropy(&logits, &b.labels, cfg.label_smoothing)?;
            let loss_v = loss.item()?;
            if !loss_v.is_finite() {
                crate::autograd::clear_tape();
                bail!(
                    Numerical,
                    "loss became {loss_v} at epoch {}, step {step}; the last good checkpoint ({}) is kept. Lower --lr and resume or restart",
                    epoch + 1,
                    ck_path.display()
                );
            }
            let grads = loss.backward()?;
            sgd.step(&grads, lr)?;
            loss_sum += loss_v as f64 * b.n as f64;
            acc.add(&logits.to_vec()?, &b.labels);
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% lr {lr:.4} {:.0} img/s",
                loss_sum / acc.seen as f64,
                acc.top1(),
                acc.seen as f64 / start.elapsed().as_secs_f64()
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_secs = start.elapsed().as_secs_f64();
        let (val_loss, val_acc) = evaluate_batches(&model, source.val_batches(), device)?;
        let rec = EpochRecord {
            epoch: epoch + 1,
            mode: mode_name.into(),
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
            "epoch {}/{} [{mode_name}]: train loss {:.4} top-1 {:.2}% | val{} loss {:.4} top-1 {:.2}% top-5 {:.2}% | {:.0} img/s, {:.0} s",
            rec.epoch,
            cfg.epochs,
            rec.train_loss,
            rec.train_top1,
            if cfg.qat.is_some() { " (int8)" } else { "" },
            rec.val_loss,
            rec.val_top1,
            rec.val_top5,
            rec.images_per_sec,
            rec.epoch_seconds
        );
        save_checkpoint(
            &ck_path,
            &model,
            &sgd,
            cfg,
            &info,
            epoch + 1,
            (epoch + 1) * steps_per_epoch,
        )?;
        log.append(&rec)?;
        records.push(rec);
        plot::plot_metrics(&records, &cfg.out.join("curves.png"))?;
        if cfg.stop_after == Some(epoch + 1) {
            eprintln!(
                "stopping after epoch {} (--stop-after); continue with --resume",
                epoch + 1
            );
            break;
        }
    }
    Ok(Summary { records })
}

/// Checkpoint name of the RNG state that draws the data order of the epoch
/// the checkpoint resumes at.
const DATA_ORDER_RNG: &str = "data_order";

/// The generator of epoch `epoch`'s data order (the per-sample augmentation
/// streams derive from the same seed and epoch, see [`crate::rng::stream`]).
fn data_order_rng(seed: u64, epoch: usize) -> Rng {
    Rng::derive(seed, &[stream::PERMUTATION, epoch as u64])
}

fn save_checkpoint(
    path: &Path,
    model: &ResNet,
    sgd: &Sgd,
    cfg: &TrainConfig,
    info: &ModelInfo,
    epoch: usize,
    global_step: usize,
) -> Result<()> {
    let mut ck = Checkpoint::from_module(model)?;
    ck.capture_optimizer(sgd)?;
    ck.position = Position {
        epoch,
        step_in_epoch: 0,
        global_step: global_step as u64,
    };
    ck.set_rng(DATA_ORDER_RNG, &data_order_rng(cfg.seed, epoch));
    let extra = Extra {
        config: cfg.clone(),
        model: info.clone(),
        quantizers: model.save_quantizers(),
    };
    ck.extra = serde_json::to_value(extra)
        .map_err(|e| Error::Data(format!("checkpoint metadata: {e}")))?;
    ck.save(path)
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
