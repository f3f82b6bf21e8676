//! The policy against real databases (SQLite, and PostgreSQL under CI): Casbin through
//! the sqlx adapter, the request workflow and its races, grants, expiry and revocation,
//! decisions with the rule that made them.

use std::sync::Arc;

use casbin::{CoreApi, DefaultModel, Enforcer, MgmtApi};
use policy::decide::{check_enforcing, Decider};
use policy::model::{resource_scope, time_key, Cohort, Query, Rule, MODEL};
use policy::store::{ModelRef, PolicyStore, Submission};
use policy::workflow::{Effect, Kind, Person, PolicyChange, ProjectSettings, Status, Step};
use policy::PolicyError;

fn person(subject: &str, role: &str, site: Option<&str>) -> Person {
    Person {
        subject: subject.into(),
        role: role.into(),
        site: site.map(String::from),
    }
}

const BOB: &str = "spiffe://prostatenet/researcher/bob";
const EVE: &str = "spiffe://prostatenet/researcher/eve";

fn board(n: usize) -> Person {
    person(
        &format!("spiffe://prostatenet/site/SITE_{n}/ethics-board/member{n}"),
        "ethics-board",
        Some(&format!("SITE_{n}")),
    )
}

fn data_request(sites: &[&str], purpose: &str, days: u32) -> Submission {
    Submission {
        kind: Kind::Data,
        project: None,
        cohort: Some(Cohort {
            sites: Some(sites.iter().map(|s| s.to_string()).collect()),
            vendors: Some(vec!["ge".into(), "siemens".into()]),
            ..Default::default()
        }),
        purpose: purpose.into(),
        days,
        model: None,
        justification: "csPCa detection, external validation".into(),
        change: None,
        outputs: vec![],
        action: None,
        recipient: None,
    }
}

fn grant_query(sub: &str, grant: &str, obj: &str, act: &str, purpose: &str, now_ms: u64) -> Query {
    Query {
        sub: sub.into(),
        role: "role:researcher".into(),
        dom: format!("grant:{grant}"),
        obj: obj.into(),
        act: act.into(),
        purpose: purpose.into(),
        now_ms,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn stores(test: &str, dir: &std::path::Path) -> Vec<(String, PolicyStore)> {
    let mut out = Vec::new();
    for url in hbs_tests::database_urls(test, dir).await {
        let s = PolicyStore::open(&url, None).await.unwrap();
        out.push((url, s));
    }
    out
}

#[tokio::test]
async fn casbin_runs_on_the_sqlx_adapter_on_both_databases() {
    let dir = tempfile::tempdir().unwrap();
    for (url, store) in stores("adapter", dir.path()).await {
        let m = DefaultModel::from_str(MODEL).await.unwrap();
        let mut e = Enforcer::new(m, policy::adapter::SqlxAdapter::new(&store))
            .await
            .unwrap();
        e.add_function(
            policy::model::SCOPE_FN,
            casbin::function_map::OperatorFunction::Arg2(|a, b| {
                casbin::rhai::Dynamic::from(policy::model::scope_match(
                    &a.into_string().unwrap(),
                    &b.into_string().unwrap(),
                ))
            }),
        );
        let v0 = store.version().await.unwrap();
        let r = Rule::route("auditor", "GET", "/metrics");
        assert!(e.add_policy(r.values()).await.unwrap(), "{url}");
        assert!(
            !e.add_policy(r.values()).await.unwrap(),
            "{url}: a duplicate is not added"
        );
        let r2 = Rule::route("operator", "GET", "/metrics");
        e.add_policies(vec![
            r2.values(),
            Rule::route("operator", "GET", "/readyz").values(),
        ])
        .await
        .unwrap();
        assert!(
            store.version().await.unwrap() > v0,
            "{url}: writes bump the version"
        );
        let q = Query::route(
            "spiffe://prostatenet/auditor/ann",
            "auditor",
            "GET",
            "/metrics",
            1,
        );
        assert!(e.enforce(q.values()).unwrap());
        // A fresh enforcer loads what the first one saved.
        let m = DefaultModel::from_str(MODEL).await.unwrap();
        let mut e2 = Enforcer::new(m, policy::adapter::SqlxAdapter::new(&store))
            .await
            .unwrap();
        assert_eq!(e2.get_policy().len(), 3, "{url}");
        // Filtered loading: only the operator's rules.
        e2.load_filtered_policy(casbin::Filter {
            p: vec!["role:operator"],
            g: vec![],
        })
        .await
        .unwrap();
        assert_eq!(e2.get_policy().len(), 2, "{url}");
        // Marked filtered: casbin then refuses (by panicking) to save it over the whole.
        assert!(e2.is_filtered());
        // Removals, single and filtered.
        assert!(e.remove_policy(r.values()).await.unwrap());
        assert!(e
            .remove_filtered_policy(0, vec!["role:operator".into()])
            .await
            .unwrap());
        assert!(store.all_rules().await.unwrap().is_empty(), "{url}");
        // save_policy replaces the stored policy with the enforcer's.
        e.add_policy(r.values()).await.unwrap();
        e.save_policy().await.unwrap();
        assert_eq!(store.all_rules().await.unwrap(), vec![r.clone()], "{url}");
        store.close().await;
    }
}

#[tokio::test]
async fn a_decider_refuses_an_enforcer_that_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("p.db").display());
    let store = PolicyStore::open(&url, None).await.unwrap();
    let off: policy::decide::Configure = |e| e.enable_enforce(false);
    match Decider::open_with(store.clone(), Some(off)).await {
        Err(PolicyError::Disabled) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a decider opened with enforcement off"),
    }
    // The check itself: an enforcer that is off (casbin then allows everything).
    let m = DefaultModel::from_str(MODEL).await.unwrap();
    let mut e = Enforcer::new(m, casbin::MemoryAdapter::default())
        .await
        .unwrap();
    e.enable_enforce(false);
    assert!(e
        .enforce(Query::route("x", "y", "GET", "/", 0).values())
        .unwrap());
    assert!(matches!(check_enforcing(&e), Err(PolicyError::Disabled)));
    e.enable_enforce(true);
    assert!(check_enforcing(&e).is_ok());
}

