//! # audit: the append-only, verifiable record of every decision and action
//!
//! Auditors of ProstateNET must answer "who did what to which data, when, and on whose
//! approval", and sites must be able to prove the record was never rewritten, even by the
//! gateway's operators. This crate is that record. It depends on no other crate of the
//! project; the gateway wires it in.
//!
//! ## Layout
//! - [`event`]: what an event is and its canonical bytes (the Merkle leaf). Pure.
//! - [`tree`]: the RFC 9162 / RFC 6962 Merkle tree through `tlog_tiles` (a port of Go's
//!   `sumdb/tlog`): leaf hash SHA-256(0x00 || entry), node hash SHA-256(0x01 || l || r),
//!   any tree size; the hashes are stored as `tlog` lays them out, so proofs read
//!   O(log n) stored hashes. Pure, except that hash reads are abstracted.
//! - [`note`]: the audit key (Ed25519) and checkpoints in the C2SP signed-note checkpoint
//!   format (`signed_note`, `tlog_tiles::Checkpoint`). Pure.
//! - [`log`]: [`log::AuditLog`], the storage on the project database (SQLite or
//!   PostgreSQL, one schema): append with group commit, triggers refusing UPDATE and
//!   DELETE, a daily-rolling JSON-lines copy, a checkpointer that signs a new tree head
//!   at least once a second while events arrive, proofs and queries.
//! - [`verify`]: checks a whole log, or a log against a checkpoint kept earlier, trusting
//!   nothing but the audit public key. Pure.
//!
//! ## Why these choices
//! - The tree math is not written here: `tlog_tiles` matches the transparency-dev
//!   known-answer tests, and the tests cross-check it against `ct-merkle`.
//! - An event is recorded *before* the effect it describes is committed, and a failed
//!   append fails the request (fail closed, as a HashiCorp Vault audit device does).
//! - Events hold pseudonymized identifiers only: the gateway records route templates,
//!   never request paths (a source Study Instance UID can be in a path).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod event;
pub mod log;
pub mod note;
pub mod tree;
pub mod verify;

pub use event::{Actor, Event, NewEvent};
pub use log::{AuditError, AuditLog, Filter};
