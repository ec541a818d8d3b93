//! What a training run does with bad input and bad luck: `--resume` with
//! contradicting flags, kills at any point (metrics and checkpoint stay
//! consistent), torn metrics lines, stale temporary files, two processes on
//! one folder, divergence, out-of-range flags, empty evaluation sets and
//! checkpoints with absurd metadata.

mod common;

use common::{qat_bin, small_train_config, synthetic_fmnist, temp_dir};
use qat::checkpoint::Checkpoint;
use qat::train::metrics::{EpochRecord, MetricsLog};
use qat::train::{self, checkpoint_path, RunDir, TrainConfig};
use qat::Device;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tests' short-run configuration with this file's seed and an
/// observer freeze inside two-epoch runs.
fn config(data: &Path, out: PathBuf, epochs: usize, qat: bool) -> TrainConfig {
    let mut cfg = small_train_config(data, out, epochs, qat);
    cfg.seed = 3;
    if let Some(q) = &mut cfg.qat {
        q.freeze_observers = 1.75;
    }
    cfg
}

fn metrics(out: &Path) -> Vec<EpochRecord> {
    MetricsLog::new(&out.join("metrics.jsonl")).read().unwrap()
}

fn losses(r: &[EpochRecord]) -> Vec<(usize, f64, f64)> {
    r.iter()
        .map(|e| (e.epoch, e.train_loss, e.val_loss))
        .collect()
}

/// `qat train` on synthetic data with the given extra flags.
fn train_bin(data: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["train", "--data", data.to_str().unwrap()];
    args.extend_from_slice(&["--out", out.to_str().unwrap(), "--device", "cpu"]);
    args.extend_from_slice(&["--quiet", "--batch-size", "32"]);
    args.extend_from_slice(extra);
    qat_bin(&args)
}

