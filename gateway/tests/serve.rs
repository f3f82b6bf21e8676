//! `hbs serve` with real clients: curl and `openssl s_client` with client certificates.
//! The role matrix covers every route of the gateway's own table; the TLS checks cover
//! no certificate, a foreign CA, a revoked, an expired and a malformed certificate.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const ROLES: [&str; 6] = [
    "data-provider",
    "researcher",
    "ethics-board",
    "auditor",
    "operator",
    "compute",
];

/// The expected outcome of every route for every role. A route the gateway has and this
/// table lacks fails the test: add its row when you add a route.
fn expected(method: &str, path: &str, role: &str) -> Option<u16> {
    let all = 200;
    let ops = if matches!(role, "operator" | "auditor") {
        200
    } else {
        403
    };
    let submit = matches!(role, "researcher" | "operator" | "ethics-board");
    let governance = matches!(role, "researcher" | "operator" | "ethics-board" | "auditor");
    let board = role == "ethics-board";
    match (method, path) {
        ("GET", "/healthz") => Some(all),
        ("GET", "/whoami") => Some(all),
        ("GET", "/readyz") => Some(ops),
        ("GET", "/metrics") => Some(ops),
        // A POST with no body: past the gate only for data providers (415: not
        // multipart/related), refused for every other role.
        ("POST", "/dicomweb/studies") | ("POST", "/dicomweb/studies/{study}") => {
            Some(if role == "data-provider" { 415 } else { 403 })
        }
        // Searches: data providers (their own site), operators and auditors.
        ("GET", "/dicomweb/studies")
        | ("GET", "/dicomweb/series")
        | ("GET", "/dicomweb/instances")
        | ("GET", "/dicomweb/studies/{study}/series")
        | ("GET", "/dicomweb/studies/{study}/instances")
        | ("GET", "/dicomweb/studies/{study}/series/{series}/instances") => Some(
            if matches!(role, "data-provider" | "operator" | "auditor") {
                200
            } else {
                403
            },
        ),
        // The audit log: events for auditors; checkpoints, the key and proofs for every
        // platform identity (without parameters, consistency and proof are a 400).
        ("GET", "/audit/events") => Some(if role == "auditor" { 200 } else { 403 }),
        ("GET", "/audit/checkpoint") | ("GET", "/audit/key") => Some(all),
        ("GET", "/audit/consistency") | ("GET", "/audit/proof") => Some(400),
        // The indicators, as JSON and as a page: every platform identity.
        ("GET", "/kpi") | ("GET", "/kpi/page") => Some(all),
        // Cohort counts: no body counts everything.
        ("POST", "/cohort/count") => Some(if submit { 200 } else { 403 }),
        // Governance, called with no body and an unknown request: past the gate the
        // handler answers 400 (no body or no reason) or 404 (no such request).
        ("POST", "/requests") | ("POST", "/requests/{id}/amend") => {
            Some(if submit { 400 } else { 403 })
        }
        ("POST", "/requests/{id}/withdraw") => Some(if submit { 404 } else { 403 }),
        ("GET", "/requests") | ("GET", "/grants") => Some(if governance { 200 } else { 403 }),
        ("GET", "/requests/{id}") => Some(if governance { 404 } else { 403 }),
        ("POST", "/requests/{id}/approve") => Some(if board { 404 } else { 403 }),
        ("POST", "/requests/{id}/reject") => Some(if board { 400 } else { 403 }),
        ("GET", "/reviews") => Some(if board { 200 } else { 403 }),
        ("POST", "/grants/{id}/revoke") => Some(if board || role == "operator" {
            400
        } else {
            403
        }),
        // Researchers pass the route; holding no such grant, the decision is a denial.
        ("GET", "/grants/{id}/decision") => Some(403),
        // Jobs: researchers submit (no body: 400); a job nobody has: 404.
        ("POST", "/jobs") => Some(if role == "researcher" { 400 } else { 403 }),
        ("GET", "/jobs/{id}") => Some(if matches!(role, "researcher" | "auditor" | "operator") {
            404
        } else {
            403
        }),
        ("GET", "/models") => Some(if governance { 200 } else { 403 }),
        ("POST", "/models") => Some(if role == "researcher" { 400 } else { 403 }),
        // Releasing a job's weights: board members; no such job here.
        ("POST", "/jobs/{id}/release") => Some(if board { 404 } else { 403 }),
        _ => None,
    }
}

