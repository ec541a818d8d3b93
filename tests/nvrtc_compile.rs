//! Every kernel file compiles with NVRTC for sm_80 and sm_90 without errors or
//! warnings. Needs libnvrtc 13 (not a GPU): `scripts/test.sh` installs the
//! `nvidia-cuda-nvrtc==13.0.*` wheel in its virtual environment and points
//! `QAT_PYTHON` at it, where `probe::nvrtc` finds the library. Without it the
//! check is skipped and recorded (tests/common/skip.rs); under `CI=true` it
//! fails.
//!
//! With `QAT_DUMP_PTX=<dir>` it also writes `<dir>/<file>-<arch>.ptx`, which
//! `scripts/kernel_report.py` feeds to `ptxas -v`.

mod common;

use qat::backend::cuda::{kernels, nvrtc, probe};

const ARCHS: &[&str] = &["80", "90"];

#[test]
fn every_kernel_compiles_cleanly_for_sm80_and_sm90() {
    if let Err(why) = probe::nvrtc() {
        common::skip(
            "nvrtc_compile",
            &format!("{why}; scripts/test.sh installs it"),
        );
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    println!("NVRTC {major}.{minor}");
    let dump = std::env::var_os("QAT_DUMP_PTX").map(std::path::PathBuf::from);
    let mut failures = Vec::new();
    for (file, _) in kernels::KERNEL_FILES {
        for arch in ARCHS {
            // CUBIN runs the whole pipeline (ptxas included); PTX is what the
            // report script inspects.
            for target in [format!("sm_{arch}"), format!("compute_{arch}")] {
                match nvrtc::compile(file, &target) {
                    Ok(c) if c.log.is_empty() => {
                        if let (Some(dir), true) = (&dump, target.starts_with("compute_")) {
                            std::fs::create_dir_all(dir).unwrap();
                            let ptx = c.image.split(|&b| b == 0).next().unwrap_or_default();
                            let stem = file.trim_end_matches(".cu");
                            std::fs::write(dir.join(format!("{stem}-sm_{arch}.ptx")), ptx).unwrap();
                        }
                    }
                    Ok(c) => failures.push(format!("{file} for {target}: warnings:\n{}", c.log)),
                    Err(e) => failures.push(format!("{file} for {target}: {e}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "NVRTC problems:\n{}",
        failures.join("\n\n")
    );
    // Every entry point the backend launches must exist in some file.
    assert!(
        kernels::KERNELS.len() >= 20,
        "only {} kernels found",
        kernels::KERNELS.len()
    );
}
