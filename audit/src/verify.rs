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

/// Recomputes the log from its stored entries, in order.
pub struct Verifier {
    position: u64,
    stored: Vec<Hash>,
    /// (row seq, recomputed leaf) of every row, in order.
    rows: Vec<(u64, Hash)>,
    /// Leaves in the recomputed tree: stops growing at the first gap or disorder, after
    /// which positions no longer say which event a leaf is.
    leaves: u64,
    broken: bool,
    checkpoint_problems: Vec<Problem>,
    problems: Vec<Problem>,
    count: u64,
    checkpoints: usize,
    latest: Option<u64>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

/// The sequence number at the start of a canonical entry (`{"seq":N,...`), without
/// parsing the rest.
fn entry_seq(entry: &[u8]) -> Option<u64> {
    let rest = entry.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    if rest.get(end) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

impl Verifier {
    /// An empty verifier.
    pub fn new() -> Self {
        Verifier {
            position: 0,
            stored: Vec::new(),
            rows: Vec::new(),
            leaves: 0,
            broken: false,
            checkpoint_problems: Vec::new(),
            problems: Vec::new(),
            count: 0,
            checkpoints: 0,
            latest: None,
        }
    }

    fn problem(&mut self, position: Option<u64>, what: String) {
        self.count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { position, what });
        }
    }

    /// The next stored entry and the sequence number of its row.
    pub fn push(&mut self, seq: u64, entry: &[u8]) {
        let p = self.position;
        if seq > p {
            self.problem(
                Some(p),
                format!("events {p} to {} are missing (deleted)", seq - 1),
            );
            self.broken = true;
            self.position = seq;
        } else if seq < p {
            self.problem(Some(p), format!("row {seq} is out of order or repeated"));
            self.broken = true;
        }
        match entry_seq(entry) {
            None => self.problem(
                Some(seq),
                "the stored event is not a readable event (edited)".into(),
            ),
            Some(e) if e != seq => self.problem(
                Some(seq),
                format!("row {seq} holds event {e} (events moved or swapped)"),
            ),
            Some(_) => {}
        }
        let leaf = tree::record_hash(entry);
        self.rows.push((seq, leaf));
        if !self.broken {
            match tree::stored_hashes_for_leaf(self.leaves, leaf, &self.stored) {
                Some(hs) => {
                    self.stored.extend(hs);
                    self.leaves += 1;
                }
                None => self.broken = true,
            }
        }
        self.position = self.position.max(seq + 1);
    }

    /// One past the largest sequence number seen.
    pub fn max_seq_plus_one(&self) -> u64 {
        self.position
    }

    /// An event whose query columns disagree with its entry.
    pub fn column_mismatch(&mut self, seq: u64) {
        self.problem(
            Some(seq),
            "the query columns of the event disagree with the event (edited)".into(),
        );
    }

    /// Checks every checkpoint note against the recomputed tree and the verifier key.
    /// Returns how many leading events matching signed checkpoints vouch for.
    pub fn check_checkpoints(&mut self, notes: &[String], verifier_key: &str) -> u64 {
        self.checkpoints = notes.len();
        let mut good = 0u64;
        let mut first_bad: Option<u64> = None;
        for n in notes {
            let problem = match note::open(n.as_bytes(), verifier_key) {
                Err(e) => Some(format!("a checkpoint does not verify: {e}")),
                Ok(TreeHead { size, root, time }) => {
                    if size > self.leaves {
                        let why = if self.broken {
                            "events before it are missing or out of order".to_string()
                        } else {
                            format!("only {} are stored (deleted)", self.leaves)
                        };
                        first_bad = Some(first_bad.map_or(size, |b| b.min(size)));
                        Some(format!(
                            "the checkpoint of {size} events (signed at {time}) covers events that are not stored in order: {why}"
                        ))
                    } else if tree::tree_hash(size, &VecReader(&self.stored)).ok() != Some(root) {
                        first_bad = Some(first_bad.map_or(size, |b| b.min(size)));
                        Some(format!(
                            "the checkpoint of {size} events (signed at {time}) does not match the stored events: the history before it was rewritten"
                        ))
                    } else {
                        good = good.max(size);
                        None
                    }
                }
            };
            if let Some(what) = problem {
                self.count += 1;
                if self.checkpoint_problems.len() < MAX_PROBLEMS {
                    self.checkpoint_problems.push(Problem {
                        position: None,
                        what,
                    });
                }
            }
        }
        // A matching checkpoint vouches for its prefix only below the first bad one.
        let vouched = match first_bad {
            Some(b) => good.min(b),
            None => good,
        };
        self.latest = (good > 0).then_some(good);
        vouched
    }

    /// Compares, for rows numbered `from` on, each recomputed leaf with the leaf recorded
    /// when the event was appended.
    pub fn check_recorded(&mut self, from: u64, recorded: &HashMap<u64, Hash>) {
        let rows: Vec<(u64, Hash)> = self
            .rows
            .iter()
            .filter(|(seq, _)| *seq >= from)
            .copied()
            .collect();
        for (seq, leaf) in rows {
            match recorded.get(&seq) {
                Some(r) if *r == leaf => {}
                Some(_) => self.problem(
                    Some(seq),
                    format!("event {seq} differs from the event recorded when it was appended (edited, swapped or replaced)"),
                ),
                None => self.problem(Some(seq), format!("no hash was recorded for event {seq}")),
            }
        }
    }

    /// The report: checkpoint problems first, then events in order.
    pub fn report(self) -> Report {
        let mut problems = self.checkpoint_problems;
        let mut events = self.problems;
        events.sort_by_key(|p| p.position);
        for p in events {
            if problems.len() < MAX_PROBLEMS {
                problems.push(p);
            }
        }
        Report {
            events: self.position,
            checkpoints: self.checkpoints,
            latest_size: self.latest,
            problems,
            problem_count: self.count,
        }
    }
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
