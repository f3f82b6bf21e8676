//! The policy's storage over sqlx (SQLite or PostgreSQL, one schema): Casbin rules, the
//! policy version, projects' review settings, requests, reviews and grants.
//!
//! Every change is one transaction that holds the database's write lock (`BEGIN
//! IMMEDIATE` on SQLite; the request's row lock on PostgreSQL), so two board members
//! approving at once are counted once each, in turn. A change to the rules bumps
//! `policy_version`, names the subjects it touched in `policy_changes` and (PostgreSQL)
//! announces itself with `pg_notify`: a gateway replica that hears of it reloads only
//! those subjects (see [`crate::decide`]).
//! The caller's own work (the gateway's audit event) runs inside the same transaction
//! through an [`InTx`] hook: the change and its record commit together or not at all.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

use crate::model::{time_key, Cohort, Rule};
use crate::workflow::{self, Effect, Facts, Kind, Person, PolicyChange, Review, Status, Step};
use crate::PolicyError;

/// The database kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite (embedded default).
    Sqlite,
    /// PostgreSQL (scale-out).
    Postgres,
}

/// A lock shared by the writers of one SQLite database in this process (the same type as
/// the vault's and the audit log's).
pub type WriteLock = Arc<tokio::sync::Mutex<()>>;

/// The caller's work inside a change's transaction, given what changed.
pub type InTx = Box<
    dyn for<'c> FnOnce(&'c mut AnyConnection, &Change) -> BoxFuture<'c, Result<(), String>> + Send,
>;

/// What a change did, for the caller's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The request (and grant) concerned.
    pub request: String,
    /// `submit`, `amend`, `withdraw`, `approve`, `reject`, `revoke`.
    pub step: String,
    /// What it did, in words (`approval 1 of 2 counted`, `approved: grant in force`).
    pub outcome: String,
    /// The request's status after it.
    pub status: String,
    /// Rules added (grants, approved policy changes), as Casbin lines.
    pub added: Vec<String>,
    /// Rules removed, as Casbin lines.
    pub removed: Vec<String>,
}

/// Default quorum of a project with no settings.
pub const DEFAULT_QUORUM: u32 = 2;
/// The project a request belongs to when it names none.
pub const DEFAULT_PROJECT: &str = "prostatenet";

/// A model named by a service request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// A name for people.
    pub name: String,
    /// SHA-256 of the ONNX file, lower-case hex.
    pub sha256: String,
}

/// What a researcher (or, for policy changes, a board member or operator) submits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    /// data, service or policy.
    pub kind: Kind,
    /// The project (default `prostatenet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The cohort (data and service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<Cohort>,
    /// The purpose, which callers declare on every call under the grant.
    #[serde(default)]
    pub purpose: String,
    /// Requested duration in days.
    #[serde(default)]
    pub days: u32,
    /// The model (service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    /// Free-text justification for the board.
    #[serde(default)]
    pub justification: String,
    /// The change (policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<PolicyChange>,
    /// The outputs a service request's jobs may release (kinds the compute enclave
    /// knows: `counts`, `auc`, `sensitivity`, ...); nothing else leaves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// What a service request's jobs do: `inference`, `evaluation` (the default) or
    /// `fine-tuning`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Who receives per-patient values, and for what (service requests that list
    /// `per_patient`; without it none leave).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
}

