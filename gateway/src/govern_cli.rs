//! Client commands of governance: `hbs request`, `hbs review`, `hbs grants`. Each talks to
//! the gateway with the caller's certificate (the client flags of every client command),
//! prints a short line for a person or, with `--json`, what the gateway answered, and
//! exits non-zero when the gateway refused (the reason printed).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::client::{query_escape, Answer, ClientArgs};
use crate::search::refused;

/// What a request says (for `submit` and `amend`).
#[derive(Args, Debug, Clone)]
pub struct SubmissionArgs {
    /// data, service or policy.
    #[arg(long, value_parser = ["data", "service", "policy"])]
    pub kind: String,
    /// Cohort definition (JSON file; data and service requests).
    #[arg(long)]
    pub cohort: Option<PathBuf>,
    /// The purpose (declared again on every call under the grant).
    #[arg(long, default_value = "")]
    pub purpose: String,
    /// Requested duration in days.
    #[arg(long, default_value_t = 0)]
    pub days: u32,
    /// The ONNX model of a service request (its SHA-256 is what gets approved).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model's name [default: its file name].
    #[arg(long)]
    pub model_name: Option<String>,
    /// Free-text justification for the board.
    #[arg(long, default_value = "")]
    pub justification: String,
    /// What a service request's jobs may release (comma-separated: counts, auc,
    /// sensitivity, specificity, calibration, dice, hausdorff, per_patient, weights).
    #[arg(long, value_delimiter = ',')]
    pub outputs: Vec<String>,
    /// What a service request's jobs do.
    #[arg(long, value_parser = ["inference", "evaluation", "fine-tuning"])]
    pub action: Option<String>,
    /// Who receives per-patient values and for what purpose (with `--outputs per_patient`).
    #[arg(long)]
    pub recipient: Option<String>,
    /// Project [default: prostatenet].
    #[arg(long)]
    pub project: Option<String>,
    /// The policy change (JSON file: {"add": [rules], "remove": [rules], "settings":
    /// {"project", "quorum", "forbid_same_site"}, "model": "Casbin model text"}; policy
    /// requests).
    #[arg(long)]
    pub change: Option<PathBuf>,
    /// A new Casbin model for the whole platform (policy requests; the text file becomes
    /// the change's "model"). Checked against the project's probes when submitted.
    #[arg(long, value_name = "FILE.conf")]
    pub casbin_model: Option<PathBuf>,
}

impl SubmissionArgs {
    /// The JSON body the gateway takes.
    pub fn body(&self) -> Result<Value> {
        let mut b = json!({
            "kind": self.kind,
            "purpose": self.purpose,
            "days": self.days,
            "justification": self.justification,
        });
        if let Some(p) = &self.project {
            b["project"] = json!(p);
        }
        for o in &self.outputs {
            anyhow::ensure!(
                compute::release::KINDS.contains(&o.as_str()),
                "--outputs: {o:?} is not an output kind; use {}",
                compute::release::KINDS.join(", ")
            );
        }
        if !self.outputs.is_empty() {
            b["outputs"] = json!(self.outputs);
        }
        if let Some(a) = &self.action {
            b["action"] = json!(a);
        }
        if let Some(r) = &self.recipient {
            b["recipient"] = json!(r);
        }
        if let Some(f) = &self.cohort {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the cohort file {}", f.display()))?;
            let c = policy::model::Cohort::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            b["cohort"] = serde_json::to_value(c)?;
        }
        if let Some(f) = &self.change {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the change file {}", f.display()))?;
            let c: Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: not JSON (line {}, column {})",
                    f.display(),
                    e.line(),
                    e.column()
                )
            })?;
            b["change"] = c;
        }
        if let Some(f) = &self.casbin_model {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the model file {}", f.display()))?;
            if !b["change"].is_object() {
                b["change"] = json!({});
            }
            b["change"]["model"] = json!(text);
        }
        if let Some(f) = &self.model {
            let bytes = std::fs::read(f)
                .with_context(|| format!("cannot read the model {}", f.display()))?;
            let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
            let name = self.model_name.clone().unwrap_or_else(|| {
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
            b["model"] = json!({"name": name, "sha256": sha});
        }
        Ok(b)
    }
}

