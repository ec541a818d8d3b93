//! Post-training quantization: FP32 graphs (imported from PyTorch's ONNX
//! exports, and a built-in one) calibrated by each method, lowered to int8,
//! exported and run by the int8 executor: 0 mismatches on every layer. The
//! ranges are checked against the activations computed directly.

mod common;
mod onnx_util;

use common::{qat_bin, qat_export_verify, qat_import, synthetic_fmnist, temp_dir};
use onnx_protobuf::Message;
use onnx_util::{images, info, trained};
use qat::calibrate::calibrate;
use qat::executor::load::parse_model;
use qat::executor::Executor;
use qat::graph::Graph;
use qat::import::import;
use qat::int8::Int8Net;
use qat::models::Arch;
use qat::nn::Mode;
use qat::onnx::export_int8;
use qat::quant::calibrate::Method;
use qat::quant::params::Scheme;
use qat::verify::Verifier;
use qat::{Device, Tensor};
use std::path::Path;

const N: usize = 24;

fn imported(name: &str) -> Graph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/import/{name}.onnx"));
    import(
        &parse_model(&std::fs::read(p).unwrap()).unwrap(),
        &Device::cpu(),
    )
    .unwrap()
    .graph
}

fn calibrate_on(g: &mut Graph, x: &[f32], method: Method) -> Vec<qat::calibrate::Range> {
    let dev = Device::cpu();
    let batches = || -> Box<dyn Iterator<Item = qat::Result<Tensor>> + '_> {
        Box::new(
            x.chunks(8 * 784)
                .map(|c| Tensor::from_vec(c.to_vec(), [c.len() / 784, 1, 28, 28], &dev)),
        )
    };
    calibrate(g, &batches, method, 0.1, Scheme::Asymmetric).unwrap()
}

fn verify(g: &Graph, what: &str) {
    let int8 = Int8Net::build(g).unwrap();
    let bytes = export_int8(&int8, &info(Arch::Small))
        .unwrap()
        .write_to_bytes()
        .unwrap();
    let exec = Executor::from_bytes(&bytes).unwrap();
    let mut v = Verifier::new(&int8, &exec);
    let (x, labels) = images(77, N);
    v.batch(&x, &labels, N).unwrap();
    let r = v.finish();
    assert!(
        r.passed(),
        "{what}: {}\n{}",
        r.total_mismatches(),
        r.table()
    );
}

#[test]
fn calibrated_graphs_verify_with_zero_mismatches() {
    let (x, _) = images(5, 40);
    let methods = [Method::MinMax, Method::Percentile(99.99), Method::Mse];
    for name in [
        "resnet_tiny_preserve_op13",
        "resnet_tiny_eval_op13",
        "mnv2_w025_eval_op13",
    ] {
        for m in methods {
            let mut g = imported(name);
            let ranges = calibrate_on(&mut g, &x, m);
            assert_eq!(ranges.len(), g.quantizers().len());
            verify(&g, &format!("{name} {}", m.name()));
        }
    }
    let mut g = trained(Arch::Small, false, 3, 2, &Device::cpu());
    calibrate_on(&mut g, &x, Method::Mse);
    verify(&g, "small ResNet, mse");
}

/// minmax sets each quantizer to the extremes of its node's output over the
/// calibration images, computed here by running the FP32 forward node by
/// node through `forward_observed` on the whole set at once; percentile and
/// MSE choose ranges inside the observed ones.
#[test]
fn ranges_are_the_activation_extremes_or_inside_them() {
    let (x, _) = images(6, 40);
    let g0 = imported("resnet_tiny_preserve_op13");
    let mut direct = vec![(f32::INFINITY, f32::NEG_INFINITY); g0.nodes().len()];
    let t = Tensor::from_vec(x.clone(), [40, 1, 28, 28], &Device::cpu()).unwrap();
    qat::autograd::no_grad(|| {
        g0.forward_observed(&t, Mode::Eval, &mut |i, y| {
            let v = y.to_vec()?;
            for a in v {
                direct[i] = (direct[i].0.min(a), direct[i].1.max(a));
            }
            Ok(())
        })
    })
    .unwrap();
    let mut g = imported("resnet_tiny_preserve_op13");
    let mm = calibrate_on(&mut g, &x, Method::MinMax);
    for r in &mm {
        let i = g.nodes().iter().position(|n| n.name == r.name).unwrap();
        assert_eq!(r.chosen, direct[i], "{}", r.name);
        assert_eq!(r.observed, direct[i], "{}", r.name);
    }
    // The input quantizer sees the images themselves.
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(mm[0].chosen, (lo, hi));
    for m in [Method::Percentile(99.0), Method::Mse] {
        let mut g = imported("resnet_tiny_preserve_op13");
        let rs = calibrate_on(&mut g, &x, m);
        let mut narrower = 0;
        for (r, full) in rs.iter().zip(&mm) {
            assert!(
                r.chosen.0 >= full.chosen.0 && r.chosen.1 <= full.chosen.1,
                "{r:?}"
            );
            narrower += (r.chosen != full.chosen) as usize;
        }
        assert!(narrower > 0, "{}: no range was narrowed", m.name());
    }
    // A calibrated model is a QAT graph with every quantizer frozen.
    assert!(g.is_quantized() && g.quantizers().iter().all(|(_, q)| q.is_frozen()));
    let again = calibrate(
        &mut g,
        &|| Box::new(std::iter::empty()),
        Method::MinMax,
        0.1,
        Scheme::Asymmetric,
    );
    assert!(again.unwrap_err().to_string().contains("already quantized"));
}

