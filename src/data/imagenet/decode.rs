//! JPEG and PNG files to 8-bit interleaved RGB, like PIL's
//! `Image.open(path).convert("RGB")` (what torchvision's ImageFolder loader
//! does).
//!
//! JPEG goes through `zune-jpeg` (pure Rust, SIMD colour conversion and
//! IDCT; the fastest of the candidates in docs/PERF.md). When the crop that
//! will be taken is at least twice the output size in both directions,
//! `jpeg-decoder` decodes at 1/2, 1/4 or 1/8 size instead (its scaled IDCT),
//! which skips most of the IDCT and colour conversion work on large photos.
//! PNG goes through the `png` crate. Alpha is dropped, grayscale is
//! replicated, 16-bit samples keep their high byte, as PIL's convert does.

use std::fmt;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Why a file could not be decoded (the loader logs it and skips the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The JPEG decoders compared in docs/PERF.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegBackend {
    /// `zune-jpeg`, full size (the default).
    Zune,
    /// `jpeg-decoder`, full size (for comparison).
    JpegDecoder,
}

/// Largest images accepted (a corrupt header must not allocate gigabytes).
const MAX_SIDE: usize = 1 << 14;

/// Image size from the header only: `(width, height)`.
pub fn probe_size(bytes: &[u8]) -> Result<(usize, usize), DecodeError> {
    if is_png(bytes) {
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = dec
            .read_info()
            .map_err(|e| DecodeError(format!("png: {e}")))?;
        let info = reader.info();
        return Ok((info.width as usize, info.height as usize));
    }
    let mut dec = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
    dec.decode_headers()
        .map_err(|e| DecodeError(format!("jpeg: {e:?}")))?;
    let info = dec
        .info()
        .ok_or_else(|| DecodeError("jpeg: no dimensions".into()))?;
    Ok((usize::from(info.width), usize::from(info.height)))
}

fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8])
}

/// Decodes a JPEG or PNG (recognized by content, not by name) to RGB at full
/// size.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    decode_with(bytes, JpegBackend::Zune)
}

/// [`decode`] with a chosen JPEG decoder.
pub fn decode_with(bytes: &[u8], backend: JpegBackend) -> Result<RgbImage, DecodeError> {
    if is_png(bytes) {
        decode_png(bytes)
    } else if is_jpeg(bytes) {
        match backend {
            JpegBackend::Zune => decode_zune(bytes),
            JpegBackend::JpegDecoder => decode_jpeg_decoder(bytes, 1),
        }
    } else {
        Err(DecodeError("neither a JPEG nor a PNG".into()))
    }
}

/// Decodes at full size, or — for a JPEG whose region of interest
/// (`roi_w` x `roi_h` source pixels, to be resized to `out_w` x `out_h`) is at
/// least twice the output in both directions — at a reduced size `1/k`
/// (`k` in 2, 4, 8) through the scaled IDCT. Returns the image and `k`.
pub fn decode_for(
    bytes: &[u8],
    roi: (usize, usize),
    out: (usize, usize),
) -> Result<(RgbImage, usize), DecodeError> {
    let k = reduction(roi, out);
    if k > 1 && is_jpeg(bytes) {
        if let Ok(img) = decode_jpeg_decoder(bytes, k) {
            return Ok((img, k));
        }
    }
    decode(bytes).map(|img| (img, 1))
}

/// The largest `k` in 1, 2, 4, 8 with `roi / k >= out` in both directions.
pub fn reduction(roi: (usize, usize), out: (usize, usize)) -> usize {
    let mut k = 1;
    while k < 8 && roi.0 >= 2 * k * out.0 && roi.1 >= 2 * k * out.1 {
        k *= 2;
    }
    k
}

fn check_size(w: usize, h: usize) -> Result<(), DecodeError> {
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(DecodeError(format!("unsupported image size {w}x{h}")));
    }
    Ok(())
}

fn decode_zune(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(MAX_SIDE)
        .set_max_height(MAX_SIDE);
    let mut dec =
        zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(bytes), opts);
    let data = dec
        .decode()
        .map_err(|e| DecodeError(format!("jpeg: {e:?}")))?;
    let info = dec
        .info()
        .ok_or_else(|| DecodeError("jpeg: no dimensions".into()))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    check_size(width, height)?;
    if data.len() != width * height * 3 {
        return Err(DecodeError(format!(
            "jpeg: {} bytes for a {width}x{height} RGB image",
            data.len()
        )));
    }
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

