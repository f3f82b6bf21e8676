//! Pseudonymization of clinical records (CSV).
//!
//! The format a site sends, one row per patient event, UTF-8, comma-separated, with a
//! header row naming the columns:
//!
//! | column | meaning | what hbs does |
//! |---|---|---|
//! | `patient_id` (required) | the site's local patient ID, as in DICOM Patient ID | replaced by the pseudonym |
//! | `psa` | PSA in ng/mL | kept (must be a number) |
//! | `psa_date` | date of the PSA, `YYYY-MM-DD` | shifted by the patient's offset |
//! | `isup_grade` | ISUP grade group 0-5 (0: no cancer) | kept (checked) |
//! | `pirads` | PI-RADS 1-5 | kept (checked) |
//! | `biopsy_result` | e.g. `negative`, `ISUP2` | kept |
//! | `biopsy_date` | `YYYY-MM-DD` | shifted |
//! | `treatment` | active surveillance, radical prostatectomy, ... | kept |
//! | `birth_date` | `YYYY-MM-DD` | dropped; `age_at_psa` (whole years) is derived from it |
//! | `patient_name`, `name`, `address`, `phone`, `email`, `mrn`, ... | direct identifiers | dropped |
//! | any other column | | dropped, unless the caller declares it safe; a declared-safe column is kept with the patient's ID removed from it |
//!
//! The date shift is the patient's DICOM one, so intervals between a PSA and an MRI are
//! exact. Errors name the row and the column, never a value.

use std::collections::BTreeMap;

use crate::deid::shift_da;
use crate::pseudonym::{Pseudonym, Pseudonymizer, SiteId};

/// Columns hbs knows and keeps (after transformation).
pub const KNOWN_COLUMNS: &[&str] = &[
    "psa",
    "psa_date",
    "isup_grade",
    "pirads",
    "biopsy_result",
    "biopsy_date",
    "treatment",
];

/// A pseudonymized record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The patient's pseudonym.
    pub pseudonym: Pseudonym,
    /// Kept columns, transformed.
    pub fields: BTreeMap<String, String>,
}

/// A problem with the CSV. Names positions and columns only.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClinicalError {
    /// The CSV itself is malformed.
    #[error("clinical CSV is malformed at row {row}: {reason}")]
    Csv {
        /// 1-based data row (0: header).
        row: usize,
        /// What the parser said, without the content.
        reason: String,
    },
    /// No `patient_id` column.
    #[error("clinical CSV has no patient_id column")]
    NoPatientIdColumn,
    /// A value that does not fit its column.
    #[error("clinical CSV row {row}, column {column}: {reason}")]
    Value {
        /// 1-based data row.
        row: usize,
        /// The column.
        column: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The outcome for a whole file: good rows, and per-row errors (a bad row loses only
/// itself).
#[derive(Debug, Default)]
pub struct Pseudonymized {
    /// Records ready to encrypt.
    pub records: Vec<Record>,
    /// Rows refused, with the reason.
    pub errors: Vec<ClinicalError>,
    /// Columns dropped (names only).
    pub dropped_columns: Vec<String>,
}

fn iso_to_da(v: &str) -> Option<String> {
    let v = v.trim();
    let b = v.as_bytes();
    if v.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        Some(format!("{}{}{}", &v[0..4], &v[5..7], &v[8..10]))
    } else {
        None
    }
}

fn da_to_iso(v: &str) -> String {
    format!("{}-{}-{}", &v[0..4], &v[4..6], &v[6..8])
}

/// Pseudonymizes a clinical CSV for a site. `safe_columns` lists extra columns the
/// caller declares free of identifying values.
pub fn pseudonymize(
    csv_bytes: &[u8],
    site: &SiteId,
    keys: &Pseudonymizer,
    safe_columns: &[String],
) -> Result<Pseudonymized, ClinicalError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::All)
        .from_reader(csv_bytes);
    let headers: Vec<String> = rdr
        .headers()
        .map_err(|e| ClinicalError::Csv {
            row: 0,
            reason: csv_reason(&e),
        })?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let pid = headers
        .iter()
        .position(|h| h == "patient_id")
        .ok_or(ClinicalError::NoPatientIdColumn)?;
    let mut out = Pseudonymized {
        dropped_columns: headers
            .iter()
            .filter(|h| {
                h.as_str() != "patient_id"
                    && !KNOWN_COLUMNS.contains(&h.as_str())
                    && !safe_columns.iter().any(|s| s.eq_ignore_ascii_case(h))
            })
            .cloned()
            .collect(),
        ..Default::default()
    };
    for (i, rec) in rdr.records().enumerate() {
        let row = i + 1;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                out.errors.push(ClinicalError::Csv {
                    row,
                    reason: csv_reason(&e),
                });
                continue;
            }
        };
        match one_row(&headers, pid, &rec, row, site, keys, safe_columns) {
            Ok(r) => out.records.push(r),
            Err(e) => out.errors.push(e),
        }
    }
    Ok(out)
}

fn csv_reason(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("{len} fields where the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        _ => "unreadable CSV".into(),
    }
}