#[tokio::test]
async fn the_whole_workflow_with_decisions_and_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    for (url, store) in stores("workflow", dir.path()).await {
        store
            .seed(&[(
                "GET /grants".into(),
                vec![Rule::route("researcher", "GET", "/grants")],
            )])
            .await
            .unwrap();
        let decider = Decider::open(store.clone()).await.unwrap();
        let bob = person(BOB, "researcher", None);
        let r = store
            .submit(
                &bob,
                data_request(&["SITE_A"], "csPCa-validation", 30),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, Status::Submitted, "{url}");
        assert_eq!(r.revision, 1);
        // Amended before any review.
        let (eff, r) = store
            .act(
                &r.id,
                Step::Amend,
                &bob,
                Some(data_request(&["SITE_A", "SITE_B"], "csPCa-validation", 30)),
                "",
                None,
            )
            .await
            .unwrap();
        assert_eq!(eff, Effect::Amended);
        assert_eq!(r.revision, 2);
        // Someone else cannot amend or withdraw it.
        let eve = person(EVE, "researcher", None);
        let e = store
            .act(&r.id, Step::Withdraw, &eve, None, "", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("only its requester"), "{e}");
        // Before approval: nothing granted.
        let q = grant_query(
            BOB,
            &r.id,
            "cohort:",
            "search",
            "csPCa-validation",
            now_ms(),
        );
        let d = decider.decide(&q).await.unwrap();
        assert!(!d.allow);
        assert!(d.rule.contains("holds no rule"), "{}", d.rule);
        // First approval counted; amend now refused.
        let (eff, _) = store
            .act(&r.id, Step::Approve, &board(1), None, "", None)
            .await
            .unwrap();
        assert_eq!(eff, Effect::Counted { have: 1, need: 2 });
        let e = store
            .act(
                &r.id,
                Step::Amend,
                &bob,
                Some(data_request(&["SITE_C"], "x", 1)),
                "",
                None,
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("once a review"), "{e}");
        // Self-review: a researcher who is also... the requester can never review; a
        // board member twice neither.
        let e = store
            .act(&r.id, Step::Approve, &board(1), None, "", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already reviewed"), "{e}");
        // Quorum: approved, grant in force.
        let (eff, r) = store
            .act(&r.id, Step::Approve, &board(2), None, "", None)
            .await
            .unwrap();
        assert_eq!(eff, Effect::Approved);
        assert_eq!(r.status, Status::Approved);
        let g = r.grant.clone().unwrap();
        assert!(g.in_force);
        assert_eq!(g.scope, "cohort:site=SITE_A|SITE_B;vendor=ge|siemens");
        // Inside the grant: allowed, by the grant's rule.
        let t = now_ms();
        let ok = grant_query(
            BOB,
            &r.id,
            &resource_scope(&[("site", "SITE_B")]),
            "search",
            "csPCa-validation",
            t,
        );
        let d = decider.decide(&ok).await.unwrap();
        assert!(d.allow, "{url}: {}", d.rule);
        assert!(
            d.rule.starts_with(&format!("p, {BOB}, grant:{}", r.id)),
            "{}",
            d.rule
        );
        // Outside the cohort, the action, the purpose, the time, the subject: denied,
        // each saying why.
        for (q, why) in [
            (
                Query {
                    obj: resource_scope(&[("site", "SITE_C")]),
                    ..ok.clone()
                },
                "site SITE_C is outside the granted cohort",
            ),
            (
                Query {
                    obj: resource_scope(&[("vendor", "philips")]),
                    ..ok.clone()
                },
                "vendor philips is outside",
            ),
            (
                Query {
                    act: "run".into(),
                    ..ok.clone()
                },
                "action run is not granted",
            ),
            (
                Query {
                    purpose: "marketing".into(),
                    ..ok.clone()
                },
                "purpose is not the granted one",
            ),
            (
                Query {
                    purpose: String::new(),
                    ..ok.clone()
                },
                "no purpose was declared",
            ),
            (
                Query {
                    now_ms: g.ends_ms,
                    ..ok.clone()
                },
                "it ended at",
            ),
            (
                Query {
                    sub: EVE.into(),
                    ..ok.clone()
                },
                "holds no rule",
            ),
            (
                Query {
                    dom: "grant:req-other".into(),
                    ..ok.clone()
                },
                "holds no rule",
            ),
        ] {
            let d = decider.decide(&q).await.unwrap();
            assert!(!d.allow, "{url}: {q:?}");
            assert!(d.rule.contains(why), "{url}: {q:?}: {}", d.rule);
        }
        // The expiry boundary: the last millisecond allowed, the end itself denied.
        assert!(
            decider
                .decide(&Query {
                    now_ms: g.ends_ms - 1,
                    ..ok.clone()
                })
                .await
                .unwrap()
                .allow
        );
        assert!(
            !decider
                .decide(&Query {
                    now_ms: g.ends_ms,
                    ..ok.clone()
                })
                .await
                .unwrap()
                .allow
        );
        // Approved requests take no more steps.
        for (step, who) in [
            (Step::Approve, board(3)),
            (Step::Reject, board(3)),
            (Step::Withdraw, bob.clone()),
            (Step::Amend, bob.clone()),
        ] {
            let e = store
                .act(
                    &r.id,
                    step,
                    &who,
                    Some(data_request(&["SITE_A"], "p", 1)),
                    "because",
                    None,
                )
                .await
                .unwrap_err();
            assert!(matches!(e, PolicyError::Refused(_)), "{e}");
            assert!(e.to_string().contains("approved"), "{e}");
        }
        // Revocation: denied at once, the request now expired.
        let revoked = store
            .revoke(&r.id, &board(3), "consent withdrawn at a site", None)
            .await
            .unwrap();
        assert!(!revoked.in_force);
        let d = decider.decide(&ok).await.unwrap();
        assert!(!d.allow, "{url}: a revoked grant still allows");
        assert_eq!(
            store.get(&r.id).await.unwrap().unwrap().status,
            Status::Expired
        );
        let e = store
            .revoke(&r.id, &board(3), "again", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already revoked"), "{e}");
        // Rejection and withdrawal.
        let r2 = store
            .submit(&bob, data_request(&["SITE_A"], "p", 5), None)
            .await
            .unwrap();
        let e = store
            .act(&r2.id, Step::Reject, &board(1), None, "", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("reason is required"), "{e}");
        let (eff, r2) = store
            .act(&r2.id, Step::Reject, &board(1), None, "no protocol", None)
            .await
            .unwrap();
        assert_eq!(eff, Effect::Rejected);
        assert_eq!(r2.status, Status::Rejected);
        let r3 = store
            .submit(&bob, data_request(&["SITE_A"], "p", 5), None)
            .await
            .unwrap();
        let (_, r3) = store
            .act(&r3.id, Step::Withdraw, &bob, None, "", None)
            .await
            .unwrap();
        assert_eq!(r3.status, Status::Withdrawn);
        let e = store
            .act(&r3.id, Step::Approve, &board(1), None, "", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("withdrawn"), "{e}");
        // Listing.
        assert_eq!(store.list(Some(BOB), None).await.unwrap().len(), 3);
        assert_eq!(
            store
                .list(None, Some(Status::Rejected))
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            store
                .act("req-nope", Step::Withdraw, &bob, None, "", None)
                .await,
            Err(PolicyError::NotFound(_))
        ));
        store.close().await;
    }
}

