//! The `qat` command line: `train`, `eval`, `export`, `verify`, `import`,
//! `calibrate` and `run`. Every
//! flag is explained in `--help`; numeric flags are range-checked as they
//! are parsed.

mod parse;
mod train_cmd;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use qat::checkpoint::Checkpoint;
use qat::data::fashion_mnist::DEFAULT_DIR;
use qat::data::{DataSpec, FashionMnist, Loader, LoaderConfig, Normalize, SourceOptions, Split};
use qat::train;
use qat::Device;
use std::path::PathBuf;
use std::process::ExitCode;
use train_cmd::TrainArgs;

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
    /// Read an FP32 ONNX model (e.g. written by torch.onnx.export, with
    /// batch norm folded or kept), or with --torchvision a torchvision
    /// state dict saved as safetensors, into OUT/checkpoint.safetensors, an
    /// FP32 checkpoint that eval, export, calibrate and train --init read.
    Import(ImportArgs),
    /// Post-training quantization: set every activation quantizer of an
    /// FP32 checkpoint from calibration images (training split) and write a QAT checkpoint with frozen quantizers, which eval
    /// (integer-exact), export and verify read.
    Calibrate(CalibrateArgs),
    /// Run an int8 ONNX graph (ours, or another tool's that the executor
    /// reads) in the int8 executor on a data set: top-1/top-5, images/s,
    /// optionally every int8 tensor dumped or compared with ONNX Runtime.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The int8 ONNX graph.
    model: PathBuf,
    /// Folder with the Fashion-MNIST IDX files (the test split),
    /// imagenet:ROOT (ROOT/val, validation transforms), or images:DIR (a flat
    /// folder of unlabeled .jpg/.png files: no accuracy).
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// Run the first N images only (>= 1; image folders: N evenly spaced
    /// over the classes).
    #[arg(long, value_parser = parse::at_least_one)]
    limit: Option<usize>,
    /// Images per executor call (>= 1).
    #[arg(long, default_value_t = 100, value_parser = parse::at_least_one)]
    batch_size: usize,
    /// Per-channel mean of pixels / 255, comma-separated [default: the
    /// graph's `mean` metadata, which `qat export` writes].
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, comma-separated [default: the
    /// graph's `std` metadata].
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Write every int8/uint8 tensor the executor computes to
    /// DIR/<tensor>.npy, shape [images, ...], in the graph's element type.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Also run the graph in ONNX Runtime (the Python package: `$QAT_PYTHON`,
    /// else python3) on the same images and print a per-tensor mismatch
    /// table; fails when they differ beyond the documented limits.
    #[arg(long, value_parser = ["ort"])]
    against: Option<String>,
    /// An ONNX Runtime session config entry for --against ort, KEY=VALUE
    /// (repeatable), as the deployment sets it: e.g.
    /// `session.qdqisint8allowed=1`, without which ORT on x86 leaves QDQ
    /// groups with int8 (S8S8) activations unfused and runs their Conv in
    /// float [default: none, ORT's defaults].
    #[arg(long = "ort-config", value_name = "KEY=VALUE", value_parser = parse::key_value, requires = "against")]
    ort_config: Vec<(String, String)>,
    /// Executor threads (>= 1) [default: all cores].
    #[arg(long, value_parser = parse::at_least_one)]
    threads: Option<usize>,
}

#[derive(Args)]
struct CalibrateArgs {
    /// An FP32 checkpoint (`qat train --fp32` or `qat import`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Folder with the Fashion-MNIST IDX files (the first --images training
    /// images), imagenet:ROOT (the first --images of ROOT/train in the
    /// first epoch's order, with the training transforms), or images:DIR (a
    /// flat folder of unlabeled .jpg/.png files, the first --images in name
    /// order, resized and center-cropped to the model's input, grayscale for
    /// 1-channel models).
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// Calibration images (>= 1).
    #[arg(long, default_value_t = 1000, value_parser = parse::at_least_one)]
    images: usize,
    /// How each activation range is chosen: minmax (the extremes seen),
    /// percentile (--percentile of the values, a histogram per activation)
    /// or mse (the range with the least quantization error over that
    /// histogram).
    #[arg(long, default_value = "percentile", value_parser = ["minmax", "percentile", "mse"])]
    method: String,
    /// The percentile for --method percentile, in [50, 100].
    #[arg(long, default_value_t = 99.99)]
    percentile: f64,
    /// asymmetric (zero point from the range) or symmetric (zero point 0,
    /// scale max(|min|, |max|) / 127, TensorRT's scheme; docs/QUANT_SPEC.md
    /// S2s).
    #[arg(long, default_value = "asymmetric", value_parser = ["asymmetric", "symmetric"])]
    scheme: String,
    /// Output folder for checkpoint.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Replace OUT/checkpoint.safetensors if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Images per batch (>= 1).
    #[arg(long, default_value_t = 100, value_parser = parse::at_least_one)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda-emu.
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
}

