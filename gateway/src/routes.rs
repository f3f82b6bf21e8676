//! The gateway's routes. Every request is decided by the policy (`policy` crate: Casbin,
//! default deny) before its handler runs; the decision and the rule that made it go into
//! the audit log. [`ROUTES`] is the default policy each route starts with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use certs::{Principal, Role};
use serde_json::json;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The vault over the data folder.
    pub vault: vault::vault::Vault,
    /// Counters for /metrics.
    pub metrics: Arc<Metrics>,
    /// The gateway's TLS key, which also signs contribution receipts (a site verifies
    /// them with the gateway's certificate).
    pub receipt_key: Arc<openssl::pkey::PKey<openssl::pkey::Private>>,
    /// Sites whose contributions must come with a signed manifest.
    pub signed_only: Arc<std::collections::BTreeSet<String>>,
    /// The audit log: every request and every effect is recorded here first.
    pub audit: audit::AuditLog,
    /// The policy: every call is decided here (and the decision recorded).
    pub policy: Arc<policy::decide::Decider>,
    /// Cohort counts with their disclosure control.
    pub catalogue: Arc<crate::catalogue::Catalogue>,
    /// The job queue and the model registry (the compute enclave).
    pub jobs: Arc<crate::jobs::Jobs>,
}

/// The public key of the caller's verified certificate (to check what it signs).
#[derive(Clone)]
pub struct PeerKey(pub Arc<openssl::pkey::PKey<openssl::pkey::Public>>);

const ALL: &[Role] = &Role::ALL;
/// Who may search the pseudonymized catalogue (QIDO-RS); data providers see their own
/// site only, researchers the cohort of a data grant (see [`crate::qido`]).
const SEARCH: &[Role] = &[
    Role::DataProvider,
    Role::Operator,
    Role::Auditor,
    Role::Researcher,
];
/// Who submits requests (researchers: data and service; operators and the board: policy).
const SUBMIT: &[Role] = &[Role::Researcher, Role::Operator, Role::EthicsBoard];
/// Who reads requests and grants (researchers see their own only).
const GOVERNANCE: &[Role] = &[
    Role::Researcher,
    Role::EthicsBoard,
    Role::Operator,
    Role::Auditor,
];

/// Every route: method, path (as axum matches it) and the roles admitted by the default
/// policy. This table seeds the policy's role rules (once per route, see
/// [`crate::governance::default_policy`]); from then on the policy decides, and changes
/// only through an approved policy request.
pub const ROUTES: &[(&str, &str, &[Role])] = &[
    ("GET", "/healthz", ALL),
    ("GET", "/readyz", &[Role::Operator, Role::Auditor]),
    ("GET", "/metrics", &[Role::Operator, Role::Auditor]),
    ("GET", "/whoami", ALL),
    ("POST", "/dicomweb/studies", &[Role::DataProvider]),
    ("POST", "/dicomweb/studies/{study}", &[Role::DataProvider]),
    ("GET", "/dicomweb/studies", SEARCH),
    ("GET", "/dicomweb/series", SEARCH),
    ("GET", "/dicomweb/instances", SEARCH),
    ("GET", "/dicomweb/studies/{study}/series", SEARCH),
    ("GET", "/dicomweb/studies/{study}/instances", SEARCH),
    (
        "GET",
        "/dicomweb/studies/{study}/series/{series}/instances",
        SEARCH,
    ),
    ("GET", "/audit/events", &[Role::Auditor]),
    ("GET", "/audit/checkpoint", ALL),
    ("GET", "/audit/key", ALL),
    ("GET", "/audit/consistency", ALL),
    ("GET", "/audit/proof", ALL),
    ("GET", "/kpi", ALL),
    ("GET", "/kpi/page", ALL),
    (
        "POST",
        "/cohort/count",
        &[Role::Researcher, Role::EthicsBoard, Role::Operator],
    ),
    ("POST", "/requests", SUBMIT),
    ("GET", "/requests", GOVERNANCE),
    ("GET", "/requests/{id}", GOVERNANCE),
    ("POST", "/requests/{id}/amend", SUBMIT),
    ("POST", "/requests/{id}/withdraw", SUBMIT),
    ("POST", "/requests/{id}/approve", &[Role::EthicsBoard]),
    ("POST", "/requests/{id}/reject", &[Role::EthicsBoard]),
    ("GET", "/reviews", &[Role::EthicsBoard]),
    ("GET", "/grants", GOVERNANCE),
    (
        "POST",
        "/grants/{id}/revoke",
        &[Role::EthicsBoard, Role::Operator],
    ),
    ("GET", "/grants/{id}/decision", &[Role::Researcher]),
    ("POST", "/jobs", &[Role::Researcher]),
    ("POST", "/jobs/{id}/release", &[Role::EthicsBoard]),
    (
        "GET",
        "/jobs/{id}",
        &[Role::Researcher, Role::Auditor, Role::Operator],
    ),
    ("GET", "/models", GOVERNANCE),
    ("POST", "/models", &[Role::Researcher]),
];

