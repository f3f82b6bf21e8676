//! From the series the vault summarises to the patients the catalogue counts.
//!
//! The vault keeps one row per series (its pseudonymized identifiers, shifted study date,
//! acquisition facts, b-values and instance count, and when hbs first received it). This
//! module groups those rows into patients and studies:
//! - a study's sequences are its series' classes ([`crate::classify`]); its vendor is
//!   the manufacturer of its first MR series;
//! - a patient's studies are ordered by shifted date (shifting keeps intervals), and the
//!   first is the baseline, the others follow-ups;
//! - a patient's origin is decided by the day hbs first received any of its series;
//!   prospective patients get their split ([`crate::split`]);
//! - a site's country comes from the project's site list;
//! - whether the site sent a clinical record for the patient comes from the vault;
//! - consent: a patient whose consent is withdrawn leaves the catalogue altogether (the
//!   vault crypto-shreds the patient and deletes its rows, `hbs vault withdraw`), so every
//!   patient summarised has consent in force.

use std::collections::BTreeMap;

use crate::classify::{classify, SeriesFacts};
use crate::count::{PatientSummary, StudySummary, Vendor};
use crate::disclosure::CellKeys;
use crate::split::{origin, Day, SplitKey};

/// One series, as the vault summarises it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInput {
    /// Patient pseudonym.
    pub pseudonym: String,
    /// Contributing site.
    pub site: String,
    /// (New) Study Instance UID.
    pub study_uid: String,
    /// Shifted study date, YYYYMMDD (empty when unknown).
    pub study_date: String,
    /// Manufacturer (0008,0070).
    pub manufacturer: String,
    /// What classification reads.
    pub facts: SeriesFacts,
    /// Instances in the series.
    pub instances: u64,
    /// Magnetic field strength, tesla.
    pub field_strength_t: Option<f64>,
    /// Scanner model.
    pub model: String,
    /// What a Segmentation segments (`gland`, `lesion`); empty for images.
    pub segments: Vec<String>,
    /// When hbs first received it, ms since 1970.
    pub first_received_ms: i64,
}

/// What the project configures for the catalogue.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Project {
    /// Data first received before this day is retrospective.
    pub cutoff: Day,
    /// Each site's ISO 3166 country code.
    pub countries: BTreeMap<String, String>,
}

const DAY_MS: i64 = 86_400_000;

