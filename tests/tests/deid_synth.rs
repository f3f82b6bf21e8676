//! De-identification of vault's synthetic mpMRI corpora (three vendors, baseline and
//! follow-up studies, DICOM SEG), checked with independent clients: pydicom reads the
//! outputs back, dcmtk's `dcmdump` and dicom3tools' `dciodvfy` parse and verify them,
//! and the identifiers the generator planted are searched for byte by byte.
//!
//! Each test generates its own small corpus (see [`build`]) in a temporary folder and
//! de-identifies each site's folder with that site's code, as the site itself would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use hbs_tests::{keys, normalise_dciodvfy, require_python, require_tool, run_py, site};
use serde_json::{json, Value};
use vault::synth::{generate, SynthConfig, SynthSummary};
use vault::tree::{deid_tree, Report, Status};

/// One synthetic input and its de-identified output.
#[derive(Debug, Clone)]
struct Pair {
    /// The site code (the top folder of the corpus).
    site: String,
    /// The input's path relative to the corpus folder (synthetic names only).
    name: String,
    input: PathBuf,
    output: PathBuf,
    /// The output's path relative to the site's output folder, as the report says.
    rel_out: String,
    /// The pseudonym the report gives.
    pseudonym: String,
}

/// A generated corpus, de-identified site by site.
struct Synth {
    work: tempfile::TempDir,
    /// `<work>/corpus`: what [`generate`] wrote.
    src: PathBuf,
    /// `<work>/out`: `out/<SITE>/` holds what `deid_tree` wrote for that site.
    out: PathBuf,
    summary: SynthSummary,
    reports: BTreeMap<String, Report>,
    /// Every DICOM input, with its output, in corpus order.
    pairs: Vec<Pair>,
}

fn config(seed: u64) -> SynthConfig {
    SynthConfig {
        patients: 6,
        sites: 2,
        seed,
        slices: 3,
        rows: 64,
        cols: 64,
    }
}

/// De-identifies `input/<SITE>` into `output/<SITE>` for each site, checking that every
/// DICOM input is accepted (and anything else, the clinical CSV, is not), and pairs
/// inputs with outputs. `name_root` is what input names are made relative to.
fn deid_sites(
    input: &Path,
    output: &Path,
    sites: &[String],
    name_root: &Path,
) -> (BTreeMap<String, Report>, Vec<Pair>) {
    let keys = keys();
    let mut reports = BTreeMap::new();
    let mut pairs = Vec::new();
    for code in sites {
        let site_in = input.join(code);
        let site_out = output.join(code);
        let inputs = vault::tree::walk(&site_in).expect("walk site folder");
        let report = deid_tree(&site_in, &site_out, &site(code), &keys).expect("deid_tree");
        assert_eq!(
            report.files.len(),
            inputs.len(),
            "one report entry per input"
        );
        for e in &report.files {
            let path = &inputs[e.index];
            let name = path
                .strip_prefix(name_root)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(path).expect("read input");
            assert_eq!(vault::tree::sha256_hex(&bytes), e.sha256, "{name}: sha256");
            let dicom = path.extension().is_some_and(|x| x == "dcm");
            if !dicom {
                assert_ne!(e.status, Status::Accepted, "{name}: not DICOM, accepted");
                continue;
            }
            assert_eq!(
                (e.status, &e.reason, &e.warning),
                (Status::Accepted, &None, &None),
                "{name}: not accepted cleanly"
            );
            let rel_out = e.output.clone().expect("accepted entry names its output");
            pairs.push(Pair {
                site: code.clone(),
                name,
                input: path.clone(),
                output: site_out.join(&rel_out),
                rel_out,
                pseudonym: e.pseudonym.clone().expect("accepted entry has a pseudonym"),
            });
        }
        reports.insert(code.clone(), report);
    }
    (reports, pairs)
}

/// Generates the corpus of `seed` and de-identifies each site's folder.
fn build(seed: u64) -> Synth {
    let work = tempfile::tempdir().expect("temp dir");
    let src = work.path().join("corpus");
    let out = work.path().join("out");
    let summary = generate(&src, &config(seed)).expect("generate synthetic corpus");
    let (reports, pairs) = deid_sites(&src, &out, &summary.sites, &src);
    assert_eq!(
        pairs.len(),
        summary.files,
        "every generated DICOM file accepted"
    );
    let outputs: BTreeSet<&Path> = pairs.iter().map(|p| p.output.as_path()).collect();
    assert_eq!(outputs.len(), pairs.len(), "one output per input");
    Synth {
        work,
        src,
        out,
        summary,
        reports,
        pairs,
    }
}