/// `hbs request ...`.
#[derive(Subcommand, Debug)]
pub enum RequestCmd {
    /// Submit a request; prints its ID.
    Submit {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        what: SubmissionArgs,
    },
    /// Replace a request's content (before any review).
    Amend {
        #[command(flatten)]
        client: ClientArgs,
        /// The request.
        id: String,
        #[command(flatten)]
        what: SubmissionArgs,
    },
    /// List requests (researchers: their own).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only those with this status.
        #[arg(long, value_parser = ["submitted", "approved", "rejected", "withdrawn", "expired"])]
        status: Option<String>,
    },
    /// Show one request.
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// The request.
        id: String,
    },
    /// Withdraw a request (before a decision).
    Withdraw {
        #[command(flatten)]
        client: ClientArgs,
        /// The request.
        id: String,
    },
}

/// `hbs review ...` (ethics board).
#[derive(Subcommand, Debug)]
pub enum ReviewCmd {
    /// Requests waiting for your review.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a request.
    Approve {
        #[command(flatten)]
        client: ClientArgs,
        /// The request.
        id: String,
        /// A comment.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject a request.
    Reject {
        #[command(flatten)]
        client: ClientArgs,
        /// The request.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

/// `hbs grants ...`.
#[derive(Subcommand, Debug)]
pub enum GrantsCmd {
    /// List grants (researchers: their own).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a grant at once (ethics board, operators).
    Revoke {
        #[command(flatten)]
        client: ClientArgs,
        /// The grant (its request's ID).
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Ask whether work under a grant is allowed (the decision and its rule).
    Check {
        #[command(flatten)]
        client: ClientArgs,
        /// The grant (its request's ID).
        id: String,
        /// search (data grants) or run (service grants).
        #[arg(long, default_value = "search")]
        action: String,
        /// The purpose you declare.
        #[arg(long, default_value = "")]
        purpose: String,
        /// Narrow to attributes, KEY=VALUE (site, country, vendor, sequence, model).
        attrs: Vec<String>,
    },
}

/// `POST path` with a JSON body.
pub async fn post(c: &ClientArgs, path: &str, body: &Value) -> Result<Answer> {
    let connector = c.connector()?;
    let bytes = serde_json::to_vec(body)?;
    c.send(&connector, |host| {
        Ok(hyper::Request::post(path)
            .header("host", host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))?)
    })
    .await
}

fn body(a: &Answer) -> Result<Value> {
    serde_json::from_slice(&a.body).context("the gateway's answer is not JSON")
}

/// Prints `v` as JSON, or `line` for a person.
fn print(c: &ClientArgs, v: &Value, line: impl FnOnce(&Value) -> String) {
    if c.json {
        println!("{v}");
    } else {
        println!("{}", line(v));
    }
}

fn request_line(r: &Value) -> String {
    format!(
        "{}  {}  {}  revision {}  {} review(s), quorum {}",
        r["id"].as_str().unwrap_or("?"),
        r["submission"]["kind"].as_str().unwrap_or("?"),
        r["status"].as_str().unwrap_or("?"),
        r["revision"],
        r["reviews"].as_array().map(|a| a.len()).unwrap_or(0),
        r["quorum"]
    )
}

fn grant_line(g: &Value) -> String {
    format!(
        "{}  {}  {}  actions {}  purpose {:?}  {}",
        g["id"].as_str().unwrap_or("?"),
        g["subject"].as_str().unwrap_or("?"),
        g["scope"].as_str().unwrap_or("?"),
        g["actions"],
        g["purpose"].as_str().unwrap_or(""),
        if g["in_force"].as_bool() == Some(true) {
            "in force"
        } else {
            "ended"
        }
    )
}

fn list_lines(v: &Value, each: fn(&Value) -> String) -> String {
    match v.as_array() {
        Some(a) if a.is_empty() => "(none)".into(),
        Some(a) => a.iter().map(each).collect::<Vec<_>>().join("\n"),
        None => v.to_string(),
    }
}

/// Runs `hbs request ...`.
pub async fn request(cmd: RequestCmd) -> Result<()> {
    match cmd {
        RequestCmd::Submit { client, what } => {
            let a = post(&client, "/requests", &what.body()?).await?;
            if a.status != 201 {
                return Err(refused(&a));
            }
            let v = body(&a)?;
            // The stable output: the ID alone on stdout.
            print(&client, &v, |v| v["id"].as_str().unwrap_or("?").to_string());
            Ok(())
        }
        RequestCmd::Amend { client, id, what } => {
            let a = post(
                &client,
                &format!("/requests/{}/amend", query_escape(&id)),
                &what.body()?,
            )
            .await?;
            if a.status != 200 {
                return Err(refused(&a));
            }
            print(&client, &body(&a)?, |v| request_line(&v["request"]));
            Ok(())
        }
        RequestCmd::List { client, status } => {
            let path = match status {
                Some(s) => format!("/requests?status={s}"),
                None => "/requests".into(),
            };
            let a = client.get(&path).await?;
            if a.status != 200 {
                return Err(refused(&a));
            }
            print(&client, &body(&a)?, |v| list_lines(v, request_line));
            Ok(())
        }
        RequestCmd::Show { client, id } => {
            let a = client
                .get(&format!("/requests/{}", query_escape(&id)))
                .await?;
            if a.status != 200 {
                return Err(refused(&a));
            }
            print(&client, &body(&a)?, |v| {
                serde_json::to_string_pretty(v).unwrap_or_default()
            });
            Ok(())
        }
        RequestCmd::Withdraw { client, id } => {
            let a = post(
                &client,
                &format!("/requests/{}/withdraw", query_escape(&id)),
                &json!({}),
            )
            .await?;
            if a.status != 200 {
                return Err(refused(&a));
            }
            print(&client, &body(&a)?, |v| request_line(&v["request"]));
            Ok(())
        }
    }
}

/// Runs `hbs review ...`.
pub async fn review(cmd: ReviewCmd) -> Result<()> {
    let (client, id, step, reason) = match cmd {
        ReviewCmd::List { client } => {
            let a = client.get("/reviews").await?;
            if a.status != 200 {
                return Err(refused(&a));
            }
            print(&client, &body(&a)?, |v| list_lines(v, request_line));
            return Ok(());
        }
        ReviewCmd::Approve { client, id, reason } => (client, id, "approve", reason),
        ReviewCmd::Reject { client, id, reason } => (client, id, "reject", reason),
    };
    let a = post(
        &client,
        &format!("/requests/{}/{step}", query_escape(&id)),
        &json!({"reason": reason}),
    )
    .await?;
    if a.status != 200 {
        return Err(refused(&a));
    }
    print(&client, &body(&a)?, |v| {
        format!(
            "{}: {}",
            v["effect"].as_str().unwrap_or("?"),
            request_line(&v["request"])
        )
    });
    Ok(())
}

/// Runs `hbs grants ...`.
pub async fn grants(cmd: GrantsCmd) -> Result<()> {
    match cmd {
        GrantsCmd::List { client } => {
            let a = client.get("/grants").await?;
            if a.status != 200 {
                return Err(refused(&a));
            }
            print(&client, &body(&a)?, |v| list_lines(v, grant_line));
            Ok(())
        }
        GrantsCmd::Revoke { client, id, reason } => {
            let a = post(
                &client,
                &format!("/grants/{}/revoke", query_escape(&id)),
                &json!({"reason": reason}),
            )
            .await?;
            if a.status != 200 {
                return Err(refused(&a));
            }
            print(&client, &body(&a)?, grant_line);
            Ok(())
        }
        GrantsCmd::Check {
            client,
            id,
            action,
            purpose,
            attrs,
        } => {
            let mut params = vec![format!("action={}", query_escape(&action))];
            for kv in &attrs {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("an attribute is KEY=VALUE (for example site=SITE_A)");
                };
                params.push(format!("{}={}", query_escape(k), query_escape(v)));
            }
            let path = format!(
                "/grants/{}/decision?{}",
                query_escape(&id),
                params.join("&")
            );
            let connector = client.connector()?;
            let a = client
                .send(&connector, |host| {
                    Ok(hyper::Request::get(path.as_str())
                        .header("host", host)
                        .header(crate::governance::PURPOSE_HEADER, purpose.as_str())
                        .body(Full::new(Bytes::new()))?)
                })
                .await?;
            let v = match a.status {
                200 | 403 => body(&a)?,
                _ => return Err(refused(&a)),
            };
            print(&client, &v, |v| {
                format!(
                    "{}: {}",
                    if v["allow"].as_bool() == Some(true) {
                        "allowed"
                    } else {
                        "denied"
                    },
                    v["rule"].as_str().unwrap_or("?")
                )
            });
            if a.status == 403 {
                bail!("denied");
            }
            Ok(())
        }
    }
}