/// `jpeg-decoder` at `1/k` size (`k` = 1 for full size).
fn decode_jpeg_decoder(bytes: &[u8], k: usize) -> Result<RgbImage, DecodeError> {
    let err = |e: jpeg_decoder::Error| DecodeError(format!("jpeg: {e}"));
    let mut dec = jpeg_decoder::Decoder::new(bytes);
    dec.read_info().map_err(err)?;
    let info = dec
        .info()
        .ok_or_else(|| DecodeError("jpeg: no header".into()))?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    check_size(w, h)?;
    if k > 1 {
        // Ask for exactly the 1/k size, which makes the decoder pick the
        // k-times smaller IDCT.
        let req = |n: usize| n.div_ceil(k) as u16;
        dec.scale(req(w), req(h)).map_err(err)?;
    }
    let pixels = dec.decode().map_err(err)?;
    let info = dec
        .info()
        .ok_or_else(|| DecodeError("jpeg: no header".into()))?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    let n = width * height;
    let data = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 if pixels.len() == 3 * n => pixels,
        jpeg_decoder::PixelFormat::L8 if pixels.len() == n => gray_to_rgb(&pixels),
        jpeg_decoder::PixelFormat::CMYK32 if pixels.len() == 4 * n => cmyk_to_rgb(&pixels),
        f => {
            return Err(DecodeError(format!(
                "jpeg: unsupported pixel format {f:?} ({} bytes for {width}x{height})",
                pixels.len()
            )))
        }
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

fn gray_to_rgb(g: &[u8]) -> Vec<u8> {
    g.iter().flat_map(|&v| [v, v, v]).collect()
}

/// PIL's CMYK to RGB: `R = 255 - min(255, C + K)`-style subtraction is what
/// old PIL did; current Pillow uses `(255 - C) * (255 - K) / 255`.
fn cmyk_to_rgb(p: &[u8]) -> Vec<u8> {
    p.chunks_exact(4)
        .flat_map(|px| {
            let nk = 255 - u32::from(px[3]);
            let f = |c: u8| ((255 - u32::from(c)) * nk / 255) as u8;
            [f(px[0]), f(px[1]), f(px[2])]
        })
        .collect()
}

fn decode_png(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    use png::{ColorType, Transformations};
    let err = |e: png::DecodingError| DecodeError(format!("png: {e}"));
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palette and low-bit-depth to 8 bits, 16 bits to 8 (high byte).
    dec.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(err)?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    check_size(w, h)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DecodeError("png: image too large".into()))?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(err)?;
    let (width, height) = (out.width as usize, out.height as usize);
    let n = width * height;
    let stride = out.line_size;
    let channels = match out.color_type {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => {
            return Err(DecodeError("png: palette was not expanded".into()));
        }
    };
    if stride < width * channels || buf.len() < stride * height {
        return Err(DecodeError("png: short frame".into()));
    }
    let mut data = Vec::with_capacity(3 * n);
    for row in buf.chunks(stride).take(height) {
        for px in row[..width * channels].chunks_exact(channels) {
            match channels {
                1 | 2 => data.extend_from_slice(&[px[0], px[0], px[0]]),
                _ => data.extend_from_slice(&px[..3]),
            }
        }
    }
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_needs_twice_the_output_both_ways() {
        assert_eq!(reduction((447, 1000), (224, 224)), 1);
        assert_eq!(reduction((448, 448), (224, 224)), 2);
        assert_eq!(reduction((1000, 800), (224, 224)), 2);
        assert_eq!(reduction((1000, 900), (224, 224)), 4);
        assert_eq!(reduction((1800, 1800), (224, 224)), 8);
        assert_eq!(reduction((4000, 4000), (224, 224)), 8);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode(b"hello").is_err());
        assert!(decode(&[0xff, 0xd8, 0xff, 0x00, 1, 2, 3]).is_err());
        assert!(decode(b"\x89PNG\r\n\x1a\nxx").is_err());
    }
}