#[tokio::test]
async fn bad_submissions_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("p.db").display());
    let store = PolicyStore::open(&url, None).await.unwrap();
    let bob = person(BOB, "researcher", None);
    let base = data_request(&["SITE_A"], "p", 5);
    for (s, why) in [
        (
            Submission {
                purpose: " ".into(),
                ..base.clone()
            },
            "purpose",
        ),
        (
            Submission {
                purpose: "détection".into(),
                ..base.clone()
            },
            "purpose",
        ),
        (
            Submission {
                days: 0,
                ..base.clone()
            },
            "days",
        ),
        (
            Submission {
                cohort: None,
                ..base.clone()
            },
            "cohort",
        ),
        (
            Submission {
                model: Some(ModelRef {
                    name: "m".into(),
                    sha256: "00".into(),
                }),
                ..base.clone()
            },
            "names no model",
        ),
        (
            Submission {
                kind: Kind::Service,
                ..base.clone()
            },
            "names its model",
        ),
        (
            Submission {
                kind: Kind::Service,
                model: Some(ModelRef {
                    name: "m".into(),
                    sha256: "AB".repeat(32),
                }),
                ..base.clone()
            },
            "sha256",
        ),
        (
            Submission {
                kind: Kind::Policy,
                ..base.clone()
            },
            "a change, not a cohort",
        ),
        (
            Submission {
                project: Some("a b".into()),
                ..base.clone()
            },
            "project",
        ),
    ] {
        let e = store.submit(&bob, s, None).await.unwrap_err();
        assert!(matches!(e, PolicyError::BadInput(_)), "{e}");
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
    assert!(
        store.list(None, None).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn racing_reviews_count_once_each() {
    let dir = tempfile::tempdir().unwrap();
    for (url, store) in stores("races", dir.path()).await {
        let bob = person(BOB, "researcher", None);
        for round in 0..3 {
            let r = store
                .submit(&bob, data_request(&["SITE_A"], "p", 5), None)
                .await
                .unwrap();
            // Eight distinct members and one member twice, all at once.
            let mut set = tokio::task::JoinSet::new();
            for who in (1..=8).map(board).chain([board(1)]) {
                let (store, id) = (store.clone(), r.id.clone());
                set.spawn(async move { store.act(&id, Step::Approve, &who, None, "", None).await });
            }
            let mut counted = 0;
            let mut approved = 0;
            let mut refused = 0;
            while let Some(res) = set.join_next().await {
                match res.unwrap() {
                    Ok((Effect::Counted { .. }, _)) => counted += 1,
                    Ok((Effect::Approved, _)) => approved += 1,
                    Ok((other, _)) => panic!("{other:?}"),
                    Err(PolicyError::Refused(_)) => refused += 1,
                    Err(e) => panic!("{url} round {round}: {e}"),
                }
            }
            assert_eq!(
                (counted, approved, refused),
                (1, 1, 7),
                "{url} round {round}"
            );
            let v = store.get(&r.id).await.unwrap().unwrap();
            assert_eq!(v.reviews.len(), 2, "{url}");
            assert_eq!(v.status, Status::Approved);
        }
        store.close().await;
    }
}

#[tokio::test]
async fn policy_changes_need_the_board_and_reach_every_replica_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for (url, store) in stores("replicas", dir.path()).await {
        // A second replica: its own pool and decider over the same database.
        let other = PolicyStore::open(&url, None).await.unwrap();
        store
            .seed(&[(
                "GET /metrics".into(),
                vec![
                    Rule::route("auditor", "GET", "/metrics"),
                    Rule::route("operator", "GET", "/metrics"),
                ],
            )])
            .await
            .unwrap();
        // Seeding is once per key: a second seed adds nothing.
        assert!(other
            .seed(&[(
                "GET /metrics".into(),
                vec![Rule::route("auditor", "GET", "/metrics")]
            )])
            .await
            .unwrap()
            .is_empty());
        let d1 = Decider::open(store.clone()).await.unwrap();
        let d2 = Decider::open(other.clone()).await.unwrap();
        let q = Query::route(
            "spiffe://prostatenet/auditor/ann",
            "auditor",
            "GET",
            "/metrics",
            now_ms(),
        );
        assert!(d1.decide(&q).await.unwrap().allow);
        assert!(d2.decide(&q).await.unwrap().allow);
        // An operator proposes removing the auditors' access; the operator cannot approve
        // it alone, nor can one member.
        let op = person("spiffe://prostatenet/operator/olga", "operator", None);
        let change = Submission {
            kind: Kind::Policy,
            project: None,
            cohort: None,
            purpose: String::new(),
            days: 0,
            model: None,
            justification: "auditors read metrics from the export".into(),
            change: Some(PolicyChange {
                remove: vec![Rule::route("auditor", "GET", "/metrics")],
                settings: Some(ProjectSettings {
                    project: "prostatenet".into(),
                    quorum: 3,
                    forbid_same_site: true,
                }),
                ..Default::default()
            }),
            outputs: vec![],
            action: None,
            recipient: None,
        };
        let r = store.submit(&op, change, None).await.unwrap();
        let e = store
            .act(&r.id, Step::Approve, &op, None, "", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("only ethics board"), "{e}");
        store
            .act(&r.id, Step::Approve, &board(1), None, "", None)
            .await
            .unwrap();
        assert!(
            d2.decide(&q).await.unwrap().allow,
            "one approval changes nothing"
        );
        let (eff, _) = other
            .act(&r.id, Step::Approve, &board(2), None, "", None)
            .await
            .unwrap();
        assert_eq!(eff, Effect::Approved);
        // Both replicas deny at once, with the reason.
        for d in [&d1, &d2] {
            let dec = d.decide(&q).await.unwrap();
            assert!(!dec.allow, "{url}");
            assert!(
                dec.rule.contains("no rule admits role:auditor"),
                "{}",
                dec.rule
            );
        }
        assert!(
            d2.decide(&Query::route(
                "spiffe://prostatenet/operator/olga",
                "operator",
                "GET",
                "/metrics",
                0
            ))
            .await
            .unwrap()
            .allow
        );
        // The new quorum and same-site rule are in force.
        assert_eq!(store.settings("prostatenet").await.unwrap().quorum, 3);
        let bob = person(BOB, "researcher", Some("SITE_1"));
        let r = store
            .submit(&bob, data_request(&["SITE_A"], "p", 5), None)
            .await
            .unwrap();
        assert_eq!(r.quorum, 3);
        let e = store
            .act(&r.id, Step::Approve, &board(1), None, "", None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("own site"), "{e}");
        // A grant revoked through one replica denies on the other at its next call.
        store
            .act(&r.id, Step::Approve, &board(2), None, "", None)
            .await
            .unwrap();
        store
            .act(&r.id, Step::Approve, &board(3), None, "", None)
            .await
            .unwrap();
        let (_, r) = store
            .act(&r.id, Step::Approve, &board(4), None, "", None)
            .await
            .unwrap();
        assert_eq!(r.status, Status::Approved);
        let gq = grant_query(BOB, &r.id, "cohort:", "search", "p", now_ms());
        assert!(d2.decide(&gq).await.unwrap().allow, "{url}");
        store
            .revoke(&r.id, &op, "operator stop", None)
            .await
            .unwrap();
        let dec = d2.decide(&gq).await.unwrap();
        assert!(
            !dec.allow,
            "{url}: the other replica still allows a revoked grant"
        );
        other.close().await;
        store.close().await;
    }
}

#[tokio::test]
async fn the_explanation_agrees_with_casbin() {
    // why_denied mirrors the matcher: on random queries over a set of rules, it says
    // "allowed" exactly when casbin allows.
    let m = DefaultModel::from_str(MODEL).await.unwrap();
    let mut e = Enforcer::new(m, casbin::MemoryAdapter::default())
        .await
        .unwrap();
    e.add_function(
        policy::model::SCOPE_FN,
        casbin::function_map::OperatorFunction::Arg2(|a, b| {
            casbin::rhai::Dynamic::from(policy::model::scope_match(
                &a.into_string().unwrap(),
                &b.into_string().unwrap(),
            ))
        }),
    );
    let rules = vec![
        Rule::route("researcher", "GET", "/grants"),
        Rule {
            sub: BOB.into(),
            dom: "grant:g1".into(),
            obj: "cohort:site=A|B;vendor=ge".into(),
            act: "search".into(),
            purpose: "p1".into(),
            until: time_key(1000),
        },
        Rule {
            sub: BOB.into(),
            dom: "grant:g2".into(),
            obj: "cohort:model=abc".into(),
            act: "run".into(),
            purpose: "*".into(),
            until: "*".into(),
        },
    ];
    for r in &rules {
        e.add_policy(r.values()).await.unwrap();
    }
    let pick = |i: u64, xs: &[&str]| xs[(i % xs.len() as u64) as usize].to_string();
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut allowed = 0;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let s = seed;
        let q = Query {
            sub: pick(s, &[BOB, EVE]),
            role: pick(s >> 3, &["role:researcher", "role:auditor"]),
            dom: pick(s >> 5, &["*", "grant:g1", "grant:g2"]),
            obj: pick(
                s >> 8,
                &[
                    "GET /grants",
                    "cohort:",
                    "cohort:site=A",
                    "cohort:site=C",
                    "cohort:vendor=ge;site=B",
                    "cohort:model=abc",
                    "cohort:model=x",
                ],
            ),
            act: pick(s >> 11, &["call", "search", "run"]),
            purpose: pick(s >> 13, &["", "p1", "p2"]),
            now_ms: (s >> 20) % 2000,
        };
        let casbin_says = e.enforce(q.values()).unwrap();
        let ours = policy::model::why_denied(&rules, &q) == "allowed";
        assert_eq!(casbin_says, ours, "{q:?}");
        allowed += usize::from(casbin_says);
    }
    assert!(
        allowed > 50,
        "the sample must exercise allows too ({allowed})"
    );
}

