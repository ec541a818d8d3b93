//! The IDX file format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a big-endian header, `0x00 0x00 <type> <ndims>` then one
//! `u32` per dimension, followed by the values. We read only unsigned bytes
//! (type `0x08`): images have 3 dims (count, rows, cols), labels 1.
//!
//! Files come from downloads and packages, so everything is checked and
//! reported with the file name: wrong magic, truncation, trailing bytes,
//! out-of-range labels, images and labels that disagree. Nothing is ever
//! allocated from a header field: the data is read first (bounded by the file
//! size or [`MAX_DECODED_BYTES`]) and the header is checked against it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::dataset::{Dataset, ImageDims};
use crate::{Error, Result};

/// Magic number of an IDX file of `u8` values with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of `u8` values with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;
/// Largest decoded file we accept: 1 GiB, twenty times MNIST's largest file;
/// protects against gzip bombs and corrupt files.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The images of an IDX file: `count` images of `rows x cols`, back to back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// A data error whose message starts with the file name.
fn bad(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::Data(format!("{}: {problem}", path.display()))
}

/// Reads a whole file, decompressing it when it starts with the gzip magic
/// (IDX files start with two zero bytes, so the two cannot be confused and
/// the file name does not matter).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let gzip = reader
        .fill_buf()
        .map_err(|e| Error::io(path, e))?
        .starts_with(&GZIP_MAGIC);
    let mut bytes = Vec::new();
    if gzip {
        MultiGzDecoder::new(reader)
            .take(MAX_DECODED_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(path, format!("truncated or corrupt gzip stream ({e})")))?;
    } else {
        if file_len > MAX_DECODED_BYTES {
            return Err(bad(
                path,
                format!("{file_len} bytes is over the {MAX_DECODED_BYTES}-byte limit"),
            ));
        }
        bytes.reserve_exact(file_len as usize);
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
    }
    if bytes.len() as u64 > MAX_DECODED_BYTES {
        return Err(bad(
            path,
            format!("decompresses to over {MAX_DECODED_BYTES} bytes"),
        ));
    }
    Ok(bytes)
}

