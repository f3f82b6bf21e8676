//! `hbs contribute`: a site's command line. Walks a folder, signs a manifest per batch
//! with the site's certificate key, uploads over STOW-RS with mTLS, verifies each signed
//! receipt with the gateway's certificate, saves it, and records progress so that an
//! interrupted run resumes without sending what was already acknowledged.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;

use crate::client::ClientArgs;

/// One file's outcome, kept in the state file (by SHA-256, never by path).
#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Done {
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// `hbs contribute`. Returns an error (exit 2) when the upload could not complete.
pub async fn contribute(
    c: &ClientArgs,
    dir: &Path,
    batch: usize,
    state_path: &Path,
    receipts: &Path,
) -> Result<()> {
    let json_out = c.json;
    let cert_pem =
        std::fs::read(&c.cert).with_context(|| format!("cannot read {}", c.cert.display()))?;
    let cert = X509::from_pem(&cert_pem)?;
    let me = certs::principal_from_cert(&cert)?;
    let Some(site) = me
        .site
        .clone()
        .filter(|_| me.role == certs::Role::DataProvider)
    else {
        bail!("hbs contribute needs a data-provider certificate bound to a site");
    };
    let key: PKey<Private> = PKey::private_key_from_pem(
        &std::fs::read(&c.key).with_context(|| format!("cannot read {}", c.key.display()))?,
    )?;
    let connector = c.connector()?;

    let mut state: BTreeMap<String, Done> = match std::fs::read(state_path) {
        Ok(b) => serde_json::from_slice(&b).context("the state file is damaged")?,
        Err(_) => BTreeMap::new(),
    };
    let state_canon = state_path.canonicalize().ok();
    let mut todo = Vec::new();
    for path in vault::tree::walk(dir)? {
        if state_canon
            .as_ref()
            .is_some_and(|s| path.canonicalize().ok().as_ref() == Some(s))
        {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let sha = vault::tree::sha256_hex(&bytes);
        if !state.contains_key(&sha) {
            todo.push((sha, path));
        }
    }
    std::fs::create_dir_all(receipts)?;
    let batches = todo.len().div_ceil(batch.max(1));
    // A progress bar on a terminal; one line per batch otherwise (logs, CI, --json).
    let bar = if json_out {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(todo.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} files, {per_sec}, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut stored, mut failed) = (0usize, 0usize);
    for (n, chunk) in todo.chunks(batch.max(1)).enumerate() {
        let files: Vec<(String, Vec<u8>)> = chunk
            .iter()
            .map(|(sha, p)| Ok((sha.clone(), std::fs::read(p)?)))
            .collect::<std::io::Result<_>>()?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "site": site,
            "time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1),
            "consent": "the contributing site attests that consent covers every instance listed",
            "instances": files.iter().map(|(s, _)| s).collect::<Vec<_>>(),
        }))?;
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key)?;
        signer.update(&manifest)?;
        let signature = base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec()?);
        let boundary = format!("hbs-contribute-{n}");
        let mut parts: Vec<(&str, &[u8])> = vec![
            (crate::dicomweb::MANIFEST_TYPE, &manifest),
            (crate::dicomweb::SIGNATURE_TYPE, signature.as_bytes()),
        ];
        parts.extend(
            files
                .iter()
                .map(|(_, b)| ("application/dicom", b.as_slice())),
        );
        let crate::client::Answer {
            status,
            body: resp,
            headers,
            server_cert: gateway_cert,
        } = c
            .send(&connector, |host| {
                crate::client::stow_request(host, &boundary, &parts)
            })
            .await?;
        if !matches!(status, 200 | 202 | 409) {
            bail!(
                "batch {}/{batches}: the gateway answered {status}: {}",
                n + 1,
                String::from_utf8_lossy(&resp)
            );
        }
        // The receipt, verified with the certificate the gateway presented (itself
        // verified against the platform CA in the handshake).
        let get = |h: &str| {
            headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        };
        let (Some(receipt), Some(sig)) = (get("hbs-receipt"), get("hbs-receipt-signature")) else {
            bail!(
                "batch {}/{batches}: the gateway sent no signed receipt",
                n + 1
            );
        };
        let gateway_key = gateway_cert.public_key()?;
        let mut v =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &gateway_key)?;
        v.update(&receipt)?;
        if !v.verify(&sig)? {
            bail!(
                "batch {}/{batches}: the receipt's signature does not verify",
                n + 1
            );
        }
        let r: serde_json::Value = serde_json::from_slice(&receipt)?;
        std::fs::write(receipts.join(format!("receipt-{:06}.json", n)), &receipt)?;
        std::fs::write(receipts.join(format!("receipt-{:06}.sig", n)), &sig)?;
        // Failures name their part by position among the instances of the batch.
        let mut reasons: BTreeMap<usize, String> = BTreeMap::new();
        for f in r["failed"].as_array().into_iter().flatten() {
            if let Some(i) = f["part"].as_u64() {
                reasons.insert(i as usize, f["reason"].as_str().unwrap_or("").to_string());
            }
        }
        for (i, (sha, _)) in files.iter().enumerate() {
            let done = match reasons.get(&i) {
                Some(reason) => {
                    failed += 1;
                    Done {
                        status: "refused".into(),
                        reason: Some(reason.clone()),
                    }
                }
                None => {
                    stored += 1;
                    Done {
                        status: "stored".into(),
                        reason: None,
                    }
                }
            };
            state.insert(sha.clone(), done);
        }
        let tmp = state_path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
        std::fs::rename(&tmp, state_path)?;
        let line = format!(
            "batch {}/{batches}: {} stored or already there, {} refused",
            n + 1,
            files.len() - reasons.len(),
            reasons.len()
        );
        bar.inc(files.len() as u64);
        if bar.is_hidden() {
            if !json_out {
                eprintln!("{line}");
            }
        } else {
            bar.set_message(format!("({stored} stored, {failed} refused)"));
        }
    }
    bar.finish_and_clear();
    if json_out {
        println!(
            "{}",
            serde_json::json!({"sent": todo.len(), "stored": stored, "refused": failed,
                "already_done": state.len() - todo.len(), "receipts": receipts})
        );
    } else {
        println!(
            "{} files sent in {batches} signed batches: {stored} stored, {failed} refused with a reason; {} done before; receipts verified and saved in {}",
            todo.len(),
            state.len() - todo.len(),
            receipts.display()
        );
    }
    Ok(())
}
