//! The catalogue of ProstateNET: what the repository holds, described so that researchers
//! can find a cohort before asking for it, and counted so that no answer identifies a
//! patient.
//!
//! It owns the pure logic over the pseudonymized metadata the vault writes:
//!
//! - [`classify`]: the sequence type of a series (T2W, DWI with its b-values, ADC, DCE,
//!   SEG) from its DICOM attributes (b-values as the vault read them, vendors' private
//!   elements included), with the series description only as a last resort;
//! - [`split`]: a patient's data origin (retrospective or prospective, by the date hbs
//!   first received the patient against the project's cut-off) and, for prospective
//!   patients, the patient-level split (fine-tuning 80%, external validation 20%),
//!   deterministic, stable as patients arrive, one split per patient;
//! - [`summary`]: the vault's per-series rows grouped into patients and ordered studies
//!   (baseline first), with origin, split and country;
//! - [`count`]: cohort counts over per-patient summaries (patients, studies, series,
//!   broken down by site, vendor, split or origin), every figure protected;
//! - [`kpi`]: the repository's indicators beside their targets, protected alike;
//! - [`disclosure`]: the rules a count passes before anyone sees it: suppression under a
//!   threshold, consistent perturbation by cell key, rounding.
//!
//! It does no IO and depends on no other crate of the project: callers (the vault at
//! ingest, the gateway for counts) hand it values. Why a crate of its own: the vault owns
//! storing instances; what may be *disclosed* about them is a separate concern with its
//! own rules and sources, shared by the count API and, later, the compute enclave's
//! output checks.
#![forbid(unsafe_code)]

pub mod classify;
pub mod count;
pub mod disclosure;
pub mod kpi;
pub mod split;
pub mod summary;