/// The router: [`ROUTES`] with their handlers, behind the role gate and the metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/whoami", get(whoami))
        .route(
            "/dicomweb/studies",
            post(crate::dicomweb::stow).get(crate::qido::studies),
        )
        .route(
            "/dicomweb/studies/{study}",
            post(crate::dicomweb::stow_study),
        )
        .route("/dicomweb/series", get(crate::qido::series))
        .route("/dicomweb/instances", get(crate::qido::instances))
        .route(
            "/dicomweb/studies/{study}/series",
            get(crate::qido::study_series),
        )
        .route(
            "/dicomweb/studies/{study}/instances",
            get(crate::qido::study_instances),
        )
        .route(
            "/dicomweb/studies/{study}/series/{series}/instances",
            get(crate::qido::series_instances),
        )
        .route("/audit/events", get(crate::audit_routes::events))
        .route("/audit/checkpoint", get(crate::audit_routes::checkpoint))
        .route("/audit/key", get(crate::audit_routes::key))
        .route("/audit/consistency", get(crate::audit_routes::consistency))
        .route("/audit/proof", get(crate::audit_routes::proof))
        .route(
            "/requests",
            post(crate::governance::submit).get(crate::governance::list),
        )
        .route("/cohort/count", post(crate::catalogue::count))
        .route("/kpi", get(crate::catalogue::kpi_json))
        .route("/kpi/page", get(crate::catalogue::kpi_page))
        .route("/requests/{id}", get(crate::governance::show))
        .route("/requests/{id}/amend", post(crate::governance::amend))
        .route("/requests/{id}/withdraw", post(crate::governance::withdraw))
        .route("/requests/{id}/approve", post(crate::governance::approve))
        .route("/requests/{id}/reject", post(crate::governance::reject))
        .route("/reviews", get(crate::governance::reviews))
        .route("/grants", get(crate::governance::grants))
        .route("/grants/{id}/revoke", post(crate::governance::revoke))
        .route("/grants/{id}/decision", get(crate::governance::decision))
        .route("/jobs", post(crate::jobs::submit))
        .route("/jobs/{id}", get(crate::jobs::show))
        .route("/jobs/{id}/release", post(crate::jobs::release))
        .route(
            "/models",
            get(crate::jobs::models)
                .post(crate::jobs::register)
                .layer(axum::extract::DefaultBodyLimit::max(96 << 20)),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

fn deny(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({"error": reason}))).into_response()
}

/// The answer when the request's event could not be recorded.
fn withheld(e: &str) -> Response {
    tracing::error!(error = %e, "answer withheld: the audit log cannot record the request");
    deny(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audit log cannot record this request; its answer is withheld",
    )
}

