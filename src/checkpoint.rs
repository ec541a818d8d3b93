//! Training checkpoints: model tensors, SGD momentum, the training position,
//! RNG states and free-form JSON metadata, in one safetensors file.
//!
//! # Format (version 1)
//!
//! A standard [safetensors] file, so any safetensors reader can open it:
//! `u64` little-endian header length, a JSON header, then the raw
//! little-endian data. Every tensor is `F32`:
//! - `model/<dotted name>`: a parameter or buffer of the model;
//! - `momentum/<dotted name>`: the SGD momentum of that parameter.
//!
//! The header's `__metadata__` string map holds:
//! - `format` = `"qat.checkpoint"`, `format_version` = `"1"`;
//! - `producer` = `"qat <crate version>"` (informational);
//! - `position`: JSON `{"epoch", "step_in_epoch", "global_step"}`;
//! - `rng`: JSON object, name -> four `u64` (exact in JSON as written by
//!   serde_json);
//! - `extra`: any JSON value (config, quantizer/observer state, schedule);
//! - `checksum` = `"crc32:<8 hex digits>"`, see `digest` below.
//!
//! safetensors itself has no checksum, so the CRC-32 covers every other
//! metadata entry and every tensor (name, shape and bytes, in name order): a
//! flipped bit in the data, or one that turns a name into another valid
//! name, is caught on load.
//!
//! Saving is atomic: the file is written to `<path>.tmp-<pid>` beside the
//! target, fsynced, renamed over the target, and the directory is fsynced. A
//! crash at any point leaves either the old file or the new one at `path`.
//!
//! [safetensors]: https://huggingface.co/docs/safetensors

use crate::nn::Module;
use crate::optim::Sgd;
use crate::rng::Rng;
use crate::{bail, Error, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The version [`Checkpoint::save`] writes and the newest [`Checkpoint::load`]
/// reads.
pub const FORMAT_VERSION: u32 = 1;

const FORMAT_NAME: &str = "qat.checkpoint";
const MODEL_PREFIX: &str = "model/";
const MOMENTUM_PREFIX: &str = "momentum/";
const CHECKSUM_KEY: &str = "checksum";
/// Longest header we accept (the safetensors limit).
const MAX_HEADER_LEN: u64 = 100_000_000;

/// A dense f32 array: the saved form of a tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// Where training stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Zero-based index of the epoch in progress (equal to the number of
    /// epochs completed when saved at an epoch boundary).
    pub epoch: usize,
    /// Optimizer steps already taken in that epoch.
    pub step_in_epoch: usize,
    /// Optimizer steps taken since the start of training.
    pub global_step: u64,
}

/// Everything needed to resume training bit for bit.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The version this checkpoint was read as ([`FORMAT_VERSION`] when new).
    pub format_version: u32,
    /// Model parameters and buffers by dotted name.
    pub model: BTreeMap<String, Array>,
    /// SGD momentum buffers by parameter name.
    pub momentum: BTreeMap<String, Array>,
    pub position: Position,
    /// Generator states by name (e.g. `"data"`, `"augment"`).
    pub rng: BTreeMap<String, [u64; 4]>,
    /// Free-form metadata: config, quantizer/observer state, schedule.
    pub extra: serde_json::Value,
}

impl Default for Checkpoint {
    fn default() -> Self {
        Checkpoint {
            format_version: FORMAT_VERSION,
            model: BTreeMap::new(),
            momentum: BTreeMap::new(),
            position: Position::default(),
            rng: BTreeMap::new(),
            extra: serde_json::Value::Null,
        }
    }
}

impl Checkpoint {
    /// A checkpoint holding every parameter and buffer of `model`.
    pub fn from_module(model: &dyn Module) -> Result<Self> {
        let mut ckpt = Checkpoint::default();
        for n in model.state() {
            let array = Array {
                shape: n.tensor.dims().to_vec(),
                values: n.tensor.to_vec()?,
            };
            if ckpt.model.insert(n.name.clone(), array).is_some() {
                bail!(Usage, "model has two tensors named `{}`", n.name);
            }
        }
        Ok(ckpt)
    }

