//! Decode + augment throughput of the ImageFolder pipeline, per core and
//! with all cores, on the JPEGs written by `scripts/gen_bench_jpegs.py`;
//! `scripts/bench_torchvision_loader.py` measures torchvision on the same
//! files. Results: docs/PERF.md.
//!
//! cargo run --release --example imagenet_throughput -- [ROOT] [PASSES]

use qat::data::imagenet::decode::{decode_with, JpegBackend};
use qat::data::imagenet::transforms::{eval_axes, resample_normalize};
use qat::data::imagenet::{
    load_sample, transform_bytes, ImageFolderConfig, ImageFolderSource, MEAN, STD,
};
use qat::data::Normalize;
use std::path::PathBuf;
use std::time::Instant;

fn files(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for class in std::fs::read_dir(root).unwrap() {
        for f in std::fs::read_dir(class.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

/// Best images/s over `passes` runs of `f` on every file (one thread).
fn rate(paths: &[PathBuf], passes: usize, mut f: impl FnMut(usize, &PathBuf)) -> f64 {
    f(0, &paths[0]);
    let mut best = 0.0f64;
    for _ in 0..passes {
        let t = Instant::now();
        for (i, p) in paths.iter().enumerate() {
            f(i, p);
        }
        best = best.max(paths.len() as f64 / t.elapsed().as_secs_f64());
    }
    best
}

fn line(name: &str, r: f64) {
    println!("{name:<40} {r:8.1} img/s  {:6.2} ms/img", 1e3 / r);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let root = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/tmp/qat-bench-imagefolder".into()),
    );
    let passes: usize = args.next().map_or(3, |s| s.parse().unwrap());
    let train = files(&root.join("train"));
    let val = files(&root.join("val"));
    let norm = Normalize::new(&MEAN, &STD).unwrap();
    let mut out = vec![0.0f32; 3 * 224 * 224];
    println!(
        "1 thread, {} train / {} val images, best of {passes} passes",
        train.len(),
        val.len()
    );
    for (name, backend) in [
        ("decode (zune-jpeg)", JpegBackend::Zune),
        ("decode (jpeg-decoder)", JpegBackend::JpegDecoder),
    ] {
        let r = rate(&train, passes, |_, p| {
            let bytes = std::fs::read(p).unwrap();
            std::hint::black_box(decode_with(&bytes, backend).unwrap());
        });
        line(name, r);
    }
    let r = rate(&train, passes, |i, p| {
        load_sample(p, Some((0, 0, i as u64)), 224, 256, &norm, &mut out).unwrap();
    });
    line("train: decode+RRC+flip+normalize", r);
    let r = rate(&val, passes, |_, p| {
        load_sample(p, None, 224, 256, &norm, &mut out).unwrap();
    });
    line("val: decode+resize+crop+normalize", r);

    // Reduced-size DCT: a 2000x1500 photo (the first image tiled 4x4) for
    // validation, where Resize(256) lets the decoder work at 1/4 size.
    let first = decode_with(&std::fs::read(&train[0]).unwrap(), JpegBackend::Zune).unwrap();
    let (bw, bh) = (first.width * 4, first.height * 4);
    let mut big = vec![0u8; bw * bh * 3];
    for y in 0..bh {
        for x in 0..bw {
            let s = ((y % first.height) * first.width + x % first.width) * 3;
            big[(y * bw + x) * 3..][..3].copy_from_slice(&first.data[s..s + 3]);
        }
    }
    let mut big_jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut big_jpeg, 90)
        .encode(&big, bw as u16, bh as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let one = [train[0].clone()];
    let r = rate(&one, passes * 10, |_, _| {
        let img = decode_with(&big_jpeg, JpegBackend::Zune).unwrap();
        let (x, y) = eval_axes(bh, bw, 256, 224);
        resample_normalize(&img, &x, &y, false, &MEAN, &STD, &mut out);
    });
    line(&format!("val {bw}x{bh}: full-size zune decode"), r);
    let r = rate(&one, passes * 10, |_, _| {
        transform_bytes(&big_jpeg, None, 224, 256, &norm, &mut out).unwrap();
    });
    line(&format!("val {bw}x{bh}: 1/4-size DCT decode"), r);

    // The loader itself: batches of 64 through the prefetch queue, with one
    // decoding thread and with one per core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for workers in [1, cores] {
        let mut cfg = ImageFolderConfig::new(64, 0);
        cfg.workers = workers;
        let source = ImageFolderSource::open(&root, cfg).unwrap();
        let mut best = 0.0f64;
        for e in 0..passes as u64 {
            let t = Instant::now();
            let n: usize = source.train_epoch(e, 0).map(|b| b.n).sum();
            best = best.max(n as f64 / t.elapsed().as_secs_f64());
        }
        line(&format!("loader, train epoch, {workers} worker(s)"), best);
        if workers > 1 {
            line("  per worker", best / workers as f64);
        }
    }
}
