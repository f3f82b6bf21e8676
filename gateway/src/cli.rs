//! Command implementations: each parses its inputs, calls the library, prints a summary.
//! Output names files by position and hash and patients by pseudonym only.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use vault::pseudonym::{Pseudonym, Pseudonymizer, SiteId};
use vault::vault::{Ingested, Vault, VaultConfig, VaultError};

/// `hbs init`: the vault's keys and database, and a development PKI (the platform CA,
/// the gateway's server certificate, one client certificate per role).
pub async fn init(cfg: &VaultConfig) -> Result<()> {
    let r = Vault::init(cfg)
        .await
        .with_context(|| format!("cannot initialize {}", cfg.data_dir.display()))?;
    dev_pki(&cfg.data_dir)?;
    println!(
        "data folder {} ready: broker secret {}, key-encryption key v{}, database {}, blobs {}",
        cfg.data_dir.display(),
        if r.created_secret { "created" } else { "kept" },
        r.kek_version,
        r.database,
        r.blob_store
    );
    Ok(())
}

/// Creates the platform CA and, the first time, a server certificate and one client
/// certificate per role under `DATA/dev-certs/`, and says where they are.
fn dev_pki(data: &Path) -> Result<()> {
    let (ca, created) = certs::Ca::init(&data.join("ca"))?;
    let dev = data.join("dev-certs");
    if created || !dev.exists() {
        let ca_pem = ca.ca_pem()?;
        let server = ca.issue_server(&["localhost", "127.0.0.1"], 90)?;
        certs::write_issued(&data.join("tls"), &server, &ca_pem)?;
        for role in certs::Role::ALL {
            let site = (role == certs::Role::DataProvider).then_some("SITE_A");
            let issued = ca.issue_client(role, &format!("dev-{role}"), site, 90)?;
            certs::write_issued(&dev.join(role.as_str()), &issued, &ca_pem)?;
        }
        println!(
            "development PKI: CA {0}/ca/ca.pem, server certificate {0}/tls/, one client certificate per role in {0}/dev-certs/<role>/ (data-provider for SITE_A)",
            data.display()
        );
    }
    Ok(())
}

/// `hbs ca init`.
pub fn ca_init(data: &Path) -> Result<()> {
    let (_, created) = certs::Ca::init(&data.join("ca"))?;
    println!(
        "platform CA {} in {}",
        if created { "created" } else { "kept" },
        data.join("ca").display()
    );
    Ok(())
}

/// `hbs ca issue`.
pub fn ca_issue(
    data: &Path,
    role: &str,
    name: &str,
    site: Option<&str>,
    days: u32,
    out: &Path,
) -> Result<()> {
    let ca = certs::Ca::open(&data.join("ca"))?;
    let role = certs::Role::parse(role)?;
    let issued = ca.issue_client(role, name, site, days)?;
    certs::write_issued(out, &issued, &ca.ca_pem()?)?;
    println!(
        "issued {} for {role} {name}{}: serial {}, valid {days} days, in {}",
        certs::spiffe_id(role, name, site)?,
        site.map(|s| format!(" of {s}")).unwrap_or_default(),
        issued.serial,
        out.display()
    );
    Ok(())
}

/// `hbs ca revoke`.
pub fn ca_revoke(
    data: &Path,
    cert: Option<&Path>,
    serial: Option<&str>,
    reason: &str,
) -> Result<()> {
    let ca = certs::Ca::open(&data.join("ca"))?;
    let serial = match (cert, serial) {
        (Some(path), _) => {
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let x = openssl::x509::X509::from_pem(&pem).context("not a PEM certificate")?;
            certs::serial_hex(&x)?
        }
        (None, Some(s)) => s.to_string(),
        (None, None) => bail!("give --cert FILE or --serial HEX"),
    };
    let fresh = ca.revoke(&serial, reason)?;
    println!(
        "certificate {serial} {}; CRL rewritten at {}",
        if fresh {
            "revoked"
        } else {
            "was already revoked"
        },
        ca.crl_path().display()
    );
    Ok(())
}

