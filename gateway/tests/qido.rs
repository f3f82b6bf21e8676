//! QIDO-RS against a running `hbs serve`, searched with Python's dicomweb-client and curl:
//! what was stored is found, at every level, with pseudonymized values only, and each
//! caller sees only what its role and site allow.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn val<'a>(item: &'a serde_json::Value, tag: &str) -> &'a serde_json::Value {
    &item[tag]["Value"][0]
}

fn uids(results: &serde_json::Value, tag: &str) -> BTreeSet<String> {
    results["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {results}"))
        .iter()
        .map(|i| val(i, tag).as_str().unwrap().to_string())
        .collect()
}

#[test]
fn qido_rs_finds_what_was_stored_and_only_what_the_caller_may_see() {
    if python().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 2);
    let s = start(&data);
    let dev = data.join("dev-certs");
    let files: Vec<PathBuf> = walk(&corpus)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    let r = dicomweb_store(&s, &dev.join("data-provider"), &files, None);
    assert_eq!(r["status"], 200, "{r}");
    // What was stored, by (pseudonymized) study, from the Store Instances response.
    let mut stored: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for item in r["response"]["00081199"]["Value"].as_array().unwrap() {
        let url = val(item, "00081190").as_str().unwrap();
        let study = url.split('/').nth(3).unwrap().to_string();
        let sop = val(item, "00081155").as_str().unwrap().to_string();
        stored.entry(study).or_default().insert(sop);
    }
    assert!(stored.len() >= 2, "two patients give at least two studies");

    let mut answers = Vec::new();
    let operator = dev.join("operator");
    // Studies: every stored study, with its instance count.
    let studies = dicomweb_search(&s, &operator, "studies", &[]);
    assert_eq!(studies["status"], 200, "{studies}");
    assert_eq!(
        uids(&studies, "0020000D"),
        stored.keys().cloned().collect::<BTreeSet<_>>()
    );
    for st in studies["results"].as_array().unwrap() {
        let uid = val(st, "0020000D").as_str().unwrap();
        assert_eq!(
            val(st, "00201208").as_u64().unwrap() as usize,
            stored[uid].len()
        );
        assert!(val(st, "00100020").as_str().unwrap().starts_with("PN-"));
        assert!(st["00080061"]["Value"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("MR")));
        assert_eq!(val(st, "00080020").as_str().unwrap().len(), 8);
    }
    answers.push(studies.to_string());

    // Series of one study add up to the study; instances of a series are the stored ones.
    let (study, sops) = stored.iter().next().unwrap();
    let series = dicomweb_search(&s, &operator, "series", &["--study", study]);
    let list = series["results"].as_array().unwrap();
    assert!(!list.is_empty());
    let total: u64 = list
        .iter()
        .map(|x| val(x, "00201209").as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, sops.len());
    let mut found = BTreeSet::new();
    for x in list {
        assert!(!val(x, "00080060").as_str().unwrap().is_empty());
        let se = val(x, "0020000E").as_str().unwrap();
        let inst = dicomweb_search(
            &s,
            &operator,
            "instances",
            &["--study", study, "--series", se],
        );
        let got = uids(&inst, "00080018");
        assert_eq!(got.len() as u64, val(x, "00201209").as_u64().unwrap());
        found.extend(got);
        answers.push(inst.to_string());
    }
    assert_eq!(
        &found, sops,
        "instances of the study's series are what was stored"
    );
    answers.push(series.to_string());

    // Matching by pseudonym, modality and date.
    let first = &studies["results"][0];
    let pseudonym = val(first, "00100020").as_str().unwrap();
    let by_patient = dicomweb_search(
        &s,
        &operator,
        "studies",
        &[&format!("PatientID={pseudonym}")],
    );
    let expected: BTreeSet<String> = studies["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| val(x, "00100020") == pseudonym)
        .map(|x| val(x, "0020000D").as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids(&by_patient, "0020000D"), expected);
    let date = val(first, "00080020").as_str().unwrap();
    let by_date = dicomweb_search(
        &s,
        &operator,
        "studies",
        &[&format!("StudyDate={date}-{date}")],
    );
    for x in by_date["results"].as_array().unwrap() {
        assert_eq!(val(x, "00080020"), date);
    }
    assert!(uids(&by_date, "0020000D").contains(val(first, "0020000D").as_str().unwrap()));
    let seg = dicomweb_search(&s, &operator, "series", &["Modality=SEG"]);
    for x in seg["results"].as_array().unwrap() {
        assert_eq!(val(x, "00080060"), "SEG");
    }
    let none = dicomweb_search(&s, &operator, "studies", &["PatientID=PN-nobody"]);
    assert_eq!(none["results"], serde_json::json!([]));

    // Paging: limit and offset, and the standard Warning when more results match.
    let one = dicomweb_search(&s, &operator, "studies", &["--limit", "1"]);
    let next = dicomweb_search(&s, &operator, "studies", &["--limit", "1", "--offset", "1"]);
    assert_eq!(one["results"].as_array().unwrap().len(), 1);
    assert_ne!(uids(&one, "0020000D"), uids(&next, "0020000D"));
    let (code, _, headers) = curl_get_headers(&s, "/dicomweb/studies?limit=1", &operator);
    assert_eq!(code, 200);
    assert!(
        headers.to_ascii_lowercase().contains("warning: 299"),
        "{headers}"
    );

    // A key the gateway does not search by: 400 naming the key, not echoing the value.
    let (code, body, _) =
        curl_get_headers(&s, "/dicomweb/studies?PatientName=DOE%5EJOHN", &operator);
    assert_eq!(code, 400);
    assert!(
        body.contains("PatientName") && !body.contains("DOE"),
        "{body}"
    );
    let (code, _, _) = curl_get_headers(&s, "/dicomweb/studies?StudyDate=2020", &operator);
    assert_eq!(code, 400);

    // Who sees what: auditors as operators; the contributing site its own studies; another
    // site nothing of them, even asked by UID; researchers nothing (until they hold grants).
    let audit = dicomweb_search(&s, &dev.join("auditor"), "studies", &[]);
    assert_eq!(audit["results"], studies["results"]);
    let own = dicomweb_search(&s, &dev.join("data-provider"), "studies", &[]);
    assert_eq!(own["results"], studies["results"]);
    let site_b = d.path().join("site-b");
    issue(&data, "data-provider", "bob", Some("SITE_B"), &site_b);
    let other = dicomweb_search(&s, &site_b, "studies", &[]);
    assert_eq!(other["results"], serde_json::json!([]), "{other}");
    let other = dicomweb_search(&s, &site_b, "instances", &["--study", study]);
    assert_eq!(other["results"], serde_json::json!([]), "{other}");
    let researcher = dicomweb_search(&s, &dev.join("researcher"), "studies", &[]);
    assert_eq!(researcher["status"], 403);

    // Nothing identifying of the source files in any answer.
    let ids: Vec<String> =
        serde_json::from_slice(&std::fs::read(corpus.join("identifiers.json")).unwrap()).unwrap();
    for a in &answers {
        for id in ids.iter().filter(|i| i.len() >= 6) {
            assert!(!a.contains(id.as_str()), "{id} in a QIDO-RS answer");
        }
    }
}

