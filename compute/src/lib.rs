//! # compute: the sandboxed enclave where approved models meet the data
//!
//! This crate will own the job runner, ONNX inference with tract, transfer-learning of
//! vendor-specific heads, output disclosure control and the model registry. It is handed
//! decrypted inputs; it never reads the blob store or keys itself.
//!
//! It is empty on purpose: the compute-enclave issue fills it.
#![forbid(unsafe_code)]
