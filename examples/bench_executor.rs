//! Times the int8 executor on an ONNX graph, for `scripts/bench_executor.py`
//! to set beside ONNX Runtime in the same run.
//!
//! ```text
//! cargo run --release --example bench_executor -- MODEL.onnx IMAGES.f32 BATCH
//! ```
//!
//! `IMAGES.f32` holds float32 NCHW images (raw little-endian, as numpy's
//! `tofile` writes them) of the model's input size. Prints one JSON line
//! `{"isa": ..., "threads": ..., "images": N}`, then reads lines from stdin:
//! each `run` runs every image once in batches of `BATCH` and answers
//! `{"secs": S, "checksum": C}` (the wall time, and a sum over the logits so
//! the work cannot be skipped). The first `run` includes no warm-up; the
//! script sends one before timing. `QAT_EXECUTOR_ISA` forces a path
//! (`scalar`, `avx2`, `avx512-vnni`).

use qat::executor::gemm::Isa;
use qat::executor::Executor;
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, images, batch] = args.as_slice() else {
        return Err("usage: bench_executor MODEL.onnx IMAGES.f32 BATCH".into());
    };
    let exec = Executor::load(Path::new(model))?;
    let batch: usize = batch.parse()?;
    let per_image: usize = exec.input_dims().iter().product();
    let bytes = std::fs::read(images)?;
    if batch == 0 || bytes.len() % (4 * per_image) != 0 {
        return Err(format!(
            "{images}: {} bytes are not float32 images of {:?}, or batch is 0",
            bytes.len(),
            exec.input_dims()
        )
        .into());
    }
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n = data.len() / per_image;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}",
        json!({"isa": Isa::best().name(), "threads": rayon::current_num_threads(), "images": n})
    )?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        if line?.trim() != "run" {
            continue;
        }
        let t = Instant::now();
        let mut checksum = 0f64;
        for chunk in data.chunks(batch * per_image) {
            let logits = exec.run(chunk, chunk.len() / per_image)?;
            checksum += logits.iter().map(|&v| v as f64).sum::<f64>();
        }
        let secs = t.elapsed().as_secs_f64();
        writeln!(out, "{}", json!({"secs": secs, "checksum": checksum}))?;
        out.flush()?;
    }
    Ok(())
}