/// Role gate, audit and request metrics. Runs for every request, matched or not.
///
/// The decision (allowed by the route table, or denied) is appended to the audit log. A
/// refusal is answered once recorded. An allowed request's handler runs while its event is
/// written, and its answer is sent only once the event is durable; otherwise the answer
/// is a 503 (fail closed). Handlers that change state record each effect in the effect's
/// own transaction, so an effect is never committed unrecorded. The event names the route template, never
/// the request path or query (a source UID can be in a path).
async fn gate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let principal = req.extensions().get::<Principal>().cloned();
    let label = route.clone().unwrap_or_else(|| "unmatched".into());
    let rid = crate::record::RequestId::new();
    let resp = match (route, principal) {
        (_, None) => deny(StatusCode::UNAUTHORIZED, "no client certificate"),
        (route, Some(p)) => {
            let decided = match &route {
                None => Ok((false, "no such route (deny by default)".to_string())),
                Some(path) => state
                    .policy
                    .decide(&policy::model::Query::route(
                        &crate::governance::subject(&p),
                        p.role.as_str(),
                        &method,
                        path,
                        crate::record::now_ms(),
                    ))
                    .await
                    .map(|d| (d.allow, d.rule)),
            };
            let (allowed, rule) = match decided {
                Ok(d) => d,
                Err(e) => {
                    // No decision, no access: fail closed.
                    tracing::error!(error = %e, "the policy cannot decide");
                    let resp = deny(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the policy cannot decide this request; nothing was done",
                    );
                    state.metrics.record(&method, &label, 503, start.elapsed());
                    return resp;
                }
            };
            let ev = crate::record::event(
                &crate::record::actor(&p),
                &rid.0,
                &format!("http {method} {label}"),
                &label,
                if allowed { "allow" } else { "deny" },
                &rule,
                if allowed { "admitted" } else { "refused" },
            );
            if allowed && method != "GET" {
                // A handler that changes state writes the request's event in the same
                // transaction as its first effect; what it does not write is appended
                // here before the answer leaves.
                req.extensions_mut().insert(rid.clone());
                let deferred = crate::record::DeferredEvent::new(ev);
                req.extensions_mut().insert(deferred.clone());
                let resp = next.run(req).await;
                let recorded = match deferred.unrecorded() {
                    Ok(None) => Ok(()),
                    Ok(Some(ev)) => state
                        .audit
                        .append(ev)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Err(()) => Err("the request's event was lost".to_string()),
                };
                match recorded {
                    Ok(()) => resp,
                    Err(e) => withheld(&e.to_string()),
                }
            } else if allowed {
                // A read: its event is written while the handler runs, and the answer
                // waits for it: no answer leaves unless its request is recorded.
                req.extensions_mut().insert(rid.clone());
                let (recorded, resp) = tokio::join!(state.audit.append(ev), next.run(req));
                match recorded {
                    Ok(_) => resp,
                    Err(e) => withheld(&e.to_string()),
                }
            } else if let Err(e) = state.audit.append(ev).await {
                tracing::error!(error = %e, "the audit log cannot record a refusal");
                deny(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the audit log cannot record this request; nothing was done",
                )
            } else if route.is_none() {
                deny(StatusCode::NOT_FOUND, "no such route")
            } else {
                tracing::info!(role = %p.role, route = %label, "denied by the policy");
                deny(
                    StatusCode::FORBIDDEN,
                    &format!("the {} role may not {method} {label}", p.role),
                )
            }
        }
    };
    state
        .metrics
        .record(&method, &label, resp.status().as_u16(), start.elapsed());
    let mut resp = resp;
    if let Ok(v) = axum::http::HeaderValue::from_str(&rid.0) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = state.vault.catalog().ready().await;
    let store = state.vault.store().ready().await;
    let log = state.audit.ready().await;
    let status = if db && store && log {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"database": db, "blob_store": store, "keys": true, "audit_log": log})),
    )
        .into_response()
}

async fn whoami(Extension(p): Extension<Principal>) -> Json<Principal> {
    Json(p)
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// (method, route, status) of a counted request.
type RequestKey = (String, String, u16);

/// In-process counters, rendered in the Prometheus text format.
#[derive(Default)]
pub struct Metrics {
    /// Count and total seconds per (method, route, status).
    requests: Mutex<BTreeMap<RequestKey, (u64, f64)>>,
    handshakes_failed: AtomicU64,
    /// Instances received, by outcome.
    ingest: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16, took: std::time::Duration) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    /// Counts an instance received over STOW-RS by outcome.
    pub fn ingested(&self, outcome: &str) {
        let mut m = self.ingest.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(outcome.to_string()).or_default() += 1;
    }

    /// Counts a refused TLS handshake or a certificate that is not a platform identity.
    pub fn handshake_failed(&self) {
        self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut s = String::from(
            "# HELP hbs_requests_total Requests by method, route and status.\n# TYPE hbs_requests_total counter\n",
        );
        let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((method, route, status), (n, _)) in m.iter() {
            s.push_str(&format!(
                "hbs_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}\n"
            ));
        }
        s.push_str("# HELP hbs_request_seconds_sum Time spent answering, by route.\n# TYPE hbs_request_seconds_sum counter\n");
        for ((method, route, status), (_, secs)) in m.iter() {
            s.push_str(&format!(
                "hbs_request_seconds_sum{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {secs:.6}\n"
            ));
        }
        s.push_str("# HELP hbs_ingest_instances_total Instances received over STOW-RS, by outcome.\n# TYPE hbs_ingest_instances_total counter\n");
        for (outcome, n) in self.ingest.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            s.push_str(&format!(
                "hbs_ingest_instances_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        s.push_str(&format!(
            "# HELP hbs_tls_refused_total TLS handshakes refused or certificates that are not platform identities.\n# TYPE hbs_tls_refused_total counter\nhbs_tls_refused_total {}\n",
            self.handshakes_failed.load(Ordering::Relaxed)
        ));
        s
    }
}
