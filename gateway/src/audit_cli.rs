//! `hbs audit verify` and `hbs audit events`: the auditor's and the site's checks.
//!
//! - Offline (`--data`): reads every stored event, recomputes the tree and checks every
//!   checkpoint with the audit verifier key (`--audit-key FILE`, default
//!   `DATA/audit/key.pub`; an auditor passes a copy kept apart from the gateway, since
//!   whoever controls the host could replace both the log and that file).
//! - Online (`--checkpoint FILE` with the client flags): asks the gateway for its latest
//!   checkpoint and the consistency proof from the kept one, checks both signatures and the
//!   proof, and keeps the newer checkpoint in FILE. The first time (no FILE yet) it keeps
//!   the gateway's checkpoint. The key is `--audit-key FILE`, or the gateway's `/audit/key`,
//!   which must then verify the kept checkpoint: a replaced key is detected.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::client::{query_escape, ClientArgs};

fn read_key(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the audit key {}", path.display()))?
        .trim()
        .to_string())
}

/// Offline verification of the log in a data folder.
pub async fn verify_offline(
    cfg: &vault::vault::VaultConfig,
    audit_key: Option<&Path>,
    json: bool,
) -> Result<()> {
    let dir = cfg.data_dir.join("audit");
    let vkey = read_key(
        &audit_key
            .map(Path::to_path_buf)
            .unwrap_or(dir.join("key.pub")),
    )?;
    let log = audit::AuditLog::open_for_reading(&cfg.database_url(), &dir).await?;
    let report = log.verify(&vkey).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} events, {} checkpoints checked; latest matching checkpoint: {}",
            report.events,
            report.checkpoints,
            report
                .latest_size
                .map(|s| format!("{s} events"))
                .unwrap_or_else(|| "none".into())
        );
        for p in &report.problems {
            match p.position {
                Some(n) => println!("event {n}: {}", p.what),
                None => println!("{}", p.what),
            }
        }
    }
    if !report.ok() {
        bail!(
            "the audit log does not verify: {} problem(s)",
            report.problem_count
        );
    }
    Ok(())
}

async fn get_text(c: &ClientArgs, path: &str) -> Result<String> {
    let a = c.get(path).await?;
    if a.status != 200 {
        bail!(
            "the gateway answered {} to {path}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    String::from_utf8(a.body).context("the gateway's answer is not text")
}

/// Online verification of a kept checkpoint against the gateway.
pub async fn verify_online(c: &ClientArgs, kept: &Path, audit_key: Option<&Path>) -> Result<()> {
    let vkey = match audit_key {
        Some(p) => read_key(p)?,
        None => get_text(c, "/audit/key").await?.trim().to_string(),
    };
    let new = get_text(c, "/audit/checkpoint").await?;
    let head = audit::note::open(new.as_bytes(), &vkey)
        .map_err(|e| anyhow::anyhow!("the gateway's checkpoint: {e}"))?;
    if !kept.exists() {
        std::fs::write(kept, &new)?;
        let msg = format!(
            "first contact: kept the gateway's checkpoint of {} events in {}",
            head.size,
            kept.display()
        );
        if c.json {
            println!(
                "{}",
                serde_json::json!({"ok": true, "first_contact": true, "size": head.size})
            );
        } else {
            println!("{msg}");
        }
        return Ok(());
    }
    let old =
        std::fs::read_to_string(kept).with_context(|| format!("cannot read {}", kept.display()))?;
    let old_head = audit::note::open(old.as_bytes(), &vkey).map_err(|e| {
        anyhow::anyhow!(
            "the kept checkpoint does not verify with the audit key ({e}): the gateway's key changed or the file was altered"
        )
    })?;
    let proof: Vec<audit::tree::Hash> = if old_head.size == 0 || old_head.size >= head.size {
        Vec::new()
    } else {
        let a = c
            .get(&format!(
                "/audit/consistency?from={}&to={}",
                old_head.size, head.size
            ))
            .await?;
        if a.status != 200 {
            bail!(
                "the gateway refused a consistency proof ({}): {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&a.body)?;
        v["proof"]
            .as_array()
            .context("no proof in the answer")?
            .iter()
            .map(|h| {
                h.as_str()
                    .and_then(audit::tree::hash_from_b64)
                    .context("a proof hash is malformed")
            })
            .collect::<Result<_>>()?
    };
    match audit::verify::check_consistency(&old, &new, &proof, &vkey) {
        Ok((o, n)) => {
            std::fs::write(kept, &new)?;
            if c.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "from": o.size, "to": n.size})
                );
            } else {
                println!(
                    "consistent: the gateway's log of {} events extends the kept checkpoint of {}; kept the newer one",
                    n.size, o.size
                );
            }
            Ok(())
        }
        Err(e) => bail!("{e}"),
    }
}

/// Filters of `hbs audit events` (query parameters of `GET /audit/events`).
pub struct EventFilters {
    /// (name, value) pairs.
    pub pairs: Vec<(&'static str, String)>,
}

/// `hbs audit events`: lists events and checks each inclusion proof against the signed
/// checkpoint the gateway returns with them.
pub async fn events(c: &ClientArgs, f: &EventFilters) -> Result<()> {
    let q: Vec<String> = f
        .pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", query_escape(v)))
        .collect();
    let path = if q.is_empty() {
        "/audit/events".to_string()
    } else {
        format!("/audit/events?{}", q.join("&"))
    };
    let body = get_text(c, &path).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let vkey = get_text(c, "/audit/key").await?.trim().to_string();
    let head = audit::note::open(
        v["checkpoint"].as_str().unwrap_or_default().as_bytes(),
        &vkey,
    )
    .map_err(|e| anyhow::anyhow!("the checkpoint sent with the events: {e}"))?;
    let mut verified = 0usize;
    let list = v["events"].as_array().cloned().unwrap_or_default();
    for item in &list {
        let e: audit::Event = serde_json::from_value(item["event"].clone())?;
        if let Some(proof) = item["proof"].as_array() {
            let proof: Vec<audit::tree::Hash> = proof
                .iter()
                .filter_map(|h| h.as_str().and_then(audit::tree::hash_from_b64))
                .collect();
            let leaf = audit::tree::record_hash(&e.entry());
            if !audit::tree::verify_inclusion(&proof, head.size, head.root, e.seq, leaf) {
                bail!("event {}: its inclusion proof does not verify", e.seq);
            }
            verified += 1;
        }
    }
    if c.json {
        println!("{body}");
    } else {
        for item in &list {
            let e = &item["event"];
            println!(
                "{:>8}  {}  {:<13} {:<16} {:<5} {}  {}  {}",
                e["seq"],
                e["time_ms"],
                e["actor"]["role"].as_str().unwrap_or(""),
                e["actor"]["name"].as_str().unwrap_or(""),
                e["decision"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
                e["resource"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or("")
            );
        }
        eprintln!(
            "{} events; {verified} inclusion proofs verified against the checkpoint of {} events",
            list.len(),
            head.size
        );
    }
    Ok(())
}