/// Checks the header of `bytes` against `magic` and returns the dimensions
/// and the header length, after checking that the data that follows is
/// exactly as long as the dimensions say.
fn parse_header(path: &Path, bytes: &[u8], magic: u32, what: &str) -> Result<(Vec<usize>, usize)> {
    let ndims = (magic & 0xff) as usize;
    let header_len = 4 * (1 + ndims);
    let word = |i: usize| {
        u32::from_be_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    if bytes.len() < 4 {
        return Err(bad(
            path,
            format!(
                "truncated: {} bytes, too short for an IDX header",
                bytes.len()
            ),
        ));
    }
    let found = word(0);
    if found != magic {
        return Err(bad(
            path,
            format!("wrong magic 0x{found:08x}, expected 0x{magic:08x} (IDX {what}); is this the right file?"),
        ));
    }
    if bytes.len() < header_len {
        return Err(bad(
            path,
            format!(
                "truncated: {} bytes, the IDX {what} header needs {header_len}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (1..=ndims).map(|i| word(i) as usize).collect();
    let declared = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let present = (bytes.len() - header_len) as u64;
    match declared {
        Some(declared) if declared == present => Ok((dims, header_len)),
        Some(declared) if declared > present => Err(bad(
            path,
            format!("truncated: header declares {dims:?} ({declared} bytes of data) but only {present} follow"),
        )),
        Some(declared) => Err(bad(
            path,
            format!("{} trailing bytes after the {declared} declared by header {dims:?}", present - declared),
        )),
        None => Err(bad(path, format!("header dimensions {dims:?} overflow"))),
    }
}

/// Parses IDX images from bytes already read from `path` (used for messages).
pub fn parse_images(path: &Path, mut bytes: Vec<u8>) -> Result<IdxImages> {
    let (dims, header_len) = parse_header(path, &bytes, IMAGES_MAGIC, "images")?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(bad(path, format!("images of {rows}x{cols} pixels")));
    }
    bytes.drain(..header_len);
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes,
    })
}

/// Parses IDX labels from bytes already read from `path`, checking each is
/// below `num_classes`.
pub fn parse_labels(path: &Path, mut bytes: Vec<u8>, num_classes: usize) -> Result<Vec<u8>> {
    let (_, header_len) = parse_header(path, &bytes, LABELS_MAGIC, "labels")?;
    bytes.drain(..header_len);
    if let Some((i, &l)) = bytes
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= num_classes)
    {
        return Err(bad(
            path,
            format!("label {l} at index {i} is out of range (expected < {num_classes})"),
        ));
    }
    Ok(bytes)
}

/// Reads an IDX images file (raw or gzip).
pub fn read_images(path: &Path) -> Result<IdxImages> {
    parse_images(path, read_file(path)?)
}

/// Reads an IDX labels file (raw or gzip), each label below `num_classes`.
pub fn read_labels(path: &Path, num_classes: usize) -> Result<Vec<u8>> {
    parse_labels(path, read_file(path)?, num_classes)
}

/// Reads a pair of images and labels files into a single-channel dataset,
/// checking that they hold the same number of samples.
pub fn read_dataset(images_path: &Path, labels_path: &Path, num_classes: usize) -> Result<Dataset> {
    let images = read_images(images_path)?;
    let labels = read_labels(labels_path, num_classes)?;
    if images.count != labels.len() {
        return Err(Error::Data(format!(
            "{} holds {} images but {} holds {} labels",
            images_path.display(),
            images.count,
            labels_path.display(),
            labels.len()
        )));
    }
    Dataset::new(
        ImageDims::new(1, images.rows, images.cols),
        num_classes,
        images.pixels,
        labels,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
        std::iter::once(magic)
            .chain(dims.iter().copied())
            .flat_map(u32::to_be_bytes)
            .collect()
    }

    #[test]
    fn parses_a_tiny_file() {
        let mut bytes = header(IMAGES_MAGIC, &[2, 1, 3]);
        bytes.extend([1, 2, 3, 4, 5, 6]);
        let images = parse_images(Path::new("x"), bytes).unwrap();
        assert_eq!((images.count, images.rows, images.cols), (2, 1, 3));
        assert_eq!(images.pixels, [1, 2, 3, 4, 5, 6]);
        let mut bytes = header(LABELS_MAGIC, &[2]);
        bytes.extend([0, 9]);
        assert_eq!(parse_labels(Path::new("y"), bytes, 10).unwrap(), [0, 9]);
    }

    #[test]
    fn rejects_malformed_headers() {
        let p = Path::new("f.idx");
        let msg = |r: Result<IdxImages>| r.unwrap_err().to_string();
        assert!(msg(parse_images(p, vec![0, 0])).contains("truncated"));
        assert!(msg(parse_images(p, header(LABELS_MAGIC, &[1]))).contains("wrong magic"));
        assert!(msg(parse_images(p, header(IMAGES_MAGIC, &[1, 2]))).contains("truncated"));
        // A huge declared size must be reported, not allocated.
        let e = msg(parse_images(
            p,
            header(IMAGES_MAGIC, &[u32::MAX, u32::MAX, u32::MAX]),
        ));
        assert!(e.contains("truncated") || e.contains("overflow"), "{e}");
        let mut extra = header(IMAGES_MAGIC, &[1, 1, 1]);
        extra.extend([0, 0]);
        assert!(msg(parse_images(p, extra)).contains("1 trailing bytes"));
        assert!(msg(parse_images(p, header(IMAGES_MAGIC, &[0, 0, 5]))).contains("0x5 pixels"));
        assert!(msg(parse_images(p, vec![0, 0])).starts_with("data error: f.idx: "));
    }
}