#[test]
fn every_route_times_every_caller() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = start(&data);
    let dev = data.join("dev-certs");

    // The gateway's own route table; every route must have a row above.
    let table: serde_json::Value = serde_json::from_slice(
        &Command::new(env!("CARGO_BIN_EXE_hbs"))
            .arg("routes")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let routes = table.as_array().unwrap();
    assert!(routes.len() >= 4);
    for r in routes {
        let (m, p) = (r["method"].as_str().unwrap(), r["path"].as_str().unwrap());
        for role in ROLES {
            let want = expected(m, p, role)
                .unwrap_or_else(|| panic!("route {m} {p} has no row in the test matrix"));
            // Body-carrying calls are in stow_rs_from_dicomweb_client_and_curl.
            let path = p
                .replace("{study}", "1.2.3")
                .replace("{series}", "1.2.4")
                .replace("{id}", "req-0000");
            let (got, body) = curl_method(&s, m, &path, Some(&dev.join(role)));
            assert_eq!(got, Some(want), "{role} {m} {p}: {body}");
        }
        // No certificate: the handshake fails, nothing is answered.
        assert_eq!(
            curl(
                &s,
                &p.replace("{study}", "1.2.3")
                    .replace("{series}", "1.2.4")
                    .replace("{id}", "req-0000"),
                None
            )
            .0,
            None,
            "no certificate on {p}"
        );
    }
    // An unknown route is not found for anyone (deny by default is the route table).
    assert_eq!(
        curl(&s, "/nothing", Some(&dev.join("operator"))).0,
        Some(404)
    );

    // Two clients, two principals: the identity is the client's own certificate.
    let (_, a) = curl(&s, "/whoami", Some(&dev.join("auditor")));
    let (_, b) = curl(&s, "/whoami", Some(&dev.join("data-provider")));
    let a: serde_json::Value = serde_json::from_str(&a).unwrap();
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(a["role"], "auditor");
    assert_eq!(b["role"], "data-provider");
    assert_eq!(b["site"], "SITE_A");
    assert_ne!(a["serial"], b["serial"]);

    // Metrics count what happened.
    let (_, m) = curl(&s, "/metrics", Some(&dev.join("operator")));
    assert!(
        m.contains("hbs_requests_total{method=\"GET\",route=\"/whoami\",status=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("hbs_tls_refused_total"), "{m}");
}

#[test]
fn untrusted_revoked_expired_and_malformed_certificates_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = start(&data);
    let dev = data.join("dev-certs");
    assert_eq!(
        curl(&s, "/healthz", Some(&dev.join("researcher"))).0,
        Some(200)
    );

    // A certificate from another CA.
    let other = d.path().join("other");
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["init", "--data"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        curl(&s, "/healthz", Some(&other.join("dev-certs/researcher"))).0,
        None
    );

    // Signed by our CA but with two URI SANs: not a SPIFFE identity.
    let two = d.path().join("two");
    openssl_ca_sign(
        &data,
        &two,
        "URI:spiffe://prostatenet/auditor/a,URI:spiffe://prostatenet/auditor/b",
        1,
    );
    assert_eq!(curl(&s, "/healthz", Some(&two)).0, None);
    // Signed by our CA, well formed: accepted (the control for the case above).
    let good = d.path().join("good");
    openssl_ca_sign(&data, &good, "URI:spiffe://prostatenet/auditor/good", 1);
    assert_eq!(curl(&s, "/healthz", Some(&good)).0, Some(200));

    // Expired: valid for zero days.
    let expired = d.path().join("expired");
    openssl_ca_sign(&data, &expired, "URI:spiffe://prostatenet/auditor/late", 0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(curl(&s, "/healthz", Some(&expired)).0, None);

    // Not yet valid: signed by our CA, valid from tomorrow. The same helper with a start
    // of now gives an accepted certificate, so only the date differs.
    let early = d.path().join("early");
    ca_sign_from(&data, &early, "spiffe://prostatenet/auditor/early", 1);
    assert_eq!(curl(&s, "/healthz", Some(&early)).0, None);
    let now = d.path().join("now");
    ca_sign_from(&data, &now, "spiffe://prostatenet/auditor/now", 0);
    assert_eq!(curl(&s, "/healthz", Some(&now)).0, Some(200));

    // Revoked while the gateway runs: refused within seconds, no restart.
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["ca", "revoke", "--data"])
        .arg(&data)
        .arg("--cert")
        .arg(dev.join("researcher/cert.pem"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut refused = false;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        if curl(&s, "/healthz", Some(&dev.join("researcher")))
            .0
            .is_none()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "a revoked certificate is refused within 5 seconds");
    assert_eq!(
        curl(&s, "/healthz", Some(&dev.join("auditor"))).0,
        Some(200)
    );

    // openssl s_client: TLS 1.3, and a client without a certificate gets no session.
    let ok = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-connect",
            &format!("127.0.0.1:{}", s.port),
            "-CAfile",
        ])
        .arg(data.join("ca/ca.pem"))
        .arg("-cert")
        .arg(dev.join("operator/cert.pem"))
        .arg("-key")
        .arg(dev.join("operator/key.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&ok.stderr).to_string() + &String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("TLSv1.3"), "{text}");
    let tls12 = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-tls1_2",
            "-connect",
            &format!("127.0.0.1:{}", s.port),
            "-CAfile",
        ])
        .arg(data.join("ca/ca.pem"))
        .arg("-cert")
        .arg(dev.join("operator/cert.pem"))
        .arg("-key")
        .arg(dev.join("operator/key.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!tls12.status.success(), "TLS 1.2 is refused");
}

#[test]
fn stow_rs_from_dicomweb_client_and_curl() {
    if python().is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let s = start(&data);
    let dev = data.join("dev-certs");
    // One series of the baseline study.
    let mut files: Vec<PathBuf> = walk(&corpus)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let series_dir = files[0].parent().unwrap().to_path_buf();
    let series: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.parent() == Some(&series_dir))
        .cloned()
        .collect();
    assert!(series.len() >= 2);

    let r = dicomweb_store(&s, &dev.join("data-provider"), &series, None);
    assert_eq!(r["status"], 200, "{r}");
    let refs = r["response"]["00081199"]["Value"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(refs.len(), series.len());
    for item in &refs {
        let uid = item["00081155"]["Value"][0].as_str().unwrap();
        assert!(uid.starts_with("2.25."), "{uid}");
    }
    assert_eq!(stats(&data)["instances"], series.len());

    // The same upload again: same pseudonymized UIDs, nothing duplicated.
    let again = dicomweb_store(&s, &dev.join("data-provider"), &series, None);
    assert_eq!(again["status"], 200);
    assert_eq!(
        again["response"]["00081199"]["Value"].as_array().unwrap(),
        &refs
    );
    assert_eq!(stats(&data)["instances"], series.len());

    // The operator exports while `hbs serve` runs on the same data folder.
    let export = d.path().join("export");
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["vault", "export", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&export)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout)
        .starts_with(&format!("exported {} instances", series.len())));

    // To the wrong study: nothing stored, 409 with the failure reason.
    let wrong = dicomweb_store(
        &s,
        &dev.join("data-provider"),
        &series[..1],
        Some("1.2.3.4.5"),
    );
    assert_eq!(wrong["status"], 409, "{wrong}");
    // Only data providers contribute.
    let denied = dicomweb_store(&s, &dev.join("researcher"), &series[..1], None);
    assert_eq!(denied["status"], 403, "{denied}");

    // curl with a hand-made multipart/related body: one good instance, one bad part.
    let (code, json, headers) = post_parts(
        &s,
        &dev.join("data-provider"),
        &[
            (
                "application/dicom",
                std::fs::read(&files[files.len() - 1]).unwrap(),
            ),
            ("application/dicom", b"not dicom".to_vec()),
        ],
        d.path(),
    );
    assert_eq!(code, "202", "{json}");
    let json = json.as_str();
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["00081199"]["Value"].as_array().unwrap().len(), 1);
    let failed = &v["00081198"]["Value"][0];
    assert!(
        failed["0040A160"]["Value"][0]
            .as_str()
            .unwrap()
            .contains("DICM"),
        "{v}"
    );
    // The signed receipt: decode it and verify it offline with the gateway's certificate
    // and the openssl command line, as a site would.
    let header = |name: &str| {
        headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no {name} header in {headers}"))
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let receipt = b64.decode(header("hbs-receipt")).unwrap();
    let signature = b64.decode(header("hbs-receipt-signature")).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&receipt).unwrap();
    assert_eq!(r["site"], "SITE_A");
    assert_eq!(
        r["stored"][0]["sop_instance_uid"],
        v["00081199"]["Value"][0]["00081155"]["Value"][0]
    );
    assert_eq!(r["failed"][0]["part"], 1);
    let pubkey = d.path().join("gateway-pub.pem");
    let o = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(data.join("tls/cert.pem"))
        .output()
        .unwrap();
    std::fs::write(&pubkey, &o.stdout).unwrap();
    let verify = |receipt: &[u8]| {
        let rf = d.path().join("receipt.json");
        let sf = d.path().join("receipt.sig");
        std::fs::write(&rf, receipt).unwrap();
        std::fs::write(&sf, &signature).unwrap();
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pubkey)
            .arg("-signature")
            .arg(&sf)
            .arg(&rf)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        verify(&receipt),
        "the receipt verifies with the gateway's certificate"
    );
    let mut forged = receipt.clone();
    let last = forged.len() - 2;
    forged[last] ^= 1;
    assert!(!verify(&forged), "an altered receipt does not verify");

    // The site's own identifiers are not echoed back (response or receipt).
    let receipt_text = String::from_utf8(receipt.clone()).unwrap();
    let ids: Vec<String> =
        serde_json::from_slice(&std::fs::read(corpus.join("identifiers.json")).unwrap()).unwrap();
    for id in ids.iter().filter(|i| i.len() >= 6) {
        assert!(!json.contains(id.as_str()), "{id} echoed");
        assert!(!receipt_text.contains(id.as_str()), "{id} in the receipt");
    }
    // Metrics count the outcomes.
    let (_, m) = curl(&s, "/metrics", Some(&dev.join("operator")));
    assert!(
        m.contains("hbs_ingest_instances_total{outcome=\"stored\"}"),
        "{m}"
    );
    assert!(
        m.contains("hbs_ingest_instances_total{outcome=\"duplicate\"}"),
        "{m}"
    );
}

