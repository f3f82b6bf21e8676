//! # audit: the append-only, verifiable record of every decision and action
//!
//! This crate will own the event log, its RFC 9162 Merkle tree, signed checkpoints,
//! inclusion and consistency proofs, and the verifier auditors and sites run. It depends on
//! no other crate of the project.
//!
//! It is empty on purpose: the audit-log issue fills it.
#![forbid(unsafe_code)]
