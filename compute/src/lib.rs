//! # compute: the enclave where approved models meet the data
//!
//! A researcher's approved service request brings an ONNX model (named by its SHA-256)
//! to a cohort; only checked outputs come back. This crate holds the parts of that
//! path that are not HTTP or storage:
//!
//! - [`sandbox`]: the worker process and its confinement (namespaces by bubblewrap,
//!   cgroup v1 memory and pids limits, rlimits, Landlock, seccomp, a timeout and an
//!   output cap), and the fixed vocabulary of failures it reports;
//! - [`protocol`]: the frame a worker reads (spec, model, decrypted inputs) and the
//!   results it writes; nothing in it knows the gateway, so workers can run elsewhere;
//! - [`worker`]: the worker's `main`;
//! - [`infer`]: running a model with tract inside the worker;
//! - [`card`]: model cards (what a model takes and gives);
//! - [`head`]: the trainable head of transfer learning (logistic regression on a frozen
//!   backbone's features);
//! - [`metrics`]: AUC, sensitivity and specificity, calibration, Dice, Hausdorff;
//! - [`release`]: output disclosure control (what of a job's results may leave).
//!
//! It does not read the blob store or keys: the gateway hands it decrypted inputs, and
//! they reach the worker only through a pipe. It is the one crate with `unsafe` code,
//! in one place ([`sandbox`], `pre_exec`), which says why.
//!
//! ```
//! use compute::metrics::{auc, Confusion};
//! let scores = [0.9, 0.8, 0.3, 0.1];
//! let labels = [true, false, true, false];
//! assert_eq!(auc(&scores, &labels), Some(0.75));
//! assert_eq!(Confusion::at(&scores, &labels, 0.5).sensitivity(), Some(0.5));
//! ```
#![deny(unsafe_code)]

pub mod card;
pub mod head;
pub mod infer;
pub mod metrics;
pub mod protocol;
pub mod release;
pub mod sandbox;
pub mod worker;
