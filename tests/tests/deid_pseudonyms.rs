//! Pseudonyms are stable: the same files de-identified twice with the same key give the
//! same paths and the same bytes, the same patient in another upload gets the same
//! pseudonym, and another site gets other pseudonyms for the same local IDs.

use std::collections::BTreeMap;
use std::path::Path;

use hbs_tests::{keys, pydicom_test_files, require_python, site, walk_rel};
use vault::tree::{Report, Status};

fn tree_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walk_rel(dir)
        .into_iter()
        .map(|rel| {
            let b = std::fs::read(dir.join(&rel)).expect("read output");
            (rel, b)
        })
        .collect()
}

fn accepted_pseudonyms(r: &Report) -> BTreeMap<String, String> {
    r.files
        .iter()
        .filter(|e| e.status == Status::Accepted)
        .map(|e| (e.sha256.clone(), e.pseudonym.clone().expect("pseudonym")))
        .collect()
}

#[test]
fn same_patient_same_pseudonym_across_uploads() {
    const TEST: &str = "same_patient_same_pseudonym_across_uploads";
    let Some(py) = require_python(TEST) else {
        return;
    };
    let src = pydicom_test_files(&py);
    let work = tempfile::tempdir().expect("temp dir");
    let input = work.path().join("upload1");
    std::fs::create_dir_all(&input).expect("mkdir");
    // MR_small and MR_small_RLE: one patient (4MR1); CT_small, rtplan, liver: others;
    // test-SR has no Patient ID (pseudonym per study).
    let names = [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "CT_small.dcm",
        "rtplan.dcm",
        "liver_1frame.dcm",
        "test-SR.dcm",
    ];
    for n in names {
        std::fs::copy(src.join(n), input.join(n)).expect("copy input");
    }
    let keys = keys();
    let (a, b) = (site("SITE_A"), site("SITE_B"));
    let run = |inp: &Path, out: &str, s| {
        vault::tree::deid_tree(inp, &work.path().join(out), s, &keys).expect("deid_tree")
    };

    let r1 = run(&input, "a1", &a);
    let r2 = run(&input, "a2", &a);
    assert_eq!(r1.accepted, names.len(), "all inputs accepted: {r1:?}");
    assert_eq!(
        serde_json::to_string(&r1).expect("json"),
        serde_json::to_string(&r2).expect("json"),
        "same input, same key: same report"
    );
    let (t1, t2) = (
        tree_bytes(&work.path().join("a1")),
        tree_bytes(&work.path().join("a2")),
    );
    assert_eq!(
        t1.keys().collect::<Vec<_>>(),
        t2.keys().collect::<Vec<_>>(),
        "same input, same key: same output paths"
    );
    for (rel, bytes) in &t1 {
        assert!(
            &t2[rel] == bytes,
            "same input, same key: {rel} differs between the two runs"
        );
    }

    // One patient, two files, one pseudonym; different patients, different pseudonyms.
    let p1 = accepted_pseudonyms(&r1);
    let sha = |n: &str| vault::tree::sha256_hex(&std::fs::read(src.join(n)).expect("read"));
    assert_eq!(p1[&sha("MR_small.dcm")], p1[&sha("MR_small_RLE.dcm")]);
    assert_ne!(p1[&sha("MR_small.dcm")], p1[&sha("CT_small.dcm")]);
    assert_ne!(p1[&sha("CT_small.dcm")], p1[&sha("rtplan.dcm")]);

    // The same patient in a later, separate upload.
    let later = work.path().join("upload2");
    std::fs::create_dir_all(&later).expect("mkdir");
    std::fs::copy(
        src.join("MR_small_implicit.dcm"),
        later.join("MR_small_implicit.dcm"),
    )
    .expect("copy");
    let r3 = run(&later, "a3", &a);
    assert_eq!(r3.accepted, 1);
    assert_eq!(
        r3.files[0].pseudonym,
        r1.files
            .iter()
            .find(|e| e.sha256 == sha("MR_small.dcm"))
            .and_then(|e| e.pseudonym.clone()),
        "the same patient in another upload gets the same pseudonym"
    );

    // Another site: every pseudonym differs, and none of site A's appears in its bytes.
    let rb = run(&input, "b1", &b);
    let pb = accepted_pseudonyms(&rb);
    assert_eq!(pb.len(), p1.len());
    let tb = tree_bytes(&work.path().join("b1"));
    for (sha, pa) in &p1 {
        assert_ne!(
            &pb[sha], pa,
            "SITE_B gave SITE_A's pseudonym to the same input"
        );
        for (rel, bytes) in &tb {
            assert!(
                !bytes.windows(pa.len()).any(|w| w == pa.as_bytes()),
                "SITE_A's pseudonym {pa} appears in SITE_B's {rel}"
            );
        }
    }
}
