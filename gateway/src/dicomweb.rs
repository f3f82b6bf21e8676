//! DICOMweb (PS3.18) routes: STOW-RS contributions from data providers.
//!
//! `POST /dicomweb/studies` and `POST /dicomweb/studies/{study}` take
//! `multipart/related; type="application/dicom"`. Each part goes through the vault (de-
//! identify, encrypt, store, commit) for the site named in the caller's certificate,
//! never one named in the request. The answer is the standard Store Instances response
//! in DICOM JSON: the Referenced SOP Sequence lists the stored instances by their
//! pseudonymized UIDs, the Failed SOP Sequence the others with a Failure Reason; 200 when
//! all were stored, 202 when some were, 409 when none was (PS3.18 10.5.3). Nothing in it,
//! and nothing logged, carries a value of the source instances.
//!
//! Every answer also carries a receipt the gateway signs: header `Hbs-Receipt` is the
//! base64 of a JSON document (site, certificate serial of the contributor, time, the
//! pseudonymized UIDs stored, the parts that failed and why), `Hbs-Receipt-Signature` the
//! base64 of its ECDSA P-256 / SHA-256 signature by the gateway's TLS key. A site checks
//! it offline with the gateway's certificate, for example
//! `openssl dgst -sha256 -verify gateway-pubkey.pem -signature sig.bin receipt.json`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use certs::Principal;
use serde_json::{json, Value};
use vault::pseudonym::SiteId;
use vault::vault::{Ingested, VaultError};

use crate::record::{self, RequestId};
use crate::routes::{AppState, PeerKey};

/// Largest single instance accepted in a STOW-RS part.
const MAX_PART: u64 = 1 << 30;

/// Parts of one request de-identified and stored at once.
const PARALLEL_PARTS: usize = 16;

/// PS3.4 / PS3.18 failure reasons used here.
const PROCESSING_FAILURE: u16 = 0x0110;
const CANNOT_UNDERSTAND: u16 = 0xC000;
const STUDY_MISMATCH: u16 = 0xC122;
const REFUSED: u16 = 0xA700;

fn dicom_json_error(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({"error": reason}))).into_response()
}

fn attr(vr: &str, value: Value) -> Value {
    json!({"vr": vr, "Value": [value]})
}

/// `POST /dicomweb/studies`.
pub async fn stow(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(key): Extension<PeerKey>,
    Extension(rid): Extension<RequestId>,
    Extension(deferred): Extension<record::DeferredEvent>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    store(state, p, key, rid, deferred, headers, body, None).await
}

/// `POST /dicomweb/studies/{study}`.
#[allow(clippy::too_many_arguments)]
pub async fn stow_study(
    State(state): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(key): Extension<PeerKey>,
    Extension(rid): Extension<RequestId>,
    Extension(deferred): Extension<record::DeferredEvent>,
    Path(study): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    store(state, p, key, rid, deferred, headers, body, Some(study)).await
}

/// Media type of a signed contribution manifest part (first part of the request).
pub const MANIFEST_TYPE: &str = "application/vnd.hbs.manifest+json";
/// Media type of the manifest's signature part (second part): base64 of the DER ECDSA
/// signature over the manifest bytes with SHA-256, by the contributor's certificate key.
pub const SIGNATURE_TYPE: &str = "application/vnd.hbs.manifest-signature";

/// A contribution manifest: what the site says it sends, signed with its certificate.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    site: String,
    time: u64,
    consent: String,
    instances: Vec<String>,
}

fn verify_manifest(
    key: &openssl::pkey::PKeyRef<openssl::pkey::Public>,
    manifest: &[u8],
    signature_b64: &[u8],
    site: &str,
) -> Result<std::collections::HashSet<String>, String> {
    use base64::Engine as _;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(signature_b64).trim())
        .map_err(|_| "the manifest signature is not base64".to_string())?;
    let ok = (|| {
        let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), key)?;
        v.update(manifest)?;
        v.verify(&sig)
    })()
    .unwrap_or(false);
    if !ok {
        return Err("the manifest signature does not verify with the presented certificate".into());
    }
    let m: Manifest =
        serde_json::from_slice(manifest).map_err(|e| {
            // serde's own message quotes the offending value, which could be anything the
            // site put there: say where, not what (this reason is logged and audited).
            format!(
                "the manifest is not of the expected form (site, time, consent, instances) at line {}, column {}",
                e.line(),
                e.column()
            )
        })?;
    if m.site != site {
        return Err("the manifest names another site than the certificate".into());
    }
    if m.consent.trim().is_empty() || m.time == 0 {
        return Err("the manifest needs a consent attestation and a time".into());
    }
    Ok(m.instances
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect())
}

