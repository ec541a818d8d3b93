//! The training binary's library path: exact resume and short runs whose
//! loss falls in FP32 and QAT mode (divergence and the other failure paths:
//! `train_robust.rs`).

mod common;

use common::{qat_bin, small_train_config, synthetic_fmnist, temp_dir};
use qat::checkpoint::Checkpoint;
use qat::train::{self, checkpoint_path, metrics::MetricsLog, QatSchedule, TrainConfig};
use qat::Device;
use std::path::{Path, PathBuf};

fn config(data: &Path, out: PathBuf, epochs: usize, qat: bool) -> TrainConfig {
    small_train_config(data, out, epochs, qat)
}

/// Three QAT epochs in one go equal one epoch, a stop, and a resume for two
/// more: same training losses bit for bit, same final weights. The schedule
/// crosses every QAT phase, on both sides of the interruption.
#[test]
fn resume_continues_exactly() {
    let data = synthetic_fmnist("resume", 256, 64);
    let dev = Device::cpu();
    let full_out = temp_dir("resume-full");
    let full = train::train(&config(&data, full_out.clone(), 3, true), &dev, false).unwrap();

    let split_out = temp_dir("resume-split");
    let mut first = config(&data, split_out.clone(), 3, true);
    first.stop_after = Some(1);
    assert_eq!(train::train(&first, &dev, false).unwrap().records.len(), 1);
    let resumed = train::train(&config(&data, split_out.clone(), 3, true), &dev, true).unwrap();

    let losses = |r: &[qat::train::metrics::EpochRecord]| {
        r.iter()
            .map(|e| (e.epoch, e.train_loss, e.val_top1))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&full.records), losses(&resumed.records));
    let a = Checkpoint::load(&checkpoint_path(&full_out)).unwrap();
    let b = Checkpoint::load(&checkpoint_path(&split_out)).unwrap();
    assert_eq!(a.model, b.model, "weights differ after resume");
    assert_eq!(a.momentum, b.momentum, "momentum differs after resume");
    assert_eq!(
        MetricsLog::new(&split_out.join("metrics.jsonl"))
            .read()
            .unwrap()
            .len(),
        3
    );
    assert!(split_out.join("curves.png").exists());
}

#[test]
fn resume_without_a_checkpoint_says_what_to_do() {
    let data = synthetic_fmnist("noresume", 64, 16);
    let err = train::train(
        &config(&data, temp_dir("noresume"), 1, true),
        &Device::cpu(),
        true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("start without --resume"), "{err}");
}

/// The checkpoint carries the state of the next epoch's data-order
/// generator, and resuming with another seed (which would change the data
/// order) is refused with the seed to use.
#[test]
fn resume_with_another_seed_is_refused() {
    let data = synthetic_fmnist("reseed", 64, 16);
    let out = temp_dir("reseed");
    let mut first = config(&data, out.clone(), 2, false);
    first.stop_after = Some(1);
    train::train(&first, &Device::cpu(), false).unwrap();
    let ck = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    assert_eq!(ck.position.epoch, 1);
    let order = ck.rng("data_order").unwrap();
    assert_eq!(
        order,
        qat::rng::Rng::derive(7, &[qat::rng::stream::PERMUTATION, 1])
    );
    assert_ne!(
        order,
        qat::rng::Rng::derive(7, &[qat::rng::stream::PERMUTATION, 0])
    );

    let mut other = config(&data, out.clone(), 2, false);
    other.seed = 8;
    let err = train::train(&other, &Device::cpu(), true).unwrap_err();
    assert!(err.to_string().contains("pass --seed 7"), "{err}");
    // The refused resume left the checkpoint as it was.
    assert_eq!(
        Checkpoint::load(&checkpoint_path(&out))
            .unwrap()
            .position
            .epoch,
        1
    );
    // Same seed, but a stored generator state this build does not derive
    // (a checkpoint from a build with other random streams): refused too.
    let mut ck = Checkpoint::load(&checkpoint_path(&out)).unwrap();
    ck.set_rng("data_order", &qat::rng::Rng::new(1));
    ck.save(&checkpoint_path(&out)).unwrap();
    let err =
        train::train(&config(&data, out.clone(), 2, false), &Device::cpu(), true).unwrap_err();
    assert!(err.to_string().contains("data-order generator"), "{err}");
}

