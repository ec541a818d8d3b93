//! Skipped checks: a check that cannot run because an outside tool, package
//! or data set is missing calls [`skip`], which prints `SKIPPED <check>:
//! <reason>` and appends `<check>: <reason>` to the skip log, which
//! `scripts/test.sh` lists at the end of the run. Under `CI=true` [`skip`]
//! panics instead, so CI cannot pass with a check that did not run. Only the
//! checks on a real GPU ([`skip_gpu`]) may skip in CI.
//!
//! The skip log is `$QAT_SKIP_LOG` (set by `scripts/test.sh`), else
//! `qat-skipped.txt` in cargo's `target/tmp` (it then grows until
//! `scripts/test.sh` empties it).
//!
//! std only: included by `tests/common/mod.rs` and, through `#[path]`, by the
//! library's unit tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// What `reason` should end with when a Python package is missing.
pub const INSTALL_PYTHON: &str = "run scripts/test.sh (installs them in a virtual environment \
     under target/) or `pip install numpy onnx onnxruntime`";

/// Whether this is a CI run (`CI=true` or `CI=1`), where only the real-GPU
/// checks may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The skip log (see the module documentation).
pub fn skip_log() -> PathBuf {
    if let Some(p) = std::env::var_os("QAT_SKIP_LOG") {
        return p.into();
    }
    option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tmp"))
        .join("qat-skipped.txt")
}

/// `check` cannot run because something outside the repository is missing;
/// `reason` says what, and exactly what to install. Records the skip, or
/// under `CI=true` panics with the reason.
pub fn skip(check: &str, reason: &str) {
    if in_ci() {
        panic!(
            "{check} did not run: {reason}\n\
             (CI=true: no check may skip except the ones on a real GPU)"
        );
    }
    record(check, reason);
}

/// `check` needs a real GPU and none is usable: recorded, also in CI.
pub fn skip_gpu(check: &str, reason: &str) {
    record(check, reason);
}

fn record(check: &str, reason: &str) {
    let line = format!("{check}: {}", one_line(reason));
    println!("SKIPPED {line}");
    let path = skip_log();
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        })
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("could not append to the skip log {}: {e}", path.display());
    }
}

/// The reason on one line (one log line per skip).
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}