fn fail_with(test: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{test}: {} problem(s):\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    );
}

/// pydicom's facts (see `tests/py/synth_facts.py`) about every file, in one run.
fn facts(py: &Path, files: &[&Path]) -> BTreeMap<PathBuf, Value> {
    let job = json!({ "files": files.iter().map(|f| f.to_string_lossy()).collect::<Vec<_>>() });
    let res = run_py(py, "synth_facts.py", &job);
    let results = res["results"].as_array().expect("results");
    assert_eq!(results.len(), files.len());
    files
        .iter()
        .zip(results)
        .map(|(f, r)| (f.to_path_buf(), r.clone()))
        .collect()
}

/// Facts of every input and output of the pairs; pydicom errors become failures.
fn pair_facts(py: &Path, pairs: &[Pair], failures: &mut Vec<String>) -> BTreeMap<PathBuf, Value> {
    let files: Vec<&Path> = pairs
        .iter()
        .flat_map(|p| [p.input.as_path(), p.output.as_path()])
        .collect();
    let f = facts(py, &files);
    for p in pairs {
        for (what, path) in [("input", &p.input), ("output", &p.output)] {
            if let Some(e) = f[path]["error"].as_str() {
                failures.push(format!("{}: pydicom cannot read the {what}: {e}", p.name));
            }
        }
    }
    f
}

/// A top-level attribute of a facts record, by keyword.
fn attr<'a>(facts: &'a Value, keyword: &str) -> Option<&'a str> {
    facts["attrs"][keyword].as_str()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or("<null>").to_string())
        .collect()
}

/// The series types of an mpMRI study, told apart by their (vendor-specific) Series
/// Description, as a reader would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    T2w,
    Dwi,
    Adc,
    Dce,
}

fn kind_of(description: &str) -> Option<Kind> {
    let d = description.to_ascii_uppercase();
    if d.contains("ADC") {
        Some(Kind::Adc)
    } else if d.contains("DWI") || d.contains("DIFF") {
        Some(Kind::Dwi)
    } else if d.contains("T2") {
        Some(Kind::T2w)
    } else if d.contains("DCE") || d.contains("DYN") {
        Some(Kind::Dce)
    } else {
        None
    }
}

