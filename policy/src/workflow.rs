//! Requests and their reviews as a state machine: pure, no IO. The store
//! ([`crate::store`]) reads a request, asks [`step`] what a step does to it, and writes
//! the answer in the same transaction.
//!
//! | from \ step | amend | withdraw | approve | reject |
//! |---|---|---|---|---|
//! | submitted | submitted (its requester, before any review) | withdrawn (its requester) | submitted, or approved at quorum (a board member, not the requester, not of the requester's site when the project says so, once) | rejected (likewise) |
//! | approved | refused | refused (revoke the grant instead) | refused | refused |
//! | rejected, withdrawn, expired | refused | refused | refused | refused |
//!
//! `approved` becomes `expired` by time alone (the grant's end), or when its grant is
//! revoked: no job runs for it.

use serde::{Deserialize, Serialize};

use crate::model::Rule;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Access to a cohort's pseudonymized metadata, for a purpose, for a time.
    Data,
    /// Running (training, fine-tuning, inference) a named, hashed ONNX model on a cohort.
    Service,
    /// A change to the policy itself: role rules or a project's quorum.
    Policy,
}

impl Kind {
    /// Parses `data`, `service` or `policy`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "data" => Ok(Kind::Data),
            "service" => Ok(Kind::Service),
            "policy" => Ok(Kind::Policy),
            _ => Err("kind must be data, service or policy".into()),
        }
    }

    /// The name, as [`Kind::parse`] reads it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Service => "service",
            Kind::Policy => "policy",
        }
    }

    /// The actions its grant allows.
    pub fn actions(self) -> &'static [&'static str] {
        match self {
            Kind::Data => &["search"],
            Kind::Service => &["run"],
            Kind::Policy => &[],
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for reviews (amendable until the first).
    Submitted,
    /// Approved by quorum; its grant is in force.
    Approved,
    /// Rejected by a board member.
    Rejected,
    /// Withdrawn by its requester.
    Withdrawn,
    /// Approved once; its grant has ended or was revoked.
    Expired,
}

impl Status {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Submitted => "submitted",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Withdrawn => "withdrawn",
            Status::Expired => "expired",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "submitted" => Status::Submitted,
            "approved" => Status::Approved,
            "rejected" => Status::Rejected,
            "withdrawn" => Status::Withdrawn,
            "expired" => Status::Expired,
            _ => return None,
        })
    }
}

/// Who acts: from the verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The subject (SPIFFE ID).
    pub subject: String,
    /// The role name (`researcher`, `ethics-board`, ...).
    pub role: String,
    /// The site, for site-bound certificates.
    pub site: Option<String>,
}

/// A change to the policy, carried by a `policy` request and applied on approval.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// Role rules to add.
    #[serde(default)]
    pub add: Vec<Rule>,
    /// Role rules to remove.
    #[serde(default)]
    pub remove: Vec<Rule>,
    /// A project's review settings.
    #[serde(default)]
    pub settings: Option<ProjectSettings>,
    /// A new Casbin model (the whole text), replacing the stored one. Checked against
    /// the project's probes when submitted and again when applied
    /// (`policy::decide::check_model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Longest model text accepted.
pub const MAX_MODEL: usize = 16 * 1024;

/// How a project's requests are reviewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    /// The project.
    pub project: String,
    /// Distinct approvals needed (2 or more: no single person decides).
    pub quorum: u32,
    /// Whether a board member of the requester's site may not review.
    #[serde(default)]
    pub forbid_same_site: bool,
}

/// The roles a certificate can carry (kept here so `policy` checks rule text without
/// depending on the PKI).
const ROLES: &[&str] = &[
    "data-provider",
    "researcher",
    "ethics-board",
    "auditor",
    "operator",
    "compute",
];

impl PolicyChange {
    /// Checks the change: only role rules (grants come from data and service requests),
    /// quorum 2 or more, something to do.
    pub fn check(&self) -> Result<(), String> {
        if self.add.is_empty()
            && self.remove.is_empty()
            && self.settings.is_none()
            && self.model.is_none()
        {
            return Err("the policy change changes nothing".into());
        }
        if let Some(m) = &self.model {
            if m.trim().is_empty() || m.len() > MAX_MODEL {
                return Err(format!(
                    "model must be 1 to {MAX_MODEL} bytes of Casbin model text"
                ));
            }
        }
        for r in self.add.iter().chain(&self.remove) {
            let role_ok = r
                .sub
                .strip_prefix("role:")
                .is_some_and(|role| ROLES.contains(&role));
            let route_ok = r.obj.split_once(' ').is_some_and(|(m, p)| {
                matches!(m, "GET" | "POST" | "PUT" | "DELETE") && p.starts_with('/')
            });
            if !role_ok
                || r.dom != "*"
                || r.act != "call"
                || r.purpose != "*"
                || r.until != "*"
                || !route_ok
            {
                return Err(format!(
                    "policy changes may only add or remove role rules (p, role:ROLE, *, METHOD /route, call, *, *); refused: {}",
                    r.line()
                ));
            }
        }
        if let Some(s) = &self.settings {
            if s.quorum < 2 {
                return Err("quorum must be 2 or more: no single person approves".into());
            }
            if s.project.is_empty() || s.project.len() > 64 {
                return Err("project must be 1 to 64 characters".into());
            }
        }
        Ok(())
    }
}

