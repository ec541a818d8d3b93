//! Datasets, augmentation and batching, independent of tensors and devices.
//!
//! Everything here produces plain host vectors (`Vec<f32>` images in NCHW,
//! `Vec<u32>` labels) so the trainer can upload a batch to whichever device it
//! runs on. All randomness comes from [`Rng`] streams derived from
//! `(seed, epoch, ...)`, so a run resumed at any batch sees exactly the same
//! data as an uninterrupted one.
//!
//! - [`rng`]: a small deterministic PRNG with a plain-integer state;
//! - [`idx`]: the IDX file format (MNIST, Fashion-MNIST), raw or gzip;
//! - [`dataset`]: an in-memory labelled image set of `u8` pixels;
//! - [`fashion_mnist`]: where Fashion-MNIST lives and its constants;
//! - [`augment`]: random shift-crop with zero padding and horizontal flip;
//! - [`normalize`]: `u8` pixels to normalized `f32`;
//! - [`loader`]: resumable, shuffled, parallel batch iteration;
//! - [`imagenet`]: ImageFolder trees (ImageNet): JPEG/PNG decoding,
//!   torchvision's transforms, a parallel prefetching loader;
//! - [`image_files`]: a flat folder of unlabeled images (calibration and
//!   verification on the user's own data);
//! - [`prefetch`]: a bounded queue of batches built on a background thread;
//! - [`source`]: the [`DataSource`] trait the trainer uses, and `--data`;
//! - [`test_batches`]: the images `verify` and `run` check a model on.

pub mod augment;
pub mod dataset;
pub mod fashion_mnist;
pub mod idx;
pub mod image_files;
pub mod imagenet;
pub mod loader;
pub mod normalize;
pub mod prefetch;
pub mod source;
pub mod test_batches;

pub use crate::rng::Rng;
pub use augment::Augment;
pub use dataset::{Dataset, ImageDims};
pub use fashion_mnist::{FashionMnist, Split};
pub use image_files::ImageFiles;
pub use imagenet::{ImageFolderConfig, ImageFolderSource};
pub use loader::{Batch, Batches, Loader, LoaderConfig};
pub use normalize::Normalize;
pub use source::{DataSource, DataSpec, SourceOptions};
