//! Progress of an epoch: a bar when stderr is a terminal, otherwise (CI, a
//! log file, `nohup`) one plain line every few seconds, so a long epoch is
//! never silent.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProgressMode {
    /// Nothing (`--quiet`).
    Off,
    /// A bar on a terminal, else a line every `interval`.
    Auto { interval: Duration },
}

/// One epoch's progress.
pub struct Progress {
    kind: Kind,
    label: String,
    len: u64,
    pos: u64,
    message: String,
}

enum Kind {
    Off,
    Bar(ProgressBar),
    Lines {
        interval: Duration,
        started: Instant,
        last: Instant,
    },
}

impl Progress {
    /// Progress over `len` steps, labelled e.g. `epoch 3/15`.
    pub fn new(mode: ProgressMode, len: u64, label: String) -> Progress {
        let kind = match mode {
            ProgressMode::Off => Kind::Off,
            ProgressMode::Auto { .. } if std::io::stderr().is_terminal() => {
                let bar = ProgressBar::new(len);
                bar.set_style(
                    ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({eta})")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                bar.set_prefix(label.clone());
                Kind::Bar(bar)
            }
            ProgressMode::Auto { interval } => {
                let now = Instant::now();
                Kind::Lines {
                    interval,
                    started: now,
                    last: now,
                }
            }
        };
        Progress {
            kind,
            label,
            len,
            pos: 0,
            message: String::new(),
        }
    }

    /// Sets the text shown after the counts (loss, accuracy, speed).
    pub fn set_message(&mut self, msg: String) {
        if let Kind::Bar(b) = &self.kind {
            b.set_message(msg.clone());
        }
        self.message = msg;
    }

    /// One more step done.
    pub fn inc(&mut self) {
        self.pos += 1;
        match &mut self.kind {
            Kind::Off => {}
            Kind::Bar(b) => b.inc(1),
            Kind::Lines {
                interval,
                started,
                last,
            } => {
                if last.elapsed() >= *interval && self.pos < self.len {
                    *last = Instant::now();
                    eprintln!(
                        "{}",
                        line(
                            &self.label,
                            self.pos,
                            self.len,
                            &self.message,
                            started.elapsed()
                        )
                    );
                }
            }
        }
    }

    /// Removes the bar (the epoch summary line follows).
    pub fn finish(self) {
        if let Kind::Bar(b) = self.kind {
            b.finish_and_clear();
        }
    }
}

/// `epoch 2/15: step 120/468 (26%), loss 0.41 ..., 95 s elapsed, about 270 s left`.
fn line(label: &str, pos: u64, len: u64, msg: &str, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let left = if pos > 0 {
        secs * (len.saturating_sub(pos)) as f64 / pos as f64
    } else {
        0.0
    };
    let pct = 100.0 * pos as f64 / len.max(1) as f64;
    let msg = if msg.is_empty() {
        String::new()
    } else {
        format!(", {msg}")
    };
    format!(
        "{label}: step {pos}/{len} ({pct:.0}%){msg}, {secs:.0} s elapsed, about {left:.0} s left"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_where_the_epoch_stands() {
        let l = line(
            "epoch 2/15",
            120,
            480,
            "loss 0.4100",
            Duration::from_secs(60),
        );
        assert_eq!(
            l,
            "epoch 2/15: step 120/480 (25%), loss 0.4100, 60 s elapsed, about 180 s left"
        );
    }
}
