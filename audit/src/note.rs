//! The audit key and signed checkpoints (C2SP tlog-checkpoint inside a C2SP signed note).
//!
//! A checkpoint's text is the origin line, the tree size, the base64 root hash and one
//! extension line `time <unix seconds>` (when the gateway signed it); the note carries
//! one Ed25519 signature by the audit key. Anyone with the public key (the verifier key
//! string `NAME+ID+KEY` in `DATA/audit/key.pub`) can check it: `signed_note` here, Go's
//! `golang.org/x/mod/sumdb/note` or any C2SP implementation elsewhere. Pure.

use signed_note::{Note, Signer as _, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::Checkpoint;

use crate::tree::Hash;

/// The log's origin, and the key's name.
pub const ORIGIN: &str = "prostatenet.eu/hbs/audit";

/// Why a checkpoint is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The verifier key string is not one.
    #[error("the audit public key is malformed")]
    BadKey,
    /// The note or its signature does not verify with the key.
    #[error("the checkpoint's signature does not verify with the audit key")]
    BadSignature,
    /// The text is not a checkpoint of this log.
    #[error("the checkpoint is malformed or of another log")]
    Malformed,
}

/// A verified checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeHead {
    /// Number of events.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// When signed (Unix seconds).
    pub time: u64,
}

/// The gateway's audit signing key.
pub struct AuditKey {
    signer: StandardSigner,
    /// Its verifier key string, for anyone who checks checkpoints.
    pub verifier_key: String,
}

impl AuditKey {
    /// A fresh key pair: (signer key string, verifier key string). The signer key is
    /// secret.
    pub fn generate() -> (String, String) {
        signed_note::generate_key(&mut rand_core::OsRng, ORIGIN)
    }

    /// Loads a signer key string and its verifier key string.
    pub fn new(signer_key: &str, verifier_key: &str) -> Result<Self, CheckpointError> {
        let signer = StandardSigner::new(signer_key.trim()).map_err(|_| CheckpointError::BadKey)?;
        let v = StandardVerifier::new(verifier_key.trim()).map_err(|_| CheckpointError::BadKey)?;
        use signed_note::Verifier as _;
        if v.key_id() != signer.key_id() || v.name() != signer.name() {
            return Err(CheckpointError::BadKey);
        }
        Ok(AuditKey {
            signer,
            verifier_key: verifier_key.trim().to_string(),
        })
    }

    /// Signs the tree head of `size` events with root `root` at `time` (Unix seconds).
    pub fn sign(&self, size: u64, root: Hash, time: u64) -> Result<String, CheckpointError> {
        let cp = Checkpoint::new(ORIGIN, size, root, &format!("time {time}\n"))
            .map_err(|_| CheckpointError::Malformed)?;
        let mut note = Note::new(&cp.to_bytes(), &[]).map_err(|_| CheckpointError::Malformed)?;
        note.add_sigs(&[&self.signer])
            .map_err(|_| CheckpointError::Malformed)?;
        String::from_utf8(note.to_bytes()).map_err(|_| CheckpointError::Malformed)
    }
}

/// Verifies a signed checkpoint with the verifier key string and reads its tree head.
pub fn open(note: &[u8], verifier_key: &str) -> Result<TreeHead, CheckpointError> {
    let v = StandardVerifier::new(verifier_key.trim()).map_err(|_| CheckpointError::BadKey)?;
    let note = Note::from_bytes(note).map_err(|_| CheckpointError::Malformed)?;
    note.verify(&VerifierList::new(vec![Box::new(v)]))
        .map_err(|_| CheckpointError::BadSignature)?;
    let cp = Checkpoint::from_bytes(note.text()).map_err(|_| CheckpointError::Malformed)?;
    if cp.origin() != ORIGIN {
        return Err(CheckpointError::Malformed);
    }
    let time = cp
        .extension()
        .lines()
        .find_map(|l| l.strip_prefix("time "))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Ok(TreeHead {
        size: cp.size(),
        root: *cp.hash(),
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_sign_and_verify_and_refuse_forgeries() {
        let (skey, vkey) = AuditKey::generate();
        let key = AuditKey::new(&skey, &vkey).unwrap();
        let root = crate::tree::record_hash(b"x");
        let note = key.sign(5, root, 1_790_000_000).unwrap();
        assert!(note.starts_with(&format!("{ORIGIN}\n5\n")), "{note}");
        assert!(note.contains("\ntime 1790000000\n\n\u{2014} "), "{note}");
        let head = open(note.as_bytes(), &vkey).unwrap();
        assert_eq!(
            head,
            TreeHead {
                size: 5,
                root,
                time: 1_790_000_000
            }
        );
        // Another size under the same signature, or another key: refused.
        let forged = note.replacen("\n5\n", "\n6\n", 1);
        assert!(open(forged.as_bytes(), &vkey).is_err());
        let (_, other) = AuditKey::generate();
        assert!(open(note.as_bytes(), &other).is_err());
        assert!(AuditKey::new(&skey, &other).is_err());
        assert!(open(b"garbage", &vkey).is_err());
    }
}
