//! The model a training checkpoint describes: its [`ModelInfo`] (what
//! `eval`, `export` and `verify` need to rebuild and feed it), and the graph
//! built from it with the saved weights and quantizer states. Below `train`:
//! `onnx`, `verify` and `train` all read models through here.
//!
//! The checkpoint's `extra` metadata holds `model` (a [`ModelInfo`]),
//! `quantizers` (observer states by quantizer name) and `config.qat` (present
//! for QAT runs, with `observer_momentum`); `train` adds the rest of the
//! run's configuration and its metrics.

use crate::backend::Device;
use crate::checkpoint::Checkpoint;
use crate::graph::{Graph, GraphSpec};
use crate::models::{self, Arch};
use crate::nn::ActQuantState;
use crate::{bail, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a checkpoint says about the model, so `eval` and `export` can rebuild it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    pub arch: String,
    pub in_channels: usize,
    pub num_classes: usize,
    pub class_names: Vec<String>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub input_hw: [usize; 2],
}

/// `ModelInfo::arch` of a graph that no built-in builder makes (its
/// checkpoint carries the graph's description, `extra.graph`).
pub const CUSTOM_ARCH: &str = "custom";

/// The parts of the checkpoint metadata the model needs.
#[derive(Deserialize)]
struct Saved {
    model: ModelInfo,
    #[serde(default)]
    quantizers: BTreeMap<String, ActQuantState>,
    config: SavedConfig,
    /// The topology, for graphs of no built-in architecture.
    #[serde(default)]
    graph: Option<GraphSpec>,
}

#[derive(Deserialize)]
struct SavedConfig {
    qat: Option<SavedQat>,
}

#[derive(Deserialize)]
struct SavedQat {
    observer_momentum: f32,
    /// Absent in checkpoints written before the symmetric scheme existed.
    #[serde(default)]
    scheme: crate::quant::params::Scheme,
}

/// Builds the graph a checkpoint describes, quantized when it is a QAT
/// checkpoint, and loads its weights and quantizer states.
pub fn load(ck: &Checkpoint, device: &Device) -> Result<(Graph, ModelInfo)> {
    let saved: Saved = serde_json::from_value(ck.extra.clone()).map_err(|e| {
        Error::Data(format!(
            "checkpoint metadata is not a qat training checkpoint: {e}"
        ))
    })?;
    check_model_info(&saved.model, ck)?;
    let mut model = match &saved.graph {
        Some(spec) => {
            // Bounded by the tensors really in the file before allocating.
            let held: usize = ck.model.values().map(|a| a.values.len()).sum();
            if spec.param_count().is_none_or(|n| n > held) {
                bail!(
                    Data,
                    "the checkpoint's graph description needs more parameters than its {held} \
                     tensor values: the file is corrupt or was edited"
                );
            }
            Graph::from_spec(spec, device)?
        }
        None => {
            let arch: Arch = saved.model.arch.parse()?;
            models::build(
                arch,
                saved.model.in_channels,
                saved.model.num_classes,
                device,
                0,
            )?
        }
    };
    if let Some(q) = &saved.config.qat {
        model.quantize(q.observer_momentum, q.scheme);
        model.load_quantizers(&saved.quantizers)?;
    }
    ck.restore_module(&model)?;
    Ok((model, saved.model))
}

/// Checks that `source` can feed the model described by `info`: the channel
/// count must match (an error); a different normalization or image size is
/// a warning on stderr (a convolutional network still runs, but not on
/// what it was trained with). `data` names the source in messages.
pub fn check_source(
    info: &ModelInfo,
    source: &dyn crate::data::DataSource,
    data: &str,
) -> Result<()> {
    let d = source.input_dims();
    if d.channels != info.in_channels {
        bail!(
            Usage,
            "the model takes {}-channel images, {data} holds {}-channel ones",
            info.in_channels,
            d.channels
        );
    }
    let norm = source.normalize();
    if norm.mean() != info.mean.as_slice() || norm.std() != info.std.as_slice() {
        eprintln!(
            "warning: the model was trained with mean {:?} std {:?}; {data} is normalized with mean {:?} std {:?}",
            info.mean,
            info.std,
            norm.mean(),
            norm.std()
        );
    }
    if [d.height, d.width] != info.input_hw {
        eprintln!(
            "warning: the model takes {}x{} images; {data} gives {}x{}",
            info.input_hw[0], info.input_hw[1], d.height, d.width
        );
    }
    Ok(())
}

/// The metadata of a checkpoint of `g` not written by `train`: its model
/// information, its topology when `info.arch` is [`CUSTOM_ARCH`], its
/// quantizer states when it is quantized, and `config` (where it came from;
/// QAT checkpoints need its `qat.observer_momentum`).
pub fn checkpoint_extra(
    g: &Graph,
    info: &ModelInfo,
    config: serde_json::Value,
) -> Result<serde_json::Value> {
    let mut extra = serde_json::json!({ "model": info, "config": config });
    if info.arch == CUSTOM_ARCH {
        extra["graph"] = serde_json::to_value(g.spec()).unwrap_or_default();
    }
    if g.is_quantized() {
        extra["quantizers"] = serde_json::to_value(g.save_quantizers()?).unwrap_or_default();
    }
    Ok(extra)
}

/// Refuses model metadata that cannot describe the checkpoint's tensors
/// before anything is allocated from it (a CRC-valid checkpoint can still
/// carry absurd sizes).
fn check_model_info(info: &ModelInfo, ck: &Checkpoint) -> Result<()> {
    // By shape, for any architecture: a linear layer's weight is [out, in],
    // a convolution's [out, in / groups, kh, kw], and the first convolution
    // takes the input's channels.
    let weights = || {
        ck.model
            .iter()
            .filter(|(name, _)| name.ends_with("weight"))
            .map(|(_, a)| &a.shape)
    };
    let (classes, channels) = (info.num_classes, info.in_channels);
    if !weights().any(|s| s.len() == 2 && s[0] == classes) {
        bail!(
            Data,
            "checkpoint metadata says {classes} classes, but no linear layer among its tensors has \
             that many outputs: the file is corrupt or was edited"
        );
    }
    if !weights().any(|s| s.len() == 4 && s[1] == channels) {
        bail!(
            Data,
            "checkpoint metadata says {channels} input channels, but no convolution among its \
             tensors takes that many: the file is corrupt or was edited"
        );
    }
    if info.mean.len() != channels || info.std.len() != channels {
        bail!(
            Data,
            "checkpoint metadata has {} means and {} standard deviations for {channels} input \
             channels",
            info.mean.len(),
            info.std.len()
        );
    }
    if !info.class_names.is_empty() && info.class_names.len() != classes {
        bail!(
            Data,
            "checkpoint metadata names {} classes for a {classes}-class model",
            info.class_names.len()
        );
    }
    const MAX_SIDE: usize = 1 << 14;
    if info.input_hw.iter().any(|&s| s == 0 || s > MAX_SIDE) {
        bail!(
            Data,
            "checkpoint metadata gives an input size of {:?}: each side must lie in [1, {MAX_SIDE}]",
            info.input_hw
        );
    }
    Ok(())
}
