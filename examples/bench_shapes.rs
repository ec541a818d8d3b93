//! Times the CPU backend on the shapes of `benches/cpu_kernels.rs` and prints
//! JSON, for `scripts/bench_vs_reference.py` to set beside numpy and PyTorch.
//!
//! ```text
//! cargo run --release --example bench_shapes            # check, then time every shape once
//! cargo run --release --example bench_shapes -- --list  # the shapes, as JSON
//! cargo run --release --example bench_shapes -- --serve # check, then answer requests
//! ```
//!
//! `--serve` reads lines `gemm <size> <reps>` or `<fwd|bwd_data|bwd_weight>
//! <conv name> <reps>` on stdin and answers each with one JSON line
//! `{"secs": [...]}`: the wall time of each of `reps` runs after one warm-up
//! run. The script sends one request per shape and round, timing its
//! reference in between, so both sides see the same machine load.

#[path = "../benches/common/mod.rs"]
mod common;

use common::{check_kernels, conv_shapes, ConvCase, ConvOp, GemmCase, GEMM_SIZES};
use qat::backend::cpu::CpuBackend;
use serde_json::json;
use std::io::{BufRead, Write};
use std::time::Instant;

fn time_runs(reps: usize, mut run: impl FnMut()) -> Vec<f64> {
    run(); // warm-up: page faults, rayon start-up, caches
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

/// Times one request; `None` when the shape or op is unknown.
fn measure(be: &CpuBackend, kind: &str, name: &str, reps: usize) -> Option<Vec<f64>> {
    if kind == "gemm" {
        let size: usize = name.parse().ok()?;
        let mut case = GemmCase::square(size);
        return Some(time_runs(reps, || case.run(be)));
    }
    let op = ConvOp::parse(kind)?;
    let (_, geom) = conv_shapes().into_iter().find(|(n, _)| *n == name)?;
    let mut case = ConvCase::new(geom);
    Some(time_runs(reps, || case.run(be, op)))
}

fn shapes_json() -> serde_json::Value {
    let convs: Vec<_> = conv_shapes()
        .into_iter()
        .map(|(name, g)| {
            json!({
                "name": name, "n": g.n, "c_in": g.c_in, "h": g.h, "w": g.w, "c_out": g.c_out,
                "kh": g.kh, "kw": g.kw, "stride": [g.stride.0, g.stride.1], "pad": [g.pad.0, g.pad.1],
                "dilation": [g.dilation.0, g.dilation.1], "groups": g.groups, "flops": g.flops(),
            })
        })
        .collect();
    json!({
        "gemm": GEMM_SIZES,
        "conv": convs,
        "conv_ops": ConvOp::ALL.map(ConvOp::name),
        "threads": rayon::current_num_threads(),
    })
}

fn serve(be: &CpuBackend) {
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let parts: Vec<&str> = line.split_whitespace().collect();
        let reply = match parts[..] {
            [kind, name, reps] => {
                match reps.parse().ok().and_then(|r| measure(be, kind, name, r)) {
                    Some(secs) => json!({ "secs": secs }),
                    None => json!({ "error": format!("unknown request '{line}'") }),
                }
            }
            _ => json!({ "error": format!("expected '<kind> <name> <reps>', got '{line}'") }),
        };
        let mut out = stdout.lock();
        writeln!(out, "{reply}")
            .and_then(|_| out.flush())
            .expect("stdout");
    }
}

fn main() {
    let be = CpuBackend::new();
    match std::env::args().nth(1).as_deref() {
        Some("--list") => println!("{}", shapes_json()),
        Some("--serve") => {
            check_kernels(&be);
            eprintln!("bench_shapes: kernels match the naive references; serving");
            serve(&be);
        }
        None => {
            check_kernels(&be);
            let report = |kind: &str, name: &str, flops: f64| {
                let secs = measure(&be, kind, name, 3).expect("known shape");
                let best = secs.iter().cloned().fold(f64::INFINITY, f64::min);
                println!(
                    "{}",
                    json!({ "kind": kind, "name": name, "secs": secs, "gflops": flops / best / 1e9 })
                );
            };
            for size in GEMM_SIZES {
                report("gemm", &size.to_string(), 2.0 * (size as f64).powi(3));
            }
            for (name, g) in conv_shapes() {
                for op in ConvOp::ALL {
                    report(op.name(), name, g.flops());
                }
            }
        }
        Some(other) => {
            eprintln!("bench_shapes: unknown argument '{other}'; use --list, --serve or nothing");
            std::process::exit(2);
        }
    }
}
