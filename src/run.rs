//! `qat run`: an int8 ONNX graph in the executor on a data set, with no
//! checkpoint. It reports top-1/top-5 (labeled data) and the executor's
//! images per second, can dump every int8 tensor as `.npy`, and can run ONNX
//! Runtime beside it on the same images (`--against ort`, through the
//! Python package and `scripts/ort_run.py`) for a per-layer comparison like
//! `qat verify`'s.
//!
//! The input's preparation (channels, size, normalization) comes from the
//! graph: its input shape, and `mean`/`std`/`class_names` in
//! `metadata_props` as `qat export` writes them, or the caller's.

use crate::accuracy::Accuracy;
use crate::executor::{ExecTensor, Executor};
use crate::npy::{self, Dtype};
use crate::saved_model::ModelInfo;
use crate::{bail, Error, Result};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// What `qat run` does besides running the graph.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The first N images (all when `None`).
    pub limit: Option<usize>,
    pub batch_size: usize,
    /// Normalization when the graph does not record it (or to override it).
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    /// Write every int8 tensor (all images) to DIR/<tensor>.npy.
    pub dump: Option<PathBuf>,
    /// Run ONNX Runtime on the same images and compare.
    pub against_ort: bool,
    /// ONNX Runtime session config entries (key, value) for `against_ort`.
    pub ort_config: Vec<(String, String)>,
    /// Print a progress line at most this often (seconds; `None`: never).
    pub progress_secs: Option<f32>,
}

/// One int8 tensor of the executor against ONNX Runtime's, over all images.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerDiff {
    pub name: String,
    /// The op of the ONNX node that writes it.
    pub op: String,
    pub elements: usize,
    pub mismatches: usize,
    pub max_abs_diff: i32,
    /// Elements of the images whose inputs to this op were identical in
    /// both (the op judged on its own), and how many of those differ: a
    /// difference upstream (a 1-LSB add) changes everything after it, which
    /// says nothing about the later ops.
    pub judged: usize,
    pub own_mismatches: usize,
    pub own_max_abs_diff: i32,
    /// ONNX Runtime gave no tensor of this name, or one of another size.
    pub missing: bool,
}

/// Ops whose ONNX Runtime kernels round in float and may differ from the
/// spec's integer routines by 1 LSB (QUANT_SPEC S6, S7), with the rate
/// `docs/INT8.md` documents as the limit.
pub const ONE_LSB_OPS: [(&str, f64); 2] = [("QLinearAdd", 1e-5), ("QLinearAveragePool", 1e-2)];

/// The executor against ONNX Runtime.
#[derive(Clone, Debug, Default)]
pub struct OrtComparison {
    pub ort_version: String,
    pub layers: Vec<LayerDiff>,
    /// Float outputs that differ in any bit, of `output_elements`.
    pub output_mismatches: usize,
    pub output_elements: usize,
    /// Images whose arg-max differs.
    pub argmax_differs: usize,
    pub ort_secs: f64,
}

impl OrtComparison {
    /// No tensor missing, exact ops identical, the 1-LSB ops within 1 LSB
    /// and their documented rate.
    pub fn passed(&self) -> bool {
        self.layers.iter().all(|l| {
            if l.missing {
                return false;
            }
            match ONE_LSB_OPS.iter().find(|(op, _)| *op == l.op) {
                Some((_, rate)) => {
                    l.own_max_abs_diff <= 1
                        && (l.own_mismatches as f64) < rate * l.judged.max(1) as f64
                }
                None => l.own_mismatches == 0,
            }
        })
    }