fn one_row(
    headers: &[String],
    pid: usize,
    rec: &csv::StringRecord,
    row: usize,
    site: &SiteId,
    keys: &Pseudonymizer,
    safe_columns: &[String],
) -> Result<Record, ClinicalError> {
    let bad = |column: &str, reason: &'static str| ClinicalError::Value {
        row,
        column: column.to_string(),
        reason,
    };
    let local_id = rec.get(pid).unwrap_or("").trim();
    if local_id.is_empty() {
        return Err(bad("patient_id", "empty"));
    }
    let pseudonym = keys.pseudonym(site, local_id);
    let shift = keys.date_shift_days(&pseudonym);
    let get = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .and_then(|i| rec.get(i))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let mut fields = BTreeMap::new();
    for col in KNOWN_COLUMNS {
        let Some(v) = get(col) else { continue };
        let value = match *col {
            "psa" => {
                let x: f64 = v.parse().map_err(|_| bad(col, "not a number"))?;
                if !(0.0..10_000.0).contains(&x) {
                    return Err(bad(col, "out of range"));
                }
                v.to_string()
            }
            "isup_grade" => match v.parse::<u8>() {
                Ok(g) if g <= 5 => g.to_string(),
                _ => return Err(bad(col, "must be 0 to 5")),
            },
            "pirads" => match v.parse::<u8>() {
                Ok(g) if (1..=5).contains(&g) => g.to_string(),
                _ => return Err(bad(col, "must be 1 to 5")),
            },
            "psa_date" | "biopsy_date" => {
                let da = iso_to_da(v).ok_or_else(|| bad(col, "not a YYYY-MM-DD date"))?;
                let s = shift_da(&da, shift).ok_or_else(|| bad(col, "not a valid date"))?;
                da_to_iso(&s)
            }
            _ => scrub(v, local_id),
        };
        fields.insert(col.to_string(), value);
    }
    if let (Some(b), Some(p)) = (get("birth_date"), get("psa_date")) {
        if let (Some(b), Some(p)) = (iso_to_da(b), iso_to_da(p)) {
            let years = |d: &str| -> Option<(i32, i32)> {
                Some((d[0..4].parse().ok()?, d[4..8].parse().ok()?))
            };
            if let (Some((by, bmd)), Some((py, pmd))) = (years(&b), years(&p)) {
                let age = py - by - i32::from(pmd < bmd);
                if (0..130).contains(&age) {
                    fields.insert("age_at_psa".into(), age.to_string());
                }
            }
        }
    }
    for col in safe_columns {
        let c = col.to_ascii_lowercase();
        if c == "patient_id" || KNOWN_COLUMNS.contains(&c.as_str()) {
            continue;
        }
        if let Some(v) = get(&c) {
            fields.insert(c, scrub(v, local_id));
        }
    }
    Ok(Record { pseudonym, fields })
}

fn scrub(v: &str, local_id: &str) -> String {
    if local_id.len() >= 2 {
        v.replace(local_id, "").trim().to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "patient_id,patient_name,birth_date,psa,psa_date,isup_grade,pirads,biopsy_result,biopsy_date,treatment,smoking,comments
MRN001,DOE^JOHN,1950-06-15,7.2,2020-03-01,2,4,ISUP2,2020-03-20,active surveillance,never,called John at home
MRN002,ROE^RICHARD,1948-01-02,abc,2020-03-01,2,4,ISUP2,2020-03-20,radiotherapy,former,
MRN003,POE^EDGAR,1949-01-02,4.1,2021-13-01,1,3,negative,2021-01-20,active surveillance,current,
";

    #[test]
    fn rows_are_pseudonymized_shifted_and_stripped() {
        let keys = Pseudonymizer::new(&[3u8; 32]).unwrap();
        let site = SiteId::new("SITE_A").unwrap();
        let out = pseudonymize(CSV.as_bytes(), &site, &keys, &["smoking".into()]).unwrap();
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.errors.len(), 2);
        assert_eq!(
            out.errors[0].to_string(),
            "clinical CSV row 2, column psa: not a number"
        );
        assert!(out.errors[1].to_string().contains("psa_date"));
        let r = &out.records[0];
        assert_eq!(r.pseudonym, keys.pseudonym(&site, "MRN001"));
        assert_eq!(r.fields["psa"], "7.2");
        assert_eq!(r.fields["isup_grade"], "2");
        assert_eq!(r.fields["smoking"], "never");
        assert_eq!(r.fields["age_at_psa"], "69");
        assert!(!r.fields.contains_key("comments"));
        assert!(!r.fields.contains_key("patient_name"));
        assert!(!r.fields.contains_key("birth_date"));
        // Same shift as the patient's DICOM dates: the interval PSA -> biopsy is kept.
        let shift = keys.date_shift_days(&r.pseudonym);
        assert_eq!(
            r.fields["psa_date"],
            da_to_iso(&shift_da("20200301", shift).unwrap())
        );
        assert_ne!(r.fields["psa_date"], "2020-03-01");
        let json = serde_json::to_string(&out.records).unwrap();
        for leak in ["MRN001", "DOE", "JOHN", "1950", "2020-03-01", "2020-03-20"] {
            assert!(!json.contains(leak), "{leak} leaked");
        }
        assert!(out.dropped_columns.contains(&"comments".to_string()));
    }

    #[test]
    fn missing_patient_id_column_is_an_error() {
        let keys = Pseudonymizer::new(&[3u8; 32]).unwrap();
        let site = SiteId::new("SITE_A").unwrap();
        assert_eq!(
            pseudonymize(b"psa\n1\n", &site, &keys, &[]).unwrap_err(),
            ClinicalError::NoPatientIdColumn
        );
        let out = pseudonymize(b"patient_id,psa\nX1,1,2\n", &site, &keys, &[]).unwrap();
        assert_eq!(out.records.len(), 0);
        assert!(out.errors[0]
            .to_string()
            .contains("3 fields where the header has 2"));
    }
}