/// Smoke runs on the real Fashion-MNIST (installed by `scripts/test.sh`): a few
/// hundred steps in each mode, and the training loss falls.
#[test]
fn loss_falls_on_fashion_mnist_in_fp32_and_qat() {
    let Some(dir) = common::fashion_mnist("train::loss_falls_on_fashion_mnist_in_fp32_and_qat")
    else {
        return;
    };
    for qat in [false, true] {
        let mut cfg = config(dir, temp_dir("smoke"), 2, qat);
        cfg.train_limit = Some(4800);
        cfg.val_limit = Some(1000);
        cfg.qat = qat.then_some(QatSchedule {
            act_quant_start: 0.5,
            freeze_bn: 1.8,
            freeze_observers: 1.9,
            observer_momentum: 0.1,
            scheme: qat::quant::params::Scheme::Asymmetric,
        });
        let r = train::train(&cfg, &Device::cpu(), false).unwrap().records;
        eprintln!(
            "{}: {:?}",
            if qat { "qat" } else { "fp32" },
            r.iter()
                .map(|e| (e.train_loss, e.val_top1))
                .collect::<Vec<_>>()
        );
        assert!(
            r[1].train_loss < r[0].train_loss,
            "loss did not fall: {r:?}"
        );
        assert!(
            r[1].val_top1 > 60.0,
            "validation accuracy {} too low",
            r[1].val_top1
        );
    }
}

/// The README's quick start is `qat train --epochs 1` with every other flag
/// at its default. With a one-epoch run the default warm-up shrinks to a
/// quarter of the run, so batch norm freezes (at 95%) at a small learning
/// rate and the run does not diverge; forcing a full-epoch warm-up puts the
/// freeze at 96% of the peak rate, which the binary warns about (and which
/// ends near chance). Real Fashion-MNIST, first 6400 images (50 steps).
#[test]
fn one_epoch_quick_start_defaults_do_not_diverge() {
    // The binary reads the dataset from its default folder.
    let check = "train::one_epoch_quick_start_defaults_do_not_diverge";
    if common::fashion_mnist(check).is_none() {
        return;
    }
    let run = |extra: &[&str], out: &Path| {
        let mut args = vec!["train", "--epochs", "1", "--train-limit", "6400"];
        args.extend_from_slice(&["--val-limit", "1000", "--quiet", "--device", "cpu"]);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        let (ok, log) = qat_bin(&args);
        if !ok {
            return Err(log);
        }
        let records = MetricsLog::new(&out.join("metrics.jsonl")).read().unwrap();
        Ok((records[0].val_top1, log))
    };
    let out = temp_dir("quickstart");
    let (top1, log) = run(&[], &out).unwrap();
    assert!(log.contains("0.25 warm-up epochs"), "{log}");
    assert!(!log.contains("warning"), "{log}");
    assert!(top1 > 50.0, "1-epoch QAT with the defaults: top-1 {top1}%");
    // The same command again would replace the finished run: refused, with
    // what to do instead, and the checkpoint is untouched.
    let before = std::fs::read(checkpoint_path(&out)).unwrap();
    let err = run(&[], &out).unwrap_err();
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(checkpoint_path(&out)).unwrap(), before);
    // --overwrite starts over in the same folder; here with a full-epoch
    // warm-up, which puts the freeze at a high learning rate: warned.
    let (_, log) = run(&["--warmup-epochs", "1", "--overwrite"], &out).unwrap();
    assert!(
        log.contains("warning: batch norm freezes at epoch 0.95"),
        "{log}"
    );
    // The new run's metrics replaced the old ones instead of following them.
    let records = MetricsLog::new(&out.join("metrics.jsonl")).read().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
}
