//! torchvision `state_dict`s (saved as safetensors) mapped onto the
//! built-in architectures: resnet18/34/50 and mobilenet_v2 (any width).
//! Each of the graph's tensors has exactly one torchvision name; missing,
//! unexpected or mis-shaped tensors are an error listing them (torchvision's
//! `num_batches_tracked` counters are expected and not needed).

use crate::backend::Device;
use crate::checkpoint::Checkpoint;
use crate::graph::Graph;
use crate::models::{self, Arch};
use crate::nn::Module;
use crate::{bail, Error, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;

/// The architectures `--torchvision` accepts.
pub const FAMILIES: &str = "resnet18, resnet34, resnet50, mobilenet_v2 (any width: mobilenet_v2 \
picks it from the weights; mobilenet_v2_x0.5 etc. name one)";

/// A float tensor of the state dict.
struct Weight {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Reads the float tensors of a safetensors file (float32, float16,
/// bfloat16); integer tensors must be `num_batches_tracked` counters.
fn read(bytes: &[u8]) -> Result<BTreeMap<String, Weight>> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Data(format!("not a safetensors file: {e}")))?;
    let mut out = BTreeMap::new();
    for (name, t) in st.tensors() {
        let d = t.data();
        let values: Vec<f32> = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| super::tensor::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            _ if name.ends_with("num_batches_tracked") => continue,
            other => bail!(
                Data,
                "tensor '{name}' is {other:?}; weights must be float32, float16 or bfloat16"
            ),
        };
        out.insert(
            name,
            Weight {
                shape: t.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// The torchvision name of one of our tensor names in `g` (built by
/// `arch`).
fn torchvision_name(arch: Arch, g: &Graph, ours: &str) -> String {
    let (unit, leaf) = ours.rsplit_once('.').unwrap_or(("", ours));
    match arch {
        Arch::ResNet(_) => {
            // stem.conv -> conv1, stem.bn -> bn1; layerA.B.convK.bn ->
            // layerA.B.bnK; downsample.conv/bn -> downsample.0/1.
            if let Some(rest) = unit.strip_prefix("stem.") {
                return format!("{}.{leaf}", if rest == "conv" { "conv1" } else { "bn1" });
            }
            if let Some((block, part)) = unit.rsplit_once('.') {
                if let Some((layer, k)) = block.rsplit_once('.') {
                    if let Some(k) = k.strip_prefix("conv") {
                        let p = if part == "conv" { "conv" } else { "bn" };
                        return format!("{layer}.{p}{k}.{leaf}");
                    }
                    if k == "downsample" {
                        let i = if part == "conv" { 0 } else { 1 };
                        return format!("{layer}.downsample.{i}.{leaf}");
                    }
                }
            }
            ours.to_string()
        }
        Arch::MobileNetV2 { .. } => {
            if unit == "classifier" {
                return format!("classifier.1.{leaf}");
            }
            let parts: Vec<&str> = unit.split('.').collect();
            let bn = parts.last() == Some(&"bn");
            match parts.as_slice() {
                // The stem and the last 1x1 conv: features.i.0 / .1.
                ["features", i, _] => format!("features.{i}.{}.{leaf}", bn as u8),
                ["features", i, role, _] => {
                    let expands = g.node(&format!("features.{i}.expand")).is_some();
                    let first = if expands { 1 } else { 0 };
                    match *role {
                        "expand" => format!("features.{i}.conv.0.{}.{leaf}", bn as u8),
                        "dw" => format!("features.{i}.conv.{first}.{}.{leaf}", bn as u8),
                        // The projection: a bare conv, then its BN.
                        _ => format!("features.{i}.conv.{}.{leaf}", first + 1 + bn as usize),
                    }
                }
                _ => ours.to_string(),
            }
        }
    }
}

/// The graph of `arch` on `dev` with the weights of a torchvision state
/// dict; returns it with its input channels and classes.
pub fn load(arch: Arch, bytes: &[u8], dev: &Device) -> Result<(Graph, Arch)> {
    let w = read(bytes)?;
    let candidates: Vec<Arch> = match arch {
        Arch::MobileNetV2 {
            small_input,
            width_pct: 100,
        } => [100, 75, 50, 35]
            .iter()
            .map(|&p| Arch::MobileNetV2 {
                small_input,
                width_pct: p,
            })
            .collect(),
        Arch::MobileNetV2 { .. } => vec![arch],
        Arch::ResNet(k) if arch != Arch::Small => vec![Arch::ResNet(k)],
        _ => bail!(
            Usage,
            "--torchvision {}: not a torchvision architecture; supported: {FAMILIES}",
            arch.name()
        ),
    };
    let (stem, fc) = match arch {
        Arch::ResNet(_) => ("conv1.weight", "fc.weight"),
        Arch::MobileNetV2 { .. } => ("features.0.0.weight", "classifier.1.weight"),
    };
    let (Some(s), Some(f)) = (w.get(stem), w.get(fc)) else {
        bail!(
            Data,
            "the weights have no '{stem}' or no '{fc}': not a torchvision {} state dict",
            arch.name()
        );
    };
    if s.shape.len() != 4 || f.shape.len() != 2 {
        bail!(Data, "'{stem}' or '{fc}' has an unexpected rank");
    }
    let (channels, classes) = (s.shape[1], f.shape[0]);
    // The candidate with the fewest problems explains the refusal.
    let mut report = (usize::MAX, String::new());
    for a in &candidates {
        let g = models::build(*a, channels, classes, dev, 0)?;
        let mut missing = Vec::new();
        let mut shapes = Vec::new();
        let mut used = std::collections::HashSet::new();
        let mut ck = Checkpoint::default();
        for n in g.state() {
            let tv = torchvision_name(*a, &g, &n.name);
            match w.get(&tv) {
                None => missing.push(tv),
                Some(t) if t.shape != n.tensor.dims() => shapes.push(format!(
                    "{tv} is {:?}, the model needs {:?}",
                    t.shape,
                    n.tensor.dims()
                )),
                Some(t) => {
                    used.insert(tv);
                    ck.model.insert(
                        n.name.clone(),
                        crate::checkpoint::Array {
                            shape: t.shape.clone(),
                            values: t.values.clone(),
                        },
                    );
                }
            }
        }
        let extra: Vec<&String> = w.keys().filter(|k| !used.contains(*k)).collect();
        if missing.is_empty() && shapes.is_empty() && extra.is_empty() {
            ck.restore_module(&g)?;
            return Ok((g, *a));
        }
        let list = |v: Vec<String>| -> String {
            let n = v.len();
            let mut v = v;
            v.truncate(12);
            format!(
                "{}{}",
                v.join(", "),
                if n > 12 {
                    format!(" (and {} more)", n - 12)
                } else {
                    String::new()
                }
            )
        };
        let problems = missing.len() + shapes.len() + extra.len();
        if problems >= report.0 {
            continue;
        }
        report.0 = problems;
        report.1 = format!(
            "the weights do not fit {}: {} missing [{}], {} mis-shaped [{}], {} unexpected [{}]",
            a.name(),
            missing.len(),
            list(missing.clone()),
            shapes.len(),
            list(shapes.clone()),
            extra.len(),
            list(extra.iter().map(|s| s.to_string()).collect())
        );
    }
    bail!(Data, "{}", report.1)
}