#[derive(Args)]
struct ImportArgs {
    /// The FP32 ONNX file (one float NCHW image input of fixed size, one
    /// logits output), or with --torchvision the safetensors weights.
    model: PathBuf,
    /// MODEL is a torchvision state dict (safetensors) of this built-in
    /// architecture: resnet18, resnet34, resnet50 or mobilenet_v2 (its width
    /// is read from the weights; mobilenet_v2_small for 28x28 inputs).
    /// Normalization defaults to ImageNet's for 3-channel models.
    #[arg(long)]
    torchvision: Option<qat::models::Arch>,
    /// With --torchvision: the image size exports record (H, or H,W)
    /// [default: 224, or 28 for the *_small variants].
    #[arg(long, value_delimiter = ',')]
    input_size: Option<Vec<usize>>,
    /// Output folder; the checkpoint is written to OUT/checkpoint.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Per-channel mean of pixels / 255 the model was trained with,
    /// comma-separated (required unless the file records it, as `qat
    /// export --fp32` does).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, comma-separated (as --mean).
    #[arg(long, value_delimiter = ',')]
    std: Option<Vec<f32>>,
    /// Class names, comma-separated [default: the file's, else 0..N-1].
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// Replace OUT/checkpoint.safetensors if it exists.
    #[arg(long)]
    overwrite: bool,
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
    #[arg(long, conflicts_with = "format")]
    fp32: bool,
    /// Form of the int8 graph: qoperator (QLinearConv, QLinearAdd, ...:
    /// integer ops, what `qat verify` and the int8 executor read) or qdq
    /// (QuantizeLinear/DequantizeLinear around float Conv, Add, pools: what
    /// TensorRT and ONNX Runtime's QDQ fusion read; the same integers).
    #[arg(long, default_value = "qoperator", value_parser = ["qoperator", "qdq"])]
    format: String,
    /// With --format qdq: the convolution bias as int32 through a
    /// DequantizeLinear (int32, ONNX Runtime's form) or as a float
    /// initializer (float: TensorRT's parser takes DequantizeLinear on int8
    /// only).
    #[arg(long, default_value = "int32", value_parser = ["int32", "float"])]
    qdq_bias: String,
}

#[derive(Args)]
struct VerifyArgs {
    /// The QAT checkpoint the graph was exported from.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The int8 ONNX graph (from `qat export`).
    #[arg(long)]
    onnx: PathBuf,
    /// Folder with the Fashion-MNIST IDX files (the test split is used),
    /// imagenet:ROOT (ROOT/val, validation transforms), or images:DIR (a flat
    /// folder of unlabeled .jpg/.png files in name order, prepared for the
    /// model's input: the per-layer comparison only, no top-1).
    #[arg(long, default_value = DEFAULT_DIR)]
    data: PathBuf,
    /// Number of test images to compare (>= 1; the first N).
    #[arg(long, default_value_t = 1000, value_parser = parse::at_least_one)]
    images: usize,
    /// Images per batch (>= 1).
    #[arg(long, default_value_t = 100, value_parser = parse::at_least_one)]
    batch_size: usize,
    /// Device of the QAT model's forward: auto, cpu, cuda or cuda-emu.
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
    /// Matrix products (GEMM, convolutions) on CUDA devices: fp32 (CUDA
    /// cores, the reference path) or tf32 (tensor cores, compute capability
    /// 8.0+: operands rounded to 10 mantissa bits, FP32 accumulation, as
    /// PyTorch's default for convolutions). The CPU always computes FP32.
    /// Default fp32 until the TF32 path has been measured on a GPU
    /// (docs/GPU_CHECK.md).
    #[arg(long, default_value = "fp32")]
    precision: qat::backend::Precision,
    /// Evaluate the first N test images only, N >= 1 (image folders: N
    /// evenly spaced ones).
    #[arg(long, value_parser = parse::at_least_one)]
    limit: Option<usize>,
    /// Image folders: decoding threads (>= 1) [default: all cores].
    #[arg(long, value_parser = parse::at_least_one)]
    workers: Option<usize>,
}

/// The batches of one pass over `loader` as tensors on `dev`.
fn tensor_batches<'a>(
    loader: &'a Loader,
    dev: &'a Device,
) -> Box<dyn Iterator<Item = qat::Result<qat::Tensor>> + 'a> {
    Box::new(loader.epoch(0).map(move |b| {
        let shape = b.shape();
        qat::Tensor::from_vec(b.images, shape, dev)
    }))
}

