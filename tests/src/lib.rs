//! Shared helpers for the end-to-end tests: finding the real clients (a Python with
//! pydicom, dcmtk's `dcmdump`, dicom3tools' `dciodvfy`), running the scripts of
//! `tests/py/`, and building the pydicom corpus the de-identification tests share.
//!
//! A missing client never makes a test pass silently: on CI (`CI=true`) the test fails
//! naming what is missing; elsewhere it prints `SKIPPED: <test>: <tool> missing (run bash
//! .ci/run)` to stderr and returns.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use vault::pseudonym::{Pseudonymizer, SiteId};
use vault::tree::{FileReport, Report, Status};

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Whether we run on CI, where every client must be present.
pub fn on_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// Reports a missing client: fails the test on CI, skips it loudly elsewhere. Always
/// `None`, so a caller writes `let Some(x) = ... else { return };`.
pub fn missing<T>(test: &str, what: &str) -> Option<T> {
    if on_ci() {
        panic!("{test}: {what} missing; CI must provide it (bash .ci/run installs it)");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of
    // passing tests, and a skip must not go unnoticed.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: {what} missing (run bash .ci/run)"
    );
    None
}

/// The Python interpreter: `HBS_PYTHON`, else `<repo>/.venv/bin/python` if it exists.
pub fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HBS_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let venv = repo_root().join(".venv/bin/python");
    venv.exists().then_some(venv)
}

/// An executable on `PATH`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The Python interpreter with pydicom importable, or the missing-client verdict.
pub fn require_python(test: &str) -> Option<PathBuf> {
    let Some(py) = python() else {
        return missing(test, "python (HBS_PYTHON or .venv/bin/python)");
    };
    let ok = Command::new(&py)
        .args(["-c", "import pydicom"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        return missing(test, &format!("pydicom (in {})", py.display()));
    }
    Some(py)
}

/// A command-line tool on `PATH`, or the missing-client verdict.
pub fn require_tool(test: &str, name: &str) -> Option<PathBuf> {
    match tool(name) {
        Some(p) => Some(p),
        None => missing(test, name),
    }
}

/// pydicom's bundled `pydicom/data/test_files`, as the interpreter reports it.
pub fn pydicom_test_files(py: &Path) -> PathBuf {
    let out = Command::new(py)
        .args([
            "-c",
            "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        ])
        .output()
        .expect("run python");
    assert!(out.status.success(), "python could not locate pydicom");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        dir.join("MR_small.dcm").is_file(),
        "pydicom test files not found at {}",
        dir.display()
    );
    dir
}

/// Runs `tests/py/<script>` with a JSON job and parses the JSON it prints.
pub fn run_py(py: &Path, script: &str, job: &serde_json::Value) -> serde_json::Value {
    let mut job_file = tempfile::NamedTempFile::new().expect("job file");
    serde_json::to_writer(&mut job_file, job).expect("write job");
    let script_path = repo_root().join("tests/py").join(script);
    let out = Command::new(py)
        .arg("-B") // no __pycache__ in the source tree
        .arg(&script_path)
        .arg(job_file.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script_path.display()));
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The broker secret of the tests (not a secret: a fixed test key).
pub fn keys() -> Pseudonymizer {
    Pseudonymizer::new(b"hbs end-to-end tests: fixed key, not a secret").expect("key")
}

/// A site code.
pub fn site(code: &str) -> SiteId {
    SiteId::new(code).expect("site code")
}

/// Copies the regular files at the top level of `src` (not subfolders) into `dst`.
pub fn copy_top_level(src: &Path, dst: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dst).expect("create copy folder");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(src).expect("read folder") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("file type").is_file() {
            let to = dst.join(entry.file_name());
            std::fs::copy(entry.path(), &to).expect("copy");
            out.push(to);
        }
    }
    out.sort();
    out
}

/// File meta elements by (group, element): their value bytes.
pub type MetaElements = BTreeMap<(u16, u16), Vec<u8>>;