/// `--resume` continues the saved run with the checkpoint's settings: a flag
/// that contradicts them is an error naming both values (and changes
/// nothing); flags that may change are accepted; leaving `--epochs` out
/// does not switch to the default schedule.
#[test]
fn resume_takes_the_settings_from_the_checkpoint() {
    let data = synthetic_fmnist("resume-flags", 128, 32);
    let out = temp_dir("resume-flags");
    let (ok, log) = train_bin(&data, &out, &["--epochs", "3", "--stop-after", "1"]);
    assert!(ok, "{log}");
    let before = std::fs::read(checkpoint_path(&out)).unwrap();

    let (ok, log) = train_bin(&data, &out, &["--resume", "--epochs", "10"]);
    assert!(
        !ok && log.contains("--epochs 10 (the checkpoint's run has 3)"),
        "{log}"
    );
    let (ok, log) = train_bin(
        &data,
        &out,
        &["--resume", "--train-limit", "64", "--lr", "0.5"],
    );
    assert!(
        !ok && log.contains("--train-limit 64 (the checkpoint's run has all)")
            && log.contains("--lr 0.5 (the checkpoint's run has 0.1)"),
        "{log}"
    );
    let (ok, log) = train_bin(&data, &out, &["--resume", "--fp32"]);
    assert!(
        !ok && log.contains("--qat/--fp32 fp32 (the checkpoint's run has qat)"),
        "{log}"
    );
    let (ok, log) = train_bin(&data, &out, &["--resume", "--momentum", "0.5"]);
    assert!(
        !ok && log.contains("--momentum 0.5 (the checkpoint's run has 0.9)"),
        "{log}"
    );
    assert_eq!(std::fs::read(checkpoint_path(&out)).unwrap(), before);

    // A flag equal to the saved value is no contradiction; --stop-after,
    // --workers and --progress-secs may change.
    let (ok, log) = train_bin(
        &data,
        &out,
        &[
            "--resume",
            "--epochs",
            "3",
            "--stop-after",
            "2",
            "--progress-secs",
            "5",
        ],
    );
    assert!(ok, "{log}");
    assert!(
        log.contains("3 epochs") && log.contains("(from the checkpoint)"),
        "{log}"
    );
    assert_eq!(metrics(&out).len(), 2);
    // --stop-after at or before the checkpoint's epoch has nothing to do.
    let (ok, log) = train_bin(&data, &out, &["--resume", "--stop-after", "2"]);
    assert!(!ok && log.contains("at epoch 2 already"), "{log}");
    // Without --epochs the run still ends after its own 3 epochs.
    let (ok, log) = train_bin(&data, &out, &["--resume"]);
    assert!(ok, "{log}");
    let records = metrics(&out);
    assert_eq!(
        records.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let ck = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    assert_eq!(
        (ck.position.epoch, ck.extra["config"]["epochs"].as_u64()),
        (3, Some(3))
    );
}

/// The state a kill between the checkpoint's rename and the metrics append
/// leaves (the checkpoint of epoch 2, a log that ends at epoch 1), plus a
/// stale temporary file: the resume rebuilds the log from the checkpoint and
/// the run ends with exactly the metrics of an uninterrupted run.
#[test]
fn kill_between_checkpoint_and_metrics_append_loses_nothing() {
    let data = synthetic_fmnist("kill-append", 128, 32);
    let dev = Device::cpu();
    let full_out = temp_dir("kill-append-full");
    let full = train::train(&config(&data, full_out.clone(), 3, true), &dev, false).unwrap();

    let out = temp_dir("kill-append");
    let mut first = config(&data, out.clone(), 3, true);
    first.stop_after = Some(2);
    let first_records = train::train(&first, &dev, false).unwrap().records;
    // The log as the kill left it: epoch 2's line never written.
    MetricsLog::new(&out.join("metrics.jsonl"))
        .rewrite(&first_records[..1])
        .unwrap();
    let stale = out.join("checkpoint.safetensors.tmp-4242");
    std::fs::write(&stale, b"half a checkpoint").unwrap();

    let resumed = train::train(&config(&data, out.clone(), 3, true), &dev, true).unwrap();
    assert!(!stale.exists(), "the stale temporary file was not removed");
    let log = metrics(&out);
    assert_eq!(log.len(), 3);
    // Epochs 1 and 2 are the very records written before the kill (timings
    // included), epoch 3 continues exactly.
    assert_eq!(&log[..2], &first_records[..]);
    assert_eq!(log, resumed.records);
    assert_eq!(losses(&log), losses(&full.records));
}

/// A torn last line (a kill during the append) is repaired on resume, also
/// for a checkpoint that carries no metrics of its own (older builds).
#[test]
fn a_torn_metrics_line_is_repaired_on_resume() {
    let data = synthetic_fmnist("torn", 128, 32);
    let dev = Device::cpu();
    for legacy in [false, true] {
        let out = temp_dir("torn");
        let mut first = config(&data, out.clone(), 2, false);
        first.stop_after = Some(1);
        train::train(&first, &dev, false).unwrap();
        let path = out.join("metrics.jsonl");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"epoch\":2,\"mode\":\"fp");
        std::fs::write(&path, &text).unwrap();
        let err = MetricsLog::new(&path).read().unwrap_err().to_string();
        assert!(err.contains("line 2 is incomplete"), "{err}");
        if legacy {
            let ck_path = checkpoint_path(&out);
            let mut ck = Checkpoint::load(&ck_path).unwrap();
            ck.extra.as_object_mut().unwrap().remove("metrics");
            ck.save(&ck_path).unwrap();
        }
        train::train(&config(&data, out.clone(), 2, false), &dev, true).unwrap();
        let epochs: Vec<usize> = metrics(&out).iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, [1, 2], "legacy checkpoint: {legacy}");
    }
}

