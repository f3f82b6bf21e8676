//! Running an ONNX model with tract on a job's cases. Pure computation (no IO): it
//! runs inside the sandboxed worker.
//!
//! A 2D model sees a study as a batch of slices (`[slices, 1, rows, cols]`), a 3D model
//! as one volume (`[1, 1, slices, rows, cols]`). A classifier's study score is the
//! highest slice probability and its features the per-feature maximum over slices; a
//! segmenter's mask is its probability at or above the card's threshold. One
//! optimized plan is kept per input shape.

use std::collections::HashMap;

use tract_onnx::prelude::*;

use crate::card::{Card, Task};
use crate::protocol::{pack, Case, CaseResult};

/// Inference failures (the worker reports them by exit code only).
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The model does not load, or does not fit its card.
    #[error("model: {0}")]
    Model(String),
    /// A case does not fit the model.
    #[error("input: {0}")]
    Input(String),
    /// The model failed while running.
    #[error("run: {0}")]
    Run(String),
}

type Plan = Arc<TypedSimplePlan>;

/// A loaded model and its plans.
pub struct Model {
    proto: InferenceModel,
    card: Card,
    plans: HashMap<Vec<usize>, Plan>,
    outputs: Vec<String>,
}

impl Model {
    /// Loads an ONNX model for its card.
    pub fn load(onnx: &[u8], card: &Card) -> Result<Model, InferError> {
        let proto = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(|e| InferError::Model(format!("{e}")))?;
        let input = card.input().map_err(InferError::Model)?;
        let names: Vec<String> = proto
            .input_outlets()
            .map_err(|e| InferError::Model(format!("{e}")))?
            .iter()
            .map(|o| proto.node(o.node).name.clone())
            .collect();
        if names != [input.name.clone()] {
            return Err(InferError::Model(format!(
                "the model's inputs are {names:?}; its card names {:?}",
                input.name
            )));
        }
        let wanted: Vec<String> = match card.task {
            Task::Classifier => ["score", "features"]
                .iter()
                .filter_map(|k| card.outputs.get(*k).cloned())
                .collect(),
            Task::Segmenter => card.outputs.get("mask").cloned().into_iter().collect(),
        };
        let mut proto = proto;
        proto
            .select_outputs_by_name(&wanted)
            .map_err(|e| InferError::Model(format!("outputs {wanted:?}: {e}")))?;
        Ok(Model {
            proto,
            card: card.clone(),
            plans: HashMap::new(),
            outputs: wanted,
        })
    }

    fn plan(&mut self, shape: &[usize]) -> Result<&Plan, InferError> {
        if !self.plans.contains_key(shape) {
            let plan = self
                .proto
                .clone()
                .with_input_fact(0, f32::fact(shape).into())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(|e| InferError::Model(format!("for input {shape:?}: {e}")))?;
            self.plans.insert(shape.to_vec(), plan);
        }
        self.plans
            .get(shape)
            .ok_or_else(|| InferError::Model("plan missing".into()))
    }

    /// Runs one case: a study as `[slices, rows, cols]`.
    pub fn run(&mut self, case: &Case) -> Result<CaseResult, InferError> {
        let g = self.card.geometry().map_err(InferError::Model)?;
        let [slices, rows, cols] = case.shape[..] else {
            return Err(InferError::Input("a case is [slices, rows, cols]".into()));
        };
        if rows != g.rows || cols != g.cols || slices == 0 {
            return Err(InferError::Input(format!(
                "a case is {slices}x{rows}x{cols}; the model takes {}x{} slices",
                g.rows, g.cols
            )));
        }
        let shape = if g.volume {
            vec![1, 1, slices, rows, cols]
        } else {
            vec![slices, 1, rows, cols]
        };
        let tensor = Tensor::from_shape(&shape, &case.values)
            .map_err(|e| InferError::Input(format!("{e}")))?;
        let task = self.card.task;
        let threshold = self.card.threshold.unwrap_or(0.5);
        let n_out = self.outputs.len();
        let out = self
            .plan(&shape)?
            .run(tvec!(tensor.into()))
            .map_err(|e| InferError::Run(format!("{e}")))?;
        if out.len() != n_out {
            return Err(InferError::Run("unexpected outputs".into()));
        }
        let view = |i: usize| -> Result<Vec<f32>, InferError> {
            Ok(out[i]
                .to_plain_array_view::<f32>()
                .map_err(|e| InferError::Run(format!("{e}")))?
                .iter()
                .copied()
                .collect())
        };
        match task {
            Task::Classifier => {
                let probs = view(0)?;
                if probs.len() != slices {
                    return Err(InferError::Run("one probability per slice expected".into()));
                }
                let score = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let features = if n_out > 1 {
                    let f = view(1)?;
                    let width = f.len() / slices;
                    (0..width)
                        .map(|k| {
                            (0..slices)
                                .map(|s| f[s * width + k])
                                .fold(f32::NEG_INFINITY, f32::max)
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                Ok(CaseResult {
                    id: case.id,
                    score: Some(score),
                    features,
                    mask: None,
                    tuned: None,
                })
            }
            Task::Segmenter => {
                let p = view(0)?;
                if p.len() != slices * rows * cols {
                    return Err(InferError::Run("the mask does not match the input".into()));
                }
                let on: Vec<bool> = p.iter().map(|v| *v >= threshold).collect();
                Ok(CaseResult {
                    id: case.id,
                    score: None,
                    features: Vec::new(),
                    mask: Some(pack(&on)),
                    tuned: None,
                })
            }
        }
    }
}