/// The file meta elements of a Part 10 file (explicit VR little endian, group 0002),
/// read independently of vault: `(end offset of the meta group, tag -> value bytes)`.
pub fn file_meta(bytes: &[u8]) -> Option<(usize, MetaElements)> {
    if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
        return None;
    }
    let mut pos = 132;
    let mut map = BTreeMap::new();
    while pos + 8 <= bytes.len() {
        let group = u16::from_le_bytes([bytes[pos], bytes[pos + 1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let vr = &bytes[pos + 4..pos + 6];
        let long = matches!(
            vr,
            b"OB"
                | b"OW"
                | b"OF"
                | b"OD"
                | b"OL"
                | b"OV"
                | b"SQ"
                | b"UN"
                | b"UT"
                | b"UC"
                | b"UR"
                | b"SV"
                | b"UV"
        );
        let (len, header) = if long {
            let b = bytes.get(pos + 8..pos + 12)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        } else {
            (
                u16::from_le_bytes([bytes[pos + 6], bytes[pos + 7]]) as usize,
                8,
            )
        };
        let value = bytes.get(pos + header..pos + header + len)?;
        map.insert((group, element), value.to_vec());
        pos += header + len;
    }
    Some((pos, map))
}

/// Trims DICOM padding from a text value.
pub fn trim(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_matches(|c| c == ' ' || c == '\0')
        .to_string()
}

/// The transfer syntax of a Part 10 file, from its meta header.
pub fn transfer_syntax(bytes: &[u8]) -> Option<String> {
    let (_, meta) = file_meta(bytes)?;
    meta.get(&(0x0002, 0x0010)).map(|v| trim(v))
}

/// Deflated Explicit VR Little Endian.
pub const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// The bytes of a file as a reader sees them: for a deflated transfer syntax, the meta
/// header followed by the inflated data set (with flate2, not vault's inflater); any
/// other file as it is. Returns the bytes and the offset where the data set starts.
pub fn readable_bytes(bytes: &[u8]) -> (Vec<u8>, usize) {
    match file_meta(bytes) {
        Some((end, meta))
            if meta.get(&(0x0002, 0x0010)).map(|v| trim(v)).as_deref() == Some(DEFLATED) =>
        {
            let mut out = bytes[..end].to_vec();
            flate2::read::DeflateDecoder::new(&bytes[end..])
                .read_to_end(&mut out)
                .expect("deflated data set of an output inflates");
            (out, end)
        }
        Some((end, _)) => (bytes.to_vec(), end),
        None => (bytes.to_vec(), 0),
    }
}

/// Paths of the regular files under `dir`, relative to it, sorted.
pub fn walk_rel(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = vault::tree::walk(dir)
        .expect("walk folder")
        .iter()
        .map(|p| rel_name(dir, p))
        .collect();
    out.sort();
    out
}

/// One accepted input and its de-identified output, one to one.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The input's path relative to the corpus folder (test data; fine in messages).
    pub name: String,
    /// The input file.
    pub input: PathBuf,
    /// The output file.
    pub output: PathBuf,
    /// The report entry of the input.
    pub entry: FileReport,
}

/// pydicom's bundled test files run through `deid_tree`, with every accepted input
/// paired with its own output.
pub struct Corpus {
    /// The folder given to `deid_tree` (a copy; see [`build_pydicom_corpus`]).
    pub dir: PathBuf,
    /// The report of the run over the whole folder.
    pub report: Report,
    /// Input path of each report index (the sorted walk `deid_tree` does).
    pub inputs: Vec<PathBuf>,
    /// Accepted inputs and their outputs.
    pub pairs: Vec<Pair>,
}

impl Corpus {
    /// The report entry of the input with these bytes (SHA-256 match).
    pub fn entry_for(&self, bytes: &[u8]) -> Option<&FileReport> {
        let sha = vault::tree::sha256_hex(bytes);
        self.report.files.iter().find(|e| e.sha256 == sha)
    }
}

/// Name of an input relative to the corpus folder.
pub fn rel_name(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// Builds the corpus in `work`:
///
/// 1. copies the top level of pydicom's `test_files` to `work/corpus`;
/// 2. adds `declared/`: copies, written by pydicom, of the Secondary Capture and
///    Ultrasound images that vault holds back because they do not say whether text is
///    burned into their pixels, now saying Burned In Annotation NO (pydicom's only JPEG
///    baseline and deflated images are of those classes);
/// 3. adds `declared/UN_sequence_with_identity.dcm`: `UN_sequence.dcm` with the
///    attributes a storable instance needs put in front of its explicit-VR `UN`
///    sequence of undefined length, whose bytes are left as they are;
/// 4. runs `deid_tree` over the folder. Inputs sharing a SOP Instance UID (pydicom's
///    `MR_small*` files are one instance in eight encodings) share an output path, so
///    each of those is de-identified again alone, to pair it with its own output.
pub fn build_pydicom_corpus(py: &Path, work: &Path) -> Corpus {
    let src = pydicom_test_files(py);
    let dir = work.join("corpus");
    let copied = copy_top_level(&src, &dir);
    let declared = dir.join("declared");
    let job = serde_json::json!({
        "inputs": copied.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
        "out_dir": declared.to_string_lossy(),
    });
    let res = run_py(py, "declare_no_burned_in.py", &job);
    assert!(
        res["written"].as_array().is_some_and(|w| !w.is_empty()),
        "declare_no_burned_in.py wrote nothing: {res}"
    );
    let un = std::fs::read(dir.join("UN_sequence.dcm")).expect("UN_sequence.dcm in pydicom");
    std::fs::write(
        declared.join("UN_sequence_with_identity.dcm"),
        with_identity(&un),
    )
    .expect("write UN_sequence_with_identity.dcm");

    let (keys, site) = (keys(), site("SITE_A"));
    let inputs = vault::tree::walk(&dir).expect("walk corpus");
    let out = work.join("out");
    let report = vault::tree::deid_tree(&dir, &out, &site, &keys).expect("deid_tree over corpus");
    assert_eq!(
        report.files.len(),
        inputs.len(),
        "one report entry per input"
    );
    for e in &report.files {
        let bytes = std::fs::read(&inputs[e.index]).expect("read input");
        assert_eq!(
            vault::tree::sha256_hex(&bytes),
            e.sha256,
            "report index {} does not name {}",
            e.index,
            inputs[e.index].display()
        );
    }

    let mut by_output: BTreeMap<&str, Vec<&FileReport>> = BTreeMap::new();
    for e in &report.files {
        if e.status == Status::Accepted {
            let o = e
                .output
                .as_deref()
                .expect("accepted entry names its output");
            by_output.entry(o).or_default().push(e);
        }
    }
    let mut pairs = Vec::new();
    for (rel, entries) in by_output {
        if let [e] = entries.as_slice() {
            pairs.push(Pair {
                name: rel_name(&dir, &inputs[e.index]),
                input: inputs[e.index].clone(),
                output: out.join(rel),
                entry: (*e).clone(),
            });
            continue;
        }
        for e in entries {
            let input = &inputs[e.index];
            let solo_in = work.join("solo").join(e.index.to_string());
            std::fs::create_dir_all(&solo_in).expect("solo folder");
            let solo_file = solo_in.join(input.file_name().expect("file name"));
            std::fs::copy(input, &solo_file).expect("copy solo input");
            let solo_out = work.join("solo-out").join(e.index.to_string());
            let r = vault::tree::deid_tree(&solo_in, &solo_out, &site, &keys).expect("deid_tree");
            let s = &r.files[0];
            assert_eq!(
                (s.status, &s.output),
                (e.status, &e.output),
                "{}: alone, not the same verdict as in the whole run",
                rel_name(&dir, input)
            );
            pairs.push(Pair {
                name: rel_name(&dir, input),
                input: input.clone(),
                output: solo_out.join(rel),
                entry: e.clone(),
            });
        }
    }
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    Corpus {
        dir,
        report,
        inputs,
        pairs,
    }
}

/// One explicit VR little endian element with a 16-bit length, padded to even length.
fn explicit_le(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == b"UI" { 0 } else { b' ' });
    }
    let mut out = Vec::with_capacity(8 + v.len());
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend_from_slice(&v);
    out
}

