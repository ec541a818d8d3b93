//! The ImageFolder pipeline on a small tree this test writes: JPEGs of
//! several sizes (RGB, grayscale, CMYK), a PNG, a corrupt file, a file that
//! is not an image, a class with one image; then a short ResNet-18 run
//! through the real trainer with a stop and a resume.

use jpeg_encoder::{ColorType, Encoder};
use qat::data::imagenet::decode::{decode, decode_with, JpegBackend};
use qat::data::imagenet::transforms::{eval_axes, resample_normalize};
use qat::data::imagenet::{transform_bytes, ImageFolderConfig, ImageFolderSource, MEAN, STD};
use qat::data::{DataSource, Normalize};
use qat::train::{QatSchedule, TrainConfig};
use std::path::{Path, PathBuf};

/// A smooth, photo-like RGB pattern (gradients plus a few waves).
fn photo(w: usize, h: usize, seed: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            for c in 0..3 {
                let s = (fx * (3.0 + c as f32 + seed as f32) + fy * 2.0).sin() * 60.0;
                v.push((128.0 + s + 50.0 * fx - 40.0 * fy).clamp(0.0, 255.0) as u8);
            }
        }
    }
    v
}

fn jpeg(pixels: &[u8], w: usize, h: usize, color: ColorType) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(&mut out, 90)
        .encode(pixels, w as u16, h as u16, color)
        .unwrap();
    out
}

fn png_rgb(pixels: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()
            .unwrap()
            .write_image_data(pixels)
            .unwrap();
    }
    out
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qat-imagenet-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// train: cat (RGB 500x375, gray 64x48, PNG 40x50, RGB 333x500),
/// dog (RGB 300x400, CMYK 100x80, RGB 224x224, corrupt.jpg, notes.txt),
/// zebra (one 20x30 image); val: one or two per class.
fn make_tree(root: &Path) {
    let rgb = |w, h, s| jpeg(&photo(w, h, s), w, h, ColorType::Rgb);
    let t = root.join("train");
    write(&t.join("cat/a.jpg"), &rgb(500, 375, 0));
    let gray: Vec<u8> = photo(64, 48, 1).chunks(3).map(|p| p[0]).collect();
    write(&t.join("cat/b.JPEG"), &jpeg(&gray, 64, 48, ColorType::Luma));
    write(&t.join("cat/c.png"), &png_rgb(&photo(40, 50, 2), 40, 50));
    write(&t.join("cat/d.jpeg"), &rgb(333, 500, 3));
    write(&t.join("dog/a.jpg"), &rgb(300, 400, 4));
    let cmyk: Vec<u8> = photo(100, 80, 5)
        .chunks(3)
        .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
        .collect();
    write(&t.join("dog/b.jpg"), &jpeg(&cmyk, 100, 80, ColorType::Cmyk));
    write(&t.join("dog/c.jpg"), &rgb(224, 224, 6));
    let mut broken = rgb(200, 150, 7);
    broken.truncate(300);
    write(&t.join("dog/corrupt.jpg"), &broken);
    write(&t.join("dog/notes.txt"), b"not an image");
    write(&t.join("zebra/only.jpg"), &rgb(20, 30, 8));
    let v = root.join("val");
    write(&v.join("cat/v.jpg"), &rgb(256, 300, 9));
    write(&v.join("dog/v.png"), &png_rgb(&photo(80, 60, 10), 80, 60));
    write(&v.join("zebra/v.jpg"), &rgb(500, 375, 11));
}

fn source(root: &Path, batch: usize) -> ImageFolderSource {
    let mut cfg = ImageFolderConfig::new(batch, 3);
    cfg.workers = 2;
    ImageFolderSource::open(root, cfg).unwrap()
}

#[test]
fn scan_sorts_classes_and_ignores_non_images() {
    let root = temp_dir("scan");
    make_tree(&root);
    let s = source(&root, 2);
    assert_eq!(s.class_names(), ["cat", "dog", "zebra"]);
    let t = s.train_folder();
    assert_eq!(t.len(), 9, "4 cat + 4 dog (one corrupt) + 1 zebra");
    assert_eq!(t.ignored, 1, "notes.txt");
    let labels: Vec<u32> = t.samples.iter().map(|s| s.1).collect();
    assert_eq!(labels, [0, 0, 0, 0, 1, 1, 1, 1, 2]);
    assert_eq!(s.val_folder().len(), 3);
    assert_eq!(s.batches_per_epoch(), 4);
}