/// `hbs deid`: de-identify a tree and print the counts; the report is in OUT/report.json.
pub fn deid(site: &str, key_file: &Path, input: &Path, output: &Path) -> Result<()> {
    let site = SiteId::new(site)?;
    let secret = std::fs::read(key_file)
        .with_context(|| format!("cannot read the key file {}", key_file.display()))?;
    let keys = Pseudonymizer::new(&secret)?;
    let report = vault::tree::deid_tree(input, output, &site, &keys).with_context(|| {
        format!(
            "cannot de-identify {} into {}",
            input.display(),
            output.display()
        )
    })?;
    println!(
        "{} accepted, {} quarantined, {} rejected; report: {}",
        report.accepted,
        report.quarantined,
        report.rejected,
        output.join("report.json").display()
    );
    Ok(())
}

/// Totals of an ingest run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    stored: usize,
    duplicates: usize,
    quarantined: usize,
    rejected: usize,
    bytes: u64,
}

/// Ingests every file under `input`, `jobs` at a time, printing one JSON line per file
/// once it is acknowledged (stored and committed), quarantined or rejected.
async fn ingest_tree(
    v: &Vault,
    log: &audit::AuditLog,
    site: &SiteId,
    input: &Path,
    jobs: usize,
    verbose: bool,
) -> Result<Totals> {
    let files = vault::tree::walk(input)
        .with_context(|| format!("cannot read the folder {}", input.display()))?;
    let sem = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut totals = Totals::default();
    let mut set = tokio::task::JoinSet::new();
    for (index, path) in files.into_iter().enumerate() {
        if path.extension().is_some_and(|e| e == "csv" || e == "json") {
            continue;
        }
        let permit = sem.clone().acquire_owned().await?;
        let (v, site, log) = (v.clone(), site.clone(), log.clone());
        set.spawn(async move {
            let _permit = permit;
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    return (
                        index,
                        String::new(),
                        0,
                        Err(VaultError::Io {
                            path: format!("input file #{index}"),
                            source: e,
                        }),
                    )
                }
            };
            let sha = vault::tree::sha256_hex(&bytes);
            let len = bytes.len() as u64;
            let rid = crate::record::RequestId::new();
            let result = crate::record::ingest(
                &v,
                &log,
                &audit::Actor::local_operator(),
                &rid.0,
                &site,
                bytes,
                None,
                &format!("hbs ingest on the gateway host for site {site}"),
                None,
            )
            .await
            .map_err(|e| VaultError::Internal(e.to_string()))
            .and_then(|(r, _)| r);
            (index, sha, len, result)
        });
        while set.len() >= jobs * 2 {
            if let Some(r) = set.join_next().await {
                add(&mut totals, report(r?, verbose)?);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        add(&mut totals, report(r?, verbose)?);
    }
    Ok(totals)
}

type Done = (usize, String, u64, Result<Ingested, VaultError>);

fn add(t: &mut Totals, d: Totals) {
    t.stored += d.stored;
    t.duplicates += d.duplicates;
    t.quarantined += d.quarantined;
    t.rejected += d.rejected;
    t.bytes += d.bytes;
}

/// Prints one result line and returns its contribution to the totals. Errors that are
/// the file's own (bad DICOM, withdrawn patient) are reported and counted; failures of
/// the vault itself (database, store, keys) stop the run.
fn report((index, sha256, len, r): Done, verbose: bool) -> Result<Totals> {
    let mut t = Totals::default();
    let line = match r {
        Ok(Ingested::Stored {
            object_id,
            pseudonym,
            duplicate,
            pseudonym_from_study,
            ..
        }) => {
            if duplicate {
                t.duplicates += 1;
            } else {
                t.stored += 1;
                t.bytes += len;
            }
            json!({"index": index, "sha256": sha256, "status": "stored", "object_id": object_id,
                   "pseudonym": pseudonym, "duplicate": duplicate, "pseudonym_from_study": pseudonym_from_study})
        }
        Ok(Ingested::Quarantined { reason, pseudonym }) => {
            t.quarantined += 1;
            json!({"index": index, "sha256": sha256, "status": "quarantined", "reason": reason, "pseudonym": pseudonym})
        }
        Err(e @ (VaultError::Deid(_) | VaultError::Withdrawn(_) | VaultError::OtherStudy)) => {
            t.rejected += 1;
            json!({"index": index, "sha256": sha256, "status": "rejected", "reason": e.to_string()})
        }
        Err(e) => return Err(e).context(format!("storing input file #{index} failed")),
    };
    if verbose {
        println!("{line}");
    }
    Ok(t)
}

