//! Accuracy counting and the JSON-lines metrics log.

use crate::{bail, Error, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::accuracy::Accuracy;

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub mode: String,
    pub lr: f32,
    pub train_loss: f64,
    pub train_top1: f64,
    pub val_loss: f64,
    pub val_top1: f64,
    pub val_top5: f64,
    pub images_per_sec: f64,
    pub epoch_seconds: f64,
}

/// Appends records to a JSON-lines file.
pub struct MetricsLog {
    path: PathBuf,
}

impl MetricsLog {
    pub fn new(path: &Path) -> Self {
        MetricsLog {
            path: path.to_path_buf(),
        }
    }
    pub fn append<T: Serialize>(&self, record: &T) -> Result<()> {
        let line =
            serde_json::to_string(record).map_err(|e| Error::Data(format!("metrics: {e}")))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&self.path, e))
    }
    /// Replaces the file with `records` (atomically), e.g. to drop the
    /// epochs after a resumed checkpoint.
    pub fn rewrite(&self, records: &[EpochRecord]) -> Result<()> {
        let mut text = String::new();
        for r in records {
            text += &serde_json::to_string(r).map_err(|e| Error::Data(format!("metrics: {e}")))?;
            text.push('\n');
        }
        crate::checkpoint::write_atomic(&self.path, text.as_bytes())
    }

    /// Every record in the file (for plots and resume). A malformed line is
    /// an error naming its number.
    pub fn read(&self) -> Result<Vec<EpochRecord>> {
        let (records, torn) = self.parse()?;
        if let Some(line) = torn {
            bail!(
                Data,
                "{}: line {line} is incomplete (a write was interrupted); `qat train --resume` \
                 repairs it",
                self.path.display()
            );
        }
        Ok(records)
    }

    /// [`read`](Self::read), dropping an incomplete last line (what a kill
    /// during an append leaves) with a warning instead of failing.
    pub fn read_repairing(&self) -> Result<Vec<EpochRecord>> {
        let (records, torn) = self.parse()?;
        if let Some(line) = torn {
            eprintln!(
                "warning: {}: dropped the incomplete line {line} (an interrupted write)",
                self.path.display()
            );
        }
        Ok(records)
    }

    /// The complete records, and the number of a last line that is cut
    /// short (no newline at its end and not parseable).
    fn parse(&self) -> Result<(Vec<EpochRecord>, Option<usize>)> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let mut records = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(l) {
                Ok(r) => records.push(r),
                // The last piece has no newline after it: an append cut short.
                Err(_) if i + 1 == lines.len() => return Ok((records, Some(i + 1))),
                Err(e) => bail!(Data, "{}: line {}: {e}", self.path.display(), i + 1),
            }
        }
        Ok((records, None))
    }
}