    /// Copies the saved tensors into `model`. Every tensor of the model must
    /// be in the checkpoint with the same shape, and the checkpoint must have
    /// no other; otherwise the error lists the offending names and the model
    /// is left unchanged.
    pub fn restore_module(&self, model: &dyn Module) -> Result<()> {
        let state = model.state();
        let targets: Vec<(&str, &[usize])> = state
            .iter()
            .map(|n| (n.name.as_str(), n.tensor.dims()))
            .collect();
        check_names("model", &self.model, &targets)?;
        for n in &state {
            n.tensor.copy_from_slice(&self.model[&n.name].values)?;
        }
        Ok(())
    }

    /// Records the momentum buffers of `sgd`, replacing any held before.
    pub fn capture_optimizer(&mut self, sgd: &Sgd) -> Result<()> {
        self.momentum.clear();
        for (name, t) in sgd.momentum_buffers() {
            let array = Array {
                shape: t.dims().to_vec(),
                values: t.to_vec()?,
            };
            self.momentum.insert(name, array);
        }
        Ok(())
    }

    /// Restores the momentum buffers of `sgd`, with the same checks as
    /// [`Checkpoint::restore_module`]; `sgd` is unchanged on error.
    pub fn restore_optimizer(&self, sgd: &mut Sgd) -> Result<()> {
        let buffers = sgd.momentum_buffers();
        let targets: Vec<(&str, &[usize])> = buffers
            .iter()
            .map(|(name, t)| (name.as_str(), t.dims()))
            .collect();
        check_names("optimizer momentum", &self.momentum, &targets)?;
        for (name, _) in &buffers {
            sgd.set_momentum(name, &self.momentum[name].values)?;
        }
        Ok(())
    }

    /// Records the state of generator `name`.
    pub fn set_rng(&mut self, name: &str, rng: &Rng) {
        self.rng.insert(name.to_string(), rng.get_state());
    }

    /// The generator saved as `name`.
    pub fn rng(&self, name: &str) -> Result<Rng> {
        let Some(&state) = self.rng.get(name) else {
            bail!(Data, "checkpoint has no rng state named `{name}`");
        };
        Rng::from_state(state)
    }