#[test]
fn signed_manifests_are_verified_before_anything_is_stored() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let s = start(&data);
    let dev = data.join("dev-certs");
    let provider = dev.join("data-provider");
    let mut files: Vec<PathBuf> = walk(&corpus)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let a = std::fs::read(&files[0]).unwrap();
    let b = std::fs::read(&files[1]).unwrap();
    let sha = |x: &[u8]| {
        let o = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(x)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let manifest = |site: &str| {
        serde_json::to_vec(&serde_json::json!({
            "site": site, "time": 1_790_000_000u64, "consent": "all patients consented (protocol v3)",
            "instances": [sha(&a), sha(&b)],
        }))
        .unwrap()
    };
    let m = manifest("SITE_A");
    let good_sig = openssl_sign(&provider.join("key.pem"), &m, d.path());

    // B is altered after signing: A is stored, B refused, receipt says signed.
    let mut b_altered = b.clone();
    let last = b_altered.len() - 1;
    b_altered[last] ^= 0xFF;
    let (code, body, headers) = post_parts(
        &s,
        &provider,
        &[
            ("application/vnd.hbs.manifest+json", m.clone()),
            ("application/vnd.hbs.manifest-signature", good_sig.clone()),
            ("application/dicom", a.clone()),
            ("application/dicom", b_altered),
        ],
        d.path(),
    );
    assert_eq!(code, "202", "{body}");
    assert!(body.contains("not in the signed manifest"), "{body}");
    assert_eq!(stats(&data)["instances"], 1);
    let receipt_b64 = headers
        .lines()
        .find_map(|l| l.strip_prefix("hbs-receipt: "))
        .unwrap()
        .trim()
        .to_string();
    use base64::Engine as _;
    let receipt: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(receipt_b64)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(receipt["signed"], true, "{receipt}");

    // Signed with another key than the presented certificate's: nothing stored.
    let other_sig = openssl_sign(&dev.join("researcher/key.pem"), &m, d.path());
    let (code, body, _) = post_parts(
        &s,
        &provider,
        &[
            ("application/vnd.hbs.manifest+json", m.clone()),
            ("application/vnd.hbs.manifest-signature", other_sig),
            ("application/dicom", b.clone()),
        ],
        d.path(),
    );
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("does not verify"), "{body}");
    assert_eq!(stats(&data)["instances"], 1);

    // A manifest for another site, properly signed: refused.
    let m_b = manifest("SITE_B");
    let sig_b = openssl_sign(&provider.join("key.pem"), &m_b, d.path());
    let (code, body, _) = post_parts(
        &s,
        &provider,
        &[
            ("application/vnd.hbs.manifest+json", m_b),
            ("application/vnd.hbs.manifest-signature", sig_b),
            ("application/dicom", b.clone()),
        ],
        d.path(),
    );
    assert_eq!(code, "403", "{body}");
    assert_eq!(stats(&data)["instances"], 1);

    // The intact B under the good manifest: stored.
    let (code, body, _) = post_parts(
        &s,
        &provider,
        &[
            ("application/vnd.hbs.manifest+json", m),
            ("application/vnd.hbs.manifest-signature", good_sig),
            ("application/dicom", b),
        ],
        d.path(),
    );
    assert_eq!(code, "200", "{body}");
    assert_eq!(stats(&data)["instances"], 2);
}

