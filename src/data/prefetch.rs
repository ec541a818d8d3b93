//! A bounded prefetch queue: one producer thread assembles batches ahead of
//! the consumer (the training step), at most `depth` of them waiting, so
//! memory stays bounded whatever the dataset size: `depth` queued batches,
//! one being assembled and the one being consumed.

use super::loader::Batch;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches produced on a background thread, in order.
pub struct Prefetch {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
    next: usize,
    end: usize,
    skipped: Arc<AtomicUsize>,
    label: String,
    reported: bool,
}

impl Prefetch {
    /// Runs `make(b)` for `b` in `start..end` on a new thread, keeping at most
    /// `depth` finished batches queued. `make` returns `None` for a batch
    /// with no usable sample (it is left out) and counts the samples it
    /// skipped in `skipped`; `label` names the epoch in the end-of-epoch
    /// report of skipped files.
    pub fn spawn<F>(
        start: usize,
        end: usize,
        depth: usize,
        skipped: Arc<AtomicUsize>,
        label: String,
        mut make: F,
    ) -> Self
    where
        F: FnMut(usize) -> Option<Batch> + Send + 'static,
    {
        let (tx, rx) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("qat-prefetch".into())
            .spawn(move || {
                for b in start..end {
                    if let Some(batch) = make(b) {
                        if tx.send(batch).is_err() {
                            return; // the consumer stopped early
                        }
                    }
                }
            })
            .expect("spawning the prefetch thread");
        Prefetch {
            rx: Some(rx),
            handle: Some(handle),
            next: start.min(end),
            end,
            skipped,
            label,
            reported: false,
        }
    }

    /// Files skipped so far in this epoch (unreadable or corrupt).
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Index within the epoch of the next batch (as `Batches::position`).
    pub fn position(&self) -> usize {
        self.next
    }
}

impl Iterator for Prefetch {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let got = self.rx.as_ref().and_then(|rx| rx.recv().ok());
        match got {
            Some(b) => {
                self.next += 1;
                Some(b)
            }
            None => {
                // The producer is done (or died): a panic there is re-raised
                // here rather than passing for a short epoch.
                if let Some(h) = self.handle.take() {
                    if let Err(panic) = h.join() {
                        std::panic::resume_unwind(panic);
                    }
                }
                self.next = self.end;
                let n = self.skipped();
                if n > 0 && !self.reported {
                    eprintln!("{}: skipped {n} unreadable image(s)", self.label);
                }
                self.reported = true;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.end - self.next))
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Closing the channel makes a blocked producer's send fail.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageDims;

    fn batch(v: f32) -> Batch {
        Batch {
            images: vec![v],
            labels: vec![0],
            n: 1,
            dims: ImageDims::new(1, 1, 1),
        }
    }

    #[test]
    fn in_order_from_start_and_empty_batches_left_out() {
        let p = Prefetch::spawn(2, 6, 1, Arc::default(), "t".into(), |b| {
            (b != 4).then(|| batch(b as f32))
        });
        let got: Vec<f32> = p.map(|b| b.images[0]).collect();
        assert_eq!(got, [2.0, 3.0, 5.0]);
    }

    #[test]
    #[should_panic(expected = "producer failed")]
    fn a_producer_panic_reaches_the_consumer() {
        let p = Prefetch::spawn(0, 3, 1, Arc::default(), "t".into(), |b| {
            assert!(b < 1, "producer failed");
            Some(batch(0.0))
        });
        for _ in p {}
    }
}