#[tokio::test]
async fn a_service_grant_names_its_model() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("p.db").display());
    let store = PolicyStore::open(&url, None).await.unwrap();
    let decider = Arc::new(Decider::open(store.clone()).await.unwrap());
    let bob = person(BOB, "researcher", None);
    let sha = "ab".repeat(32);
    let s = Submission {
        kind: Kind::Service,
        model: Some(ModelRef {
            name: "csPCa classifier v1".into(),
            sha256: sha.clone(),
        }),
        ..data_request(&["SITE_A"], "fine-tune", 10)
    };
    let r = store.submit(&bob, s, None).await.unwrap();
    store
        .act(&r.id, Step::Approve, &board(1), None, "", None)
        .await
        .unwrap();
    let (_, r) = store
        .act(&r.id, Step::Approve, &board(2), None, "", None)
        .await
        .unwrap();
    let run = grant_query(
        BOB,
        &r.id,
        &format!("cohort:model={sha}"),
        "run",
        "fine-tune",
        now_ms(),
    );
    assert!(decider.decide(&run).await.unwrap().allow);
    let other = Query {
        obj: format!("cohort:model={}", "cd".repeat(32)),
        ..run.clone()
    };
    let d = decider.decide(&other).await.unwrap();
    assert!(!d.allow);
    assert!(d.rule.contains("model"), "{}", d.rule);
    let search = Query {
        act: "search".into(),
        ..run
    };
    assert!(
        !decider.decide(&search).await.unwrap().allow,
        "a service grant does not allow search"
    );
}

