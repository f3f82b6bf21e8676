//! # certs: the platform PKI and the principals it vouches for
//!
//! This crate will own the platform CA (issuing and revoking client certificates, CRLs) and
//! the conversion of a verified peer certificate into a typed principal (role, site, name).
//! It makes no access decisions.
//!
//! It is empty on purpose: the gateway issue fills it.
#![forbid(unsafe_code)]