/// Images per evaluation batch.
const EVAL_BATCH: usize = 256;

fn run(cli: Cli, matches: &clap::ArgMatches) -> qat::Result<()> {
    match cli.command {
        Command::Train(a) => {
            let m = matches
                .subcommand_matches("train")
                .expect("the train subcommand matched");
            train_cmd::run(a, m)
        }
        Command::Eval(a) => {
            let (device, line) = Device::choose_with(&a.device, a.precision)?;
            eprintln!("device: {line}");
            let ck = Checkpoint::load(&a.checkpoint)?;
            let (model, info) = qat::saved_model::load(&ck, &device)?;
            let spec = DataSpec::from_path(&a.data);
            spec.require_labels("`qat eval` (accuracy)")?;
            let (loss, acc) = if spec.is_image_folder() {
                let source = spec.open(&SourceOptions {
                    batch_size: EVAL_BATCH,
                    seed: 0,
                    train_limit: None,
                    val_limit: a.limit,
                    workers: a.workers.unwrap_or(0),
                })?;
                qat::saved_model::check_source(
                    &info,
                    source.as_ref(),
                    &a.data.display().to_string(),
                )?;
                train::evaluate_batches(&model, source.val_batches(), &device)?
            } else {
                let mut data = FashionMnist::load(&a.data, Split::Test)?;
                if let Some(n) = a.limit {
                    data.truncate(n);
                }
                let norm = Normalize::new(&info.mean, &info.std)?;
                let loader = Loader::new(data, LoaderConfig::eval(EVAL_BATCH, norm))?;
                train::evaluate(&model, &loader, &device)?
            };
            let kind = if model.is_quantized() {
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
        Command::Import(a) => {
            let path = a.out.join("checkpoint.safetensors");
            if path.exists() && !a.overwrite {
                qat::bail!(
                    Usage,
                    "{} exists: pass --overwrite to replace it, or choose another --out",
                    path.display()
                );
            }
            let opts = qat::import::ImportOptions {
                mean: a.mean,
                std: a.std,
                classes: a.classes,
            };
            let (ck, summary) = match a.torchvision {
                Some(arch) => {
                    let small = arch.name().contains("small");
                    let hw = match a.input_size.as_deref() {
                        None => [if small { 28 } else { 224 }; 2],
                        Some([s]) if *s > 0 => [*s, *s],
                        Some([h, w]) if *h > 0 && *w > 0 => [*h, *w],
                        Some(v) => qat::bail!(Usage, "--input-size {v:?}: give H or H,W (> 0)"),
                    };
                    qat::import::import_torchvision(&a.model, arch, &opts, hw)?
                }
                None => qat::import::import_file(&a.model, &opts)?,
            };
            std::fs::create_dir_all(&a.out).map_err(|e| qat::Error::Io {
                path: a.out.clone(),
                source: e,
            })?;
            ck.save(&path)?;
            println!("{summary}\nwrote {}", path.display());
            Ok(())
        }
        Command::Calibrate(a) => {
            let path = a.out.join("checkpoint.safetensors");
            if path.exists() && !a.overwrite {
                qat::bail!(
                    Usage,
                    "{} exists: pass --overwrite to replace it, or choose another --out",
                    path.display()
                );
            }
            let method = match qat::quant::calibrate::Method::parse(&a.method)? {
                qat::quant::calibrate::Method::Percentile(_) => {
                    qat::quant::calibrate::Method::Percentile(a.percentile)
                }
                m => m,
            };
            let scheme: qat::quant::params::Scheme = a.scheme.parse()?;
            let (device, line) = Device::choose_with(&a.device, a.precision)?;
            eprintln!("device: {line}");
            let ck = Checkpoint::load(&a.checkpoint)?;
            let (mut model, info) = qat::saved_model::load(&ck, &device)?;
            let momentum = 0.1;
            let spec = DataSpec::from_path(&a.data);
            let (ranges, images) = if let DataSpec::ImageFiles(dir) = &spec {
                let mut files = qat::data::ImageFiles::scan(dir)?;
                files.truncate(a.images);
                let prep = qat::data::image_files::Prepare::new(
                    info.in_channels,
                    info.input_hw,
                    &info.mean,
                    &info.std,
                )?;
                let skipped = std::sync::atomic::AtomicUsize::new(0);
                let used = std::cell::Cell::new(0usize);
                let batches = || -> Box<dyn Iterator<Item = qat::Result<qat::Tensor>> + '_> {
                    used.set(0);
                    Box::new(files.batches(&prep, a.batch_size, &skipped).map(|(x, n)| {
                        used.set(used.get() + n);
                        let d = prep.dims;
                        qat::Tensor::from_vec(x, [n, d.channels, d.height, d.width], &device)
                    }))
                };
                let r = qat::calibrate::calibrate(&mut model, &batches, method, momentum, scheme)?;
                if used.get() == 0 {
                    qat::bail!(Data, "{}: no image could be read", dir.display());
                }
                (r, used.get())
            } else if spec.is_image_folder() {
                let source = spec.open(&SourceOptions {
                    batch_size: a.batch_size,
                    seed: 0,
                    train_limit: None,
                    val_limit: None,
                    workers: 0,
                })?;
                qat::saved_model::check_source(
                    &info,
                    source.as_ref(),
                    &a.data.display().to_string(),
                )?;
                qat::calibrate::calibrate_on_source(
                    &mut model,
                    source.as_ref(),
                    a.images,
                    method,
                    momentum,
                    scheme,
                    &device,
                )?
            } else {
                let mut data = FashionMnist::load(&a.data, Split::Train)?;
                data.truncate(a.images);
                let images = data.len();
                let norm = Normalize::new(&info.mean, &info.std)?;
                let loader = Loader::new(data, LoaderConfig::eval(a.batch_size, norm))?;
                let batches = || tensor_batches(&loader, &device);
                let r = qat::calibrate::calibrate(&mut model, &batches, method, momentum, scheme)?;
                (r, images)
            };
            for r in &ranges {
                println!(
                    "{:<32} observed [{:>9.4}, {:>9.4}]  set [{:>9.4}, {:>9.4}]",
                    r.name, r.observed.0, r.observed.1, r.chosen.0, r.chosen.1
                );
            }
            let out = qat::calibrate::checkpoint(
                &model,
                &info,
                method,
                images,
                momentum,
                &a.checkpoint.display().to_string(),
            )?;
            std::fs::create_dir_all(&a.out).map_err(|e| qat::Error::Io {
                path: a.out.clone(),
                source: e,
            })?;
            out.save(&path)?;
            println!(
                "calibrated {} quantizers on {images} images ({}, {scheme}); wrote {}",
                ranges.len(),
                method.name(),
                path.display()
            );
            Ok(())
        }
        Command::Export(a) => {
            println!(
                "{}",
                qat::onnx::export_checkpoint_as(&a.checkpoint, &a.out, export_format(&a))?
            );
            Ok(())
        }
        Command::Run(a) => {
            if let Some(t) = a.threads {
                // Only fails when the pool exists already (never here).
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build_global();
            }
            let opts = qat::run::RunOptions {
                limit: a.limit,
                batch_size: a.batch_size,
                mean: a.mean,
                std: a.std,
                dump: a.dump.clone(),
                against_ort: a.against.is_some(),
                ort_config: a.ort_config.clone(),
                progress_secs: Some(train::DEFAULT_PROGRESS_SECS / 3.0),
            };
            let report = qat::run::run_graph(&a.model, &a.data, &opts)?;
            println!("{}", report.summary());
            if let Some(d) = &a.dump {
                println!("dumped {} int8 tensors to {}", report.dumped, d.display());
            }
            match &report.ort {
                Some(o) if !o.passed() => Err(qat::Error::Numerical(
                    "the executor and ONNX Runtime differ beyond the documented limits".into(),
                )),
                _ => Ok(()),
            }
        }
        Command::Verify(a) => {
            let (device, line) = Device::choose_with(&a.device, a.precision)?;
            eprintln!("device: {line}");
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

/// The `--fp32`, `--format` and `--qdq-bias` flags as one choice.
fn export_format(a: &ExportArgs) -> qat::onnx::Format {
    use qat::onnx::{Format, QdqBias};
    match (a.fp32, a.format.as_str()) {
        (true, _) => Format::Fp32,
        (false, "qdq") => Format::Qdq(if a.qdq_bias == "float" {
            QdqBias::Float
        } else {
            QdqBias::Int32
        }),
        _ => Format::QOperator,
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` explains every flag of every subcommand.
    #[test]
    fn every_flag_has_help_text() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && !matches!(arg.get_id().as_str(), "help") {
                    missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    /// The device line is printed once, by the CLI.
    #[test]
    fn device_choice_is_described_once() {
        let (d, line) = Device::choose("cpu").unwrap();
        assert!(d.is_cpu());
        assert_eq!(line, "cpu");
        let (_, auto) = Device::choose("auto").unwrap();
        assert!(auto.contains("(auto"), "{auto}");
    }
}
