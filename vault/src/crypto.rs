//! Envelope encryption: a data key per patient, wrapped by a versioned key-encryption key.
//!
//! All of it is AES-256-GCM from ring, with 96-bit random nonces from the system CSPRNG
//! (a patient's data key seals at most a few thousand blobs, far below the 2^32 limit for
//! random nonces). Nothing here is invented: the constructions are the ones HashiCorp
//! Vault's transit engine and cloud KMS envelope encryption use.
//!
//! - A blob is `HBSB` | format 1 | data-key version (u32 BE) | nonce (12) | ciphertext+tag.
//!   Its associated data is `hbs/blob/v1` 0 object ID 0 data-key version, so a blob moved to
//!   another object ID, or presented under another key version, fails to open.
//! - A wrapped data key is nonce (12) | ciphertext+tag, with associated data
//!   `hbs/dek/v1` 0 pseudonym 0 KEK version, so a wrapped key cannot be moved to another
//!   patient or presented as wrapped under another KEK version.
//! - Rotating the KEK rewraps data keys; blobs are not touched.
//! - Crypto-shredding is deleting the wrapped data key: the blobs stay, unreadable.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Crypto failures. None of them carries key material or plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong object ID or version, or tampered bytes.
    #[error(
        "decryption failed: wrong key, wrong object or key version, or the ciphertext was altered"
    )]
    Open,
    /// The blob does not start with the hbs header.
    #[error("not an hbs blob (bad header)")]
    Format,
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// A key of the wrong size.
    #[error("a key must be 32 bytes, got {0}")]
    KeySize(usize),
}

const MAGIC: &[u8; 4] = b"HBSB";
const HEADER: usize = 4 + 1 + 4 + NONCE_LEN;

/// 32 bytes of key material from the system CSPRNG.
pub fn random_key() -> Result<[u8; 32], CryptoError> {
    let mut k = [0u8; 32];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| CryptoError::Rng)?;
    Ok(k)
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, CryptoError> {
    let k = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::KeySize(bytes.len()))?;
    Ok(LessSafeKey::new(k))
}

fn nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut n = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| CryptoError::Rng)?;
    Ok(n)
}

fn aad(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut a = label.as_bytes().to_vec();
    for p in parts {
        a.push(0);
        a.extend_from_slice(p);
    }
    a
}

/// A patient's data key, unwrapped, in memory only.
pub struct DataKey {
    key: LessSafeKey,
    /// Version of this patient's data key (1 unless re-keyed).
    pub version: u32,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey(v{}, <secret>)", self.version)
    }
}

impl DataKey {
    /// Builds a data key from its 32 bytes.
    pub fn new(bytes: &[u8], version: u32) -> Result<Self, CryptoError> {
        Ok(DataKey {
            key: aead_key(bytes)?,
            version,
        })
    }

    /// Encrypts a blob for `object_id`. Consumes the plaintext buffer and encrypts in
    /// place, so the plaintext is not copied.
    pub fn seal(&self, object_id: &str, mut plaintext: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        let n = nonce()?;
        let ver = self.version.to_be_bytes();
        let a = aad("hbs/blob/v1", &[object_id.as_bytes(), &ver]);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(&a),
                &mut plaintext,
            )
            .map_err(|_| CryptoError::Open)?;
        let mut out = Vec::with_capacity(HEADER + plaintext.len());
        out.extend_from_slice(MAGIC);
        out.push(1);
        out.extend_from_slice(&ver);
        out.extend_from_slice(&n);
        out.extend_from_slice(&plaintext);
        Ok(out)
    }

    /// Decrypts a blob sealed for `object_id` with this key.
    pub fn open(&self, object_id: &str, blob: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if blob.len() < HEADER + 16 || &blob[0..4] != MAGIC || blob[4] != 1 {
            return Err(CryptoError::Format);
        }
        let ver = [blob[5], blob[6], blob[7], blob[8]];
        if u32::from_be_bytes(ver) != self.version {
            return Err(CryptoError::Open);
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&blob[9..HEADER]);
        let a = aad("hbs/blob/v1", &[object_id.as_bytes(), &ver]);
        let mut buf = blob[HEADER..].to_vec();
        let pt = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&a), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        let len = pt.len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Data-key version stored in a blob header, without decrypting it.
