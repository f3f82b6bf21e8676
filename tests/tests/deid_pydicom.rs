//! De-identification of pydicom's bundled test files, checked with independent clients:
//! pydicom reads every output back, dcmtk's `dcmdump` parses it, dicom3tools' `dciodvfy`
//! finds no error the input did not have, and no identifying value of an input is left
//! in the bytes of its output.
//!
//! The corpus (see [`hbs_tests::build_pydicom_corpus`]) is pydicom's `test_files` folder
//! plus a few derived files; each test builds its own in a temporary folder.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use hbs_tests::{
    build_pydicom_corpus, normalise_dciodvfy, readable_bytes, require_python, require_tool, run_py,
    transfer_syntax, Corpus,
};
use serde_json::json;
use vault::tree::Status;

fn pairs_job(corpus: &Corpus) -> serde_json::Value {
    json!({
        "pairs": corpus.pairs.iter().map(|p| json!({
            "input": p.input.to_string_lossy(),
            "output": p.output.to_string_lossy(),
        })).collect::<Vec<_>>()
    })
}

fn fail_with(test: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{test}: {} problem(s):\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    );
}

/// Transfer syntaxes that must each have at least one accepted, verified output.
const REQUIRED_TS: &[(&str, &[&str])] = &[
    ("Implicit VR Little Endian", &["1.2.840.10008.1.2"]),
    ("Explicit VR Little Endian", &["1.2.840.10008.1.2.1"]),
    ("Explicit VR Big Endian", &["1.2.840.10008.1.2.2"]),
    (
        "Deflated Explicit VR Little Endian",
        &["1.2.840.10008.1.2.1.99"],
    ),
    ("JPEG Baseline", &["1.2.840.10008.1.2.4.50"]),
    (
        "JPEG 2000",
        &["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"],
    ),
    (
        "JPEG-LS",
        &["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"],
    ),
    ("RLE Lossless", &["1.2.840.10008.1.2.5"]),
];

