//! `qat train`: its flags, the data-dependent defaults, and `--resume`,
//! which takes every training setting from the checkpoint.

use crate::parse;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use qat::data::fashion_mnist::DEFAULT_DIR;
use qat::data::DataSpec;
use qat::models::Arch;
use qat::train::{self, QatSchedule, TrainConfig, DEFAULT_PROGRESS_SECS};
use qat::Device;
use std::path::PathBuf;

/// The flags that may differ from the checkpoint's run on `--resume`.
const RESUMABLE_FLAGS: &str =
    "--resume takes every training setting from the checkpoint; only --out, --device, --precision, \
     --workers, --quiet, --progress-secs and --stop-after may be given with it";

#[derive(Args)]
#[command(after_help = RESUMABLE_FLAGS)]
pub struct TrainArgs {
    /// Model: small (a ResNet for 28x28 images), resnet18, resnet34,
    /// resnet50, mobilenet_v2 (ImageNet sizes) or mobilenet_v2_small (the
    /// 28x28 variant); MobileNetV2 widths 0.75, 0.5 and 0.35 as
    /// mobilenet_v2_x0.5, mobilenet_v2_small_x0.35, ... [default: small;
    /// resnet18 for imagenet:ROOT].
    #[arg(long, conflicts_with = "init")]
    arch: Option<Arch>,
    /// Fine-tune instead of training from scratch: start from these weights,
    /// a checkpoint (`qat train --fp32`, `qat import`, `qat calibrate`) or an
    /// FP32 ONNX file (imported as `qat import` does). For QAT an FP32 model
    /// is calibrated first (see --calibration-images). Changes the defaults
    /// to the fine-tuning recipe: 2 epochs (10 for imagenet:ROOT), lr 1% of
    /// the from-scratch one, no warm-up, activations quantized from the
    /// start, batch norm frozen at 30% and observers at 40% of the run (the
    /// proportions of torchvision's QAT reference, 3 and 4 of 10 epochs).
    #[arg(long)]
    init: Option<PathBuf>,
    /// With --init and QAT from an FP32 model: training images (epoch 0's
    /// order) the activation quantizers are calibrated on (see
    /// --calibration-method; >= 1).
    #[arg(long, default_value_t = train::DEFAULT_CALIBRATION_IMAGES, value_parser = parse::at_least_one)]
    calibration_images: usize,
    /// With --init and QAT from an FP32 model: how the activation ranges are
    /// calibrated: minmax, percentile (99.99) or mse, as `qat calibrate
    /// --method`.
    #[arg(long, default_value = train::DEFAULT_CALIBRATION_METHOD, value_parser = ["minmax", "percentile", "mse"])]
    calibration_method: String,
    /// Quantization-aware training (the default).
    #[arg(long, conflicts_with = "fp32")]
    qat: bool,
    /// Plain float training instead of QAT.
    #[arg(long)]
    fp32: bool,
    /// QAT: epoch at which activations start being fake-quantized (fractions
    /// allowed, >= 0) [default: 1, or half the run when shorter].
    #[arg(long, value_parser = parse::non_negative)]
    act_quant_start: Option<f32>,
    /// QAT: epoch at which batch-norm statistics freeze and exact folding
    /// starts (>= 0) [default: 95% of the run, once the learning rate is
    /// small].
    #[arg(long, value_parser = parse::non_negative)]
    freeze_bn: Option<f32>,
    /// QAT: epoch at which activation observers freeze (> 0, after at least
    /// one batch) [default: 97.5% of the run].
    #[arg(long, value_parser = parse::non_negative)]
    freeze_observers: Option<f32>,
    /// QAT: weight of a new batch in the observers' moving min/max, in
    /// (0, 1].
    #[arg(long, default_value_t = 0.1, value_parser = parse::weight)]
    observer_momentum: f32,
    /// QAT: how activation ranges become int8 scales and zero points:
    /// asymmetric (zero point from the range, all 256 levels) or symmetric
    /// (zero point 0, scale max(|min|, |max|) / 127: what TensorRT's
    /// explicit quantization requires; see docs/QUANT_SPEC.md S2s).
    #[arg(long, default_value = "asymmetric", value_parser = ["asymmetric", "symmetric"])]
    scheme: String,
    /// Continue OUT/checkpoint.safetensors exactly where it stopped, with the
    /// checkpoint's settings (see below).
    #[arg(long)]
    resume: bool,
    /// Start a new run even if OUT already holds a checkpoint (its
    /// checkpoint, metrics and curves are replaced). Without it, such a
    /// folder is an error, so a finished run is never lost by accident.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Stop after this many epochs, counted from the start of the run, in
    /// [1, --epochs] (the schedule still spans --epochs); continue later
    /// with --resume.
    #[arg(long, value_parser = parse::at_least_one)]
    stop_after: Option<usize>,
    /// Folder with the Fashion-MNIST IDX files (gzip or raw), as installed by
    /// Debian's dataset-fashion-mnist package; or imagenet:ROOT for an
    /// ImageFolder tree ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg,
    /// which switches the defaults to the ImageNet recipe (docs/IMAGENET.md).
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// Length of the run in epochs (>= 1); the cosine schedule and the QAT
    /// schedule span it [default: 15; 90 for imagenet:ROOT].
    #[arg(long, value_parser = parse::at_least_one)]
    epochs: Option<usize>,
    /// Images per optimizer step (>= 1).
    #[arg(long, default_value_t = 128, value_parser = parse::at_least_one)]
    batch_size: usize,
    /// Peak learning rate (> 0; reached after the warm-up, then cosine
    /// decay to 0) [default: 0.1; for imagenet:ROOT 0.1 x batch size / 256].
    #[arg(long, value_parser = parse::positive)]
    lr: Option<f32>,
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.9, value_parser = parse::fraction)]
    momentum: f32,
    /// Weight decay on conv and linear weights (not on biases or batch
    /// norm), >= 0 [default: 5e-4; 1e-4 for imagenet:ROOT].
    #[arg(long, value_parser = parse::non_negative)]
    wd: Option<f32>,
    /// Nesterov momentum instead of the classical (heavy-ball) form.
    #[arg(long)]
    nesterov: bool,
    /// Label smoothing of the cross-entropy loss, in [0, 1) (0: none).
    #[arg(long, default_value_t = 0.0, value_parser = parse::fraction)]
    label_smoothing: f32,
    /// Linear warm-up length, in epochs (fractions allowed), in [0, --epochs]
    /// [default: 1, or a quarter of the run when shorter, so that batch norm
    /// freezes at a low learning rate; 0 for imagenet:ROOT, the reference's
    /// plain cosine].
    #[arg(long, value_parser = parse::non_negative)]
    warmup_epochs: Option<f32>,
    /// Seeds initialization, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (CUDA when a GPU works, else CPU), cpu, cuda or cuda-emu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Matrix products (GEMM, convolutions) on CUDA devices: fp32 (CUDA
    /// cores, the reference path) or tf32 (tensor cores, compute capability
    /// 8.0+: operands rounded to 10 mantissa bits, FP32 accumulation, as
    /// PyTorch's default for convolutions). The CPU always computes FP32.
    /// Default fp32 until the TF32 path has been measured on a GPU
    /// (docs/GPU_CHECK.md).
    #[arg(long, default_value = "fp32")]
    precision: qat::backend::Precision,
    /// Output folder: checkpoint.safetensors, metrics.jsonl, curves.png; one
    /// run at a time (train.lock) [default: runs/fmnist; runs/imagenet for
    /// imagenet:ROOT].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Train on the first N images only (quick checks; >= 1).
    #[arg(long, value_parser = parse::at_least_one)]
    train_limit: Option<usize>,
    /// Validate on the first N test images only (>= 1).
    #[arg(long, value_parser = parse::at_least_one)]
    val_limit: Option<usize>,
    /// No progress output (the per-epoch summary lines stay).
    #[arg(long)]
    quiet: bool,
    /// Seconds between progress lines when stderr is not a terminal (a log
    /// file, CI, nohup); on a terminal a progress bar is drawn instead (> 0).
    #[arg(long, default_value_t = DEFAULT_PROGRESS_SECS, value_parser = parse::positive)]
    progress_secs: f32,
    /// Image folders: decoding threads (>= 1) [default: all cores].
    #[arg(long, value_parser = parse::at_least_one)]
    workers: Option<usize>,
    /// Instead of training: time N steps (after 2 warm-up steps) of the run
    /// these flags describe and print where the time goes, per phase (data,
    /// forward, backward, optimizer) and per backend primitive; writes
    /// nothing (>= 1).
    #[arg(long, value_parser = parse::at_least_one, conflicts_with = "resume")]
    profile: Option<usize>,
}

