//! Keyed pseudonyms, UID replacement and per-patient date shifts.
//!
//! Everything here is an HMAC-SHA256 (ring) under the broker secret, with a distinct
//! domain-separation label per use, so a pseudonym, a UID and a date shift can be
//! recomputed by whoever holds the secret and by nobody else:
//!
//! - pseudonym = HMAC(secret, "hbs/pseudonym/v1" 0 site 0 local patient ID): the same
//!   patient at the same site always gets the same pseudonym; the same local ID at two
//!   sites gets two.
//! - UID = "2.25." + the first 128 bits of HMAC(secret, "hbs/uid/v1" 0 UID) as a decimal
//!   integer (PS3.5 B.2): the same source UID maps to the same new UID in every instance
//!   and upload, so references stay valid.
//! - date shift = -(365 + HMAC(secret, "hbs/date-shift/v1" 0 pseudonym) mod 3288) days,
//!   between one and about ten years back, identical for every study of the patient, so
//!   intervals between baseline and follow-up are exact.

use std::fmt;

use ring::hmac;

/// The broker secret, as a keyed-hash key. Never printed.
#[derive(Clone)]
pub struct Pseudonymizer {
    key: hmac::Key,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pseudonymizer(<secret>)")
    }
}

/// Identifies a contributing site (a short code such as `SITE_A`; not identifying).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SiteId(String);

/// Error for a site code that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("site code must be 1 to 32 characters of A-Z, a-z, 0-9, '_' or '-'")]
pub struct BadSiteId;

impl SiteId {
    /// Validates a site code.
    pub fn new(s: &str) -> Result<Self, BadSiteId> {
        if s.is_empty()
            || s.len() > 32
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(BadSiteId);
        }
        Ok(SiteId(s.to_string()))
    }
    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A patient pseudonym: `PN-` and 20 upper-case hex digits. Safe to store and log.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Pseudonym(String);

impl Pseudonym {
    /// Parses a pseudonym given on a command line or read from the catalogue.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("PN-")?;
        (hex.len() == 20
            && hex
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()))
        .then(|| Pseudonym(s.to_string()))
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error for a secret too short to key anything.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the pseudonymization secret must be at least 32 bytes (it has {0})")]
pub struct WeakSecret(pub usize);

impl Pseudonymizer {
    /// Keys the pseudonymizer. The secret must have at least 256 bits.
    pub fn new(secret: &[u8]) -> Result<Self, WeakSecret> {
        if secret.len() < 32 {
            return Err(WeakSecret(secret.len()));
        }
        Ok(Pseudonymizer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    fn mac(&self, label: &str, parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label.as_bytes());
        for p in parts {
            ctx.update(&[0]);
            ctx.update(p);
        }
        ctx.sign()
    }

    /// A 256-bit key for another purpose of the broker (the catalogue's split and count
    /// keys), derived as HMAC(secret, "hbs/derived-key/v1" 0 purpose): a PRF in counter
    /// mode with one block (NIST SP 800-108), so each purpose's key is independent of the
    /// others and of every pseudonym, and nobody without the secret can compute it.
    pub fn derived_key(&self, purpose: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(
            self.mac("hbs/derived-key/v1", &[purpose.as_bytes()])
                .as_ref(),
        );
        out
    }

    /// The pseudonym of a site's local patient ID.
    pub fn pseudonym(&self, site: &SiteId, local_patient_id: &str) -> Pseudonym {
        let t = self.mac(
            "hbs/pseudonym/v1",
            &[site.as_str().as_bytes(), local_patient_id.trim().as_bytes()],
        );
        Pseudonym(format!("PN-{}", hex::encode_upper(&t.as_ref()[..10])))
    }

    /// The replacement of a source UID: a `2.25.` UID, stable for the same input.
    pub fn uid(&self, source_uid: &str) -> String {
        let t = self.mac("hbs/uid/v1", &[source_uid.trim().as_bytes()]);
        let mut b = [0u8; 16];
        b.copy_from_slice(&t.as_ref()[..16]);
        format!("2.25.{}", u128::from_be_bytes(b))
    }

    /// The number of days (negative) every date of this patient moves by.
    pub fn date_shift_days(&self, p: &Pseudonym) -> i64 {
        let t = self.mac("hbs/date-shift/v1", &[p.as_str().as_bytes()]);
        let mut b = [0u8; 8];
        b.copy_from_slice(&t.as_ref()[..8]);
        -(365 + (u64::from_be_bytes(b) % 3288) as i64)
    }

    /// A keyed digest for other deterministic identifiers (object IDs, report keys).
    pub fn digest(&self, label: &str, parts: &[&[u8]]) -> [u8; 32] {
        let t = self.mac(label, parts);
        let mut b = [0u8; 32];
        b.copy_from_slice(t.as_ref());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Pseudonymizer {
        Pseudonymizer::new(&[7u8; 32]).unwrap()
    }

    #[test]
    fn same_patient_same_site_same_pseudonym_other_site_other() {
        let a = SiteId::new("SITE_A").unwrap();
        let b = SiteId::new("SITE_B").unwrap();
        assert_eq!(p().pseudonym(&a, "12345"), p().pseudonym(&a, "12345 "));
        assert_ne!(p().pseudonym(&a, "12345"), p().pseudonym(&b, "12345"));
        assert_ne!(p().pseudonym(&a, "12345"), p().pseudonym(&a, "12346"));
        let other = Pseudonymizer::new(&[8u8; 32]).unwrap();
        assert_ne!(p().pseudonym(&a, "12345"), other.pseudonym(&a, "12345"));
        let ps = p().pseudonym(&a, "12345");
        assert_eq!(Pseudonym::parse(ps.as_str()), Some(ps.clone()));
        assert!(!ps.as_str().contains("12345"));
    }

    #[test]
    fn uids_are_valid_2_25_and_stable() {
        let u = p().uid("1.2.3.4.5");
        assert!(u.starts_with("2.25."));
        assert!(u.len() <= 64);
        assert!(u[5..].chars().all(|c| c.is_ascii_digit()));
        assert!(!u[5..].starts_with('0') || u.len() == 6);
        assert_eq!(u, p().uid("1.2.3.4.5"));
        assert_ne!(u, p().uid("1.2.3.4.6"));
    }

    #[test]
    fn date_shift_is_per_patient_and_in_range() {
        let a = SiteId::new("S").unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let ps = p().pseudonym(&a, &i.to_string());
            let d = p().date_shift_days(&ps);
            assert!((-3652..=-365).contains(&d));
            assert_eq!(d, p().date_shift_days(&ps));
            seen.insert(d);
        }
        assert!(seen.len() > 150, "shifts should vary between patients");
    }

    #[test]
    fn weak_secrets_and_bad_sites_are_refused() {
        assert_eq!(Pseudonymizer::new(b"short").unwrap_err(), WeakSecret(5));
        assert!(SiteId::new("").is_err());
        assert!(SiteId::new("a/b").is_err());
        assert!(SiteId::new("SITE_A").is_ok());
    }
}
