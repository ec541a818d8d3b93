//! The images a finished model is checked on, from any `--data`: the
//! Fashion-MNIST test split, an ImageFolder's `val` split (validation
//! transforms), or a flat folder of unlabeled files (`images:DIR`), each
//! prepared for the model's input (channels, size, normalization). `qat
//! verify` and `qat run` read their images through [`for_each`].

use crate::data::image_files::{ImageFiles, Prepare};
use crate::data::{DataSpec, FashionMnist, Loader, LoaderConfig, Normalize, SourceOptions, Split};
use crate::saved_model::ModelInfo;
use crate::{bail, Result};
use std::path::Path;
use std::sync::atomic::AtomicUsize;

/// One batch: `n` normalized NCHW images and their labels (`None` for
/// unlabeled images).
pub struct TestBatch<'a> {
    pub images: &'a [f32],
    pub labels: Option<&'a [u32]>,
    pub n: usize,
}

/// Calls `f` on the first `limit` images of `data` (all when `None`) in
/// batches of `batch_size`, prepared for `info`'s input; returns the number
/// of images. An image folder is checked against the model first
/// ([`crate::saved_model::check_source`]); unreadable files of `images:DIR`
/// are left out and counted on stderr. No image at all is an error.
pub fn for_each(
    data: &Path,
    info: &ModelInfo,
    limit: Option<usize>,
    batch_size: usize,
    mut f: impl FnMut(TestBatch) -> Result<()>,
) -> Result<usize> {
    let batch_size = batch_size.max(1);
    let mut seen = 0;
    match DataSpec::from_path(data) {
        DataSpec::ImageFiles(dir) => {
            let mut files = ImageFiles::scan(&dir)?;
            if let Some(n) = limit {
                files.truncate(n);
            }
            let prep = Prepare::new(info.in_channels, info.input_hw, &info.mean, &info.std)?;
            let skipped = AtomicUsize::new(0);
            for (x, n) in files.batches(&prep, batch_size, &skipped) {
                f(TestBatch {
                    images: &x,
                    labels: None,
                    n,
                })?;
                seen += n;
            }
            let skipped = skipped.into_inner();
            if skipped > 0 {
                eprintln!("{skipped} unreadable file(s) left out");
            }
        }
        spec @ DataSpec::ImageFolder(_) => {
            // ROOT/val with the validation transforms, the first N images
            // (evenly spaced over the classes).
            let source = spec.open(&SourceOptions {
                batch_size,
                seed: 0,
                train_limit: None,
                val_limit: limit,
                workers: 0,
            })?;
            crate::saved_model::check_source(info, source.as_ref(), &data.display().to_string())?;
            seen += labeled(source.val_batches(), &mut f)?;
        }
        DataSpec::FashionMnist(dir) => {
            let mut ds = FashionMnist::load(&dir, Split::Test)?;
            if let Some(n) = limit {
                ds.truncate(n);
            }
            let d = ds.dims();
            if d.channels != info.in_channels || [d.height, d.width] != info.input_hw {
                bail!(
                    Usage,
                    "the model takes {}x{}x{} images, Fashion-MNIST's are 1x28x28: pass \
                     --data imagenet:ROOT or images:DIR",
                    info.in_channels,
                    info.input_hw[0],
                    info.input_hw[1]
                );
            }
            let norm = Normalize::new(&info.mean, &info.std)?;
            let loader = Loader::new(ds, LoaderConfig::eval(batch_size, norm))?;
            seen += labeled(loader.epoch(0), &mut f)?;
        }
    }
    if seen == 0 {
        bail!(
            Data,
            "no images in {}: the test split is empty or no file could be read",
            data.display()
        );
    }
    Ok(seen)
}

/// Calls `f` on each labeled batch; returns the number of images.
fn labeled(
    batches: impl Iterator<Item = crate::data::Batch>,
    f: &mut impl FnMut(TestBatch) -> Result<()>,
) -> Result<usize> {
    let mut seen = 0;
    for b in batches {
        f(TestBatch {
            images: &b.images,
            labels: Some(&b.labels),
            n: b.n,
        })?;
        seen += b.n;
    }
    Ok(seen)
}