/// A review as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// The board member.
    pub reviewer: String,
    /// Their site, if any.
    pub reviewer_site: Option<String>,
    /// `approve` or `reject`.
    pub verdict: String,
    /// The reason given (required to reject).
    pub reason: String,
    /// When, in ms since 1970.
    pub time_ms: u64,
}

/// What is asked of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Change its content (before any review).
    Amend,
    /// Take it back.
    Withdraw,
    /// Approve it (board).
    Approve,
    /// Reject it (board).
    Reject,
}

impl Step {
    /// The step's name in events and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Amend => "amend",
            Step::Withdraw => "withdraw",
            Step::Approve => "approve",
            Step::Reject => "reject",
        }
    }
}

/// What the facts of a request a step needs.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// Its status now (after applying time).
    pub status: Status,
    /// Its requester.
    pub requester: &'a str,
    /// The requester's site, if any.
    pub requester_site: Option<&'a str>,
    /// Its reviews so far.
    pub reviews: &'a [Review],
    /// Its project's quorum.
    pub quorum: u32,
    /// Whether its project forbids same-site review.
    pub forbid_same_site: bool,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Content replaced; revision goes up.
    Amended,
    /// Now withdrawn.
    Withdrawn,
    /// The approval is counted; `have` of `need`.
    Counted {
        /// Approvals with this one.
        have: u32,
        /// The quorum.
        need: u32,
    },
    /// Quorum reached: approved; grant it.
    Approved,
    /// Rejected.
    Rejected,
}

/// Decides what `step` by `who` does to a request with these `facts`, or why it is
/// refused. The reason names the rule; it never quotes the request's content.
pub fn step(facts: &Facts<'_>, step: Step, who: &Person) -> Result<Effect, String> {
    let status = facts.status;
    if status != Status::Submitted {
        let hint = match (status, step) {
            (Status::Approved, Step::Withdraw) => "; revoke its grant instead",
            _ => "",
        };
        return Err(format!(
            "cannot {} a request that is {}{hint}",
            step.as_str(),
            status.as_str()
        ));
    }
    match step {
        Step::Amend | Step::Withdraw => {
            if who.subject != facts.requester {
                return Err(format!(
                    "only its requester may {} a request",
                    step.as_str()
                ));
            }
            if step == Step::Withdraw {
                return Ok(Effect::Withdrawn);
            }
            if !facts.reviews.is_empty() {
                return Err("cannot amend a request once a review is recorded".into());
            }
            Ok(Effect::Amended)
        }
        Step::Approve | Step::Reject => {
            if who.role != "ethics-board" {
                return Err("only ethics board members review requests".into());
            }
            if who.subject == facts.requester {
                return Err("a board member cannot review a request they submitted".into());
            }
            if facts.forbid_same_site
                && who.site.is_some()
                && who.site.as_deref() == facts.requester_site
            {
                return Err(
                    "this project does not let a board member review a request from their own site"
                        .into(),
                );
            }
            if facts.reviews.iter().any(|r| r.reviewer == who.subject) {
                return Err("this board member has already reviewed this request".into());
            }
            if step == Step::Reject {
                return Ok(Effect::Rejected);
            }
            let have = 1 + facts
                .reviews
                .iter()
                .filter(|r| r.verdict == "approve")
                .count() as u32;
            if have >= facts.quorum {
                Ok(Effect::Approved)
            } else {
                Ok(Effect::Counted {
                    have,
                    need: facts.quorum,
                })
            }
        }
    }
}

