//! Data origin and the patient-level split of prospective data.
//!
//! ProstateNET's protocol (DOMAIN.md): data collected before a cut-off date is
//! retrospective (about 60%), after it prospective (about 40%); prospective data is split
//! by patient, 80% for developing vendor-specific models (fine-tuning) and 20% for the
//! external validation of all models.
//!
//! - A patient's origin is decided by the day hbs first received any of the patient's
//!   data (the contribution day: hbs's own clock, not a date from the images), against
//!   the project's cut-off. Later contributions (follow-ups) do not move a patient.
//! - A prospective patient's split is a keyed hash of the pseudonym (HMAC-SHA-256 under
//!   the catalogue's secret), read as a number in 0..10,000 and compared with 8,000. It
//!   depends on that patient alone, so it never changes when other patients arrive, a
//!   patient is in exactly one split, and without the key nobody can steer a patient
//!   into a split by choosing identifiers.

use ring::hmac;
use serde::{Deserialize, Serialize};

/// Retrospective or prospective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// First received before the cut-off.
    Retrospective,
    /// First received on or after the cut-off.
    Prospective,
}

/// Which part of the prospective data a patient belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Developing vendor- or site-specific models (80%).
    FineTuning,
    /// External validation of all models (20%).
    ExternalValidation,
}

/// Share of prospective patients in fine-tuning, in ten-thousandths.
pub const FINE_TUNING_PER_10K: u32 = 8_000;

/// A day as days since 1970-01-01 (UTC).
pub type Day = i64;

/// The origin of a patient first received on `first_day`.
pub fn origin(first_day: Day, cutoff: Day) -> Origin {
    if first_day < cutoff {
        Origin::Retrospective
    } else {
        Origin::Prospective
    }
}

/// The secret that keys the split (kept with the catalogue's keys).
pub struct SplitKey(hmac::Key);

impl SplitKey {
    /// A key from 32 secret bytes.
    pub fn new(secret: &[u8; 32]) -> Self {
        SplitKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The split of a prospective patient (`None` for a retrospective one).
    pub fn split(&self, pseudonym: &str, origin: Origin) -> Option<Split> {
        if origin == Origin::Retrospective {
            return None;
        }
        let tag = hmac::sign(&self.0, format!("split\0{pseudonym}").as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag.as_ref()[..8]);
        let bucket = (u64::from_be_bytes(b) % 10_000) as u32;
        Some(if bucket < FINE_TUNING_PER_10K {
            Split::FineTuning
        } else {
            Split::ExternalValidation
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_is_by_the_first_contribution_day() {
        assert_eq!(origin(100, 101), Origin::Retrospective);
        assert_eq!(origin(101, 101), Origin::Prospective);
        assert_eq!(origin(102, 101), Origin::Prospective);
    }

    #[test]
    fn splits_are_per_patient_stable_and_near_80_20() {
        let k = SplitKey::new(&[7u8; 32]);
        let names: Vec<String> = (0..20_000).map(|i| format!("PN-{i:08}")).collect();
        let first: Vec<_> = names
            .iter()
            .map(|p| k.split(p, Origin::Prospective).unwrap())
            .collect();
        // Stable: asking again, in another order, with more patients around, gives the
        // same split for each.
        for (p, s) in names.iter().zip(&first).rev() {
            assert_eq!(k.split(p, Origin::Prospective), Some(*s));
        }
        let fine = first.iter().filter(|s| **s == Split::FineTuning).count();
        // 80% of 20,000 within about four standard deviations (sd = 57).
        assert!((15_770..=16_230).contains(&fine), "{fine}");
        // Retrospective patients are in no split.
        assert_eq!(k.split("PN-1", Origin::Retrospective), None);
        // Another key gives another assignment.
        let other = SplitKey::new(&[8u8; 32]);
        let moved = names
            .iter()
            .zip(&first)
            .filter(|(p, s)| other.split(p, Origin::Prospective) != Some(**s))
            .count();
        assert!(moved > 4_000, "{moved}");
    }
}
