//! Verification that trusts nothing but the audit public key.
//!
//! [`Verifier`] takes the stored rows in order and recomputes the whole tree; it reports,
//! with its position, every event that is missing (a gap), moved or swapped (a row holding
//! another event), edited (its hash differs from the one recorded when it was appended, or
//! its query columns disagree with it), and every checkpoint whose signature fails or whose
//! signed root differs from the recomputed one (a rewritten history, even when the stored
//! hashes were rewritten too). [`check_consistency`] checks a checkpoint kept earlier
//! against a newer one. Pure.

use std::collections::HashMap;

use crate::event::Event;
use crate::log::StoredRow;
use crate::note::{self, TreeHead};
use crate::tree::{self, Hash, VecReader};

/// Something wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The event position, when the problem has one.
    pub position: Option<u64>,
    /// What is wrong.
    pub what: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Events read.
    pub events: u64,
    /// Checkpoints checked.
    pub checkpoints: usize,
    /// The largest checkpoint that verified and matched.
    pub latest_size: Option<u64>,
    /// Problems, at most [`MAX_PROBLEMS`] listed.
    pub problems: Vec<Problem>,
    /// Problems found in all.
    pub problem_count: u64,
}

impl Report {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }
}

/// Most problems listed in a report (all are counted).
pub const MAX_PROBLEMS: usize = 100;

/// Recomputes the log from its stored rows, in order.
pub struct Verifier {
    position: u64,
    stored: Vec<Hash>,
    /// Leaves in the recomputed tree: stops growing at the first gap or disorder, after
    /// which positions no longer say which event a leaf is.
    leaves: u64,
    broken: bool,
    problems: Vec<Problem>,
    count: u64,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// An empty verifier.
    pub fn new() -> Self {
        Verifier {
            position: 0,
            stored: Vec::new(),
            leaves: 0,
            broken: false,
            problems: Vec::new(),
            count: 0,
        }
    }

    fn problem(&mut self, position: Option<u64>, what: String) {
        self.count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { position, what });
        }
    }

    /// The next stored row, with the leaf hash recorded for its sequence number when the
    /// log appended it (if any).
    pub fn push(&mut self, row: &StoredRow, recorded_leaf: Option<Hash>) {
        let p = self.position;
        if row.seq > p {
            self.problem(
                Some(p),
                format!("events {p} to {} are missing (deleted)", row.seq - 1),
            );
            self.broken = true;
            self.position = row.seq;
        } else if row.seq < p {
            self.problem(
                Some(p),
                format!("row {} is out of order or repeated", row.seq),
            );
            self.broken = true;
        }
        let p = row.seq;
        match Event::from_entry(row.entry.as_bytes()) {
            Err(_) => self.problem(
                Some(p),
                "the stored event is not a readable event (edited)".into(),
            ),
            Ok(e) => {
                if e.seq != row.seq {
                    self.problem(
                        Some(p),
                        format!(
                            "row {} holds event {} (events moved or swapped)",
                            row.seq, e.seq
                        ),
                    );
                }
                let empty = String::new();
                let cols = [
                    &e.actor.role,
                    e.actor.site.as_ref().unwrap_or(&empty),
                    &e.actor.name,
                    &e.actor.serial,
                    &e.action,
                    &e.resource,
                    &e.decision,
                ];
                if cols.iter().zip(row.columns.iter()).any(|(a, b)| *a != b) {
                    self.problem(
                        Some(p),
                        "the query columns of the event disagree with the event (edited)".into(),
                    );
                }
            }
        }
        let leaf = tree::record_hash(row.entry.as_bytes());
        match recorded_leaf {
            Some(r) if r == leaf => {}
            Some(_) => self.problem(
                Some(p),
                format!("event {p} differs from the event recorded when it was appended (edited, swapped or replaced)"),
            ),
            None => self.problem(Some(p), format!("no hash was recorded for event {p}")),
        }
        if !self.broken {
            match tree::stored_hashes_for_leaf(self.leaves, leaf, &self.stored) {
                Some(hs) => {
                    self.stored.extend(hs);
                    self.leaves += 1;
                }
                None => self.broken = true,
            }
        }
        self.position = self.position.max(row.seq + 1);
    }

    /// Checks every checkpoint note against the recomputed tree and the verifier key.
    pub fn finish(mut self, notes: &[String], verifier_key: &str) -> Report {
        let mut latest = None;
        // Checkpoint problems are listed first: they are what a rewritten history shows.
        let event_problems = std::mem::take(&mut self.problems);
        let event_count = std::mem::take(&mut self.count);
        for n in notes {
            match note::open(n.as_bytes(), verifier_key) {
                Err(e) => self.problem(None, format!("a checkpoint does not verify: {e}")),
                Ok(TreeHead { size, root, time }) => {
                    if size > self.leaves {
                        let why = if self.broken {
                            "events before it are missing or out of order".to_string()
                        } else {
                            format!("only {} are stored (deleted)", self.leaves)
                        };
                        self.problem(
                            None,
                            format!(
                                "the checkpoint of {size} events (signed at {time}) covers events that are not stored in order: {why}"
                            ),
                        );
                        continue;
                    }
                    let ours = tree::tree_hash(size, &VecReader(&self.stored));
                    if ours.ok() != Some(root) {
                        self.problem(
                            None,
                            format!(
                                "the checkpoint of {size} events (signed at {time}) does not match the stored events: the history before it was rewritten"
                            ),
                        );
                    } else if latest.is_none_or(|l| l < size) {
                        latest = Some(size);
                    }
                }
            }
        }
        for p in event_problems {
            if self.problems.len() < MAX_PROBLEMS {
                self.problems.push(p);
            }
        }
        Report {
            events: self.position,
            checkpoints: notes.len(),
            latest_size: latest,
            problems: self.problems,
            problem_count: self.count + event_count,
        }
    }
}

/// Verifies the stored rows (in order), their recorded leaves and the checkpoints.
pub fn verify_rows<'a>(
    rows: impl IntoIterator<Item = &'a StoredRow>,
    recorded: &HashMap<u64, Hash>,
    notes: &[String],
    verifier_key: &str,
) -> Report {
    let mut v = Verifier::new();
    for r in rows {
        v.push(r, recorded.get(&r.seq).copied());
    }
    v.finish(notes, verifier_key)
}

/// Checks that the log a kept checkpoint `old` describes is a prefix of the one `new`
/// describes, with the consistency proof between them. Both must be signed by the key.
pub fn check_consistency(
    old: &str,
    new: &str,
    proof: &[Hash],
    verifier_key: &str,
) -> Result<(TreeHead, TreeHead), String> {
    let o = note::open(old.as_bytes(), verifier_key)
        .map_err(|e| format!("the kept checkpoint: {e}"))?;
    let n = note::open(new.as_bytes(), verifier_key)
        .map_err(|e| format!("the gateway's checkpoint: {e}"))?;
    if n.size < o.size {
        return Err(format!(
            "the gateway's log has {} events, fewer than the {} of the kept checkpoint: it was truncated or rewritten",
            n.size, o.size
        ));
    }
    if o.size == 0 {
        return Ok((o, n));
    }
    if !tree::verify_consistency(proof, n.size, n.root, o.size, o.root) {
        return Err(format!(
            "the log of {} events is not an extension of the kept checkpoint of {}: its history was rewritten",
            n.size, o.size
        ));
    }
    Ok((o, n))
}