/// Real `kill -9`s of the binary at many points of a run (during epochs,
/// validation, checkpoint and metrics writes), each followed by a resume (or
/// a fresh start when no checkpoint exists yet): every finished run has one
/// metrics line per epoch, the training losses of an uninterrupted run, and
/// no temporary file is left.
///
/// The kill delays are fractions of an epoch timed on the reference run.
/// Other tests share the machine, so that timing can be far off: when a run
/// reaches its last epoch before all kills are spent, it is checked and a
/// fresh run takes the remaining kills, and a run that ends before its kill
/// shortens the delays.
#[test]
fn kill_9_at_any_point_then_resume_gives_the_uninterrupted_run() {
    let data = synthetic_fmnist("kill9", 256, 64);
    const EPOCHS: usize = 6;
    let flags = ["--epochs", "6", "--train-limit", "256"];
    let reference = temp_dir("kill9-ref");
    let t = Instant::now();
    let (ok, log) = train_bin(&data, &reference, &flags);
    assert!(ok, "{log}");
    let mut epoch_secs = t.elapsed().as_secs_f64() / EPOCHS as f64;
    let want = metrics(&reference);
    let train_losses = |r: &[EpochRecord]| {
        r.iter()
            .map(|e| (e.epoch, e.train_loss))
            .collect::<Vec<_>>()
    };
    let finished_epoch = |out: &Path| {
        let path = checkpoint_path(out);
        path.exists()
            .then(|| Checkpoint::load(&path).unwrap().position.epoch)
    };
    // Resumes `out` (or starts it) to the end, then checks it against the
    // reference.
    let finish_and_check = |out: &Path, kills: usize| {
        if finished_epoch(out) != Some(EPOCHS) {
            let extra: &[&str] = if finished_epoch(out).is_some() {
                &["--resume"]
            } else {
                &flags
            };
            let (ok, log) = train_bin(&data, out, extra);
            assert!(ok, "{log}");
        }
        let got = metrics(out);
        assert_eq!(
            train_losses(&got),
            train_losses(&want),
            "after {kills} kills"
        );
        let leftovers: Vec<_> = std::fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    };

    // Kill delays spread over about one epoch (start-up included), so kills
    // land in every phase.
    let fractions = [
        0.3, 0.9, 1.2, 0.6, 1.5, 0.45, 1.05, 0.75, 1.35, 0.2, 0.95, 0.55,
    ];
    let (mut kills, mut runs, mut kills_in_run) = (0, 0, 0);
    let mut out = temp_dir("kill9");
    for f in fractions {
        if finished_epoch(&out) == Some(EPOCHS) {
            finish_and_check(&out, kills_in_run);
            (runs, kills_in_run) = (runs + 1, 0);
            out = temp_dir("kill9");
        }
        let mut args = vec!["train", "--data", data.to_str().unwrap()];
        args.extend_from_slice(&["--out", out.to_str().unwrap(), "--device", "cpu"]);
        args.extend_from_slice(&["--quiet", "--batch-size", "32"]);
        if finished_epoch(&out).is_some() {
            args.push("--resume");
        } else {
            args.extend_from_slice(&flags);
            args.push("--overwrite");
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_qat"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs_f64(f * epoch_secs));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
            kills_in_run += 1;
        } else {
            epoch_secs /= 2.0;
        }
        child.wait().unwrap();
    }
    finish_and_check(&out, kills_in_run);
    assert!(
        kills >= 8,
        "only {kills} of {} kills landed ({} runs)",
        fractions.len(),
        runs + 1
    );
}

/// A second process writing into the same folder is refused, naming the
/// holder; the lock goes with its holder.
#[test]
fn a_second_writer_is_refused() {
    let data = synthetic_fmnist("lock", 64, 16);
    let out = temp_dir("lock");
    let held = RunDir::lock(&out).unwrap();
    let err = train::train(&config(&data, out.clone(), 1, false), &Device::cpu(), false)
        .unwrap_err()
        .to_string();
    let pid = std::process::id().to_string();
    assert!(
        err.contains("in use by process") && err.contains(&pid),
        "{err}"
    );
    // Through the binary too (another process).
    let (ok, log) = train_bin(&data, &out, &["--epochs", "1"]);
    assert!(!ok && log.contains("in use by process"), "{log}");
    assert!(!checkpoint_path(&out).exists());
    drop(held);
    let (ok, log) = train_bin(&data, &out, &["--epochs", "1"]);
    assert!(ok, "{log}");
}

