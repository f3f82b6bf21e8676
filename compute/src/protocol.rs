//! What crosses the sandbox boundary: the job in (on the worker's stdin), the results
//! out (on its stdout). Pure: bytes to values and back.
//!
//! The protocol holds no gateway types, so a worker can as well be fed by a queue on
//! another machine. The input frame is binary, because it carries decrypted pixels
//! (megabytes per study, where JSON would cost more than inference):
//!
//! ```text
//! "HBSJOB1\n"  u32 spec length   spec (JSON: JobSpec)
//!              u32 model length  model (ONNX bytes)
//!              u32 cases         per case: u32 id, u32 label (0, 1, or 2 = unknown),
//!                                u32 dims, dims x u32, then f32 values (little-endian)
//! ```
//!
//! The output is one JSON document ([`Results`]), bounded by the launcher's cap.

use serde::{Deserialize, Serialize};

use std::io::Read;

use crate::card::Card;

const MAGIC: &[u8] = b"HBSJOB1\n";
/// Most values in one case tensor (a 64-slice 512x512 volume).
const MAX_VALUES: usize = 64 * 512 * 512;

/// What the worker does with each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Run the model; return each case's score (and features) or mask.
    Infer,
    /// Transfer learning: run the (classifier) model as a frozen backbone, fit a head
    /// ([`crate::head`]) on the features of the cases that carry a label (the
    /// fine-tuning split), and score every case with it too.
    FineTune,
}

/// The job as the worker sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// What to do.
    pub action: Action,
    /// The model's card.
    pub card: Card,
    /// SHA-256 of the model the approval names; the worker refuses another.
    pub model_sha256: String,
    /// Threads tract may use.
    pub threads: usize,
}

/// One case: a study's tensor, and its label where the job may use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Opaque number, chosen by the gateway.
    pub id: u32,
    /// Label: Some(true/false), or None where the worker must not know it.
    pub label: Option<bool>,
    /// Shape of `values`.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// A whole job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The spec.
    pub spec: JobSpec,
    /// The ONNX model.
    pub model: Vec<u8>,
    /// The cases.
    pub cases: Vec<Case>,
}

/// A case's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseResult {
    /// The case's number.
    pub id: u32,
    /// Classifier: the study's probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// Classifier: the study's feature vector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<f32>,
    /// Segmenter: the mask at the card's threshold, bits packed (LSB first), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Fine-tuning: the probability the new head gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<f32>,
}

/// What the worker returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// One per case, in order.
    pub cases: Vec<CaseResult>,
    /// Fine-tuning: the fitted head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<crate::head::Head>,
}

/// Errors reading a frame.
#[derive(Debug, thiserror::Error)]
#[error("job frame: {0}")]
pub struct FrameError(String);

/// Writes a job frame.
pub fn encode(job: &Job) -> Vec<u8> {
    let spec = serde_json::to_vec(&job.spec).unwrap_or_default();
    let values: usize = job.cases.iter().map(|c| c.values.len()).sum();
    let mut out = Vec::with_capacity(64 + spec.len() + job.model.len() + values * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    out.extend_from_slice(&(job.model.len() as u32).to_le_bytes());
    out.extend_from_slice(&job.model);
    out.extend_from_slice(&(job.cases.len() as u32).to_le_bytes());
    for c in &job.cases {
        out.extend_from_slice(&c.id.to_le_bytes());
        let label: u32 = match c.label {
            Some(false) => 0,
            Some(true) => 1,
            None => 2,
        };
        out.extend_from_slice(&label.to_le_bytes());
        out.extend_from_slice(&(c.shape.len() as u32).to_le_bytes());
        for d in &c.shape {
            out.extend_from_slice(&(*d as u32).to_le_bytes());
        }
        for v in &c.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

fn read_u32(r: &mut impl Read) -> Result<u32, FrameError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)
        .map_err(|_| FrameError("truncated".into()))?;
    Ok(u32::from_le_bytes(b))
}

fn read_bytes(r: &mut impl Read, n: usize) -> Result<Vec<u8>, FrameError> {
    let mut v = Vec::new();
    r.take(n as u64)
        .read_to_end(&mut v)
        .map_err(|_| FrameError("truncated".into()))?;
    if v.len() != n {
        return Err(FrameError("truncated".into()));
    }
    Ok(v)
}

/// Reads a frame's head: the spec, the model and how many cases follow. The worker
/// then reads the cases one by one ([`read_case`]) and runs each as it arrives, so the
/// transfer of the next overlaps the inference of this one and no copy of the whole
/// job is ever held.
pub fn read_head(r: &mut impl Read) -> Result<(JobSpec, Vec<u8>, usize), FrameError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| FrameError("truncated".into()))?;
    if magic[..] != *MAGIC {
        return Err(FrameError("not a job frame".into()));
    }
    let n = read_u32(r)? as usize;
    if n > 1 << 20 {
        return Err(FrameError("spec too large".into()));
    }
    let spec: JobSpec =
        serde_json::from_slice(&read_bytes(r, n)?).map_err(|e| FrameError(format!("spec: {e}")))?;
    let n = read_u32(r)? as usize;
    let model = read_bytes(r, n)?;
    let count = read_u32(r)? as usize;
    Ok((spec, model, count))
}

