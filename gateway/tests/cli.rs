//! The `hbs` command line as operators and site IT staff use it, on real files, real
//! processes (killed with SIGKILL mid-ingest), SQLite and PostgreSQL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sqlx::{Connection, Executor};

fn hbs() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hbs"));
    c.env_remove("HBS_DATA")
        .env_remove("HBS_DATABASE_URL")
        .env_remove("HBS_BLOB_STORE");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    stack.push(e.path())
                } else {
                    out.push(e.path())
                }
            }
        }
    }
    out
}

fn synth(dir: &Path, patients: usize) -> Vec<String> {
    run_ok(
        hbs()
            .args([
                "synth",
                "--patients",
                &patients.to_string(),
                "--sites",
                "1",
                "--out",
            ])
            .arg(dir),
    );
    let ids: Vec<String> =
        serde_json::from_slice(&std::fs::read(dir.join("identifiers.json")).unwrap()).unwrap();
    assert!(ids.len() > 20, "the corpus plants identifiers");
    ids
}

/// The byte forms an identifier can take on disk: UTF-8, and Latin-1 (ISO_IR 100) when
/// every character fits.
fn encodings(id: &str) -> Vec<Vec<u8>> {
    let mut v = vec![id.as_bytes().to_vec()];
    if !id.is_ascii() && id.chars().all(|c| (c as u32) < 256) {
        v.push(id.chars().map(|c| c as u8).collect());
    }
    v
}

/// Asserts no planted identifier (and, where `no_plaintext_dicom`, no plaintext DICOM) is
/// in any file under `dir`.
fn assert_nothing_identifying(dir: &Path, ids: &[String], no_plaintext_dicom: bool) {
    let needles: Vec<(String, memchr::memmem::Finder<'static>)> = ids
        .iter()
        .filter(|i| i.len() >= 6)
        .flat_map(|i| {
            encodings(i)
                .into_iter()
                .map(move |b| (i.clone(), memchr::memmem::Finder::new(&b).into_owned()))
        })
        .collect();
    for f in files(dir) {
        let b = std::fs::read(&f).unwrap();
        if no_plaintext_dicom {
            assert!(
                memchr::memmem::find(&b, b"DICM").is_none(),
                "plaintext DICOM in {}",
                f.display()
            );
        }
        for (id, finder) in &needles {
            assert!(
                finder.find(&b).is_none(),
                "identifier {id:?} in {}",
                f.display()
            );
        }
    }
}

async fn fresh_pg() -> Option<String> {
    let base = std::env::var("HBS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {base} is required under CI=true: {e}");
            }
            eprintln!("SKIPPED: PostgreSQL part: cannot connect to {base}: {e}");
            return None;
        }
    };
    let name = format!(
        "hbs_cli_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (head, _) = base.rsplit_once('/').unwrap();
    Some(format!("{head}/{name}"))
}

