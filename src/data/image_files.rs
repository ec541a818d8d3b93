//! A flat folder of unlabeled images (`--data images:DIR`): what a user has
//! of their own deployment data. Without labels it can calibrate a model
//! and drive `verify`'s per-layer comparison, not train or measure accuracy.
//!
//! Files are taken in sorted name order (`.jpg`, `.jpeg`, `.png`, as for
//! image folders) and prepared for the model that reads them, from its
//! input shape and normalization: shorter side resized and center-cropped
//! to the model's square input size (for inputs of 64 pixels and more,
//! resized to 8/7 of it first, torchvision's `Resize(256) + CenterCrop(224)`
//! proportion), then normalized. A 1-channel model gets the luma of the
//! resampled image (ITU-R 601 weights 0.299, 0.587, 0.114; a grayscale file
//! comes back unchanged). A file that cannot be read or decoded is logged
//! and left out, as in image folders.

use super::dataset::ImageDims;
use super::imagenet::folder::{is_image, EXTENSIONS};
use super::imagenet::load_sample;
use super::normalize::Normalize;
use crate::{bail, Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Input sides from which the validation margin (resize to 8/7, then crop)
/// is applied; smaller inputs are resized straight to their size.
const MARGIN_FROM: usize = 64;

/// The image files of one folder, sorted by name.
#[derive(Clone, Debug)]
pub struct ImageFiles {
    pub root: PathBuf,
    pub paths: Vec<PathBuf>,
    /// Entries skipped: sub-folders and files without an image extension.
    pub ignored: usize,
}

/// How the images are prepared for one model.
#[derive(Clone, Debug)]
pub struct Prepare {
    /// The model's input: channels 1 or 3, a square plane.
    pub dims: ImageDims,
    pub norm: Normalize,
}

impl Prepare {
    /// For a model of `channels` input channels, `[height, width]` input
    /// and per-channel `mean` / `std` of pixels / 255.
    pub fn new(channels: usize, hw: [usize; 2], mean: &[f32], std: &[f32]) -> Result<Self> {
        if channels != 1 && channels != 3 {
            bail!(
                Usage,
                "a folder of images feeds 1- or 3-channel models; this one takes {channels} channels"
            );
        }
        if hw[0] != hw[1] || hw[0] == 0 {
            bail!(
                Usage,
                "a folder of images feeds models with a square input; this one takes {}x{}",
                hw[0],
                hw[1]
            );
        }
        Ok(Prepare {
            dims: ImageDims::new(channels, hw[0], hw[1]),
            norm: Normalize::new(mean, std)?,
        })
    }

    /// The shorter side before the center crop.
    pub fn resize(&self) -> usize {
        let crop = self.dims.height;
        if crop >= MARGIN_FROM {
            (crop * 8 + 3) / 7
        } else {
            crop
        }
    }

    /// Reads, decodes and prepares one file into `dst` (CHW, normalized).
    pub fn load(&self, path: &Path, dst: &mut [f32]) -> std::result::Result<(), String> {
        let crop = self.dims.height;
        let (mean, std) = (self.norm.mean(), self.norm.std());
        if self.dims.channels == 3 {
            return load_sample(path, None, crop, self.resize(), &self.norm, dst);
        }
        // One channel: the three channels with the model's (single) mean and
        // std, then their luma. The weights sum to 1, so normalizing before
        // or after the weighted sum is the same.
        let norm3 = Normalize::new(&[mean[0]; 3], &[std[0]; 3]).map_err(|e| e.to_string())?;
        let plane = crop * crop;
        let mut rgb = vec![0.0f32; 3 * plane];
        load_sample(path, None, crop, self.resize(), &norm3, &mut rgb)?;
        let (r, rest) = rgb.split_at(plane);
        let (g, b) = rest.split_at(plane);
        for (i, d) in dst.iter_mut().enumerate() {
            // Gray pixels pass exactly (the weighted sum could round).
            *d = if r[i] == g[i] && g[i] == b[i] {
                r[i]
            } else {
                0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i]
            };
        }
        Ok(())
    }
}