/// Groups `series` into patient summaries, in pseudonym order, with each patient's split
/// (under `key`) and record key (under `cells`).
pub fn summarise(
    series: &[SeriesInput],
    clinical: &std::collections::BTreeSet<String>,
    project: &Project,
    key: &SplitKey,
    cells: &CellKeys,
) -> Vec<PatientSummary> {
    // pseudonym -> (site, first received, study -> (date, series))
    type Studies<'a> = BTreeMap<&'a str, (&'a str, Vec<&'a SeriesInput>)>;
    let mut patients: BTreeMap<&str, (&str, i64, Studies<'_>)> = BTreeMap::new();
    for s in series {
        let p =
            patients
                .entry(&s.pseudonym)
                .or_insert((&s.site, s.first_received_ms, BTreeMap::new()));
        p.1 = p.1.min(s.first_received_ms);
        let st =
            p.2.entry(&s.study_uid)
                .or_insert((&s.study_date, Vec::new()));
        if st.0.is_empty() {
            st.0 = &s.study_date;
        }
        st.1.push(s);
    }
    patients
        .into_iter()
        .map(|(pseudonym, (site, first_ms, studies))| {
            let mut studies: Vec<(&str, &str, Vec<&SeriesInput>)> = studies
                .into_iter()
                .map(|(uid, (date, series))| (date, uid, series))
                .collect();
            // By shifted date, then UID (a study with no date goes last).
            studies.sort_by(|a, b| (a.0.is_empty(), a.0, a.1).cmp(&(b.0.is_empty(), b.0, b.1)));
            let o = origin(first_ms.div_euclid(DAY_MS), project.cutoff);
            PatientSummary {
                clinical: clinical.contains(pseudonym),
                record: cells.record_key(pseudonym),
                pseudonym: pseudonym.to_string(),
                site: site.to_string(),
                country: project
                    .countries
                    .get(site)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into()),
                origin: o,
                split: key.split(pseudonym, o),
                studies: studies
                    .iter()
                    .enumerate()
                    .map(|(i, (_, uid, series))| {
                        let mr = series
                            .iter()
                            .find(|s| s.facts.modality.eq_ignore_ascii_case("MR"))
                            .or(series.first());
                        let vendor = mr
                            .map(|s| Vendor::from_manufacturer(&s.manufacturer))
                            .unwrap_or(Vendor::Other);
                        StudySummary {
                            uid: uid.to_string(),
                            field_strength_t: series
                                .iter()
                                .filter(|s| s.facts.modality.eq_ignore_ascii_case("MR"))
                                .filter_map(|s| s.field_strength_t)
                                .reduce(f64::max),
                            model: mr.map(|s| s.model.clone()).unwrap_or_default(),
                            segments: series
                                .iter()
                                .flat_map(|s| s.segments.iter().cloned())
                                .collect(),
                            vendor,
                            baseline: i == 0,
                            sequences: series.iter().map(|s| classify(&s.facts).sequence).collect(),
                            series: series.len() as u64,
                            instances: series.iter().map(|s| s.instances).sum(),
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Sequence, SEG_SOP_CLASS};
    use crate::split::{Origin, Split};

    fn series(p: &str, study: &str, date: &str, kind: Sequence, received_day: i64) -> SeriesInput {
        let mut facts = SeriesFacts {
            modality: "MR".into(),
            ..Default::default()
        };
        match kind {
            Sequence::T2W => {
                facts.scanning_sequence = vec!["SE".into()];
                facts.echo_time_ms = Some(100.0);
            }
            Sequence::DWI => facts.b_values = vec![0.0, 800.0],
            Sequence::ADC => facts.image_type = vec!["DERIVED".into(), "ADC".into()],
            Sequence::DCE => facts.temporal_positions = Some(30),
            Sequence::SEG => {
                facts.modality = "SEG".into();
                facts.sop_class = SEG_SOP_CLASS.into();
            }
            Sequence::Other => {}
        }
        SeriesInput {
            pseudonym: p.into(),
            site: "SITE_A".into(),
            study_uid: study.into(),
            study_date: date.into(),
            manufacturer: if kind == Sequence::SEG {
                "hbs-tools"
            } else {
                "GE MEDICAL SYSTEMS"
            }
            .into(),
            facts,
            instances: 10,
            field_strength_t: (kind != Sequence::SEG).then_some(3.0),
            model: "Signa".into(),
            segments: if kind == Sequence::SEG {
                vec!["gland".into(), "lesion".into()]
            } else {
                Vec::new()
            },
            first_received_ms: received_day * DAY_MS + 5,
        }
    }

    #[test]
    fn series_become_patients_with_ordered_studies_origin_and_split() {
        let rows = vec![
            // Listed out of order: the follow-up first.
            series("PN-B", "2.25.9", "20210301", Sequence::T2W, 120),
            series("PN-B", "2.25.1", "20200101", Sequence::T2W, 100),
            series("PN-B", "2.25.1", "20200101", Sequence::DWI, 100),
            series("PN-B", "2.25.1", "20200101", Sequence::ADC, 100),
            series("PN-B", "2.25.1", "20200101", Sequence::SEG, 101),
            series("PN-A", "2.25.5", "20220101", Sequence::DCE, 200),
        ];
        let project = Project {
            cutoff: 150,
            countries: [("SITE_A".to_string(), "GR".to_string())].into(),
        };
        let key = SplitKey::new(&[4; 32]);
        let cells = CellKeys::new(&[5; 32]);
        let clinical = ["PN-B".to_string()].into();
        let p = summarise(&rows, &clinical, &project, &key, &cells);
        assert!(p[1].clinical && !p[0].clinical);
        assert_eq!(p[1].studies[0].field_strength_t, Some(3.0));
        assert_eq!(p[1].studies[0].model, "Signa");
        assert_eq!(p[0].record, cells.record_key("PN-A"));
        assert_eq!(p.len(), 2);
        let (a, b) = (&p[0], &p[1]);
        assert_eq!(
            (a.pseudonym.as_str(), b.pseudonym.as_str()),
            ("PN-A", "PN-B")
        );
        assert_eq!(b.country, "GR");
        // B: first received on day 100, before the cut-off; two studies, baseline first.
        assert_eq!(b.origin, Origin::Retrospective);
        assert_eq!(b.split, None);
        assert_eq!(b.studies.len(), 2);
        assert!(b.studies[0].baseline && !b.studies[1].baseline);
        assert_eq!(
            b.studies[0].sequences,
            [Sequence::T2W, Sequence::DWI, Sequence::ADC, Sequence::SEG].into()
        );
        assert!(b.studies[0].annotated());
        assert_eq!(
            b.studies[0].segments,
            ["gland".to_string(), "lesion".to_string()].into()
        );
        // The vendor comes from the MR series, not the segmentation tool.
        assert_eq!(b.studies[0].vendor, Vendor::Ge);
        assert_eq!((b.studies[0].series, b.studies[0].instances), (4, 40));
        assert_eq!(b.studies[1].sequences, [Sequence::T2W].into());
        // A: prospective, so in a split; the country of an unlisted site is unknown.
        assert_eq!(a.origin, Origin::Prospective);
        assert!(matches!(
            a.split,
            Some(Split::FineTuning | Split::ExternalValidation)
        ));
        assert_eq!(a.split, key.split("PN-A", Origin::Prospective));
        let other = summarise(&rows, &clinical, &Project::default(), &key, &cells);
        assert_eq!(other[0].country, "unknown");
    }
}
