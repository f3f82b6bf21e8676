//! Events: what is recorded, and the canonical bytes that the Merkle tree commits to.

use serde::{Deserialize, Serialize};

/// Who acted: the principal of a verified client certificate, or a local operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Platform role (data-provider, researcher, ethics-board, auditor, operator,
    /// compute), or `unauthenticated` for a refused TLS client.
    pub role: String,
    /// Site, for site-bound roles.
    pub site: Option<String>,
    /// The holder's name (a login, never a person's full name).
    pub name: String,
    /// Certificate serial (hex), or `local` for a command run on the gateway's host.
    pub serial: String,
}

impl Actor {
    /// An operator acting on the host through the command line (no certificate).
    pub fn local_operator() -> Self {
        Actor {
            role: "operator".into(),
            site: None,
            name: "local".into(),
            serial: "local".into(),
        }
    }
}

/// An event as a caller records it; the log gives it its sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Who.
    pub actor: Actor,
    /// What, as a stable name: `http GET /dicomweb/studies`, `contribution.instance`,
    /// `vault.rotate-kek`...
    pub action: String,
    /// On what: pseudonymized identifiers or route templates only.
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The rule that decided.
    pub rule: String,
    /// What happened.
    pub outcome: String,
    /// The request this belongs to (shared by the events of one request).
    pub request_id: String,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Milliseconds since the Unix epoch, when appended.
    pub time_ms: u64,
    /// Who.
    pub actor: Actor,
    /// What.
    pub action: String,
    /// On what.
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// The rule that decided.
    pub rule: String,
    /// What happened.
    pub outcome: String,
    /// The request it belongs to.
    pub request_id: String,
}

impl Event {
    /// Gives a new event its place and time.
    pub fn new(seq: u64, time_ms: u64, e: NewEvent) -> Self {
        Event {
            seq,
            time_ms,
            actor: e.actor,
            action: e.action,
            resource: e.resource,
            decision: e.decision,
            rule: e.rule,
            outcome: e.outcome,
            request_id: e.request_id,
        }
    }

    /// The canonical bytes of the event: JSON with the fields in declaration order and
    /// no whitespace. This is the Merkle leaf's entry, and what is stored.
    pub fn entry(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses stored entry bytes.
    pub fn from_entry(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_canonical_and_round_trip() {
        let e = Event::new(
            7,
            1_790_000_000_000,
            NewEvent {
                actor: Actor::local_operator(),
                action: "vault.rotate-kek".into(),
                resource: "kek".into(),
                decision: "allow".into(),
                rule: "local operator".into(),
                outcome: "kek v2".into(),
                request_id: "r1".into(),
            },
        );
        let bytes = e.entry();
        assert!(bytes.starts_with(b"{\"seq\":7,\"time_ms\":1790000000000,\"actor\":"));
        assert_eq!(Event::from_entry(&bytes).unwrap(), e);
        assert_eq!(Event::from_entry(&bytes).unwrap().entry(), bytes);
    }
}
