//! The audit log on the project database.
//!
//! Tables (one schema for SQLite and PostgreSQL):
//! - `audit_events`: one row per event: `seq`, the canonical `entry` (what the tree commits
//!   to) and copies of its fields for queries (checked against the entry by the verifier);
//! - `audit_hashes`: the tree's stored hashes (see [`crate::tree`]);
//! - `audit_checkpoints`: every signed tree head.
//!
//! Triggers refuse UPDATE, DELETE (and TRUNCATE on PostgreSQL) on all three: the log is
//! append-only for everyone who goes through the database's rules. Someone who bypasses
//! them (drops a trigger, edits the file) is caught by `hbs audit verify`.
//!
//! Appends go through one writer task: concurrent appends are batched into one
//! transaction (group commit), so a durable commit's cost is shared while each caller
//! still waits until its own event is durable. Sequence numbers are given by the writer,
//! so one process writes a given log (a replica would need the database's own sequence
//! and a lock, left to the scale-out issue). After each commit the events are also written
//! as JSON lines to `DIR/events.jsonl.YYYY-MM-DD` (tracing-appender's daily-rolling file,
//! written synchronously by the writer: nothing is dropped when the disk is slow).
//!
//! A checkpointer task signs a new tree head every 500 ms while the log grows, and
//! [`AuditLog::checkpoint`] signs one on demand (at shutdown, before answering a
//! receipt).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::event::{Event, NewEvent};
use crate::note::AuditKey;
use crate::tree::{self, Hash, MapReader};

/// Audit failures. The gateway turns any of them into a refusal (fail closed).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database refused or failed.
    #[error("audit database: {0}")]
    Db(#[from] sqlx::Error),
    /// The event could not be made durable; the caller must not commit its effect.
    #[error("the audit event could not be recorded: {0}")]
    NotRecorded(String),
    /// Keys or files.
    #[error("audit key: {0}")]
    Key(String),
    /// A request the log cannot answer (a position outside it).
    #[error("{0}")]
    Range(String),
    /// Tree math refused (should not happen on a consistent log).
    #[error("audit tree: {0}")]
    Tree(String),
    /// The stored log is damaged.
    #[error("the audit log is damaged: {0} (run hbs audit verify)")]
    Damaged(String),
}

/// Which events to list. Every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Role of the actor.
    pub role: Option<String>,
    /// Site of the actor.
    pub site: Option<String>,
    /// Name of the actor.
    pub name: Option<String>,
    /// Certificate serial of the actor.
    pub serial: Option<String>,
    /// Action.
    pub action: Option<String>,
    /// Resource.
    pub resource: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// From this time (ms since the epoch, inclusive).
    pub from_ms: Option<u64>,
    /// Until this time (ms, exclusive).
    pub to_ms: Option<u64>,
    /// Only events after this sequence number (pagination).
    pub after: Option<u64>,
    /// At most this many.
    pub limit: u64,
}

/// What the writer task is given: an event to append, or events committed elsewhere
/// (in another transaction, see [`AuditLog::append_within`]) to copy to the JSON lines.
enum Pending {
    Append(
        Box<NewEvent>,
        tokio::sync::oneshot::Sender<Result<Event, String>>,
    ),
    Copy(Vec<Event>),
}

/// Most events committed in one transaction.
const MAX_BATCH: usize = 2048;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

/// The audit log. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    engine: Engine,
    tx: tokio::sync::mpsc::Sender<Pending>,
    key: AuditKey,
    /// Events durably committed.
    size: Arc<AtomicU64>,
    /// The latest signed checkpoint: (size, note).
    latest: Mutex<Option<(u64, String)>>,
    signing: tokio::sync::Mutex<()>,
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads the audit key pair from `dir` (`key` 0600 and `key.pub`), creating it when absent.
pub fn load_or_create_key(dir: &Path) -> Result<AuditKey, AuditError> {
    let k = |e: std::io::Error| AuditError::Key(e.to_string());
    std::fs::create_dir_all(dir).map_err(k)?;
    let (sk, vk) = (dir.join("key"), dir.join("key.pub"));
    if !sk.exists() {
        let (s, v) = AuditKey::generate();
        let tmp = dir.join("key.tmp");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(k)?;
            f.write_all(s.as_bytes()).map_err(k)?;
            f.sync_all().map_err(k)?;
        }
        std::fs::write(&vk, format!("{v}\n")).map_err(k)?;
        std::fs::rename(&tmp, &sk).map_err(k)?;
    }
    let s = std::fs::read_to_string(&sk).map_err(k)?;
    let v = std::fs::read_to_string(&vk).map_err(k)?;
    AuditKey::new(&s, &v).map_err(|e| AuditError::Key(e.to_string()))
}

