//! The training loop: data, model (FP32 or QAT), SGD with a cosine schedule,
//! the QAT schedule, per-epoch validation of the integer-exact model,
//! metrics, plots, atomic checkpoints and exact resume.

pub mod metrics;
pub mod plot;
pub mod profile;
pub mod progress;
pub mod run_dir;
mod schedule;
mod settings;

pub use progress::ProgressMode;
pub use run_dir::RunDir;
pub use schedule::QatSchedule;
pub use settings::SettingDiff;

use crate::autograd::no_grad;
use crate::backend::Device;
use crate::checkpoint::{Checkpoint, Position};
use crate::data::{Batch, DataSpec, Loader, SourceOptions};
use crate::graph::Graph;
use crate::int8::Int8Net;
use crate::models::{self, Arch};
use crate::nn::{Mode, Module};
use crate::optim::{CosineSchedule, Sgd, SgdConfig};
use crate::quant::params::Scheme;
use crate::rng::{stream, Rng};
use crate::saved_model::{self, ModelInfo};
use crate::tensor::Tensor;
use crate::{bail, ops, Error, Result};
use metrics::{Accuracy, EpochRecord, MetricsLog};
use progress::Progress;
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
    /// Show progress (a bar on a terminal, else a line every
    /// `progress_secs` seconds).
    pub progress: bool,
    /// Seconds between progress lines when stderr is not a terminal.
    #[serde(default = "default_progress_secs")]
    pub progress_secs: f32,
    /// Stop (after checkpointing) once this many epochs are done, e.g. to
    /// split a run; `--resume` continues it.
    #[serde(default)]
    pub stop_after: Option<usize>,
    /// Decoding threads for image folders (0: all cores).
    #[serde(default)]
    pub workers: usize,
    /// Start from these weights (a checkpoint, FP32 or calibrated, or an
    /// FP32 ONNX file) instead of a fresh initialization: fine-tuning.
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// QAT from an FP32 `init`: training images the activation quantizers
    /// are calibrated on before the first step.
    #[serde(default = "default_calibration_images")]
    pub calibration_images: usize,
    /// How those ranges are chosen: `minmax`, `percentile` (99.99) or `mse`
    /// ([`crate::quant::calibrate::Method::parse`]).
    #[serde(default = "default_calibration_method")]
    pub calibration_method: String,
}

/// The default of [`TrainConfig::calibration_method`].
pub const DEFAULT_CALIBRATION_METHOD: &str = "percentile";

fn default_calibration_method() -> String {
    DEFAULT_CALIBRATION_METHOD.into()
}

/// The default of [`TrainConfig::calibration_images`].
pub const DEFAULT_CALIBRATION_IMAGES: usize = 1024;

fn default_calibration_images() -> usize {
    DEFAULT_CALIBRATION_IMAGES
}

/// Seconds between progress lines in logs (the default of
/// [`TrainConfig::progress_secs`]).
pub const DEFAULT_PROGRESS_SECS: f32 = 30.0;

fn default_progress_secs() -> f32 {
    DEFAULT_PROGRESS_SECS
}

/// A checkpoint's JSON metadata.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Extra {
    config: TrainConfig,
    model: ModelInfo,
    quantizers: std::collections::BTreeMap<String, crate::nn::ActQuantState>,
    /// The metrics of every epoch the checkpoint covers: `metrics.jsonl` is
    /// rebuilt from them on resume, so a kill between the checkpoint's
    /// rename and the log's append loses nothing. `None` in checkpoints of
    /// builds before this field (the log is then read, torn line repaired).
    #[serde(default)]
    metrics: Option<Vec<EpochRecord>>,
    /// The topology of a graph no built-in builder makes (runs started from
    /// an imported model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    graph: Option<crate::graph::GraphSpec>,
}

fn read_extra(ck: &Checkpoint) -> Result<Extra> {
    serde_json::from_value(ck.extra.clone()).map_err(|e| {
        Error::Data(format!(
            "checkpoint metadata is not a qat training checkpoint: {e}"
        ))
    })
}