/// Records a refused contribution (the reason names no value); a 503 when it cannot be.
async fn refuse(
    state: &AppState,
    p: &Principal,
    rid: &RequestId,
    status: StatusCode,
    reason: &str,
) -> Response {
    let ev = record::event(
        &record::actor(p),
        &rid.0,
        "contribution",
        &format!("site {}", p.site.as_deref().unwrap_or("-")),
        "deny",
        "contribution checks",
        &format!("refused: {reason}"),
    );
    match state.audit.append(ev).await {
        Ok(_) => dicom_json_error(status, reason),
        Err(e) => {
            tracing::error!(error = %e, "refusal could not be recorded");
            dicom_json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot record this request; nothing was done",
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn store(
    state: AppState,
    p: Principal,
    peer_key: PeerKey,
    rid: RequestId,
    deferred: record::DeferredEvent,
    headers: HeaderMap,
    body: Body,
    study: Option<String>,
) -> Response {
    // The site comes from the certificate, never from the request.
    let Some(site) = p.site.as_deref().and_then(|s| SiteId::new(s).ok()) else {
        return dicom_json_error(
            StatusCode::FORBIDDEN,
            "a contribution needs a data-provider certificate bound to a site",
        );
    };
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("multipart/related") {
        return dicom_json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "STOW-RS takes multipart/related; type=\"application/dicom\"",
        );
    }
    let param = |name: &str| {
        ct.split(';').skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().trim_matches('"').to_string())
        })
    };
    if param("type").is_some_and(|t| !t.eq_ignore_ascii_case("application/dicom")) {
        return dicom_json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only type=\"application/dicom\" parts are accepted",
        );
    }
    let Some(boundary) = param("boundary").filter(|b| !b.is_empty()) else {
        return dicom_json_error(
            StatusCode::BAD_REQUEST,
            "multipart/related without a boundary",
        );
    };
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(MAX_PART));
    let mut parts =
        multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    let mut index = 0usize;
    // A signed manifest, when the first two parts are one: the SHA-256 of every instance
    // the site vouches for. Checked before anything is stored.
    let mut manifest: Option<(std::collections::HashSet<String>, String)> = None;
    let mut pending_first = None;
    match parts.next_field().await {
        Ok(Some(f)) if f.content_type().map(|m| m.essence_str()) == Some(MANIFEST_TYPE) => {
            let m = match f.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    return dicom_json_error(
                        StatusCode::BAD_REQUEST,
                        &format!("manifest part: {e}"),
                    )
                }
            };
            let sig = match parts.next_field().await {
                Ok(Some(s))
                    if s.content_type().map(|m| m.essence_str()) == Some(SIGNATURE_TYPE) =>
                {
                    match s.bytes().await {
                        Ok(b) => b,
                        Err(e) => {
                            return dicom_json_error(
                                StatusCode::BAD_REQUEST,
                                &format!("signature part: {e}"),
                            )
                        }
                    }
                }
                _ => {
                    return dicom_json_error(
                        StatusCode::BAD_REQUEST,
                        "a manifest must be followed by its signature part",
                    )
                }
            };
            match verify_manifest(&peer_key.0, &m, &sig, site.as_str()) {
                Ok(set) => manifest = Some((set, crate::dicomweb::sha256_hex(&m))),
                Err(reason) => {
                    tracing::info!(site = %site, reason = %reason, "signed contribution refused");
                    return refuse(&state, &p, &rid, StatusCode::FORBIDDEN, &reason).await;
                }
            }
        }
        Ok(Some(f)) => pending_first = Some(f),
        Ok(None) => {}
        Err(e) => failed.push((index, CANNOT_UNDERSTAND, format!("multipart body: {e}"))),
    }
    if manifest.is_none() && state.signed_only.contains(site.as_str()) {
        tracing::info!(site = %site, "unsigned contribution refused by the site's setting");
        return refuse(
            &state,
            &p,
            &rid,
            StatusCode::FORBIDDEN,
            &format!(
                "site {site} accepts signed contributions only: send a manifest part ({MANIFEST_TYPE}) and its signature ({SIGNATURE_TYPE}) before the instances; nothing was stored"
            ),
        )
        .await;
    }
    let rule = match &manifest {
        Some((_, sha)) => format!("data provider of site {site}; manifest {sha} signed"),
        None => format!("data provider of site {site}; unsigned"),
    };
    let actor = record::actor(&p);
    // Parts are de-identified and stored concurrently (up to PARALLEL_PARTS at once, so
    // memory stays bounded), each waiting for its own durability; the answer lists them
    // in request order.
    type Outcome = Result<(Result<Ingested, VaultError>, audit::Event), record::NotRecorded>;
    let mut running: tokio::task::JoinSet<(usize, Outcome)> = tokio::task::JoinSet::new();
    // Events recorded for this request: (part, event).
    let mut recorded: Vec<(usize, audit::Event)> = Vec::new();
    let mut outcomes = Vec::new();
    loop {
        let field = match pending_first.take() {
            Some(f) => f,
            None => match parts.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    failed.push((index, CANNOT_UNDERSTAND, format!("multipart body: {e}")));
                    break;
                }
            },
        };
        let bytes = match field.bytes().await {
            Ok(b) => Vec::from(b), // no copy when the part is the buffer's only owner
            Err(e) => {
                failed.push((index, CANNOT_UNDERSTAND, format!("part {index}: {e}")));
                index += 1;
                continue;
            }
        };
        if let Some((hashes, _)) = &manifest {
            if !hashes.contains(&sha256_hex(&bytes)) {
                let ev = record::event(
                    &actor,
                    &rid.0,
                    "contribution.instance",
                    &format!("site {site}"),
                    "deny",
                    &rule,
                    &format!("rejected: part {index} is not in the signed manifest"),
                );
                match state.audit.append(ev).await {
                    Ok(e) => recorded.push((index, e)),
                    Err(e) => {
                        tracing::error!(error = %e, "contribution refused: the audit log cannot record it");
                        return dicom_json_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the audit log cannot record this contribution; parts already recorded may have been stored, send it again",
                        );
                    }
                }
                state.metrics.ingested("rejected");
                failed.push((
                    index,
                    REFUSED,
                    "not in the signed manifest (altered or unlisted); nothing of it stored".into(),
                ));
                index += 1;
                continue;
            }
        }
        while running.len() >= PARALLEL_PARTS {
            if let Some(done) = running.join_next().await {
                outcomes.push(done);
            }
        }
        let (vault, log, site, study, i) = (
            state.vault.clone(),
            state.audit.clone(),
            site.clone(),
            study.clone(),
            index,
        );
        let (actor, rid, rule, deferred) =
            (actor.clone(), rid.0.clone(), rule.clone(), deferred.clone());
        running.spawn(async move {
            let o = record::ingest(
                &vault,
                &log,
                &actor,
                &rid,
                &site,
                bytes,
                study.as_deref(),
                &rule,
                Some(&deferred),
            )
            .await;
            (i, o)
        });
        index += 1;
    }
    while let Some(done) = running.join_next().await {
        outcomes.push(done);
    }
    let mut outcomes = match outcomes.into_iter().collect::<Result<Vec<_>, _>>() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "an ingest task failed");
            return dicom_json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "an ingest task failed; send the contribution again (stored instances are not duplicated)",
            );
        }
    };
    outcomes.sort_by_key(|(i, _)| *i);
    let mut vault_failed = false;
    let mut audit_failed = false;
    for (index, outcome) in outcomes {
        let outcome = match outcome {
            Ok((o, event)) => {
                recorded.push((index, event));
                o
            }
            Err(e) => {
                tracing::error!(error = %e, "contribution refused: the audit log cannot record it");
                audit_failed = true;
                continue;
            }
        };
        match outcome {
            Ok(Ingested::Stored {
                sop_uid,
                study_uid,
                sop_class,
                duplicate,
                ..
            }) => {
                state
                    .metrics
                    .ingested(if duplicate { "duplicate" } else { "stored" });
                stored.push((sop_class, sop_uid, study_uid));
            }
            Ok(Ingested::Quarantined { reason, .. }) => {
                state.metrics.ingested("quarantined");
                failed.push((index, PROCESSING_FAILURE, format!("quarantined: {reason}")));
            }
            Err(VaultError::OtherStudy) => {
                state.metrics.ingested("rejected");
                failed.push((index, STUDY_MISMATCH, VaultError::OtherStudy.to_string()));
            }
            Err(e @ (VaultError::Deid(_) | VaultError::Withdrawn(_))) => {
                state.metrics.ingested("rejected");
                failed.push((index, REFUSED, e.to_string()));
            }
            Err(e) => {
                tracing::error!(error = %e, "contribution could not be stored");
                vault_failed = true;
            }
        }
    }
    if audit_failed {
        // Nothing of an unrecorded part was stored (it is recorded before it is stored).
        return dicom_json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot record this contribution: what could not be recorded was not stored; send it again (instances already stored are not duplicated)",
        );
    }
    if vault_failed {
        // The vault itself failed (database, store, keys) for at least one part: the
        // request is not acknowledged. Parts that did get stored are idempotent, so the
        // site sends the same request again.
        return dicom_json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the vault could not store every part of the contribution; send it again (instances already stored are not duplicated)",
        );
    }
    failed.sort_by_key(|(i, _, _)| *i);
    tracing::info!(site = %site, stored = stored.len(), failed = failed.len(), "contribution");
    let mut out = serde_json::Map::new();
    if !stored.is_empty() {
        let items: Vec<Value> = stored
            .iter()
            .map(|(class, uid, study)| {
                json!({
                    "00081150": attr("UI", json!(class)),
                    "00081155": attr("UI", json!(uid)),
                    "00081190": attr("UR", json!(format!("/dicomweb/studies/{study}/instances/{uid}"))),
                })
            })
            .collect();
        out.insert("00081199".into(), json!({"vr": "SQ", "Value": items}));
    }
    if !failed.is_empty() {
        let items: Vec<Value> = failed
            .iter()
            .map(|(i, code, reason)| {
                // The failed instance is named by its position in the request (its own
                // UIDs are the site's identifiers and are not echoed); the reason text
                // goes in Text Value, the standard's code in Failure Reason.
                json!({
                    "00081197": attr("US", json!(code)),
                    "0040A160": attr("UT", json!(format!("part {i}: {reason}"))),
                })
            })
            .collect();
        out.insert("00081198".into(), json!({"vr": "SQ", "Value": items}));
    }
    // The receipt carries the events of this contribution and their inclusion proofs
    // against a tree head signed now: the site can later prove what it contributed.
    recorded.sort_by_key(|(i, e)| (*i, e.seq));
    let seqs: Vec<u64> = recorded.iter().map(|(_, e)| e.seq).collect();
    let audit_part = match state.audit.signed_head_with_proofs(&seqs).await {
        Ok((size, note, proofs)) => {
            let events: Vec<Value> = recorded
                .iter()
                .zip(proofs)
                .map(|((part, e), p)| {
                    json!({"part": part, "event": String::from_utf8_lossy(&e.entry()),
                        "proof": audit::tree::to_b64(&p)})
                })
                .collect();
            json!({"size": size, "checkpoint": note, "events": events})
        }
        Err(e) => {
            tracing::error!(error = %e, "no signed tree head for the receipt");
            json!({"events": recorded.iter().map(|(p, e)| json!({"part": p, "seq": e.seq})).collect::<Vec<_>>()})
        }
    };
    let receipt = json!({
        "audit": audit_part,
        "site": site.as_str(),
        "signed": manifest.is_some(),
        "manifest_sha256": manifest.as_ref().map(|(_, h)| h.clone()),
        "contributor_serial": p.serial,
        "time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "stored": stored.iter().map(|(_, uid, study)| json!({"sop_instance_uid": uid, "study_instance_uid": study})).collect::<Vec<_>>(),
        "failed": failed.iter().map(|(i, code, reason)| json!({"part": i, "failure_reason": code, "reason": reason})).collect::<Vec<_>>(),
    });
    let receipt = serde_json::to_vec(&receipt).unwrap_or_default();
    let signature = match sign(&state.receipt_key, &receipt) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "receipt could not be signed");
            return dicom_json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the receipt could not be signed",
            );
        }
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let status = match (stored.is_empty(), failed.is_empty()) {
        (false, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        (true, _) => StatusCode::CONFLICT,
    };
    (
        status,
        [
            ("content-type", "application/dicom+json".to_string()),
            ("hbs-receipt", b64.encode(&receipt)),
            ("hbs-receipt-signature", b64.encode(&signature)),
        ],
        serde_json::to_vec(&Value::Object(out)).unwrap_or_default(),
    )
        .into_response()
}

