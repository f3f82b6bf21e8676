//! Governance routes: data, service and policy requests, ethics-board reviews, grants.
//! The workflow and its rules live in the `policy` crate; here they are wired to HTTP
//! and to the audit log. Every change commits with its audit event in one transaction
//! (the request's own event rides along); every refused step is recorded with its reason
//! before the answer leaves.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use certs::{Principal, Role};
use policy::decide::{Decider, Decision};
use policy::model::{resource_scope, Query as PolicyQuery, Rule};
use policy::store::{Change, InTx, PolicyStore, Submission};
use policy::workflow::{Person, Status, Step};
use policy::PolicyError;
use serde::Deserialize;
use serde_json::json;

use crate::record::{actor, event, now_ms, DeferredEvent, RequestId};
use crate::routes::AppState;

/// The header in which a caller working under a grant declares its purpose.
pub const PURPOSE_HEADER: &str = "hbs-purpose";

/// The subject of a principal: its SPIFFE ID (stable across certificate renewals).
pub fn subject(p: &Principal) -> String {
    certs::spiffe_id(p.role, &p.name, p.site.as_deref())
        .unwrap_or_else(|_| format!("invalid:{}", p.serial))
}

fn person(p: &Principal) -> Person {
    Person {
        subject: subject(p),
        role: p.role.as_str().to_string(),
        site: p.site.clone(),
    }
}

/// The default policy: [`crate::routes::ROUTES`] as role rules, plus who may submit
/// which kind of request. Each entry is seeded once (see [`PolicyStore::seed`]).
pub fn default_policy() -> Vec<(String, Vec<Rule>)> {
    let mut out: Vec<(String, Vec<Rule>)> = crate::routes::ROUTES
        .iter()
        .map(|(method, route, roles)| {
            (
                format!("{method} {route}"),
                roles
                    .iter()
                    .map(|r| Rule::route(r.as_str(), method, route))
                    .collect(),
            )
        })
        .collect();
    for (kind, roles) in [
        ("data", &[Role::Researcher][..]),
        ("service", &[Role::Researcher][..]),
        ("policy", &[Role::Operator, Role::EthicsBoard][..]),
    ] {
        out.push((
            format!("request:{kind}"),
            roles
                .iter()
                .map(|r| Rule {
                    sub: format!("role:{r}"),
                    dom: "*".into(),
                    obj: format!("request:{kind}"),
                    act: "submit".into(),
                    purpose: "*".into(),
                    until: "*".into(),
                })
                .collect(),
        ));
    }
    out
}

/// Opens the policy over the data folder's database, seeds the default rules it has not
/// seen (recording what it added in the audit log), and returns the decider. Fails when
/// the decider would not enforce: the gateway does not start.
pub async fn open(
    url: &str,
    lock: Option<policy::store::WriteLock>,
    log: &audit::AuditLog,
) -> anyhow::Result<Arc<Decider>> {
    let store = PolicyStore::open(url, lock).await?;
    let added = store.seed(&default_policy()).await?;
    if !added.is_empty() {
        let lines: Vec<String> = added.iter().map(|r| r.line()).collect();
        log.append(event(
            &audit::Actor::local_operator(),
            "startup",
            "policy.seed",
            "policy",
            "allow",
            "default policy of this release (each route seeded once)",
            &format!("{} rules added: {}", added.len(), lines.join(" | ")),
        ))
        .await?;
    }
    Ok(Arc::new(Decider::open(store).await?))
}