fn printable(field: &str, s: &str, max: usize, required: bool) -> Result<(), String> {
    if required && s.trim().is_empty() {
        return Err(format!("{field} is required"));
    }
    if s.len() > max {
        return Err(format!("{field} is longer than {max} characters"));
    }
    if s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

impl Submission {
    /// Checks the submission; the error names the field at fault.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.project {
            if p.is_empty()
                || p.len() > 64
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(
                    "project must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-' or '.'".into(),
                );
            }
        }
        printable("justification", &self.justification, 4000, false)?;
        match self.kind {
            Kind::Policy => {
                if self.cohort.is_some() || self.model.is_some() {
                    return Err("a policy request carries a change, not a cohort or a model".into());
                }
                self.change
                    .as_ref()
                    .ok_or("a policy request needs a change")?
                    .check()?;
            }
            Kind::Data | Kind::Service => {
                if self.change.is_some() {
                    return Err("only a policy request carries a change".into());
                }
                self.cohort
                    .as_ref()
                    .ok_or("a cohort is required")?
                    .check()?;
                // The purpose travels in an HTTP header on every call: visible ASCII.
                if self.purpose.trim().is_empty()
                    || self.purpose.len() > 200
                    || !self
                        .purpose
                        .chars()
                        .all(|c| c.is_ascii_graphic() || c == ' ')
                {
                    return Err("purpose must be 1 to 200 printable ASCII characters".into());
                }
                if !(1..=3650).contains(&self.days) {
                    return Err("days must be between 1 and 3650".into());
                }
                if self.kind != Kind::Service && (!self.outputs.is_empty() || self.action.is_some())
                {
                    return Err("only a service request lists outputs and an action".into());
                }
                if let Some(r) = &self.recipient {
                    if self.kind != Kind::Service {
                        return Err("only a service request names a recipient".into());
                    }
                    printable("recipient", r, 200, true)?;
                }
                if let Some(a) = &self.action {
                    if !matches!(a.as_str(), "inference" | "evaluation" | "fine-tuning") {
                        return Err("action must be inference, evaluation or fine-tuning".into());
                    }
                }
                if self.outputs.len() > 16
                    || self.outputs.iter().any(|o| {
                        o.is_empty()
                            || o.len() > 32
                            || !o.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                {
                    return Err("outputs must be up to 16 names of a-z and '_'".into());
                }
                match (self.kind, &self.model) {
                    (Kind::Service, None) => {
                        return Err("a service request names its model (name and SHA-256)".into())
                    }
                    (Kind::Data, Some(_)) => {
                        return Err("a data request names no model; use a service request".into())
                    }
                    (_, Some(m)) => {
                        printable("model name", &m.name, 200, true)?;
                        if m.sha256.len() != 64
                            || !m
                                .sha256
                                .chars()
                                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                        {
                            return Err("model sha256 must be 64 lower-case hex digits".into());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn project(&self) -> &str {
        self.project.as_deref().unwrap_or(DEFAULT_PROJECT)
    }

    /// The scope of its grant: the cohort, and for a service request its model.
    pub fn scope(&self) -> String {
        let scope = self.cohort.clone().unwrap_or_default().scope();
        match &self.model {
            Some(m) if scope == "cohort:" => format!("cohort:model={}", m.sha256),
            Some(m) => format!("{scope};model={}", m.sha256),
            None => scope,
        }
    }
}

/// A grant as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// The request it comes from (also the grant's ID and domain `grant:ID`).
    pub id: String,
    /// Its holder.
    pub subject: String,
    /// The cohort scope.
    pub scope: String,
    /// The actions allowed.
    pub actions: Vec<String>,
    /// The purpose calls must declare.
    pub purpose: String,
    /// Start and end, in ms since 1970.
    pub starts_ms: u64,
    /// End (exclusive).
    pub ends_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Why.
    pub revoke_reason: Option<String>,
    /// Whether it allows anything now.
    pub in_force: bool,
}

/// A request as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    /// Its ID.
    pub id: String,
    /// submitted, approved, rejected, withdrawn or expired (at the time of reading).
    pub status: Status,
    /// The requester's subject.
    pub requester: String,
    /// The requester's site, if any.
    pub requester_site: Option<String>,
    /// What was submitted (latest revision).
    pub submission: Submission,
    /// 1, then one more per amendment.
    pub revision: u64,
    /// Times in ms since 1970.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// Reviews so far.
    pub reviews: Vec<Review>,
    /// The project's quorum.
    pub quorum: u32,
    /// Its grant, once approved (data and service).
    pub grant: Option<GrantView>,
}

fn db(e: sqlx::Error) -> PolicyError {
    PolicyError::Database(e.to_string())
}

/// Runs `f` in a write transaction (the process's write lock, then `BEGIN IMMEDIATE` on
/// SQLite or `BEGIN` on PostgreSQL); commits when it succeeds, rolls back when it fails.
async fn with_write_tx<T, E>(
    pool: &AnyPool,
    engine: Engine,
    lock: Option<&WriteLock>,
    f: impl for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>>,
) -> Result<T, E>
where
    E: From<sqlx::Error>,
{
    let _held = match lock {
        Some(l) => Some(l.lock().await),
        None => None,
    };
    let mut conn = pool.acquire().await?;
    conn.execute(if engine == Engine::Sqlite {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    })
    .await?;
    match f(&mut conn).await {
        Ok(v) => {
            if let Err(e) = conn.execute("COMMIT").await {
                let _ = conn.execute("ROLLBACK").await;
                return Err(e.into());
            }
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Runs `sql` (with `$1` the rule type and `$2`..`$7` its six values) on one rule;
/// whether a row changed.
async fn one_rule(
    conn: &mut AnyConnection,
    sql: &str,
    ptype: &str,
    v: &[String; 6],
) -> Result<bool, sqlx::Error> {
    let mut q = sqlx::query(sql).bind(ptype.to_string());
    for x in v {
        q = q.bind(x.clone());
    }
    Ok(q.execute(&mut *conn).await?.rows_affected() > 0)
}

/// Inserts one rule unless present; whether it was new.
pub async fn insert_rule(
    conn: &mut AnyConnection,
    ptype: &str,
    v: &[String; 6],
) -> Result<bool, sqlx::Error> {
    one_rule(
        conn,
        "INSERT INTO policy_rules (ptype, v0, v1, v2, v3, v4, v5) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT DO NOTHING",
        ptype,
        v,
    )
    .await
}

/// Deletes one rule; whether it was there.
pub async fn delete_rule(
    conn: &mut AnyConnection,
    ptype: &str,
    v: &[String; 6],
) -> Result<bool, sqlx::Error> {
    one_rule(
        conn,
        "DELETE FROM policy_rules WHERE ptype = $1 AND v0 = $2 AND v1 = $3 AND v2 = $4 AND v3 = $5 AND v4 = $6 AND v5 = $7",
        ptype,
        v,
    )
    .await
}

/// Deletes every rule; the subjects that had some.
pub async fn delete_all(conn: &mut AnyConnection) -> Result<Vec<String>, sqlx::Error> {
    let subjects = sqlx::query("SELECT DISTINCT v0 FROM policy_rules")
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    sqlx::query("DELETE FROM policy_rules")
        .execute(&mut *conn)
        .await?;
    Ok(subjects)
}

/// The PostgreSQL channel on which a change to the rules is announced (at commit).
pub const CHANNEL: &str = "hbs_policy";

/// Bumps the policy version and records the subjects whose rules changed (`*`: all). On
/// PostgreSQL it also announces the new version on [`CHANNEL`]; the notification is
/// delivered to every listening replica when the transaction commits, and never if it
/// rolls back.
pub async fn bump(conn: &mut AnyConnection, subjects: &[String]) -> Result<i64, sqlx::Error> {
    sqlx::query("UPDATE policy_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    let v: i64 = sqlx::query("SELECT version FROM policy_version WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    let mut seen = std::collections::BTreeSet::new();
    for s in subjects {
        if seen.insert(s) {
            sqlx::query("INSERT INTO policy_changes (version, subject) VALUES ($1, $2)")
                .bind(v)
                .bind(s.clone())
                .execute(&mut *conn)
                .await?;
        }
    }
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(v.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(v)
}

/// Counters of the policy writes committed by this process, one per database: every
/// store opened on the same database shares one, so a decider sees this process's own
/// changes without asking the database.
fn local_epoch(url: &str) -> Arc<AtomicU64> {
    static EPOCHS: OnceLock<Mutex<HashMap<String, Arc<AtomicU64>>>> = OnceLock::new();
    let mut m = EPOCHS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    m.entry(url.to_string()).or_default().clone()
}

/// The store.
#[derive(Clone)]
pub struct PolicyStore {
    pool: AnyPool,
    engine: Engine,
    lock: Option<WriteLock>,
    url: Arc<str>,
    epoch: Arc<AtomicU64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn new_id() -> Result<String, PolicyError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| PolicyError::Database("no randomness for a request ID".into()))?;
    Ok(format!("req-{}", hex::encode(b)))
}

/// A stored request row, before its reviews and grant are joined.
struct Stored {
    id: String,
    requester: String,
    requester_site: Option<String>,
    submission: Submission,
    status: Status,
    revision: u64,
    created_ms: u64,
    updated_ms: u64,
}

impl PolicyStore {
    /// Opens (and creates) the policy tables in the database at `url`. `lock` is the
    /// process's SQLite write lock shared with the other writers.
    pub async fn open(url: &str, lock: Option<WriteLock>) -> Result<Self, PolicyError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            Engine::Postgres
        };
        let opts = AnyConnectOptions::from_str(url).map_err(db)?;
        let mut pool_opts = AnyPoolOptions::new().max_connections(4);
        if engine == Engine::Sqlite {
            // An in-process SQLite connection cannot go stale: no ping before each use.
            pool_opts = pool_opts
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        Ok(())
                    })
                });
        }
        let pool = pool_opts.connect_with(opts).await.map_err(db)?;
        migrate(&pool, engine).await.map_err(db)?;
        Ok(PolicyStore {
            pool,
            engine,
            lock,
            url: url.into(),
            epoch: local_epoch(url),
        })
    }

    /// Runs `f` in a write transaction (see [`with_write_tx`]), then counts a write by
    /// this process (whether it committed or not: a spare refresh costs little).
    pub async fn write_tx<T, E>(
        &self,
        f: impl for<'c> FnOnce(&'c mut AnyConnection) -> BoxFuture<'c, Result<T, E>>,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        let r = with_write_tx(&self.pool, self.engine, self.lock.as_ref(), f).await;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// The count of policy writes by this process on this database.
    pub fn local_writes(&self) -> &Arc<AtomicU64> {
        &self.epoch
    }

    /// The database URL (for a replica's listener; never logged: it may hold a password).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The pool (for the adapter).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The database kind.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The process's write lock, if any.
    pub fn lock(&self) -> Option<WriteLock> {
        self.lock.clone()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the policy tables answer.
    pub async fn ready(&self) -> bool {
        sqlx::query("SELECT version FROM policy_version WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .is_ok()
    }

    /// Adds the default rules of the `keys` not seeded before (a new deployment, or a
    /// release adding a route): each key is seeded once, so a rule later removed by an
    /// approved policy change does not come back. Returns the rules added.
    pub async fn seed(&self, defaults: &[(String, Vec<Rule>)]) -> Result<Vec<Rule>, PolicyError> {
        let defaults = defaults.to_vec();
        self.write_tx(|conn| {
            Box::pin(async move {
                let mut added = Vec::new();
                for (key, rules) in &defaults {
                    let fresh = sqlx::query(
                        "INSERT INTO policy_seeded (key) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .bind(key.clone())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                        > 0;
                    if fresh {
                        for r in rules {
                            if insert_rule(conn, "p", &r.fields()).await? {
                                added.push(r.clone());
                            }
                        }
                    }
                }
                if !added.is_empty() {
                    let subjects: Vec<String> = added.iter().map(|r| r.sub.clone()).collect();
                    bump(conn, &subjects).await?;
                }
                Ok::<_, sqlx::Error>(added)
            })
        })
        .await
        .map_err(db)
    }

    /// The model in force: the one approved last, or the project's own
    /// ([`crate::model::MODEL`]) until a policy request replaces it.
    pub async fn model(&self) -> Result<String, PolicyError> {
        let row = sqlx::query("SELECT model FROM policy_model WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row
            .map(|r| r.get(0))
            .unwrap_or_else(|| crate::model::MODEL.to_string()))
    }

    /// The policy version now.
    pub async fn version(&self) -> Result<i64, PolicyError> {
        Ok(
            sqlx::query("SELECT version FROM policy_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(db)?
                .get(0),
        )
    }

    /// The version now and the subjects changed after `since`.
    pub async fn changes_since(&self, since: i64) -> Result<(i64, Vec<String>), PolicyError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let v: i64 = sqlx::query("SELECT version FROM policy_version WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?
            .get(0);
        if v == since {
            return Ok((v, Vec::new()));
        }
        let subjects = sqlx::query(
            "SELECT DISTINCT subject FROM policy_changes WHERE version > $1 AND version <= $2",
        )
        .bind(since)
        .bind(v)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
        Ok((v, subjects))
    }

    /// Every `p` rule.
    pub async fn all_rules(&self) -> Result<Vec<Rule>, PolicyError> {
        let rows = sqlx::query(&format!(
            "SELECT {RULE_COLUMNS} FROM policy_rules WHERE ptype = 'p' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.iter().filter_map(rule_from).collect())
    }

    /// A project's review settings (defaults when none are stored).
    pub async fn settings(&self, project: &str) -> Result<workflow::ProjectSettings, PolicyError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        settings(&mut conn, project).await.map_err(db)
    }

    /// Records a submission by `who`; returns the new request.
    pub async fn submit(
        &self,
        who: &Person,
        submission: Submission,
        hook: Option<InTx>,
    ) -> Result<RequestView, PolicyError> {
        checked(&submission).await?;
        let id = new_id()?;
        let now = now_ms();
        let body =
            serde_json::to_string(&submission).map_err(|e| PolicyError::BadInput(e.to_string()))?;
        let (who2, id2, sub2) = (who.clone(), id.clone(), submission.clone());
        self.write_tx(move |conn| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO access_requests (id, kind, requester, requester_site, project, body, status, revision, created_ms, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6, 'submitted', 1, $7, $7)",
                )
                .bind(id2.clone())
                .bind(sub2.kind.as_str().to_string())
                .bind(who2.subject.clone())
                .bind(who2.site.clone())
                .bind(sub2.project().to_string())
                .bind(body)
                .bind(now as i64)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
                run_hook(conn, hook, Change {
                    request: id2,
                    step: "submit".into(),
                    outcome: format!("submitted ({} request)", sub2.kind.as_str()),
                    status: "submitted".into(),
                    added: vec![],
                    removed: vec![],
                })
                .await
            })
        })
        .await?;
        self.get(&id).await?.ok_or(PolicyError::NotFound(id))
    }

    /// Applies `step` by `who` to request `id`: amend (with `amended`), withdraw,
    /// approve or reject (with `reason`). Refused steps change nothing and say why.
    pub async fn act(
        &self,
        id: &str,
        step: Step,
        who: &Person,
        amended: Option<Submission>,
        reason: &str,
        hook: Option<InTx>,
    ) -> Result<(Effect, RequestView), PolicyError> {
        printable("reason", reason, 2000, step == Step::Reject).map_err(PolicyError::BadInput)?;
        if step == Step::Amend {
            let a = amended.as_ref().ok_or_else(|| {
                PolicyError::BadInput("an amendment needs the new content".into())
            })?;
            checked(a).await?;
        }
        let now = now_ms();
        let (id2, who2, reason2, engine) =
            (id.to_string(), who.clone(), reason.to_string(), self.engine);
        let effect = self.write_tx(move |conn| {
            Box::pin(async move {
                let stored = load(conn, &id2, engine == Engine::Postgres)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| PolicyError::NotFound(id2.clone()))?;
                let reviews = reviews(conn, &id2).await.map_err(db)?;
                let project = stored.submission.project().to_string();
                let s = settings(conn, &project).await.map_err(db)?;
                let grant = grant(conn, &id2, now).await.map_err(db)?;
                let status = workflow::status_at(
                    stored.status,
                    grant.as_ref().map(|g| g.ends_ms),
                    grant.as_ref().is_some_and(|g| g.revoked_ms.is_some()),
                    now,
                );
                let facts = Facts {
                    status,
                    requester: &stored.requester,
                    requester_site: stored.requester_site.as_deref(),
                    reviews: &reviews,
                    quorum: s.quorum,
                    forbid_same_site: s.forbid_same_site,
                };
                let effect = workflow::step(&facts, step, &who2).map_err(PolicyError::Refused)?;
                let mut change = Change {
                    request: id2.clone(),
                    step: step.as_str().into(),
                    outcome: String::new(),
                    status: status.as_str().into(),
                    added: vec![],
                    removed: vec![],
                };
                if matches!(step, Step::Approve | Step::Reject) {
                    sqlx::query(
                        "INSERT INTO access_reviews (request_id, reviewer, reviewer_site, verdict, reason, time_ms)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(id2.clone())
                    .bind(who2.subject.clone())
                    .bind(who2.site.clone())
                    .bind(step.as_str().to_string())
                    .bind(reason2.clone())
                    .bind(now as i64)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| {
                        // The primary key (request, reviewer): a racing second review by
                        // the same member.
                        if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
                            PolicyError::Refused("this board member has already reviewed this request".into())
                        } else {
                            db(e)
                        }
                    })?;
                }
                let new_status = match &effect {
                    Effect::Amended => {
                        let body = serde_json::to_string(&amended).map_err(|e| PolicyError::BadInput(e.to_string()))?;
                        sqlx::query("UPDATE access_requests SET body = $1, revision = revision + 1, updated_ms = $2 WHERE id = $3")
                            .bind(body)
                            .bind(now as i64)
                            .bind(id2.clone())
                            .execute(&mut *conn)
                            .await
                            .map_err(db)?;
                        change.outcome = format!("amended to revision {}", stored.revision + 1);
                        None
                    }
                    Effect::Counted { have, need } => {
                        change.outcome = format!("approval {have} of {need} counted");
                        None
                    }
                    Effect::Withdrawn => {
                        change.outcome = "withdrawn".into();
                        Some(Status::Withdrawn)
                    }
                    Effect::Rejected => {
                        change.outcome = "rejected".into();
                        Some(Status::Rejected)
                    }
                    Effect::Approved => {
                        let sub = &stored.submission;
                        match sub.kind {
                            Kind::Policy => {
                                let c = sub.change.clone().unwrap_or_default();
                                let mut touched = Vec::new();
                                for r in &c.add {
                                    if insert_rule(conn, "p", &r.fields()).await.map_err(db)? {
                                        change.added.push(r.line());
                                        touched.push(r.sub.clone());
                                    }
                                }
                                for r in &c.remove {
                                    if delete_rule(conn, "p", &r.fields()).await.map_err(db)? {
                                        change.removed.push(r.line());
                                        touched.push(r.sub.clone());
                                    }
                                }
                                if let Some(s) = &c.settings {
                                    put_settings(conn, s).await.map_err(db)?;
                                }
                                if let Some(m) = &c.model {
                                    // Checked again: the release applying it may differ
                                    // from the one that took the request.
                                    crate::decide::check_model(m).await.map_err(|e| {
                                        PolicyError::Refused(format!("the proposed model is no longer accepted: {e}"))
                                    })?;
                                    put_model(conn, m).await.map_err(db)?;
                                    touched.push("*".into());
                                    change.added.push("model replaced".into());
                                }
                                if !touched.is_empty() {
                                    bump(conn, &touched).await.map_err(db)?;
                                }
                                change.outcome = "approved: policy change applied".into();
                            }
                            Kind::Data | Kind::Service => {
                                let ends = now + u64::from(sub.days) * 86_400_000;
                                let scope = sub.scope();
                                let actions = sub.kind.actions();
                                sqlx::query(
                                    "INSERT INTO access_grants (request_id, subject, scope, actions, purpose, starts_ms, ends_ms)
                                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                                )
                                .bind(id2.clone())
                                .bind(stored.requester.clone())
                                .bind(scope.clone())
                                .bind(actions.join(","))
                                .bind(sub.purpose.clone())
                                .bind(now as i64)
                                .bind(ends as i64)
                                .execute(&mut *conn)
                                .await
                                .map_err(db)?;
                                for act in actions {
                                    let r = Rule {
                                        sub: stored.requester.clone(),
                                        dom: format!("grant:{id2}"),
                                        obj: scope.clone(),
                                        act: act.to_string(),
                                        purpose: sub.purpose.clone(),
                                        until: time_key(ends),
                                    };
                                    insert_rule(conn, "p", &r.fields()).await.map_err(db)?;
                                    change.added.push(r.line());
                                }
                                bump(conn, std::slice::from_ref(&stored.requester)).await.map_err(db)?;
                                change.outcome = format!("approved: grant in force until {ends} ms since 1970");
                            }
                        }
                        Some(Status::Approved)
                    }
                };
                if let Some(st) = new_status {
                    sqlx::query("UPDATE access_requests SET status = $1, updated_ms = $2 WHERE id = $3")
                        .bind(st.as_str().to_string())
                        .bind(now as i64)
                        .bind(id2.clone())
                        .execute(&mut *conn)
                        .await
                        .map_err(db)?;
                    change.status = st.as_str().into();
                }
                run_hook(conn, hook, change).await?;
                Ok::<_, PolicyError>(effect)
            })
        })
        .await?;
        let view = self
            .get(id)
            .await?
            .ok_or_else(|| PolicyError::NotFound(id.to_string()))?;
        Ok((effect, view))
    }

    /// Revokes the grant of request `id` at once: its rules are deleted and every
    /// replica sees the new version before its next decision.
    pub async fn revoke(
        &self,
        id: &str,
        who: &Person,
        reason: &str,
        hook: Option<InTx>,
    ) -> Result<GrantView, PolicyError> {
        printable("reason", reason, 2000, true).map_err(PolicyError::BadInput)?;
        let now = now_ms();
        let (id2, who2, reason2) = (id.to_string(), who.clone(), reason.to_string());
        self.write_tx(move |conn| {
            Box::pin(async move {
                let g = grant(conn, &id2, now)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| PolicyError::NotFound(format!("grant {id2}")))?;
                if g.revoked_ms.is_some() {
                    return Err(PolicyError::Refused("this grant is already revoked".into()));
                }
                if !g.in_force {
                    return Err(PolicyError::Refused("this grant has already ended".into()));
                }
                sqlx::query("UPDATE access_grants SET revoked_ms = $1, revoked_by = $2, revoke_reason = $3 WHERE request_id = $4")
                    .bind(now as i64)
                    .bind(who2.subject.clone())
                    .bind(reason2)
                    .bind(id2.clone())
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                let removed: Vec<String> = sqlx::query(&format!(
                    "SELECT {RULE_COLUMNS} FROM policy_rules WHERE ptype = 'p' AND v0 = $1 AND v1 = $2"
                ))
                .bind(g.subject.clone())
                .bind(format!("grant:{id2}"))
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?
                .iter()
                .filter_map(rule_from)
                .map(|r| r.line())
                .collect();
                sqlx::query("DELETE FROM policy_rules WHERE ptype = 'p' AND v0 = $1 AND v1 = $2")
                    .bind(g.subject.clone())
                    .bind(format!("grant:{id2}"))
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
                bump(conn, std::slice::from_ref(&g.subject)).await.map_err(db)?;
                run_hook(conn, hook, Change {
                    request: id2,
                    step: "revoke".into(),
                    outcome: "grant revoked".into(),
                    status: "expired".into(),
                    added: vec![],
                    removed,
                })
                .await
            })
        })
        .await?;
        let mut conn = self.pool.acquire().await.map_err(db)?;
        grant(&mut conn, id, now_ms())
            .await
            .map_err(db)?
            .ok_or_else(|| PolicyError::NotFound(format!("grant {id}")))
    }

    /// One request, as it stands now.
    pub async fn get(&self, id: &str) -> Result<Option<RequestView>, PolicyError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let Some(stored) = load(&mut conn, id, false).await.map_err(db)? else {
            return Ok(None);
        };
        view(&mut conn, stored).await.map(Some)
    }

    /// Requests: all, or those of `requester`; with `status`, only those in it now.
    pub async fn list(
        &self,
        requester: Option<&str>,
        status: Option<Status>,
    ) -> Result<Vec<RequestView>, PolicyError> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let rows = match requester {
            Some(r) => sqlx::query(&format!("SELECT {REQUEST_COLUMNS} FROM access_requests WHERE requester = $1 ORDER BY created_ms, id"))
                .bind(r.to_string())
                .fetch_all(&mut *conn)
                .await,
            None => sqlx::query(&format!("SELECT {REQUEST_COLUMNS} FROM access_requests ORDER BY created_ms, id"))
                .fetch_all(&mut *conn)
                .await,
        }
        .map_err(db)?;
        let mut out = Vec::new();
        for r in rows {
            let v = view(&mut conn, stored_from(&r)?).await?;
            if status.is_none_or(|s| s == v.status) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Grants: all, or those held by `subject`.
    pub async fn grants(&self, subject: Option<&str>) -> Result<Vec<GrantView>, PolicyError> {
        let now = now_ms();
        let rows = match subject {
            Some(s) => sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM access_grants WHERE subject = $1 ORDER BY starts_ms, request_id"))
                .bind(s.to_string())
                .fetch_all(&self.pool)
                .await,
            None => sqlx::query(&format!("SELECT {GRANT_COLUMNS} FROM access_grants ORDER BY starts_ms, request_id"))
                .fetch_all(&self.pool)
                .await,
        }
        .map_err(db)?;
        Ok(rows.iter().map(|r| grant_from(r, now)).collect())
    }
}

