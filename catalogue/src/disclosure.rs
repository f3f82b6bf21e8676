//! What a count passes before anyone outside the repository sees it.
//!
//! Every count shown to a researcher (a cohort's patients, studies or series, and each
//! cell of a breakdown by site, vendor or split) is protected by three rules, applied in
//! this order:
//!
//! 1. **Suppression.** A count under the threshold (default 10, ACRO/SACRO's threshold;
//!    OpenSAFELY redacts 7 or fewer) is shown as suppressed, zero included: "none" and
//!    "a few" look the same.
//! 2. **Consistent perturbation (cell key).** Each patient has a record key, a keyed hash
//!    of the pseudonym; a cell's key is the sum of its patients' record keys (mod 2^32);
//!    a small noise (default -2 to +2) is drawn from a keyed hash of the cell key and the
//!    count. This is the Australian Bureau of Statistics' cell-key method (TableBuilder;
//!    Fraser and Wooton, "A proposed method for confidentialising tabular output to
//!    protect against differencing", 2005). The same set of patients always gets the same
//!    noise, however the query is phrased, so asking again or rephrasing and averaging
//!    reveals nothing; two sets that differ by even one patient get unrelated noise.
//! 3. **Rounding** to the nearest 5 (OpenSAFELY's rule), after the noise.
//!
//! What this gives against differencing: two overlapping cohorts whose true counts differ
//! by one patient (or by any number under the threshold) are shown as values whose
//! difference is consistent with every small difference, and often with none at all
//! (both round to the same figure), so no answer or pair of answers tells whether a
//! given patient is in a cohort, or how many patients make up a small difference. What it
//! does not hide: that two different answers come from two different sets of patients.
//! A breakdown's cells are protected one by one and its total on its own, so cells need
//! not add up to the total (stated beside every breakdown), which is what keeps the
//! total from revealing a suppressed cell.

use ring::hmac;
use serde::{Deserialize, Serialize};

/// The rules, with ProstateNET's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    /// Counts under this are suppressed (default 10).
    pub threshold: u64,
    /// Shown counts are multiples of this (default 5).
    pub round_to: u64,
    /// The noise is drawn from -max_noise..=max_noise (default 2).
    pub max_noise: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            threshold: 10,
            round_to: 5,
            max_noise: 2,
        }
    }
}

impl Rules {
    /// Checks the rules make sense: a threshold of at least 1, rounding to at least 1,
    /// and noise smaller than the threshold.
    pub fn check(&self) -> Result<(), String> {
        if self.threshold == 0 {
            return Err("threshold must be 1 or more".into());
        }
        if self.round_to == 0 {
            return Err("round_to must be 1 or more".into());
        }
        if self.max_noise >= self.threshold {
            return Err("max_noise must be smaller than the threshold".into());
        }
        Ok(())
    }
}

/// A count as shown; in JSON a number, or the string `"suppressed"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Under the threshold (zero included).
    Suppressed,
    /// The protected figure.
    Count(u64),
}

impl Serialize for Shown {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shown::Count(n) => s.serialize_u64(*n),
            Shown::Suppressed => s.serialize_str("suppressed"),
        }
    }
}

impl<'de> Deserialize<'de> for Shown {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Count(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Count(n) => Ok(Shown::Count(n)),
            Either::Text(t) if t == "suppressed" => Ok(Shown::Suppressed),
            Either::Text(_) => Err(serde::de::Error::custom(
                "a shown count is a number or \"suppressed\"",
            )),
        }
    }
}

/// The secret that keys record keys and noise (kept with the catalogue's keys).
pub struct CellKeys(hmac::Key);

/// A cell being counted: how many patients, and the sum of their record keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    /// True count.
    pub count: u64,
    /// Sum of the record keys, mod 2^32.
    pub key: u32,
}

impl Cell {
    /// Adds a patient with record key `record`.
    pub fn add(&mut self, record: u32) {
        self.add_many(record, 1);
    }

    /// Adds `n` items (studies, series) of the patient with record key `record`.
    pub fn add_many(&mut self, record: u32, n: u64) {
        self.count += n;
        self.key = self.key.wrapping_add(record.wrapping_mul(n as u32));
    }
}

