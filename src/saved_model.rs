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
use crate::graph::Graph;
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

/// The parts of the checkpoint metadata the model needs.
#[derive(Deserialize)]
struct Saved {
    model: ModelInfo,
    #[serde(default)]
    quantizers: BTreeMap<String, ActQuantState>,
    config: SavedConfig,
}

#[derive(Deserialize)]
struct SavedConfig {
    qat: Option<SavedQat>,
}

#[derive(Deserialize)]
struct SavedQat {
    observer_momentum: f32,
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
    let arch: Arch = saved.model.arch.parse()?;
    let mut model = models::build(
        arch,
        saved.model.in_channels,
        saved.model.num_classes,
        device,
        0,
    )?;
    if let Some(q) = &saved.config.qat {
        model.quantize(q.observer_momentum);
        model.load_quantizers(&saved.quantizers)?;
    }
    ck.restore_module(&model)?;
    Ok((model, saved.model))
}

/// Refuses model metadata that cannot describe the checkpoint's tensors
/// before anything is allocated from it (a CRC-valid checkpoint can still
/// carry absurd sizes).
fn check_model_info(info: &ModelInfo, ck: &Checkpoint) -> Result<()> {
    let dim = |name: &str, axis: usize| -> Result<usize> {
        match ck.model.get(name) {
            Some(a) if a.shape.len() > axis => Ok(a.shape[axis]),
            Some(a) => bail!(
                Data,
                "checkpoint tensor {name} has shape {:?}, expected at least {} axes",
                a.shape,
                axis + 1
            ),
            None => bail!(Data, "checkpoint has no tensor {name}"),
        }
    };
    let (classes, channels) = (dim("fc.weight", 0)?, dim("stem.conv.weight", 1)?);
    if info.num_classes != classes || info.in_channels != channels {
        bail!(
            Data,
            "checkpoint metadata says {} classes and {} input channels, but its tensors have {classes} \
             and {channels}: the file is corrupt or was edited",
            info.num_classes,
            info.in_channels
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
