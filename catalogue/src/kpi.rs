//! The repository's key performance indicators, each beside its target (the ProstateNET
//! plan: more than 17,000 patients of whom 6,000 prospective, at least 1.5 million
//! images, 3 vendors, 13 sites in 9 countries, segmentations for about 5% of cases, 60%
//! retrospective and 40% prospective, prospective data split 80/20, 50 models over 8
//! clinical scenarios).
//!
//! Every figure that counts patients (or images, studies of patients) passes the same
//! disclosure rules as a cohort count ([`crate::disclosure`]); the counts of sites,
//! countries and vendors present are not patient counts and are shown as they are.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::count::{PatientSummary, Vendor};
use crate::disclosure::{Cell, CellKeys, Rules, Shown};
use crate::split::{Origin, Split};

/// One indicator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Indicator {
    /// A stable key (`patients`, `images`, ...).
    pub key: &'static str,
    /// For people.
    pub label: &'static str,
    /// The figure: a number, or suppressed.
    pub value: Value,
    /// The target as a number (for charts), if it has one.
    pub target: Option<f64>,
    /// The target in words.
    pub target_text: &'static str,
}

/// A figure: a protected count, a plain number, or a share in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A patient-derived count after disclosure control.
    Count(Shown),
    /// A number that counts no patients (sites, vendors).
    Plain(u64),
    /// A percentage from protected counts, or `None` when one of them is suppressed.
    Percent(Option<f64>),
}

/// A share: `part` of `whole`, from shown figures.
fn percent(part: Shown, whole: Shown) -> Value {
    Value::Percent(match (part, whole) {
        (Shown::Count(p), Shown::Count(w)) if w > 0 => {
            Some((1000.0 * p as f64 / w as f64).round() / 10.0)
        }
        _ => None,
    })
}

/// The indicators and the breakdowns behind the charts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kpis {
    /// The indicators, in display order.
    pub indicators: Vec<Indicator>,
    /// Patients per vendor (a patient scanned on two vendors counts under both).
    pub vendors: BTreeMap<&'static str, Shown>,
    /// Patients per site.
    pub sites: BTreeMap<String, Shown>,
    /// The rules applied.
    pub rules: Rules,
}

/// Models registered per clinical scenario (the model registry's count, given by the
/// caller; empty until models are registered).
pub type Models = BTreeMap<String, u64>;

