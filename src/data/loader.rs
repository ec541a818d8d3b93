//! Resumable, shuffled, parallel batch iteration over an in-memory dataset.
//!
//! Every random choice is a pure function of the seed and the position:
//! - the order of epoch `e` is a shuffle drawn from `Rng::derive(seed, [PERMUTATION, e])`;
//! - the augmentation of sample `i` in epoch `e` uses
//!   `Rng::derive(seed, [AUGMENT, e, i])`.
//!
//! So a checkpoint only needs `(epoch, batch)`: [`Loader::epoch_from`]
//! rebuilds exactly the batches an uninterrupted run would have seen, and
//! assembling samples in parallel cannot change the result.

use rayon::prelude::*;

use super::augment::Augment;
use super::dataset::{Dataset, ImageDims};
use super::normalize::Normalize;
use crate::rng::stream::{AUGMENT, PERMUTATION};
use crate::rng::Rng;
use crate::{bail, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Visit samples in a fresh random order each epoch (else in file order).
    pub shuffle: bool,
    /// Skip the last batch when it would be smaller than `batch_size`.
    pub drop_last: bool,
    /// `None` for evaluation.
    pub augment: Option<Augment>,
    pub normalize: Normalize,
}

impl LoaderConfig {
    /// Training: shuffled, augmented, full batches only (a tiny last batch
    /// gives noisy batch-norm statistics).
    pub fn train(
        batch_size: usize,
        seed: u64,
        normalize: Normalize,
        augment: Option<Augment>,
    ) -> Self {
        LoaderConfig {
            batch_size,
            seed,
            shuffle: true,
            drop_last: true,
            augment,
            normalize,
        }
    }

    /// Evaluation: every sample once, in order, unaugmented.
    pub fn eval(batch_size: usize, normalize: Normalize) -> Self {
        LoaderConfig {
            batch_size,
            seed: 0,
            shuffle: false,
            drop_last: false,
            augment: None,
            normalize,
        }
    }
}

/// A batch ready for upload: `images` is NCHW, `n * dims.numel()` values.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub n: usize,
    pub dims: ImageDims,
}

impl Batch {
    /// `[n, channels, height, width]`.
    pub fn shape(&self) -> [usize; 4] {
        [
            self.n,
            self.dims.channels,
            self.dims.height,
            self.dims.width,
        ]
    }
}

/// Owns its dataset, so a trainer can keep it in a struct next to the model.
pub struct Loader {
    data: Dataset,
    cfg: LoaderConfig,
}

impl Loader {
    pub fn new(data: Dataset, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            bail!(Data, "loader: batch size must be positive");
        }
        if cfg.normalize.channels() != data.dims().channels {
            bail!(
                Data,
                "loader: normalization has {} channels, images have {}",
                cfg.normalize.channels(),
                data.dims().channels
            );
        }
        if data.len() > u32::MAX as usize {
            bail!(
                Data,
                "loader: {} samples do not fit u32 indices",
                data.len()
            );
        }
        Ok(Loader { data, cfg })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.data
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.data.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The order in which epoch `epoch` visits the samples.
    pub fn order(&self, epoch: u64) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.data.len() as u32).collect();
        if self.cfg.shuffle {
            Rng::derive(self.cfg.seed, &[PERMUTATION, epoch]).shuffle(&mut order);
        }
        order
    }

    /// All batches of epoch `epoch`.
    pub fn epoch(&self, epoch: u64) -> Batches<'_> {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch index `start` on: identical to
    /// `epoch(epoch).skip(start)` without assembling the skipped batches.
    /// A `start` at or past the end gives an empty iterator.
    pub fn epoch_from(&self, epoch: u64, start: usize) -> Batches<'_> {
        let end = self.batches_per_epoch();
        Batches {
            loader: self,
            epoch,
            order: self.order(epoch),
            next: start.min(end),
            end,
        }
    }

    /// Normalizes (and augments) the samples `indices` into one batch, one
    /// sample per rayon task.
    fn assemble(&self, epoch: u64, indices: &[u32]) -> Batch {
        let dims = self.data.dims();
        let numel = dims.numel();
        let mut images = vec![0.0f32; indices.len() * numel];
        images
            .par_chunks_mut(numel)
            .zip(indices.par_iter())
            .for_each_init(
                || vec![0u8; numel],
                |scratch, (dst, &i)| {
                    let src = self.data.image(i as usize);
                    let pixels = match &self.cfg.augment {
                        Some(aug) => {
                            let mut rng =
                                Rng::derive(self.cfg.seed, &[AUGMENT, epoch, u64::from(i)]);
                            aug.apply(src, scratch, dims, &mut rng);
                            &scratch[..]
                        }
                        None => src,
                    };
                    self.cfg.normalize.apply(pixels, dst, dims);
                },
            );
        let labels = indices
            .iter()
            .map(|&i| u32::from(self.data.label(i as usize)))
            .collect();
        Batch {
            images,
            labels,
            n: indices.len(),
            dims,
        }
    }
}

/// The batches of one epoch, assembled lazily, one per `next()`.
pub struct Batches<'a> {
    loader: &'a Loader,
    epoch: u64,
    order: Vec<u32>,
    next: usize,
    end: usize,
}

impl Batches<'_> {
    /// Index within the epoch of the batch the next `next()` returns (what a
    /// checkpoint saves to resume with [`Loader::epoch_from`]).
    pub fn position(&self) -> usize {
        self.next
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let b = self.loader.cfg.batch_size;
        let start = self.next * b;
        let stop = (start + b).min(self.order.len());
        self.next += 1;
        Some(self.loader.assemble(self.epoch, &self.order[start..stop]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}