impl ImageFiles {
    /// The image files directly in `dir` (not in sub-folders), sorted.
    pub fn scan(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                Data,
                "images:{}: no such folder (expected a folder of .jpg/.jpeg/.png files)",
                dir.display()
            );
        }
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut paths = Vec::new();
        let mut ignored = 0;
        for entry in rd {
            let path = entry.map_err(|e| Error::io(dir, e))?.path();
            if path.is_file() && is_image(&path) {
                paths.push(path);
            } else {
                ignored += 1;
            }
        }
        paths.sort();
        if paths.is_empty() {
            bail!(
                Data,
                "images:{} holds no {} files ({ignored} other entries; sub-folders are not searched)",
                dir.display(),
                EXTENSIONS.join("/")
            );
        }
        if ignored > 0 {
            eprintln!(
                "{}: ignored {ignored} entries that are not .jpg/.jpeg/.png files",
                dir.display()
            );
        }
        Ok(ImageFiles {
            root: dir.to_path_buf(),
            paths,
            ignored,
        })
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Keeps the first `n` files.
    pub fn truncate(&mut self, n: usize) {
        self.paths.truncate(n);
    }

    /// The files in batches of `batch` prepared images (`(images, n)`, NCHW),
    /// decoded in parallel; unreadable files are logged, counted in
    /// `skipped` and left out (a batch left empty is not yielded).
    pub fn batches<'a>(
        &'a self,
        prep: &'a Prepare,
        batch: usize,
        skipped: &'a AtomicUsize,
    ) -> impl Iterator<Item = (Vec<f32>, usize)> + 'a {
        let numel = prep.dims.numel();
        self.paths.chunks(batch.max(1)).filter_map(move |paths| {
            let mut images = vec![0.0f32; paths.len() * numel];
            let ok: Vec<bool> = images
                .par_chunks_mut(numel)
                .zip(paths.par_iter())
                .map(|(dst, path)| {
                    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        prep.load(path, dst)
                    }))
                    .unwrap_or_else(|_| Err("the decoder panicked".into()));
                    loaded
                        .map_err(|e| {
                            eprintln!("skipping {}: {e}", path.display());
                            skipped.fetch_add(1, Ordering::Relaxed);
                        })
                        .is_ok()
                })
                .collect();
            let mut n = 0;
            for (k, good) in ok.into_iter().enumerate() {
                if good {
                    if n != k {
                        images.copy_within(k * numel..(k + 1) * numel, n * numel);
                    }
                    n += 1;
                }
            }
            images.truncate(n * numel);
            (n > 0).then_some((images, n))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qat-image-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn gray_image_of_the_model_size_passes_unchanged() {
        let d = tmp("gray");
        let px: Vec<u8> = (0..28 * 28).map(|i| (i * 7 % 256) as u8).collect();
        write_png(&d.join("a.png"), 28, 28, png::ColorType::Grayscale, &px);
        let prep = Prepare::new(1, [28, 28], &[0.25], &[0.5]).unwrap();
        assert_eq!(prep.resize(), 28);
        let mut out = vec![0.0f32; 28 * 28];
        prep.load(&d.join("a.png"), &mut out).unwrap();
        for (o, &p) in out.iter().zip(&px) {
            let want = (f32::from(p) / 255.0 - 0.25) / 0.5;
            assert!((o - want).abs() < 1e-5, "{o} vs {want}");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn rgb_becomes_luma_for_one_channel_models() {
        let d = tmp("rgb");
        // Pure red, green and blue columns.
        let mut px = Vec::new();
        for _y in 0..4 {
            for x in 0..3 {
                let mut c = [0u8; 3];
                c[x] = 255;
                px.extend_from_slice(&c);
            }
        }
        write_png(&d.join("c.png"), 3, 4, png::ColorType::Rgb, &px);
        let prep = Prepare::new(1, [3, 3], &[0.0], &[1.0]).unwrap();
        let mut out = vec![0.0f32; 9];
        prep.load(&d.join("c.png"), &mut out).unwrap();
        // Shorter side 3 already: a center crop of rows 0..3 (of 4, offset 0).
        for row in out.chunks(3) {
            for (v, want) in row.iter().zip([0.299f32, 0.587, 0.114]) {
                assert!((v - want).abs() < 1e-5, "{row:?}");
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn scan_sorts_skips_and_refuses_empty_folders() {
        let d = tmp("scan");
        let px = vec![128u8; 16];
        write_png(&d.join("b.png"), 4, 4, png::ColorType::Grayscale, &px);
        write_png(&d.join("a.PNG"), 4, 4, png::ColorType::Grayscale, &px);
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        std::fs::write(d.join("broken.jpg"), "not a jpeg").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let files = ImageFiles::scan(&d).unwrap();
        let names: Vec<_> = files
            .paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["a.PNG", "b.png", "broken.jpg"]);
        assert_eq!(files.ignored, 2);
        let prep = Prepare::new(1, [4, 4], &[0.5], &[0.5]).unwrap();
        let skipped = AtomicUsize::new(0);
        let batches: Vec<_> = files.batches(&prep, 2, &skipped).collect();
        // The broken file is left out of the second batch.
        assert_eq!(batches.iter().map(|b| b.1).collect::<Vec<_>>(), [2]);
        assert_eq!(skipped.load(Ordering::Relaxed), 1);

        let empty = tmp("empty");
        let e = ImageFiles::scan(&empty).unwrap_err().to_string();
        assert!(e.contains("holds no"), "{e}");
        let e = ImageFiles::scan(&empty.join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such folder"), "{e}");
        assert!(Prepare::new(2, [4, 4], &[0.5; 2], &[0.5; 2]).is_err());
        assert!(Prepare::new(1, [4, 5], &[0.5], &[0.5]).is_err());
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&empty).unwrap();
    }
}
