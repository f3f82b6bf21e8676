//! Cohort counts over patient summaries, protected before they leave.
//!
//! The catalogue keeps one small summary per patient (site, country, origin, split and,
//! per study, its vendor, whether it is the baseline, the sequences present, whether it
//! is annotated, and its series and instance counts). Counting walks those summaries, not
//! the instance rows, so its cost depends on the number of patients (20,000), not of
//! instances (10 million).
//!
//! What matches a [`Filter`]:
//! - a **study** matches when its vendor, kind (baseline or follow-up) and annotation are
//!   allowed and it holds every sequence asked for (sequences are "present", so asking
//!   for T2W and DWI means studies with both);
//! - a **patient** matches when its site, country, origin and split are allowed and it has
//!   at least one matching study;
//! - the counts are: matching patients, their matching studies, and the series of those
//!   studies.
//!
//! Every figure, and every cell of a breakdown, goes through [`crate::disclosure`]; study
//! and series cells are keyed by their patients, so a cell of many studies from fewer
//! patients than the threshold is suppressed too.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::classify::Sequence;
use crate::disclosure::{Cell, CellKeys, Rules, Shown};
use crate::split::{Origin, Split};

/// A scanner vendor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Siemens Healthineers.
    Siemens,
    /// GE HealthCare.
    Ge,
    /// Philips.
    Philips,
    /// Any other manufacturer.
    Other,
}

impl Vendor {
    /// The vendor of a Manufacturer (0008,0070) value.
    pub fn from_manufacturer(m: &str) -> Self {
        let m = m.to_ascii_lowercase();
        if m.contains("siemens") {
            Vendor::Siemens
        } else if m.starts_with("ge ")
            || m.contains("ge medical")
            || m.contains("gehc")
            || m == "ge"
        {
            Vendor::Ge
        } else if m.contains("philips") {
            Vendor::Philips
        } else {
            Vendor::Other
        }
    }

    /// The name used in cohort definitions.
    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Siemens => "siemens",
            Vendor::Ge => "ge",
            Vendor::Philips => "philips",
            Vendor::Other => "other",
        }
    }
}

/// One study of a patient, as the catalogue summarises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudySummary {
    /// Its (pseudonymized) Study Instance UID.
    pub uid: String,
    /// The scanner's vendor.
    pub vendor: Vendor,
    /// Whether it is the patient's first study (by shifted date); else a follow-up.
    pub baseline: bool,
    /// The sequence types present.
    pub sequences: BTreeSet<Sequence>,
    /// Series in the study.
    pub series: u64,
    /// Magnetic field strength of its MR series, tesla (the highest, if they differ).
    pub field_strength_t: Option<f64>,
    /// The scanner model of its first MR series.
    pub model: String,
    /// What its segmentations segment (`gland`, `lesion`).
    pub segments: BTreeSet<String>,
    /// Instances (images) in the study.
    pub instances: u64,
}

impl StudySummary {
    /// Whether a segmentation is present.
    pub fn annotated(&self) -> bool {
        self.sequences.contains(&Sequence::SEG)
    }
}

/// One patient, as the catalogue summarises it (pseudonymized).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatientSummary {
    /// The pseudonym (never shown).
    pub pseudonym: String,
    /// The patient's record key for the disclosure control
    /// ([`CellKeys::record_key`] of the pseudonym), computed once when summarised.
    pub record: u32,
    /// Site code.
    pub site: String,
    /// ISO 3166 country code of the site.
    pub country: String,
    /// Retrospective or prospective.
    pub origin: Origin,
    /// The split (prospective patients only).
    pub split: Option<Split>,
    /// Whether the site sent a clinical record for the patient.
    pub clinical: bool,
    /// The patient's studies.
    pub studies: Vec<StudySummary>,
}

/// Baseline, follow-up or all studies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Studies {
    /// First studies only.
    Baseline,
    /// Later studies only.
    FollowUp,
    /// Any.
    #[default]
    All,
}

/// Which patients and studies to count. Every field optional: `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Sites.
    pub sites: Option<BTreeSet<String>>,
    /// Countries.
    pub countries: Option<BTreeSet<String>>,
    /// Vendors.
    pub vendors: Option<BTreeSet<Vendor>>,
    /// Sequences that must all be present in a study.
    pub sequences: Option<BTreeSet<Sequence>>,
    /// Baseline, follow-up or all.
    pub studies: Studies,
    /// Origin.
    pub origin: Option<Origin>,
    /// Split.
    pub split: Option<Split>,
    /// Only annotated studies (`Some(true)`), only unannotated (`Some(false)`).
    pub annotated: Option<bool>,
}

