//! Accuracy counting and the JSON-lines metrics log.

use crate::{bail, Error, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Running top-1/top-5 counts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Accuracy {
    pub seen: usize,
    pub top1: usize,
    pub top5: usize,
}

impl Accuracy {
    /// Counts a batch of `logits` (`labels.len()` rows).
    pub fn add(&mut self, logits: &[f32], labels: &[u32]) {
        let k = logits.len() / labels.len().max(1);
        for (row, &label) in logits.chunks(k).zip(labels) {
            let label = label as usize;
            let target = row[label];
            // Rank of the true class in a stable descending sort: classes
            // scoring higher, plus equal scores at a lower index. Ties are
            // broken by class index, never in favour of the label, so top-1
            // is exactly "argmax (first maximum) == label" as in
            // `torch.argmax` and `qat verify`. This matters for int8 logits,
            // where a tie between the top two classes is common.
            let rank = row
                .iter()
                .enumerate()
                .filter(|&(j, &v)| v > target || (v == target && j < label))
                .count();
            self.seen += 1;
            self.top1 += (rank == 0) as usize;
            self.top5 += (rank < 5) as usize;
        }
    }
    pub fn top1(&self) -> f64 {
        100.0 * self.top1 as f64 / self.seen.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        100.0 * self.top5 as f64 / self.seen.max(1) as f64
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_counts() {
        let mut a = Accuracy::default();
        // Row 0: label 2 is the max. Row 1: label 0 ranks 6th of 7.
        let logits = [
            0.1, 0.2, 0.9, 0.0, 0.0, 0.0, 0.0, 0.1, 0.9, 0.8, 0.7, 0.6, 0.5, 0.0,
        ];
        a.add(&logits, &[2, 0]);
        assert_eq!((a.seen, a.top1, a.top5), (2, 1, 1));
    }

    /// Tied scores rank by class index, whichever class is the label: the
    /// tie cannot be resolved in the label's favour.
    #[test]
    fn ties_break_by_class_index_not_by_label() {
        let row = [0.5, 0.9, 0.9, 0.1];
        let mut first = Accuracy::default();
        first.add(&row, &[1]);
        assert_eq!((first.top1, first.top5), (1, 1));
        let mut second = Accuracy::default();
        second.add(&row, &[2]);
        assert_eq!((second.top1, second.top5), (0, 1));
        // Six classes tied: the last one ranks 6th, outside the top 5.
        let mut flat = Accuracy::default();
        flat.add(&[1.0; 6], &[5]);
        assert_eq!((flat.top1, flat.top5), (0, 0));
        flat.add(&[1.0; 6], &[4]);
        assert_eq!((flat.top1, flat.top5), (0, 1));
    }
}