impl CellKeys {
    /// Keys from 32 secret bytes.
    pub fn new(secret: &[u8; 32]) -> Self {
        CellKeys(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// A patient's record key.
    pub fn record_key(&self, pseudonym: &str) -> u32 {
        let h = self.hash(&[b"record", pseudonym.as_bytes()]);
        u32::from_be_bytes([h[0], h[1], h[2], h[3]])
    }

    /// The noise of a cell, in -max_noise..=max_noise.
    fn noise(&self, cell: Cell, max_noise: u64) -> i64 {
        let h = self.hash(&[b"noise", &cell.key.to_be_bytes(), &cell.count.to_be_bytes()]);
        let r = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        (r % (2 * max_noise + 1)) as i64 - max_noise as i64
    }

    /// The cell as shown under `rules`.
    pub fn protect(&self, cell: Cell, rules: &Rules) -> Shown {
        if cell.count < rules.threshold {
            return Shown::Suppressed;
        }
        let noisy = cell.count as i64 + self.noise(cell, rules.max_noise);
        let step = rules.round_to as i64;
        // Nearest multiple of `step`, halves up.
        let rounded = ((noisy + step / 2).div_euclid(step)) * step;
        if rounded < rules.threshold as i64 {
            Shown::Suppressed
        } else {
            Shown::Count(rounded as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(keys: &CellKeys, patients: impl IntoIterator<Item = String>) -> Cell {
        let mut c = Cell::default();
        for p in patients {
            c.add(keys.record_key(&p));
        }
        c
    }

    fn patients(range: std::ops::Range<usize>) -> impl Iterator<Item = String> {
        range.map(|i| format!("PN-{i:08}"))
    }

    #[test]
    fn small_cells_are_suppressed_and_the_rest_rounded_near_the_truth() {
        let k = CellKeys::new(&[1; 32]);
        let r = Rules::default();
        for n in 0..10 {
            assert_eq!(
                k.protect(cell(&k, patients(0..n)), &r),
                Shown::Suppressed,
                "{n}"
            );
        }
        for n in 10..500 {
            match k.protect(cell(&k, patients(0..n)), &r) {
                Shown::Count(v) => {
                    assert_eq!(v % 5, 0);
                    assert!(v >= 10);
                    // Noise of 2 and rounding of 2.5 at most.
                    assert!((v as i64 - n as i64).abs() <= 4, "{n} shown as {v}");
                }
                Shown::Suppressed => panic!("{n} suppressed"),
            }
        }
    }

    #[test]
    fn the_same_patients_always_get_the_same_answer() {
        let k = CellKeys::new(&[2; 32]);
        let r = Rules::default();
        let a = cell(&k, patients(0..37));
        // The same set counted in another order (another query phrasing).
        let b = cell(&k, patients(0..37).collect::<Vec<_>>().into_iter().rev());
        assert_eq!(a, b);
        assert_eq!(k.protect(a, &r), k.protect(b, &r));
        // A fresh key object over the same secret: same answers (restarts, replicas).
        let k2 = CellKeys::new(&[2; 32]);
        assert_eq!(k.protect(a, &r), k2.protect(cell(&k2, patients(0..37)), &r));
    }

    #[test]
    fn differencing_two_cohorts_does_not_reveal_one_patient() {
        // Cohorts A and A + {x}, for many sizes and many patients x: the pair of answers
        // must not tell whether x is in. Shown: (1) often the two answers are equal, so x
        // is invisible; (2) each observed difference also arises between two cohorts
        // that differ by some other small number of patients (2..9), so it does not pin
        // down one patient; (3) the difference is sometimes negative.
        let k = CellKeys::new(&[3; 32]);
        let r = Rules::default();
        let mut equal = 0;
        let mut negative = 0;
        let mut total = 0;
        let mut seen_for_one = std::collections::BTreeSet::new();
        let mut seen_for_more = std::collections::BTreeSet::new();
        for n in 10..300usize {
            let base = cell(&k, patients(0..n));
            let shown = |c: Cell| match k.protect(c, &r) {
                Shown::Count(v) => v as i64,
                Shown::Suppressed => panic!("suppressed at {n}"),
            };
            let a = shown(base);
            for x in 0..20usize {
                let mut plus_one = base;
                plus_one.add(k.record_key(&format!("X-{n}-{x}")));
                let d = shown(plus_one) - a;
                total += 1;
                equal += usize::from(d == 0);
                negative += usize::from(d < 0);
                seen_for_one.insert(d);
                let mut plus_more = base;
                for extra in 0..(2 + x % 8) {
                    plus_more.add(k.record_key(&format!("Y-{n}-{x}-{extra}")));
                }
                seen_for_more.insert(shown(plus_more) - a);
            }
        }
        assert!(equal * 10 > total * 4, "equal answers {equal} of {total}");
        assert!(
            negative > 0,
            "a one-patient difference never showed as negative"
        );
        assert!(
            seen_for_one.is_subset(&seen_for_more),
            "one patient's differences {seen_for_one:?} vs several patients' {seen_for_more:?}"
        );
    }

    #[test]
    fn shown_counts_are_numbers_or_suppressed_in_json() {
        let v = serde_json::to_string(&[Shown::Count(15), Shown::Suppressed]).unwrap();
        assert_eq!(v, r#"[15,"suppressed"]"#);
        let back: Vec<Shown> = serde_json::from_str(&v).unwrap();
        assert_eq!(back, vec![Shown::Count(15), Shown::Suppressed]);
        assert!(serde_json::from_str::<Shown>(r#""hidden""#).is_err());
    }

    #[test]
    fn rules_are_checked() {
        assert!(Rules::default().check().is_ok());
        for bad in [
            Rules {
                threshold: 0,
                ..Default::default()
            },
            Rules {
                round_to: 0,
                ..Default::default()
            },
            Rules {
                max_noise: 10,
                ..Default::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
