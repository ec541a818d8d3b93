//! ImageNet (or any image classification set) laid out as torchvision's
//! `ImageFolder`: `ROOT/train/<class>/*.{jpg,jpeg,png}` and
//! `ROOT/val/<class>/*`, class indices from the sorted training folder names.
//!
//! Each sample is read, decoded ([`decode`]) and transformed ([`transforms`])
//! on a dedicated pool of `workers` threads, batch by batch, behind a bounded
//! [`Prefetch`] queue, so decoding overlaps with the training step and memory
//! does not grow with the dataset. As for Fashion-MNIST, the order of epoch
//! `e` and the augmentation of sample `i` derive from `(seed, e, i)` only,
//! so a resumed run sees the same batches. A file that cannot be read or
//! decoded is logged, left out of its batch, and counted in an end-of-epoch
//! report; it never stops training.

pub mod decode;
pub mod folder;
pub mod transforms;

use super::dataset::ImageDims;
use super::loader::Batch;
use super::normalize::Normalize;
use super::prefetch::Prefetch;
use super::source::DataSource;
use crate::rng::stream::{AUGMENT, PERMUTATION};
use crate::rng::Rng;
use crate::{bail, Error, Result};
use decode::{decode_for, probe_size, reduction};
use folder::ImageFolder;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use transforms::{crop_axes, eval_axes, resample_normalize, RandomResizedCrop};

/// torchvision's ImageNet normalization.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Clone, Debug)]
pub struct ImageFolderConfig {
    pub batch_size: usize,
    pub val_batch_size: usize,
    pub seed: u64,
    /// Decoding threads.
    pub workers: usize,
    /// Finished batches allowed to wait in the queue.
    pub prefetch: usize,
    /// Training crop side (RandomResizedCrop) and validation crop side.
    pub crop: usize,
    /// Validation: shorter side after Resize, before CenterCrop.
    pub resize: usize,
    /// Keep an evenly spaced subset of this many training images.
    pub train_limit: Option<usize>,
    pub val_limit: Option<usize>,
}

impl ImageFolderConfig {
    /// The ImageNet recipe's transforms (224 crops, Resize 256) with all
    /// cores decoding.
    pub fn new(batch_size: usize, seed: u64) -> Self {
        ImageFolderConfig {
            batch_size,
            val_batch_size: batch_size,
            seed,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefetch: 2,
            crop: 224,
            resize: 256,
            train_limit: None,
            val_limit: None,
        }
    }
}

struct Inner {
    train: ImageFolder,
    val: ImageFolder,
    cfg: ImageFolderConfig,
    norm: Normalize,
    pool: rayon::ThreadPool,
}

/// `ROOT/train` and `ROOT/val` as a [`DataSource`].
pub struct ImageFolderSource {
    inner: Arc<Inner>,
}

/// Keeps `n` evenly spaced samples (all classes stay represented).
fn subsample(f: &mut ImageFolder, n: Option<usize>) {
    if let Some(n) = n {
        let len = f.samples.len();
        if n < len {
            f.samples = (0..n).map(|i| f.samples[i * len / n].clone()).collect();
        }
    }
}

impl ImageFolderSource {
    pub fn open(root: &Path, cfg: ImageFolderConfig) -> Result<Self> {
        if cfg.batch_size == 0 || cfg.val_batch_size == 0 || cfg.workers == 0 {
            bail!(
                Usage,
                "image folder: batch size and workers must be positive"
            );
        }
        if !root.is_dir() {
            bail!(
                Data,
                "image folder root {} does not exist (expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image>)",
                root.display()
            );
        }
        let mut train = ImageFolder::scan(&root.join("train"), None)?;
        let mut val = ImageFolder::scan(&root.join("val"), Some(&train.classes))?;
        for f in [&train, &val] {
            if f.ignored > 0 {
                eprintln!(
                    "{}: ignored {} file(s) that are not .jpg/.jpeg/.png",
                    f.root.display(),
                    f.ignored
                );
            }
        }
        subsample(&mut train, cfg.train_limit);
        subsample(&mut val, cfg.val_limit);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.workers)
            .thread_name(|i| format!("qat-decode-{i}"))
            .build()
            .map_err(|e| Error::Data(format!("image folder: decoding threads: {e}")))?;
        let norm = Normalize::new(&MEAN, &STD)?;
        Ok(ImageFolderSource {
            inner: Arc::new(Inner {
                train,
                val,
                cfg,
                norm,
                pool,
            }),
        })
    }

    pub fn train_folder(&self) -> &ImageFolder {
        &self.inner.train
    }

    pub fn val_folder(&self) -> &ImageFolder {
        &self.inner.val
    }

    /// Training batches of `epoch` from batch `start` on (shuffled,
    /// augmented, full batches only).
    pub fn train_epoch(&self, epoch: u64, start: usize) -> Prefetch {
        let inner = Arc::clone(&self.inner);
        let mut order: Vec<u32> = (0..inner.train.len() as u32).collect();
        Rng::derive(inner.cfg.seed, &[PERMUTATION, epoch]).shuffle(&mut order);
        let b = inner.cfg.batch_size;
        let end = inner.train.len() / b;
        let skipped = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&skipped);
        Prefetch::spawn(
            start,
            end,
            inner.cfg.prefetch,
            skipped,
            format!("epoch {} (train)", epoch + 1),
            move |i| inner.assemble(&order[i * b..(i + 1) * b], Some(epoch), &counter),
        )
    }

    /// Validation batches, every image once, in order.
    pub fn val_epoch(&self) -> Prefetch {
        let inner = Arc::clone(&self.inner);
        let b = inner.cfg.val_batch_size;
        let n = inner.val.len();
        let skipped = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&skipped);
        Prefetch::spawn(
            0,
            n.div_ceil(b),
            inner.cfg.prefetch,
            skipped,
            "validation".into(),
            move |i| {
                let idx: Vec<u32> = (i * b..((i + 1) * b).min(n)).map(|k| k as u32).collect();
                inner.assemble(&idx, None, &counter)
            },
        )
    }
}