pub fn blob_key_version(blob: &[u8]) -> Option<u32> {
    (blob.len() >= HEADER && &blob[0..4] == MAGIC)
        .then(|| u32::from_be_bytes([blob[5], blob[6], blob[7], blob[8]]))
}

/// A key-encryption key with its version.
pub struct Kek {
    key: LessSafeKey,
    /// The version; wrapped keys record the version that wrapped them.
    pub version: u32,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek(v{}, <secret>)", self.version)
    }
}

impl Kek {
    /// Builds a KEK from its 32 bytes.
    pub fn new(bytes: &[u8], version: u32) -> Result<Self, CryptoError> {
        Ok(Kek {
            key: aead_key(bytes)?,
            version,
        })
    }

    /// Wraps a patient's data key.
    pub fn wrap(&self, pseudonym: &str, data_key: &[u8; 32]) -> Result<Vec<u8>, CryptoError> {
        let n = nonce()?;
        let a = aad(
            "hbs/dek/v1",
            &[pseudonym.as_bytes(), &self.version.to_be_bytes()],
        );
        let mut buf = data_key.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::from(&a), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        let mut out = n.to_vec();
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Unwraps a patient's data key.
    pub fn unwrap_key(&self, pseudonym: &str, wrapped: &[u8]) -> Result<[u8; 32], CryptoError> {
        if wrapped.len() != NONCE_LEN + 32 + 16 {
            return Err(CryptoError::Format);
        }
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&wrapped[..NONCE_LEN]);
        let a = aad(
            "hbs/dek/v1",
            &[pseudonym.as_bytes(), &self.version.to_be_bytes()],
        );
        let mut buf = wrapped[NONCE_LEN..].to_vec();
        let pt = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&a), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        let mut k = [0u8; 32];
        k.copy_from_slice(pt);
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_open_only_for_their_object_and_version() {
        let k = random_key().unwrap();
        let dk = DataKey::new(&k, 1).unwrap();
        let blob = dk.seal("obj-1", b"hello dicom".to_vec()).unwrap();
        assert_eq!(dk.open("obj-1", &blob).unwrap(), b"hello dicom");
        assert_eq!(blob_key_version(&blob), Some(1));
        // Swapped to another object ID: refused.
        assert_eq!(dk.open("obj-2", &blob), Err(CryptoError::Open));
        // Same key bytes presented as another version: refused.
        let dk2 = DataKey::new(&k, 2).unwrap();
        assert_eq!(dk2.open("obj-1", &blob), Err(CryptoError::Open));
        // Tampered: refused.
        let mut t = blob.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(dk.open("obj-1", &t), Err(CryptoError::Open));
        // Another key: refused.
        let other = DataKey::new(&random_key().unwrap(), 1).unwrap();
        assert_eq!(other.open("obj-1", &blob), Err(CryptoError::Open));
        // The plaintext is not in the blob.
        assert!(!blob.windows(5).any(|w| w == b"dicom"));
    }

    #[test]
    fn wrapped_keys_are_bound_to_patient_and_kek_version() {
        let kek1 = Kek::new(&random_key().unwrap(), 1).unwrap();
        let dek = random_key().unwrap();
        let w = kek1.wrap("PN-A", &dek).unwrap();
        assert_eq!(kek1.unwrap_key("PN-A", &w).unwrap(), dek);
        assert_eq!(kek1.unwrap_key("PN-B", &w), Err(CryptoError::Open));
        let kek2 = Kek::new(&random_key().unwrap(), 2).unwrap();
        assert_eq!(kek2.unwrap_key("PN-A", &w), Err(CryptoError::Open));
        assert_eq!(
            DataKey::new(&[0u8; 5], 1).unwrap_err(),
            CryptoError::KeySize(5)
        );
    }
}