/// Reads the next case; `buf` is reused between cases.
pub fn read_case(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Case, FrameError> {
    let id = read_u32(r)?;
    let label = match read_u32(r)? {
        0 => Some(false),
        1 => Some(true),
        2 => None,
        _ => return Err(FrameError("bad label".into())),
    };
    let dims = read_u32(r)? as usize;
    if dims == 0 || dims > 6 {
        return Err(FrameError("bad tensor rank".into()));
    }
    let mut shape = Vec::with_capacity(dims);
    for _ in 0..dims {
        shape.push(read_u32(r)? as usize);
    }
    let len = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .filter(|n| *n <= MAX_VALUES)
        .ok_or_else(|| FrameError("tensor too large".into()))?;
    buf.resize(len * 4, 0);
    r.read_exact(buf)
        .map_err(|_| FrameError("truncated".into()))?;
    let values = buf
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Case {
        id,
        label,
        shape,
        values,
    })
}

/// Reads a whole job frame.
pub fn decode(bytes: &[u8]) -> Result<Job, FrameError> {
    let mut r = bytes;
    let (spec, model, count) = read_head(&mut r)?;
    let mut buf = Vec::new();
    let cases = (0..count)
        .map(|_| read_case(&mut r, &mut buf))
        .collect::<Result<Vec<_>, _>>()?;
    if !r.is_empty() {
        return Err(FrameError("trailing bytes".into()));
    }
    Ok(Job { spec, model, cases })
}

/// Packs a mask into hex (LSB first within each byte).
pub fn pack(on: &[bool]) -> String {
    let mut bytes = vec![0u8; on.len().div_ceil(8)];
    for (i, _) in on.iter().enumerate().filter(|(_, b)| **b) {
        bytes[i / 8] |= 1 << (i % 8);
    }
    hex::encode(bytes)
}

/// Unpacks `n` bits from [`pack`]'s hex.
pub fn unpack(hex_bits: &str, n: usize) -> Option<Vec<bool>> {
    let bytes = hex::decode(hex_bits).ok()?;
    if bytes.len() != n.div_ceil(8) {
        return None;
    }
    Some((0..n).map(|i| bytes[i / 8] >> (i % 8) & 1 == 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_survives_the_frame_and_a_damaged_frame_is_refused() {
        let card = Card::parse(include_bytes!("../models/cspca-dwi-classifier.json")).unwrap();
        let job = Job {
            spec: JobSpec {
                action: Action::Infer,
                card,
                model_sha256: "ab".repeat(32),
                threads: 1,
            },
            model: vec![1, 2, 3],
            cases: vec![Case {
                id: 7,
                label: None,
                shape: vec![2, 1, 2, 2],
                values: (0..8).map(|v| v as f32).collect(),
            }],
        };
        let bytes = encode(&job);
        assert_eq!(decode(&bytes).unwrap(), job);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        assert!(decode(b"GET / HTTP/1.1").is_err());
        let bits = [true, false, true, true, false, false, false, false, true];
        assert_eq!(unpack(&pack(&bits), bits.len()).unwrap(), bits);
    }
}