/// Days since 1970-01-01 of a DA value (YYYYMMDD).
fn days(da: &str) -> Option<i64> {
    if da.len() != 8 || !da.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (
        da[0..4].parse().ok()?,
        da[4..6].parse().ok()?,
        da[6..8].parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[test]
fn days_count_from_1970_across_leap_years() {
    assert_eq!(days("19700101"), Some(0));
    assert_eq!(
        days("20000229").zip(days("20000301")).map(|(a, b)| b - a),
        Some(1)
    );
    assert_eq!(
        days("20210301").zip(days("20210228")).map(|(a, b)| a - b),
        Some(1)
    );
    assert_eq!(
        days("20240101").zip(days("20250101")).map(|(a, b)| b - a),
        Some(366)
    );
    assert_eq!(days("20241301"), None);
    assert_eq!(days("2024"), None);
}

// ---------------------------------------------------------------------------------------

#[test]
fn seg_references_still_point_at_the_deidentified_sources() {
    const TEST: &str = "seg_references_still_point_at_the_deidentified_sources";
    let Some(py) = require_python(TEST) else {
        return;
    };
    let corpus = build(101);
    let mut failures = Vec::new();
    let f = pair_facts(&py, &corpus.pairs, &mut failures);
    fail_with(TEST, &failures);
    let out_sop: BTreeMap<&str, &str> = corpus
        .pairs
        .iter()
        .filter_map(|p| {
            Some((
                attr(&f[&p.input], "SOPInstanceUID")?,
                attr(&f[&p.output], "SOPInstanceUID")?,
            ))
        })
        .collect();
    let mut segs = 0;
    for seg in corpus
        .pairs
        .iter()
        .filter(|p| attr(&f[&p.output], "Modality") == Some("SEG"))
    {
        segs += 1;
        let (fi, fo) = (&f[&seg.input], &f[&seg.output]);
        let name = &seg.name;
        let mut fail = |m: String| failures.push(format!("{name}: {m}"));
        let pseudonym = attr(fo, "PatientID").unwrap_or("");
        // The de-identified T2W outputs of the same patient (both studies), by series.
        let mut t2w: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
        for p in &corpus.pairs {
            let o = &f[&p.output];
            if attr(o, "PatientID") == Some(pseudonym)
                && attr(o, "Modality") == Some("MR")
                && kind_of(attr(&f[&p.input], "SeriesDescription").unwrap_or("")) == Some(Kind::T2w)
            {
                t2w.entry(attr(o, "SeriesInstanceUID").unwrap_or(""))
                    .or_default()
                    .push(p);
            }
        }
        if t2w.is_empty() {
            fail(format!("no T2W output of patient {pseudonym}"));
            continue;
        }
        let ref_series = strs(&fo["ref_series"]);
        let [series] = ref_series.as_slice() else {
            fail(format!(
                "ReferencedSeriesSequence holds {} series UIDs, not 1: {ref_series:?}",
                ref_series.len()
            ));
            continue;
        };
        let Some(sources) = t2w.get(series.as_str()) else {
            fail(format!(
                "ReferencedSeriesSequence>SeriesInstanceUID {series} is none of the patient's T2W output series {:?}",
                t2w.keys().collect::<Vec<_>>()
            ));
            continue;
        };
        // The series it points at is the one the input SEG pointed at.
        let src_series_in = attr(&f[&sources[0].input], "SeriesInstanceUID").unwrap_or("");
        if strs(&fi["ref_series"]) != [src_series_in] {
            fail(format!(
                "points at the output of input series {src_series_in}, but the input SEG referenced {:?}",
                strs(&fi["ref_series"])
            ));
        }
        let t2w_sops: BTreeSet<String> = sources
            .iter()
            .filter_map(|p| attr(&f[&p.output], "SOPInstanceUID").map(str::to_string))
            .collect();
        let ref_inst = strs(&fo["ref_instances"]);
        let derived = strs(&fo["derivation_sources"]);
        let ref_set: BTreeSet<String> = ref_inst.iter().cloned().collect();
        let derived_set: BTreeSet<String> = derived.iter().cloned().collect();
        if ref_set != t2w_sops || ref_set.len() != ref_inst.len() {
            fail(format!(
                "ReferencedInstanceSequence {ref_inst:?} is not the T2W outputs' SOP Instance UIDs {t2w_sops:?}"
            ));
        }
        if derived.is_empty() || derived_set != t2w_sops {
            fail(format!(
                "SourceImageSequence UIDs {derived_set:?} (of {} frames) are not the T2W outputs' SOP Instance UIDs {t2w_sops:?}",
                derived.len()
            ));
        }
        // Reference by reference, in order: the output of the input's referenced instance.
        for (what, key) in [
            ("ReferencedInstanceSequence", "ref_instances"),
            ("SourceImageSequence", "derivation_sources"),
        ] {
            let mapped: Vec<String> = strs(&fi[key])
                .iter()
                .map(|u| {
                    out_sop
                        .get(u.as_str())
                        .map_or(format!("<unmapped {u}>"), |s| s.to_string())
                })
                .collect();
            if mapped != strs(&fo[key]) {
                fail(format!(
                    "{what}: output references {:?}, the outputs of the input's references are {mapped:?}",
                    strs(&fo[key])
                ));
            }
        }
        for kw in ["FrameOfReferenceUID", "StudyInstanceUID"] {
            let want: BTreeSet<&str> = sources
                .iter()
                .map(|p| attr(&f[&p.output], kw).unwrap_or("<absent>"))
                .collect();
            let got = attr(fo, kw).unwrap_or("<absent>");
            if want.len() != 1 || !want.contains(got) {
                fail(format!("{kw} {got} but the source series has {want:?}"));
            }
        }
        let mut uids: Vec<String> = vec![series.clone()];
        uids.extend(ref_inst.iter().cloned());
        uids.extend(derived_set.iter().cloned());
        for kw in [
            "FrameOfReferenceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
        ] {
            uids.push(attr(fo, kw).unwrap_or("<absent>").to_string());
        }
        for u in uids.iter().filter(|u| !u.starts_with("2.25.")) {
            fail(format!("UID {u} is not a 2.25. UID"));
        }
    }
    assert_eq!(segs, corpus.summary.segs, "SEG outputs");
    assert!(segs >= 2, "the corpus holds {segs} SEGs: too few to test");
    fail_with(TEST, &failures);
}

// ---------------------------------------------------------------------------------------

/// The private b-value elements of each vendor, as `synth_facts.py` keys them.
const B_VALUE_ELEMENTS: &[(&str, &[&str])] = &[
    (
        "SIEMENS",
        &["0019,SIEMENS MR HEADER,0C", "0019,SIEMENS MR HEADER,0E"],
    ),
    ("GE MEDICAL SYSTEMS", &["0043,GEMS_PARM_01,39"]),
    (
        "Philips Medical Systems",
        &[
            "2001,Philips Imaging DD 001,03",
            "2001,Philips Imaging DD 001,04",
        ],
    ),
];

/// Attributes the profile and its options keep as they are in an MR image.
const KEPT: &[&str] = &[
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "ProtocolName",
    "EchoTime",
    "RepetitionTime",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
];

const METHOD_CODES: &[&str] = &["113100", "113105", "113107", "113108", "113111"];

/// Name components (3 characters or more) of a Patient Name value, upper-cased.
fn name_parts(pn: &str) -> Vec<String> {
    pn.split(['^', '=', ' '])
        .filter(|p| p.chars().count() >= 3)
        .map(|p| p.to_uppercase())
        .collect()
}

#[test]
fn diffusion_and_vendor_information_survive() {
    const TEST: &str = "diffusion_and_vendor_information_survive";
    let Some(py) = require_python(TEST) else {
        return;
    };
    let corpus = build(202);
    let mut failures = Vec::new();
    let f = pair_facts(&py, &corpus.pairs, &mut failures);
    // Whether hbs's safe-private list keeps Philips' (2005,"Philips MR Imaging DD 001",80)
    // (Series PlanScan: TCIA keeps it as SQ, deletes it recorded as UN).
    let planscan_safe = vault::tables::private_is_safe(0x2005, "Philips MR Imaging DD 001", 0x80);
    // (vendor, element) -> DWI inputs holding it.
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut dwi_per_vendor: BTreeMap<String, usize> = BTreeMap::new();
    let (mut csa_in, mut planscan_in, mut renamed) = (0, 0, 0);
    for p in &corpus.pairs {
        let (fi, fo) = (&f[&p.input], &f[&p.output]);
        if fi["error"].is_string() || fo["error"].is_string() {
            continue; // already a failure
        }
        let name = &p.name;
        let mut fail = |m: String| failures.push(format!("{name}: {m}"));
        let codes = strs(&fo["method_codes"]);
        for c in METHOD_CODES {
            if !codes.iter().any(|x| x == c) {
                fail(format!(
                    "De-identification Method Code Sequence {codes:?} lacks {c}"
                ));
            }
        }
        if attr(fo, "PatientIdentityRemoved") != Some("YES") {
            fail(format!(
                "Patient Identity Removed is {:?}",
                attr(fo, "PatientIdentityRemoved")
            ));
        }
        if attr(fi, "Modality") != Some("MR") {
            continue;
        }
        for kw in KEPT {
            let (a, b) = (attr(fi, kw), attr(fo, kw));
            if a.is_none() || a != b {
                fail(format!("{kw}: input {a:?}, output {b:?}"));
            }
        }
        // Series Description: kept, unless it held the patient's name, which then goes
        // and only it.
        let (desc_in, desc_out) = (
            attr(fi, "SeriesDescription").unwrap_or(""),
            attr(fo, "SeriesDescription").unwrap_or(""),
        );
        let parts = name_parts(attr(fi, "PatientName").unwrap_or(""));
        let held: Vec<&String> = parts
            .iter()
            .filter(|n| desc_in.to_uppercase().contains(n.as_str()))
            .collect();
        if held.is_empty() {
            if desc_in != desc_out {
                fail(format!(
                    "Series Description {desc_in:?} became {desc_out:?}"
                ));
            }
        } else {
            renamed += 1;
            let words_in: BTreeSet<&str> = desc_in.split_whitespace().collect();
            if desc_out.is_empty()
                || held
                    .iter()
                    .any(|n| desc_out.to_uppercase().contains(n.as_str()))
                || !desc_out.split_whitespace().all(|w| words_in.contains(w))
            {
                fail(format!(
                    "Series Description holding the name became {desc_out:?}, not the rest of {desc_in:?}"
                ));
            }
        }
        let manufacturer = attr(fi, "Manufacturer").unwrap_or("").to_string();
        // Siemens CSA headers (0029,xx10) and (0029,xx20) go.
        if !strs(&fi["csa"]).is_empty() {
            csa_in += 1;
            if !strs(&fo["csa"]).is_empty() {
                fail(format!(
                    "Siemens CSA header elements kept: {:?}",
                    strs(&fo["csa"])
                ));
            }
        }
        // Philips' private UN sequence: gone, or (if the safe-private list keeps it)
        // kept with nothing identifying inside.
        if fi["philips_sq"].as_array().is_some_and(|a| !a.is_empty()) {
            planscan_in += 1;
            let sq = fo["philips_sq"].as_array().cloned().unwrap_or_default();
            if !planscan_safe && !sq.is_empty() {
                fail(format!(
                    "Philips (2005,xx80) sequence kept although not on the safe-private list: {sq:?}"
                ));
            }
            for s in &sq {
                let Some(items) = s["items"].as_array() else {
                    fail(format!(
                        "(2005,xx80) kept but not readable as a sequence: {s}"
                    ));
                    continue;
                };
                for (i, it) in items.iter().enumerate() {
                    for kw in ["PatientName", "PatientID"] {
                        if it[kw].as_str().is_some_and(|v| !v.is_empty()) {
                            fail(format!("(2005,xx80)[{i}] {kw} kept: {:?}", it[kw]));
                        }
                    }
                    for (kw, want) in [
                        ("StudyDate", attr(fo, "StudyDate")),
                        ("SeriesInstanceUID", attr(fo, "SeriesInstanceUID")),
                    ] {
                        if let Some(v) = it[kw].as_str() {
                            if Some(v) != want {
                                fail(format!(
                                    "(2005,xx80)[{i}] {kw} {v:?}, the output's is {want:?}"
                                ));
                            }
                        }
                    }
                    for el in strs(&it["private"]) {
                        // "(gggg,eeee) CREATOR": must be on the safe list.
                        let (tag, creator) = el.split_once(' ').unwrap_or((&el, ""));
                        let g = u16::from_str_radix(&tag[1..5], 16).unwrap_or(0);
                        let e = u16::from_str_radix(&tag[6..10], 16).unwrap_or(0);
                        if !vault::tables::private_is_safe(g, creator, (e & 0xFF) as u8) {
                            fail(format!(
                                "(2005,xx80)[{i}] keeps private {el}, not on the safe list"
                            ));
                        }
                    }
                }
            }
        }
        // Diffusion: the vendor's b-value elements and the standard one, unchanged.
        if kind_of(desc_in) != Some(Kind::Dwi) {
            continue;
        }
        *dwi_per_vendor.entry(manufacturer.clone()).or_default() += 1;
        let Some((_, elements)) = B_VALUE_ELEMENTS.iter().find(|(m, _)| *m == manufacturer) else {
            fail(format!("DWI of unknown manufacturer {manufacturer:?}"));
            continue;
        };
        for key in *elements {
            let (a, b) = (&fi["private"][key], &fo["private"][key]);
            if a.is_null() {
                continue;
            }
            *seen
                .entry((manufacturer.clone(), key.to_string()))
                .or_default() += 1;
            if a != b {
                fail(format!("private {key}: input {a}, output {b}"));
            }
            let creator = format!("{},{}", &key[..4], key[5..key.len() - 3].to_uppercase());
            if !strs(&fo["creators"]).contains(&creator) {
                fail(format!("private creator {creator} missing"));
            }
        }
        let (a, b) = (attr(fi, "DiffusionBValue"), attr(fo, "DiffusionBValue"));
        if a.is_some() {
            *seen
                .entry((manufacturer.clone(), "(0018,9087)".to_string()))
                .or_default() += 1;
        }
        if a.is_some() && a != b {
            fail(format!(
                "Diffusion b-value (0018,9087): input {a:?}, output {b:?}"
            ));
        }
    }
    for (manufacturer, elements) in B_VALUE_ELEMENTS {
        if dwi_per_vendor.get(*manufacturer).copied().unwrap_or(0) == 0 {
            failures.push(format!("no DWI of {manufacturer} in the corpus"));
        }
        for key in *elements {
            if !seen.contains_key(&(manufacturer.to_string(), key.to_string())) {
                failures.push(format!(
                    "no {manufacturer} DWI input holds {key}: nothing tested"
                ));
            }
        }
    }
    assert!(
        csa_in > 0 && planscan_in > 0 && renamed > 0,
        "{TEST}: corpus lacks CSA headers ({csa_in}), Philips sequences ({planscan_in}) or a name in a Series Description ({renamed})"
    );
    eprintln!(
        "{TEST}: DWI per vendor {dwi_per_vendor:?}; private b-values checked {seen:?}; \
         (2005,xx80) on the safe list: {planscan_safe}"
    );
    fail_with(TEST, &failures);
}

// ---------------------------------------------------------------------------------------

#[test]
fn baseline_and_followup_interval_is_exact() {
    const TEST: &str = "baseline_and_followup_interval_is_exact";
    let Some(py) = require_python(TEST) else {
        return;
    };
    let corpus = build(303);
    // A second, separate run over the follow-up studies alone.
    let followups = corpus.work.path().join("followups");
    for p in corpus.pairs.iter().filter(|p| {
        Path::new(&p.name)
            .components()
            .any(|c| c.as_os_str() == "study-2")
    }) {
        let to = followups.join(&p.name);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&p.input, &to).expect("copy follow-up");
    }
    // Follow-ups are of even patients, so not at every site.
    let sites: Vec<String> = corpus
        .summary
        .sites
        .iter()
        .filter(|s| followups.join(s).is_dir())
        .cloned()
        .collect();
    let (_, second) = deid_sites(
        &followups,
        &corpus.work.path().join("out2"),
        &sites,
        &followups,
    );
    assert!(!second.is_empty(), "no follow-up study in the corpus");

    let mut failures = Vec::new();
    let all: Vec<Pair> = corpus.pairs.iter().chain(&second).cloned().collect();
    let f = pair_facts(&py, &all, &mut failures);
    fail_with(TEST, &failures);

    // (site, input Patient ID) -> input study UID -> (input date, output dates, output study UIDs).
    type Studies<'a> = BTreeMap<&'a str, (&'a str, BTreeSet<&'a str>, BTreeSet<&'a str>)>;
    let mut patients: BTreeMap<(&str, &str), Studies> = BTreeMap::new();
    let mut pseudonyms: BTreeMap<(&str, &str), BTreeSet<String>> = BTreeMap::new();
    for p in &corpus.pairs {
        let (fi, fo) = (&f[&p.input], &f[&p.output]);
        let key = (p.site.as_str(), attr(fi, "PatientID").unwrap_or(""));
        let date_in = attr(fi, "StudyDate").unwrap_or("");
        let date_out = attr(fo, "StudyDate").unwrap_or("");
        if date_in == date_out {
            failures.push(format!("{}: Study Date {date_in} unchanged", p.name));
        }
        let s = patients
            .entry(key)
            .or_default()
            .entry(attr(fi, "StudyInstanceUID").unwrap_or(""))
            .or_insert((date_in, BTreeSet::new(), BTreeSet::new()));
        s.1.insert(date_out);
        s.2.insert(attr(fo, "StudyInstanceUID").unwrap_or(""));
        let (id, pn) = (
            attr(fo, "PatientID").unwrap_or(""),
            attr(fo, "PatientName").unwrap_or(""),
        );
        if id != pn || !id.starts_with("PN-") || id != p.pseudonym {
            failures.push(format!(
                "{}: Patient ID {id:?}, Patient Name {pn:?}, report pseudonym {:?}",
                p.name, p.pseudonym
            ));
        }
        pseudonyms.entry(key).or_default().insert(id.to_string());
    }
    let mut two = 0;
    for (key, studies) in &patients {
        let who = format!("patient {} of {}", key.1, key.0);
        for (uid, (_, dates, new_uids)) in studies {
            if dates.len() != 1 || new_uids.len() != 1 {
                failures.push(format!(
                    "{who}: study {uid}: its files have Study Dates {dates:?} and Study Instance UIDs {new_uids:?}"
                ));
            }
        }
        let ps = &pseudonyms[key];
        if ps.len() != 1 {
            failures.push(format!("{who}: several pseudonyms {ps:?}"));
        }
        if studies.len() != 2 {
            continue;
        }
        two += 1;
        let s: Vec<_> = studies.values().collect();
        fn first<'a>(set: &BTreeSet<&'a str>) -> &'a str {
            set.iter().next().copied().unwrap_or("")
        }
        let span = |a: &str, b: &str| Some(days(b)? - days(a)?);
        let before = span(s[0].0, s[1].0);
        let after = span(first(&s[0].1), first(&s[1].1));
        if before.is_none() || before != after {
            failures.push(format!(
                "{who}: {before:?} days between the studies before de-identification, {after:?} after"
            ));
        }
    }
    let all_ps: BTreeSet<&String> = pseudonyms.values().flatten().collect();
    if all_ps.len() != patients.len() {
        failures.push(format!(
            "{} pseudonyms for {} patients",
            all_ps.len(),
            patients.len()
        ));
    }
    let expected_two = corpus.summary.studies - corpus.summary.patients;
    assert!(
        two == expected_two && two >= 2,
        "{two} patients with two studies, expected {expected_two}"
    );

    // The separate run: same pseudonym, same shifted date, same output path.
    let first_run: BTreeMap<&str, &Pair> =
        corpus.pairs.iter().map(|p| (p.name.as_str(), p)).collect();
    for p in &second {
        let Some(q) = first_run.get(p.name.as_str()) else {
            failures.push(format!("{}: not in the first run", p.name));
            continue;
        };
        let (a, b) = (&f[&q.output], &f[&p.output]);
        for kw in ["PatientID", "PatientName", "StudyDate", "StudyInstanceUID"] {
            if attr(a, kw) != attr(b, kw) {
                failures.push(format!(
                    "{}: {kw} {:?} in the whole run, {:?} in the follow-up run",
                    p.name,
                    attr(a, kw),
                    attr(b, kw)
                ));
            }
        }
        if (p.pseudonym.as_str(), p.rel_out.as_str()) != (q.pseudonym.as_str(), q.rel_out.as_str())
        {
            failures.push(format!(
                "{}: output {} ({}) in the follow-up run, {} ({}) in the whole run",
                p.name, p.rel_out, p.pseudonym, q.rel_out, q.pseudonym
            ));
        }
    }
    fail_with(TEST, &failures);
}