fn allowed<T: Ord>(set: &Option<BTreeSet<T>>, v: &T) -> bool {
    set.as_ref().is_none_or(|s| s.contains(v))
}

impl Filter {
    /// Whether a study of a matching patient is counted.
    pub fn study(&self, s: &StudySummary) -> bool {
        allowed(&self.vendors, &s.vendor)
            && match self.studies {
                Studies::Baseline => s.baseline,
                Studies::FollowUp => !s.baseline,
                Studies::All => true,
            }
            && self.annotated.is_none_or(|a| a == s.annotated())
            && self
                .sequences
                .as_ref()
                .is_none_or(|want| want.is_subset(&s.sequences))
    }

    /// Whether the patient-level conditions hold (its studies are checked apart).
    pub fn patient(&self, p: &PatientSummary) -> bool {
        allowed(&self.sites, &p.site)
            && allowed(&self.countries, &p.country)
            && self.origin.is_none_or(|o| o == p.origin)
            && self.split.is_none_or(|s| Some(s) == p.split)
    }
}

/// A dimension a count can be broken down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// The patient's site.
    Site,
    /// The study's vendor.
    Vendor,
    /// The patient's split (`none` for retrospective patients).
    Split,
    /// The patient's origin.
    Origin,
}

impl By {
    /// Parses `site`, `vendor`, `split` or `origin`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "site" => Ok(By::Site),
            "vendor" => Ok(By::Vendor),
            "split" => Ok(By::Split),
            "origin" => Ok(By::Origin),
            _ => Err("a breakdown is by site, vendor, split or origin".into()),
        }
    }
}

/// Patients, studies and series, as shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Patients.
    pub patients: Shown,
    /// Studies.
    pub studies: Shown,
    /// Series.
    pub series: Shown,
}

/// One cell of a breakdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The cell's values, one per dimension asked (for example `{"site": "SITE_A"}`).
    pub cell: BTreeMap<By, String>,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// The answer to a count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The whole cohort.
    pub total: Figures,
    /// The breakdown, when one was asked for, by cell in a fixed order.
    pub by: Vec<Row>,
    /// The rules applied.
    pub rules: Rules,
}

/// True counts of one cell, before protection: cells of patients, and studies and series
/// weighted by patient (so their cell keys are the patients').
#[derive(Default, Clone, Copy)]
struct Tally {
    patients: Cell,
    studies: Cell,
    series: Cell,
}

impl Tally {
    fn show(&self, keys: &CellKeys, rules: &Rules) -> Figures {
        // A study or series cell from fewer patients than the threshold is suppressed
        // whatever its own size.
        let few = self.patients.count < rules.threshold;
        let gate = |c: Cell| {
            if few {
                Shown::Suppressed
            } else {
                keys.protect(c, rules)
            }
        };
        Figures {
            patients: keys.protect(self.patients, rules),
            studies: gate(self.studies),
            series: gate(self.series),
        }
    }
}

fn value(p: &PatientSummary, s: &StudySummary, by: By) -> String {
    match by {
        By::Site => p.site.clone(),
        By::Vendor => s.vendor.as_str().into(),
        By::Split => match p.split {
            Some(Split::FineTuning) => "fine-tuning".into(),
            Some(Split::ExternalValidation) => "external-validation".into(),
            None => "none".into(),
        },
        By::Origin => match p.origin {
            Origin::Retrospective => "retrospective".into(),
            Origin::Prospective => "prospective".into(),
        },
    }
}