/// `UN_sequence.dcm` (a file holding only a private explicit-VR `UN` sequence of
/// undefined length) made storable: SOP Class and Instance UID (from its meta header),
/// a patient, a study and a series are inserted before the sequence, whose bytes are
/// kept. Made-up values, under a test root.
pub fn with_identity(un_sequence: &[u8]) -> Vec<u8> {
    let (end, meta) = file_meta(un_sequence).expect("UN_sequence.dcm has a meta header");
    let sop_class = trim(&meta[&(0x0002, 0x0002)]);
    let sop_instance = trim(&meta[&(0x0002, 0x0003)]);
    let mut out = un_sequence[..end].to_vec();
    for el in [
        explicit_le(0x0008, 0x0016, b"UI", sop_class.as_bytes()),
        explicit_le(0x0008, 0x0018, b"UI", sop_instance.as_bytes()),
        explicit_le(0x0008, 0x0020, b"DA", b"20140427"),
        explicit_le(0x0008, 0x0060, b"CS", b"CT"),
        explicit_le(0x0010, 0x0010, b"PN", b"Sequence^Unknown^Vera"),
        explicit_le(0x0010, 0x0020, b"LO", b"UNSEQ-20140427"),
        explicit_le(0x0020, 0x000D, b"UI", b"1.2.826.0.1.3680043.10.1071.1.1"),
        explicit_le(0x0020, 0x000E, b"UI", b"1.2.826.0.1.3680043.10.1071.1.2"),
    ] {
        out.extend_from_slice(&el);
    }
    out.extend_from_slice(&un_sequence[end..]);
    out
}