/// import -> calibrate -> eval -> export -> verify through the binary.
#[test]
fn cli_import_calibrate_export_verify() {
    let data = synthetic_fmnist("calib-cli", 200, 64);
    let d = data.to_str().unwrap();
    let out = temp_dir("calib-cli");
    let onnx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/import/mnv2_w025_eval_op13.onnx");
    let q = out.join("ptq");
    let fp_ck = qat_import(&onnx, &out.join("fp32"));
    let (ok, log) = qat_bin(&[
        "eval",
        "--checkpoint",
        fp_ck.to_str().unwrap(),
        "--data",
        d,
        "--device",
        "cpu",
    ]);
    assert!(ok && log.contains("custom fp32"), "{log}");
    let (ok, log) = qat_bin(&[
        "calibrate",
        "--checkpoint",
        fp_ck.to_str().unwrap(),
        "--data",
        d,
        "--images",
        "128",
        "--method",
        "mse",
        "--out",
        q.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        ok && log.contains("calibrated") && log.contains("on 128 images"),
        "{log}"
    );
    let q_ck = q.join("checkpoint.safetensors");
    let q_ck = q_ck.to_str().unwrap();
    let (ok, log) = qat_bin(&["eval", "--checkpoint", q_ck, "--data", d, "--device", "cpu"]);
    assert!(ok && log.contains("int8 (integer-exact)"), "{log}");
    let (ok, log) = qat_export_verify(q_ck, &out.join("ptq.onnx"), d, "64");
    assert!(ok && log.contains("PASS"), "{log}");
    // Calibrating a QAT checkpoint is refused.
    let (ok, log) = qat_bin(&[
        "calibrate",
        "--checkpoint",
        q_ck,
        "--data",
        d,
        "--out",
        q.to_str().unwrap(),
        "--overwrite",
        "--device",
        "cpu",
    ]);
    assert!(!ok && log.contains("already quantized"), "{log}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}

/// `--data images:DIR`, a flat folder of unlabeled images: calibrate on it
/// (the same ranges as on the same pixels from the IDX files), verify on it
/// (per-layer comparison, no top-1), and eval and train refuse it.
#[test]
fn cli_calibrate_and_verify_on_a_folder_of_unlabeled_images() {
    let data = synthetic_fmnist("calib-files-idx", 128, 8);
    let d = data.to_str().unwrap();
    let out = temp_dir("calib-files");
    let pics = out.join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    let train = qat::data::FashionMnist::load(&data, qat::data::Split::Train).unwrap();
    let write_png = |name: &str, w: u32, h: u32, color: png::ColorType, px: &[u8]| {
        let f = std::fs::File::create(pics.join(name)).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(px).unwrap();
    };
    for i in 0..train.len() {
        let px = train.image(i);
        write_png(
            &format!("a{i:04}.png"),
            28,
            28,
            png::ColorType::Grayscale,
            px,
        );
    }
    // After the gray ones in name order: a larger color image (resized and
    // turned to luma), a broken file (skipped) and a file that is no image.
    let rgb: Vec<u8> = (0..40 * 56 * 3).map(|i| (i * 13 % 251) as u8).collect();
    write_png("z-color.png", 40, 56, png::ColorType::Rgb, &rgb);
    std::fs::write(pics.join("z-broken.jpg"), b"\xff\xd8 not really").unwrap();
    std::fs::write(pics.join("z-notes.txt"), "not an image").unwrap();
    let files = format!("images:{}", pics.display());

    let onnx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/import/mnv2_w025_eval_op13.onnx");
    let fp_ck = qat_import(&onnx, &out.join("fp32"));
    let fp_ck = fp_ck.to_str().unwrap();
    let calibrate = |data: &str, dir: &str| {
        let (ok, log) = qat_bin(&[
            "calibrate",
            "--checkpoint",
            fp_ck,
            "--data",
            data,
            "--images",
            "128",
            "--method",
            "minmax",
            "--out",
            out.join(dir).to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(ok && log.contains("on 128 images"), "{log}");
        // The chosen range of every quantizer, as printed.
        log.lines()
            .filter_map(|l| {
                l.split_once("set [")
                    .map(|(_, r)| r.trim_end_matches(']').to_string())
            })
            .map(|r| {
                let v: Vec<f64> = r.split(',').map(|x| x.trim().parse().unwrap()).collect();
                (v[0], v[1])
            })
            .collect::<Vec<_>>()
    };
    let from_idx = calibrate(d, "ptq-idx");
    let from_files = calibrate(&files, "ptq-files");
    assert!(!from_idx.is_empty());
    assert_eq!(from_idx.len(), from_files.len());
    for (a, b) in from_idx.iter().zip(&from_files) {
        // The same pixels; normalization may round differently in the last bit.
        assert!(
            (a.0 - b.0).abs() <= 2e-4 && (a.1 - b.1).abs() <= 2e-4,
            "{a:?} vs {b:?}"
        );
    }
    let q_ck = out.join("ptq-files/checkpoint.safetensors");
    let q_ck = q_ck.to_str().unwrap();
    let (ok, log) = qat_export_verify(q_ck, &out.join("ptq.onnx"), &files, "1000");
    assert!(
        ok && log.contains("PASS")
            && log.contains("images: 129 (unlabeled")
            && log.contains("skipping")
            && log.contains("z-broken.jpg"),
        "{log}"
    );
    for cmd in [
        vec!["eval", "--checkpoint", q_ck, "--data", &files],
        vec![
            "train",
            "--data",
            &files,
            "--out",
            out.join("t").to_str().unwrap(),
        ],
    ] {
        let (ok, log) = qat_bin(&cmd);
        assert!(!ok && log.contains("unlabeled images"), "{cmd:?}: {log}");
    }
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&data);
}
