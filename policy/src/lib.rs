//! # policy: who may do what, for which purpose, until when
//!
//! ProstateNET's access decisions. Raw and pseudonymized data never leave; researchers get
//! access to a cohort for a purpose and a time, after an ethics board approves. This crate
//! owns:
//!
//! - [`model`]: the Casbin model (default deny; role rules with domains, grant rules with
//!   purpose, expiry and cohort scope) and the pure logic around it (cohort scopes, why a
//!   request was denied);
//! - [`workflow`]: requests and reviews as a state machine with its transition table,
//!   quorum, self-review and same-site rules (pure);
//! - [`store`]: the tables over sqlx (SQLite or PostgreSQL), transactions that make
//!   concurrent reviews safe, grants that end by time alone, revocation;
//! - [`adapter`]: Casbin's `Adapter` over that store, so one binary serves both databases;
//! - [`decide`]: the decider the gateway asks on every call: small filtered enforcers
//!   kept fresh by change notices (this process's writes, PostgreSQL `LISTEN/NOTIFY`),
//!   each decision with the rule that made it; [`decide::check_model`] guards the stored,
//!   reviewable model.
//!
//! It does not: authenticate anyone (the gateway hands it verified subjects and roles),
//! write the audit log (the gateway records every decision and change, in the change's own
//! transaction through a [`store::InTx`] hook), or evaluate cohorts against the catalogue.
//!
//! ```no_run
//! # async fn demo() -> Result<(), policy::PolicyError> {
//! use policy::{decide::Decider, model::{Query, Rule}, store::PolicyStore};
//! let store = PolicyStore::open("sqlite:hbs.db?mode=rwc", None).await?;
//! store.seed(&[("GET /whoami".into(), vec![Rule::route("researcher", "GET", "/whoami")])]).await?;
//! let decider = Decider::open(store).await?;
//! let q = Query::route("spiffe://prostatenet/researcher/bob", "researcher", "GET", "/whoami", 0);
//! let d = decider.decide(&q).await?;
//! assert!(d.allow, "{}", d.rule);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

/// The Casbin crate this policy is built on (for callers that drive the adapter directly).
pub use casbin;

pub mod adapter;
pub mod decide;
pub mod model;
pub mod store;
pub mod workflow;

/// What can go wrong. Messages name what failed and never quote a request's content.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The database failed.
    #[error("policy database: {0}")]
    Database(String),
    /// Casbin failed (model or evaluation).
    #[error("policy engine: {0}")]
    Engine(String),
    /// An enforcer does not enforce (disabled, or allowing an unknown caller).
    #[error("the policy enforcer is not enforcing; refusing to decide")]
    Disabled,
    /// Bad input, naming the field.
    #[error("{0}")]
    BadInput(String),
    /// No such request or grant.
    #[error("no such {0}")]
    NotFound(String),
    /// A step the rules refuse, with the rule.
    #[error("{0}")]
    Refused(String),
    /// The caller's in-transaction work (the audit record) failed; nothing changed.
    #[error("not recorded, nothing changed: {0}")]
    Audit(String),
}

impl From<sqlx::Error> for PolicyError {
    fn from(e: sqlx::Error) -> Self {
        PolicyError::Database(e.to_string())
    }
}