    pub fn table(&self) -> String {
        let w = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(5)
            .max(16);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<w$} {:<26} {:>12} {:>11} {:>10} {:>12}",
            "tensor", "op", "elements", "mismatches", "max|diff|", "own (judged)"
        );
        for l in &self.layers {
            let diff = if l.missing {
                "missing".to_string()
            } else {
                l.max_abs_diff.to_string()
            };
            let own = format!("{} ({})", l.own_mismatches, l.judged);
            let _ = writeln!(
                s,
                "{:<w$} {:<26} {:>12} {:>11} {:>10} {:>12}",
                l.name, l.op, l.elements, l.mismatches, diff, own
            );
        }
        let _ = writeln!(
            s,
            "{:<w$} {:<26} {:>12} {:>11}",
            "output (float)", "", self.output_elements, self.output_mismatches
        );
        let _ = writeln!(
            s,
            "own: differences on the images where the op's inputs were identical in both \
             (later ops inherit any earlier difference)"
        );
        let _ = writeln!(
            s,
            "arg-max differs on {} image(s); ONNX Runtime {} took {:.2} s",
            self.argmax_differs, self.ort_version, self.ort_secs
        );
        let lsb: Vec<String> = ONE_LSB_OPS
            .iter()
            .map(|(op, r)| format!("{op} within 1 LSB at a rate below {r:.0e}"))
            .collect();
        let _ = write!(
            s,
            "{}",
            if self.passed() {
                format!("PASS: every int8 tensor agrees ({})", lsb.join(", "))
            } else {
                format!(
                    "FAIL: the executor and ONNX Runtime differ beyond the documented limits \
                     (exact everywhere except {})",
                    lsb.join(", ")
                )
            }
        );
        s
    }
}

/// What `qat run` measured.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub images: usize,
    /// Images with labels (accuracy is counted over these).
    pub accuracy: Accuracy,
    /// Seconds in the executor alone (no data loading).
    pub exec_secs: f64,
    pub ort: Option<OrtComparison>,
    /// Tensors written by `--dump`.
    pub dumped: usize,
}

impl RunReport {
    pub fn images_per_sec(&self) -> f64 {
        self.images as f64 / self.exec_secs.max(1e-9)
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        if self.accuracy.seen > 0 {
            let _ = writeln!(
                s,
                "{} images: top-1 {:.2}%, top-5 {:.2}%",
                self.images,
                self.accuracy.top1(),
                self.accuracy.top5()
            );
        } else {
            let _ = writeln!(s, "{} images (unlabeled: no accuracy)", self.images);
        }
        let _ = write!(
            s,
            "executor: {:.1} images/s ({:.2} s, {} threads)",
            self.images_per_sec(),
            self.exec_secs,
            rayon::current_num_threads()
        );
        if let Some(o) = &self.ort {
            let _ = write!(s, "\n{}", o.table());
        }
        s
    }
}

/// The model information `run` prepares images by: the graph's input
/// `[C, H, W]` and output size, normalization and class names from
/// `metadata_props` (`qat export` writes them) unless given.
pub fn input_info(exec: &Executor, mean: Option<&[f32]>, std: Option<&[f32]>) -> Result<ModelInfo> {
    let dims = exec.input_dims();
    let [c, h, w] = dims else {
        bail!(
            Onnx,
            "the graph's input is {dims:?} per image, not [C, H, W]"
        );
    };
    let classes = exec.output_dims().iter().product::<usize>();
    let meta = exec.metadata();
    let from_meta = |key: &str| -> Result<Option<Vec<f32>>> {
        meta.get(key)
            .map(|v| {
                serde_json::from_str::<Vec<f32>>(v).map_err(|e| {
                    Error::Onnx(format!(
                        "metadata_props '{key}' = {v:?} is not a list of numbers: {e}"
                    ))
                })
            })
            .transpose()
    };
    let pick = |given: Option<&[f32]>, key: &str| -> Result<Vec<f32>> {
        match given {
            Some(v) => Ok(v.to_vec()),
            None => from_meta(key)?.ok_or_else(|| {
                Error::Usage(format!(
                    "the graph does not record its input normalization ('{key}' in \
                     metadata_props): pass --mean and --std (per channel, of pixels / 255)"
                ))
            }),
        }
    };
    let (mean, std) = (pick(mean, "mean")?, pick(std, "std")?);
    for (what, v) in [("mean", &mean), ("std", &std)] {
        if v.len() != *c && v.len() != 1 {
            bail!(
                Usage,
                "{what} has {} values for a {c}-channel input",
                v.len()
            );
        }
    }
    let (mean, std) = if mean.len() == 1 && *c > 1 {
        (
            vec![mean[0]; *c],
            if std.len() == 1 {
                vec![std[0]; *c]
            } else {
                std
            },
        )
    } else if std.len() == 1 && *c > 1 {
        (mean, vec![std[0]; *c])
    } else {
        (mean, std)
    };
    if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        bail!(Usage, "std must be positive and finite, got {std:?}");
    }
    let class_names = meta
        .get("class_names")
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .filter(|n| n.len() == classes)
        .unwrap_or_else(|| (0..classes).map(|i| i.to_string()).collect());
    Ok(ModelInfo {
        arch: meta.get("arch").cloned().unwrap_or_else(|| "onnx".into()),
        in_channels: *c,
        num_classes: classes,
        class_names,
        mean,
        std,
        input_hw: [*h, *w],
    })
}

