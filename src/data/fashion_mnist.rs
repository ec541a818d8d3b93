//! Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017): 60 000 training and 10 000
//! test images of 28x28 grey clothing items, 10 classes, in IDX files.
//!
//! On Debian the package `dataset-fashion-mnist` installs the four original
//! `.gz` files in [`DEFAULT_DIR`]; a directory of uncompressed files (as some
//! mirrors ship them) works as well.

use std::path::{Path, PathBuf};

use super::augment::Augment;
use super::dataset::Dataset;
use super::idx;
use super::normalize::Normalize;
use crate::{Error, Result};

/// Where the Debian package `dataset-fashion-mnist` puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist/";

/// Class names in label order, from the dataset's README.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

pub const NUM_CLASSES: usize = 10;
pub const HEIGHT: usize = 28;
pub const WIDTH: usize = 28;

/// Mean and standard deviation of the training pixels on the `[0, 1]` scale;
/// `tests/data_fashion_mnist.rs` recomputes them from the real files. Both
/// splits are normalized with these, so evaluation matches training.
pub const MEAN: f32 = 0.2860;
pub const STD: f32 = 0.3530;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file name prefix of the split in the original distribution.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Entry point: `FashionMnist::load(dir, split)`.
pub struct FashionMnist;

impl FashionMnist {
    /// Loads one split from `dir`, accepting `<name>.gz` or `<name>` for each
    /// file; checks sizes (28x28) and labels.
    pub fn load(dir: &Path, split: Split) -> Result<Dataset> {
        let images = Self::find(dir, &format!("{}-images-idx3-ubyte", split.prefix()))?;
        let labels = Self::find(dir, &format!("{}-labels-idx1-ubyte", split.prefix()))?;
        let data = idx::read_dataset(&images, &labels, NUM_CLASSES)?;
        let dims = data.dims();
        if (dims.height, dims.width) != (HEIGHT, WIDTH) {
            return Err(Error::Data(format!(
                "{}: images are {}x{}, Fashion-MNIST has {HEIGHT}x{WIDTH}",
                images.display(),
                dims.height,
                dims.width
            )));
        }
        Ok(data)
    }

    /// The normalization the models are trained with.
    pub fn normalize() -> Normalize {
        Normalize::new(&[MEAN], &[STD]).expect("valid constants")
    }

    /// The usual augmentation for 28x28 images: shift by up to 2 pixels
    /// (zero padding 2, as CIFAR's 4 is for 32x32) and mirror; clothes are
    /// left-right symmetric enough for the flip to keep the label.
    pub fn augment() -> Augment {
        Augment::new(2, true)
    }

    /// `dir/name.gz`, else `dir/name`, else an error that says how to get
    /// the data.
    fn find(dir: &Path, name: &str) -> Result<PathBuf> {
        let gz = dir.join(format!("{name}.gz"));
        let raw = dir.join(name);
        if gz.is_file() {
            return Ok(gz);
        }
        if raw.is_file() {
            return Ok(raw);
        }
        Err(Error::Data(format!(
            "{}: Fashion-MNIST file not found (neither {name}.gz nor {name} in {}); \
             install with `apt-get install dataset-fashion-mnist` or pass --data PATH",
            gz.display(),
            dir.display()
        )))
    }
}