#[test]
fn hbs_contribute_signs_uploads_verifies_receipts_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 2);
    let dicom_files = walk(&corpus)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .count();
    let s = start(&data);
    let provider = data.join("dev-certs/data-provider");
    let contribute = |cert: &Path| {
        Command::new(env!("CARGO_BIN_EXE_hbs"))
            .current_dir(d.path())
            .args(["contribute", "--json", "--batch", "8", "--gateway"])
            .arg(format!("https://127.0.0.1:{}", s.port))
            .arg("--cert")
            .arg(cert.join("cert.pem"))
            .arg("--key")
            .arg(cert.join("key.pem"))
            .arg("--ca")
            .arg(data.join("ca/ca.pem"))
            .arg(&corpus)
            .output()
            .unwrap()
    };
    let o = contribute(&provider);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["stored"], dicom_files, "{summary}");
    // clinical.csv and identifiers.json are not DICOM: refused with a reason.
    assert_eq!(summary["refused"], 2, "{summary}");
    assert_eq!(stats(&data)["instances"], dicom_files);

    // Every saved receipt verifies with the gateway's certificate (openssl command line).
    let pubkey = d.path().join("gw.pem");
    let o = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(data.join("tls/cert.pem"))
        .output()
        .unwrap();
    std::fs::write(&pubkey, &o.stdout).unwrap();
    let receipts = d.path().join("hbs-receipts");
    let mut n = 0;
    for f in walk(&receipts)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let ok = Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pubkey)
            .arg("-signature")
            .arg(f.with_extension("sig"))
            .arg(&f)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "{}", f.display());
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(r["signed"], true);
        n += 1;
    }
    assert!(n >= 2, "one receipt per batch");
    // The state file names files by hash only.
    let state = std::fs::read_to_string(d.path().join("hbs-contribute-state.json")).unwrap();
    assert!(!state.contains("SITE_A/") && !state.contains(".dcm"));

    // Again: nothing is sent twice.
    let o = contribute(&provider);
    assert!(o.status.success());
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["sent"], 0, "{again}");
    assert_eq!(stats(&data)["instances"], dicom_files);

    // A researcher cannot contribute; the command says why and fails.
    let o = contribute(&data.join("dev-certs/researcher"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("data-provider"));
}