#[test]
fn every_kind_of_file_decodes() {
    // Solid colours survive JPEG nearly unchanged.
    let red: Vec<u8> = (0..32 * 24).flat_map(|_| [230u8, 20, 40]).collect();
    let cmyk: Vec<u8> = (0..32 * 24).flat_map(|_| [25u8, 235, 215, 0]).collect();
    let gray = vec![100u8; 32 * 24];
    let cases = [
        (jpeg(&red, 32, 24, ColorType::Rgb), [230, 20, 40]),
        (jpeg(&cmyk, 32, 24, ColorType::Cmyk), [230, 20, 40]),
        (jpeg(&gray, 32, 24, ColorType::Luma), [100, 100, 100]),
        (png_rgb(&red, 32, 24), [230, 20, 40]),
    ];
    for (k, (bytes, want)) in cases.iter().enumerate() {
        for backend in [JpegBackend::Zune, JpegBackend::JpegDecoder] {
            let img = decode_with(bytes, backend).unwrap();
            assert_eq!((img.width, img.height), (32, 24), "case {k}");
            let px = &img.data[(12 * 32 + 16) * 3..][..3];
            for c in 0..3 {
                let d = (i32::from(px[c]) - want[c]).abs();
                assert!(d <= 6, "case {k} {backend:?}: pixel {px:?}, want {want:?}");
            }
        }
    }
}

#[test]
fn corrupt_files_are_skipped_and_counted() {
    let root = temp_dir("corrupt");
    make_tree(&root);
    let s = source(&root, 3);
    let mut it = s.train_epoch(0, 0);
    let mut seen = 0;
    for b in it.by_ref() {
        assert_eq!(b.images.len(), b.n * 3 * 224 * 224);
        assert_eq!(b.labels.len(), b.n);
        assert!(b.images.iter().all(|v| v.is_finite()));
        seen += b.n;
    }
    assert_eq!(it.skipped(), 1);
    assert_eq!(seen, 8, "9 files in 3 full batches, one of them corrupt");
    let val: usize = s.val_batches().map(|b| b.n).sum();
    assert_eq!(val, 3);
}

#[test]
fn missing_or_empty_splits_are_errors() {
    let root = temp_dir("empty");
    let err = |r: &Path| {
        ImageFolderSource::open(r, ImageFolderConfig::new(2, 0))
            .err()
            .expect("an error")
            .to_string()
    };
    assert!(err(&root.join("nope")).contains("does not exist"));
    std::fs::create_dir_all(root.join("train")).unwrap();
    assert!(err(&root).contains("no class folders"));
    write(&root.join("train/a/readme.txt"), b"x");
    assert!(err(&root).contains("no images"));
    write(
        &root.join("train/a/x.jpg"),
        &jpeg(&photo(8, 8, 0), 8, 8, ColorType::Rgb),
    );
    assert!(err(&root).contains("val"), "missing val: {}", err(&root));
}

#[test]
fn epochs_are_deterministic_and_resumable() {
    let root = temp_dir("determinism");
    make_tree(&root);
    let s = source(&root, 2);
    let a: Vec<_> = s.train_epoch(1, 0).collect();
    let b: Vec<_> = s.train_epoch(1, 0).collect();
    assert_eq!(a, b, "same epoch, same batches");
    let resumed: Vec<_> = s.train_epoch(1, 2).collect();
    assert_eq!(resumed[..], a[2..], "resume from batch 2");
    let other: Vec<_> = s.train_epoch(2, 0).collect();
    assert_ne!(a, other, "a new epoch reshuffles and re-augments");
    // Dropping an epoch early stops its thread without hanging.
    let mut it = s.train_epoch(3, 0);
    assert!(it.next().is_some());
    drop(it);
}