/// `hbs ingest`.
pub async fn ingest(
    cfg: &VaultConfig,
    site: &str,
    input: &Path,
    clinical: Option<&Path>,
    safe_columns: &[String],
    jobs: usize,
) -> Result<()> {
    let site = SiteId::new(site)?;
    let v = Vault::open(cfg).await?;
    let log = open_log(cfg).await?;
    crate::record::attach(&v, &log);
    let start = Instant::now();
    let t = ingest_tree(&v, &log, &site, input, jobs, true).await?;
    let mut clinical_count = 0;
    if let Some(c) = clinical {
        let bytes = std::fs::read(c).with_context(|| format!("cannot read {}", c.display()))?;
        let res = v.ingest_clinical(&site, &bytes, safe_columns).await?;
        for e in &res.errors {
            println!(
                "{}",
                json!({"clinical": "rejected", "reason": e.to_string()})
            );
        }
        clinical_count = res.records.len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "site {site}: {} stored, {} already stored, {} quarantined, {} rejected, {} clinical records; {:.1} MB in {:.2} s ({:.0} instances/s)",
        t.stored,
        t.duplicates,
        t.quarantined,
        t.rejected,
        clinical_count,
        t.bytes as f64 / 1e6,
        secs,
        t.stored as f64 / secs.max(1e-9)
    );
    log.close().await;
    v.close().await;
    Ok(())
}

/// `hbs synth`.
pub fn synth(out: &Path, patients: usize, sites: usize, seed: u64, slices: usize) -> Result<()> {
    let cfg = vault::synth::SynthConfig {
        patients,
        sites,
        seed,
        slices,
        ..Default::default()
    };
    let s = vault::synth::generate(out, &cfg)
        .with_context(|| format!("cannot write the corpus to {}", out.display()))?;
    println!(
        "{} files ({:.1} MB): {} patients, {} studies, {} series, {} segmentations at sites {}; clinical CSV per site; planted identifiers in {}",
        s.files,
        s.bytes as f64 / 1e6,
        s.patients,
        s.studies,
        s.series,
        s.segs,
        s.sites.join(", "),
        out.join("identifiers.json").display()
    );
    Ok(())
}

/// `hbs demo`: the quick start's first command.
pub async fn demo(cfg: &VaultConfig, patients: usize, sites: usize) -> Result<()> {
    init(cfg).await?;
    let corpus = tempfile::Builder::new()
        .prefix("hbs-demo-corpus")
        .tempdir()
        .context("cannot create a temporary folder")?;
    println!("\n1. synthesizing an identifiable corpus (it is deleted at the end):");
    synth(corpus.path(), patients, sites, 2026, 4)?;
    println!("\n2. de-identifying, encrypting and storing it, site by site:");
    let mut site_dirs: Vec<_> = std::fs::read_dir(corpus.path())?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    site_dirs.sort();
    let v = Vault::open(cfg).await?;
    let log = open_log(cfg).await?;
    crate::record::attach(&v, &log);
    let start = Instant::now();
    let mut all = Totals::default();
    for dir in &site_dirs {
        let code = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let site = SiteId::new(&code)?;
        let t = ingest_tree(&v, &log, &site, dir, 16, false).await?;
        let clinical = match std::fs::read(dir.join("clinical.csv")) {
            Ok(b) => v
                .ingest_clinical(&site, &b, &["smoking".into()])
                .await?
                .records
                .len(),
            Err(_) => 0,
        };
        println!(
            "   {code}: {} instances stored, {} quarantined, {} rejected, {} clinical records",
            t.stored, t.quarantined, t.rejected, clinical
        );
        add(&mut all, t);
    }
    let secs = start.elapsed().as_secs_f64();
    let (p, i, c) = v.catalog().counts().await?;
    println!(
        "\n3. the vault now holds {p} patients (pseudonyms only), {i} encrypted instances and {c} encrypted clinical records\n   ({:.1} MB de-identified, encrypted and stored in {:.2} s, {:.0} instances/s).",
        all.bytes as f64 / 1e6,
        secs,
        all.stored as f64 / secs.max(1e-9)
    );
    if let Some(first) = v.catalog().instances(None).await?.first() {
        println!(
            "   Export one patient: hbs vault export --data {} --patient {} --out export/",
            cfg.data_dir.display(),
            first.pseudonym
        );
    }
    println!(
        "   Keys: {0}/keys (0600); database: {0}/hbs.db; ciphertext: {0}/blobs.",
        cfg.data_dir.display()
    );
    log.close().await;
    println!(
        "   Audit log: {} events, each instance recorded with its pseudonymized UIDs; check it: hbs audit verify --data {}",
        log.size(),
        cfg.data_dir.display()
    );
    v.close().await;
    Ok(())
}

