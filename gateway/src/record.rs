//! Recording in the audit log, fail closed: what an action is about to do is appended
//! (durably) before its effect is committed; when the append fails, the effect is not
//! carried out and the caller answers 503. Shared by the gateway's routes and the local
//! command line, so both record the same events.

use std::sync::{Arc, Mutex};

use audit::{Actor, AuditLog, NewEvent};
use certs::Principal;
use vault::pseudonym::SiteId;
use vault::vault::{Ingested, Prepared, Vault, VaultError};

/// The request an event belongs to (a random ID, also sent back as `x-request-id`).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh random request ID.
    pub fn new() -> Self {
        let mut b = [0u8; 12];
        // Only fails if the OS has no randomness; an all-zero ID still works as a label.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        RequestId(b.iter().map(|x| format!("{x:02x}")).collect())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

/// Now, in milliseconds since 1970.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The actor of a verified certificate.
pub fn actor(p: &Principal) -> Actor {
    Actor {
        role: p.role.as_str().to_string(),
        site: p.site.clone(),
        name: p.name.clone(),
        serial: p.serial.clone(),
    }
}

/// A request's own event, handed by the gate to a handler that changes state, so that it
/// commits in the same transaction as the handler's first effect (one durable write
/// instead of two). What the handler does not record, the gate appends before answering.
#[derive(Clone)]
pub struct DeferredEvent(Arc<Mutex<(Option<NewEvent>, bool)>>);

impl DeferredEvent {
    /// The request's event, not yet written.
    pub fn new(e: NewEvent) -> Self {
        DeferredEvent(Arc::new(Mutex::new((Some(e), false))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<NewEvent>, bool)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the event to write it with an effect (None when another part took it).
    pub fn take(&self) -> Option<NewEvent> {
        self.lock().0.take()
    }

    /// The effect's transaction failed: the event is handed back, unwritten.
    pub fn put_back(&self, e: NewEvent) {
        self.lock().0 = Some(e);
    }

    /// The effect's transaction committed with the event in it.
    pub fn mark_recorded(&self) {
        self.lock().1 = true;
    }

    /// After the handler: the event still to append, `Ok(None)` when it is recorded, or
    /// `Err` when it was taken and neither recorded nor handed back.
    pub fn unrecorded(&self) -> Result<Option<NewEvent>, ()> {
        let mut g = self.lock();
        match (g.0.take(), g.1) {
            (_, true) => Ok(None),
            (Some(e), false) => Ok(Some(e)),
            (None, false) => Err(()),
        }
    }
}

/// An event of `actor` in request `rid`.
pub fn event(
    actor: &Actor,
    rid: &str,
    action: &str,
    resource: &str,
    decision: &str,
    rule: &str,
    outcome: &str,
) -> NewEvent {
    NewEvent {
        actor: actor.clone(),
        action: action.into(),
        resource: resource.into(),
        decision: decision.into(),
        rule: rule.into(),
        outcome: outcome.into(),
        request_id: rid.into(),
    }
}

/// The events of one contributed instance, appended by the catalogue's batch hook (see
/// [`attach`]) in the transaction that commits its row.
struct InstanceEvents {
    /// The request's own event, when this instance carries it.
    request: Option<NewEvent>,
    /// Its event when the row is new.
    stored: NewEvent,
    /// Its event when the same instance was already stored.
    again: NewEvent,
    /// Where the hook puts the events as written (numbered and hashed).
    written: Arc<Mutex<Vec<audit::Event>>>,
}

/// Makes `log` record contributed instances in the vault's catalogue transactions: each
/// group commit appends the events of all its rows in one append (one read of the tree's
/// frontier, one multi-row insert), where an append per row would cost several database
/// round trips each. Call once per vault before [`ingest`]; without it, an ingest fails
/// (its row is not committed).
pub fn attach(vault: &Vault, log: &AuditLog) {
    let log = log.clone();
    vault.catalog().set_batch_hook(Arc::new(move |conn, works| {
        let log = log.clone();
        Box::pin(async move {
            let mut all = Vec::with_capacity(works.len() * 2);
            let mut spans = Vec::with_capacity(works.len());
            for (work, fresh) in works {
                let w = work.downcast::<InstanceEvents>().map_err(|_| {
                    "the catalogue's transaction carries work of an unknown kind".to_string()
                })?;
                let start = all.len();
                all.extend(w.request);
                all.push(if fresh { w.stored } else { w.again });
                spans.push((w.written, start, all.len()));
            }
            let written = log
                .append_within(conn, all)
                .await
                .map_err(|e| e.to_string())?;
            for (slot, a, b) in spans {
                if let Some(evs) = written.get(a..b) {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = evs.to_vec();
                }
            }
            Ok(())
        })
    }));
}

/// Why a recorded ingest did not happen at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotRecorded(pub audit::AuditError);

/// One contributed instance and its event `contribution.instance` (resource:
/// pseudonym/study/SOP instance, all pseudonymized): `stored` (or `already stored`),
/// committed in the same database transaction as the catalogue row, so both commit or
/// neither does; `quarantined` or `rejected` with the reason when nothing is stored; and
/// `failed, nothing stored` when the commit failed. Returns the vault's answer and the (first) event, or [`NotRecorded`] when the log could not record it (nothing was stored).
#[allow(clippy::too_many_arguments)]
pub async fn ingest(
    vault: &Vault,
    log: &AuditLog,
    actor: &Actor,
    rid: &str,
    site: &SiteId,
    bytes: Vec<u8>,
    study: Option<&str>,
    rule: &str,
    deferred: Option<&DeferredEvent>,
) -> Result<(Result<Ingested, VaultError>, audit::Event), NotRecorded> {
    const ACTION: &str = "contribution.instance";
    let ev = |resource: &str, decision: &str, outcome: &str| {
        event(actor, rid, ACTION, resource, decision, rule, outcome)
    };
    let site_res = format!("site {site}");
    match vault.prepare(site, bytes, study).await {
        Err(e) => {
            let (decision, outcome) = match e {
                VaultError::Deid(_) | VaultError::OtherStudy | VaultError::Withdrawn(_) => {
                    ("deny", format!("rejected: {e}"))
                }
                _ => ("allow", format!("failed: {e}")),
            };
            let recorded = log
                .append(ev(&site_res, decision, &outcome))
                .await
                .map_err(NotRecorded)?;
            Ok((Err(e), recorded))
        }
        Ok(Prepared::Quarantined { reason, pseudonym }) => {
            let recorded = log
                .append(ev(
                    &format!("patient {pseudonym}"),
                    "deny",
                    &format!("quarantined: {reason}"),
                ))
                .await
                .map_err(NotRecorded)?;
            Ok((Ok(Ingested::Quarantined { reason, pseudonym }), recorded))
        }
        Ok(Prepared::Ready(r)) => {
            // The event commits in the same transaction as the catalogue row: both or
            // neither. (The blob is made durable before; without its row it is an
            // unreferenced ciphertext.)
            let resource = format!("{}/{}/{}", r.row.pseudonym, r.row.study_uid, r.row.sop_uid);
            let slot: Arc<Mutex<Vec<audit::Event>>> = Arc::default();
            // The request's own event rides in the same transaction, if still unwritten.
            let request_event = deferred.and_then(DeferredEvent::take);
            let work = InstanceEvents {
                request: request_event.clone(),
                stored: ev(&resource, "allow", "stored"),
                again: ev(&resource, "allow", "already stored (same instance)"),
                written: slot.clone(),
            };
            let result = vault.commit_with(*r, Some(Box::new(work))).await;
            let written = std::mem::take(&mut *slot.lock().unwrap_or_else(|p| p.into_inner()));
            let recorded = written.last().cloned();
            match (result, recorded) {
                (Ok(ingested), Some(event)) => {
                    if let Some(d) = deferred.filter(|_| request_event.is_some()) {
                        d.mark_recorded();
                    }
                    log.committed(written).await;
                    Ok((Ok(ingested), event))
                }
                (result, _) => {
                    if let (Some(d), Some(e)) = (deferred, request_event) {
                        d.put_back(e);
                    }
                    // Nothing committed: neither the row nor its event. Say so in the
                    // log if it can be said; if not, the log itself is what failed.
                    let err = match result {
                        Err(e) => e,
                        Ok(_) => VaultError::Internal("the instance's event is missing".into()),
                    };
                    let recorded = log
                        .append(ev(
                            &resource,
                            "allow",
                            &format!("failed, nothing stored: {err}"),
                        ))
                        .await
                        .map_err(NotRecorded)?;
                    Ok((Err(err), recorded))
                }
            }
        }
    }
}