#[test]
fn reduced_size_decoding_stays_close_to_full_size() {
    // A 1792x1344 photo: Resize(256) + CenterCrop(224) reads it at 1/4 size.
    let (w, h) = (1792, 1344);
    let bytes = jpeg(&photo(w, h, 3), w, h, ColorType::Rgb);
    let norm = Normalize::new(&MEAN, &STD).unwrap();
    let mut fast = vec![0.0f32; 3 * 224 * 224];
    transform_bytes(&bytes, None, 224, 256, &norm, &mut fast).unwrap();
    let full = decode(&bytes).unwrap();
    let (x, y) = eval_axes(h, w, 256, 224);
    let mut exact = vec![0.0f32; 3 * 224 * 224];
    resample_normalize(&full, &x, &y, false, &MEAN, &STD, &mut exact);
    let mean_diff: f32 = fast
        .iter()
        .zip(&exact)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / fast.len() as f32;
    // Normalized units: 0.02 is about 1.2 grey levels.
    assert!(mean_diff < 0.02, "mean difference {mean_diff}");
}

/// The ResNet-18 training settings of the image-folder tests: 2 short QAT
/// epochs of batch 3 on `root`, writing to `out`.
fn folder_config(root: &Path, out: PathBuf) -> TrainConfig {
    TrainConfig {
        arch: "resnet18".into(),
        data_dir: PathBuf::from(format!("imagenet:{}", root.display())),
        epochs: 2,
        batch_size: 3,
        lr: 0.1 * 3.0 / 256.0,
        momentum: 0.9,
        weight_decay: 1e-4,
        nesterov: false,
        label_smoothing: 0.0,
        warmup_epochs: 0.0,
        seed: 5,
        out,
        qat: Some(QatSchedule {
            act_quant_start: 0.5,
            freeze_bn: 1.5,
            freeze_observers: 1.8,
            observer_momentum: 0.1,
            scheme: qat::quant::params::Scheme::Asymmetric,
        }),
        train_limit: None,
        val_limit: None,
        progress: false,
        progress_secs: 30.0,
        stop_after: None,
        workers: 2,
        init: None,
        calibration_images: qat::train::DEFAULT_CALIBRATION_IMAGES,
        calibration_method: qat::train::DEFAULT_CALIBRATION_METHOD.into(),
    }
}

