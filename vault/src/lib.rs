//! # vault: what turns an identifiable study into a pseudonymized, encrypted one
//!
//! ProstateNET receives identifiable prostate mpMRI studies and clinical records from its
//! clinical sites; nothing identifying may ever be stored. This crate owns everything
//! between the bytes a site sends and the ciphertext that reaches storage:
//!
//! - [`dicom`]: a strict Part 10 reader and writer that keeps values as bytes and pixel
//!   data untouched (why not `dicom-object` here: see the module);
//! - [`tables`]: PS3.15 Table E.1-1 and the safe-private list, generated from the
//!   published sources shipped in `vault/standards/`;
//! - [`pseudonym`]: keyed pseudonyms, UID replacement and per-patient date shifts;
//! - [`deid`]: de-identification of one instance (pure: bytes in, bytes out);
//! - [`clinical`]: pseudonymization of the clinical-record CSV;
//! - [`crypto`]: envelope encryption with per-patient data keys and versioned KEKs;
//! - [`store`]: where encrypted blobs live (local files with atomic writes, or any
//!   `object_store` backend);
//! - [`catalog`]: the metadata database (SQLite or PostgreSQL through sqlx);
//! - [`vault`]: the service that ties them together: ingest, export, withdraw, rotate;
//! - [`tree`]: de-identify a folder tree, as `hbs deid` does for a site's preview;
//! - [`synth`]: a synthetic, identifiable corpus of the three vendors, for tests and demos.
//!
//! It knows nothing of HTTP or principals: the gateway decides who may call it.
//!
//! ```
//! use vault::{deid, pseudonym::{Pseudonymizer, SiteId}};
//! let keys = Pseudonymizer::new(&[42u8; 32]).unwrap();
//! let site = SiteId::new("SITE_A").unwrap();
//! // Not DICOM: a clear, value-free error, never a panic.
//! let err = deid::deidentify(b"hello", &site, &keys).unwrap_err();
//! assert!(err.to_string().contains("DICM"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acquisition;
pub mod catalog;
pub mod clinical;
pub mod crypto;
pub mod deid;
pub mod dicom;
pub mod image;
pub mod pseudonym;
pub mod store;
pub mod synth;
pub mod tables;
pub mod tree;
pub mod vault;
