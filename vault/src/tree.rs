//! De-identify a folder tree: what `hbs deid` runs so a site can preview exactly what
//! would leave its hospital, with the same engine the gateway uses.
//!
//! Outputs go to `OUT/<pseudonym>/<study UID>/<series UID>/<SOP instance UID>.dcm` (all
//! pseudonymized), and `OUT/report.json` lists every input as accepted, quarantined or
//! rejected with its reason. Inputs are named in the report by their position in the
//! walk and the SHA-256 of their bytes (a site finds its file with `sha256sum`), never by
//! path: folder and file names at hospitals often hold patient names or IDs.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::deid::{self, Outcome};
use crate::pseudonym::{Pseudonymizer, SiteId};

/// One input file and what became of it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileReport {
    /// Position of the file in the sorted walk of the input tree (0-based).
    pub index: usize,
    /// SHA-256 of the input file, hex.
    pub sha256: String,
    /// accepted, quarantined or rejected.
    pub status: Status,
    /// Why it was quarantined or rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The patient's pseudonym, when it could be derived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pseudonym: Option<String>,
    /// A warning about an accepted file (e.g. no Patient ID, so not linkable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Output path relative to the output folder, when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The fate of one input.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// De-identified and written.
    Accepted,
    /// Held back: possible burned-in text.
    Quarantined,
    /// Not DICOM, broken, or not storable.
    Rejected,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The site the run was for.
    pub site: String,
    /// Counts.
    pub accepted: usize,
    /// Counts.
    pub quarantined: usize,
    /// Counts.
    pub rejected: usize,
    /// One entry per input file.
    pub files: Vec<FileReport>,
}

/// Lists regular files under `dir`, sorted, skipping nothing but symlinks' targets
/// outside it (links are not followed).
pub fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// De-identifies every file under `input` into `output` and writes `report.json` there.
/// Fails only when the folders themselves cannot be read or written; each bad file is a
/// rejected entry of the report.
pub fn deid_tree(
    input: &Path,
    output: &Path,
    site: &SiteId,
    keys: &Pseudonymizer,
) -> std::io::Result<Report> {
    let files = walk(input)?;
    std::fs::create_dir_all(output)?;
    let out_canon = output.canonicalize()?;
    let mut report = Report {
        site: site.to_string(),
        accepted: 0,
        quarantined: 0,
        rejected: 0,
        files: Vec::with_capacity(files.len()),
    };
    let mut written: std::collections::HashMap<PathBuf, usize> = Default::default();
    for (index, path) in files.iter().enumerate() {
        // The output may sit inside the input tree; never read our own outputs back.
        if path
            .canonicalize()
            .map(|p| p.starts_with(&out_canon))
            .unwrap_or(false)
        {
            continue;
        }
        let bytes = std::fs::read(path)?;
        let mut fr = FileReport {
            index,
            sha256: sha256_hex(&bytes),
            status: Status::Rejected,
            reason: None,
            pseudonym: None,
            warning: None,
            output: None,
        };
        match deid::deidentify(&bytes, site, keys) {
            Ok(Outcome::Accepted(a)) => {
                let rel = PathBuf::from(a.pseudonym.as_str())
                    .join(&a.study_uid)
                    .join(&a.series_uid)
                    .join(format!("{}.dcm", a.sop_uid));
                let dest = output.join(&rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&dest, &a.bytes)?;
                fr.status = Status::Accepted;
                if a.pseudonym_from_study {
                    fr.warning = Some(
                        "no Patient ID (0010,0020): pseudonymized per study, not linkable to other studies or clinical records".into(),
                    );
                }
                if let Some(first) = written.insert(rel.clone(), index) {
                    fr.warning = Some(format!(
                        "same SOP Instance UID as input #{first}: its output was replaced by this one"
                    ));
                }
                fr.pseudonym = Some(a.pseudonym.to_string());
                fr.output = Some(rel.to_string_lossy().into_owned());
                report.accepted += 1;
            }
            Ok(Outcome::Quarantined { reason, pseudonym }) => {
                fr.status = Status::Quarantined;
                fr.reason = Some(reason);
                fr.pseudonym = Some(pseudonym.to_string());
                report.quarantined += 1;
            }
            Err(e) => {
                fr.reason = Some(e.to_string());
                report.rejected += 1;
            }
        }
        report.files.push(fr);
    }
    let json = serde_json::to_vec_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(output.join("report.json"), json)?;
    Ok(report)
}