/// The status a stored status has at `now_ms`, given when its grant ends and whether it
/// was revoked: time alone turns approved into expired.
pub fn status_at(stored: Status, grant_end_ms: Option<u64>, revoked: bool, now_ms: u64) -> Status {
    match stored {
        Status::Approved if revoked || grant_end_ms.is_some_and(|end| now_ms >= end) => {
            Status::Expired
        }
        s => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(subject: &str, role: &str, site: Option<&str>) -> Person {
        Person {
            subject: subject.into(),
            role: role.into(),
            site: site.map(String::from),
        }
    }

    fn review(who: &str, verdict: &str) -> Review {
        Review {
            reviewer: who.into(),
            reviewer_site: None,
            verdict: verdict.into(),
            reason: String::new(),
            time_ms: 1,
        }
    }

    fn facts<'a>(status: Status, reviews: &'a [Review]) -> Facts<'a> {
        Facts {
            status,
            requester: "r",
            requester_site: Some("SITE_A"),
            reviews,
            quorum: 2,
            forbid_same_site: true,
        }
    }

    #[test]
    fn every_cell_of_the_table() {
        let requester = person("r", "researcher", Some("SITE_A"));
        let b1 = person("b1", "ethics-board", Some("SITE_B"));
        let all = [
            Status::Submitted,
            Status::Approved,
            Status::Rejected,
            Status::Withdrawn,
            Status::Expired,
        ];
        for status in all {
            let f = facts(status, &[]);
            for (s, who, expect) in [
                (Step::Amend, &requester, Effect::Amended),
                (Step::Withdraw, &requester, Effect::Withdrawn),
                (Step::Approve, &b1, Effect::Counted { have: 1, need: 2 }),
                (Step::Reject, &b1, Effect::Rejected),
            ] {
                let got = step(&f, s, who);
                if status == Status::Submitted {
                    assert_eq!(got, Ok(expect), "{status:?} {s:?}");
                } else {
                    let e = got.unwrap_err();
                    assert!(e.contains(status.as_str()), "{e}");
                }
            }
        }
        assert!(
            step(&facts(Status::Approved, &[]), Step::Withdraw, &requester)
                .unwrap_err()
                .contains("revoke its grant")
        );
    }

    #[test]
    fn quorum_self_review_same_site_and_twice() {
        let one = [review("b1", "approve")];
        let f = facts(Status::Submitted, &one);
        let b2 = person("b2", "ethics-board", None);
        assert_eq!(step(&f, Step::Approve, &b2), Ok(Effect::Approved));
        assert!(step(&f, Step::Approve, &person("b1", "ethics-board", None))
            .unwrap_err()
            .contains("already reviewed"));
        assert!(step(&f, Step::Amend, &person("r", "researcher", None))
            .unwrap_err()
            .contains("once a review"));
        assert!(step(&f, Step::Withdraw, &person("x", "researcher", None))
            .unwrap_err()
            .contains("only its requester"));
        // The requester, even as a board member, cannot review their own request.
        assert!(step(&f, Step::Approve, &person("r", "ethics-board", None))
            .unwrap_err()
            .contains("submitted"));
        assert!(step(
            &f,
            Step::Approve,
            &person("b3", "ethics-board", Some("SITE_A"))
        )
        .unwrap_err()
        .contains("own site"));
        let mut g = f.clone();
        g.forbid_same_site = false;
        assert_eq!(
            step(
                &g,
                Step::Approve,
                &person("b3", "ethics-board", Some("SITE_A"))
            ),
            Ok(Effect::Approved)
        );
        assert!(step(&f, Step::Approve, &person("o", "operator", None))
            .unwrap_err()
            .contains("only ethics board"));
        // A rejection among the reviews does not count as an approval.
        let mixed = [review("b1", "reject")];
        let mut h = facts(Status::Submitted, &mixed);
        h.quorum = 2;
        assert_eq!(
            step(&h, Step::Approve, &b2),
            Ok(Effect::Counted { have: 1, need: 2 })
        );
    }

    #[test]
    fn expiry_is_a_matter_of_time() {
        assert_eq!(
            status_at(Status::Approved, Some(100), false, 99),
            Status::Approved
        );
        assert_eq!(
            status_at(Status::Approved, Some(100), false, 100),
            Status::Expired
        );
        assert_eq!(
            status_at(Status::Approved, Some(100), true, 0),
            Status::Expired
        );
        assert_eq!(
            status_at(Status::Rejected, Some(1), false, 5),
            Status::Rejected
        );
    }

    #[test]
    fn policy_changes_touch_role_rules_only() {
        let ok = PolicyChange {
            remove: vec![Rule::route("auditor", "GET", "/metrics")],
            ..Default::default()
        };
        assert!(ok.check().is_ok());
        let grant = PolicyChange {
            add: vec![Rule {
                sub: "spiffe://prostatenet/researcher/bob".into(),
                dom: "grant:x".into(),
                obj: "*".into(),
                act: "search".into(),
                purpose: "*".into(),
                until: "*".into(),
            }],
            ..Default::default()
        };
        assert!(grant
            .check()
            .unwrap_err()
            .contains("only add or remove role rules"));
        let one = PolicyChange {
            settings: Some(ProjectSettings {
                project: "p".into(),
                quorum: 1,
                forbid_same_site: false,
            }),
            ..Default::default()
        };
        assert!(one.check().unwrap_err().contains("2 or more"));
        assert!(PolicyChange::default().check().is_err());
    }
}