/// Computes the indicators over the patient summaries.
pub fn kpis(patients: &[PatientSummary], models: &Models, keys: &CellKeys, rules: &Rules) -> Kpis {
    let mut all = Cell::default();
    let mut images = Cell::default();
    let mut studies = Cell::default();
    let mut prospective = Cell::default();
    let mut retrospective = Cell::default();
    let mut annotated = Cell::default();
    let mut clinical = Cell::default();
    let mut fine = Cell::default();
    let mut external = Cell::default();
    let mut vendors: BTreeMap<&'static str, Cell> = BTreeMap::new();
    let mut sites: BTreeMap<String, Cell> = BTreeMap::new();
    let mut countries = BTreeSet::new();
    for p in patients {
        let rk = p.record;
        all.add(rk);
        images.add_many(rk, p.studies.iter().map(|s| s.instances).sum());
        studies.add_many(rk, p.studies.len() as u64);
        match p.origin {
            Origin::Prospective => prospective.add(rk),
            Origin::Retrospective => retrospective.add(rk),
        }
        match p.split {
            Some(Split::FineTuning) => fine.add(rk),
            Some(Split::ExternalValidation) => external.add(rk),
            None => {}
        }
        if p.clinical {
            clinical.add(rk);
        }
        if p.studies.iter().any(|s| s.annotated()) {
            annotated.add(rk);
        }
        let vs: BTreeSet<Vendor> = p.studies.iter().map(|s| s.vendor).collect();
        for v in vs {
            vendors.entry(v.as_str()).or_default().add(rk);
        }
        sites.entry(p.site.clone()).or_default().add(rk);
        if p.country != "unknown" {
            countries.insert(p.country.clone());
        }
    }
    let show = |c: Cell| keys.protect(c, rules);
    let few = all.count < rules.threshold;
    let gated = |c: Cell| if few { Shown::Suppressed } else { show(c) };
    let (n, pro, retro, ann) = (
        show(all),
        show(prospective),
        show(retrospective),
        show(annotated),
    );
    let (ft, ev) = (show(fine), show(external));
    let vendor_count = vendors.keys().filter(|v| **v != "other").count() as u64;
    let models_total: u64 = models.values().sum();
    let ind = |key, label, value, target: Option<f64>, target_text| Indicator {
        key,
        label,
        value,
        target,
        target_text,
    };
    let indicators = vec![
        ind(
            "patients",
            "Patients",
            Value::Count(n),
            Some(17_000.0),
            "more than 17,000",
        ),
        ind(
            "prospective",
            "Prospective patients",
            Value::Count(pro),
            Some(6_000.0),
            "about 6,000",
        ),
        ind(
            "images",
            "Images",
            Value::Count(gated(images)),
            Some(1_500_000.0),
            "at least 1.5 million",
        ),
        ind(
            "studies",
            "Studies",
            Value::Count(gated(studies)),
            None,
            "baseline and follow-ups",
        ),
        ind(
            "vendors",
            "Vendors",
            Value::Plain(vendor_count),
            Some(3.0),
            "Siemens, GE and Philips",
        ),
        ind(
            "sites",
            "Sites",
            Value::Plain(sites.len() as u64),
            Some(13.0),
            "13 clinical sites",
        ),
        ind(
            "countries",
            "Countries",
            Value::Plain(countries.len() as u64),
            Some(9.0),
            "9 countries",
        ),
        ind(
            "annotated",
            "Annotated cases, %",
            percent(ann, n),
            Some(5.0),
            "about 5%",
        ),
        ind(
            "clinical",
            "Patients with a clinical record, %",
            percent(show(clinical), n),
            Some(100.0),
            "every patient",
        ),
        ind(
            "retrospective_share",
            "Retrospective, %",
            percent(retro, n),
            Some(60.0),
            "60%",
        ),
        ind(
            "prospective_share",
            "Prospective, %",
            percent(pro, n),
            Some(40.0),
            "40%",
        ),
        ind(
            "fine_tuning_share",
            "Prospective in fine-tuning, %",
            percent(ft, pro),
            Some(80.0),
            "80% (external validation 20%)",
        ),
        ind(
            "external_validation",
            "External-validation patients",
            Value::Count(ev),
            None,
            "20% of prospective",
        ),
        ind(
            "models",
            "Models registered",
            Value::Plain(models_total),
            Some(50.0),
            "50 models over 8 clinical scenarios",
        ),
        ind(
            "scenarios",
            "Clinical scenarios with a model",
            Value::Plain(models.values().filter(|n| **n > 0).count() as u64),
            Some(8.0),
            "8 scenarios",
        ),
    ];
    Kpis {
        indicators,
        vendors: vendors.into_iter().map(|(k, c)| (k, show(c))).collect(),
        sites: sites.into_iter().map(|(k, c)| (k, show(c))).collect(),
        rules: *rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Sequence;
    use crate::count::StudySummary;

    fn patient(i: usize, keys: &CellKeys) -> PatientSummary {
        let pseudonym = format!("PN-{i:05}");
        let mut seqs: BTreeSet<Sequence> = [Sequence::T2W, Sequence::DWI].into();
        if i.is_multiple_of(20) {
            seqs.insert(Sequence::SEG);
        }
        let prospective = i % 5 < 2;
        PatientSummary {
            record: keys.record_key(&pseudonym),
            pseudonym,
            site: format!("SITE_{}", i % 4),
            country: if i % 4 == 3 {
                "unknown".into()
            } else {
                ["GR", "NL", "ES"][i % 4].into()
            },
            origin: if prospective {
                Origin::Prospective
            } else {
                Origin::Retrospective
            },
            split: prospective.then_some(if i.is_multiple_of(10) {
                Split::ExternalValidation
            } else {
                Split::FineTuning
            }),
            clinical: true,
            studies: vec![StudySummary {
                field_strength_t: Some(1.5),
                model: "Achieva".into(),
                segments: BTreeSet::new(),
                uid: format!("2.25.{i}"),
                vendor: [Vendor::Siemens, Vendor::Ge, Vendor::Philips][i % 3],
                baseline: true,
                sequences: seqs,
                series: 2,
                instances: 100,
            }],
        }
    }

    #[test]
    fn indicators_are_right_protected_and_beside_their_targets() {
        let keys = CellKeys::new(&[3; 32]);
        let exact = Rules {
            threshold: 1,
            round_to: 1,
            max_noise: 0,
        };
        let ps: Vec<_> = (0..1000).map(|i| patient(i, &keys)).collect();
        let models: Models = [
            ("csPCa detection".to_string(), 2),
            ("segmentation".to_string(), 0),
        ]
        .into();
        let k = kpis(&ps, &models, &keys, &exact);
        let get = |key: &str| k.indicators.iter().find(|i| i.key == key).unwrap().value;
        assert_eq!(get("patients"), Value::Count(Shown::Count(1000)));
        assert_eq!(get("prospective"), Value::Count(Shown::Count(400)));
        assert_eq!(get("images"), Value::Count(Shown::Count(100_000)));
        assert_eq!(get("vendors"), Value::Plain(3));
        assert_eq!(get("sites"), Value::Plain(4));
        assert_eq!(get("countries"), Value::Plain(3));
        assert_eq!(get("annotated"), Value::Percent(Some(5.0)));
        assert_eq!(get("clinical"), Value::Percent(Some(100.0)));
        assert_eq!(get("retrospective_share"), Value::Percent(Some(60.0)));
        // Prospective: i % 5 < 2; external validation among them: i % 10 == 0 (100 of 400).
        assert_eq!(get("fine_tuning_share"), Value::Percent(Some(75.0)));
        assert_eq!(get("models"), Value::Plain(2));
        assert_eq!(get("scenarios"), Value::Plain(1));
        assert_eq!(k.vendors["ge"], Shown::Count(333));
        // With the default rules: small figures suppressed, shares then unknown.
        let few: Vec<_> = (0..8).map(|i| patient(i, &keys)).collect();
        let k = kpis(&few, &Models::new(), &keys, &Rules::default());
        let get = |key: &str| k.indicators.iter().find(|i| i.key == key).unwrap().value;
        assert_eq!(get("patients"), Value::Count(Shown::Suppressed));
        assert_eq!(get("images"), Value::Count(Shown::Suppressed));
        assert_eq!(get("annotated"), Value::Percent(None));
        assert!(k.sites.values().all(|s| *s == Shown::Suppressed));
        // Every indicator with a target says it in words.
        assert!(k.indicators.iter().all(|i| !i.target_text.is_empty()));
    }
}
