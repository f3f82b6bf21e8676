//! Decisions: Casbin enforcers over filtered parts of the policy, kept fresh by change
//! notices pushed to them (no database read per decision).
//!
//! Casbin's `enforce` evaluates the matcher against every rule it holds, in turn; with
//! 100,000 grants in one enforcer a denial would walk them all. So no enforcer holds the
//! whole policy: a platform route is decided by the enforcer of the caller's role and
//! that route (loaded with the filter `p = role:ROLE, *, METHOD /route`: route rules match
//! their route exactly, and a model change must keep it so), and work under a grant by
//! the enforcer of the caller (the rules naming that subject, `p = SUBJECT`). Each is small
//! whatever the number of grants in force, so allow and deny cost the same few matcher
//! evaluations. Enforcers are built on first use and kept (at most [`MAX_CACHED`]).
//!
//! Freshness without a database read per decision: the decider drops the enforcers of
//! the subjects named in `policy_changes` since its cached version whenever it is told
//! that the stored policy changed, and rebuilds them on their next use. It is told by:
//! - this process's own writes (a counter shared by every store on the database, bumped
//!   after each write transaction, before the write's caller answers anyone);
//! - on PostgreSQL, the other replicas' writes: each write announces itself with
//!   `pg_notify` in its transaction (delivered at commit), and a listener task on its own
//!   connection marks the cache stale as each notification arrives. While that listener
//!   is not connected and listening (at start, after a lost connection), the decider
//!   falls back to reading the version before every decision, and on reconnecting it
//!   reloads whatever changed meanwhile; nothing is missed, it is only slower;
//! - on SQLite (one gateway; replicas use PostgreSQL), another process's writes, which
//!   a poll of the version finds within [`POLL`]. The same poll runs on PostgreSQL, as a
//!   backstop for a listener connection that dies without the client noticing.
//!
//! A revocation on one gateway therefore denies on every other as soon as the
//! notification arrives (measured by `hbs policy bench`: well under a millisecond on one
//! host), and on the gateway that revoked before its answer leaves.
//!
//! The model itself is stored (`policy_model`) and changes only through an approved
//! policy request; [`check_model`] refuses a model that would not enforce.
//!
//! Casbin's enforcer is not `Sync`-friendly to share mutably and `enforce` answers allow
//! when enforcement is disabled: each enforcer sits behind its own mutex, is checked to
//! be enabled whenever it is built and before each use, and a decider refuses to open
//! when a probe enforcer is off or allows an unknown caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casbin::rhai::Dynamic;
use casbin::{function_map::OperatorFunction, CoreApi, DefaultModel, Enforcer, Filter, MgmtApi};

use crate::adapter::SqlxAdapter;
use crate::model::{self, Query, Rule, SCOPE_FN};
use crate::store::{Engine, PolicyStore, CHANNEL};
use crate::PolicyError;

/// Most enforcers kept; past it, half of them are dropped (they rebuild on use, about half
/// a millisecond each). Each Casbin enforcer carries its own script engine, about 300 KB
/// measured (`hbs policy bench` peaks at 585 MB RSS with some 1,900 built), so this
/// bounds a gateway's decider at roughly 300 MB.
pub const MAX_CACHED: usize = 1024;

/// A decision and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Allowed or not.
    pub allow: bool,
    /// The Casbin rule that allowed (`p, ...`), or why nothing did (default deny, and the
    /// nearest rule with what it fails on).
    pub rule: String,
}

/// A hook run on each enforcer as it is built (after the project's own setup). Only for
/// tests that prove the decider refuses a misconfigured enforcer.
pub type Configure = fn(&mut Enforcer);

/// How often a decider on SQLite looks for policy writes by other processes.
pub const POLL: Duration = Duration::from_millis(500);

struct Cache {
    version: i64,
    model: Arc<str>,
    enforcers: HashMap<String, Arc<Held>>,
}

/// A cached enforcer and its rules, read once (for explaining denials).
struct Held {
    enforcer: Mutex<Enforcer>,
    rules: Vec<Rule>,
}

/// Which part of the policy decides `q`, as the cache key and Casbin filter: a route by
/// the role rules for that route (`p = role:ROLE, *, METHOD /route`), work under a grant
/// by the caller's own rules (`p = SUBJECT`).
fn part(q: &Query) -> (String, Vec<&str>) {
    if q.dom == "*" {
        (
            format!("{}\t{}", q.role, q.obj),
            vec![q.role.as_str(), "*", q.obj.as_str()],
        )
    } else {
        (q.sub.clone(), vec![q.sub.as_str()])
    }
}

