//! The audit log's routes, for auditors and for everyone who keeps checkpoints.
//!
//! - `GET /audit/checkpoint` (any platform identity): the latest signed tree head, as the
//!   C2SP signed note (text/plain). Sites keep it and later ask for consistency.
//! - `GET /audit/key` (any): the audit verifier key (`NAME+ID+KEY`).
//! - `GET /audit/consistency?from=N&to=M` (any): the consistency proof between two tree
//!   sizes, `{"from","to","proof":[base64 hashes]}`.
//! - `GET /audit/proof?seq=N[&size=M]` (any): the inclusion proof of event N in the tree of
//!   M events (default: the latest checkpoint), with the event's leaf hash. Hashes only:
//!   no event content.
//! - `GET /audit/events` (auditors): events filtered by `role`, `site`, `name`, `serial`,
//!   `action`, `resource`, `decision`, `from`/`to` (ms since the epoch), `after` (a
//!   sequence number, to page on) and `limit` (default 100, at most 1000); each with its
//!   inclusion proof against the checkpoint returned beside them.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::routes::AppState;

fn error(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
}

fn unavailable(e: audit::AuditError) -> Response {
    tracing::error!(error = %e, "audit log read failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit log cannot be read",
    )
}

/// `GET /audit/checkpoint`.
pub async fn checkpoint(State(st): State<AppState>) -> Response {
    match st.audit.checkpoint().await {
        Ok((_, note)) => ([("content-type", "text/plain; charset=utf-8")], note).into_response(),
        Err(e) => unavailable(e),
    }
}

/// `GET /audit/key`.
pub async fn key(State(st): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; charset=utf-8")],
        format!("{}\n", st.audit.verifier_key()),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Between {
    from: u64,
    to: u64,
}

/// `GET /audit/consistency`.
pub async fn consistency(
    State(st): State<AppState>,
    q: Result<Query<Between>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "give from and to, two tree sizes (1 <= from <= to)",
        );
    };
    match st.audit.consistency_proof(q.from, q.to).await {
        Ok(p) => axum::Json(json!({"from": q.from, "to": q.to, "proof": audit::tree::to_b64(&p)}))
            .into_response(),
        Err(audit::AuditError::Range(r)) => error(StatusCode::BAD_REQUEST, &r),
        Err(e) => unavailable(e),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofQuery {
    seq: u64,
    size: Option<u64>,
}

/// `GET /audit/proof`.
pub async fn proof(
    State(st): State<AppState>,
    q: Result<Query<ProofQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "give seq (an event number) and optionally size (a tree size)",
        );
    };
    let (size, note) = match q.size {
        Some(s) => (s, None),
        None => match st.audit.checkpoint().await {
            Ok((s, n)) => (s, Some(n)),
            Err(e) => return unavailable(e),
        },
    };
    match st.audit.inclusion_proof(q.seq, size).await {
        Ok(p) => axum::Json(json!({
            "seq": q.seq, "size": size, "checkpoint": note,
            "proof": audit::tree::to_b64(&p),
        }))
        .into_response(),
        Err(audit::AuditError::Range(r)) => error(StatusCode::BAD_REQUEST, &r),
        Err(e) => unavailable(e),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    role: Option<String>,
    site: Option<String>,
    name: Option<String>,
    serial: Option<String>,
    action: Option<String>,
    resource: Option<String>,
    decision: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    after: Option<u64>,
    limit: Option<u64>,
}

/// `GET /audit/events`.
pub async fn events(
    State(st): State<AppState>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad filter: {}", e.body_text()),
            )
        }
    };
    let f = audit::Filter {
        role: q.role,
        site: q.site,
        name: q.name,
        serial: q.serial,
        action: q.action,
        resource: q.resource,
        decision: q.decision,
        from_ms: q.from,
        to_ms: q.to,
        after: q.after,
        limit: q.limit.unwrap_or(100).clamp(1, 1000),
    };
    let (size, note) = match st.audit.checkpoint().await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    let list = match st.audit.events(&f).await {
        Ok(l) => l,
        Err(e) => return unavailable(e),
    };
    // Proofs against the checkpoint for the events it covers, from one read of the hashes.
    let covered: Vec<u64> = list.iter().map(|e| e.seq).filter(|s| *s < size).collect();
    let mut proofs = match st.audit.root_and_proofs(size, &covered).await {
        Ok((_, p)) => p.into_iter(),
        Err(e) => return unavailable(e),
    };
    let out: Vec<serde_json::Value> = list
        .into_iter()
        .map(|e| {
            let proof = (e.seq < size)
                .then(|| proofs.next().map(|p| audit::tree::to_b64(&p)))
                .flatten();
            json!({"event": e, "proof": proof})
        })
        .collect();
    axum::Json(json!({"size": size, "checkpoint": note, "events": out})).into_response()
}