    /// Writes the checkpoint to `path` atomically (see the module docs).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self
            .encode()
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        write_atomic(path, &bytes)
    }

    /// Reads and validates a checkpoint written by [`Checkpoint::save`].
    /// Every problem (truncation, corruption, a checksum mismatch, an
    /// unknown version) is an error naming the file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::decode(&bytes).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
    }

    fn encode(&self) -> std::result::Result<Vec<u8>, String> {
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), FORMAT_NAME.to_string());
        meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        meta.insert(
            "producer".to_string(),
            format!("qat {}", env!("CARGO_PKG_VERSION")),
        );
        meta.insert("position".to_string(), to_json(&self.position)?);
        meta.insert("rng".to_string(), to_json(&self.rng)?);
        meta.insert("extra".to_string(), to_json(&self.extra)?);

        let mut tensors = BTreeMap::new();
        for (prefix, group) in [
            (MODEL_PREFIX, &self.model),
            (MOMENTUM_PREFIX, &self.momentum),
        ] {
            for (name, a) in group {
                let numel = a.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if numel != Some(a.values.len()) {
                    return Err(format!(
                        "tensor `{name}` has shape {:?} but {} values",
                        a.shape,
                        a.values.len()
                    ));
                }
                let bytes: Vec<u8> = a.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.insert(
                    format!("{prefix}{name}"),
                    F32View {
                        shape: &a.shape,
                        bytes,
                    },
                );
            }
        }
        let crc = digest(
            &meta,
            tensors
                .iter()
                .map(|(n, t)| (n.as_str(), t.shape, t.bytes.as_slice())),
        );
        meta.insert(CHECKSUM_KEY.to_string(), format!("crc32:{crc:08x}"));
        safetensors::serialize(tensors, Some(meta.into_iter().collect())).map_err(|e| e.to_string())
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        precheck(bytes)?;
        // read_metadata is what SafeTensors::deserialize validates with: the
        // header, every offset, shape and dtype size, and full coverage.
        let (n, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a valid checkpoint: {e}"))?;
        let data = bytes.get(8 + n..).unwrap_or_default();
        let meta: BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let get = |key: &str| {
            meta.get(key)
                .ok_or_else(|| format!("metadata has no `{key}` entry (not a qat checkpoint?)"))
        };
        if get("format")? != FORMAT_NAME {
            return Err(format!(
                "metadata `format` is {:?}, expected {FORMAT_NAME:?}",
                meta["format"]
            ));
        }
        let version: u32 = get("format_version")?
            .parse()
            .map_err(|_| format!("bad format_version {:?}", meta["format_version"]))?;
        if version == 0 || version > FORMAT_VERSION {
            return Err(format!(
                "format version {version} is not supported (this build reads 1..={FORMAT_VERSION})"
            ));
        }

        // The checksum comes first so that corruption is reported as such
        // rather than as whatever parse error it happens to cause.
        let mut views = Vec::new();
        for (name, info) in header.tensors() {
            if info.dtype != Dtype::F32 {
                return Err(format!("tensor `{name}` is {:?}, expected F32", info.dtype));
            }
            let (start, end) = info.data_offsets;
            let Some(bytes) = data.get(start..end) else {
                return Err(format!(
                    "tensor `{name}` has bytes {start}..{end} outside the data"
                ));
            };
            views.push((name, info.shape.as_slice(), bytes));
        }
        views.sort_by(|a, b| a.0.cmp(&b.0));
        let stored = get(CHECKSUM_KEY)?;
        let mut rest = meta.clone();
        rest.remove(CHECKSUM_KEY);
        let crc = digest(
            &rest,
            views
                .iter()
                .map(|&(ref n, shape, data)| (n.as_str(), shape, data)),
        );
        if *stored != format!("crc32:{crc:08x}") {
            return Err(format!(
                "checksum mismatch (stored {stored}, computed crc32:{crc:08x}): the file is corrupt"
            ));
        }

        let parse = |key: &str| -> std::result::Result<serde_json::Value, String> {
            serde_json::from_str(get(key)?).map_err(|e| format!("metadata `{key}`: {e}"))
        };
        let position: Position = serde_json::from_value(parse("position")?)
            .map_err(|e| format!("metadata `position`: {e}"))?;
        let rng: BTreeMap<String, [u64; 4]> =
            serde_json::from_value(parse("rng")?).map_err(|e| format!("metadata `rng`: {e}"))?;
        let extra = parse("extra")?;

        let mut model = BTreeMap::new();
        let mut momentum = BTreeMap::new();
        for (name, shape, data) in views {
            let (group, short) = if let Some(s) = name.strip_prefix(MODEL_PREFIX) {
                (&mut model, s)
            } else if let Some(s) = name.strip_prefix(MOMENTUM_PREFIX) {
                (&mut momentum, s)
            } else {
                return Err(format!(
                    "tensor `{name}` is neither `{MODEL_PREFIX}...` nor `{MOMENTUM_PREFIX}...`"
                ));
            };
            // read_metadata checked data.len() == 4 * product(shape).
            let values = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let array = Array {
                shape: shape.to_vec(),
                values,
            };
            group.insert(short.to_string(), array);
        }
        Ok(Checkpoint {
            format_version: version,
            model,
            momentum,
            position,
            rng,
            extra,
        })
    }
}

fn to_json<T: Serialize>(v: &T) -> std::result::Result<String, String> {
    serde_json::to_string(v).map_err(|e| e.to_string())
}

/// CRC-32 of every metadata entry but the checksum itself and every tensor,
/// both in name order, each field length-prefixed so that no two different
/// contents hash the same byte stream.
fn digest<'a>(
    meta: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut field = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (k, v) in meta {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    for (name, shape, data) in tensors {
        field(name.as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|&d| (d as u64).to_le_bytes())
            .collect();
        field(&dims);
        field(data);
    }
    h.finalize()
}

