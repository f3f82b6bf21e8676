//! The audit log behind a running `hbs serve`: every route records its decision, every
//! contribution its effect, nothing is done when nothing can be recorded, no identifying
//! value reaches the log, receipts carry inclusion proofs, and `hbs audit verify` checks
//! the log offline and against a kept checkpoint.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn hbs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hbs"));
    c.env_remove("HBS_DATABASE_URL");
    c
}

fn dcm_files(corpus: &Path) -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = walk(corpus)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    f.sort();
    f
}

/// Events of the log, as an auditor lists them through the gateway.
fn events(s: &Server, query: &str) -> Vec<serde_json::Value> {
    let auditor = s.data.join("dev-certs/auditor");
    let (code, body, _) =
        curl_get_headers(s, &format!("/audit/events?limit=1000{query}"), &auditor);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect()
}

fn request_id(headers: &str) -> String {
    headers
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id in {headers}"))
        .trim()
        .to_string()
}

#[test]
fn every_route_records_its_decision_and_contributions_their_effect() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let files = dcm_files(&corpus);
    let s = start(&data);
    let dev = data.join("dev-certs");
    let table: serde_json::Value =
        serde_json::from_slice(&hbs().arg("routes").output().unwrap().stdout).unwrap();
    for r in table.as_array().unwrap() {
        let (m, p) = (r["method"].as_str().unwrap(), r["path"].as_str().unwrap());
        let roles: Vec<&str> = r["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        let path = p
            .replace("{study}", "1.2.3")
            .replace("{series}", "1.2.4")
            .replace("{id}", "req-0000");
        let action = format!("http {m} {p}");
        // Allowed: recorded as allow, with the request's ID.
        let admitted = dev.join(roles[0]);
        let rid = if m == "POST" {
            let (_, _, headers) = post_parts_to(
                &s,
                &admitted,
                &path,
                &[("application/dicom", std::fs::read(&files[0]).unwrap())],
                d.path(),
            );
            request_id(&headers)
        } else {
            request_id(&curl_get_headers(&s, &path, &admitted).2)
        };
        let evs = events(
            &s,
            &format!(
                "&action={}",
                action
                    .replace(' ', "%20")
                    .replace('{', "%7B")
                    .replace('}', "%7D")
            ),
        );
        assert!(
            evs.iter()
                .any(|e| e["request_id"] == rid.as_str() && e["decision"] == "allow"),
            "{m} {p}: no allow event for request {rid}"
        );
        // A state-changing route also records what it did, in the same request (a count
        // is a POST that changes nothing).
        if m != "GET" && p != "/cohort/count" {
            // Contributions record each instance; governance steps their step (here
            // refused: the body is not what they take, or the request does not exist).
            let effect = if p.starts_with("/dicomweb") {
                "contribution.instance".to_string()
            } else if p == "/requests" {
                "policy.submit".to_string()
            } else if p == "/jobs" {
                "job.submit".to_string()
            } else if p == "/models" {
                "model.register".to_string()
            } else if p == "/jobs/{id}/release" {
                "job.release".to_string()
            } else {
                format!("policy.{}", p.rsplit('/').next().unwrap_or(""))
            };
            let effects: Vec<_> = events(&s, &format!("&action={effect}"))
                .into_iter()
                .filter(|e| e["request_id"] == rid.as_str())
                .collect();
            assert!(
                !effects.is_empty(),
                "{m} {p} changed state and recorded nothing"
            );
        }
        // Refused: recorded as deny.
        if let Some(other) = ["researcher", "compute", "ethics-board"]
            .iter()
            .find(|r| !roles.contains(r))
        {
            let (_, _, headers) = curl_get_headers(&s, &path, &dev.join(other));
            if m == "GET" {
                let rid = request_id(&headers);
                let evs = events(&s, "&decision=deny");
                assert!(
                    evs.iter().any(|e| e["request_id"] == rid.as_str()),
                    "{m} {p}: the refusal of {other} is not recorded"
                );
            }
        }
    }
}