#[test]
fn pydicom_files_roundtrip_through_independent_parsers() {
    const TEST: &str = "pydicom_files_roundtrip_through_independent_parsers";
    let Some(py) = require_python(TEST) else {
        return;
    };
    let Some(dcmdump) = require_tool(TEST, "dcmdump") else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let corpus = build_pydicom_corpus(&py, work.path());
    let mut failures = Vec::new();
    assert!(
        corpus.pairs.len() >= 25,
        "only {} accepted outputs from pydicom's test files",
        corpus.pairs.len()
    );

    // pydicom: every element at any depth, and pixel data byte for byte.
    let res = run_py(&py, "readback.py", &pairs_job(&corpus));
    let results = res["results"].as_array().expect("results");
    assert_eq!(results.len(), corpus.pairs.len());
    let mut by_ts: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (p, r) in corpus.pairs.iter().zip(results) {
        if let Some(e) = r["error"].as_str() {
            failures.push(format!("{}: pydicom cannot read the output: {e}", p.name));
            continue;
        }
        for px in r["pixel"].as_array().into_iter().flatten() {
            if px["equal"] != json!(true) {
                failures.push(format!(
                    "{}: {} not preserved: input {} bytes, output {} bytes{}",
                    p.name,
                    px["tag"].as_str().unwrap_or("?"),
                    px["in_len"],
                    px["out_len"],
                    if px["in_len"] == px["out_len"] {
                        " (same length, different bytes)"
                    } else {
                        ""
                    }
                ));
            }
        }
        let ts_in = r["ts_in"].as_str().unwrap_or("?");
        let ts_out = r["ts_out"].as_str().unwrap_or("?");
        if ts_in != ts_out {
            failures.push(format!(
                "{}: transfer syntax changed from {ts_in} to {ts_out}",
                p.name
            ));
        }
        let raw_ts = transfer_syntax(&std::fs::read(&p.output).expect("read output"));
        if raw_ts.as_deref() != Some(ts_out) {
            failures.push(format!(
                "{}: meta header transfer syntax {raw_ts:?} but pydicom says {ts_out}",
                p.name
            ));
        }
        by_ts.entry(ts_out.to_string()).or_default().push(&p.name);
    }

    // dcmtk: exits 0 and reports no error.
    for p in &corpus.pairs {
        let out = Command::new(&dcmdump)
            .arg(&p.output)
            .output()
            .expect("run dcmdump");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
        if !out.status.success() || !errors.is_empty() {
            failures.push(format!(
                "{}: dcmdump {} on the output: {}",
                p.name,
                out.status,
                errors.join(" | ")
            ));
        }
    }

    for (label, uids) in REQUIRED_TS {
        if !uids.iter().any(|u| by_ts.contains_key(*u)) {
            failures.push(format!(
                "no accepted output in {label} ({}); accepted per transfer syntax: {by_ts:?}",
                uids.join(" or ")
            ));
        }
    }

    // UN_sequence.dcm holds one private explicit-VR UN sequence of undefined length (how
    // Philips writes its private sequences; PS3.5 6.2.2) and nothing else: no SOP
    // Instance UID, no Patient ID, no Study Instance UID. vault cannot file it anywhere
    // (its output path is made of the patient's pseudonym, the study, series and SOP
    // Instance UIDs), so the original may be rejected, but only for that: a reason from
    // the parser ("unreadable DICOM") would mean the UN sequence broke it. The same file
    // with those attributes added in front of the untouched sequence must be accepted,
    // and is then checked like every other output above.
    let un = std::fs::read(corpus.dir.join("UN_sequence.dcm")).expect("UN_sequence.dcm");
    let un_entry = corpus
        .entry_for(&un)
        .expect("UN_sequence.dcm in the report");
    if un_entry.status != Status::Accepted {
        let reason = un_entry.reason.as_deref().unwrap_or("");
        if reason.is_empty() || reason.starts_with("unreadable DICOM") {
            failures.push(format!(
                "UN_sequence.dcm: {:?} because the reader failed on its UN sequence: {reason:?}",
                un_entry.status
            ));
        }
    }
    let with_id = std::fs::read(
        corpus
            .dir
            .join("declared")
            .join("UN_sequence_with_identity.dcm"),
    )
    .expect("UN_sequence_with_identity.dcm");
    let e = corpus.entry_for(&with_id).expect("in the report");
    if e.status != Status::Accepted {
        failures.push(format!(
            "UN_sequence.dcm with SOP, patient, study and series attributes added: {:?}: {:?}",
            e.status, e.reason
        ));
    }

    eprintln!(
        "{TEST}: {} accepted outputs verified; per transfer syntax: {by_ts:#?}",
        corpus.pairs.len()
    );
    fail_with(TEST, &failures);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Overwrites every occurrence of `value` in `hay` with zeros.
fn blank_all(hay: &mut [u8], value: &[u8]) {
    let mut from = 0;
    while let Some(i) = find(&hay[from..], value) {
        hay[from + i..from + i + value.len()].fill(0);
        from += i + value.len();
    }
}

#[test]
fn no_identifying_value_survives() {
    const TEST: &str = "no_identifying_value_survives";
    let Some(py) = require_python(TEST) else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let corpus = build_pydicom_corpus(&py, work.path());
    let res = run_py(&py, "identifiers.py", &pairs_job(&corpus));
    let results = res["results"].as_array().expect("results");
    assert_eq!(results.len(), corpus.pairs.len());
    let mut failures = Vec::new();
    let mut checked = 0usize;
    let mut files_with_values = 0usize;
    for (p, r) in corpus.pairs.iter().zip(results) {
        if let Some(e) = r["error"].as_str() {
            failures.push(format!("{}: identifiers.py: {e}", p.name));
            continue;
        }
        let bytes = std::fs::read(&p.output).expect("read output");
        let (mut hay, dataset_start) = readable_bytes(&bytes);
        // Pixel data is the input's, byte for byte (checked by the round-trip test); a
        // value that happens to occur in it is not a leak of an attribute.
        let base = if r["pixel_in_inflated"] == json!(true) {
            dataset_start
        } else {
            0
        };
        for range in r["pixel_ranges"].as_array().into_iter().flatten() {
            let s = base + range[0].as_u64().expect("start") as usize;
            let e = base + range[1].as_u64().expect("end") as usize;
            assert!(
                s <= e && e <= hay.len(),
                "{}: pixel range {s}..{e} outside the output's {} bytes",
                p.name,
                hay.len()
            );
            hay[s..e].fill(0);
        }
        // The input's Manufacturer and Model Name stay (see identifiers.py for why).
        for kept in r["kept"].as_array().into_iter().flatten() {
            let v = hex::decode(kept.as_str().expect("hex")).expect("hex value");
            blank_all(&mut hay, &v);
        }
        let ids = r["identifiers"].as_array().expect("identifiers");
        if !ids.is_empty() {
            files_with_values += 1;
        }
        for id in ids {
            let value = hex::decode(id["hex"].as_str().expect("hex")).expect("hex value");
            checked += 1;
            if let Some(at) = find(&hay, &value) {
                // The bytes before the value show which element holds it (tag, VR).
                let before = &hay[at.saturating_sub(12)..at];
                failures.push(format!(
                    "{}: {} survived: {:?} at byte {at} of the output{}, after {:02X?}",
                    p.name,
                    id["attr"].as_str().unwrap_or("?"),
                    String::from_utf8_lossy(&value),
                    if dataset_start > 0 && r["pixel_in_inflated"] == json!(true) {
                        " (data set inflated)"
                    } else {
                        ""
                    },
                    before
                ));
            }
        }
    }
    eprintln!(
        "{TEST}: {checked} identifying values of {files_with_values} inputs searched for in {} outputs",
        corpus.pairs.len()
    );
    assert!(
        checked >= 200 && files_with_values >= 20,
        "{TEST}: too few identifying values found ({checked} in {files_with_values} files): identifiers.py is not looking"
    );
    fail_with(TEST, &failures);
}

fn dciodvfy_errors(dciodvfy: &std::path::Path, file: &std::path::Path) -> BTreeSet<String> {
    let out = Command::new(dciodvfy)
        .arg(file)
        .output()
        .expect("run dciodvfy");
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.starts_with("Error"))
        .map(normalise_dciodvfy)
        .collect()
}

#[test]
fn dciodvfy_finds_no_new_errors() {
    const TEST: &str = "dciodvfy_finds_no_new_errors";
    let Some(py) = require_python(TEST) else {
        return;
    };
    let Some(dciodvfy) = require_tool(TEST, "dciodvfy") else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let corpus = build_pydicom_corpus(&py, work.path());
    let mut failures = Vec::new();
    for p in &corpus.pairs {
        let before = dciodvfy_errors(&dciodvfy, &p.input);
        let after = dciodvfy_errors(&dciodvfy, &p.output);
        for new in after.difference(&before) {
            failures.push(format!("{}: new: {new}", p.name));
        }
    }
    fail_with(TEST, &failures);
}