fn pseudonym(s: &str) -> Result<Pseudonym> {
    match Pseudonym::parse(s) {
        Some(p) => Ok(p),
        None => bail!("not a pseudonym (expected PN- and 20 upper-case hex digits)"),
    }
}

/// The audit log of the data folder's database.
pub async fn open_log(cfg: &VaultConfig) -> Result<audit::AuditLog> {
    audit::AuditLog::open(&cfg.database_url(), &cfg.data_dir.join("audit"))
        .await
        .context("the audit log")
}

/// Records an action of the local operator before it is carried out; an error (nothing
/// recorded) means the action must not happen.
pub async fn record_local(cfg: &VaultConfig, action: &str, resource: &str) -> Result<()> {
    let log = open_log(cfg).await?;
    let rid = crate::record::RequestId::new();
    log.append(crate::record::event(
        &audit::Actor::local_operator(),
        &rid.0,
        action,
        resource,
        "allow",
        "local operator on the gateway host",
        "started",
    ))
    .await
    .context("refused: the audit log cannot record this action")?;
    log.close().await;
    Ok(())
}

/// `hbs vault export`.
pub async fn export(cfg: &VaultConfig, patient: Option<&str>, out: &Path) -> Result<()> {
    let p = patient.map(pseudonym).transpose()?;
    let v = Vault::open(cfg).await?;
    record_local(
        cfg,
        "vault.export",
        &p.as_ref()
            .map(|p| format!("patient {p}"))
            .unwrap_or_else(|| "all patients".into()),
    )
    .await?;
    let (n, c) = v.export(p.as_ref(), out).await?;
    println!(
        "exported {n} instances and {c} clinical records to {}",
        out.display()
    );
    v.close().await;
    Ok(())
}

/// `hbs vault withdraw`.
pub async fn withdraw(cfg: &VaultConfig, patient: &str) -> Result<()> {
    let p = pseudonym(patient)?;
    let v = Vault::open(cfg).await?;
    record_local(
        cfg,
        "vault.withdraw (crypto-shredding)",
        &format!("patient {p}"),
    )
    .await?;
    let n = v.withdraw(&p).await?;
    println!("patient {p} withdrawn: data key destroyed, {n} instances unreadable for ever");
    v.close().await;
    Ok(())
}

/// `hbs vault rotate-kek`.
pub async fn rotate_kek(cfg: &VaultConfig) -> Result<()> {
    let v = Vault::open(cfg).await?;
    record_local(cfg, "vault.rotate-kek", "key-encryption key").await?;
    let n = v.rotate_kek().await?;
    println!("key-encryption key rotated to v{n}; every data key rewrapped, blobs untouched");
    v.close().await;
    Ok(())
}

/// `hbs vault stats`.
pub async fn stats(cfg: &VaultConfig) -> Result<()> {
    let v = Vault::open(cfg).await?;
    let (p, i, c) = v.catalog().counts().await?;
    println!(
        "{}",
        json!({"patients": p, "instances": i, "clinical_records": c, "kek_version": v.kek_version()})
    );
    v.close().await;
    Ok(())
}