/// A JSON error answer.
fn answer(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

/// The answer for a policy error, the status fitting it.
fn policy_error(e: &PolicyError) -> Response {
    let status = match e {
        PolicyError::BadInput(_) => StatusCode::BAD_REQUEST,
        PolicyError::NotFound(_) => StatusCode::NOT_FOUND,
        PolicyError::Refused(_) => StatusCode::CONFLICT,
        PolicyError::Audit(_)
        | PolicyError::Database(_)
        | PolicyError::Engine(_)
        | PolicyError::Disabled => {
            tracing::error!(error = %e, "governance step failed");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    answer(status, &e.to_string())
}

/// The audit side of one change: the hook writing the request's event (if still
/// unwritten) and the change's event in the change's transaction, and what to do after.
struct InTxRecord {
    slot: Arc<Mutex<Vec<audit::Event>>>,
    request_event: Option<audit::NewEvent>,
    deferred: Option<DeferredEvent>,
}

impl InTxRecord {
    fn new(
        st: &AppState,
        p: &Principal,
        rid: &RequestId,
        deferred: Option<&DeferredEvent>,
        rule: String,
    ) -> (Self, InTx) {
        let slot: Arc<Mutex<Vec<audit::Event>>> = Arc::default();
        let request_event = deferred.and_then(DeferredEvent::take);
        let (log, slot2, carried, who, rid2) = (
            st.audit.clone(),
            slot.clone(),
            request_event.clone(),
            actor(p),
            rid.0.clone(),
        );
        let hook: InTx = Box::new(move |conn, change: &Change| {
            let mut outcome = change.outcome.clone();
            if !change.added.is_empty() {
                outcome.push_str(&format!("; added: {}", change.added.join(" | ")));
            }
            if !change.removed.is_empty() {
                outcome.push_str(&format!("; removed: {}", change.removed.join(" | ")));
            }
            let ev = event(
                &who,
                &rid2,
                &format!("policy.{}", change.step),
                &format!("request {}", change.request),
                "allow",
                &rule,
                &format!("{outcome} (status {})", change.status),
            );
            Box::pin(async move {
                let mut evs: Vec<audit::NewEvent> = carried.into_iter().collect();
                evs.push(ev);
                let written = log
                    .append_within(conn, evs)
                    .await
                    .map_err(|e| e.to_string())?;
                *slot2.lock().unwrap_or_else(|p| p.into_inner()) = written;
                Ok(())
            })
        });
        (
            InTxRecord {
                slot,
                request_event,
                deferred: deferred.cloned(),
            },
            hook,
        )
    }

    async fn finish(self, log: &audit::AuditLog, committed: bool) {
        let written = std::mem::take(&mut *self.slot.lock().unwrap_or_else(|p| p.into_inner()));
        match (committed, self.deferred, self.request_event) {
            (true, Some(d), Some(_)) => d.mark_recorded(),
            (false, Some(d), Some(e)) => d.put_back(e),
            _ => {}
        }
        if committed {
            log.committed(written).await;
        }
    }
}

/// Records a refused step (its reason as the rule) before the refusal is answered.
async fn record_refusal(
    st: &AppState,
    p: &Principal,
    rid: &RequestId,
    step: &str,
    resource: &str,
    e: &PolicyError,
) -> Response {
    if matches!(
        e,
        PolicyError::Refused(_) | PolicyError::BadInput(_) | PolicyError::NotFound(_)
    ) {
        let ev = event(
            &actor(p),
            &rid.0,
            &format!("policy.{step}"),
            resource,
            "deny",
            &e.to_string(),
            "refused, nothing changed",
        );
        if let Err(err) = st.audit.append(ev).await {
            tracing::error!(error = %err, "the audit log cannot record a refusal");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot record this request; nothing was done",
            );
        }
    }
    policy_error(e)
}

/// Decides a platform-level question for `p` (who may submit which kind). The gate
/// brought the policy up to date for this request a moment ago: no second version read.
async fn decide(
    st: &AppState,
    p: &Principal,
    obj: &str,
    act: &str,
) -> Result<Decision, PolicyError> {
    st.policy
        .decide_cached(&PolicyQuery {
            sub: subject(p),
            role: format!("role:{}", p.role),
            dom: "*".into(),
            obj: obj.into(),
            act: act.into(),
            purpose: String::new(),
            now_ms: now_ms(),
        })
        .await
}

/// Whether `p` sees every request and grant (board, operators, auditors) or only its own.
fn sees_all(p: &Principal) -> bool {
    matches!(p.role, Role::EthicsBoard | Role::Operator | Role::Auditor)
}

fn parse_submission(body: &[u8]) -> Result<Submission, PolicyError> {
    serde_json::from_slice(body)
        .map_err(|e| PolicyError::BadInput(policy::model::json_error("request body", &e)))
}

/// `POST /requests`: submits a data, service or policy request. 201 with the request.
pub async fn submit(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    deferred: Option<Extension<DeferredEvent>>,
    body: axum::body::Bytes,
) -> Response {
    let s = match parse_submission(&body) {
        Ok(s) => s,
        Err(e) => return record_refusal(&st, &p, &rid, "submit", "requests", &e).await,
    };
    let kind = s.kind.as_str();
    let d = match decide(&st, &p, &format!("request:{kind}"), "submit").await {
        Ok(d) => d,
        Err(e) => return policy_error(&e),
    };
    if !d.allow {
        let ev = event(
            &actor(&p),
            &rid.0,
            "policy.submit",
            "requests",
            "deny",
            &d.rule,
            "refused, nothing changed",
        );
        if st.audit.append(ev).await.is_err() {
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot record this request; nothing was done",
            );
        }
        return answer(
            StatusCode::FORBIDDEN,
            &format!("the {} role may not submit {kind} requests", p.role),
        );
    }
    let (rec, hook) = InTxRecord::new(&st, &p, &rid, deferred.as_deref(), d.rule);
    let res = st.policy.store().submit(&person(&p), s, Some(hook)).await;
    rec.finish(&st.audit, res.is_ok()).await;
    match res {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => record_refusal(&st, &p, &rid, "submit", "requests", &e).await,
    }
}

/// Query of `GET /requests`.
#[derive(Deserialize)]
pub struct ListParams {
    status: Option<String>,
}

/// `GET /requests[?status=S]`: the caller's own requests (researchers), or all.
pub async fn list(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Query(q): Query<ListParams>,
) -> Response {
    let status = match q.status.as_deref().map(|s| Status::parse(s).ok_or(s)) {
        Some(Err(_)) => {
            return answer(
                StatusCode::BAD_REQUEST,
                "status must be submitted, approved, rejected, withdrawn or expired",
            )
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let who = subject(&p);
    let mine = (!sees_all(&p)).then_some(who.as_str());
    match st.policy.store().list(mine, status).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => policy_error(&e),
    }
}

/// `GET /reviews`: submitted requests this board member may still review.
pub async fn reviews(State(st): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let who = subject(&p);
    match st.policy.store().list(None, Some(Status::Submitted)).await {
        Ok(v) => {
            let open: Vec<_> = v
                .into_iter()
                .filter(|r| r.requester != who && !r.reviews.iter().any(|x| x.reviewer == who))
                .collect();
            Json(open).into_response()
        }
        Err(e) => policy_error(&e),
    }
}

/// `GET /requests/{id}`.
pub async fn show(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    match st.policy.store().get(&id).await {
        Ok(Some(v)) if sees_all(&p) || v.requester == subject(&p) => Json(v).into_response(),
        // Another researcher's request: as if it did not exist.
        Ok(_) => answer(StatusCode::NOT_FOUND, "no such request"),
        Err(e) => policy_error(&e),
    }
}

/// Body of review and revocation steps.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    #[serde(default)]
    reason: String,
}

fn parse_reason(body: &[u8]) -> Result<String, PolicyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(String::new());
    }
    serde_json::from_slice::<Reason>(body)
        .map(|r| r.reason)
        .map_err(|_| PolicyError::BadInput("the body must be {\"reason\": \"...\"}".into()))
}

