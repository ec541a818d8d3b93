//! Bringing an FP32 model in: an ONNX graph ([`onnx`]) read into the
//! network graph, with its constants decoded by [`tensor`]. The result is
//! an FP32 checkpoint like any other (`eval`, `export`, calibration and
//! QAT fine-tuning read it).

pub mod onnx;
pub mod tensor;
pub mod torchvision;

pub use self::onnx::{import, Imported, InputSpec};

use crate::backend::Device;
use crate::checkpoint::Checkpoint;
use crate::saved_model::{checkpoint_extra, ModelInfo, CUSTOM_ARCH};
use crate::{bail, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// What the user says about the model that the graph cannot: how its
/// inputs were normalized and what its classes are called.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
    pub classes: Option<Vec<String>>,
}

/// ImageNet's normalization, torchvision's models' default.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A torchvision state dict (safetensors) of `arch` as a checkpoint of that
/// built-in architecture, with a summary. Normalization defaults to
/// ImageNet's for 3-channel models; `input_hw` is what exports record.
pub fn import_torchvision(
    path: &Path,
    arch: crate::models::Arch,
    opts: &ImportOptions,
    input_hw: [usize; 2],
) -> Result<(Checkpoint, String)> {
    let bytes = std::fs::read(path).map_err(|e| crate::Error::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let (g, arch) = torchvision::load(arch, &bytes, &Device::cpu()).map_err(|e| match e {
        crate::Error::Data(m) => crate::Error::Data(format!("{}: {m}", path.display())),
        other => other,
    })?;
    let c = g.in_channels();
    let k = g.num_classes();
    let imagenet = c == 3;
    let mean = opts
        .mean
        .clone()
        .or(imagenet.then(|| IMAGENET_MEAN.to_vec()));
    let std = opts.std.clone().or(imagenet.then(|| IMAGENET_STD.to_vec()));
    let (Some(mean), Some(std)) = (mean, std) else {
        bail!(
            Usage,
            "a {c}-channel model: pass --mean and --std ({c} values each, the normalization it was trained with)"
        );
    };
    if mean.len() != c || std.len() != c {
        bail!(Usage, "--mean and --std need {c} values each");
    }
    let class_names = opts
        .classes
        .clone()
        .unwrap_or_else(|| (0..k).map(|i| i.to_string()).collect());
    if class_names.len() != k {
        bail!(
            Usage,
            "{} class names for a model with {k} outputs",
            class_names.len()
        );
    }
    let info = ModelInfo {
        arch: arch.name().to_string(),
        in_channels: c,
        num_classes: k,
        class_names,
        mean,
        std,
        input_hw,
    };
    let mut ck = Checkpoint::from_module(&g)?;
    let source =
        serde_json::json!({ "source": "torchvision import", "file": path.display().to_string() });
    ck.extra = checkpoint_extra(&g, &info, source)?;
    let params: usize = ck.model.values().map(|a| a.values.len()).sum();
    let summary = format!(
        "{}: torchvision {} weights, {} tensors mapped ({params} values)
input: float32 [N, {c}, {}, {}], normalized (pixel / 255 - mean) / std with mean {:?}, std {:?}
output: {k} classes",
        path.display(),
        arch.name(),
        ck.model.len(),
        input_hw[0],
        input_hw[1],
        info.mean,
        info.std
    );
    Ok((ck, summary))
}

/// An FP32 ONNX file as a checkpoint (weights, the graph's description and
/// its model information), with a summary of what was read.
pub fn import_file(path: &Path, opts: &ImportOptions) -> Result<(Checkpoint, String)> {
    let m = crate::executor::load::read_model(path)?;
    let dev = Device::cpu();
    let imp = import(&m, &dev).map_err(|e| match e {
        crate::Error::Onnx(msg) => crate::Error::Onnx(format!("{}: {msg}", path.display())),
        other => other,
    })?;
    let meta: BTreeMap<&str, &str> = m
        .metadata_props
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let from_meta = |key: &str| -> Option<Vec<f32>> {
        meta.get(key).and_then(|v| serde_json::from_str(v).ok())
    };
    let c = imp.input.channels;
    let mean = opts.mean.clone().or_else(|| from_meta("mean"));
    let std = opts.std.clone().or_else(|| from_meta("std"));
    let (Some(mean), Some(std)) = (mean, std) else {
        bail!(
            Usage,
            "{} does not record its input normalization: pass --mean and --std ({c} values each, \
the per-channel mean and standard deviation of pixels / 255 the model was trained with, e.g. \
--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for torchvision's ImageNet models)",
            path.display()
        );
    };
    if mean.len() != c || std.len() != c || std.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
        bail!(
            Usage,
            "--mean and --std need {c} values each (the model's input has {c} channels), std > 0; got \
{} and {}",
            mean.len(),
            std.len()
        );
    }
    let classes = match &opts.classes {
        Some(v) => v.clone(),
        None => meta
            .get("class_names")
            .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
            .unwrap_or_else(|| (0..imp.num_classes).map(|i| i.to_string()).collect()),
    };
    if classes.len() != imp.num_classes {
        bail!(
            Usage,
            "{} class names for a model with {} outputs",
            classes.len(),
            imp.num_classes
        );
    }
    let info = ModelInfo {
        arch: CUSTOM_ARCH.to_string(),
        in_channels: c,
        num_classes: imp.num_classes,
        class_names: classes,
        mean,
        std,
        input_hw: imp.input.hw,
    };
    let mut ck = Checkpoint::from_module(&imp.graph)?;
    let source = serde_json::json!({ "source": "onnx import", "file": path.display().to_string() });
    ck.extra = checkpoint_extra(&imp.graph, &info, source)?;
    let params: usize = ck.model.values().map(|a| a.values.len()).sum();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for n in imp.graph.nodes().iter().skip(1) {
        *kinds.entry(n.op.kind()).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let summary = format!(
        "{}: {} ONNX nodes -> {} graph nodes ({}), {params} parameters and buffers\n\
input '{}': float32 [N, {c}, {}, {}], normalized (pixel / 255 - mean) / std with mean {:?}, \
std {:?}\noutput: {} classes",
        path.display(),
        imp.onnx_nodes,
        imp.graph.nodes().len() - 1,
        kinds.join(", "),
        imp.input.name,
        imp.input.hw[0],
        imp.input.hw[1],
        info.mean,
        info.std,
        info.num_classes,
    );
    Ok((ck, summary))
}