#[test]
fn nothing_is_done_when_the_log_cannot_record() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let files = dcm_files(&corpus);
    let s = start(&data);
    let provider = data.join("dev-certs/data-provider");
    assert_eq!(curl_get_headers(&s, "/whoami", &provider).0, 200);

    // The log becomes unwritable (as a full disk or a broken database would make it).
    let db = format!("sqlite://{}", data.join("hbs.db").display());
    let block = "CREATE TRIGGER block_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END";
    sql(&db, block);
    let (code, body, _) = post_parts(
        &s,
        &provider,
        &[("application/dicom", std::fs::read(&files[0]).unwrap())],
        d.path(),
    );
    assert_eq!(code, "503", "{body}");
    assert_eq!(stats(&data)["instances"], 0, "nothing stored");
    assert_eq!(curl_get_headers(&s, "/whoami", &provider).0, 503);
    let o = hbs()
        .args(["vault", "rotate-kek", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!o.status.success(), "an unrecorded key rotation is refused");

    // Only the instance's own event cannot be written (the request's is): the catalogue
    // row, committed in the same transaction, is rolled back with it.
    sql(&db, "DROP TRIGGER block_audit");
    sql(
        &db,
        "CREATE TRIGGER block_stored BEFORE INSERT ON audit_events WHEN NEW.action = 'contribution.instance' AND NEW.entry LIKE '%\"outcome\":\"stored\"%' BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    );
    let (code, body, _) = post_parts(
        &s,
        &provider,
        &[("application/dicom", std::fs::read(&files[0]).unwrap())],
        d.path(),
    );
    assert_eq!(code, "503", "{body}");
    assert_eq!(stats(&data)["instances"], 0, "the row went with its event");
    let failed = query_column(
        &db,
        "SELECT entry FROM audit_events WHERE action = 'contribution.instance'",
    );
    assert!(
        failed.iter().any(|e| e.contains("failed, nothing stored")),
        "{failed:?}"
    );
    sql(&db, "DROP TRIGGER block_stored");

    // Writable again: the same upload is stored.
    let (code, body, _) = post_parts(
        &s,
        &provider,
        &[("application/dicom", std::fs::read(&files[0]).unwrap())],
        d.path(),
    );
    assert_eq!(code, "200", "{body}");
    assert_eq!(stats(&data)["instances"], 1);
}

fn sql(url: &str, statement: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
        c.execute(statement).await.unwrap();
        c.close().await.unwrap();
    });
}

#[test]
fn no_identifying_value_reaches_the_log() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 2);
    let files = dcm_files(&corpus);
    let s = start(&data);
    let dev = data.join("dev-certs");
    let ids: Vec<String> =
        serde_json::from_slice(&std::fs::read(corpus.join("identifiers.json")).unwrap()).unwrap();
    let ids: Vec<&String> = ids.iter().filter(|i| i.len() >= 6).collect();
    // Every recording path, fed with identifying values: contributions (stored, and one
    // to a wrong study, whose source UID is in the path), a search with a name in the
    // query, a refusal, the offline ingest of the command line.
    let parts: Vec<(&str, Vec<u8>)> = files
        .iter()
        .map(|f| ("application/dicom", std::fs::read(f).unwrap()))
        .collect();
    let (code, body, _) = post_parts(&s, &dev.join("data-provider"), &parts, d.path());
    assert_eq!(code, "200", "{body}");
    let uid_in_path = ids
        .iter()
        .find(|i| i.starts_with("1.") || i.starts_with("2."))
        .map(|s| s.as_str())
        .unwrap_or("1.2.840.99999.1");
    let _ = curl_method(
        &s,
        "POST",
        &format!("/dicomweb/studies/{uid_in_path}"),
        Some(&dev.join("data-provider")),
    );
    let name = ids
        .iter()
        .find(|i| i.contains('^'))
        .map(|s| s.as_str())
        .unwrap_or("DOE^JOHN");
    let _ = curl_get_headers(
        &s,
        &format!(
            "/dicomweb/studies?PatientName={}",
            name.replace('^', "%5E").replace(' ', "%20")
        ),
        &dev.join("operator"),
    );
    let _ = curl_get_headers(
        &s,
        &format!("/dicomweb/studies?PatientID={}", ids[0].replace(' ', "%20")),
        &dev.join("researcher"),
    );
    let o = hbs()
        .args(["ingest", "--site", "SITE_B", "--data"])
        .arg(&data)
        .arg("--in")
        .arg(&corpus)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The log: the database rows, the JSON-lines copy, what auditors read.
    let all = events(&s, "");
    assert!(all.len() > files.len());
    let mut texts = vec![serde_json::to_string(&all).unwrap()];
    for f in std::fs::read_dir(data.join("audit")).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with("events.jsonl") {
            texts.push(std::fs::read_to_string(f.path()).unwrap());
        }
    }
    assert!(texts.len() >= 2, "the JSON-lines copy exists");
    for t in &texts {
        for id in &ids {
            assert!(!t.contains(id.as_str()), "{id} is in the audit log");
        }
    }
}

