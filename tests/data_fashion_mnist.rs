//! The data pipeline end to end: IDX files written here (raw and gzip) and
//! read back, every malformed-file error, the real Debian Fashion-MNIST when
//! it is installed, and the loader's determinism guarantees.

mod common;

use common::{idx_bytes, temp_dir};
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use flate2::Compression;
use qat::data::fashion_mnist;
use qat::data::idx::{self, IMAGES_MAGIC, LABELS_MAGIC};
use qat::data::{
    Augment, Batch, Dataset, FashionMnist, ImageDims, Loader, LoaderConfig, Normalize, Rng, Split,
};

fn write(path: &Path, bytes: &[u8], gzip: bool) {
    if gzip {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        std::fs::write(path, enc.finish().unwrap()).unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

/// `count` pseudo-random 28x28 images and labels `i % 10`, as IDX bytes.
fn fake_split(count: u32) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(11);
    let pixels: Vec<u8> = (0..count * 28 * 28).map(|_| rng.next_u32() as u8).collect();
    let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
    (
        idx_bytes(IMAGES_MAGIC, &[count, 28, 28], &pixels),
        idx_bytes(LABELS_MAGIC, &[count], &labels),
    )
}

/// Writes a fake split with the original file names into a fresh dir.
fn fake_dir(name: &str, split: Split, count: u32, gzip: bool) -> PathBuf {
    let dir = temp_dir(name);
    let (images, labels) = fake_split(count);
    let ext = if gzip { ".gz" } else { "" };
    write(
        &dir.join(format!("{}-images-idx3-ubyte{ext}", split.prefix())),
        &images,
        gzip,
    );
    write(
        &dir.join(format!("{}-labels-idx1-ubyte{ext}", split.prefix())),
        &labels,
        gzip,
    );
    dir
}

fn err_text<T: std::fmt::Debug>(r: qat::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn reads_back_raw_and_gzip_files() {
    let (images, labels) = fake_split(7);
    for gzip in [false, true] {
        let dir = fake_dir("roundtrip", Split::Test, 7, gzip);
        let data = FashionMnist::load(&dir, Split::Test).unwrap();
        assert_eq!(data.len(), 7);
        assert_eq!(data.dims(), ImageDims::new(1, 28, 28));
        assert_eq!(data.pixels(), &images[16..]);
        assert_eq!(data.labels(), &labels[8..]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn truncated_files_are_reported_with_their_name() {
    let (images, _) = fake_split(3);
    let dir = temp_dir("truncated");
    let raw = dir.join("raw-images");
    write(&raw, &images[..images.len() - 1], false);
    let e = err_text(idx::read_images(&raw));
    assert!(
        e.contains(&raw.display().to_string()) && e.contains("truncated"),
        "{e}"
    );

    // Complete gzip stream of a truncated file.
    let gz = dir.join("short-images.gz");
    write(&gz, &images[..100], true);
    let e = err_text(idx::read_images(&gz));
    assert!(
        e.contains(&gz.display().to_string()) && e.contains("truncated"),
        "{e}"
    );

    // A gzip stream cut short (interrupted download).
    let cut = dir.join("cut-images.gz");
    write(&cut, &images, true);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = err_text(idx::read_images(&cut));
    assert!(
        e.contains(&cut.display().to_string()) && e.contains("truncated"),
        "{e}"
    );

    // Too short even for the magic number.
    let tiny = dir.join("tiny");
    write(&tiny, &[0, 0], false);
    let e = err_text(idx::read_labels(&tiny, 10));
    assert!(
        e.contains(&tiny.display().to_string()) && e.contains("truncated"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_magic_is_reported_with_the_file_name() {
    let dir = fake_dir("magic", Split::Train, 2, true);
    // The labels file where images are expected, and the other way round.
    let labels = dir.join("train-labels-idx1-ubyte.gz");
    let images = dir.join("train-images-idx3-ubyte.gz");
    let e = err_text(idx::read_images(&labels));
    assert!(
        e.contains(&labels.display().to_string()) && e.contains("wrong magic 0x00000801"),
        "{e}"
    );
    let e = err_text(idx::read_labels(&images, 10));
    assert!(
        e.contains(&images.display().to_string()) && e.contains("wrong magic 0x00000803"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn count_mismatch_names_both_files() {
    let dir = fake_dir("mismatch", Split::Train, 4, false);
    let labels = dir.join("train-labels-idx1-ubyte");
    write(&labels, &idx_bytes(LABELS_MAGIC, &[3], &[0, 1, 2]), false);
    let e = err_text(FashionMnist::load(&dir, Split::Train));
    assert!(e.contains("4 images") && e.contains("3 labels"), "{e}");
    assert!(e.contains(&labels.display().to_string()), "{e}");
    assert!(
        e.contains(&dir.join("train-images-idx3-ubyte").display().to_string()),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn label_out_of_range_is_reported() {
    let dir = fake_dir("label", Split::Test, 3, true);
    let labels = dir.join("t10k-labels-idx1-ubyte.gz");
    write(&labels, &idx_bytes(LABELS_MAGIC, &[3], &[0, 10, 2]), true);
    let e = err_text(FashionMnist::load(&dir, Split::Test));
    assert!(
        e.contains(&labels.display().to_string()) && e.contains("label 10 at index 1"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn wrong_image_size_is_reported() {
    let dir = temp_dir("size");
    let images = dir.join("t10k-images-idx3-ubyte");
    write(
        &images,
        &idx_bytes(IMAGES_MAGIC, &[1, 2, 2], &[0; 4]),
        false,
    );
    write(
        &dir.join("t10k-labels-idx1-ubyte"),
        &idx_bytes(LABELS_MAGIC, &[1], &[0]),
        false,
    );
    let e = err_text(FashionMnist::load(&dir, Split::Test));
    assert!(
        e.contains(&images.display().to_string()) && e.contains("2x2"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_files_say_how_to_get_the_data() {
    let dir = temp_dir("missing");
    let e = err_text(FashionMnist::load(&dir, Split::Train));
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    assert!(e.contains(&dir.display().to_string()), "{e}");
    assert!(
        e.contains("apt-get install dataset-fashion-mnist") && e.contains("--data PATH"),
        "{e}"
    );
    let e = err_text(FashionMnist::load(&dir.join("nowhere"), Split::Test));
    assert!(
        e.contains("t10k-images-idx3-ubyte") && e.contains("apt-get install"),
        "{e}"
    );
    // The low-level reader names the file too.
    let missing = dir.join("absent.gz");
    let e = err_text(idx::read_images(&missing));
    assert!(e.contains(&missing.display().to_string()), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Loads both real splits; checks sizes, the balanced classes (6000 and 1000
/// per class, as published) and the normalization constants, which must be
/// the statistics of the training pixels to 1e-3.
#[test]
fn real_fashion_mnist_loads_and_matches_constants() {
    let check = "data_fashion_mnist::real_fashion_mnist_loads_and_matches_constants";
    let Some(dir) = common::fashion_mnist(check) else {
        return;
    };
    let train = FashionMnist::load(dir, Split::Train).unwrap();
    let test = FashionMnist::load(dir, Split::Test).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    for (data, per_class) in [(&train, 6000), (&test, 1000)] {
        assert_eq!(data.dims(), ImageDims::new(1, 28, 28));
        let mut counts = [0usize; 10];
        data.labels().iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [per_class; 10]);
    }
    let (mean, std) = train.channel_stats()[0];
    assert!(
        (mean - f64::from(fashion_mnist::MEAN)).abs() < 1e-3,
        "mean {mean}"
    );
    assert!(
        (std - f64::from(fashion_mnist::STD)).abs() < 1e-3,
        "std {std}"
    );
    assert_eq!(fashion_mnist::CLASS_NAMES.len(), train.num_classes());

    // One augmented training batch, normalized: about zero mean, unit std.
    let cfg = LoaderConfig::train(
        256,
        1,
        FashionMnist::normalize(),
        Some(FashionMnist::augment()),
    );
    let loader = Loader::new(train, cfg).unwrap();
    assert_eq!(loader.batches_per_epoch(), 234);
    let batch = loader.epoch(0).next().unwrap();
    assert_eq!(batch.shape(), [256, 1, 28, 28]);
    let m = batch.images.iter().map(|&x| f64::from(x)).sum::<f64>() / batch.images.len() as f64;
    assert!(m.abs() < 0.15, "batch mean {m}");
}

/// 103 random 1x8x8 images: a size that is not a multiple of the batch.
fn synthetic() -> Dataset {
    let dims = ImageDims::new(1, 8, 8);
    let mut rng = Rng::new(2);
    let pixels = (0..103 * dims.numel())
        .map(|_| rng.next_u32() as u8)
        .collect();
    let labels = (0..103).map(|_| rng.below(10) as u8).collect();
    Dataset::new(dims, 10, pixels, labels).unwrap()
}

fn train_loader(seed: u64, drop_last: bool) -> Loader {
    let mut cfg = LoaderConfig::train(
        16,
        seed,
        Normalize::new(&[0.5], &[0.25]).unwrap(),
        Some(Augment::new(2, true)),
    );
    cfg.drop_last = drop_last;
    Loader::new(synthetic(), cfg).unwrap()
}

#[test]
fn same_seed_and_epoch_give_identical_batches() {
    let a: Vec<Batch> = train_loader(5, false).epoch(3).collect();
    let b: Vec<Batch> = train_loader(5, false).epoch(3).collect();
    assert_eq!(a, b);
    assert_eq!(a.len(), 7);
    assert_eq!(
        a.iter().map(|b| b.n).collect::<Vec<_>>(),
        [16, 16, 16, 16, 16, 16, 7]
    );
    assert!(a
        .iter()
        .all(|b| b.images.len() == b.n * 64 && b.labels.len() == b.n));
}

#[test]
fn starting_at_a_batch_equals_skipping() {
    let loader = train_loader(5, true);
    assert_eq!(loader.batches_per_epoch(), 6);
    for start in [0, 1, 4, 6] {
        let resumed: Vec<Batch> = loader.epoch_from(2, start).collect();
        let skipped: Vec<Batch> = loader.epoch(2).skip(start).collect();
        assert_eq!(resumed, skipped, "start {start}");
        assert_eq!(resumed.len(), 6 - start);
    }
    assert_eq!(loader.epoch_from(2, 99).count(), 0);
    let mut it = loader.epoch_from(2, 4);
    assert_eq!((it.position(), it.len()), (4, 2));
    it.next();
    assert_eq!((it.position(), it.len()), (5, 1));
}

#[test]
fn epochs_and_seeds_differ() {
    let loader = train_loader(5, true);
    let e0: Vec<Batch> = loader.epoch(0).collect();
    let e1: Vec<Batch> = loader.epoch(1).collect();
    assert_ne!(e0[0].labels, e1[0].labels);
    assert_ne!(loader.order(0), loader.order(1));
    let other: Vec<Batch> = train_loader(6, true).epoch(0).collect();
    assert_ne!(e0[0].images, other[0].images);
    // Each epoch is a permutation: every sample exactly once.
    let mut order = loader.order(1);
    order.sort_unstable();
    assert_eq!(order, (0..103).collect::<Vec<u32>>());
}

#[test]
fn batches_do_not_depend_on_the_thread_count() {
    let loader = train_loader(9, false);
    let parallel: Vec<Batch> = loader.epoch(1).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let serial: Vec<Batch> = pool.install(|| loader.epoch(1).collect());
    assert_eq!(parallel, serial);
}

#[test]
fn eval_loader_visits_all_samples_in_order_unchanged() {
    let data = synthetic();
    let expected = data.clone();
    let loader = Loader::new(data, LoaderConfig::eval(50, Normalize::identity(1))).unwrap();
    let batches: Vec<Batch> = loader.epoch(0).collect();
    assert_eq!(batches.iter().map(|b| b.n).collect::<Vec<_>>(), [50, 50, 3]);
    let images: Vec<f32> = batches
        .iter()
        .flat_map(|b| b.images.iter().copied())
        .collect();
    let labels: Vec<u32> = batches
        .iter()
        .flat_map(|b| b.labels.iter().copied())
        .collect();
    let want: Vec<f32> = expected
        .pixels()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    assert_eq!(images, want);
    assert_eq!(
        labels,
        expected
            .labels()
            .iter()
            .map(|&l| u32::from(l))
            .collect::<Vec<_>>()
    );
    assert_eq!(batches, loader.epoch(7).collect::<Vec<_>>());
}

#[test]
fn loader_rejects_bad_configs() {
    let mut cfg = LoaderConfig::eval(0, Normalize::identity(1));
    assert!(Loader::new(synthetic(), cfg.clone()).is_err());
    cfg.batch_size = 4;
    cfg.normalize = Normalize::identity(3);
    assert!(Loader::new(synthetic(), cfg).is_err());
}