/// The training settings saved in the checkpoint in `out` (what `--resume`
/// continues).
pub fn saved_config(out: &Path) -> Result<TrainConfig> {
    let path = checkpoint_path(out);
    if !path.exists() {
        bail!(
            Usage,
            "--resume: no checkpoint at {}; start without --resume",
            path.display()
        );
    }
    Ok(read_extra(&Checkpoint::load(&path)?)?.config)
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

/// The starting model of a fine-tuning run: an FP32 ONNX file (imported)
/// or a checkpoint (FP32, calibrated or trained), checked against the data
/// (`info`: its channels, classes and normalization). Returns the graph and
/// its architecture name.
fn init_model(path: &Path, info: &ModelInfo, device: &Device) -> Result<(Graph, String)> {
    let is_onnx = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    let (g, channels, classes, arch, norm) = if is_onnx {
        let m = crate::executor::load::read_model(path)?;
        let imp = crate::import::import(&m, device)
            .map_err(|e| Error::Onnx(format!("--init {}: {e}", path.display())))?;
        let (c, k) = (imp.input.channels, imp.num_classes);
        (imp.graph, c, k, saved_model::CUSTOM_ARCH.to_string(), None)
    } else {
        let ck = Checkpoint::load(path)?;
        let (g, i) = saved_model::load(&ck, device)?;
        (
            g,
            i.in_channels,
            i.num_classes,
            i.arch,
            Some((i.mean, i.std)),
        )
    };
    if channels != info.in_channels || classes != info.num_classes {
        bail!(
            Usage,
            "--init {}: the model takes {channels}-channel images and has {classes} classes, but \
             the data has {}-channel images and {} classes",
            path.display(),
            info.in_channels,
            info.num_classes
        );
    }
    if let Some((mean, std)) = norm {
        if mean != info.mean || std != info.std {
            eprintln!(
                "warning: --init {} was trained with mean {mean:?} std {std:?}; this data is \
                 normalized with mean {:?} std {:?}",
                path.display(),
                info.mean,
                info.std
            );
        }
    }
    Ok((g, arch))
}

/// What a model trained on `source` takes and gives (the architecture is
/// `cfg.arch` until the model is built).
fn source_info(cfg: &TrainConfig, source: &dyn crate::data::DataSource) -> ModelInfo {
    let dims = source.input_dims();
    let norm = source.normalize();
    ModelInfo {
        arch: cfg.arch.clone(),
        in_channels: dims.channels,
        num_classes: source.num_classes(),
        class_names: source.class_names(),
        mean: norm.mean().to_vec(),
        std: norm.std().to_vec(),
        input_hw: [dims.height, dims.width],
    }
}

/// The model a new run starts from: `cfg.init`'s weights, or a fresh
/// `cfg.arch` (its name recorded in `info`).
fn new_model(cfg: &TrainConfig, info: &mut ModelInfo, device: &Device) -> Result<Graph> {
    if let Some(init) = &cfg.init {
        let (g, arch) = init_model(init, info, device)?;
        info.arch = arch;
        Ok(g)
    } else {
        let arch: Arch = cfg.arch.parse()?;
        models::build(arch, info.in_channels, info.num_classes, device, cfg.seed)
    }
}

/// QAT: quantizers on an FP32 model (calibrated first when fine-tuning from
/// `--init`), observers of a new run unfrozen; FP32: refuses a QAT model.
fn prepare_quantizers(
    model: &mut Graph,
    cfg: &TrainConfig,
    source: &dyn crate::data::DataSource,
    device: &Device,
    resume: bool,
) -> Result<()> {
    if let Some(q) = cfg.qat {
        if !model.is_quantized() && cfg.init.is_some() && !resume {
            // Fine-tuning an FP32 model: calibrate the quantizers first.
            calibrate_from_source(model, source, cfg, q.observer_momentum, q.scheme, device)?;
        } else if !model.is_quantized() {
            model.quantize(q.observer_momentum, q.scheme);
        } else if model.scheme() != q.scheme {
            bail!(
                Usage,
                "--init {} is a QAT checkpoint of the {} scheme: fine-tune it with --scheme {} \
                 (or start from the FP32 checkpoint it was calibrated from)",
                cfg.init.as_deref().unwrap_or(Path::new("")).display(),
                model.scheme(),
                model.scheme()
            );
        }
        if !resume {
            // The calibrated ranges start the observers, which keep
            // updating until the schedule freezes them.
            for (_, aq) in model.quantizers() {
                aq.load(&crate::nn::ActQuantState {
                    frozen: None,
                    ..aq.save()?
                });
            }
        }
    } else if model.is_quantized() {
        bail!(
            Usage,
            "--init {} is a QAT checkpoint: FP32 training needs FP32 weights (train with QAT, or \
             start from the FP32 checkpoint it was calibrated from)",
            cfg.init.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    Ok(())
}

/// Calibrates an FP32 model's quantizers (`cfg.calibration_method`) on the
/// first `cfg.calibration_images` training images of epoch 0's order.
fn calibrate_from_source(
    model: &mut Graph,
    source: &dyn crate::data::DataSource,
    cfg: &TrainConfig,
    momentum: f32,
    scheme: Scheme,
    device: &Device,
) -> Result<()> {
    let method = crate::quant::calibrate::Method::parse(&cfg.calibration_method)?;
    let (ranges, used) = crate::calibrate::calibrate_on_source(
        model,
        source,
        cfg.calibration_images,
        method,
        momentum,
        scheme,
        device,
    )?;
    eprintln!(
        "calibrated {} activation quantizers on {used} training images ({})",
        ranges.len(),
        method.name()
    );
    Ok(())
}

/// Builds the model a checkpoint describes (see [`crate::saved_model`]) and
/// returns it with the run's training settings.
pub fn model_from_checkpoint(
    ck: &Checkpoint,
    device: &Device,
) -> Result<(Graph, ModelInfo, TrainConfig)> {
    let extra = read_extra(ck)?;
    let (model, info) = saved_model::load(ck, device)?;
    Ok((model, info, extra.config))
}

/// Loss and accuracy over `loader`: the float model for FP32, the
/// integer-exact model (S9) for QAT.
pub fn evaluate(model: &Graph, loader: &Loader, device: &Device) -> Result<(f64, Accuracy)> {
    evaluate_batches(model, loader.epoch(0), device)
}

/// [`evaluate`] over any batches (a [`crate::data::DataSource`]'s
/// validation batches).
pub fn evaluate_batches(
    model: &Graph,
    batches: impl Iterator<Item = Batch>,
    device: &Device,
) -> Result<(f64, Accuracy)> {
    no_grad(|| {
        let int8 = if model.is_quantized() {
            Some(Int8Net::build(model)?)
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
        if acc.seen == 0 {
            bail!(
                Data,
                "no images to evaluate: the evaluation set is empty (a limit of 0, an empty \
                 folder, or no image in it could be read)"
            );
        }
        Ok((loss_sum / acc.seen as f64, acc))
    })
}

/// Trains on `cfg.data_dir` (Fashion-MNIST or `imagenet:ROOT`, see
/// [`DataSpec`]), validating and checkpointing every epoch. With
/// `resume`, continues from `OUT/checkpoint.safetensors` exactly where it
/// stopped (same batches, same losses as an uninterrupted run): every
/// setting of `cfg` (see [`TrainConfig::settings`]) must equal the
/// checkpoint's, else the error names each difference. The output folder is
/// locked for the whole run (see [`RunDir`]).
pub fn train(cfg: &TrainConfig, device: &Device, resume: bool) -> Result<Summary> {
    cfg.validate()?;
    let run_dir = RunDir::lock(&cfg.out)?;
    let ck_path = checkpoint_path(run_dir.path());
    // The data source: Fashion-MNIST in memory or an ImageFolder tree.
    let source = DataSpec::from_path(&cfg.data_dir).open(&SourceOptions {
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        train_limit: cfg.train_limit,
        val_limit: cfg.val_limit,
        workers: cfg.workers,
    })?;
    eprintln!("data: {}", source.describe());
    let mut info = source_info(cfg, source.as_ref());
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
    let mut model = if resume && ck_path.exists() {
        // Rebuilt from the run's own checkpoint below (any topology).
        let (loaded, saved_info) = saved_model::load(&Checkpoint::load(&ck_path)?, device)?;
        info.arch = saved_info.arch;
        loaded
    } else {
        new_model(cfg, &mut info, device)?
    };
    prepare_quantizers(&mut model, cfg, source.as_ref(), device, resume)?;
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
        // (Fine-tuning runs at 1% of the from-scratch rate throughout.)
        if t < schedule.total_steps && lr > 0.1 * cfg.lr && cfg.init.is_none() {
            eprintln!(
                "warning: batch norm freezes at epoch {} while the learning rate is still {lr:.3} \
                 ({:.0}% of its peak); QAT usually diverges after such a freeze. Use a later \
                 --freeze-bn or a shorter --warmup-epochs.",
                q.freeze_bn,
                100.0 * lr / cfg.lr
            );
        }
    }
    let log = MetricsLog::new(&run_dir.path().join("metrics.jsonl"));
    let curves = run_dir.path().join("curves.png");
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
        let saved = read_extra(&ck)?;
        check_resumable(cfg, &saved.config)?;
        // The model was built from this checkpoint above (weights and
        // quantizer states); the optimizer state follows.
        ck.restore_optimizer(&mut sgd)?;
        start_epoch = ck.position.epoch;
        if cfg.stop_after.is_some_and(|n| n <= start_epoch) {
            bail!(
                Usage,
                "--stop-after {}: the checkpoint is at epoch {start_epoch} already; give a later \
                 epoch (at most --epochs {}) or leave it out",
                cfg.stop_after.unwrap_or(0),
                cfg.epochs
            );
        }
        // Every random draw of the run derives from the seed; the checkpoint
        // holds the state of the next epoch's order generator.
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
        // The metrics of the epochs the checkpoint covers: its own copy (the
        // log may lack the last epoch's line or end in a torn one after a
        // kill), or, for checkpoints without one, the log's readable lines.
        records = match saved.metrics {
            Some(m) => m,
            None => log.read_repairing()?,
        };
        records.retain(|r| r.epoch <= start_epoch);
        log.rewrite(&records)?;
        if !records.is_empty() {
            plot::plot_metrics(&records, &curves)?;
        }
        eprintln!("resumed from {} at epoch {start_epoch}", ck_path.display());
    } else {
        // A new run: the metrics of whatever ran in this folder before go.
        log.rewrite(&[])?;
    }
    let mode_name = if cfg.qat.is_some() { "qat" } else { "fp32" };
    let progress_mode = if cfg.progress {
        ProgressMode::Auto {
            interval: std::time::Duration::from_secs_f32(cfg.progress_secs),
        }
    } else {
        ProgressMode::Off
    };
    // The epoch of the newest checkpoint in the folder that belongs to this
    // run (for the divergence message).
    let mut saved_epoch = resume.then_some(start_epoch);
    let diverged = |epoch: usize, step: Option<usize>, what: String, saved: Option<usize>| {
        Error::Numerical(divergence_message(
            cfg,
            epoch,
            step.map(|s| (s, steps_per_epoch)),
            &what,
            saved.map(|e| (e, ck_path.as_path())),
        ))
    };
    for epoch in start_epoch..cfg.epochs {
        let mut bar = Progress::new(
            progress_mode,
            steps_per_epoch as u64,
            format!("epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let start = Instant::now();
        let (mut loss_sum, mut acc) = (0.0f64, Accuracy::default());
        let mut lr = cfg.lr;
        for (i, b) in source.train_batches(epoch as u64, 0).enumerate() {
            let step = (epoch * steps_per_epoch + i) as u64;
            lr = schedule.lr(step as usize);
            let result = train_step(&model, &mut sgd, cfg, b, step, steps_per_epoch, lr, device);
            let (loss_v, hits) = match result {
                Ok(r) => r,
                Err(Error::Numerical(msg)) => {
                    crate::autograd::clear_tape();
                    let what = match first_non_finite(&model)? {
                        Some(t) => format!("{t} (the step failed with: {msg})"),
                        None => msg,
                    };
                    return Err(diverged(epoch, Some(i), what, saved_epoch));
                }
                Err(e) => return Err(e),
            };
            loss_sum += loss_v as f64 * hits.seen as f64;
            acc.merge(&hits);
            bar.set_message(format!(
                "loss {:.4} acc {:.2}% lr {lr:.4} {:.0} img/s",
                loss_sum / acc.seen as f64,
                acc.top1(),
                acc.seen as f64 / start.elapsed().as_secs_f64()
            ));
            bar.inc();
        }
        bar.finish();
        // A step can leave non-finite weights, statistics or observer ranges
        // behind with a finite loss; such a state is never checkpointed.
        if let Some(t) = first_non_finite(&model)? {
            return Err(diverged(epoch, None, t, saved_epoch));
        }
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
        records.push(rec);
        // The checkpoint carries the metrics, so the log and the plot can
        // always be rebuilt from it: a kill after the rename and before the
        // append is repaired by the next resume.
        save_checkpoint(
            &ck_path,
            &model,
            &sgd,
            cfg,
            &info,
            &records,
            epoch + 1,
            (epoch + 1) * steps_per_epoch,
        )?;
        saved_epoch = Some(epoch + 1);
        log.append(records.last().expect("just pushed"))?;
        plot::plot_metrics(&records, &curves)?;
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

/// One optimizer step on batch `b`: returns the loss and the batch's
/// top-1/top-5 hits (for the running accuracy), read from the device in one
/// copy. A non-finite loss is a [`Error::Numerical`].
#[allow(clippy::too_many_arguments)]
fn train_step(
    model: &Graph,
    sgd: &mut Sgd,
    cfg: &TrainConfig,
    b: Batch,
    step: u64,
    steps_per_epoch: usize,
    lr: f32,
    device: &Device,
) -> Result<(f32, Accuracy)> {
    if let Some(q) = cfg.qat {
        model.set_qat_flags(q.flags(step, steps_per_epoch));
        if q.freezes_observers_at(step, steps_per_epoch) {
            model.freeze_quantizers()?;
        }
    }
    let shape = b.shape();
    let x = Tensor::from_vec(b.images, shape, device)?;
    let logits = model.forward(&x, Mode::Train)?;
    let (loss, summary) = ops::cross_entropy_with_hits(&logits, &b.labels, cfg.label_smoothing)?;
    // The one copy from the device in a step: loss and hit counts together.
    let summary = summary.to_vec()?;
    let loss_v = summary[0];
    if !loss_v.is_finite() {
        bail!(Numerical, "the training loss became {loss_v}");
    }
    let grads = loss.backward()?;
    sgd.step(&grads, lr)?;
    let acc = Accuracy {
        seen: b.labels.len(),
        top1: summary[1] as usize,
        top5: summary[2] as usize,
    };
    Ok((loss_v, acc))
}

/// The first tensor of the model state (parameters, batch-norm statistics)
/// or observer range that holds a NaN or an infinity, described.
fn first_non_finite(model: &Graph) -> Result<Option<String>> {
    for n in model.state() {
        if let Some(v) = n.tensor.to_vec()?.into_iter().find(|v| !v.is_finite()) {
            return Ok(Some(format!("{} holds {v}", n.name)));
        }
    }
    for (name, q) in model.quantizers() {
        if let Some(problem) = q.problem()? {
            return Ok(Some(format!(
                "activation quantizer '{name}' skipped a batch: {problem}"
            )));
        }
    }
    for (name, s) in model.save_quantizers()? {
        if !(s.min.is_finite() && s.max.is_finite()) {
            return Ok(Some(format!(
                "the range of activation quantizer '{name}' became [{}, {}]",
                s.min, s.max
            )));
        }
    }
    Ok(None)
}

/// The one message of a diverged run: mode, where (epoch, step), what went
/// non-finite, which checkpoint is kept, and what to try.
fn divergence_message(
    cfg: &TrainConfig,
    epoch: usize,
    step: Option<(usize, usize)>,
    what: &str,
    saved: Option<(usize, &Path)>,
) -> String {
    let mode = if cfg.qat.is_some() { "QAT" } else { "FP32" };
    let at = match step {
        Some((i, n)) => format!("epoch {}/{}, step {}/{n}", epoch + 1, cfg.epochs, i + 1),
        None => format!("epoch {}/{}, after its last step", epoch + 1, cfg.epochs),
    };
    let kept = match saved {
        Some((e, path)) => format!(
            "The checkpoint of epoch {e} is kept ({}); resuming it would repeat the same steps \
             with the same settings.",
            path.display()
        ),
        None => "No checkpoint of this run was written yet.".to_string(),
    };
    let mut tries = vec![format!("a lower --lr (this run: {})", cfg.lr)];
    if cfg.warmup_epochs < cfg.epochs as f32 {
        tries.push(format!(
            "a longer --warmup-epochs (this run: {})",
            cfg.warmup_epochs
        ));
    }
    if let Some(q) = &cfg.qat {
        tries.push(format!(
            "a later --act-quant-start (this run: {}; or train FP32 first)",
            q.act_quant_start
        ));
    }
    let last = tries.pop().expect("at least the learning rate");
    let tries = if tries.is_empty() {
        last
    } else {
        format!("{} or {last}", tries.join(", "))
    };
    format!(
        "training diverged ({mode}, {at}): {what}. {kept} Try {tries}, in a new run \
         (--overwrite, or another --out)."
    )
}

/// `--resume` continues the saved run: every setting must be the
/// checkpoint's.
fn check_resumable(cfg: &TrainConfig, saved: &TrainConfig) -> Result<()> {
    let diffs = cfg.setting_differences(saved);
    if diffs.is_empty() {
        return Ok(());
    }
    if let Some(d) = diffs.iter().find(|d| d.flag == "--seed") {
        // Every random draw derives from the seed: another one would
        // silently change the data order after the resume.
        bail!(
            Usage,
            "--resume: the checkpoint was trained with --seed {}; pass --seed {} to continue it \
             exactly",
            d.saved,
            d.saved
        );
    }
    bail!(Usage, "{}", resume_contradictions(&diffs))
}

/// The error text for settings that contradict the checkpoint being
/// resumed.
pub fn resume_contradictions(diffs: &[SettingDiff]) -> String {
    let list: Vec<String> = diffs
        .iter()
        .map(|d| {
            format!(
                "{} {} (the checkpoint's run has {})",
                d.flag, d.ours, d.saved
            )
        })
        .collect();
    format!(
        "--resume continues the saved run with its own settings, and these contradict it: {}. \
         Leave them out to continue, or start a new run (--out DIR, or --overwrite)",
        list.join("; ")
    )
}

/// Checkpoint name of the RNG state that draws the data order of the epoch
/// the checkpoint resumes at.
const DATA_ORDER_RNG: &str = "data_order";

/// The generator of epoch `epoch`'s data order (the per-sample augmentation
/// streams derive from the same seed and epoch, see [`crate::rng::stream`]).
fn data_order_rng(seed: u64, epoch: usize) -> Rng {
    Rng::derive(seed, &[stream::PERMUTATION, epoch as u64])
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    path: &Path,
    model: &Graph,
    sgd: &Sgd,
    cfg: &TrainConfig,
    info: &ModelInfo,
    records: &[EpochRecord],
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
        quantizers: model.save_quantizers()?,
        metrics: Some(records.to_vec()),
        graph: (info.arch == saved_model::CUSTOM_ARCH).then(|| model.spec()),
    };
    ck.extra = serde_json::to_value(extra)
        .map_err(|e| Error::Data(format!("checkpoint metadata: {e}")))?;
    ck.save(path)
}