/// Checks the header length and every tensor's byte range against the actual
/// file size before safetensors looks at them, with messages that name the
/// problem (and so that no offset arithmetic can overflow later).
fn precheck(bytes: &[u8]) -> std::result::Result<(), String> {
    let len = bytes.len() as u64;
    if len == 0 {
        return Err("file is empty".into());
    }
    let Some(head) = bytes.first_chunk::<8>() else {
        return Err(format!(
            "file is {len} bytes, too short for the 8-byte header length"
        ));
    };
    let n = u64::from_le_bytes(*head);
    if n > MAX_HEADER_LEN || n > len - 8 {
        return Err(format!(
            "header length {n} exceeds the file ({len} bytes; truncated or not a checkpoint)"
        ));
    }
    let data_len = len - 8 - n;
    let header = &bytes[8..8 + n as usize];
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| format!("header is not a JSON object ({e}); truncated or not a checkpoint"))?;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let Some([start, end]) = offsets.map(|o| o.as_slice()) else {
            return Err(format!("tensor `{name}` has no [start, end] data_offsets"));
        };
        let (Some(start), Some(end)) = (start.as_u64(), end.as_u64()) else {
            return Err(format!("tensor `{name}` has non-integer data_offsets"));
        };
        if start > end || end > data_len {
            return Err(format!(
                "tensor `{name}` claims bytes {start}..{end} but the data section has {data_len} bytes (truncated or corrupt)"
            ));
        }
        if info.get("dtype").and_then(|d| d.as_str()) != Some("F32") {
            return Err(format!("tensor `{name}` is not of dtype F32"));
        }
        let shape = info.get("shape").and_then(|s| s.as_array());
        let dims: Option<Vec<u64>> = shape.and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let Some(dims) = dims else {
            return Err(format!("tensor `{name}` has no valid shape"));
        };
        let bytes = dims
            .iter()
            .try_fold(4u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}` has shape {dims:?}, too large"))?;
        if bytes != end - start {
            return Err(format!(
                "tensor `{name}` has shape {dims:?} ({bytes} bytes) but claims bytes {start}..{end}"
            ));
        }
    }
    Ok(())
}

/// `check_names` compares a saved group against the live tensors it will be
/// copied into and reports every missing, unexpected and mis-shaped name.
fn check_names(
    what: &str,
    saved: &BTreeMap<String, Array>,
    live: &[(&str, &[usize])],
) -> Result<()> {
    let mut problems = Vec::new();
    let live_names: BTreeSet<&str> = live.iter().map(|(n, _)| *n).collect();
    let missing: Vec<&str> = live
        .iter()
        .filter(|(n, _)| !saved.contains_key(*n))
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        problems.push(format!("missing from checkpoint: {}", list(&missing)));
    }
    let extra: Vec<&str> = saved
        .keys()
        .map(String::as_str)
        .filter(|n| !live_names.contains(n))
        .collect();
    if !extra.is_empty() {
        problems.push(format!("not in the {what}: {}", list(&extra)));
    }
    for (name, dims) in live {
        if let Some(a) = saved.get(*name) {
            if a.shape != *dims {
                problems.push(format!(
                    "`{name}` has shape {:?} in the checkpoint, {:?} in the {what}",
                    a.shape, dims
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            Data,
            "checkpoint does not match the {what}: {}",
            problems.join("; ")
        );
    }
    Ok(())
}

/// Names in backquotes, the first 10 and a count of the rest.
fn list(names: &[&str]) -> String {
    let mut s: Vec<String> = names.iter().take(10).map(|n| format!("`{n}`")).collect();
    if names.len() > 10 {
        s.push(format!("and {} more", names.len() - 10));
    }
    s.join(", ")
}

/// A tensor's little-endian bytes, as safetensors wants them.
struct F32View<'a> {
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new
/// one, never a mix: temp file in the same directory, fsync, rename, fsync of
/// the directory (which makes the rename itself durable).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let Some(file_name) = path.file_name() else {
        bail!(Usage, "{}: not a file path", path.display());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let write = || -> Result<()> {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    };
    if let Err(e) = write() {
        // Best effort: the temp file is garbage now, and a leftover one is
        // harmless anyway (load never looks at it).
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Other systems cannot open a directory as a file; the rename is still
/// atomic there, only its durability is up to the OS.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}