/// A site configured "signed contributions only" (here in the configuration file) has
/// its plain STOW-RS uploads refused with nothing stored; its signed ones are stored, and
/// other sites keep uploading unsigned.
#[test]
fn a_signed_only_site_cannot_upload_unsigned() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let corpus = d.path().join("corpus");
    synth(&corpus, 1);
    let config = d.path().join("hbs.toml");
    std::fs::write(&config, "signed_only_sites = [\"SITE_A\"]\n").unwrap();
    let s = start_with(&data, &["--config", config.to_str().unwrap()]);
    let provider = data.join("dev-certs/data-provider");
    let mut files: Vec<PathBuf> = walk(&corpus)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let a = std::fs::read(&files[0]).unwrap();

    let (code, body, _) = post_parts(&s, &provider, &[("application/dicom", a.clone())], d.path());
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("signed contributions only"), "{body}");
    assert_eq!(stats(&data)["instances"], 0);

    // SITE_B is not in the list: unsigned is fine there.
    let site_b = d.path().join("site-b");
    issue(&data, "data-provider", "bob", Some("SITE_B"), &site_b);
    let (code, body, _) = post_parts(&s, &site_b, &[("application/dicom", a.clone())], d.path());
    assert_eq!(code, "200", "{body}");
    assert_eq!(stats(&data)["instances"], 1);

    // SITE_A signing with hbs contribute: stored.
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .arg("contribute")
        .args(["--gateway", &format!("https://localhost:{}", s.port)])
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
        .arg(files[0].parent().unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stats(&data)["instances"].as_u64().unwrap() >= 2);

    // A site code that is not one is a configuration error, said at start.
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(["--signed-only-site", "SITE A"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("signed-only site"));
}

/// A client certificate signed by the platform CA with the openssl crate, valid from
/// `start_in_days` days from now for 30 days (the openssl 3.0 command line cannot set a
/// start date in the future).
fn ca_sign_from(data: &Path, dir: &Path, uri: &str, start_in_days: u32) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{
        BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    };
    use openssl::x509::{X509Builder, X509NameBuilder, X509};
    std::fs::create_dir_all(dir).unwrap();
    let ca = X509::from_pem(&std::fs::read(data.join("ca/ca.pem")).unwrap()).unwrap();
    let ca_key =
        PKey::private_key_from_pem(&std::fs::read(data.join("ca/ca.key")).unwrap()).unwrap();
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "t").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial
        .rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)
        .unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(ca.subject_name()).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(start_in_days).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(start_in_days + 30).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().build().unwrap())
        .unwrap();
    b.append_extension(KeyUsage::new().digital_signature().build().unwrap())
        .unwrap();
    b.append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .uri(uri)
        .build(&b.x509v3_context(Some(&ca), None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    std::fs::write(dir.join("cert.pem"), b.build().to_pem().unwrap()).unwrap();
    std::fs::write(dir.join("key.pem"), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
}