/// Defaults that depend on the data set: the Fashion-MNIST recipe, or the
/// ImageNet reference recipe (90 epochs, SGD momentum 0.9, weight decay
/// 1e-4, cosine, lr 0.1 per 256 images of batch, scaled linearly).
struct Recipe {
    arch: Arch,
    epochs: usize,
    lr: f32,
    wd: f32,
    warmup_epochs: f32,
    out: PathBuf,
}

impl Recipe {
    /// Fine-tuning (`--init`): the from-scratch recipe with 1% of its
    /// learning rate, a short schedule and no warm-up.
    fn fine_tune(spec: &DataSpec, batch_size: usize) -> Recipe {
        let r = Recipe::for_data(spec, batch_size);
        Recipe {
            epochs: if spec.is_image_folder() { 10 } else { 2 },
            lr: r.lr * 0.01,
            warmup_epochs: 0.0,
            ..r
        }
    }

    fn for_data(spec: &DataSpec, batch_size: usize) -> Recipe {
        if spec.is_image_folder() {
            Recipe {
                arch: Arch::ResNet18,
                epochs: 90,
                lr: 0.1 * batch_size as f32 / 256.0,
                wd: 1e-4,
                warmup_epochs: 0.0,
                out: "runs/imagenet".into(),
            }
        } else {
            Recipe {
                arch: Arch::Small,
                epochs: 15,
                lr: 0.1,
                wd: 5e-4,
                warmup_epochs: 1.0,
                out: "runs/fmnist".into(),
            }
        }
    }
}