/// Trains `config` into `split_out` for one epoch, stops, resumes to the
/// end, and checks every epoch's losses equal those of the uninterrupted
/// run `full`.
fn assert_resume_is_exact(
    config: &dyn Fn(PathBuf) -> TrainConfig,
    full: &qat::train::Summary,
    split_out: &Path,
) {
    let dev = qat::Device::cpu();
    let mut first = config(split_out.to_path_buf());
    first.stop_after = Some(1);
    qat::train::train(&first, &dev, false).unwrap();
    let resumed = qat::train::train(&config(split_out.to_path_buf()), &dev, true).unwrap();
    let losses = |r: &[qat::train::metrics::EpochRecord]| {
        r.iter()
            .map(|e| (e.epoch, e.train_loss, e.val_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&full.records), losses(&resumed.records));
}

/// `qat train --data imagenet:ROOT --arch resnet18` through the library: a
/// QAT run of two epochs split by a stop and a resume gives the same losses
/// as an uninterrupted one (the loader resumes exactly), writes metrics with
/// top-1/top-5 every epoch, a checkpoint and the plot, and carries the class
/// names into the checkpoint.
#[test]
fn resnet18_trains_and_resumes_on_an_image_folder() {
    use qat::checkpoint::Checkpoint;
    use qat::train::{self, checkpoint_path};
    let root = temp_dir("train");
    make_tree(&root);
    let config = |out: PathBuf| folder_config(&root, out);
    let dev = qat::Device::cpu();
    let full_out = temp_dir("train-full");
    let full = train::train(&config(full_out.clone()), &dev, false).unwrap();
    assert_eq!(full.records.len(), 2);
    for r in &full.records {
        assert!(r.train_loss.is_finite() && r.val_loss.is_finite());
        assert!(r.val_top5 >= r.val_top1);
    }
    let split_out = temp_dir("train-split");
    assert_resume_is_exact(&config, &full, &split_out);
    assert!(split_out.join("metrics.jsonl").exists());
    assert!(split_out.join("curves.png").exists());
    let ck = Checkpoint::load(&checkpoint_path(&split_out)).unwrap();
    let (_, info, _) = train::model_from_checkpoint(&ck, &dev).unwrap();
    assert_eq!(info.class_names, ["cat", "dog", "zebra"]);
    assert_eq!((info.num_classes, info.input_hw), (3, [224, 224]));
}

/// The ImageNet fine-tuning path on a generated ImageFolder: an FP32 ONNX
/// model (ResNet-18's structure, written by the FP32 export) fine-tuned by
/// `train --init MODEL.onnx --data imagenet:ROOT` (calibrated first, QAT),
/// resumed exactly, then exported to an int8 graph the executor loads.
#[test]
fn finetune_from_onnx_on_an_image_folder() {
    use qat::checkpoint::Checkpoint;
    use qat::train::{self, checkpoint_path};
    let root = temp_dir("ft-folder");
    make_tree(&root);
    let dev = qat::Device::cpu();
    let g = qat::models::build(qat::models::Arch::ResNet18, 3, 3, &dev, 4).unwrap();
    let meta = qat::saved_model::ModelInfo {
        arch: "resnet18".into(),
        in_channels: 3,
        num_classes: 3,
        class_names: vec!["cat".into(), "dog".into(), "zebra".into()],
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        input_hw: [224, 224],
    };
    let onnx = root.join("r18.onnx");
    qat::onnx::save_model(&qat::onnx::export_fp32(&g, &meta).unwrap(), &onnx).unwrap();
    let config = |out: PathBuf| TrainConfig {
        arch: "init".into(),
        lr: 0.001 * 3.0 / 256.0,
        qat: Some(QatSchedule::fine_tune(2)),
        init: Some(onnx.clone()),
        calibration_images: 6,
        calibration_method: qat::train::DEFAULT_CALIBRATION_METHOD.into(),
        ..folder_config(&root, out)
    };
    let full_out = temp_dir("ft-folder-full");
    let full = train::train(&config(full_out.clone()), &dev, false).unwrap();
    let split_out = temp_dir("ft-folder-split");
    assert_resume_is_exact(&config, &full, &split_out);
    let ck = checkpoint_path(&split_out);
    let (model, info) = qat::saved_model::load(&Checkpoint::load(&ck).unwrap(), &dev).unwrap();
    assert_eq!(info.class_names, ["cat", "dog", "zebra"]);
    assert!(model.is_quantized());
    let int8 = root.join("r18.int8.onnx");
    qat::onnx::export_checkpoint(&ck, &int8, false).unwrap();
    // verify on the folder's val split: every layer identical.
    let data = PathBuf::from(format!("imagenet:{}", root.display()));
    let r = qat::verify::verify_checkpoint(&ck, &int8, &data, 3, 2, &dev).unwrap();
    assert!(r.passed() && r.images == 3, "{}", r.table());
    // calibrate on the folder's training images (PTQ of the FP32 model).
    let (mut fp, _) = {
        let m = qat::executor::load::read_model(&onnx).unwrap();
        let imp = qat::import::import(&m, &dev).unwrap();
        (imp.graph, ())
    };
    let source = qat::data::DataSpec::from_path(&data)
        .open(&qat::data::SourceOptions {
            batch_size: 2,
            seed: 0,
            train_limit: None,
            val_limit: None,
            workers: 2,
        })
        .unwrap();
    let method = qat::quant::calibrate::Method::Mse;
    let (ranges, used) = qat::calibrate::calibrate_on_source(
        &mut fp,
        source.as_ref(),
        4,
        method,
        0.1,
        qat::quant::params::Scheme::Asymmetric,
        &dev,
    )
    .unwrap();
    assert_eq!(used, 4);
    assert_eq!(ranges.len(), fp.quantizers().len());
}

/// A model that cannot read an image folder is refused before any work (a
/// 1-channel model on RGB images); a different normalization or size only
/// warns.
#[test]
fn image_folder_must_fit_the_model() {
    let root = temp_dir("fit");
    make_tree(&root);
    let src = source(&root, 2);
    let onnx =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/import/mnv2_w025_eval_op13.onnx");
    let opts = qat::import::ImportOptions {
        mean: Some(vec![0.286]),
        std: Some(vec![0.353]),
        classes: None,
    };
    let (ck, _) = qat::import::import_file(&onnx, &opts).unwrap();
    let (_, mut info) = qat::saved_model::load(&ck, &qat::Device::cpu()).unwrap();
    let e = qat::saved_model::check_source(&info, &src, "imagenet:R").unwrap_err();
    assert!(e.to_string().contains("1-channel"), "{e}");
    info.in_channels = 3;
    qat::saved_model::check_source(&info, &src, "imagenet:R").unwrap();
    let _ = std::fs::remove_dir_all(&root);
}
