//! The `qat` command line: training now; evaluation, export and verification
//! join as they land.

use clap::{Args, Parser, Subcommand};
use qat::checkpoint::Checkpoint;
use qat::data::fashion_mnist::DEFAULT_DIR;
use qat::data::{DataSpec, FashionMnist, Loader, LoaderConfig, Normalize, SourceOptions, Split};
use qat::models::Arch;
use qat::train::{self, QatSchedule, TrainConfig};
use qat::Device;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "qat",
    version,
    about = "Quantization-aware training of ResNets on a hand-written CUDA engine",
    long_about = "Quantization-aware training of ResNets on a hand-written CUDA engine.\n\n\
                  Train a model with `qat train`; every subcommand has its own --help."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a ResNet on Fashion-MNIST or ImageNet (`--data imagenet:ROOT`),
    /// QAT by default (--fp32 for float), validating every epoch and writing
    /// a checkpoint after each.
    Train(TrainArgs),
    /// Report top-1/top-5 of a checkpoint on the Fashion-MNIST test set or an
    /// ImageNet val split (the integer-exact model for QAT checkpoints).
    Eval(EvalArgs),
    /// Export a checkpoint as an integer-only int8 ONNX graph (QAT
    /// checkpoints), or as a float graph with --fp32.
    Export(ExportArgs),
    /// Compare the QAT model's integer-exact forward with the int8 executor
    /// running the exported ONNX graph, layer by layer; fails on any
    /// mismatch.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct ExportArgs {
    /// A checkpoint written by `qat train` (OUT/checkpoint.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The ONNX file to write.
    #[arg(long)]
    out: PathBuf,
    /// Export the float model (Conv, BatchNormalization, Relu, Add, ...).
    #[arg(long)]
    fp32: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The QAT checkpoint the graph was exported from.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The int8 ONNX graph (from `qat export`).
    #[arg(long)]
    onnx: PathBuf,
    /// Folder with the Fashion-MNIST IDX files (the test split is used).
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// Number of test images to compare.
    #[arg(long, default_value_t = 1000)]
    images: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Device of the QAT model's forward: auto, cpu, cuda or cuda-emu.
    #[arg(long, default_value = "auto")]
    device: String,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint written by `qat train` (OUT/checkpoint.safetensors).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Folder with the Fashion-MNIST IDX files, or imagenet:ROOT (evaluates
    /// ROOT/val).
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// auto, cpu, cuda or cuda-emu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Evaluate the first N test images only (image folders: N evenly
    /// spaced ones).
    #[arg(long)]
    limit: Option<usize>,
    /// Image folders: decoding threads [default: all cores].
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Args)]
struct TrainArgs {
    /// Model: small (for 28x28 images), resnet18, resnet34 or resnet50
    /// [default: small; resnet18 for imagenet:ROOT].
    #[arg(long)]
    arch: Option<Arch>,
    /// Quantization-aware training (the default).
    #[arg(long, conflicts_with = "fp32")]
    qat: bool,
    /// Plain float training instead of QAT.
    #[arg(long)]
    fp32: bool,
    /// QAT: epoch at which activations start being fake-quantized
    /// [default: 1, or half the run when shorter].
    #[arg(long)]
    act_quant_start: Option<f32>,
    /// QAT: epoch at which batch-norm statistics freeze and exact folding
    /// starts [default: 95% of the run, once the learning rate is small].
    #[arg(long)]
    freeze_bn: Option<f32>,
    /// QAT: epoch at which activation observers freeze [default: 97.5% of
    /// the run].
    #[arg(long)]
    freeze_observers: Option<f32>,
    /// QAT: weight of a new batch in the observers' moving min/max.
    #[arg(long, default_value_t = 0.1)]
    observer_momentum: f32,
    /// Continue from OUT/checkpoint.safetensors exactly where it stopped.
    #[arg(long)]
    resume: bool,
    /// Start a new run even if OUT already holds a checkpoint (its
    /// checkpoint, metrics and curves are replaced). Without it, such a
    /// folder is an error, so a finished run is never lost by accident.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Stop after this many epochs (the schedule still spans --epochs);
    /// continue later with --resume.
    #[arg(long)]
    stop_after: Option<usize>,
    /// Folder with the Fashion-MNIST IDX files (gzip or raw), as installed by
    /// Debian's dataset-fashion-mnist package; or imagenet:ROOT for an
    /// ImageFolder tree ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg,
    /// which switches the defaults to the ImageNet recipe (docs/IMAGENET.md).
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// [default: 15; 90 for imagenet:ROOT]
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (reached after the warm-up, then cosine decay to 0)
    /// [default: 0.1; for imagenet:ROOT 0.1 x batch size / 256].
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay on conv and linear weights (not on biases or batch norm)
    /// [default: 5e-4; 1e-4 for imagenet:ROOT].
    #[arg(long)]
    wd: Option<f32>,
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Linear warm-up length, in epochs (fractions allowed) [default: 1, or
    /// a quarter of the run when shorter, so that batch norm freezes at a low
    /// learning rate; 0 for imagenet:ROOT, the reference's plain cosine].
    #[arg(long)]
    warmup_epochs: Option<f32>,
    /// Seeds initialization, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (CUDA when a GPU works, else CPU), cpu, cuda or cuda-emu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder: checkpoint.safetensors, metrics.jsonl, curves.png
    /// [default: runs/fmnist; runs/imagenet for imagenet:ROOT].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Train on the first N images only (quick checks).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Validate on the first N test images only.
    #[arg(long)]
    val_limit: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Image folders: decoding threads [default: all cores].
    #[arg(long)]
    workers: Option<usize>,
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

fn run(cli: Cli) -> qat::Result<()> {
    match cli.command {
        Command::Train(a) => {
            let device = Device::parse(&a.device)?;
            eprintln!("device: {}", device.backend().name());
            let recipe = Recipe::for_data(&DataSpec::from_path(&a.data), a.batch_size);
            let epochs = a.epochs.unwrap_or(recipe.epochs);
            let qat = (!a.fp32).then(|| {
                let d = QatSchedule::default_for(epochs);
                QatSchedule {
                    act_quant_start: a.act_quant_start.unwrap_or(d.act_quant_start),
                    freeze_bn: a.freeze_bn.unwrap_or(d.freeze_bn),
                    freeze_observers: a.freeze_observers.unwrap_or(d.freeze_observers),
                    observer_momentum: a.observer_momentum,
                }
            });
            let cfg = TrainConfig {
                arch: a.arch.unwrap_or(recipe.arch).name().to_string(),
                qat,
                data_dir: a.data,
                epochs,
                batch_size: a.batch_size,
                lr: a.lr.unwrap_or(recipe.lr),
                momentum: a.momentum,
                weight_decay: a.wd.unwrap_or(recipe.wd),
                nesterov: a.nesterov,
                label_smoothing: a.label_smoothing,
                warmup_epochs: a
                    .warmup_epochs
                    .unwrap_or(recipe.warmup_epochs.min(epochs as f32 / 4.0)),
                seed: a.seed,
                out: a.out.unwrap_or(recipe.out),
                train_limit: a.train_limit,
                val_limit: a.val_limit,
                progress: !a.quiet,
                stop_after: a.stop_after,
                workers: a.workers.unwrap_or(0),
            };
            eprintln!(
                "recipe: {} {}, {} epochs, batch {}, lr {} (cosine, {} warm-up epochs), momentum {}, wd {}",
                cfg.arch,
                if cfg.qat.is_some() { "QAT" } else { "FP32" },
                cfg.epochs,
                cfg.batch_size,
                cfg.lr,
                cfg.warmup_epochs,
                cfg.momentum,
                cfg.weight_decay
            );
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
        Command::Eval(a) => {
            let device = Device::parse(&a.device)?;
            eprintln!("device: {}", device.backend().name());
            let ck = Checkpoint::load(&a.checkpoint)?;
            let (model, info, cfg) = train::model_from_checkpoint(&ck, &device)?;
            let spec = DataSpec::from_path(&a.data);
            let (loss, acc) = if spec.is_image_folder() {
                let source = spec.open(&SourceOptions {
                    batch_size: cfg.batch_size,
                    seed: 0,
                    train_limit: None,
                    val_limit: a.limit,
                    workers: a.workers.unwrap_or(0),
                })?;
                train::evaluate_batches(&model, source.val_batches(), &device)?
            } else {
                let mut data = FashionMnist::load(&a.data, Split::Test)?;
                if let Some(n) = a.limit {
                    data.truncate(n);
                }
                let norm = Normalize::new(&info.mean, &info.std)?;
                let loader = Loader::new(data, LoaderConfig::eval(256, norm))?;
                train::evaluate(&model, &loader, &device)?
            };
            let kind = if cfg.qat.is_some() {
                "int8 (integer-exact)"
            } else {
                "fp32"
            };
            println!(
                "{} {kind}, epoch {}: {} images, loss {loss:.4}, top-1 {:.2}%, top-5 {:.2}%",
                info.arch,
                ck.position.epoch,
                acc.seen,
                acc.top1(),
                acc.top5()
            );
            Ok(())
        }
        Command::Export(a) => {
            println!(
                "{}",
                qat::onnx::export_checkpoint(&a.checkpoint, &a.out, a.fp32)?
            );
            Ok(())
        }
        Command::Verify(a) => {
            let device = Device::parse(&a.device)?;
            eprintln!("device: {}", device.backend().name());
            let report = qat::verify::verify_checkpoint(
                &a.checkpoint,
                &a.onnx,
                &a.data,
                a.images,
                a.batch_size,
                &device,
            )?;
            println!("{}", report.table());
            if report.passed() {
                Ok(())
            } else {
                Err(qat::Error::Numerical(format!(
                    "{} int8 values differ between the QAT model and the executor",
                    report.total_mismatches()
                )))
            }
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