/// Reads, decodes and transforms one file into `dst` (CHW, normalized).
/// `aug` is `Some((seed, epoch, index))` for training.
pub fn load_sample(
    path: &Path,
    aug: Option<(u64, u64, u64)>,
    crop: usize,
    resize: usize,
    norm: &Normalize,
    dst: &mut [f32],
) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    transform_bytes(&bytes, aug, crop, resize, norm, dst)
}

/// [`load_sample`] on the bytes of a file.
pub fn transform_bytes(
    bytes: &[u8],
    aug: Option<(u64, u64, u64)>,
    crop: usize,
    resize: usize,
    norm: &Normalize,
    dst: &mut [f32],
) -> std::result::Result<(), String> {
    let (w, h) = probe_size(bytes).map_err(|e| e.0)?;
    if w == 0 || h == 0 {
        return Err(format!("empty image {w}x{h}"));
    }
    let (x, y, flip, roi, out) = match aug {
        Some((seed, epoch, index)) => {
            let mut rng = Rng::derive(seed, &[AUGMENT, epoch, index]);
            let b = RandomResizedCrop::new(crop).get_params(h, w, &mut rng);
            let flip = rng.uniform() < 0.5;
            let (x, y) = crop_axes(&b, crop);
            (x, y, flip, (b.width, b.height), (crop, crop))
        }
        None => {
            let (x, y) = eval_axes(h, w, resize, crop);
            (x, y, false, (w, h), (x.out_full, y.out_full))
        }
    };
    let (img, k) = decode_for(bytes, roi, out).map_err(|e| e.0)?;
    debug_assert!(k == 1 || reduction(roi, out) == k);
    if k == 1 && (img.width, img.height) != (w, h) {
        return Err(format!(
            "decoded {}x{} but the header says {w}x{h}",
            img.width, img.height
        ));
    }
    let (x, y) = (x.reduced(k, img.width), y.reduced(k, img.height));
    resample_normalize(&img, &x, &y, flip, norm.mean(), norm.std(), dst);
    Ok(())
}

impl Inner {
    /// One batch of the samples `indices`; unreadable ones are logged,
    /// counted and left out. `None` when none is left.
    fn assemble(
        &self,
        indices: &[u32],
        epoch: Option<u64>,
        skipped: &AtomicUsize,
    ) -> Option<Batch> {
        let (folder, dims) = match epoch {
            Some(_) => (&self.train, self.dims()),
            None => (&self.val, self.dims()),
        };
        let numel = dims.numel();
        let mut images = vec![0.0f32; indices.len() * numel];
        let ok: Vec<bool> = self.pool.install(|| {
            images
                .par_chunks_mut(numel)
                .zip(indices.par_iter())
                .map(|(dst, &i)| {
                    let (path, _) = &folder.samples[i as usize];
                    let aug = epoch.map(|e| (self.cfg.seed, e, u64::from(i)));
                    // A decoder that panics on a malformed file skips that
                    // file like any decoding error instead of ending the epoch.
                    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        load_sample(path, aug, self.cfg.crop, self.cfg.resize, &self.norm, dst)
                    }))
                    .unwrap_or_else(|_| Err("the decoder panicked".into()));
                    match loaded {
                        Ok(()) => true,
                        Err(e) => {
                            eprintln!("skipping {}: {e}", path.display());
                            skipped.fetch_add(1, Ordering::Relaxed);
                            false
                        }
                    }
                })
                .collect()
        });
        // Close the gaps left by skipped samples, keeping the order.
        let mut labels = Vec::with_capacity(indices.len());
        let mut n = 0;
        for (k, (&i, &good)) in indices.iter().zip(&ok).enumerate() {
            if good {
                if n != k {
                    images.copy_within(k * numel..(k + 1) * numel, n * numel);
                }
                labels.push(folder.samples[i as usize].1);
                n += 1;
            }
        }
        images.truncate(n * numel);
        (n > 0).then_some(Batch {
            images,
            labels,
            n,
            dims,
        })
    }

    fn dims(&self) -> ImageDims {
        ImageDims::new(3, self.cfg.crop, self.cfg.crop)
    }
}

impl DataSource for ImageFolderSource {
    fn describe(&self) -> String {
        format!(
            "image folder {} ({} classes, {} train / {} val images)",
            self.inner
                .train
                .root
                .parent()
                .map_or_else(PathBuf::new, Path::to_path_buf)
                .display(),
            self.num_classes(),
            self.inner.train.len(),
            self.inner.val.len()
        )
    }

    fn num_classes(&self) -> usize {
        self.inner.train.classes.len()
    }

    fn class_names(&self) -> Vec<String> {
        self.inner.train.classes.clone()
    }

    fn normalize(&self) -> Normalize {
        self.inner.norm.clone()
    }

    fn input_dims(&self) -> ImageDims {
        self.inner.dims()
    }

    fn train_len(&self) -> usize {
        self.inner.train.len()
    }

    fn batches_per_epoch(&self) -> usize {
        self.inner.train.len() / self.inner.cfg.batch_size
    }

    fn train_batches(&self, epoch: u64, start: usize) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.train_epoch(epoch, start))
    }

    fn val_batches(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.val_epoch())
    }
}