#[test]
fn receipts_prove_their_events_and_hbs_audit_verify_checks_the_log() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let files = dcm_files(&corpus);
    let s = start(&data);
    let dev = data.join("dev-certs");
    let client = |cmd: &mut Command, who: &str| {
        let dir = dev.join(who);
        cmd.env("HBS_GATEWAY", format!("https://localhost:{}", s.port))
            .env("HBS_CERT", dir.join("cert.pem"))
            .env("HBS_KEY", dir.join("key.pem"))
            .env("HBS_CA", data.join("ca/ca.pem"));
    };
    // A site keeps a checkpoint at first contact.
    let kept = d.path().join("kept-checkpoint");
    let mut c = hbs();
    client(&mut c, "data-provider");
    let o = c
        .args(["audit", "verify", "--checkpoint"])
        .arg(&kept)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("first contact"));

    // A contribution: its receipt lists its events with inclusion proofs that verify
    // against the signed tree head in the receipt, with the audit key alone.
    let (code, body, headers) = post_parts(
        &s,
        &dev.join("data-provider"),
        &[
            ("application/dicom", std::fs::read(&files[0]).unwrap()),
            ("application/dicom", b"not dicom".to_vec()),
        ],
        d.path(),
    );
    assert_eq!(code, "202", "{body}");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let receipt_b64 = headers
        .lines()
        .find_map(|l| l.strip_prefix("hbs-receipt: "))
        .unwrap()
        .trim()
        .to_string();
    let receipt: serde_json::Value =
        serde_json::from_slice(&b64.decode(receipt_b64).unwrap()).unwrap();
    let key = curl_get_headers(&s, "/audit/key", &dev.join("data-provider")).1;
    let head = audit::note::open(
        receipt["audit"]["checkpoint"].as_str().unwrap().as_bytes(),
        key.trim(),
    )
    .unwrap();
    let evs = receipt["audit"]["events"].as_array().unwrap();
    assert_eq!(evs.len(), 2, "one event per part: {receipt}");
    for e in evs {
        let entry = e["event"].as_str().unwrap();
        let event: audit::Event = serde_json::from_str(entry).unwrap();
        assert_eq!(event.action, "contribution.instance");
        let proof: Vec<audit::tree::Hash> = e["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| audit::tree::hash_from_b64(h.as_str().unwrap()).unwrap())
            .collect();
        assert!(audit::tree::verify_inclusion(
            &proof,
            head.size,
            head.root,
            event.seq,
            audit::tree::record_hash(entry.as_bytes())
        ));
    }

    // The kept checkpoint is still a prefix of the grown log.
    std::thread::sleep(std::time::Duration::from_millis(700));
    let mut c = hbs();
    client(&mut c, "data-provider");
    let o = c
        .args(["audit", "verify", "--checkpoint"])
        .arg(&kept)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("consistent"));

    // hbs audit events for auditors (proofs checked by the command), refused to others.
    let mut c = hbs();
    client(&mut c, "auditor");
    let o = c
        .args([
            "audit",
            "events",
            "--action",
            "contribution.instance",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!listed["events"].as_array().unwrap().is_empty());
    let mut c = hbs();
    client(&mut c, "researcher");
    assert!(!c
        .args(["audit", "events"])
        .output()
        .unwrap()
        .status
        .success());

    // Offline: the whole log verifies after a clean stop.
    drop(s);
    let o = hbs()
        .args(["audit", "verify", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // Someone with database access rewrites an event (dropping the trigger first): the
    // offline check names it, and a site's kept checkpoint no longer matches either.
    let db = format!("sqlite://{}", data.join("hbs.db").display());
    sql(&db, "DROP TRIGGER audit_events_no_update");
    sql(&db, "UPDATE audit_events SET entry = replace(entry, '\"outcome\":\"', '\"outcome\":\"not ') WHERE seq = 2");
    let o = hbs()
        .args(["audit", "verify", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("event 2:"), "{out}");
}

/// Key rotation, crypto-shredding, export, certificate issue and revocation, run by the
/// operator on the host, are recorded before they act; the log still verifies.
#[test]
fn operator_commands_are_recorded() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let run = |args: &[&str]| {
        let o = hbs().args(args).arg("--data").arg(&data).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    run(&["init"]);
    let out = run(&[
        "ingest",
        "--site",
        "SITE_A",
        "--in",
        corpus.to_str().unwrap(),
    ]);
    let pseudonym = out
        .split('"')
        .find(|s| s.starts_with("PN-"))
        .expect("ingest prints pseudonyms")
        .to_string();
    run(&["vault", "rotate-kek"]);
    run(&[
        "vault",
        "export",
        "--out",
        d.path().join("export").to_str().unwrap(),
    ]);
    run(&["vault", "withdraw", "--patient", &pseudonym]);
    run(&[
        "ca",
        "issue",
        "--role",
        "auditor",
        "--name",
        "ann",
        "--out",
        d.path().join("ann").to_str().unwrap(),
    ]);
    run(&[
        "ca",
        "revoke",
        "--cert",
        d.path().join("ann/cert.pem").to_str().unwrap(),
    ]);
    let db = format!("sqlite://{}", data.join("hbs.db").display());
    let actions = query_column(&db, "SELECT action FROM audit_events ORDER BY seq");
    for a in [
        "contribution.instance",
        "vault.rotate-kek",
        "vault.export",
        "vault.withdraw (crypto-shredding)",
        "ca.issue",
        "ca.revoke",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} not recorded: {actions:?}"
        );
    }
    let o = hbs()
        .args(["audit", "verify", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

fn query_column(url: &str, q: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::{Connection, Row};
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
        let rows = sqlx::query(q).fetch_all(&mut c).await.unwrap();
        rows.iter().map(|r| r.get::<String, _>(0)).collect()
    })
}