async fn run_hook(
    conn: &mut AnyConnection,
    hook: Option<InTx>,
    change: Change,
) -> Result<(), PolicyError> {
    match hook {
        Some(h) => h(conn, &change).await.map_err(PolicyError::Audit),
        None => Ok(()),
    }
}

const RULE_COLUMNS: &str = "v0, v1, v2, v3, v4, v5";

/// A `p` rule from a row of [`RULE_COLUMNS`].
fn rule_from(r: &sqlx::any::AnyRow) -> Option<Rule> {
    let v: Vec<String> = (0..6).map(|i| r.get::<String, _>(i)).collect();
    Rule::from_values(&v)
}

const REQUEST_COLUMNS: &str =
    "id, requester, requester_site, body, status, revision, created_ms, updated_ms";
const GRANT_COLUMNS: &str =
    "request_id, subject, scope, actions, purpose, starts_ms, ends_ms, revoked_ms, revoked_by, revoke_reason";

fn stored_from(r: &sqlx::any::AnyRow) -> Result<Stored, PolicyError> {
    let body: String = r.get(3);
    let status: String = r.get(4);
    Ok(Stored {
        id: r.get(0),
        requester: r.get(1),
        requester_site: r.get(2),
        submission: serde_json::from_str(&body)
            .map_err(|_| PolicyError::Database("a stored request cannot be read back".into()))?,
        status: Status::parse(&status).ok_or_else(|| {
            PolicyError::Database("a stored request has an unknown status".into())
        })?,
        revision: r.get::<i64, _>(5) as u64,
        created_ms: r.get::<i64, _>(6) as u64,
        updated_ms: r.get::<i64, _>(7) as u64,
    })
}

