//! Decisions: Casbin enforcers over filtered parts of the policy, kept fresh by a version
//! check before each decision.
//!
//! Casbin's `enforce` evaluates the matcher against every rule it holds, in turn; with
//! 100,000 grants in one enforcer a denial would walk them all. So no enforcer holds the
//! whole policy: a platform route is decided by the enforcer of the caller's role (its
//! role rules only, loaded with the filter `p = role:ROLE`), and work under a grant by the
//! enforcer of the caller (the rules naming that subject, `p = SUBJECT`). Each is small
//! whatever the number of grants in force, so allow and deny cost the same few matcher
//! evaluations. Enforcers are built on first use and kept (at most [`MAX_CACHED`]).
//!
//! Freshness: before each decision the decider reads the policy version (one indexed
//! row); when another replica (or this one) has changed rules since, it drops the
//! enforcers of the subjects named in `policy_changes` and rebuilds them on their next
//! use. A revocation on one gateway therefore denies on every other at its next call.
//!
//! Casbin's enforcer is not `Sync`-friendly to share mutably and `enforce` answers allow
//! when enforcement is disabled: each enforcer sits behind its own mutex, is checked to
//! be enabled whenever it is built and before each use, and a decider refuses to open
//! when a probe enforcer is off or allows an unknown caller.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use casbin::rhai::Dynamic;
use casbin::{function_map::OperatorFunction, CoreApi, DefaultModel, Enforcer, Filter, MgmtApi};

use crate::adapter::SqlxAdapter;
use crate::model::{self, Query, Rule, MODEL, SCOPE_FN};
use crate::store::PolicyStore;
use crate::PolicyError;

/// Most enforcers kept; past it, the cache starts again (they rebuild on use).
pub const MAX_CACHED: usize = 4096;

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

struct Cache {
    version: i64,
    enforcers: HashMap<String, Arc<Mutex<Enforcer>>>,
}

/// The decider: one per gateway process.
pub struct Decider {
    store: PolicyStore,
    cache: Mutex<Cache>,
    configure: Option<Configure>,
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

/// Fails unless `e` enforces: enabled, and denying a caller no rule names.
pub fn check_enforcing(e: &Enforcer) -> Result<(), PolicyError> {
    if !e.is_enabled() {
        return Err(PolicyError::Disabled);
    }
    let probe = Query {
        sub: "probe:nobody".into(),
        role: "role:nobody".into(),
        dom: "grant:none".into(),
        obj: "GET /probe".into(),
        act: "probe".into(),
        purpose: String::new(),
        now_ms: 0,
    };
    match e.enforce(probe.values()) {
        Ok(false) => Ok(()),
        _ => Err(PolicyError::Disabled),
    }
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
        let version = store.version().await?;
        let d = Decider {
            store,
            cache: Mutex::new(Cache {
                version,
                enforcers: HashMap::new(),
            }),
            configure,
        };
        // A probe enforcer over an empty part of the policy.
        d.build("probe:nobody").await?;
        Ok(d)
    }

    /// The store behind it.
    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    async fn build(&self, key: &str) -> Result<Enforcer, PolicyError> {
        let m = DefaultModel::from_str(MODEL).await.map_err(casbin_err)?;
        let mut e = Enforcer::new(m, SqlxAdapter::filtered(&self.store))
            .await
            .map_err(casbin_err)?;
        e.add_function(SCOPE_FN, OperatorFunction::Arg2(scope_fn));
        e.load_filtered_policy(Filter {
            p: vec![key],
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
        let mut c = self.lock_cache();
        if changed.iter().any(|s| s == "*") {
            c.enforcers.clear();
        } else {
            for s in &changed {
                c.enforcers.remove(s);
            }
        }
        c.version = c.version.max(now);
        Ok(())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides `q` against the policy as stored now (version check first).
    pub async fn decide(&self, q: &Query) -> Result<Decision, PolicyError> {
        self.refresh().await?;
        self.decide_cached(q).await
    }

    /// Decides `q` against the enforcers as cached (no version check): for callers that
    /// have just refreshed, and for measuring the enforcement itself.
    pub async fn decide_cached(&self, q: &Query) -> Result<Decision, PolicyError> {
        // Routes by role; everything else by the caller's own rules.
        let key = if q.dom == "*" { &q.role } else { &q.sub };
        let cached = self.lock_cache().enforcers.get(key).cloned();
        let e = match cached {
            Some(e) => e,
            None => {
                let version = self.lock_cache().version;
                let e = Arc::new(Mutex::new(self.build(key).await?));
                let mut c = self.lock_cache();
                // Keep it only if no change arrived while it loaded.
                if c.version == version {
                    if c.enforcers.len() >= MAX_CACHED {
                        c.enforcers.clear();
                    }
                    c.enforcers.insert(key.clone(), e.clone());
                }
                e
            }
        };
        let held_lock = e.lock().unwrap_or_else(|p| p.into_inner());
        let e = &*held_lock;
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
        let held: Vec<Rule> = e
            .get_policy()
            .iter()
            .filter_map(|v| Rule::from_values(v))
            .collect();
        Ok(Decision {
            allow: false,
            rule: model::why_denied(&held, q),
        })
    }
}