/// A diverging run stops with one message: mode, epoch and step, what went
/// non-finite, the checkpoint kept (or that there is none yet), and what to
/// try. The kept checkpoint is untouched.
#[test]
fn divergence_says_where_what_and_what_to_try() {
    let data = synthetic_fmnist("diverge", 128, 32);
    let dev = Device::cpu();
    for qat in [false, true] {
        let out = temp_dir("diverge");
        let mut cfg = config(&data, out.clone(), 2, qat);
        cfg.lr = 1e30;
        let err = train::train(&cfg, &dev, false).unwrap_err().to_string();
        let mode = if qat { "QAT" } else { "FP32" };
        assert!(
            err.contains(&format!("training diverged ({mode}, epoch 1/2, step ")),
            "{err}"
        );
        assert!(
            err.contains("No checkpoint of this run was written yet"),
            "{err}"
        );
        assert!(
            err.contains("a lower --lr (this run: 1000000000000000000000000000000)"),
            "{err}"
        );
        assert_eq!(err.contains("--act-quant-start"), qat, "{err}");
        assert!(!checkpoint_path(&out).exists());
    }
    // A run whose first epoch went well: its checkpoint is named and kept.
    // (The learning rate is raised in the checkpoint itself, as --resume
    // keeps the saved settings.)
    let out = temp_dir("diverge-kept");
    let mut first = config(&data, out.clone(), 3, true);
    first.stop_after = Some(1);
    train::train(&first, &dev, false).unwrap();
    let ck_path = checkpoint_path(&out);
    let mut ck = Checkpoint::load(&ck_path).unwrap();
    ck.extra["config"]["lr"] = serde_json::json!(1e30);
    ck.save(&ck_path).unwrap();
    let before = std::fs::read(&ck_path).unwrap();
    let mut cfg = config(&data, out.clone(), 3, true);
    cfg.lr = 1e30;
    let err = train::train(&cfg, &dev, true).unwrap_err().to_string();
    assert!(err.contains("training diverged (QAT, epoch 2/3"), "{err}");
    assert!(err.contains("The checkpoint of epoch 1 is kept"), "{err}");
    assert_eq!(std::fs::read(&ck_path).unwrap(), before);
}

/// Every numeric flag is range-checked when parsed, before any work.
#[test]
fn out_of_range_flags_are_refused_at_parse_time() {
    let out = temp_dir("badflags");
    let o = out.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["train", "--lr=-1"], "--lr"),
        (&["train", "--lr", "nan"], "--lr"),
        (&["train", "--lr", "0"], "--lr"),
        (&["train", "--wd=-1"], "--wd"),
        (&["train", "--momentum=-5"], "--momentum"),
        (&["train", "--momentum", "1"], "--momentum"),
        (&["train", "--warmup-epochs", "nan"], "--warmup-epochs"),
        (
            &["train", "--warmup-epochs", "1e30", "--out", o],
            "--warmup-epochs",
        ),
        (&["train", "--stop-after", "0"], "--stop-after"),
        (
            &["train", "--stop-after", "20", "--epochs", "3", "--out", o],
            "--stop-after",
        ),
        (&["train", "--epochs", "0"], "--epochs"),
        (&["train", "--batch-size", "0"], "--batch-size"),
        (&["train", "--label-smoothing", "1.5"], "--label-smoothing"),
        (
            &["train", "--observer-momentum", "0"],
            "--observer-momentum",
        ),
        (&["train", "--train-limit", "0"], "--train-limit"),
        (&["train", "--val-limit", "0"], "--val-limit"),
        (&["train", "--progress-secs", "0"], "--progress-secs"),
        (&["eval", "--checkpoint", "x", "--limit", "0"], "--limit"),
        (
            &[
                "verify",
                "--checkpoint",
                "x",
                "--onnx",
                "y",
                "--batch-size",
                "0",
            ],
            "--batch-size",
        ),
        (
            &[
                "verify",
                "--checkpoint",
                "x",
                "--onnx",
                "y",
                "--images",
                "0",
            ],
            "--images",
        ),
    ];
    for (args, flag) in cases {
        let (ok, log) = qat_bin(args);
        assert!(!ok && log.contains(flag), "{args:?}: {log}");
        assert!(
            !log.contains("data:"),
            "{args:?} started loading data: {log}"
        );
    }
    assert!(!checkpoint_path(&out).exists());
}

