//! Casbin's [`Adapter`] over the project's own sqlx store (`policy_rules`), so one binary
//! keeps its policy in SQLite or PostgreSQL (casbin's `sqlx-adapter` is compiled for one
//! database only). Every write bumps the policy version and names the subjects it touched
//! (see [`crate::store`]), which is how every gateway replica learns of it.

use async_trait::async_trait;
use casbin::{error::AdapterError, Adapter, Filter, Model};
use sqlx::Row;

use crate::store;

/// The adapter. `filtered` marks one whose model holds only part of the policy (then
/// casbin refuses to save that part over the whole).
pub struct SqlxAdapter {
    store: store::PolicyStore,
    filtered: bool,
}

fn err(e: impl std::fmt::Display) -> casbin::Error {
    casbin::Error::AdapterError(AdapterError(Box::new(std::io::Error::other(e.to_string()))))
}

const COLUMNS: &str = "ptype, v0, v1, v2, v3, v4, v5";

impl SqlxAdapter {
    /// An adapter over the whole policy.
    pub fn new(store: &store::PolicyStore) -> Self {
        SqlxAdapter {
            store: store.clone(),
            filtered: false,
        }
    }

    /// An adapter that starts filtered: [`casbin::Enforcer::new`] then loads nothing, and
    /// the caller loads its part with `load_filtered_policy`.
    pub fn filtered(store: &store::PolicyStore) -> Self {
        SqlxAdapter {
            filtered: true,
            ..Self::new(store)
        }
    }

    async fn load(&self, m: &mut dyn Model, filter: Option<&Filter<'_>>) -> casbin::Result<()> {
        let mut sql = format!("SELECT {COLUMNS} FROM policy_rules");
        let mut binds: Vec<String> = Vec::new();
        if let Some(f) = filter {
            // Casbin's filter semantics: field i of a `p` (or `g`) rule must equal the
            // filter's value i where that value is not empty.
            let mut alts = Vec::new();
            for (prefix, values) in [("p", &f.p), ("g", &f.g)] {
                // A range on ptype (p, p2, ...; g, g2, ...) so the indexes serve it.
                let next = if prefix == "p" { "q" } else { "h" };
                let mut conds = vec![format!("ptype >= '{prefix}' AND ptype < '{next}'")];
                for (i, v) in values.iter().enumerate().take(6) {
                    if !v.is_empty() {
                        binds.push(v.to_string());
                        conds.push(format!("v{i} = ${}", binds.len()));
                    }
                }
                alts.push(format!("({})", conds.join(" AND ")));
            }
            sql.push_str(&format!(" WHERE {}", alts.join(" OR ")));
        }
        sql.push_str(" ORDER BY id");
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b.clone());
        }
        let rows = q.fetch_all(self.store.pool()).await.map_err(err)?;
        for r in rows {
            let ptype: String = r.get(0);
            let mut rule: Vec<String> = (1..=6).map(|i| r.get::<String, _>(i)).collect();
            while rule.last().is_some_and(|v| v.is_empty()) {
                rule.pop();
            }
            let sec = if ptype.starts_with('g') { "g" } else { "p" };
            if let Some(ast) = m
                .get_mut_model()
                .get_mut(sec)
                .and_then(|a| a.get_mut(&ptype))
            {
                ast.get_mut_policy().insert(rule);
            }
        }
        Ok(())
    }

    async fn write(
        &self,
        f: impl for<'c> FnOnce(
                &'c mut sqlx::AnyConnection,
            )
                -> futures_util::future::BoxFuture<'c, Result<Vec<String>, sqlx::Error>>
            + Send
            + 'static,
    ) -> casbin::Result<bool> {
        let touched = self
            .store
            .write_tx(|conn| {
                Box::pin(async move {
                    let touched = f(&mut *conn).await?;
                    if !touched.is_empty() {
                        store::bump(conn, &touched).await?;
                    }
                    Ok::<_, sqlx::Error>(touched)
                })
            })
            .await
            .map_err(err)?;
        Ok(!touched.is_empty())
    }
}

