//! Model cards: what a model takes, gives and is for. Pure.
//!
//! Every model in the registry comes with a card (JSON) beside its ONNX file. The
//! enclave reads the card to prepare inputs (which sequence, which b-value, the size
//! slices are resampled to, the intensity scale) and to read outputs (the score and
//! feature tensors of a classifier, the mask of a segmenter).

use serde::{Deserialize, Serialize};

/// What a model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// One probability per study (with a feature vector for transfer learning).
    Classifier,
    /// One probability per voxel.
    Segmenter,
}

/// The model's one image input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// The ONNX input name.
    pub name: String,
    /// The sequence it takes: T2W, DWI or ADC.
    pub sequence: String,
    /// For DWI: `highest` (the highest b-value of the series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b_value: Option<String>,
    /// Shape after the batch axis: `[1, rows, cols]` (2D, slices in the batch) or
    /// `[1, "slices", rows, cols]` (3D, one volume per study).
    pub shape: Vec<serde_json::Value>,
    /// Multiplier applied to the rescaled pixel values.
    pub scale: f32,
}

/// A model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Clinical scenario.
    pub scenario: String,
    /// Classifier or segmenter.
    pub task: Task,
    /// Its image inputs (one, for now).
    pub inputs: Vec<Input>,
    /// Output names: `score` and `features` (classifier), `mask` (segmenter).
    pub outputs: std::collections::BTreeMap<String, String>,
    /// Mask threshold (segmenter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
}

/// The slice geometry a card asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Rows of a resampled slice.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Whether a study is one volume (3D) rather than a batch of slices.
    pub volume: bool,
}

impl Card {
    /// Reads and checks a card; the error names the field at fault.
    pub fn parse(json: &[u8]) -> Result<Card, String> {
        let card: Card = serde_json::from_slice(json).map_err(|e| format!("model card: {e}"))?;
        card.geometry()?;
        for (key, needed) in [
            ("score", card.task == Task::Classifier),
            ("mask", card.task == Task::Segmenter),
        ] {
            if needed && !card.outputs.contains_key(key) {
                return Err(format!(
                    "model card: outputs.{key} is required for this task"
                ));
            }
        }
        if card.name.is_empty() || card.name.len() > 100 {
            return Err("model card: name must be 1 to 100 characters".into());
        }
        Ok(card)
    }

    /// The one input.
    pub fn input(&self) -> Result<&Input, String> {
        match self.inputs.as_slice() {
            [one] => Ok(one),
            _ => Err("model card: exactly one image input is supported".into()),
        }
    }

    /// The geometry of its input.
    pub fn geometry(&self) -> Result<Geometry, String> {
        let input = self.input()?;
        if !matches!(input.sequence.as_str(), "T2W" | "DWI" | "ADC") {
            return Err("model card: inputs[0].sequence must be T2W, DWI or ADC".into());
        }
        if !(input.scale.is_finite() && input.scale > 0.0) {
            return Err("model card: inputs[0].scale must be a positive number".into());
        }
        let n = |v: &serde_json::Value| v.as_u64().filter(|n| (8..=1024).contains(n));
        let bad = || {
            "model card: inputs[0].shape must be [1, rows, cols] or [1, \"slices\", rows, cols], 8 to 1024 pixels".to_string()
        };
        match input.shape.as_slice() {
            [c, r, k] if c.as_u64() == Some(1) => Ok(Geometry {
                rows: n(r).ok_or_else(bad)? as usize,
                cols: n(k).ok_or_else(bad)? as usize,
                volume: false,
            }),
            [c, s, r, k] if c.as_u64() == Some(1) && s.as_str() == Some("slices") => Ok(Geometry {
                rows: n(r).ok_or_else(bad)? as usize,
                cols: n(k).ok_or_else(bad)? as usize,
                volume: true,
            }),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_cards_read_and_a_bad_one_is_named() {
        for (json, volume) in [
            (include_str!("../models/cspca-dwi-classifier.json"), false),
            (include_str!("../models/lesion-unet-2d.json"), false),
            (include_str!("../models/lesion-unet-3d.json"), true),
        ] {
            let card = Card::parse(json.as_bytes()).unwrap();
            assert_eq!(card.geometry().unwrap().volume, volume);
            assert_eq!(card.geometry().unwrap().rows, 128);
        }
        let bad = include_str!("../models/lesion-unet-2d.json").replace("T2W", "CT");
        assert!(Card::parse(bad.as_bytes())
            .unwrap_err()
            .contains("sequence"));
    }
}
