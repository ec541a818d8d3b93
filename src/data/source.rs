//! What the training loop needs from a dataset, whatever it is: batches of
//! one training epoch (from any batch, for exact resume), validation
//! batches, and what the model and its checkpoint must know (classes,
//! normalization, input shape).
//!
//! `--data` picks the source: `imagenet:ROOT` (an ImageFolder tree, see
//! [`super::imagenet`]), `fashion-mnist:DIR` or a plain `DIR` (Fashion-MNIST
//! IDX files). `images:DIR`, a flat folder of unlabeled images
//! ([`super::image_files`]), is no training source: it serves `calibrate`
//! and `verify`, which read it directly.

use super::dataset::ImageDims;
use super::fashion_mnist::{FashionMnist, Split, CLASS_NAMES};
use super::imagenet::{ImageFolderConfig, ImageFolderSource};
use super::loader::{Batch, Loader, LoaderConfig};
use super::normalize::Normalize;
use crate::Result;
use std::path::{Path, PathBuf};

/// A dataset as the trainer sees it.
pub trait DataSource: Send + Sync {
    /// One line for the log.
    fn describe(&self) -> String;
    fn num_classes(&self) -> usize;
    fn class_names(&self) -> Vec<String>;
    fn normalize(&self) -> Normalize;
    /// The shape of one model input.
    fn input_dims(&self) -> ImageDims;
    fn train_len(&self) -> usize;
    fn batches_per_epoch(&self) -> usize;
    /// The training batches of `epoch` from batch `start` on; the same
    /// batches on every call (resume is exact).
    fn train_batches(&self, epoch: u64, start: usize) -> Box<dyn Iterator<Item = Batch> + '_>;
    /// Every validation image once, in a fixed order.
    fn val_batches(&self) -> Box<dyn Iterator<Item = Batch> + '_>;
}

/// How to build a source: batch size, seed, limits, decoding threads.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub batch_size: usize,
    pub seed: u64,
    pub train_limit: Option<usize>,
    pub val_limit: Option<usize>,
    /// Decoding threads (image folders); 0 = all cores.
    pub workers: usize,
}

/// A parsed `--data` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    FashionMnist(PathBuf),
    ImageFolder(PathBuf),
    /// `images:DIR`: unlabeled images, no train/val split.
    ImageFiles(PathBuf),
}

impl DataSpec {
    /// `imagenet:ROOT` or `imagefolder:ROOT`, `images:DIR`,
    /// `fashion-mnist:DIR`, or a plain path (Fashion-MNIST, as before image
    /// folders existed).
    pub fn parse(s: &str) -> DataSpec {
        if let Some(dir) = s.strip_prefix("images:") {
            return DataSpec::ImageFiles(dir.into());
        }
        for p in ["imagenet:", "imagefolder:"] {
            if let Some(root) = s.strip_prefix(p) {
                return DataSpec::ImageFolder(root.into());
            }
        }
        DataSpec::FashionMnist(s.strip_prefix("fashion-mnist:").unwrap_or(s).into())
    }

    pub fn from_path(p: &Path) -> DataSpec {
        DataSpec::parse(&p.to_string_lossy())
    }

    pub fn is_image_folder(&self) -> bool {
        matches!(self, DataSpec::ImageFolder(_))
    }

    /// Refuses `images:DIR`, which has no labels, naming `what` needs them.
    pub fn require_labels(&self, what: &str) -> Result<()> {
        if let DataSpec::ImageFiles(dir) = self {
            crate::bail!(
                Usage,
                "images:{} is a folder of unlabeled images: {what} needs labels \
                 (Fashion-MNIST or imagenet:ROOT); unlabeled images serve `qat calibrate` \
                 and `qat verify` (per-layer comparison)",
                dir.display()
            );
        }
        Ok(())
    }

    pub fn open(&self, opts: &SourceOptions) -> Result<Box<dyn DataSource>> {
        self.require_labels("training and accuracy")?;
        Ok(match self {
            DataSpec::FashionMnist(dir) => Box::new(FashionSource::open(dir, opts)?),
            DataSpec::ImageFolder(root) => {
                let mut cfg = ImageFolderConfig::new(opts.batch_size, opts.seed);
                if opts.workers > 0 {
                    cfg.workers = opts.workers;
                }
                cfg.train_limit = opts.train_limit;
                cfg.val_limit = opts.val_limit;
                Box::new(ImageFolderSource::open(root, cfg)?)
            }
            DataSpec::ImageFiles(_) => unreachable!("refused above"),
        })
    }
}

/// Fashion-MNIST in memory through the [`Loader`].
pub struct FashionSource {
    train: Loader,
    val: Loader,
}

impl FashionSource {
    pub fn open(dir: &Path, opts: &SourceOptions) -> Result<Self> {
        let load = |split, limit: Option<usize>| -> Result<_> {
            let mut d = FashionMnist::load(dir, split)?;
            if let Some(n) = limit {
                d.truncate(n);
            }
            Ok(d)
        };
        let norm = FashionMnist::normalize();
        let train = Loader::new(
            load(Split::Train, opts.train_limit)?,
            LoaderConfig::train(
                opts.batch_size,
                opts.seed,
                norm.clone(),
                Some(FashionMnist::augment()),
            ),
        )?;
        let val = Loader::new(
            load(Split::Test, opts.val_limit)?,
            LoaderConfig::eval(256, norm),
        )?;
        Ok(FashionSource { train, val })
    }
}

impl DataSource for FashionSource {
    fn describe(&self) -> String {
        format!(
            "Fashion-MNIST ({} train / {} test images)",
            self.train.dataset().len(),
            self.val.dataset().len()
        )
    }

    fn num_classes(&self) -> usize {
        self.train.dataset().num_classes()
    }

    fn class_names(&self) -> Vec<String> {
        CLASS_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn normalize(&self) -> Normalize {
        self.train.config().normalize.clone()
    }

    fn input_dims(&self) -> ImageDims {
        self.train.dataset().dims()
    }

    fn train_len(&self) -> usize {
        self.train.dataset().len()
    }

    fn batches_per_epoch(&self) -> usize {
        self.train.batches_per_epoch()
    }

    fn train_batches(&self, epoch: u64, start: usize) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.train.epoch_from(epoch, start))
    }

    fn val_batches(&self) -> Box<dyn Iterator<Item = Batch> + '_> {
        Box::new(self.val.epoch(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_data_spec() {
        assert_eq!(
            DataSpec::parse("imagenet:/data/in"),
            DataSpec::ImageFolder("/data/in".into())
        );
        assert_eq!(
            DataSpec::parse("/usr/share/x"),
            DataSpec::FashionMnist("/usr/share/x".into())
        );
        assert_eq!(
            DataSpec::parse("fashion-mnist:d"),
            DataSpec::FashionMnist("d".into())
        );
        assert_eq!(
            DataSpec::parse("images:/my/photos"),
            DataSpec::ImageFiles("/my/photos".into())
        );
        let e = DataSpec::parse("images:x")
            .require_labels("training")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unlabeled") && e.contains("qat verify"), "{e}");
    }
}