/// `hbs whoami` and `hbs search`, the command-line clients, with flags and with the
/// HBS_* variables; --json is what the gateway answered.
#[test]
fn hbs_search_and_whoami_from_the_command_line() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let s = start(&data);
    let dev = data.join("dev-certs");
    let hbs = |cert: &str, args: &[&str]| {
        let dir = dev.join(cert);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_hbs"))
            .args(args)
            .env("HBS_GATEWAY", format!("https://localhost:{}", s.port))
            .env("HBS_CERT", dir.join("cert.pem"))
            .env("HBS_KEY", dir.join("key.pem"))
            .env("HBS_CA", data.join("ca/ca.pem"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, out, _) = hbs("auditor", &["whoami", "--json"]);
    assert_eq!(code, Some(0));
    let me: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(me["role"], "auditor");
    let (_, out, _) = hbs("data-provider", &["whoami"]);
    assert!(
        out.starts_with("data-provider dev-data-provider at SITE_A"),
        "{out}"
    );

    // Contribute, then find it with hbs search; flags given explicitly this time.
    let provider = dev.join("data-provider");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hbs"))
        .arg("contribute")
        .arg("--gateway")
        .arg(format!("https://localhost:{}", s.port))
        .arg("--cert")
        .arg(provider.join("cert.pem"))
        .arg("--key")
        .arg(provider.join("key.pem"))
        .arg("--ca")
        .arg(data.join("ca/ca.pem"))
        .arg("--state")
        .arg(d.path().join("state.json"))
        .arg("--receipts")
        .arg(d.path().join("receipts"))
        .arg("--json")
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stored = summary["stored"].as_u64().unwrap();
    assert!(stored > 0, "{summary}");

    let (code, out, _) = hbs("operator", &["search", "studies", "--json"]);
    assert_eq!(code, Some(0));
    let studies: serde_json::Value = serde_json::from_str(&out).unwrap();
    let total: u64 = studies
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["00201208"]["Value"][0].as_u64().unwrap())
        .sum();
    assert_eq!(total, stored);
    let study = studies[0]["0020000D"]["Value"][0].as_str().unwrap();
    let patient = studies[0]["00100020"]["Value"][0].as_str().unwrap();
    let (code, out, err) = hbs(
        "operator",
        &["search", "series", "--study", study, "Modality=MR"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("SERIES"), "{out}");
    assert!(out.contains(patient), "{out}");
    assert!(err.contains(" series"), "{err}");
    // Refusals: the gateway's reason, non-zero exit.
    let (code, _, err) = hbs("researcher", &["search", "studies"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("403"), "{err}");
    let (code, _, err) = hbs("operator", &["search", "studies", "PatientName=X"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("400") && err.contains("PatientName"), "{err}");
}