impl SqlxAdapter {
    /// Inserts (`insert`) or deletes `rules` in one transaction; whether any changed.
    async fn put_rules(
        &self,
        ptype: &str,
        rules: Vec<Vec<String>>,
        insert: bool,
    ) -> casbin::Result<bool> {
        let rows: Vec<_> = rules
            .iter()
            .map(|r| padded(ptype, r))
            .collect::<Option<_>>()
            .ok_or_else(|| err("a rule has more than six fields"))?;
        self.write(move |conn| {
            Box::pin(async move {
                let mut touched = Vec::new();
                for (ptype, v) in &rows {
                    let changed = if insert {
                        store::insert_rule(conn, ptype, v).await?
                    } else {
                        store::delete_rule(conn, ptype, v).await?
                    };
                    if changed {
                        touched.push(v[0].clone());
                    }
                }
                Ok(touched)
            })
        })
        .await
    }
}

fn padded(ptype: &str, rule: &[String]) -> Option<(String, [String; 6])> {
    if rule.len() > 6 {
        return None;
    }
    let mut v: [String; 6] = Default::default();
    for (i, x) in rule.iter().enumerate() {
        v[i] = x.clone();
    }
    Some((ptype.to_string(), v))
}

#[async_trait]
impl Adapter for SqlxAdapter {
    async fn load_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        self.filtered = false;
        self.load(m, None).await
    }

    async fn load_filtered_policy<'a>(
        &mut self,
        m: &mut dyn Model,
        f: Filter<'a>,
    ) -> casbin::Result<()> {
        self.filtered = true;
        self.load(m, Some(&f)).await
    }

    async fn save_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        let mut rules = Vec::new();
        for sec in ["p", "g"] {
            if let Some(map) = m.get_model().get(sec) {
                for (ptype, ast) in map {
                    for rule in ast.get_policy() {
                        rules.push(
                            padded(ptype, rule)
                                .ok_or_else(|| err("a rule has more than six fields"))?,
                        );
                    }
                }
            }
        }
        self.write(move |conn| {
            Box::pin(async move {
                let mut touched = store::delete_all(conn).await?;
                for (ptype, v) in &rules {
                    store::insert_rule(conn, ptype, v).await?;
                    touched.push(v[0].clone());
                }
                touched.push("*".into());
                Ok(touched)
            })
        })
        .await
        .map(|_| ())
    }

    async fn clear_policy(&mut self) -> casbin::Result<()> {
        self.write(|conn| {
            Box::pin(async move {
                let mut t = store::delete_all(conn).await?;
                t.push("*".into());
                Ok(t)
            })
        })
        .await
        .map(|_| ())
    }

    fn is_filtered(&self) -> bool {
        self.filtered
    }

    async fn add_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        rule: Vec<String>,
    ) -> casbin::Result<bool> {
        self.add_policies(_sec, ptype, vec![rule]).await
    }

    async fn add_policies(
        &mut self,
        _sec: &str,
        ptype: &str,
        rules: Vec<Vec<String>>,
    ) -> casbin::Result<bool> {
        self.put_rules(ptype, rules, true).await
    }

    async fn remove_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        rule: Vec<String>,
    ) -> casbin::Result<bool> {
        self.remove_policies(_sec, ptype, vec![rule]).await
    }

    async fn remove_policies(
        &mut self,
        _sec: &str,
        ptype: &str,
        rules: Vec<Vec<String>>,
    ) -> casbin::Result<bool> {
        self.put_rules(ptype, rules, false).await
    }

    async fn remove_filtered_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        field_index: usize,
        field_values: Vec<String>,
    ) -> casbin::Result<bool> {
        if field_index + field_values.len() > 6 {
            return Err(err("the filter reaches past the sixth field"));
        }
        let ptype = ptype.to_string();
        self.write(move |conn| {
            Box::pin(async move {
                let mut conds = vec!["ptype = $1".to_string()];
                let mut binds = vec![ptype];
                for (k, v) in field_values.iter().enumerate() {
                    if !v.is_empty() {
                        binds.push(v.clone());
                        conds.push(format!("v{} = ${}", field_index + k, binds.len()));
                    }
                }
                let wh = conds.join(" AND ");
                let select = format!("SELECT DISTINCT v0 FROM policy_rules WHERE {wh}");
                let mut q = sqlx::query(&select);
                for b in &binds {
                    q = q.bind(b.clone());
                }
                let touched: Vec<String> = q
                    .fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(|r| r.get(0))
                    .collect();
                let delete = format!("DELETE FROM policy_rules WHERE {wh}");
                let mut q = sqlx::query(&delete);
                for b in &binds {
                    q = q.bind(b.clone());
                }
                q.execute(&mut *conn).await?;
                Ok(touched)
            })
        })
        .await
    }
}
