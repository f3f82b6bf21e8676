//! Test support: one temporary database per test on each engine.
//!
//! SQLite always; PostgreSQL at `HBS_TEST_PG` (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a fresh database per test. When
//! PostgreSQL cannot be reached the test fails under `CI=true` and says it skipped
//! otherwise: never silently.
#![allow(dead_code)]

use sqlx::{Connection, Executor};

/// The base PostgreSQL URL for tests.
pub fn pg_base() -> String {
    std::env::var("HBS_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// A fresh PostgreSQL database, or None (with a loud message) when not in CI and
/// PostgreSQL is down.
pub async fn fresh_pg(test: &str) -> Option<String> {
    sqlx::any::install_default_drivers();
    let base = pg_base();
    let mut conn = match sqlx::PgConnection::connect(&base).await {
        Ok(c) => c,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: PostgreSQL at {base} is required under CI=true: {e}");
            }
            eprintln!("SKIPPED: {test} on PostgreSQL: cannot connect to {base}: {e}");
            return None;
        }
    };
    let mut r = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r).unwrap();
    let name = format!("hbs_test_{}", hex::encode(r));
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (head, _) = base.rsplit_once('/').unwrap();
    Some(format!("{head}/{name}"))
}

/// Database URLs to run a test against: SQLite in `dir`, and PostgreSQL when reachable.
pub async fn databases(test: &str, dir: &std::path::Path) -> Vec<Option<String>> {
    let mut v = vec![None]; // None: the embedded SQLite default
    if let Some(pg) = fresh_pg(test).await {
        v.push(Some(pg));
    }
    let _ = dir;
    v
}

/// Drops a database made by [`fresh_pg`] (best effort: a leftover is harmless).
pub async fn drop_pg(url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_base()).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
}