/// Normalises a dciodvfy message so the same problem compares equal in an input and
/// its output: values in brackets, quotes and `= <...>` are dropped, and numbers and
/// UIDs become `#` (hex tags such as `0x0008` and names such as `Element=<X>` stay).
pub fn normalise_dciodvfy(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = if i > 0 { chars[i - 1] } else { ' ' };
        match c {
            '[' | '"' => {
                let close = if c == '[' { ']' } else { '"' };
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == close)
                    .map(|p| i + 1 + p)
                    .unwrap_or(chars.len() - 1);
                out.push(c);
                out.push(close);
                i = end + 1;
            }
            '<' if prev != '=' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&d| d == '>')
                    .map(|p| i + 1 + p)
                    .unwrap_or(chars.len() - 1);
                out.push_str("<>");
                i = end + 1;
            }
            '0' if chars.get(i + 1) == Some(&'x') && !prev.is_alphanumeric() => {
                let mut j = i + 2;
                while j < chars.len() && chars[j].is_ascii_hexdigit() {
                    j += 1;
                }
                out.extend(&chars[i..j]);
                i = j;
            }
            // "Type 1", "Type 2", "Type 1C": the kind of requirement, not a value.
            d if d.is_ascii_digit() && out.ends_with("Type ") => {
                out.push(d);
                i += 1;
            }
            d if d.is_ascii_digit() && !prev.is_alphanumeric() && prev != '_' => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                    j += 1;
                }
                out.push('#');
                i = j;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A fresh PostgreSQL database at `HBS_TEST_PG` (default
/// `postgres://postgres@127.0.0.1:5432/test`): its URL, or `None` with a loud message
/// when PostgreSQL cannot be reached outside CI (under `CI=true` the test fails).
pub async fn fresh_pg(test: &str) -> Option<String> {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let base = std::env::var("HBS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) => {
            if on_ci() {
                panic!("{test}: PostgreSQL at {base} is required under CI=true: {e}");
            }
            eprintln!("SKIPPED: {test} on PostgreSQL: cannot connect to {base}: {e}");
            return None;
        }
    };
    let mut r = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r)
        .expect("system randomness");
    let name = format!("hbs_test_{}", hex::encode(r));
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("CREATE DATABASE");
    let (head, _) = base.rsplit_once('/').unwrap_or((&base, ""));
    Some(format!("{head}/{name}"))
}

/// Database URLs to run a test against: SQLite in `dir`, and a fresh PostgreSQL database
/// when reachable (see [`fresh_pg`]).
pub async fn database_urls(test: &str, dir: &Path) -> Vec<String> {
    let mut v = vec![format!("sqlite:{}?mode=rwc", dir.join("hbs.db").display())];
    if let Some(pg) = fresh_pg(test).await {
        v.push(pg);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dciodvfy_messages_lose_values_not_names() {
        assert_eq!(
            normalise_dciodvfy(
                "Error - Value invalid for this VR - (0x0008,0x1155) UI Referenced SOP Instance UID  UI [1] = <0> - Nothing but zero components"
            ),
            "Error - Value invalid for this VR - (0x0008,0x1155) UI Referenced SOP Instance UID UI [] = <> - Nothing but zero components"
        );
        assert_eq!(
            normalise_dciodvfy(
                "Error - Missing attribute Type 2 Required Element=<OperatorsName> Module=<RTSeries>"
            ),
            "Error - Missing attribute Type 2 Required Element=<OperatorsName> Module=<RTSeries>"
        );
        assert_eq!(
            normalise_dciodvfy("Error - but have IMAGE ReferencedSOPInstanceUID 2.25.2579151974"),
            normalise_dciodvfy("Error - but have IMAGE ReferencedSOPInstanceUID 1.2.3.5.6.7"),
        );
        assert_eq!(
            normalise_dciodvfy("Error - Illegal root for UID - \"9.8.7.6\" in (0x0008,0x1155)"),
            "Error - Illegal root for UID - \"\" in (0x0008,0x1155)"
        );
    }
}