/// SHA-256, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    vault::tree::sha256_hex(b)
}

/// Signs `data` with the gateway's key (as receipts are signed).
pub fn sign_bytes(
    key: &openssl::pkey::PKeyRef<openssl::pkey::Private>,
    data: &[u8],
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    sign(key, data)
}

/// ECDSA (the key's algorithm) over SHA-256 of `data`, DER-encoded.
fn sign(
    key: &openssl::pkey::PKeyRef<openssl::pkey::Private>,
    data: &[u8],
) -> Result<Vec<u8>, openssl::error::ErrorStack> {
    let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key)?;
    signer.update(data)?;
    signer.sign_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A malformed manifest's refusal (logged and audited) says where, never what.
    #[test]
    fn manifest_errors_do_not_quote_values() {
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let key = openssl::pkey::PKey::from_ec_key(openssl::ec::EcKey::generate(&group).unwrap())
            .unwrap();
        let public =
            openssl::pkey::PKey::public_key_from_pem(&key.public_key_to_pem().unwrap()).unwrap();
        let manifest =
            br#"{"site":"SITE_A","time":"DOE^JOHN 1950-06-15","consent":"yes","instances":[]}"#;
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::STANDARD.encode(sign(&key, manifest).unwrap());
        let e = verify_manifest(&public, manifest, sig.as_bytes(), "SITE_A").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("DOE") && !e.contains("1950"), "{e}");
    }
}