impl TrainArgs {
    /// The configuration the flags describe, defaults filled in.
    fn config(&self) -> TrainConfig {
        let spec = DataSpec::from_path(&self.data);
        let recipe = if self.init.is_some() {
            Recipe::fine_tune(&spec, self.batch_size)
        } else {
            Recipe::for_data(&spec, self.batch_size)
        };
        let epochs = self.epochs.unwrap_or(recipe.epochs);
        let qat = (!self.fp32).then(|| {
            let d = if self.init.is_some() {
                QatSchedule::fine_tune(epochs)
            } else {
                QatSchedule::default_for(epochs)
            };
            QatSchedule {
                act_quant_start: self.act_quant_start.unwrap_or(d.act_quant_start),
                freeze_bn: self.freeze_bn.unwrap_or(d.freeze_bn),
                freeze_observers: self.freeze_observers.unwrap_or(d.freeze_observers),
                observer_momentum: self.observer_momentum,
                // The parser only lets the two names through.
                scheme: self.scheme.parse().unwrap_or_default(),
            }
        });
        TrainConfig {
            // With --init the model's own architecture (recorded in the run's
            // checkpoint from the model).
            arch: match self.init {
                Some(_) => "init".to_string(),
                None => self.arch.unwrap_or(recipe.arch).name().to_string(),
            },
            qat,
            data_dir: self.data.clone(),
            epochs,
            batch_size: self.batch_size,
            lr: self.lr.unwrap_or(recipe.lr),
            momentum: self.momentum,
            weight_decay: self.wd.unwrap_or(recipe.wd),
            nesterov: self.nesterov,
            label_smoothing: self.label_smoothing,
            warmup_epochs: self
                .warmup_epochs
                .unwrap_or(recipe.warmup_epochs.min(epochs as f32 / 4.0)),
            seed: self.seed,
            out: self.out.clone().unwrap_or(recipe.out),
            train_limit: self.train_limit,
            val_limit: self.val_limit,
            progress: !self.quiet,
            progress_secs: self.progress_secs,
            stop_after: self.stop_after,
            workers: self.workers.unwrap_or(0),
            init: self.init.clone(),
            calibration_images: self.calibration_images,
            calibration_method: self.calibration_method.clone(),
        }
    }
}

/// True when `flag` (a [`qat::train::settings`] flag name such as
/// `--batch-size`, or `--qat/--fp32`) was given on the command line.
fn given(m: &ArgMatches, flag: &str) -> bool {
    flag.split('/').any(|f| {
        let id = f.trim_start_matches("--").replace('-', "_");
        m.value_source(&id) == Some(ValueSource::CommandLine)
    })
}

/// Runs `qat train`; `m` are its parsed arguments (to tell given flags from
/// defaults).
pub fn run(a: TrainArgs, m: &ArgMatches) -> qat::Result<()> {
    let fresh = a.config();
    let cfg = if a.resume {
        // The run continues with its own settings: a flag that says
        // otherwise is an error naming both values.
        let saved = train::saved_config(&fresh.out)?;
        let contradictions: Vec<_> = fresh
            .setting_differences(&saved)
            .into_iter()
            .filter(|d| given(m, d.flag))
            .collect();
        if !contradictions.is_empty() {
            qat::bail!(Usage, "{}", train::resume_contradictions(&contradictions));
        }
        TrainConfig {
            out: fresh.out,
            progress: fresh.progress,
            progress_secs: fresh.progress_secs,
            stop_after: fresh.stop_after,
            workers: fresh.workers,
            ..saved
        }
    } else {
        fresh
    };
    cfg.validate()?;
    let (device, line) = Device::choose_with(&a.device, a.precision)?;
    eprintln!("device: {line}");
    eprintln!(
        "recipe: {} {}, {} epochs, batch {}, lr {} (cosine, {} warm-up epochs), momentum {}, wd {}{}",
        cfg.arch,
        match cfg.qat {
            None => "FP32",
            Some(q) if q.scheme == qat::quant::params::Scheme::Symmetric => "QAT (symmetric)",
            Some(_) => "QAT",
        },
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.warmup_epochs,
        cfg.momentum,
        cfg.weight_decay,
        if a.resume { " (from the checkpoint)" } else { "" }
    );
    if let Some(steps) = a.profile {
        let p = train::profile::profile(&cfg, &device, steps)?;
        println!("{}", p.table());
        return Ok(());
    }
    let ck = train::checkpoint_path(&cfg.out);
    if !a.resume && !a.overwrite && ck.exists() {
        qat::bail!(
            Usage,
            "{} already holds the checkpoint of a run: continue it with --resume, \
             start a new run elsewhere with --out DIR, or replace it with --overwrite",
            cfg.out.display()
        );
    }
    let summary = train::train(&cfg, &device, a.resume)?;
    if let Some(last) = summary.records.last() {
        println!(
            "final: val top-1 {:.2}% top-5 {:.2}%",
            last.val_top1, last.val_top5
        );
    }
    Ok(())
}