/// What tells the decider that the stored policy changed.
struct Signals {
    /// Writes by this process (shared with every store on the database).
    local: Arc<AtomicU64>,
    /// Changes announced by others (notifications, polls, reconnections).
    remote: Arc<AtomicU64>,
    /// Whether `remote` is trustworthy now (listener connected and listening).
    live: Arc<AtomicBool>,
    /// `local + remote` when the cache was last brought up to date.
    seen: AtomicU64,
}

impl Signals {
    fn mark(&self) -> u64 {
        self.local
            .load(Ordering::SeqCst)
            .wrapping_add(self.remote.load(Ordering::SeqCst))
    }
}

/// The decider: one per gateway process.
pub struct Decider {
    store: PolicyStore,
    cache: Mutex<Cache>,
    configure: Option<Configure>,
    signals: Signals,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Decider {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

/// Listens on [`CHANNEL`] for ever: each notification (and each (re)connection, which
/// may follow missed ones) bumps `remote`; `live` is true only while listening.
async fn listen(url: String, remote: Arc<AtomicU64>, live: Arc<AtomicBool>) {
    loop {
        if let Ok(mut l) = sqlx::postgres::PgListener::connect(&url).await {
            if l.listen(CHANNEL).await.is_ok() {
                // Count first, then trust: a decision that sees `live` also sees this.
                remote.fetch_add(1, Ordering::SeqCst);
                live.store(true, Ordering::SeqCst);
                while let Ok(Some(_)) = l.try_recv().await {
                    remote.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        live.store(false, Ordering::SeqCst);
        remote.fetch_add(1, Ordering::SeqCst);
        tracing::warn!("policy change listener lost its connection; reading the version per decision until it is back");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Polls the version for ever, bumping `remote` when it moves.
async fn poll(store: PolicyStore, remote: Arc<AtomicU64>) {
    let mut last = None;
    loop {
        if let Ok(v) = store.version().await {
            if last.is_some_and(|l| l != v) {
                remote.fetch_add(1, Ordering::SeqCst);
            }
            last = Some(v);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn scope_fn(a: Dynamic, b: Dynamic) -> Dynamic {
    let (a, b) = (
        a.into_string().unwrap_or_default(),
        b.into_string().unwrap_or_default(),
    );
    Dynamic::from(model::scope_match(&a, &b))
}

fn casbin_err(e: casbin::Error) -> PolicyError {
    PolicyError::Engine(e.to_string())
}

/// A caller no rule names.
fn nobody() -> Query {
    Query {
        sub: "probe:nobody".into(),
        role: "role:nobody".into(),
        dom: "grant:none".into(),
        obj: "GET /probe".into(),
        act: "probe".into(),
        purpose: String::new(),
        now_ms: 0,
    }
}

/// Fails unless `e` enforces: enabled, and denying a caller no rule names.
pub fn check_enforcing(e: &Enforcer) -> Result<(), PolicyError> {
    if !e.is_enabled() {
        return Err(PolicyError::Disabled);
    }
    match e.enforce(nobody().values()) {
        Ok(false) => Ok(()),
        _ => Err(PolicyError::Disabled),
    }
}

/// Checks a proposed model: it must compile, and answer a fixed set of probes as the
/// project's model does (a role rule admits its role to its route and nothing else; a
/// grant admits its subject within its scope, action and purpose until its end, and
/// not at the end; nobody else gets in). A model that would let an unknown caller in,
/// ignore expiry or lock the board out of its own routes is refused with the probe it
/// fails. The error never echoes the model text.
pub async fn check_model(text: &str) -> Result<(), String> {
    let m = DefaultModel::from_str(text)
        .await
        .map_err(|e| format!("the model does not compile: {e}"))?;
    let mut e = Enforcer::new(m, casbin::MemoryAdapter::default())
        .await
        .map_err(|e| format!("the model does not compile: {e}"))?;
    e.add_function(SCOPE_FN, OperatorFunction::Arg2(scope_fn));
    match e.enforce(nobody().values()) {
        Ok(false) => {}
        Ok(true) => return Err("the model lets in a caller no rule names".into()),
        Err(err) => {
            return Err(format!(
                "the model does not fit the project's requests and rules: {err}"
            ))
        }
    }
    let until = 1_000_000;
    let sub = "spiffe://prostatenet/researcher/probe";
    let grant = Rule {
        sub: sub.into(),
        dom: "grant:probe".into(),
        obj: model::resource_scope(&[("site", "SITE_A")]),
        act: "search".into(),
        purpose: "probe".into(),
        until: model::time_key(until),
    };
    for r in [Rule::route("ethics-board", "GET", "/reviews"), grant] {
        e.add_policy(r.values())
            .await
            .map_err(|e| format!("the model cannot hold the project's rules: {e}"))?;
    }
    let on = |q: Query, what: &str| (q, what.to_string());
    let route = |role: &str, method: &str| Query::route(sub, role, method, "/reviews", until - 1);
    let work = |dom: &str, site: &str, act: &str, purpose: &str, now: u64| Query {
        sub: sub.into(),
        role: "role:researcher".into(),
        dom: dom.into(),
        obj: model::resource_scope(&[("site", site)]),
        act: act.into(),
        purpose: purpose.into(),
        now_ms: now,
    };
    let allowed = [
        on(route("ethics-board", "GET"), "a role rule admits its role"),
        on(
            work("grant:probe", "SITE_A", "search", "probe", until - 1),
            "a grant admits its subject within its scope before its end",
        ),
    ];
    let denied = [
        on(
            route("researcher", "GET"),
            "a role rule admits only its role",
        ),
        on(
            route("ethics-board", "POST"),
            "a role rule admits only its route",
        ),
        on(
            work("grant:probe", "SITE_A", "search", "probe", until),
            "a grant ends at its end time",
        ),
        on(
            work("grant:probe", "SITE_B", "search", "probe", 1),
            "a grant admits only its scope",
        ),
        on(
            work("grant:probe", "SITE_A", "run", "probe", 1),
            "a grant admits only its actions",
        ),
        on(
            work("grant:probe", "SITE_A", "search", "other", 1),
            "a grant admits only its purpose",
        ),
        on(
            work("grant:other", "SITE_A", "search", "probe", 1),
            "a grant admits only in its own domain",
        ),
    ];
    for (want, probes) in [(true, &allowed[..]), (false, &denied[..])] {
        for (q, what) in probes.iter() {
            match e.enforce(q.values()) {
                Ok(got) if got == want => {}
                Ok(_) => return Err(format!("the model breaks a rule of the project: {what}")),
                Err(err) => return Err(format!("the model fails on \"{what}\": {err}")),
            }
        }
    }
    Ok(())
}

impl Decider {
    /// A decider over `store`. Fails if its enforcers would not enforce.
    pub async fn open(store: PolicyStore) -> Result<Self, PolicyError> {
        Self::open_with(store, None).await
    }

    /// Like [`Decider::open`], running `configure` on each enforcer built. For tests
    /// only: it exists to show that an enforcer switched off is refused.
    pub async fn open_with(
        store: PolicyStore,
        configure: Option<Configure>,
    ) -> Result<Self, PolicyError> {
        let local = store.local_writes().clone();
        let remote = Arc::new(AtomicU64::new(0));
        let live = Arc::new(AtomicBool::new(false));
        // The poll also backs the listener up: a connection that dies silently (no
        // reset) leaves `live` set until TCP notices, and the poll bounds that window.
        let mut watchers = vec![tokio::spawn(poll(store.clone(), remote.clone()))];
        match store.engine() {
            Engine::Postgres => watchers.push(tokio::spawn(listen(
                store.url().to_string(),
                remote.clone(),
                live.clone(),
            ))),
            Engine::Sqlite => live.store(true, Ordering::SeqCst),
        }
        let seen = AtomicU64::new(local.load(Ordering::SeqCst));
        let version = store.version().await?;
        let model = store.model().await?;
        // A stored model that would not enforce (written past the review, or refused by
        // this release) stops the decider, and so the gateway.
        check_model(&model)
            .await
            .map_err(|e| PolicyError::Engine(format!("the stored policy model is refused: {e}")))?;
        let d = Decider {
            store,
            cache: Mutex::new(Cache {
                version,
                model: model.into(),
                enforcers: HashMap::new(),
            }),
            configure,
            signals: Signals {
                local,
                remote,
                live,
                seen,
            },
            watchers,
        };
        // A probe enforcer over an empty part of the policy.
        d.build(vec!["probe:nobody"]).await?;
        // Give the listener a moment to start, so the first decisions need no read.
        for _ in 0..100 {
            if d.signals.live.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(d)
    }

    /// How many enforcers are cached now (at most [`MAX_CACHED`]).
    pub fn cached(&self) -> usize {
        self.lock_cache().enforcers.len()
    }

    /// Whether changes by other replicas are being pushed (else each decision reads the
    /// version).
    pub fn watching(&self) -> bool {
        self.signals.live.load(Ordering::SeqCst)
    }

    /// How many changes this decider has been told of (for measuring propagation).
    pub fn changes_heard(&self) -> u64 {
        self.signals.mark()
    }

    /// The store behind it.
    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    async fn build(&self, filter: Vec<&str>) -> Result<Enforcer, PolicyError> {
        let text = self.lock_cache().model.clone();
        let m = DefaultModel::from_str(&text).await.map_err(casbin_err)?;
        let mut e = Enforcer::new(m, SqlxAdapter::filtered(&self.store))
            .await
            .map_err(casbin_err)?;
        e.add_function(SCOPE_FN, OperatorFunction::Arg2(scope_fn));
        e.load_filtered_policy(Filter {
            p: filter,
            g: vec![],
        })
        .await
        .map_err(casbin_err)?;
        if let Some(f) = self.configure {
            f(&mut e);
        }
        check_enforcing(&e)?;
        Ok(e)
    }

    /// Brings the cache up to the stored policy version: drops the enforcers of the
    /// subjects changed since.
    pub async fn refresh(&self) -> Result<(), PolicyError> {
        let since = self.lock_cache().version;
        let (now, changed) = self.store.changes_since(since).await?;
        if now == since {
            return Ok(());
        }
        let everything = changed.iter().any(|s| s == "*");
        // `*` also covers a new model.
        let model = if everything {
            Some(self.store.model().await?)
        } else {
            None
        };
        let mut c = self.lock_cache();
        if everything {
            c.enforcers.clear();
            if let Some(m) = model {
                c.model = m.into();
            }
        } else {
            for s in &changed {
                let prefix = format!("{s}\t");
                c.enforcers.retain(|k, _| k != s && !k.starts_with(&prefix));
            }
        }
        c.version = c.version.max(now);
        Ok(())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides `q` against the policy as stored now: the cache is brought up to date
    /// first when a change was announced, or on every call while changes by other
    /// replicas cannot be heard.
    pub async fn decide(&self, q: &Query) -> Result<Decision, PolicyError> {
        let live = self.signals.live.load(Ordering::SeqCst);
        let mark = self.signals.mark();
        if !live || mark != self.signals.seen.load(Ordering::SeqCst) {
            self.refresh().await?;
            self.signals.seen.store(mark, Ordering::SeqCst);
        }
        self.decide_cached(q).await
    }

    /// Decides `q` against the enforcers as cached (no version check): for callers that
    /// have just refreshed, and for measuring the enforcement itself.
    pub async fn decide_cached(&self, q: &Query) -> Result<Decision, PolicyError> {
        let (key, filter) = part(q);
        let cached = self.lock_cache().enforcers.get(&key).cloned();
        let held = match cached {
            Some(h) => h,
            None => {
                let version = self.lock_cache().version;
                let e = self.build(filter).await?;
                let rules = e
                    .get_policy()
                    .iter()
                    .filter_map(|v| Rule::from_values(v))
                    .collect();
                let h = Arc::new(Held {
                    enforcer: Mutex::new(e),
                    rules,
                });
                let mut c = self.lock_cache();
                // Keep it only if no change arrived while it loaded.
                if c.version == version {
                    if c.enforcers.len() >= MAX_CACHED {
                        // Drop half (in the map's arbitrary order), not all: the callers
                        // still cached keep their enforcers.
                        let drop: Vec<String> =
                            c.enforcers.keys().take(MAX_CACHED / 2).cloned().collect();
                        for k in drop {
                            c.enforcers.remove(&k);
                        }
                    }
                    c.enforcers.insert(key, h.clone());
                }
                h
            }
        };
        let e = held.enforcer.lock().unwrap_or_else(|p| p.into_inner());
        if !e.is_enabled() {
            return Err(PolicyError::Disabled);
        }
        let (allow, rules) = e.enforce_ex(q.values()).map_err(casbin_err)?;
        if allow {
            let rule = rules
                .first()
                .and_then(|v| Rule::from_values(v))
                .map(|r| r.line())
                .unwrap_or_else(|| "allowed".into());
            return Ok(Decision { allow, rule });
        }
        drop(e);
        let mut rule = model::why_denied(&held.rules, q);
        if rule == "allowed" {
            // The rules admit it as the project's model reads them; an approved model
            // with a further condition does not.
            rule = "default deny: a condition of the model in force refuses it (the rules alone would admit it)".into();
        }
        Ok(Decision { allow: false, rule })
    }
}