/// Writes as another replica would: its own connection, not this process's store (so
/// nothing in this process is told).
async fn external_write(url: &str, rule: &Rule, insert: bool) {
    use sqlx::{Connection, Executor};
    let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
    c.execute("BEGIN").await.unwrap();
    let changed = if insert {
        policy::store::insert_rule(&mut c, "p", &rule.fields()).await
    } else {
        policy::store::delete_rule(&mut c, "p", &rule.fields()).await
    };
    assert!(changed.unwrap());
    policy::store::bump(&mut c, std::slice::from_ref(&rule.sub))
        .await
        .unwrap();
    c.execute("COMMIT").await.unwrap();
}

/// Decides `q` until it answers `allow` (a liveness bound, not a timing assertion).
async fn until_decided(d: &Decider, q: &Query, allow: bool) -> bool {
    for _ in 0..500 {
        if d.decide(q).await.unwrap().allow == allow {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn another_replica_s_change_is_heard_and_a_lost_listener_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (url, store) in stores("heard", dir.path()).await {
        let rule = Rule::route("auditor", "GET", "/metrics");
        store
            .seed(&[("GET /metrics".into(), vec![rule.clone()])])
            .await
            .unwrap();
        let d = Decider::open(store.clone()).await.unwrap();
        assert!(d.watching(), "{url}: the decider does not hear changes");
        let q = Query::route(
            "spiffe://prostatenet/auditor/ann",
            "auditor",
            "GET",
            "/metrics",
            now_ms(),
        );
        assert!(d.decide(&q).await.unwrap().allow);
        let heard = d.changes_heard();
        external_write(&url, &rule, false).await;
        assert!(
            until_decided(&d, &q, false).await,
            "{url}: a rule removed by another replica still allows"
        );
        assert!(d.changes_heard() > heard);
        assert!(d
            .decide(&q)
            .await
            .unwrap()
            .rule
            .contains("no rule admits role:auditor"));
        if url.starts_with("postgres") {
            // Cut the listener's connection; a change made while it is down is still
            // found (version read per decision, then the reconnection's reload).
            use sqlx::{Connection, Executor};
            let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
            let killed = c
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                )
                .await
                .unwrap();
            assert_eq!(killed.rows_affected(), 1, "one listener per decider");
            external_write(&url, &rule, true).await;
            assert!(
                until_decided(&d, &q, true).await,
                "a change made while the listener was down was lost"
            );
            let mut back = false;
            for _ in 0..500 {
                if d.watching() {
                    back = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(back, "the listener did not come back");
            external_write(&url, &rule, false).await;
            assert!(until_decided(&d, &q, false).await);
        }
    }
}

/// The project's model with one more condition: `who` is never admitted.
fn model_refusing(who: &str) -> String {
    MODEL.replace(
        "&& scopeMatch(r.obj, p.obj)",
        &format!("&& scopeMatch(r.obj, p.obj) && r.sub != \"{who}\""),
    )
}

fn policy_change(change: PolicyChange) -> Submission {
    Submission {
        kind: Kind::Policy,
        project: None,
        cohort: None,
        purpose: String::new(),
        days: 0,
        model: None,
        justification: "model review".into(),
        change: Some(change),
        outputs: vec![],
        action: None,
        recipient: None,
    }
}

#[tokio::test]
async fn the_model_changes_only_through_review_and_only_to_one_that_enforces() {
    let dir = tempfile::tempdir().unwrap();
    for (url, store) in stores("model", dir.path()).await {
        store
            .seed(&[(
                "GET /metrics".into(),
                vec![Rule::route("auditor", "GET", "/metrics")],
            )])
            .await
            .unwrap();
        let op = person("spiffe://prostatenet/operator/olga", "operator", None);
        // Models that would not enforce are refused at the door, naming the probe.
        let permissive = MODEL
            .lines()
            .map(|l| if l.starts_with("m = ") { "m = true" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        let no_expiry = MODEL.replace("&& (p.until == \"*\" || r.now < p.until) ", "");
        assert_ne!(no_expiry, MODEL);
        let no_purpose = MODEL.replace("&& (p.purpose == \"*\" || p.purpose == r.purpose) ", "");
        assert_ne!(no_purpose, MODEL);
        for (text, why) in [
            (permissive.as_str(), "lets in a caller no rule names"),
            (no_expiry.as_str(), "a grant ends at its end time"),
            (no_purpose.as_str(), "a grant admits only its purpose"),
            ("[request_definition]\nr = sub", "does not fit"),
            ("[matchers]\nm = (", "does not compile"),
        ] {
            let change = PolicyChange {
                model: Some(text.into()),
                ..Default::default()
            };
            match store.submit(&op, policy_change(change), None).await {
                Err(PolicyError::BadInput(m)) => {
                    assert!(
                        m.starts_with("change.model:") && m.contains(why),
                        "{why}: {m}"
                    )
                }
                other => panic!("{url}: model accepted: {other:?}"),
            }
        }
        // A stricter model goes through the board like any policy change.
        let mallory = "spiffe://prostatenet/auditor/mallory";
        let d1 = Decider::open(store.clone()).await.unwrap();
        let other = PolicyStore::open(&url, None).await.unwrap();
        let d2 = Decider::open(other.clone()).await.unwrap();
        let q = |sub: &str| Query::route(sub, "auditor", "GET", "/metrics", now_ms());
        assert!(d1.decide(&q(mallory)).await.unwrap().allow);
        let r = store
            .submit(
                &op,
                policy_change(PolicyChange {
                    model: Some(model_refusing(mallory)),
                    ..Default::default()
                }),
                None,
            )
            .await
            .unwrap();
        // The operator who proposed it cannot approve it; one member is not a quorum.
        assert!(store
            .act(&r.id, Step::Approve, &op, None, "", None)
            .await
            .is_err());
        let (eff, _) = store
            .act(&r.id, Step::Approve, &board(1), None, "", None)
            .await
            .unwrap();
        assert!(matches!(eff, Effect::Counted { .. }));
        assert!(d1.decide(&q(mallory)).await.unwrap().allow);
        let (eff, v) = store
            .act(&r.id, Step::Approve, &board(2), None, "", None)
            .await
            .unwrap();
        assert_eq!(eff, Effect::Approved);
        assert_eq!(v.status, Status::Approved);
        assert_eq!(store.model().await.unwrap(), model_refusing(mallory));
        for d in [&d1, &d2] {
            let dec = d.decide(&q(mallory)).await.unwrap();
            assert!(!dec.allow, "{url}: the approved model is not in force");
            assert!(dec.rule.contains("model in force"), "{}", dec.rule);
            assert!(
                d.decide(&q("spiffe://prostatenet/auditor/ann"))
                    .await
                    .unwrap()
                    .allow
            );
        }
        // A model written past the review that would not enforce stops a decider from
        // opening (and so a gateway from starting).
        {
            use sqlx::{Connection, Executor};
            let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
            c.execute(sqlx::query("UPDATE policy_model SET model = $1").bind(permissive.clone()))
                .await
                .unwrap();
        }
        match Decider::open(other.clone()).await {
            Err(e) => assert!(
                e.to_string().contains("stored policy model is refused"),
                "{e}"
            ),
            Ok(_) => panic!("{url}: a decider opened on a model that lets anyone in"),
        }
    }
}

#[tokio::test]
async fn the_enforcer_cache_is_bounded_and_stays_right_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("cache.db").display()
    );
    let store = PolicyStore::open(&url, None).await.unwrap();
    store
        .seed(&[(
            "GET /metrics".into(),
            vec![Rule::route("auditor", "GET", "/metrics")],
        )])
        .await
        .unwrap();
    let d = Decider::open(store.clone()).await.unwrap();
    let max = policy::decide::MAX_CACHED;
    // More callers than the cache holds: each has its own grant-scoped enforcer.
    for i in 0..max + 50 {
        let q = grant_query(
            &format!("spiffe://prostatenet/researcher/r{i}"),
            "none",
            "cohort:",
            "search",
            "p",
            now_ms(),
        );
        assert!(!d.decide(&q).await.unwrap().allow);
        assert!(d.cached() <= max, "{} cached", d.cached());
    }
    // Past the bound, route decisions are still right (rebuilt when dropped).
    let q = Query::route(
        "spiffe://prostatenet/auditor/ann",
        "auditor",
        "GET",
        "/metrics",
        now_ms(),
    );
    assert!(d.decide(&q).await.unwrap().allow);
    assert!(d.cached() > max / 2 - 1);
}