async fn load(
    conn: &mut AnyConnection,
    id: &str,
    for_update: bool,
) -> Result<Option<Stored>, sqlx::Error> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE id = $1{}",
        if for_update { " FOR UPDATE" } else { "" }
    );
    let row = sqlx::query(&sql)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => stored_from(&r)
            .map(Some)
            .map_err(|e| sqlx::Error::Protocol(e.to_string())),
        None => Ok(None),
    }
}

async fn reviews(conn: &mut AnyConnection, id: &str) -> Result<Vec<Review>, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT reviewer, reviewer_site, verdict, reason, time_ms FROM access_reviews WHERE request_id = $1 ORDER BY time_ms, reviewer",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| Review {
        reviewer: r.get(0),
        reviewer_site: r.get(1),
        verdict: r.get(2),
        reason: r.get(3),
        time_ms: r.get::<i64, _>(4) as u64,
    })
    .collect())
}

fn grant_from(r: &sqlx::any::AnyRow, now: u64) -> GrantView {
    let actions: String = r.get(3);
    let ends = r.get::<i64, _>(6) as u64;
    let revoked_ms = r.get::<Option<i64>, _>(7).map(|v| v as u64);
    GrantView {
        id: r.get(0),
        subject: r.get(1),
        scope: r.get(2),
        actions: actions
            .split(',')
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect(),
        purpose: r.get(4),
        starts_ms: r.get::<i64, _>(5) as u64,
        ends_ms: ends,
        revoked_ms,
        revoked_by: r.get(8),
        revoke_reason: r.get(9),
        in_force: revoked_ms.is_none() && now < ends,
    }
}

