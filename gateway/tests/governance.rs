//! Governance end to end: the `hbs request`, `hbs review` and `hbs grants` commands
//! against a running gateway over mTLS, the audit log holding the whole history, and two
//! gateways on one PostgreSQL where a revocation on one denies on the other at once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn refused(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "expected a refusal: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

struct People {
    researcher: PathBuf,
    other_researcher: PathBuf,
    board1: PathBuf,
    board2: PathBuf,
    operator: PathBuf,
    auditor: PathBuf,
}

fn people(data: &Path, dir: &Path) -> People {
    let dev = data.join("dev-certs");
    let other_researcher = dir.join("eve");
    issue(data, "researcher", "eve", None, &other_researcher);
    let board2 = dir.join("board2");
    issue(data, "ethics-board", "member2", None, &board2);
    People {
        researcher: dev.join("researcher"),
        other_researcher,
        board1: dev.join("ethics-board"),
        board2,
        operator: dev.join("operator"),
        auditor: dev.join("auditor"),
    }
}

#[test]
fn a_request_from_submission_to_revocation() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = start(&data);
    let p = people(&data, d.path());
    let cohort = d.path().join("cohort.json");
    std::fs::write(
        &cohort,
        r#"{"sites": ["SITE_A"], "vendors": ["siemens", "ge"], "sequences": ["T2W", "ADC"], "studies": "baseline", "annotated": true}"#,
    )
    .unwrap();
    let cohort_s = cohort.to_str().unwrap();

    // Submit: the ID alone on stdout.
    let o = hbs_as(
        &s,
        &p.researcher,
        &[
            "request",
            "submit",
            "--kind",
            "data",
            "--cohort",
            cohort_s,
            "--purpose",
            "csPCa-detection",
            "--days",
            "30",
            "--justification",
            "validate on external data",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(id.starts_with("req-"), "{id}");
    let show = |who: &Path| ok_json(&hbs_as(&s, who, &["request", "show", &id, "--json"]));
    assert_eq!(show(&p.researcher)["status"], "submitted");

    // Another researcher neither sees nor touches it.
    refused(
        &hbs_as(&s, &p.other_researcher, &["request", "show", &id]),
        "404",
    );
    refused(
        &hbs_as(&s, &p.other_researcher, &["request", "withdraw", &id]),
        "404",
    );
    assert_eq!(
        ok_json(&hbs_as(
            &s,
            &p.other_researcher,
            &["request", "list", "--json"]
        )),
        serde_json::json!([])
    );
    // A researcher cannot review; an auditor cannot submit.
    refused(
        &hbs_as(&s, &p.researcher, &["review", "approve", &id]),
        "403",
    );
    refused(
        &hbs_as(
            &s,
            &p.auditor,
            &[
                "request",
                "submit",
                "--kind",
                "data",
                "--cohort",
                cohort_s,
                "--purpose",
                "x",
                "--days",
                "1",
            ],
        ),
        "403",
    );
    // A researcher cannot submit a policy change.
    let change = d.path().join("change.json");
    std::fs::write(&change, r#"{"remove": [{"sub": "role:auditor", "dom": "*", "obj": "GET /metrics", "act": "call", "purpose": "*", "until": "*"}]}"#).unwrap();
    refused(
        &hbs_as(
            &s,
            &p.researcher,
            &[
                "request",
                "submit",
                "--kind",
                "policy",
                "--change",
                change.to_str().unwrap(),
            ],
        ),
        "may not submit policy requests",
    );

    // Amend before review; bad input names the field.
    let o = ok_json(&hbs_as(
        &s,
        &p.researcher,
        &[
            "request",
            "amend",
            &id,
            "--kind",
            "data",
            "--cohort",
            cohort_s,
            "--purpose",
            "csPCa-detection",
            "--days",
            "60",
            "--json",
        ],
    ));
    assert_eq!(o["request"]["revision"], 2);
    assert_eq!(o["request"]["submission"]["days"], 60);
    refused(
        &hbs_as(
            &s,
            &p.researcher,
            &[
                "request",
                "amend",
                &id,
                "--kind",
                "data",
                "--cohort",
                cohort_s,
                "--purpose",
                "x",
                "--days",
                "0",
            ],
        ),
        "days must be between 1 and 3650",
    );

    // The board: the pending list, one approval counted, the same member twice refused.
    let pending = ok_json(&hbs_as(&s, &p.board1, &["review", "list", "--json"]));
    assert!(pending
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == id.as_str()));
    let o = ok_json(&hbs_as(
        &s,
        &p.board1,
        &[
            "review",
            "approve",
            &id,
            "--reason",
            "sound protocol",
            "--json",
        ],
    ));
    assert!(o["effect"].as_str().unwrap().contains("Counted"), "{o}");
    refused(
        &hbs_as(&s, &p.board1, &["review", "approve", &id]),
        "already reviewed",
    );
    refused(
        &hbs_as(
            &s,
            &p.researcher,
            &[
                "request",
                "amend",
                &id,
                "--kind",
                "data",
                "--cohort",
                cohort_s,
                "--purpose",
                "x",
                "--days",
                "5",
            ],
        ),
        "once a review",
    );
    let o = ok_json(&hbs_as(
        &s,
        &p.board2,
        &["review", "approve", &id, "--json"],
    ));
    assert_eq!(o["effect"], "Approved");
    assert_eq!(show(&p.researcher)["status"], "approved");
    assert_eq!(show(&p.board1)["reviews"].as_array().unwrap().len(), 2);

    // The grant, and decisions under it, each with its rule.
    let grants = ok_json(&hbs_as(&s, &p.researcher, &["grants", "list", "--json"]));
    assert_eq!(grants[0]["id"], id.as_str());
    assert_eq!(grants[0]["in_force"], true);
    let check = |purpose: &str, attrs: &[&str]| {
        let mut a = vec!["grants", "check", &id, "--purpose", purpose, "--json"];
        a.extend_from_slice(attrs);
        hbs_as(&s, &p.researcher, &a)
    };
    let o = check("csPCa-detection", &["site=SITE_A", "vendor=ge"]);
    let v = ok_json(&o);
    assert_eq!(v["allow"], true);
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .starts_with("p, spiffe://prostatenet/researcher/"),
        "{v}"
    );
    for (purpose, attrs, why) in [
        (
            "csPCa-detection",
            &["site=SITE_B"][..],
            "site SITE_B is outside the granted cohort",
        ),
        (
            "csPCa-detection",
            &["vendor=philips"][..],
            "vendor philips is outside",
        ),
        ("marketing", &[][..], "purpose is not the granted one"),
    ] {
        let o = check(purpose, attrs);
        assert!(!o.status.success());
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["allow"], false);
        assert!(v["rule"].as_str().unwrap().contains(why), "{v}");
    }
    let o = hbs_as(
        &s,
        &p.researcher,
        &[
            "grants",
            "check",
            &id,
            "--action",
            "run",
            "--purpose",
            "csPCa-detection",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .contains("action run is not granted"),
        "{v}"
    );
    // Someone else cannot use the grant.
    let o = hbs_as(
        &s,
        &p.other_researcher,
        &[
            "grants",
            "check",
            &id,
            "--purpose",
            "csPCa-detection",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["allow"], false);

    // No more steps on an approved request; revocation ends it at once.
    refused(
        &hbs_as(&s, &p.researcher, &["request", "withdraw", &id]),
        "revoke its grant instead",
    );
    refused(
        &hbs_as(
            &s,
            &p.researcher,
            &["grants", "revoke", &id, "--reason", "mine"],
        ),
        "403",
    );
    let g = ok_json(&hbs_as(
        &s,
        &p.operator,
        &[
            "grants",
            "revoke",
            &id,
            "--reason",
            "site withdrew consent",
            "--json",
        ],
    ));
    assert_eq!(g["in_force"], false);
    assert!(!check("csPCa-detection", &[]).status.success());
    assert_eq!(show(&p.researcher)["status"], "expired");

    // A board member cannot approve their own (policy) request; rejection needs a reason.
    let o = hbs_as(
        &s,
        &p.board1,
        &[
            "request",
            "submit",
            "--kind",
            "policy",
            "--change",
            change.to_str().unwrap(),
            "--justification",
            "metrics are operational",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid = String::from_utf8(o.stdout).unwrap().trim().to_string();
    refused(
        &hbs_as(&s, &p.board1, &["review", "approve", &pid]),
        "cannot review a request they submitted",
    );
    let o = ok_json(&hbs_as(
        &s,
        &p.board2,
        &[
            "review",
            "reject",
            &pid,
            "--reason",
            "auditors need metrics",
            "--json",
        ],
    ));
    assert_eq!(o["request"]["status"], "rejected");

    // The whole history is in the audit log, decisions with their rules.
    let (code, body) = curl(&s, "/audit/events", Some(&p.auditor));
    assert_eq!(code, Some(200), "{body}");
    for needle in [
        "policy.submit",
        "policy.amend",
        "approval 1 of 2 counted",
        "approved: grant in force",
        "grant revoked",
        "this board member has already reviewed this request",
        "a board member cannot review a request they submitted",
        "site SITE_B is outside the granted cohort",
        // Route decisions name the Casbin rule that admitted them.
        "p, role:researcher, *, POST /requests, call, *, *",
    ] {
        assert!(body.contains(needle), "the audit log lacks {needle:?}");
    }
    // And it verifies.
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["audit", "verify", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The operator who proposed policy request `id` cannot approve it (not a board member);
/// one member is not a quorum (the auditors' `/metrics` still answers); two are.
fn approved_by_the_board_alone(s: &Server, p: &People, id: &str) {
    refused(&hbs_as(s, &p.operator, &["review", "approve", id]), "403");
    ok_json(&hbs_as(s, &p.board1, &["review", "approve", id, "--json"]));
    assert_eq!(curl(s, "/metrics", Some(&p.auditor)).0, Some(200));
    ok_json(&hbs_as(s, &p.board2, &["review", "approve", id, "--json"]));
}

#[test]
fn an_approved_policy_change_takes_effect_and_no_one_changes_policy_alone() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = start(&data);
    let p = people(&data, d.path());
    assert_eq!(curl(&s, "/metrics", Some(&p.auditor)).0, Some(200));
    let change = d.path().join("change.json");
    std::fs::write(
        &change,
        r#"{"remove": [{"sub": "role:auditor", "dom": "*", "obj": "GET /metrics", "act": "call", "purpose": "*", "until": "*"}]}"#,
    )
    .unwrap();
    let o = hbs_as(
        &s,
        &p.operator,
        &[
            "request",
            "submit",
            "--kind",
            "policy",
            "--change",
            change.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    approved_by_the_board_alone(&s, &p, &id);
    let (code, body) = curl(&s, "/metrics", Some(&p.auditor));
    assert_eq!(code, Some(403), "{body}");
    assert_eq!(curl(&s, "/metrics", Some(&p.operator)).0, Some(200));
    // A change that grants data access directly is refused: grants come from requests.
    std::fs::write(
        &change,
        r#"{"add": [{"sub": "spiffe://prostatenet/researcher/researcher", "dom": "grant:x", "obj": "*", "act": "search", "purpose": "*", "until": "*"}]}"#,
    )
    .unwrap();
    refused(
        &hbs_as(
            &s,
            &p.operator,
            &[
                "request",
                "submit",
                "--kind",
                "policy",
                "--change",
                change.to_str().unwrap(),
            ],
        ),
        "only add or remove role rules",
    );
}

#[test]
fn two_gateways_on_one_postgresql_share_the_policy() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(pg) = rt.block_on(hbs_tests::fresh_pg("two_gateways")) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let config = d.path().join("hbs.toml");
    std::fs::write(&config, format!("database_url = \"{pg}\"\n")).unwrap();
    let cfg = config.to_str().unwrap();
    let a = start_with(&data, &["--config", cfg]);
    // The second replica: same data folder (keys, PKI), same database, its own process.
    let b = start_with(&data, &["--config", cfg]);
    let p = people(&data, d.path());
    let cohort = d.path().join("cohort.json");
    std::fs::write(&cohort, r#"{"sites": ["SITE_A"]}"#).unwrap();
    let o = hbs_as(
        &a,
        &p.researcher,
        &[
            "request",
            "submit",
            "--kind",
            "data",
            "--cohort",
            cohort.to_str().unwrap(),
            "--purpose",
            "p",
            "--days",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    // One approval on each replica.
    ok_json(&hbs_as(
        &a,
        &p.board1,
        &["review", "approve", &id, "--json"],
    ));
    ok_json(&hbs_as(
        &b,
        &p.board2,
        &["review", "approve", &id, "--json"],
    ));
    let check = |s: &Server| {
        hbs_as(
            s,
            &p.researcher,
            &["grants", "check", &id, "--purpose", "p", "--json"],
        )
    };
    assert!(check(&a).status.success());
    assert!(check(&b).status.success());
    // Revoked on A: denied on B at its very next call.
    ok_json(&hbs_as(
        &a,
        &p.operator,
        &["grants", "revoke", &id, "--reason", "stop", "--json"],
    ));
    let o = check(&b);
    assert!(!o.status.success(), "B still allows a grant revoked on A");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["rule"].as_str().unwrap().contains("holds no rule"), "{v}");
}

#[test]
fn the_model_changes_through_review_and_a_gateway_will_not_start_on_one_that_does_not_enforce() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = start(&data);
    let p = people(&data, d.path());
    let submit_model = |text: &str| {
        let f = d.path().join("model.conf");
        std::fs::write(&f, text).unwrap();
        hbs_as(
            &s,
            &p.operator,
            &[
                "request",
                "submit",
                "--kind",
                "policy",
                "--casbin-model",
                f.to_str().unwrap(),
            ],
        )
    };
    let model = policy::model::MODEL;
    let permissive: String = model
        .lines()
        .map(|l| if l.starts_with("m = ") { "m = true" } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    refused(
        &submit_model(&permissive),
        "the model lets in a caller no rule names",
    );
    refused(
        &submit_model(&model.replace("&& (p.until == \"*\" || r.now < p.until) ", "")),
        "a grant ends at its end time",
    );
    // A stricter model (auditors lose /metrics whatever the rules say) goes through the
    // board and is in force on the running gateway once approved.
    let stricter = model.replace(
        "&& scopeMatch(r.obj, p.obj)",
        "&& scopeMatch(r.obj, p.obj) && !(r.role == \"role:auditor\" && r.obj == \"GET /metrics\")",
    );
    let o = submit_model(&stricter);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    approved_by_the_board_alone(&s, &p, &id);
    let (code, body) = curl(&s, "/metrics", Some(&p.auditor));
    assert_eq!(code, Some(403), "{body}");
    assert_eq!(curl(&s, "/metrics", Some(&p.operator)).0, Some(200));
    let show = ok_json(&hbs_as(
        &s,
        &p.operator,
        &["request", "show", &id, "--json"],
    ));
    assert_eq!(show["status"], "approved");
    drop(s);

    // A model written into the database past the review, one that would let anyone in:
    // the gateway refuses to start, saying why, and never listens.
    let url = format!("sqlite://{}?mode=rw", data.join("hbs.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
        c.execute(sqlx::query("UPDATE policy_model SET model = $1").bind(permissive))
            .await
            .unwrap();
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env_remove("HBS_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut status = None;
    for _ in 0..600 {
        if let Some(st) = child.try_wait().unwrap() {
            status = Some(st);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let o = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        status.is_some_and(|st| !st.success()),
        "the gateway started on a model that lets anyone in: {out}{err}"
    );
    assert!(!out.contains("listening"), "{out}");
    assert!(err.contains("stored policy model is refused"), "{err}");
}
