//! The `qat` command line: training now; evaluation, export and verification
//! join as they land.

use clap::{Args, Parser, Subcommand};
use qat::data::fashion_mnist::DEFAULT_DIR;
use qat::models::Arch;
use qat::train::{self, TrainConfig};
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
    /// Train a ResNet on Fashion-MNIST, validating every epoch.
    Train(TrainArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Model: small (for 28x28 images), resnet18, resnet34 or resnet50.
    #[arg(long, default_value = "small")]
    arch: Arch,
    /// Folder with the Fashion-MNIST IDX files (gzip or raw), as installed by
    /// Debian's dataset-fashion-mnist package.
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (reached after the warm-up, then cosine decay to 0).
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay on conv and linear weights (not on biases or batch norm).
    #[arg(long, default_value_t = 5e-4)]
    wd: f32,
    #[arg(long)]
    nesterov: bool,
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f32,
    /// Linear warm-up length, in epochs (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    warmup_epochs: f32,
    /// Seeds initialization, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (CUDA when a GPU works, else CPU), cpu, cuda or cuda-emu.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output folder: metrics.jsonl and checkpoints.
    #[arg(long, default_value = "runs/fmnist")]
    out: PathBuf,
    /// Train on the first N images only (quick checks).
    #[arg(long)]
    train_limit: Option<usize>,
    /// Validate on the first N test images only.
    #[arg(long)]
    val_limit: Option<usize>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

fn run(cli: Cli) -> qat::Result<()> {
    match cli.command {
        Command::Train(a) => {
            let device = Device::parse(&a.device)?;
            eprintln!("device: {}", device.backend().name());
            let cfg = TrainConfig {
                arch: a.arch,
                data_dir: a.data,
                epochs: a.epochs,
                batch_size: a.batch_size,
                lr: a.lr,
                momentum: a.momentum,
                weight_decay: a.wd,
                nesterov: a.nesterov,
                label_smoothing: a.label_smoothing,
                warmup_epochs: a.warmup_epochs,
                seed: a.seed,
                out: a.out,
                train_limit: a.train_limit,
                val_limit: a.val_limit,
                progress: !a.quiet,
            };
            let summary = train::train(&cfg, &device)?;
            if let Some(last) = summary.records.last() {
                println!(
                    "final: val top-1 {:.2}% top-5 {:.2}%",
                    last.val_top1, last.val_top5
                );
            }
            Ok(())
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