async fn grant(
    conn: &mut AnyConnection,
    id: &str,
    now: u64,
) -> Result<Option<GrantView>, sqlx::Error> {
    Ok(sqlx::query(&format!(
        "SELECT {GRANT_COLUMNS} FROM access_grants WHERE request_id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| grant_from(&r, now)))
}

async fn settings(
    conn: &mut AnyConnection,
    project: &str,
) -> Result<workflow::ProjectSettings, sqlx::Error> {
    let row =
        sqlx::query("SELECT quorum, forbid_same_site FROM policy_settings WHERE project = $1")
            .bind(project.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match row {
        Some(r) => workflow::ProjectSettings {
            project: project.to_string(),
            quorum: r.get::<i64, _>(0) as u32,
            forbid_same_site: r.get::<i64, _>(1) != 0,
        },
        None => workflow::ProjectSettings {
            project: project.to_string(),
            quorum: DEFAULT_QUORUM,
            forbid_same_site: false,
        },
    })
}

/// [`Submission::check`], then a proposed model against the project's probes.
async fn checked(s: &Submission) -> Result<(), PolicyError> {
    s.check().map_err(PolicyError::BadInput)?;
    if let Some(m) = s.change.as_ref().and_then(|c| c.model.as_deref()) {
        crate::decide::check_model(m)
            .await
            .map_err(|e| PolicyError::BadInput(format!("change.model: {e}")))?;
    }
    Ok(())
}

async fn put_model(conn: &mut AnyConnection, text: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO policy_model (id, model) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET model = excluded.model",
    )
    .bind(text.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn put_settings(
    conn: &mut AnyConnection,
    s: &workflow::ProjectSettings,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO policy_settings (project, quorum, forbid_same_site) VALUES ($1, $2, $3)
         ON CONFLICT (project) DO UPDATE SET quorum = excluded.quorum, forbid_same_site = excluded.forbid_same_site",
    )
    .bind(s.project.clone())
    .bind(i64::from(s.quorum))
    .bind(i64::from(s.forbid_same_site))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn view(conn: &mut AnyConnection, s: Stored) -> Result<RequestView, PolicyError> {
    let now = now_ms();
    let reviews = reviews(conn, &s.id).await.map_err(db)?;
    let settings = settings(conn, s.submission.project()).await.map_err(db)?;
    let grant = grant(conn, &s.id, now).await.map_err(db)?;
    let status = workflow::status_at(
        s.status,
        grant.as_ref().map(|g| g.ends_ms),
        grant.as_ref().is_some_and(|g| g.revoked_ms.is_some()),
        now,
    );
    Ok(RequestView {
        id: s.id,
        status,
        requester: s.requester,
        requester_site: s.requester_site,
        submission: s.submission,
        revision: s.revision,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        reviews,
        quorum: settings.quorum,
        grant,
    })
}

async fn migrate(pool: &AnyPool, engine: Engine) -> Result<(), sqlx::Error> {
    let serial = match engine {
        Engine::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Engine::Postgres => "BIGSERIAL PRIMARY KEY",
    };
    let stmts = [
        format!(
            "CREATE TABLE IF NOT EXISTS policy_rules (id {serial}, ptype TEXT NOT NULL,
             v0 TEXT NOT NULL DEFAULT '', v1 TEXT NOT NULL DEFAULT '', v2 TEXT NOT NULL DEFAULT '',
             v3 TEXT NOT NULL DEFAULT '', v4 TEXT NOT NULL DEFAULT '', v5 TEXT NOT NULL DEFAULT '')"
        ),
        "CREATE UNIQUE INDEX IF NOT EXISTS policy_rules_unique ON policy_rules (ptype, v0, v1, v2, v3, v4, v5)".into(),
        "CREATE INDEX IF NOT EXISTS policy_rules_by_subject ON policy_rules (v0, v1)".into(),
        "CREATE INDEX IF NOT EXISTS policy_rules_by_type ON policy_rules (ptype, v0)".into(),
        "CREATE TABLE IF NOT EXISTS policy_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)".into(),
        "INSERT INTO policy_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING".into(),
        "CREATE TABLE IF NOT EXISTS policy_changes (version BIGINT NOT NULL, subject TEXT NOT NULL)".into(),
        "CREATE INDEX IF NOT EXISTS policy_changes_by_version ON policy_changes (version)".into(),
        "CREATE TABLE IF NOT EXISTS policy_seeded (key TEXT PRIMARY KEY)".into(),
        "CREATE TABLE IF NOT EXISTS policy_model (id INTEGER PRIMARY KEY, model TEXT NOT NULL)".into(),
        "CREATE TABLE IF NOT EXISTS policy_settings (project TEXT PRIMARY KEY, quorum BIGINT NOT NULL, forbid_same_site BIGINT NOT NULL)".into(),
        "CREATE TABLE IF NOT EXISTS access_requests (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
             requester TEXT NOT NULL, requester_site TEXT, project TEXT NOT NULL, body TEXT NOT NULL,
             status TEXT NOT NULL, revision BIGINT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)".into(),
        "CREATE INDEX IF NOT EXISTS access_requests_by_requester ON access_requests (requester)".into(),
        "CREATE TABLE IF NOT EXISTS access_reviews (request_id TEXT NOT NULL, reviewer TEXT NOT NULL,
             reviewer_site TEXT, verdict TEXT NOT NULL, reason TEXT NOT NULL, time_ms BIGINT NOT NULL,
             PRIMARY KEY (request_id, reviewer))".into(),
        "CREATE TABLE IF NOT EXISTS access_grants (request_id TEXT PRIMARY KEY, subject TEXT NOT NULL,
             scope TEXT NOT NULL, actions TEXT NOT NULL, purpose TEXT NOT NULL, starts_ms BIGINT NOT NULL,
             ends_ms BIGINT NOT NULL, revoked_ms BIGINT, revoked_by TEXT, revoke_reason TEXT)".into(),
        "CREATE INDEX IF NOT EXISTS access_grants_by_subject ON access_grants (subject)".into(),
    ];
    if engine == Engine::Postgres {
        // Two replicas starting at once: one creates, the other waits.
        let mut tx = pool.begin().await?;
        tx.execute("SELECT pg_advisory_xact_lock(7203)").await?;
        for s in &stmts {
            tx.execute(s.as_str()).await?;
        }
        tx.commit().await?;
    } else {
        for s in &stmts {
            pool.execute(s.as_str()).await?;
        }
    }
    Ok(())
}