/// Evaluating or verifying zero images is an error, not "top-1 0.00%".
#[test]
fn evaluating_no_images_is_an_error() {
    let data = synthetic_fmnist("noimages", 64, 16);
    let out = temp_dir("noimages");
    let (ok, log) = train_bin(&data, &out, &["--epochs", "1"]);
    assert!(ok, "{log}");
    let empty = synthetic_fmnist("noimages-empty", 64, 0);
    let ck = checkpoint_path(&out);
    let (ok, log) = qat_bin(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        empty.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!ok && log.contains("no images to evaluate"), "{log}");
    let onnx = out.join("m.onnx");
    let (ok, log) = qat_bin(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(ok, "{log}");
    let (ok, log) = qat_bin(&[
        "verify",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--onnx",
        onnx.to_str().unwrap(),
        "--data",
        empty.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!ok && log.contains("no images in"), "{log}");
    // A training run whose validation set is empty stops too.
    let err = train::train(
        &config(&empty, temp_dir("noimages-train"), 1, false),
        &Device::cpu(),
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no images to evaluate"), "{err}");
}

/// A checksum-valid checkpoint whose metadata claims absurd sizes is refused
/// before anything is allocated from it.
#[test]
fn absurd_checkpoint_metadata_is_refused_before_allocating() {
    let data = synthetic_fmnist("absurd", 64, 16);
    let out = temp_dir("absurd");
    let (ok, log) = train_bin(&data, &out, &["--epochs", "1", "--fp32"]);
    assert!(ok, "{log}");
    let good = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    let edits: &[(&str, serde_json::Value, &str)] = &[
        (
            "num_classes",
            serde_json::json!(1_000_000_000_000u64),
            "1000000000000 classes",
        ),
        (
            "in_channels",
            serde_json::json!(1u64 << 40),
            "input channels",
        ),
        (
            "input_hw",
            serde_json::json!([1u64 << 40, 28]),
            "input size",
        ),
        ("mean", serde_json::json!([0.5, 0.5, 0.5]), "3 means"),
    ];
    for (field, value, expect) in edits {
        let mut ck = good.clone();
        ck.extra["model"][field] = value.clone();
        let path = out.join(format!("{field}.safetensors"));
        ck.save(&path).unwrap();
        for cmd in ["eval", "export"] {
            let mut args = vec![cmd, "--checkpoint", path.to_str().unwrap()];
            let onnx = out.join("x.onnx");
            match cmd {
                "eval" => {
                    args.extend_from_slice(&["--device", "cpu", "--data", data.to_str().unwrap()])
                }
                _ => args.extend_from_slice(&["--fp32", "--out", onnx.to_str().unwrap()]),
            }
            let (ok, log) = qat_bin(&args);
            assert!(!ok && log.contains(expect), "{cmd} {field}: {log}");
            assert!(
                !log.contains("panicked") && !log.contains("memory allocation"),
                "{log}"
            );
        }
    }
}

/// With stderr not a terminal (a log file, CI), progress comes as plain
/// lines every --progress-secs seconds; --quiet silences them.
#[test]
fn progress_lines_when_stderr_is_not_a_terminal() {
    let data = synthetic_fmnist("progress", 256, 32);
    let out = temp_dir("progress");
    let mut args = vec!["train", "--data", data.to_str().unwrap(), "--epochs", "1"];
    args.extend_from_slice(&["--out", out.to_str().unwrap(), "--device", "cpu"]);
    args.extend_from_slice(&["--batch-size", "16", "--progress-secs", "0.001"]);
    let (ok, log) = qat_bin(&args);
    assert!(ok, "{log}");
    let lines = log
        .lines()
        .filter(|l| l.starts_with("epoch 1/1: step "))
        .count();
    assert!(lines >= 5, "{log}");
    assert!(log.contains("s elapsed, about"), "{log}");
    args.extend_from_slice(&["--quiet", "--overwrite"]);
    let (ok, log) = qat_bin(&args);
    assert!(ok && !log.contains("epoch 1/1: step "), "{log}");
}