#[test]
fn init_creates_private_keys_and_is_idempotent() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let out = run_ok(hbs().args(["init", "--data"]).arg(&data));
    assert!(out.contains("broker secret created"), "{out}");
    let secret = std::fs::read(data.join("keys/broker.secret")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [
        ("keys/broker.secret", 0o600),
        ("keys/kek-v1.key", 0o600),
        ("keys", 0o700),
        ("", 0o700),
    ] {
        let m = std::fs::metadata(data.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{p}");
    }
    let out = run_ok(hbs().args(["init", "--data"]).arg(&data));
    assert!(out.contains("broker secret kept"), "{out}");
    assert_eq!(
        std::fs::read(data.join("keys/broker.secret")).unwrap(),
        secret
    );
    // Commands on an uninitialized folder say what to do.
    let o = hbs()
        .args(["vault", "stats", "--data"])
        .arg(d.path().join("nothing"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("hbs init"));
}

/// Kills `hbs ingest` with SIGKILL after some instances were acknowledged; every
/// acknowledged instance must be readable afterwards, and no plaintext may be on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_no_acknowledged_instance() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus");
    let ids = synth(&corpus, 8);
    let mut dbs = vec![None];
    if let Some(pg) = fresh_pg().await {
        dbs.push(Some(pg));
    }
    for (n, db) in dbs.iter().cloned().enumerate() {
        let data = d.path().join(format!("data{n}"));
        let mut init = hbs();
        init.args(["init", "--data"]).arg(&data);
        if let Some(db) = &db {
            init.args(["--database-url", db]);
        }
        run_ok(&mut init);
        let mut c = hbs();
        c.args(["ingest", "--site", "SITE_A", "--jobs", "2", "--data"])
            .arg(&data)
            .arg("--in")
            .arg(&corpus)
            .stdout(Stdio::piped());
        if let Some(db) = &db {
            c.args(["--database-url", db]);
        }
        let mut child = c.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["status"] == "stored" {
                    acked.push(v["object_id"].as_str().unwrap().to_string());
                }
            }
            if acked.len() == 25 {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
        child.wait().unwrap();
        assert_eq!(
            acked.len(),
            25,
            "the ingest acknowledged instances before the kill"
        );

        // Every acknowledged instance decrypts, from a fresh process.
        let cfg = vault::vault::VaultConfig {
            data_dir: data.clone(),
            database_url: db.clone(),
            blob_store: None,
        };
        let v = vault::vault::Vault::open(&cfg).await.unwrap();
        let rows = v.catalog().instances(None).await.unwrap();
        for id in &acked {
            let row = rows
                .iter()
                .find(|r| &r.object_id == id)
                .unwrap_or_else(|| panic!("acknowledged {id} lost"));
            let bytes = v.read_instance(row).await.unwrap();
            assert_eq!(&bytes[128..132], b"DICM");
        }
        v.close().await;
        assert_nothing_identifying(&data, &ids, true);

        // Running the ingest again completes it; what was stored is not stored twice.
        let mut again = hbs();
        again
            .args(["ingest", "--site", "SITE_A", "--data"])
            .arg(&data)
            .arg("--in")
            .arg(&corpus);
        if let Some(db) = &db {
            again.args(["--database-url", db]);
        }
        let out = run_ok(&mut again);
        let summary = out.lines().last().unwrap();
        assert!(summary.contains("already stored"), "{summary}");
        let dupes = out
            .lines()
            .filter(|l| l.contains("\"duplicate\":true"))
            .count();
        assert!(dupes >= 25, "{dupes} duplicates: {summary}");
        assert!(out.contains("0 rejected"), "{summary}");
        assert_nothing_identifying(&data, &ids, true);
    }
    for db in dbs.into_iter().flatten() {
        drop_pg(&db).await;
    }
}

async fn drop_pg(url: &str) {
    let base = std::env::var("HBS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    if let (Some((_, name)), Ok(mut conn)) = (
        url.rsplit_once('/'),
        sqlx::PgConnection::connect(&base).await,
    ) {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}

#[test]
fn deid_reports_bad_files_and_fails_only_when_it_cannot_run() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus");
    let ids = synth(&corpus, 1);
    std::fs::write(corpus.join("SITE_A/garbage.dcm"), b"not dicom at all").unwrap();
    let key = d.path().join("k.key");
    std::fs::write(&key, [9u8; 48]).unwrap();
    let out = d.path().join("out");
    let stdout = run_ok(
        hbs()
            .args(["deid", "--site", "SITE_A", "--key-file"])
            .arg(&key)
            .arg("--in")
            .arg(&corpus)
            .arg("--out")
            .arg(&out),
    );
    assert!(stdout.contains("accepted"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let files = report["files"].as_array().unwrap();
    let rejected: Vec<_> = files.iter().filter(|f| f["status"] == "rejected").collect();
    // garbage.dcm, clinical.csv and identifiers.json are not DICOM.
    assert!(rejected
        .iter()
        .all(|f| f["reason"].as_str().unwrap().contains("DICM")));
    assert!(files.iter().filter(|f| f["status"] == "accepted").count() > 10);
    assert_nothing_identifying(&out, &ids, false);

    // Cannot run at all: exit status 2 and a reason.
    let o = hbs()
        .args(["deid", "--site", "SITE_A", "--key-file"])
        .arg(&key)
        .arg("--in")
        .arg(d.path().join("missing"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot de-identify"));
    let o = hbs()
        .args(["deid", "--site", "bad/site", "--key-file"])
        .arg(&key)
        .arg("--in")
        .arg(&corpus)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn export_works_while_another_process_writes_the_same_folder() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("corpus");
    synth(&corpus, 6);
    let data = d.path().join("data");
    run_ok(hbs().args(["init", "--data"]).arg(&data));
    run_ok(
        hbs()
            .args(["ingest", "--site", "SITE_A", "--data"])
            .arg(&data)
            .arg("--in")
            .arg(corpus.join("SITE_A")),
    );
    // A second, long-running writer on the same data folder.
    let mut writer = hbs()
        .args(["ingest", "--site", "SITE_B", "--data"])
        .arg(&data)
        .arg("--in")
        .arg(&corpus)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let out = d.path().join("export");
    let stdout = run_ok(
        hbs()
            .args(["vault", "export", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(&out),
    );
    assert!(stdout.starts_with("exported "), "{stdout}");
    assert!(writer.wait().unwrap().success());
    // Withdraw one patient through the command line; export of that patient then fails.
    let first = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    let w = run_ok(
        hbs()
            .args(["vault", "withdraw", "--patient", &first, "--data"])
            .arg(&data),
    );
    assert!(w.contains("withdrawn"), "{w}");
    let o = hbs()
        .args(["vault", "export", "--patient", &first, "--data"])
        .arg(&data)
        .arg("--out")
        .arg(d.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no patient"));
    let r = run_ok(hbs().args(["vault", "rotate-kek", "--data"]).arg(&data));
    assert!(r.contains("v2"), "{r}");
}

/// `hbs init` sets up a development PKI; `hbs ca issue|revoke` work as operators script
/// them; the independent `openssl verify` agrees, CRL included.
#[test]
fn init_sets_up_a_pki_and_ca_commands_issue_and_revoke() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let out = run_ok(hbs().args(["init", "--data"]).arg(&data));
    assert!(out.contains("development PKI"), "{out}");
    let verify = |cert: &Path| {
        let o = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(data.join("ca/ca.pem"))
            .arg("-crl_check")
            .arg("-CRLfile")
            .arg(data.join("ca/crl.pem"))
            .arg(cert)
            .output()
            .expect("openssl is installed");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    use std::os::unix::fs::PermissionsExt;
    for role in [
        "data-provider",
        "researcher",
        "ethics-board",
        "auditor",
        "operator",
        "compute",
    ] {
        let dir = data.join("dev-certs").join(role);
        let (ok, msg) = verify(&dir.join("cert.pem"));
        assert!(ok, "{role}: {msg}");
        let m = std::fs::metadata(dir.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600, "{role}");
    }
    // The server certificate chains to the same CA (its purpose is serverAuth).
    let o = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(data.join("ca/ca.pem"))
        .args(["-purpose", "sslserver"])
        .arg(data.join("tls/cert.pem"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A second init keeps the CA (and does not reissue).
    let before = std::fs::read(data.join("ca/ca.pem")).unwrap();
    let out = run_ok(hbs().args(["init", "--data"]).arg(&data));
    assert!(!out.contains("development PKI"), "{out}");
    assert_eq!(std::fs::read(data.join("ca/ca.pem")).unwrap(), before);

    let rita = d.path().join("rita");
    let out = run_ok(
        hbs()
            .args([
                "ca",
                "issue",
                "--role",
                "researcher",
                "--name",
                "rita",
                "--data",
            ])
            .arg(&data)
            .arg("--out")
            .arg(&rita),
    );
    assert!(
        out.contains("spiffe://prostatenet/researcher/rita"),
        "{out}"
    );
    assert!(verify(&rita.join("cert.pem")).0);
    assert_eq!(std::fs::read(rita.join("ca.pem")).unwrap(), before);
    run_ok(
        hbs()
            .args(["ca", "revoke", "--reason", "left the project", "--data"])
            .arg(&data)
            .arg("--cert")
            .arg(rita.join("cert.pem")),
    );
    let (ok, msg) = verify(&rita.join("cert.pem"));
    assert!(!ok && msg.contains("revoked"), "{msg}");
    assert!(verify(&data.join("dev-certs/auditor/cert.pem")).0);
    // Mistakes get a reason and exit 2.
    for args in [
        vec!["ca", "issue", "--role", "data-provider", "--name", "x"],
        vec!["ca", "issue", "--role", "king", "--name", "x"],
        vec!["ca", "issue", "--role", "auditor", "--name", "a/b"],
    ] {
        let o = hbs()
            .args(&args)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(d.path().join("x"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(!o.stderr.is_empty());
    }
}

/// A TOML configuration file sets the data folder and the listen address; HBS_*
/// variables and flags override it; an unknown key is an error.
#[test]
fn configuration_file_and_environment() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("hbs.toml");
    std::fs::write(
        &cfg,
        format!(
            "data = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
            d.path().join("from-file").display()
        ),
    )
    .unwrap();
    run_ok(hbs().arg("init").arg("--config").arg(&cfg));
    assert!(d.path().join("from-file/keys/broker.secret").exists());
    run_ok(
        hbs()
            .arg("init")
            .arg("--config")
            .arg(&cfg)
            .env("HBS_DATA", d.path().join("from-env")),
    );
    assert!(d.path().join("from-env/keys/broker.secret").exists());
    // serve takes its listen address from the file.
    let mut child = hbs()
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = loop {
        let l = lines.next().unwrap().unwrap();
        if l.starts_with("hbs gateway listening on") {
            break l;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listening.contains("https://127.0.0.1:"), "{listening}");
    std::fs::write(&cfg, "dta = \"x\"\n").unwrap();
    let o = hbs()
        .arg("init")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field"));
}

/// The quick start's first command on a fresh folder: it stores a synthetic corpus,
/// every instance recorded in an audit log that then verifies.
#[test]
fn the_quick_start_demo_runs_on_a_fresh_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = run_ok(
        hbs()
            .current_dir(d.path())
            .args(["demo", "--patients", "3", "--sites", "1"]),
    );
    assert!(
        out.contains("instances stored, 0 quarantined, 0 rejected"),
        "{out}"
    );
    assert!(out.contains("Audit log: "), "{out}");
    assert!(d
        .path()
        .join("hbs-data/dev-certs/operator/cert.pem")
        .exists());
    let out = run_ok(
        hbs()
            .current_dir(d.path())
            .args(["audit", "verify", "--data", "hbs-data"]),
    );
    assert!(out.contains("latest matching checkpoint"), "{out}");
}
