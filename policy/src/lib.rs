//! # policy: who may do what, for which purpose, until when
//!
//! This crate will own ProstateNET's access decisions: the Casbin model and its storage
//! (a casbin `Adapter` over the project's own sqlx store, so one binary serves SQLite and
//! PostgreSQL), data and service requests, ethics-board reviews with quorum, and grants that
//! expire. Every decision will carry the rule that decided it.
//!
//! It is empty on purpose: the governance issue fills it. Nothing here decides anything yet,
//! and nothing in the workspace pretends it does.
#![forbid(unsafe_code)]
