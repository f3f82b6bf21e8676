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
            let (log2, slot2) = (log.clone(), slot.clone());
            let (stored, again) = (
                ev(&resource, "allow", "stored"),
                ev(&resource, "allow", "already stored (same instance)"),
            );
            // The request's own event rides in the same transaction, if still unwritten.
            let request_event = deferred.and_then(DeferredEvent::take);
            let carried = request_event.clone();
            let hook: vault::catalog::InTx = Box::new(move |conn, fresh| {
                Box::pin(async move {
                    let mut evs: Vec<NewEvent> = carried.into_iter().collect();
                    evs.push(if fresh { stored } else { again });
                    let written = log2
                        .append_within(conn, evs)
                        .await
                        .map_err(|e| e.to_string())?;
                    *slot2.lock().unwrap_or_else(|p| p.into_inner()) = written;
                    Ok(())
                })
            });
            let result = vault.commit_with(*r, Some(hook)).await;
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
