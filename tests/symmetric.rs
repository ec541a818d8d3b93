//! The symmetric activation scheme (QUANT_SPEC S2s, `--scheme symmetric`):
//! its fake quantization and straight-through gradient, a short training
//! run and calibration by each method through the CLI, each followed by
//! `qat export` and `qat verify` (0 mismatches), zero points 0 in both
//! export forms, and checkpoints without a scheme loading as asymmetric.

mod common;

use common::{qat_bin, qat_export_verify, synthetic_fmnist, temp_dir};
use onnx_protobuf::Message;
use qat::checkpoint::Checkpoint;
use qat::nn::{ActQuant, ActQuantState, Mode, QatFlags};
use qat::quant::fake::fake_quant;
use qat::quant::params::Scheme;
use qat::{Device, Tensor};
use std::path::Path;

/// Forward `(q - 0) * s` with `q = clamp(RNE(x / s), -128, 127)` and
/// `s = amax / 127`, and the straight-through gradient that passes exactly
/// where `RNE(x / s)` lies in `[-128, 127]`: -128 is reachable, below
/// `-127.5 s` the gradient is 0, above `127.5 s` too.
#[test]
fn symmetric_fake_quant_and_its_gradient() {
    let dev = Device::cpu();
    let q = ActQuant::new(0.1, Scheme::Symmetric);
    // Observed [-0.5, 2.54]: amax 2.54, s = 0.02, z = 0.
    q.load(&ActQuantState {
        min: -0.5,
        max: 2.54,
        momentum: 0.1,
        initialized: true,
        frozen: None,
    });
    let p = q.qparams().unwrap();
    assert_eq!((p.scale, p.zero_point), (2.54f32 / 127.0, 0));
    let s = p.scale;
    let xs = vec![-3.0, -2.565, -2.55, -1.0, 0.0, 0.013, 1.7, 2.54, 2.56, 9.0];
    let x = Tensor::param(xs.clone(), [1, xs.len()], &dev).unwrap();
    let flags = QatFlags {
        quantize_acts: true,
        observe: false,
        bn_frozen: true,
    };
    let y = q.forward(&x, Mode::Train, flags).unwrap();
    let got = y.to_vec().unwrap();
    for (i, &v) in xs.iter().enumerate() {
        assert_eq!(got[i], fake_quant(v, s, 0, -128, 127), "x = {v}");
    }
    // -2.565 / s = -128.25 -> -128 (not -127: the range is [-128, 127]).
    assert_eq!(got[1], -128.0 * s);
    assert_eq!(got[0], -128.0 * s);
    let ones = Tensor::from_vec(vec![1.0; xs.len()], [1, xs.len()], &dev).unwrap();
    let loss = common::weighted_sum(&y, &ones).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads.get(&x).unwrap().to_vec().unwrap();
    let want: Vec<f32> = xs
        .iter()
        .map(|&v| {
            let r = (v / s).round_ties_even();
            if (-128.0..=127.0).contains(&r) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    assert_eq!(g, want);
    assert_eq!(g, vec![0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
}

/// Every activation zero point of the ONNX file (`<tensor>.zero_point`
/// initializers, not the weights'), and whether it holds a Conv fed by a
/// DequantizeLinear (the QDQ form).
fn zero_points(path: &Path) -> (Vec<(String, i8)>, bool) {
    let m = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
    let g = m.graph.as_ref().unwrap();
    let zps = g
        .initializer
        .iter()
        .filter(|t| t.name.ends_with(".zero_point") && !t.name.ends_with("weight_zero_point"))
        .map(|t| (t.name.clone(), t.raw_data[0] as i8))
        .collect();
    let qdq = g.node.iter().any(|n| n.op_type == "Conv");
    (zps, qdq)
}

/// Exports `ck` in both forms into `dir` and verifies the QOperator one on
/// `images` images of `data`: 0 mismatches, and every activation zero
/// point 0 (`symmetric`) or not all 0 (asymmetric, zero point -128 after
/// ReLU); verify on the QDQ export passes too.
fn export_verify(ck: &Path, dir: &Path, data: &Path, symmetric: bool) {
    let (qop, qdq) = (dir.join("m.onnx"), dir.join("m.qdq.onnx"));
    let (ok, log) = qat_export_verify(ck.to_str().unwrap(), &qop, data.to_str().unwrap(), "96");
    assert!(ok, "{log}");
    assert!(log.contains("PASS: every layer identical"), "{log}");
    let (ok, log) = qat_bin(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--format",
        "qdq",
        "--out",
        qdq.to_str().unwrap(),
    ]);
    assert!(ok && log.contains("QDQ"), "{log}");
    for (path, form_qdq) in [(&qop, false), (&qdq, true)] {
        let (zps, has_conv) = zero_points(path);
        assert_eq!(has_conv, form_qdq, "{}", path.display());
        assert!(zps.len() >= 20, "{zps:?}");
        if symmetric {
            assert!(zps.iter().all(|(_, z)| *z == 0), "{zps:?}");
        } else {
            assert!(zps.iter().any(|(_, z)| *z == -128), "{zps:?}");
        }
    }
    let (ok, log) = qat_bin(&[
        "verify",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--onnx",
        qdq.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--images",
        "8",
        "--device",
        "cpu",
    ]);
    // Both schemes' QDQ groups fuse into the same integer ops as the
    // QOperator export; the symmetric graph's float Relu between a
    // DequantizeLinear and a QuantizeLinear (as in ONNX Runtime's own
    // symmetric graphs) becomes an int8 Clip to [0, 127].
    assert!(ok && log.contains("PASS: every layer identical"), "{log}");
}

/// The scheme and the activation zero points a checkpoint loads with.
fn loaded(ck: &Path) -> (Scheme, Vec<i32>) {
    let (g, _) = qat::saved_model::load(&Checkpoint::load(ck).unwrap(), &Device::cpu()).unwrap();
    let zps = g
        .quantizers()
        .iter()
        .map(|(_, q)| {
            assert!(q.is_frozen());
            q.qparams().unwrap().zero_point
        })
        .collect();
    (g.scheme(), zps)
}

/// `qat train --scheme symmetric` learns, records the scheme, and its model
/// verifies with 0 mismatches and exports with zero points 0.
#[test]
fn symmetric_training_exports_and_verifies() {
    let data = synthetic_fmnist("sym-train", 640, 96);
    let out = temp_dir("sym-train-run");
    let (ok, log) = qat_bin(&[
        "train",
        "--scheme",
        "symmetric",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{log}");
    assert!(log.contains("QAT (symmetric)"), "{log}");
    let top1: f32 = log
        .lines()
        .find_map(|l| l.strip_prefix("final: val top-1 "))
        .and_then(|l| l.split('%').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no final line in {log}"));
    assert!(
        top1 > 50.0,
        "symmetric QAT top-1 {top1}% on learnable data\n{log}"
    );
    let ck = out.join("checkpoint.safetensors");
    let (scheme, zps) = loaded(&ck);
    assert_eq!(scheme, Scheme::Symmetric);
    assert!(zps.iter().all(|&z| z == 0), "{zps:?}");
    export_verify(&ck, &out, &data, true);
    // Resuming with the other scheme is a contradiction.
    let (ok, log) = qat_bin(&[
        "train",
        "--resume",
        "--scheme",
        "asymmetric",
        "--out",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(!ok && log.contains("--scheme"), "{log}");
}

/// `qat calibrate --scheme symmetric` by every method: zero points 0, eval
/// runs, export + verify give 0 mismatches; the default stays asymmetric;
/// a checkpoint whose metadata has no scheme (written before the option)
/// loads as asymmetric with the same parameters.
#[test]
fn symmetric_calibration_eval_export_verify() {
    let data = synthetic_fmnist("sym-cal", 320, 96);
    let d = data.to_str().unwrap();
    let fp = temp_dir("sym-cal-fp32");
    let (ok, log) = qat_bin(&[
        "train",
        "--fp32",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--data",
        d,
        "--out",
        fp.to_str().unwrap(),
        "--quiet",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{log}");
    let fp_ck = fp.join("checkpoint.safetensors");
    for (method, scheme) in [
        ("minmax", "symmetric"),
        ("percentile", "symmetric"),
        ("mse", "symmetric"),
        ("mse", "asymmetric"),
    ] {
        let out = temp_dir(&format!("sym-cal-{method}-{scheme}"));
        let (ok, log) = qat_bin(&[
            "calibrate",
            "--checkpoint",
            fp_ck.to_str().unwrap(),
            "--data",
            d,
            "--images",
            "128",
            "--method",
            method,
            "--scheme",
            scheme,
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(ok, "{log}");
        assert!(log.contains(scheme), "{log}");
        let ck = out.join("checkpoint.safetensors");
        let (ok, log) = qat_bin(&["eval", "--checkpoint", ck.to_str().unwrap(), "--data", d]);
        assert!(ok && log.contains("top-1"), "{log}");
        let symmetric = scheme == "symmetric";
        let (s, zps) = loaded(&ck);
        assert_eq!(s == Scheme::Symmetric, symmetric);
        assert_eq!(zps.iter().all(|&z| z == 0), symmetric, "{zps:?}");
        export_verify(&ck, &out, &data, symmetric);
        if !symmetric {
            // Without `scheme` in config.qat (checkpoints before the
            // option): asymmetric, the same zero points.
            let mut c = Checkpoint::load(&ck).unwrap();
            let qat_cfg = c.extra["config"]["qat"].as_object_mut().unwrap();
            assert!(qat_cfg.remove("scheme").is_some());
            let old = out.join("old.safetensors");
            c.save(&old).unwrap();
            assert_eq!(loaded(&old), (Scheme::Asymmetric, zps));
        }
    }
}
