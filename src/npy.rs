//! NumPy `.npy` files (format version 1.0, little-endian, C order) of the
//! three element types the int8 tools exchange: `float32` images and logits,
//! `int8` and `uint8` activations. `qat run --dump` writes them, `qat run
//! --against ort` reads ONNX Runtime's tensors back, and the tests hand them
//! to the ONNX Runtime referee.

use crate::{bail, Error, Result};
use std::io::Write;
use std::path::Path;

/// Element type of an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    I8,
    U8,
}

impl Dtype {
    fn descr(self) -> &'static str {
        match self {
            Dtype::F32 => "<f4",
            Dtype::I8 => "|i1",
            Dtype::U8 => "|u1",
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::I8 | Dtype::U8 => 1,
        }
    }
}

/// An array read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub bytes: Vec<u8>,
}

impl Array {
    /// Integer elements as `i32` (int8 and uint8 arrays).
    pub fn ints(&self) -> Option<Vec<i32>> {
        match self.dtype {
            Dtype::I8 => Some(self.bytes.iter().map(|&b| b as i8 as i32).collect()),
            Dtype::U8 => Some(self.bytes.iter().map(|&b| b as i32).collect()),
            Dtype::F32 => None,
        }
    }

    /// Float elements (float32 arrays).
    pub fn floats(&self) -> Option<Vec<f32>> {
        (self.dtype == Dtype::F32).then(|| {
            self.bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }
}

/// The file's bytes: magic, version 1.0, header padded to 64 bytes, data.
pub fn encode(dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        dtype.descr()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Writes `bytes` (elements of `dtype`, C order) as an array of `shape`.
pub fn write(path: &Path, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Result<()> {
    debug_assert_eq!(shape.iter().product::<usize>() * dtype.size(), bytes.len());
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(&encode(dtype, shape, bytes)).map_err(io)
}

pub fn write_f32(path: &Path, shape: &[usize], v: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    write(path, Dtype::F32, shape, &bytes)
}

pub fn write_i8(path: &Path, shape: &[usize], v: &[i8]) -> Result<()> {
    let bytes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
    write(path, Dtype::I8, shape, &bytes)
}

/// An array written batch by batch (`qat run --dump`): the first dimension
/// grows with each [`Stream::append`] and the header, which reserves room
/// for any shape, is rewritten with the final count by [`Stream::finish`].
pub struct Stream {
    file: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    dtype: Dtype,
    /// The dimensions after the first.
    inner: Vec<usize>,
    rows: usize,
}

/// Header bytes [`Stream`] reserves (a multiple of 64).
const STREAM_HEADER: usize = 256;

impl Stream {
    pub fn create(path: &Path, dtype: Dtype, inner: &[usize]) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut s = Stream {
            file: std::io::BufWriter::new(file),
            path: path.to_path_buf(),
            dtype,
            inner: inner.to_vec(),
            rows: 0,
        };
        s.put(&vec![b' '; STREAM_HEADER])?;
        Ok(s)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).map_err(|e| Error::Io {
            path: self.path.clone(),
            source: e,
        })
    }

    /// Appends `rows` rows (`bytes` holds them in C order).
    pub fn append(&mut self, rows: usize, bytes: &[u8]) -> Result<()> {
        let row: usize = self.inner.iter().product::<usize>() * self.dtype.size();
        if bytes.len() != rows * row {
            bail!(
                Shape,
                "{}: {} bytes are not {rows} rows of {row}",
                self.path.display(),
                bytes.len()
            );
        }
        self.rows += rows;
        self.put(bytes)
    }

    /// Writes the header with the final shape.
    pub fn finish(mut self) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut shape = vec![self.rows];
        shape.extend_from_slice(&self.inner);
        let mut header = encode(self.dtype, &shape, &[]);
        // `encode` pads to 64; widen the padding to the reserved size.
        let pad = STREAM_HEADER.checked_sub(header.len()).ok_or_else(|| {
            Error::Data(format!(
                "{}: shape too long for the header",
                self.path.display()
            ))
        })?;
        header.pop();
        header.extend(std::iter::repeat_n(b' ', pad));
        header.push(b'\n');
        let len = (header.len() - 10) as u16;
        header[8..10].copy_from_slice(&len.to_le_bytes());
        let io = |e| Error::Io {
            path: self.path.clone(),
            source: e,
        };
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.put(&header)?;
        self.file.flush().map_err(|e| Error::Io {
            path: self.path.clone(),
            source: e,
        })
    }
}

/// Reads an array written by NumPy (`np.save`) or [`write`].
pub fn read(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    decode(&bytes).map_err(|m| Error::Data(format!("{}: {m}", path.display())))
}

/// Parses the bytes of a `.npy` file.
pub fn decode(b: &[u8]) -> std::result::Result<Array, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = b
        .get(start..start + len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text .npy header")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("no '{key}' in the .npy header"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let dtype = [Dtype::F32, Dtype::I8, Dtype::U8]
        .into_iter()
        .find(|d| descr.starts_with(&format!("'{}'", d.descr())))
        .ok_or(format!(
            "element type {} is not float32, int8 or uint8",
            descr.split(',').next().unwrap_or("")
        ))?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let close = shape_text.find(')').ok_or("malformed shape")?;
    let shape = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension '{s}'"))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let elements = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let data = &b[start + len..];
    if Some(data.len()) != elements.checked_mul(dtype.size()) {
        bail_len(data.len(), elements * dtype.size())?;
    }
    Ok(Array {
        dtype,
        shape,
        bytes: data.to_vec(),
    })
}

fn bail_len(got: usize, want: usize) -> std::result::Result<(), String> {
    Err(format!("{got} data bytes where the shape needs {want}"))
}

/// Reads a float32 array, checking its element count.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let a = read(path)?;
    match a.floats() {
        Some(v) => Ok((a.shape, v)),
        None => bail!(Data, "{}: not a float32 array", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_type_and_rejects_bad_files() {
        let a = encode(Dtype::I8, &[2, 3], &[0, 1, 2, 255, 128, 127]);
        assert_eq!(a.len() % 64, 6, "header is padded to 64 bytes");
        let d = decode(&a).unwrap();
        assert_eq!(d.shape, [2, 3]);
        assert_eq!(d.ints().unwrap(), [0, 1, 2, -1, -128, 127]);
        let u = decode(&encode(Dtype::U8, &[3], &[0, 128, 255])).unwrap();
        assert_eq!(u.ints().unwrap(), [0, 128, 255]);
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f = decode(&encode(Dtype::F32, &[2], &bytes)).unwrap();
        assert_eq!(f.floats().unwrap(), [1.5, -2.0]);
        // A header NumPy writes (np.save of np.zeros((1, 2), np.int8)).
        let mut np = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
        let mut h = "{'descr': '|i1', 'fortran_order': False, 'shape': (1, 2), }".to_string();
        while h.len() < 0x75 {
            h.push(' ');
        }
        h.push('\n');
        np.extend_from_slice(h.as_bytes());
        np.extend_from_slice(&[7, 9]);
        assert_eq!(decode(&np).unwrap().ints().unwrap(), [7, 9]);
        let mut short = a.clone();
        short.pop();
        assert!(decode(&short).unwrap_err().contains("data bytes"));
        assert!(decode(b"PK\x03\x04 not npy").is_err());
        let mut f64s = a.clone();
        f64s[11 + 10..][..3].copy_from_slice(b"<f8");
        assert!(decode(&f64s).unwrap_err().contains("not float32"));
    }

    #[test]
    fn a_stream_rewrites_its_header_with_the_final_count() {
        let dir = std::env::temp_dir().join(format!("qat-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.npy");
        let mut s = Stream::create(&p, Dtype::I8, &[2, 2]).unwrap();
        s.append(1, &[1, 2, 3, 4]).unwrap();
        s.append(2, &[5, 6, 7, 8, 9, 10, 11, 255]).unwrap();
        assert!(s.append(1, &[1]).is_err());
        s.finish().unwrap();
        let a = read(&p).unwrap();
        assert_eq!(a.shape, [3, 2, 2]);
        assert_eq!(a.ints().unwrap(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1]);
        let raw = std::fs::read(&p).unwrap();
        assert_eq!(raw.len(), STREAM_HEADER + 12);
        assert_eq!(raw[STREAM_HEADER - 1], b'\n');
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