async fn step(
    st: AppState,
    p: Principal,
    rid: RequestId,
    deferred: Option<DeferredEvent>,
    id: String,
    step: Step,
    body: axum::body::Bytes,
) -> Response {
    let resource = format!("request {id}");
    let (amended, reason) = if step == Step::Amend {
        match parse_submission(&body) {
            Ok(s) => (Some(s), String::new()),
            Err(e) => return record_refusal(&st, &p, &rid, step.as_str(), &resource, &e).await,
        }
    } else {
        match parse_reason(&body) {
            Ok(r) => (None, r),
            Err(e) => return record_refusal(&st, &p, &rid, step.as_str(), &resource, &e).await,
        }
    };
    // Researchers act on their own requests only; another's is as if it did not exist.
    if !sees_all(&p) {
        match st.policy.store().get(&id).await {
            Ok(Some(v)) if v.requester == subject(&p) => {}
            Ok(_) => {
                let e = PolicyError::NotFound("request".into());
                return record_refusal(&st, &p, &rid, step.as_str(), &resource, &e).await;
            }
            Err(e) => return policy_error(&e),
        }
    }
    let rule = format!("workflow: {} by the {} role", step.as_str(), p.role);
    let (rec, hook) = InTxRecord::new(&st, &p, &rid, deferred.as_ref(), rule);
    let res = st
        .policy
        .store()
        .act(&id, step, &person(&p), amended, &reason, Some(hook))
        .await;
    rec.finish(&st.audit, res.is_ok()).await;
    match res {
        Ok((effect, v)) => {
            Json(json!({"effect": format!("{effect:?}"), "request": v})).into_response()
        }
        Err(e) => record_refusal(&st, &p, &rid, step.as_str(), &resource, &e).await,
    }
}

macro_rules! step_route {
    ($name:ident, $step:expr, $doc:literal) => {
        #[doc = $doc]
        pub async fn $name(
            State(st): State<AppState>,
            Extension(p): Extension<Principal>,
            Extension(rid): Extension<RequestId>,
            deferred: Option<Extension<DeferredEvent>>,
            Path(id): Path<String>,
            body: axum::body::Bytes,
        ) -> Response {
            step(st, p, rid, deferred.map(|d| d.0), id, $step, body).await
        }
    };
}