impl AuditLog {
    /// Opens (creating when needed) the log in the database at `url`, with its key and
    /// JSON-lines files in `dir`, and starts the checkpointer.
    pub async fn open(url: &str, dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(url, dir, true, None).await
    }

    /// Like [`AuditLog::open`], its writer taking `lock` around each transaction: the lock
    /// the other writers of the same SQLite database in this process take (the vault's
    /// group commit), so they hand the database over without SQLite's sleeping retries.
    pub async fn open_shared(
        url: &str,
        dir: &Path,
        lock: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Self, AuditError> {
        Self::open_with(url, dir, true, Some(lock)).await
    }

    /// Opens the log to read and verify it: no checkpoints are signed.
    pub async fn open_for_reading(url: &str, dir: &Path) -> Result<Self, AuditError> {
        Self::open_with(url, dir, false, None).await
    }

    async fn open_with(
        url: &str,
        dir: &Path,
        checkpointer: bool,
        lock: Option<Arc<tokio::sync::Mutex<()>>>,
    ) -> Result<Self, AuditError> {
        sqlx::any::install_default_drivers();
        let key = load_or_create_key(dir)?;
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            Engine::Postgres
        };
        let opts = AnyConnectOptions::from_str(url)?;
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
        let pool = pool_opts.connect_with(opts).await?;
        migrate(&pool, engine).await?;
        // The next number only (an index lookup): gaps and edits are the verifier's to
        // find, not something to count over the whole table at every start.
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_events")
            .fetch_one(&pool)
            .await?
            .get(0);
        let latest =
            sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(&pool)
                .await?
                .map(|r| (r.get::<i64, _>(0) as u64, r.get::<String, _>(1)));
        let size = Arc::new(AtomicU64::new(next as u64));
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_BATCH * 4);
        let appender = tracing_appender::rolling::daily(dir, "events.jsonl");
        tokio::spawn(writer(
            pool.clone(),
            rx,
            size.clone(),
            appender,
            lock.clone(),
        ));
        let log = AuditLog {
            inner: Arc::new(Inner {
                pool,
                engine,
                tx,
                key,
                size,
                latest: Mutex::new(latest),
                signing: tokio::sync::Mutex::new(()),
                write_lock: lock,
            }),
        };
        // The checkpointer: a signed tree head at most 500 ms behind while events arrive.
        // It holds only a weak reference, so it ends with the last clone of the log.
        let weak = Arc::downgrade(&log.inner);
        if !checkpointer {
            return Ok(log);
        }
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let Some(inner) = weak.upgrade() else { break };
                if inner.pool.is_closed() {
                    break;
                }
                let log = AuditLog { inner };
                if let Err(e) = log.checkpoint().await {
                    tracing::error!(error = %e, "audit checkpoint failed");
                }
            }
        });
        Ok(log)
    }

    /// Records an event; returns it, numbered, once it is durable. An error means it is
    /// not recorded: the caller must not carry out what it describes.
    pub async fn append(&self, e: NewEvent) -> Result<Event, AuditError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.inner
            .tx
            .send(Pending::Append(Box::new(e), reply))
            .await
            .map_err(|_| AuditError::NotRecorded("the audit writer has stopped".into()))?;
        wait.await
            .map_err(|_| AuditError::NotRecorded("the audit writer has stopped".into()))?
            .map_err(AuditError::NotRecorded)
    }

    /// Appends `e` inside a transaction the caller holds on the same database (opened
    /// with BEGIN on `conn`), so that the event commits with the caller's own writes or
    /// not at all. Takes the log's write lock in that transaction. Once the caller has
    /// committed, it hands the event to [`AuditLog::committed`] for the JSON-lines copy.
    pub async fn append_within(
        &self,
        conn: &mut sqlx::AnyConnection,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Event>, AuditError> {
        if self.inner.engine == Engine::Postgres {
            conn.execute("SELECT pg_advisory_xact_lock(7202)").await?;
        }
        let (events, _) = write_locked(conn, now_ms(), events, None).await?;
        Ok(events)
    }

    /// Events appended with [`AuditLog::append_within`] whose transaction committed:
    /// counted, and copied to the JSON lines.
    pub async fn committed(&self, events: Vec<Event>) {
        if let Some(last) = events.last() {
            self.inner.size.fetch_max(last.seq + 1, Ordering::SeqCst);
        }
        let _ = self.inner.tx.send(Pending::Copy(events)).await;
    }

    /// Appends many events in one transaction, bypassing the group-commit queue (bulk
    /// loads, benchmarks). Same numbering, hashing and locking as [`AuditLog::append`].
    pub async fn append_batch(&self, news: Vec<NewEvent>) -> Result<Vec<Event>, AuditError> {
        let events = commit(&self.inner.pool, now_ms(), news, &mut None).await?;
        if let Some(last) = events.last() {
            self.inner.size.fetch_max(last.seq + 1, Ordering::SeqCst);
        }
        Ok(events)
    }

    /// Events durably recorded, as this process last saw them (other processes may have
    /// appended since: see [`AuditLog::refresh_size`]).
    pub fn size(&self) -> u64 {
        self.inner.size.load(Ordering::SeqCst)
    }

    /// Events durably recorded, read from the database (counting other processes'
    /// appends).
    pub async fn refresh_size(&self) -> Result<u64, AuditError> {
        let n: i64 = sqlx::query("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_events")
            .fetch_one(&self.inner.pool)
            .await?
            .get(0);
        self.inner.size.fetch_max(n as u64, Ordering::SeqCst);
        Ok(self.size())
    }

    /// The audit verifier key string (public).
    pub fn verifier_key(&self) -> &str {
        &self.inner.key.verifier_key
    }

    /// Whether the database answers.
    pub async fn ready(&self) -> bool {
        sqlx::query("SELECT 1")
            .fetch_one(&self.inner.pool)
            .await
            .is_ok()
    }

    async fn hashes(&self, indexes: &[u64]) -> Result<HashMap<u64, Hash>, AuditError> {
        let mut conn = self.inner.pool.acquire().await?;
        let mut out = HashMap::with_capacity(indexes.len());
        fetch_hashes(&mut conn, indexes, &mut out).await?;
        if out.len() != indexes.len() {
            return Err(AuditError::Damaged("stored hashes are missing".into()));
        }
        Ok(out)
    }

    /// The root hash of the first `size` events.
    pub async fn root(&self, size: u64) -> Result<Hash, AuditError> {
        let m = self.hashes(&tree::root_needs(size)).await?;
        tree::tree_hash(size, &MapReader(&m)).map_err(|e| AuditError::Tree(e.to_string()))
    }

    /// The latest signed checkpoint covering every event recorded so far, signing a new
    /// one when the log grew since the last.
    pub async fn checkpoint(&self) -> Result<(u64, String), AuditError> {
        let _one_at_a_time = self.inner.signing.lock().await;
        let size = self.refresh_size().await?;
        if let Some(l) = self.latest_checkpoint() {
            if l.0 == size {
                return Ok(l);
            }
        }
        let root = self.root(size).await?;
        let note = self
            .inner
            .key
            .sign(size, root, now_ms() / 1000)
            .map_err(|e| AuditError::Key(e.to_string()))?;
        let _held = match &self.inner.write_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        sqlx::query(
            "INSERT INTO audit_checkpoints (size, time_ms, note) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(size as i64)
        .bind(now_ms() as i64)
        .bind(&note)
        .execute(&self.inner.pool)
        .await?;
        let l = (size, note);
        *self.inner.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(l.clone());
        Ok(l)
    }

    /// A tree head signed now but not stored, and the inclusion proofs of `seqs` against
    /// it, from one read of the stored hashes (for a receipt). The tree holds every event
    /// this process has seen committed ([`AuditLog::size`], no database read), so at
    /// least the events `seqs` it appended; events other processes appended since are
    /// left to the next head.
    pub async fn signed_head_with_proofs(
        &self,
        seqs: &[u64],
    ) -> Result<(u64, String, Vec<Vec<Hash>>), AuditError> {
        let covering = seqs.iter().max().map_or(0, |s| s + 1);
        let size = match self.size() {
            s if s >= covering && s > 0 => s,
            _ => self.refresh_size().await?,
        };
        let (root, proofs) = self.root_and_proofs(size, seqs).await?;
        let note = self
            .inner
            .key
            .sign(size, root, now_ms() / 1000)
            .map_err(|e| AuditError::Key(e.to_string()))?;
        Ok((size, note, proofs))
    }

    /// The latest signed checkpoint, without signing a new one.
    pub fn latest_checkpoint(&self) -> Option<(u64, String)> {
        self.inner
            .latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The root of the tree of `size` events and the inclusion proofs of `seqs` in it, from
    /// one read of the stored hashes.
    pub async fn root_and_proofs(
        &self,
        size: u64,
        seqs: &[u64],
    ) -> Result<(Hash, Vec<Vec<Hash>>), AuditError> {
        if size > self.size() && size > self.refresh_size().await? {
            return Err(AuditError::Range(format!(
                "the log has {} events, not {size}",
                self.size()
            )));
        }
        let mut need = tree::root_needs(size);
        for s in seqs {
            need.extend(tree::inclusion_needs(size, *s).ok_or_else(|| {
                AuditError::Range(format!("event {s} is not in a tree of {size} events"))
            })?);
        }
        need.sort_unstable();
        need.dedup();
        let m = self.hashes(&need).await?;
        let root =
            tree::tree_hash(size, &MapReader(&m)).map_err(|e| AuditError::Tree(e.to_string()))?;
        let proofs = seqs
            .iter()
            .map(|s| {
                tree::prove_record(size, *s, &MapReader(&m))
                    .map_err(|e| AuditError::Tree(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((root, proofs))
    }

    /// The inclusion proof of event `seq` in the tree of `size` events.
    pub async fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>, AuditError> {
        if size > self.size() && size > self.refresh_size().await? {
            return Err(AuditError::Range(format!(
                "the log has {} events, not {size}",
                self.size()
            )));
        }
        let need = tree::inclusion_needs(size, seq).ok_or_else(|| {
            AuditError::Range(format!("event {seq} is not in a tree of {size} events"))
        })?;
        let m = self.hashes(&need).await?;
        tree::prove_record(size, seq, &MapReader(&m)).map_err(|e| AuditError::Tree(e.to_string()))
    }

    /// The consistency proof from the tree of `old` events to the tree of `new` events.
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, AuditError> {
        if new > self.size() && new > self.refresh_size().await? {
            return Err(AuditError::Range(format!(
                "the log has {} events, not {new}",
                self.size()
            )));
        }
        if old == new && old > 0 {
            return Ok(Vec::new());
        }
        let need = tree::consistency_needs(new, old).ok_or_else(|| {
            AuditError::Range(format!(
                "no consistency proof from {old} to {new} events (need 1 <= from <= to)"
            ))
        })?;
        let m = self.hashes(&need).await?;
        tree::prove_tree(new, old, &MapReader(&m)).map_err(|e| AuditError::Tree(e.to_string()))
    }

    /// Events matching `f`, in order.
    pub async fn events(&self, f: &Filter) -> Result<Vec<Event>, AuditError> {
        let mut conds = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        for (col, v) in [
            ("role", &f.role),
            ("site", &f.site),
            ("name", &f.name),
            ("serial", &f.serial),
            ("action", &f.action),
            ("resource", &f.resource),
            ("decision", &f.decision),
        ] {
            if let Some(v) = v {
                binds.push(v.clone());
                conds.push(format!("{col} = ${}", binds.len()));
            }
        }
        // Integers are formatted in (they are u64s, not text from the caller).
        if let Some(t) = f.from_ms {
            conds.push(format!("time_ms >= {}", t.min(i64::MAX as u64)));
        }
        if let Some(t) = f.to_ms {
            conds.push(format!("time_ms < {}", t.min(i64::MAX as u64)));
        }
        if let Some(a) = f.after {
            conds.push(format!("seq > {}", a.min(i64::MAX as u64)));
        }
        let clause = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        let sql = format!(
            "SELECT entry FROM audit_events {clause} ORDER BY seq LIMIT {}",
            f.limit.min(100_000)
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        q.fetch_all(&self.inner.pool)
            .await?
            .into_iter()
            .map(|r| {
                let s: String = r.get(0);
                Event::from_entry(s.as_bytes())
                    .map_err(|_| AuditError::Damaged("a stored event is not readable".into()))
            })
            .collect()
    }

    /// Calls `row(seq, entry)` for every stored event, in order.
    pub async fn scan_entries(&self, mut row: impl FnMut(u64, &[u8])) -> Result<(), AuditError> {
        let mut after: i64 = -1;
        loop {
            let rows = sqlx::query(
                "SELECT seq, entry FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT 50000",
            )
            .bind(after)
            .fetch_all(&self.inner.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                after = r.get(0);
                let entry: &str = r.get(1);
                row(after as u64, entry.as_bytes());
            }
        }
        Ok(())
    }

    /// Events whose query columns disagree with their entry (compared by the database's
    /// own JSON functions, so the verifier does not read every column).
    pub async fn column_mismatches(&self) -> Result<Vec<u64>, AuditError> {
        let j = |path: &str| match self.inner.engine {
            Engine::Sqlite => format!("json_extract(entry, '$.{path}')"),
            Engine::Postgres => {
                let parts: Vec<&str> = path.split('.').collect();
                let mut e = "(entry::jsonb)".to_string();
                for (i, p) in parts.iter().enumerate() {
                    e.push_str(if i + 1 == parts.len() { "->>" } else { "->" });
                    e.push_str(&format!("'{p}'"));
                }
                e
            }
        };
        let conds: Vec<String> = [
            ("role", "actor.role"),
            ("name", "actor.name"),
            ("serial", "actor.serial"),
            ("action", "action"),
            ("resource", "resource"),
            ("decision", "decision"),
            ("request_id", "request_id"),
        ]
        .iter()
        .map(|(col, path)| format!("{col} IS DISTINCT FROM {}", j(path)))
        .chain(std::iter::once(format!(
            "COALESCE(site, '') <> COALESCE({}, '')",
            j("actor.site")
        )))
        .collect();
        let mut sql = format!(
            "SELECT seq FROM audit_events WHERE {} ORDER BY seq LIMIT 1000",
            conds.join(" OR ")
        );
        if self.inner.engine == Engine::Sqlite {
            sql = sql.replace(" IS DISTINCT FROM ", " IS NOT ");
        }
        Ok(sqlx::query(&sql)
            .fetch_all(&self.inner.pool)
            .await?
            .into_iter()
            .map(|r| r.get::<i64, _>(0) as u64)
            .collect())
    }

    /// Leaf hashes recorded when events `from..to` were appended, by event number.
    pub async fn recorded_leaves(
        &self,
        from: u64,
        to: u64,
    ) -> Result<HashMap<u64, Hash>, AuditError> {
        let mut out = HashMap::new();
        if from >= to {
            return Ok(out);
        }
        let (lo, hi) = (
            tree::stored_hash_index(0, from),
            tree::stored_hash_index(0, to),
        );
        let mut after = lo as i64 - 1;
        loop {
            let rows = sqlx::query(
                "SELECT idx, hash FROM audit_hashes WHERE idx > $1 AND idx < $2 ORDER BY idx LIMIT 50000",
            )
            .bind(after)
            .bind(hi as i64)
            .fetch_all(&self.inner.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                after = r.get(0);
                let (level, n) = tlog_tiles::tlog::split_stored_hash_index(after as u64);
                if level == 0 {
                    let h: &[u8] = r.get(1);
                    if let Ok(h) = <[u8; 32]>::try_from(h) {
                        out.insert(n, Hash(h));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every stored checkpoint note, smallest first.
    pub async fn checkpoint_notes(&self) -> Result<Vec<String>, AuditError> {
        Ok(
            sqlx::query("SELECT note FROM audit_checkpoints ORDER BY size")
                .fetch_all(&self.inner.pool)
                .await?
                .into_iter()
                .map(|r| r.get::<String, _>(0))
                .collect(),
        )
    }

    /// Verifies the whole log with `verifier_key` (see [`crate::verify`]): recomputes the
    /// tree from every entry, checks every checkpoint, and compares the leaves recorded at
    /// append time wherever no matching signed checkpoint vouches for the events.
    pub async fn verify(&self, verifier_key: &str) -> Result<crate::verify::Report, AuditError> {
        let mut v = crate::verify::Verifier::new();
        self.scan_entries(|seq, entry| v.push(seq, entry)).await?;
        for seq in self.column_mismatches().await? {
            v.column_mismatch(seq);
        }
        let notes = self.checkpoint_notes().await?;
        let vouched = v.check_checkpoints(&notes, verifier_key);
        let leaves = self.recorded_leaves(vouched, v.max_seq_plus_one()).await?;
        v.check_recorded(vouched, &leaves);
        Ok(v.report())
    }

    /// Waits for the writer to drain, signs a last checkpoint and closes the pool.
    pub async fn close(&self) {
        let _ = self.checkpoint().await;
        self.inner.pool.close().await;
    }
}

async fn migrate(pool: &AnyPool, engine: Engine) -> Result<(), AuditError> {
    let blob = match engine {
        Engine::Sqlite => "BLOB",
        Engine::Postgres => "BYTEA",
    };
    let mut stmts = vec![
        "CREATE TABLE IF NOT EXISTS audit_events (
            seq BIGINT PRIMARY KEY,
            time_ms BIGINT NOT NULL,
            role TEXT NOT NULL,
            site TEXT,
            name TEXT NOT NULL,
            serial TEXT NOT NULL,
            action TEXT NOT NULL,
            resource TEXT NOT NULL,
            decision TEXT NOT NULL,
            request_id TEXT NOT NULL,
            entry TEXT NOT NULL)"
            .to_string(),
        format!("CREATE TABLE IF NOT EXISTS audit_hashes (idx BIGINT PRIMARY KEY, hash {blob} NOT NULL)"),
        "CREATE TABLE IF NOT EXISTS audit_checkpoints (
            size BIGINT PRIMARY KEY,
            time_ms BIGINT NOT NULL,
            note TEXT NOT NULL)"
            .to_string(),
        "CREATE INDEX IF NOT EXISTS audit_events_by_time ON audit_events(time_ms)".to_string(),
        "CREATE INDEX IF NOT EXISTS audit_events_by_action ON audit_events(action)".to_string(),
        "CREATE INDEX IF NOT EXISTS audit_events_by_resource ON audit_events(resource)"
            .to_string(),
    ];
    let tables = ["audit_events", "audit_hashes", "audit_checkpoints"];
    match engine {
        Engine::Sqlite => {
            for t in tables {
                for op in ["UPDATE", "DELETE"] {
                    stmts.push(format!(
                        "CREATE TRIGGER IF NOT EXISTS {t}_no_{} BEFORE {op} ON {t}
                         BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
                        op.to_lowercase()
                    ));
                }
            }
        }
        Engine::Postgres => {
            stmts.push(
                "CREATE OR REPLACE FUNCTION hbs_audit_append_only() RETURNS trigger AS $$
                 BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$ LANGUAGE plpgsql"
                    .to_string(),
            );
            for t in tables {
                stmts.push(format!(
                    "CREATE OR REPLACE TRIGGER {t}_no_change BEFORE UPDATE OR DELETE ON {t}
                     FOR EACH ROW EXECUTE FUNCTION hbs_audit_append_only()"
                ));
                stmts.push(format!(
                    "CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}
                     FOR EACH STATEMENT EXECUTE FUNCTION hbs_audit_append_only()"
                ));
            }
        }
    }
    if engine == Engine::Postgres {
        // Two processes migrating at once would race on CREATE OR REPLACE.
        let mut tx = pool.begin().await?;
        tx.execute("SELECT pg_advisory_xact_lock(7201)").await?;
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

/// The group-commit writer. Owns the sequence: `size` is the next sequence number.
async fn writer(
    pool: AnyPool,
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    size: Arc<AtomicU64>,
    mut jsonl: tracing_appender::rolling::RollingFileAppender,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
) {
    // The roots of the perfect subtrees of the log as this writer last committed it:
    // all the next append needs, so appends read no hashes back while no other process
    // writes the log.
    let mut frontier: Frontier = None;
    let mut write_lines = |events: &[Event]| {
        // The second sink, written synchronously after the durable commit. A failure
        // here is reported; the database copy is the one of record.
        let mut lines = Vec::new();
        for e in events {
            lines.extend_from_slice(&e.entry());
            lines.push(b'\n');
        }
        if let Err(e) = jsonl.write_all(&lines).and_then(|_| jsonl.flush()) {
            tracing::error!(error = %e, "audit JSON-lines file could not be written");
        }
    };
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(p) = next.take() {
            match p {
                Pending::Append(e, r) => batch.push((*e, r)),
                Pending::Copy(events) => write_lines(&events),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        let time = now_ms();
        let (news, replies): (Vec<NewEvent>, Vec<_>) = batch.into_iter().unzip();
        let held = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let committed = commit(&pool, time, news, &mut frontier).await;
        drop(held);
        match committed {
            Ok(events) => {
                let end = events.last().map(|e| e.seq + 1).unwrap_or(0);
                size.fetch_max(end, Ordering::SeqCst);
                write_lines(&events);
                for (e, r) in events.into_iter().zip(replies) {
                    let _ = r.send(Ok(e));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit events could not be recorded");
                for r in replies {
                    let _ = r.send(Err(e.to_string()));
                }
            }
        }
    }
}

const EVENT_COLUMNS: &str =
    "seq, time_ms, role, site, name, serial, action, resource, decision, request_id, entry";
const HASH_COLUMNS: &str = "idx, hash";

/// Most rows in one multi-row INSERT: one statement (one round trip to the database) per
/// 64 rows; each row count is its own prepared statement.
const ROWS_PER_STATEMENT: usize = 64;

/// `INSERT INTO table (columns) VALUES ($1, ...), ...` for `rows` rows; built once per
/// shape and kept, so it is the same string (and prepared statement) every time.
fn insert_sql(table: &'static str, columns: &'static str, rows: usize) -> &'static str {
    use std::sync::OnceLock;
    static CACHE: OnceLock<Mutex<HashMap<(&'static str, usize), &'static str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    c.entry((table, rows)).or_insert_with(|| {
        let n = columns.split(',').count();
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let marks: Vec<String> = (1..=n).map(|i| format!("${}", r * n + i)).collect();
                format!("({})", marks.join(","))
            })
            .collect();
        // Leaked once per shape: at most 128 small strings for the process's life.
        Box::leak(
            format!(
                "INSERT INTO {table} ({columns}) VALUES {}",
                values.join(",")
            )
            .into_boxed_str(),
        )
    })
}

/// Numbers `news` after the last event in the database and writes them and their tree
/// hashes in one transaction, holding the database's write lock from the moment the last
/// number is read (`BEGIN IMMEDIATE` on SQLite, a transaction-scoped advisory lock on
/// PostgreSQL): other processes appending to the same log (the command line beside a
/// running gateway) are serialized, never interleaved.
/// Reads the stored hashes at `indexes` into `out`.
async fn fetch_hashes(
    conn: &mut sqlx::AnyConnection,
    indexes: &[u64],
    out: &mut HashMap<u64, Hash>,
) -> Result<(), AuditError> {
    for chunk in indexes.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT idx, hash FROM audit_hashes WHERE idx IN ({})",
            marks.join(",")
        );
        let mut q = sqlx::query(&sql);
        for i in chunk {
            q = q.bind(*i as i64);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let h: Vec<u8> = r.get(1);
            let h: [u8; 32] = h
                .try_into()
                .map_err(|_| AuditError::Damaged("a stored hash is not 32 bytes".into()))?;
            out.insert(r.get::<i64, _>(0) as u64, Hash(h));
        }
    }
    Ok(())
}

/// (tree size, the stored hashes of its perfect subtrees' roots).
type Frontier = Option<(u64, HashMap<u64, Hash>)>;

async fn commit(
    pool: &AnyPool,
    time: u64,
    news: Vec<NewEvent>,
    frontier: &mut Frontier,
) -> Result<Vec<Event>, AuditError> {
    let mut conn = pool.acquire().await?;
    let sqlite = conn.backend_name().eq_ignore_ascii_case("sqlite");
    if sqlite {
        conn.execute("BEGIN IMMEDIATE").await?;
    } else {
        conn.execute("BEGIN").await?;
        conn.execute("SELECT pg_advisory_xact_lock(7202)").await?;
    }
    let result = write_locked(&mut conn, time, news, frontier.take()).await;
    match result {
        Ok((events, next)) => {
            conn.execute("COMMIT").await?;
            *frontier = Some(next);
            Ok(events)
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn write_locked(
    conn: &mut sqlx::AnyConnection,
    time: u64,
    news: Vec<NewEvent>,
    frontier: Frontier,
) -> Result<(Vec<Event>, (u64, HashMap<u64, Hash>)), AuditError> {
    let start: i64 = sqlx::query("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_events")
        .fetch_one(&mut *conn)
        .await?
        .get(0);
    let start = start as u64;
    let events: Vec<Event> = news
        .into_iter()
        .enumerate()
        .map(|(i, e)| Event::new(start + i as u64, time, e))
        .collect();
    // The stored hashes these appends read and were written before this batch.
    let mut need: Vec<u64> = events
        .iter()
        .flat_map(|e| tree::append_needs(e.seq))
        .filter(|i| *i < tree::stored_hash_count(start))
        .collect();
    need.sort_unstable();
    need.dedup();
    let mut known: HashMap<u64, Hash> = match frontier {
        Some((size, map)) if size == start => map,
        _ => HashMap::new(),
    };
    need.retain(|i| !known.contains_key(i));
    fetch_hashes(conn, &need, &mut known).await?;
    let mut new_hashes: Vec<(u64, Hash)> = Vec::with_capacity(events.len() * 2);
    let mut entries = Vec::with_capacity(events.len());
    for e in &events {
        let entry = e.entry();
        let hs = tree::stored_hashes(e.seq, &entry, &MapReader(&known))
            .map_err(|err| AuditError::Damaged(format!("tree at event {}: {err}", e.seq)))?;
        let base = tree::stored_hash_index(0, e.seq);
        for (k, h) in hs.into_iter().enumerate() {
            known.insert(base + k as u64, h);
            new_hashes.push((base + k as u64, h));
        }
        entries.push(String::from_utf8(entry).unwrap_or_default());
    }
    // Rows go in multi-row INSERTs of up to 64 rows, one round trip each.
    for (evs, ents) in events
        .chunks(ROWS_PER_STATEMENT)
        .zip(entries.chunks(ROWS_PER_STATEMENT))
    {
        let mut q = sqlx::query(insert_sql("audit_events", EVENT_COLUMNS, evs.len()));
        for (e, entry) in evs.iter().zip(ents) {
            q = q
                .bind(e.seq as i64)
                .bind(e.time_ms as i64)
                .bind(e.actor.role.clone())
                .bind(e.actor.site.clone())
                .bind(e.actor.name.clone())
                .bind(e.actor.serial.clone())
                .bind(e.action.clone())
                .bind(e.resource.clone())
                .bind(e.decision.clone())
                .bind(e.request_id.clone())
                .bind(entry.clone());
        }
        q.execute(&mut *conn).await?;
    }
    for chunk in new_hashes.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::query(insert_sql("audit_hashes", HASH_COLUMNS, chunk.len()));
        for (i, h) in chunk {
            q = q.bind(*i as i64).bind(h.0.to_vec());
        }
        q.execute(&mut *conn).await?;
    }
    let end = start + events.len() as u64;
    let next: HashMap<u64, Hash> = tree::root_needs(end)
        .into_iter()
        .filter_map(|i| known.get(&i).map(|h| (i, *h)))
        .collect();
    Ok((events, (end, next)))
}