// ---------------------------------------------------------------------------------------

/// Top-level text attributes of a file, read with vault's parser (only to choose files).
fn header(path: &Path) -> BTreeMap<(u16, u16), String> {
    let bytes = std::fs::read(path).expect("read file");
    let inflated = vault::dicom::inflate_if_needed(&bytes).expect("inflate");
    let file = vault::dicom::parse(&bytes, inflated.as_ref()).expect("parse");
    file.dataset
        .iter()
        .filter_map(|e| match &e.value {
            vault::dicom::Value::Bytes(b) => Some((
                (e.tag.group(), e.tag.element()),
                vault::dicom::trim_text(b).to_string(),
            )),
            _ => None,
        })
        .collect()
}

fn dciodvfy_errors(dciodvfy: &Path, file: &Path) -> BTreeSet<String> {
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
fn synthetic_outputs_pass_dcmdump_and_dciodvfy_without_new_errors() {
    const TEST: &str = "synthetic_outputs_pass_dcmdump_and_dciodvfy_without_new_errors";
    let Some(dcmdump) = require_tool(TEST, "dcmdump") else {
        return;
    };
    let Some(dciodvfy) = require_tool(TEST, "dciodvfy") else {
        return;
    };
    let corpus = build(404);
    // One series of each type per vendor (the first patient of each vendor, baseline
    // study), and every SEG.
    let mut chosen: BTreeMap<(String, Kind), (String, Vec<&Pair>)> = BTreeMap::new();
    let mut segs = Vec::new();
    for p in &corpus.pairs {
        let h = header(&p.input);
        let get = |g, e| h.get(&(g, e)).cloned().unwrap_or_default();
        if get(0x0008, 0x0060) == "SEG" {
            segs.push(p);
            continue;
        }
        let Some(kind) = kind_of(&get(0x0008, 0x103E)) else {
            panic!("{}: unknown series type {:?}", p.name, get(0x0008, 0x103E));
        };
        let series = get(0x0020, 0x000E);
        let entry = chosen
            .entry((get(0x0008, 0x0070), kind))
            .or_insert_with(|| (series.clone(), Vec::new()));
        if entry.0 == series {
            entry.1.push(p);
        }
    }
    let vendors: BTreeSet<&str> = chosen.keys().map(|(m, _)| m.as_str()).collect();
    assert_eq!(vendors.len(), 3, "vendors: {vendors:?}");
    assert_eq!(
        chosen.len(),
        12,
        "series types per vendor: {:?}",
        chosen.keys()
    );
    assert!(!segs.is_empty(), "no SEG in the corpus");
    let files: Vec<&Pair> = chosen
        .values()
        .flat_map(|(_, v)| v.iter().copied())
        .chain(segs.iter().copied())
        .collect();

    let mut failures = Vec::new();
    for p in &files {
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
        let before = dciodvfy_errors(&dciodvfy, &p.input);
        let after = dciodvfy_errors(&dciodvfy, &p.output);
        for new in after.difference(&before) {
            failures.push(format!("{}: dciodvfy, new: {new}", p.name));
        }
    }
    eprintln!(
        "{TEST}: {} outputs of {} series checked",
        files.len(),
        chosen.len() + segs.len()
    );
    fail_with(TEST, &failures);
}

// ---------------------------------------------------------------------------------------

/// Byte strings to search for, indexed by their first four bytes, so a file is read once
/// whatever the number of strings (every string here is four bytes or more).
struct Needles<'a> {
    list: Vec<(&'a str, Vec<u8>)>,
    by_prefix: std::collections::HashMap<[u8; 4], Vec<usize>>,
}

impl<'a> Needles<'a> {
    fn new(list: Vec<(&'a str, Vec<u8>)>) -> Self {
        let mut by_prefix: std::collections::HashMap<[u8; 4], Vec<usize>> = Default::default();
        for (i, (_, n)) in list.iter().enumerate() {
            let key: [u8; 4] = n[..4].try_into().expect("four bytes or more");
            by_prefix.entry(key).or_default().push(i);
        }
        Needles { list, by_prefix }
    }

    /// Every (needle index, offset) where a needle occurs in `hay`.
    fn occurrences(&self, hay: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (at, w) in hay.windows(4).enumerate() {
            let key: [u8; 4] = w.try_into().expect("window of four");
            for &i in self.by_prefix.get(&key).into_iter().flatten() {
                if hay[at..].starts_with(&self.list[i].1) {
                    out.push((i, at));
                }
            }
        }
        out
    }
}

/// Whether the match at `at` lies inside a `2.25.` UID: the bytes of digits and dots
/// around it start with `2.25.` and the needle is digits only. A new UID is the decimal
/// form of a keyed 128-bit hash; an eight-digit date can turn up in one by chance.
fn inside_new_uid(hay: &[u8], at: usize, len: usize) -> bool {
    let uid_byte = |b: u8| b.is_ascii_digit() || b == b'.';
    if !hay[at..at + len].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let mut start = at;
    while start > 0 && uid_byte(hay[start - 1]) {
        start -= 1;
    }
    hay[start..].starts_with(b"2.25.") && start + 5 <= at
}

/// The byte strings to look for: the identifier in UTF-8 and, when it has non-ASCII
/// characters Latin-1 can encode, in Latin-1.
fn encodings(id: &str) -> Vec<Vec<u8>> {
    let mut v = vec![id.as_bytes().to_vec()];
    if !id.is_ascii() && id.chars().all(|c| (c as u32) < 256) {
        v.push(id.chars().map(|c| c as u32 as u8).collect());
    }
    v
}

#[test]
fn no_planted_identifier_survives_anywhere() {
    const TEST: &str = "no_planted_identifier_survives_anywhere";
    let corpus = build(505);
    let ids: Vec<String> = serde_json::from_slice(
        &std::fs::read(corpus.src.join("identifiers.json")).expect("identifiers.json"),
    )
    .expect("identifiers.json is a list of strings");
    let needles = Needles::new(
        ids.iter()
            .filter(|i| i.chars().count() >= 4)
            .flat_map(|i| encodings(i).into_iter().map(move |e| (i.as_str(), e)))
            .collect(),
    );
    let searched: BTreeSet<&str> = needles.list.iter().map(|(i, _)| *i).collect();
    assert!(
        searched.len() >= 200,
        "only {} identifiers planted",
        searched.len()
    );

    // The search works: it finds the identifiers in what the generator wrote, DICOM files
    // and clinical CSVs (all but a few dates, listed in both DA and ISO form but written
    // in one of them only).
    let mut in_corpus: BTreeSet<&str> = BTreeSet::new();
    for f in vault::tree::walk(&corpus.src).expect("walk corpus") {
        if f.file_name().is_some_and(|n| n == "identifiers.json") {
            continue;
        }
        let hay = std::fs::read(&f).expect("read input");
        for (i, _) in needles.occurrences(&hay) {
            in_corpus.insert(needles.list[i].0);
        }
    }
    assert!(
        in_corpus.len() * 10 >= searched.len() * 9,
        "{TEST}: the search finds only {} of the {} identifiers in the corpus itself",
        in_corpus.len(),
        searched.len()
    );

    let mut files: Vec<PathBuf> = corpus.pairs.iter().map(|p| p.output.clone()).collect();
    for s in corpus.reports.keys() {
        files.push(corpus.out.join(s).join("report.json"));
    }
    // Everything written to the output folders is one of those.
    let written = vault::tree::walk(&corpus.out).expect("walk outputs");
    assert_eq!(written.len(), files.len(), "unexpected files in the output");

    let mut failures = Vec::new();
    let mut chance = 0usize;
    for file in &files {
        let hay = std::fs::read(file).expect("read output");
        let name = file
            .strip_prefix(&corpus.out)
            .unwrap_or(file)
            .display()
            .to_string();
        for (i, at) in needles.occurrences(&hay) {
            let (id, needle) = &needles.list[i];
            if inside_new_uid(&hay, at, needle.len()) {
                chance += 1;
                continue;
            }
            let before = &hay[at.saturating_sub(12)..at];
            failures.push(format!(
                "{name}: {id:?} ({} bytes{}) at byte {at}, after {before:02X?}",
                needle.len(),
                if needle.as_slice() == id.as_bytes() {
                    ""
                } else {
                    ", Latin-1"
                }
            ));
        }
    }
    eprintln!(
        "{TEST}: {} identifiers ({} encodings; {} of them found in the corpus) searched in {} output files; {chance} digit-only matches inside new 2.25. UIDs",
        searched.len(),
        needles.list.len(),
        in_corpus.len(),
        files.len()
    );
    fail_with(TEST, &failures);
}