step_route!(
    amend,
    Step::Amend,
    "`POST /requests/{id}/amend` (body: the new submission)."
);
step_route!(withdraw, Step::Withdraw, "`POST /requests/{id}/withdraw`.");
step_route!(
    approve,
    Step::Approve,
    "`POST /requests/{id}/approve` (body: optional `{\"reason\"}`)."
);
step_route!(
    reject,
    Step::Reject,
    "`POST /requests/{id}/reject` (body: `{\"reason\"}`, required)."
);

/// `GET /grants`: the caller's own grants (researchers), or all.
pub async fn grants(State(st): State<AppState>, Extension(p): Extension<Principal>) -> Response {
    let who = subject(&p);
    let mine = (!sees_all(&p)).then_some(who.as_str());
    match st.policy.store().grants(mine).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => policy_error(&e),
    }
}

/// `POST /grants/{id}/revoke` (body: `{"reason"}`): ends a grant at once.
pub async fn revoke(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    deferred: Option<Extension<DeferredEvent>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let resource = format!("request {id}");
    let reason = match parse_reason(&body) {
        Ok(r) => r,
        Err(e) => return record_refusal(&st, &p, &rid, "revoke", &resource, &e).await,
    };
    let rule = format!("workflow: revoke by the {} role", p.role);
    let (rec, hook) = InTxRecord::new(&st, &p, &rid, deferred.as_deref(), rule);
    let res = st
        .policy
        .store()
        .revoke(&id, &person(&p), &reason, Some(hook))
        .await;
    rec.finish(&st.audit, res.is_ok()).await;
    match res {
        Ok(g) => Json(g).into_response(),
        Err(e) => record_refusal(&st, &p, &rid, "revoke", &resource, &e).await,
    }
}

/// Query of `GET /grants/{id}/decision`.
#[derive(Deserialize)]
pub struct DecisionParams {
    action: Option<String>,
    site: Option<String>,
    country: Option<String>,
    vendor: Option<String>,
    sequence: Option<String>,
    model: Option<String>,
}

/// The question for work under grant `grant`: may the caller do `act` on `obj` now, for
/// the purpose it declares in the `hbs-purpose` header?
pub fn grant_query(
    p: &Principal,
    grant: &str,
    obj: String,
    act: &str,
    headers: &HeaderMap,
) -> PolicyQuery {
    PolicyQuery {
        sub: subject(p),
        role: format!("role:{}", p.role),
        dom: format!("grant:{grant}"),
        obj,
        act: act.into(),
        purpose: headers
            .get(PURPOSE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        now_ms: now_ms(),
    }
}

/// `GET /grants/{id}/decision?action=A[&site=..&vendor=..&model=..]` with the purpose in
/// the `hbs-purpose` header: the decision the gateway takes for work under that grant
/// (the catalogue and the compute service ask the same question), with its rule. The
/// decision is recorded. 200 when allowed, 403 when denied.
pub async fn decision(
    State(st): State<AppState>,
    Extension(p): Extension<Principal>,
    Extension(rid): Extension<RequestId>,
    Path(id): Path<String>,
    Query(q): Query<DecisionParams>,
    headers: HeaderMap,
) -> Response {
    let mut attrs = Vec::new();
    for (k, v) in [
        ("site", &q.site),
        ("country", &q.country),
        ("vendor", &q.vendor),
        ("sequence", &q.sequence),
        ("model", &q.model),
    ] {
        if let Some(v) = v {
            if v.is_empty()
                || v.len() > 64
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return answer(
                    StatusCode::BAD_REQUEST,
                    &format!("{k}: 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.'"),
                );
            }
            attrs.push((k, v.as_str()));
        }
    }
    let act = q.action.unwrap_or_else(|| "search".into());
    let query = grant_query(&p, &id, resource_scope(&attrs), &act, &headers);
    let d = match st.policy.decide(&query).await {
        Ok(d) => d,
        Err(e) => return policy_error(&e),
    };
    let ev = event(
        &actor(&p),
        &rid.0,
        &format!("grant.{act}"),
        &format!("grant {id}: {}", query.obj),
        if d.allow { "allow" } else { "deny" },
        &d.rule,
        if d.allow { "allowed" } else { "denied" },
    );
    if let Err(e) = st.audit.append(ev).await {
        tracing::error!(error = %e, "the audit log cannot record a decision");
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot record this decision; it is withheld",
        );
    }
    let status = if d.allow {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    };
    (status, Json(json!({"allow": d.allow, "rule": d.rule}))).into_response()
}