/// Runs `onnx` in the executor on `data` (Fashion-MNIST's test split,
/// `imagenet:ROOT`'s val split or `images:DIR`).
pub fn run_graph(onnx: &Path, data: &Path, opts: &RunOptions) -> Result<RunReport> {
    let exec = Executor::load(onnx)?;
    let info = input_info(&exec, opts.mean.as_deref(), opts.std.as_deref())?;
    let mut ort = if opts.against_ort {
        Some(OrtSession::start(onnx, &opts.ort_config)?)
    } else {
        None
    };
    let mut dump = match &opts.dump {
        Some(dir) => Some(Dump::new(dir)?),
        None => None,
    };
    let keep = ort.is_some() || dump.is_some();
    // Each tensor's computed inputs, to tell an op's own differences from
    // inherited ones.
    let deps: HashMap<String, Vec<String>> = exec
        .step_tensors()
        .into_iter()
        .map(|(ins, out)| (out.to_string(), ins.into_iter().map(String::from).collect()))
        .collect();
    let mut report = RunReport::default();
    let mut cmp = OrtComparison::default();
    let start = Instant::now();
    let mut last = Instant::now();
    let total = opts.limit;
    crate::data::test_batches::for_each(data, &info, opts.limit, opts.batch_size, |b| {
        let t = Instant::now();
        let (out, tensors) = if keep {
            exec.run_trace(b.images, b.n)?
        } else {
            (exec.run(b.images, b.n)?, Vec::new())
        };
        report.exec_secs += t.elapsed().as_secs_f64();
        if let Some(labels) = b.labels {
            report.accuracy.add(&out, labels);
        }
        if let Some(d) = dump.as_mut() {
            d.add(&tensors, b.n)?;
        }
        if let Some(o) = ort.as_mut() {
            let t = Instant::now();
            let theirs = o.run(b.images, &exec, b.n)?;
            cmp.ort_secs += t.elapsed().as_secs_f64();
            compare(&mut cmp, &o.tensors, &deps, &tensors, &theirs, &out, b.n)?;
        }
        report.images += b.n;
        if let Some(every) = opts.progress_secs {
            if last.elapsed().as_secs_f32() >= every {
                last = Instant::now();
                let of = total.map(|n| format!(" of {n}")).unwrap_or_default();
                eprintln!(
                    "{}{of} images, {:.1} images/s in the executor, {:.0} s elapsed",
                    report.images,
                    report.images as f64 / report.exec_secs.max(1e-9),
                    start.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    })?;
    if let Some(d) = dump {
        report.dumped = d.finish()?;
    }
    if let Some(o) = ort {
        cmp.ort_version = o.version.clone();
        o.close();
        report.ort = Some(cmp);
    }
    Ok(report)
}

/// ONNX Runtime's tensors of one batch.
struct OrtBatch {
    tensors: Vec<Option<npy::Array>>,
    output: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn compare(
    cmp: &mut OrtComparison,
    names: &[(String, String, String)],
    deps: &HashMap<String, Vec<String>>,
    ours: &[ExecTensor],
    theirs: &OrtBatch,
    out: &[f32],
    n: usize,
) -> Result<()> {
    let by_name: HashMap<&str, &ExecTensor> = ours.iter().map(|t| (t.name.as_str(), t)).collect();
    if cmp.layers.is_empty() {
        cmp.layers = names
            .iter()
            .map(|(name, op, _)| LayerDiff {
                name: name.clone(),
                op: op.clone(),
                elements: 0,
                mismatches: 0,
                max_abs_diff: 0,
                judged: 0,
                own_mismatches: 0,
                own_max_abs_diff: 0,
                missing: false,
            })
            .collect();
    }
    // Per tensor, per image: identical in both. Tensors are in node order,
    // so an op's inputs come before it; a tensor not compared (the float
    // input, say) counts as identical.
    let mut same: HashMap<&str, Vec<bool>> = HashMap::new();
    for (l, t) in cmp.layers.iter_mut().zip(&theirs.tensors) {
        let mine = by_name.get(l.name.as_str());
        let their = t.as_ref().and_then(|a| a.ints().map(|v| (a.dtype, v)));
        match (mine, their) {
            (Some(m), Some((dtype, v))) if v.len() == m.values.len() && n > 0 => {
                l.elements += v.len();
                // The executor holds uint8 tensors as int8 shifted by 128.
                let shift = if dtype == Dtype::U8 { 128 } else { 0 };
                let per = v.len() / n;
                let inputs: &[String] = deps.get(&l.name).map_or(&[], |d| d.as_slice());
                let mut rows = Vec::with_capacity(n);
                for i in 0..n {
                    let judged = inputs
                        .iter()
                        .all(|inp| same.get(inp.as_str()).is_none_or(|s| s[i]));
                    let (mut diffs, mut max) = (0, 0);
                    for (&a, &b) in m.values[i * per..][..per].iter().zip(&v[i * per..][..per]) {
                        let d = (a as i32 - (b - shift)).abs();
                        if d != 0 {
                            diffs += 1;
                            max = max.max(d);
                        }
                    }
                    l.mismatches += diffs;
                    l.max_abs_diff = l.max_abs_diff.max(max);
                    if judged {
                        l.judged += per;
                        l.own_mismatches += diffs;
                        l.own_max_abs_diff = l.own_max_abs_diff.max(max);
                    }
                    rows.push(diffs == 0);
                }
                same.insert(l.name.as_str(), rows);
            }
            _ => l.missing = true,
        }
    }
    if theirs.output.len() != out.len() {
        bail!(
            Shape,
            "ONNX Runtime gives {} outputs for {n} images, the executor {}",
            theirs.output.len(),
            out.len()
        );
    }
    cmp.output_elements += out.len();
    cmp.output_mismatches += out
        .iter()
        .zip(&theirs.output)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    let per = out.len() / n.max(1);
    if per > 0 {
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
                    if x > bv {
                        (i, x)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        };
        cmp.argmax_differs += out
            .chunks(per)
            .zip(theirs.output.chunks(per))
            .filter(|(a, b)| argmax(a) != argmax(b))
            .count();
    }
    Ok(())
}

/// `--dump`: one growing `.npy` per int8 tensor.
struct Dump {
    dir: PathBuf,
    files: Vec<(String, npy::Stream)>,
}

impl Dump {
    fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        Ok(Dump {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        })
    }

    fn add(&mut self, tensors: &[ExecTensor], n: usize) -> Result<()> {
        if self.files.is_empty() {
            let mut used = std::collections::HashSet::new();
            for t in tensors {
                let mut stem = file_stem(&t.name);
                while !used.insert(stem.clone()) {
                    stem.push('_');
                }
                let path = self.dir.join(format!("{stem}.npy"));
                self.files.push((
                    t.name.clone(),
                    npy::Stream::create(
                        &path,
                        if t.uint8 { Dtype::U8 } else { Dtype::I8 },
                        &t.shape[1..],
                    )?,
                ));
            }
        }
        if self.files.len() != tensors.len() {
            bail!(Usage, "the executor's tensors changed between batches");
        }
        for ((name, f), t) in self.files.iter_mut().zip(tensors) {
            debug_assert_eq!(name, &t.name);
            let bytes: Vec<u8> = if t.uint8 {
                t.to_u8()
            } else {
                t.values.iter().map(|&v| v as u8).collect()
            };
            f.append(n, &bytes)?;
        }
        Ok(())
    }

    fn finish(self) -> Result<usize> {
        let n = self.files.len();
        for (_, f) in self.files {
            f.finish()?;
        }
        Ok(n)
    }
}

/// A file name for a tensor name: characters other than letters, digits,
/// `.`, `-` and `_` become `_`.
fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("t{s}")
    } else {
        s
    }
}

/// `scripts/ort_run.py`, built into the binary.
const ORT_RUN_PY: &str = include_str!("../scripts/ort_run.py");

/// A long-lived `ort_run.py` process holding one ONNX Runtime session.
struct OrtSession {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: tempdir::Dir,
    /// (name, op, dtype) of every int8 tensor ORT returns, in order.
    tensors: Vec<(String, String, String)>,
    version: String,
    batches: usize,
}

mod tempdir {
    /// A folder under the system's temporary directory, removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> std::io::Result<Self> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let p = std::env::temp_dir().join(format!("qat-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p)?;
            Ok(Dir(p))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl OrtSession {
    fn start(onnx: &Path, config: &[(String, String)]) -> Result<Self> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| Error::Io { path: p, source: e }
        };
        let dir = tempdir::Dir::new("ort").map_err(io(&std::env::temp_dir()))?;
        let script = dir.0.join("ort_run.py");
        std::fs::write(&script, ORT_RUN_PY).map_err(io(&script))?;
        let py = crate::backend::cuda::probe::python();
        let hint = format!(
            "--against ort runs ONNX Runtime through Python: install it with \
             `{py} -m pip install onnxruntime onnx numpy`, or point QAT_PYTHON at a Python that has it"
        );
        let mut child = Command::new(&py)
            .arg(&script)
            .arg(onnx)
            .args(config.iter().map(|(k, v)| format!("{k}={v}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::Usage(format!("cannot start `{py}` ({e}); {hint}")))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        if let Some(msg) = line.trim().strip_prefix("error: ") {
            let _ = child.wait();
            if msg.starts_with("cannot import") {
                bail!(Usage, "`{py}` {msg}; {hint}");
            }
            bail!(Onnx, "{msg}");
        }
        let head: serde_json::Value = serde_json::from_str(line.trim()).map_err(|_| {
            let _ = child.kill();
            Error::Usage(format!(
                "`{py} ort_run.py` did not start (said {:?}); {hint}",
                line.trim()
            ))
        })?;
        let tensors = head["tensors"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|t| {
                        let s = |i: usize| t.get(i)?.as_str().map(String::from);
                        Some((s(0)?, s(1)?, s(2)?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(OrtSession {
            child,
            stdin,
            stdout,
            dir,
            tensors,
            version: head["ort"].as_str().unwrap_or("?").to_string(),
            batches: 0,
        })
    }

    fn run(&mut self, images: &[f32], exec: &Executor, n: usize) -> Result<OrtBatch> {
        let mut shape = vec![n];
        shape.extend_from_slice(exec.input_dims());
        let input = self.dir.0.join(format!("in{}.npy", self.batches));
        let out = self.dir.0.join(format!("out{}", self.batches));
        self.batches += 1;
        std::fs::create_dir_all(&out).map_err(|e| Error::Io {
            path: out.clone(),
            source: e,
        })?;
        npy::write_f32(&input, &shape, images)?;
        let gone = |e: std::io::Error| Error::Onnx(format!("the ONNX Runtime process ended: {e}"));
        writeln!(self.stdin, "{} {}", input.display(), out.display()).map_err(gone)?;
        self.stdin.flush().map_err(gone)?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(gone)?;
        match line.trim() {
            "ok" => {}
            "" => bail!(Onnx, "the ONNX Runtime process ended without an answer"),
            other => bail!(Onnx, "{}", other.strip_prefix("error: ").unwrap_or(other)),
        }
        let tensors = (0..self.tensors.len())
            .map(|k| npy::read(&out.join(format!("{k}.npy"))).ok())
            .collect();
        let (_, output) = npy::read_f32(&out.join("output.npy"))?;
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_file(&input);
        Ok(OrtBatch { tensors, output })
    }

    fn close(mut self) {
        let _ = writeln!(self.stdin);
        drop(self.stdin);
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, values: Vec<i8>) -> ExecTensor {
        ExecTensor {
            name: name.into(),
            shape: vec![1, values.len()],
            values,
            uint8: false,
        }
    }

    fn array(dtype: Dtype, v: &[i32]) -> Option<npy::Array> {
        Some(npy::Array {
            dtype,
            shape: vec![1, v.len()],
            bytes: v.iter().map(|&x| x as u8).collect(),
        })
    }

    fn names() -> Vec<(String, String, String)> {
        [("c", "QLinearConv", "int8"), ("a", "QLinearAdd", "uint8")]
            .iter()
            .map(|(n, o, d)| (n.to_string(), o.to_string(), d.to_string()))
            .collect()
    }

    /// Counts per tensor, uint8 tensors compared after the -128 shift, the
    /// exact ops exact and the 1-LSB ops within their rate, each op judged
    /// on the images where its inputs agreed.
    #[test]
    fn the_comparison_counts_differences_and_applies_the_documented_limits() {
        let ours = [
            tensor("c", vec![-128, 0, 127]),
            tensor("a", vec![-128, 5, 127]),
        ];
        let theirs = |c: [i32; 3], a: [i32; 3]| OrtBatch {
            tensors: vec![array(Dtype::I8, &c), array(Dtype::U8, &a)],
            output: vec![1.0, 2.0],
        };
        // The add reads the conv's output.
        let deps: HashMap<String, Vec<String>> = [("a".to_string(), vec!["c".to_string()])].into();
        let run = |c, a| {
            let mut cmp = OrtComparison::default();
            compare(
                &mut cmp,
                &names(),
                &deps,
                &ours,
                &theirs(c, a),
                &[1.0, 2.0],
                1,
            )
            .unwrap();
            cmp
        };
        let cmp = run([-128, 0, 127], [0, 133, 255]);
        assert_eq!((cmp.layers[0].mismatches, cmp.layers[1].mismatches), (0, 0));
        assert!(cmp.passed());
        // One differing conv element fails.
        let cmp = run([-128, 1, 127], [0, 133, 255]);
        assert_eq!(
            (cmp.layers[0].own_mismatches, cmp.layers[0].max_abs_diff),
            (1, 1)
        );
        assert!(!cmp.passed());
        // A 1-LSB add difference passes only below its rate (1e-5): one in
        // three elements is over it, and so is a 2-LSB one.
        let mut cmp = run([-128, 0, 127], [0, 134, 255]);
        assert_eq!(cmp.layers[1].own_mismatches, 1);
        assert!(!cmp.passed());
        cmp.layers[1].judged = 1_000_000;
        assert!(cmp.passed());
        cmp.layers[1].own_max_abs_diff = 2;
        assert!(!cmp.passed());
        // An add that reads a differing conv output is not judged on that
        // image: its differences are inherited.
        let cmp = run([-128, 1, 127], [0, 140, 255]);
        assert_eq!(cmp.layers[1].mismatches, 1);
        assert_eq!((cmp.layers[1].judged, cmp.layers[1].own_mismatches), (0, 0));
        // A tensor ORT did not return, and differing outputs.
        let mut cmp = OrtComparison::default();
        let mut t = theirs([-128, 0, 127], [0, 133, 255]);
        t.tensors[0] = None;
        t.output = vec![2.0, 1.0];
        compare(&mut cmp, &names(), &deps, &ours, &t, &[1.0, 2.0], 1).unwrap();
        assert!(cmp.layers[0].missing && !cmp.passed());
        assert_eq!((cmp.output_mismatches, cmp.argmax_differs), (2, 1));
    }

    #[test]
    fn tensor_names_become_safe_file_names() {
        assert_eq!(file_stem("layer1.0/conv:0"), "layer1.0_conv_0");
        assert_eq!(file_stem(".hidden"), "t.hidden");
        assert_eq!(file_stem(""), "t");
    }
}