/// Counts `patients` matching `filter`, broken down by `by`, protected under `rules`.
pub fn count(
    patients: &[PatientSummary],
    filter: &Filter,
    by: &[By],
    keys: &CellKeys,
    rules: &Rules,
) -> Answer {
    let mut total = Tally::default();
    let mut cells: BTreeMap<Vec<String>, Tally> = BTreeMap::new();
    for p in patients.iter().filter(|p| filter.patient(p)) {
        let studies: Vec<&StudySummary> = p.studies.iter().filter(|s| filter.study(s)).collect();
        if studies.is_empty() {
            continue;
        }
        let rk = p.record;
        total.patients.add(rk);
        // The patient's matching studies, grouped by cell.
        let mut mine: BTreeMap<Vec<String>, (u64, u64)> = BTreeMap::new();
        for s in &studies {
            total.studies.add(rk);
            total.series.add_many(rk, s.series);
            if !by.is_empty() {
                let key: Vec<String> = by.iter().map(|b| value(p, s, *b)).collect();
                let e = mine.entry(key).or_default();
                e.0 += 1;
                e.1 += s.series;
            }
        }
        for (key, (n_studies, n_series)) in mine {
            let t = cells.entry(key).or_default();
            t.patients.add(rk);
            t.studies.add_many(rk, n_studies);
            t.series.add_many(rk, n_series);
        }
    }
    Answer {
        total: total.show(keys, rules),
        by: cells
            .into_iter()
            .map(|(values, t)| Row {
                cell: by.iter().copied().zip(values).collect(),
                figures: t.show(keys, rules),
            })
            .collect(),
        rules: *rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(vendor: Vendor, baseline: bool, seqs: &[Sequence], series: u64) -> StudySummary {
        StudySummary {
            uid: String::new(),
            vendor,
            baseline,
            sequences: seqs.iter().copied().collect(),
            series,
            instances: series * 20,
            field_strength_t: Some(3.0),
            model: "Skyra".into(),
            segments: BTreeSet::new(),
        }
    }

    /// 100 patients with a known answer for every count: patient i is at SITE_A (GR) when
    /// i < 60, else SITE_B (NL); Siemens when i % 2 == 0, else GE; prospective when
    /// i % 4 < 2 (fine-tuning unless i % 8 == 1 ... see `split_of`); every patient has a
    /// baseline with T2W, DWI, ADC (4 series); i % 5 == 0 also has DCE (5 series) and
    /// i % 10 == 0 a follow-up (T2W only, 1 series); i % 25 == 0 has a SEG in its baseline.
    fn corpus() -> Vec<PatientSummary> {
        (0..100)
            .map(|i| {
                let vendor = if i % 2 == 0 {
                    Vendor::Siemens
                } else {
                    Vendor::Ge
                };
                let mut seqs = vec![Sequence::T2W, Sequence::DWI, Sequence::ADC];
                if i % 5 == 0 {
                    seqs.push(Sequence::DCE);
                }
                if i % 25 == 0 {
                    seqs.push(Sequence::SEG);
                }
                let n = seqs.len() as u64;
                let mut studies = vec![study(vendor, true, &seqs, n)];
                if i % 10 == 0 {
                    studies.push(study(vendor, false, &[Sequence::T2W], 1));
                }
                let origin = if i % 4 < 2 {
                    Origin::Prospective
                } else {
                    Origin::Retrospective
                };
                PatientSummary {
                    record: CellKeys::new(&[9; 32]).record_key(&format!("PN-{i:04}")),
                    pseudonym: format!("PN-{i:04}"),
                    site: if i < 60 { "SITE_A" } else { "SITE_B" }.into(),
                    country: if i < 60 { "GR" } else { "NL" }.into(),
                    origin,
                    clinical: i % 2 == 0,
                    split: (origin == Origin::Prospective).then_some(if i % 8 == 1 {
                        Split::ExternalValidation
                    } else {
                        Split::FineTuning
                    }),
                    studies,
                }
            })
            .collect()
    }

    const EXACT: Rules = Rules {
        threshold: 1,
        round_to: 1,
        max_noise: 0,
    };

    fn n(s: Shown) -> u64 {
        match s {
            Shown::Count(v) => v,
            Shown::Suppressed => 0,
        }
    }

    fn exact(f: &Filter, by: &[By]) -> Answer {
        count(&corpus(), f, by, &CellKeys::new(&[9; 32]), &EXACT)
    }

    #[test]
    fn counts_match_the_known_answers() {
        let all = exact(&Filter::default(), &[]);
        // 100 patients, 110 studies; series: 100 baselines of 3 (+1 DCE for 20, +1 SEG
        // for 4) plus 10 follow-ups of 1.
        assert_eq!(n(all.total.patients), 100);
        assert_eq!(n(all.total.studies), 110);
        assert_eq!(n(all.total.series), 300 + 20 + 4 + 10);
        let f = Filter {
            sites: Some(["SITE_B".to_string()].into()),
            ..Default::default()
        };
        assert_eq!(n(exact(&f, &[]).total.patients), 40);
        let f = Filter {
            sequences: Some([Sequence::T2W, Sequence::DCE].into()),
            ..Default::default()
        };
        let a = exact(&f, &[]);
        assert_eq!((n(a.total.patients), n(a.total.studies)), (20, 20));
        let f = Filter {
            studies: Studies::FollowUp,
            vendors: Some([Vendor::Siemens].into()),
            ..Default::default()
        };
        // Follow-ups: i % 10 == 0, all even, so all Siemens.
        let a = exact(&f, &[]);
        assert_eq!((n(a.total.patients), n(a.total.series)), (10, 10));
        let f = Filter {
            annotated: Some(true),
            ..Default::default()
        };
        assert_eq!(n(exact(&f, &[]).total.patients), 4);
        let f = Filter {
            origin: Some(Origin::Prospective),
            split: Some(Split::ExternalValidation),
            ..Default::default()
        };
        // Prospective: i % 4 < 2; external validation: i % 8 == 1 (all of which are
        // prospective): 13 of 0..100.
        assert_eq!(n(exact(&f, &[]).total.patients), 13);
        // A breakdown by site and vendor.
        let a = exact(&Filter::default(), &[By::Site, By::Vendor]);
        let cells: Vec<(String, String, u64)> =
            a.by.iter()
                .map(|r| {
                    (
                        r.cell[&By::Site].clone(),
                        r.cell[&By::Vendor].clone(),
                        n(r.figures.patients),
                    )
                })
                .collect();
        assert_eq!(
            cells,
            vec![
                ("SITE_A".into(), "ge".into(), 30),
                ("SITE_A".into(), "siemens".into(), 30),
                ("SITE_B".into(), "ge".into(), 20),
                ("SITE_B".into(), "siemens".into(), 20),
            ]
        );
        // By split: retrospective patients are "none".
        let a = exact(&Filter::default(), &[By::Split]);
        let split: BTreeMap<String, u64> =
            a.by.iter()
                .map(|r| (r.cell[&By::Split].clone(), n(r.figures.patients)))
                .collect();
        assert_eq!(split["none"], 50);
        assert_eq!(split["external-validation"], 13);
        assert_eq!(split["fine-tuning"], 37);
    }

    #[test]
    fn protected_counts_never_show_a_small_cell() {
        let keys = CellKeys::new(&[9; 32]);
        let rules = Rules::default();
        // Every filter over the corpus's vocabulary, with every breakdown: a cell whose
        // true patient count is under 10 is always suppressed, with its studies and
        // series; the others are within 4 of the truth.
        let corpus = corpus();
        let mut filters = vec![Filter::default()];
        for site in ["SITE_A", "SITE_B"] {
            filters.push(Filter {
                sites: Some([site.to_string()].into()),
                ..Default::default()
            });
        }
        for seq in [Sequence::DCE, Sequence::SEG] {
            filters.push(Filter {
                sequences: Some([seq].into()),
                ..Default::default()
            });
        }
        filters.push(Filter {
            studies: Studies::FollowUp,
            ..Default::default()
        });
        filters.push(Filter {
            annotated: Some(true),
            ..Default::default()
        });
        filters.push(Filter {
            split: Some(Split::ExternalValidation),
            ..Default::default()
        });
        let bys: [&[By]; 4] = [&[], &[By::Site], &[By::Vendor, By::Split], &[By::Origin]];
        for f in &filters {
            for by in bys {
                let truth = count(&corpus, f, by, &keys, &EXACT);
                let shown = count(&corpus, f, by, &keys, &rules);
                let pairs = std::iter::once((truth.total, shown.total)).chain(
                    truth
                        .by
                        .iter()
                        .zip(&shown.by)
                        .map(|(t, s)| (t.figures, s.figures)),
                );
                for (t, s) in pairs {
                    let tp = n(t.patients);
                    if tp < 10 {
                        assert_eq!(
                            s,
                            Figures {
                                patients: Shown::Suppressed,
                                studies: Shown::Suppressed,
                                series: Shown::Suppressed
                            },
                            "{f:?} {by:?}"
                        );
                    } else {
                        assert!(
                            n(s.patients).abs_diff(tp) <= 4,
                            "{f:?} {by:?}: {tp} shown {:?}",
                            s.patients
                        );
                    }
                }
                // Asking again gives the same answer.
                assert_eq!(shown, count(&corpus, f, by, &keys, &rules));
            }
        }
    }
}
