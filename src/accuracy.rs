//! Top-1/top-5 counting, shared by training, `qat eval` and `qat verify`.

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
    /// Adds the counts of another batch (or run).
    pub fn merge(&mut self, other: &Accuracy) {
        self.seen += other.seen;
        self.top1 += other.top1;
        self.top5 += other.top5;
    }
    pub fn top1(&self) -> f64 {
        100.0 * self.top1 as f64 / self.seen.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        100.0 * self.top5 as f64 / self.seen.max(1) as f64
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
