//! The metadata database: patients' wrapped keys and the pseudonymized catalogue rows.
//!
//! One schema, two engines through `sqlx::Any`: SQLite (the embedded default, in WAL mode
//! with `synchronous=FULL` so a committed row survives power loss, and `secure_delete` so
//! a shredded key does not linger in free pages) and PostgreSQL (scale-out). Only
//! pseudonymized values are ever written here.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::acquisition::Acquisition;
use std::str::FromStr;

/// Database failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database refused or failed an operation.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The group commit failed; the row is not stored.
    #[error("database commit failed: {0}")]
    Commit(String),
    /// A URL that is neither sqlite: nor postgres:.
    #[error("unsupported database URL scheme (use sqlite:// or postgres://)")]
    Scheme,
}

/// Which engine a catalogue runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A patient's key record.
#[derive(Debug, Clone)]
pub struct PatientKey {
    /// Data key wrapped by the KEK.
    pub wrapped: Vec<u8>,
    /// KEK version that wrapped it.
    pub kek_version: u32,
    /// Data key version.
    pub key_version: u32,
}

/// A stored instance, as the catalogue knows it (all pseudonymized).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceRow {
    /// Blob ID in the store.
    pub object_id: String,
    /// Patient pseudonym.
    pub pseudonym: String,
    /// Contributing site.
    pub site: String,
    /// New Study Instance UID.
    pub study_uid: String,
    /// New Series Instance UID.
    pub series_uid: String,
    /// New SOP Instance UID.
    pub sop_uid: String,
    /// SOP Class UID.
    pub sop_class: String,
    /// Modality.
    pub modality: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Cleaned Series Description.
    pub series_description: String,
    /// Shifted study date.
    pub study_date: String,
    /// Transfer syntax.
    pub transfer_syntax: String,
    /// Size of the de-identified file in bytes.
    pub size: i64,
    /// SHA-256 of the de-identified file.
    pub sha256: String,
    /// Data-key version the blob is sealed with.
    pub key_version: u32,
}

/// The catalogue database.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    engine: Engine,
    batcher: tokio::sync::mpsc::Sender<Pending>,
    hook: HookSlot,
    /// Taken by the writes made outside the group commit on an ingest's path (a new
    /// patient's key), so that they queue behind the group commit's transaction instead
    /// of sleeping in SQLite's busy handler.
    lock: Option<WriteLock>,
}

/// What an ingest asks the group commit to do inside the transaction that commits its
/// row. Opaque to the catalogue: the [`BatchHook`] knows what it is.
pub type TxWork = Box<dyn std::any::Any + Send>;

/// Work run once inside each group-commit transaction, given the [`TxWork`] of every row
/// of the batch that carried some, with whether that row is new. When it fails, the
/// transaction (every row of the batch) rolls back. The gateway records the rows' audit
/// events here, all in one append, so that each row and its event commit together or
/// neither does, and a batch of rows costs one append, not one per row.
pub type BatchHook = std::sync::Arc<
    dyn for<'c> Fn(
            &'c mut sqlx::AnyConnection,
            Vec<(TxWork, bool)>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'c>,
        > + Send
        + Sync,
>;

/// The hook of a catalogue, set once, read by its group-commit task.
#[derive(Clone, Default)]
struct HookSlot(std::sync::Arc<std::sync::OnceLock<BatchHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = if self.0.get().is_some() {
            "set"
        } else {
            "unset"
        };
        write!(f, "BatchHook({set})")
    }
}

/// An instance row waiting for the group commit, its work in the transaction, and the
/// channel its caller waits on.
type Pending = (
    InstanceRow,
    Option<Acquisition>,
    Option<TxWork>,
    tokio::sync::oneshot::Sender<Result<bool, String>>,
);

/// A lock shared by the writers of one SQLite database in this process (the catalogue's
/// group commit and the audit log's writer): a writer waiting on it is woken the moment
/// the other commits, where SQLite's own busy handler would sleep in growing steps.
pub type WriteLock = std::sync::Arc<tokio::sync::Mutex<()>>;

/// Waits for `lock`, when there is one, and holds it until the guard is dropped.
async fn hold(lock: &Option<WriteLock>) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    match lock {
        Some(l) => Some(l.lock().await),
        None => None,
    }
}

/// Most rows committed in one transaction by the group commit.
const MAX_BATCH: usize = 256;

/// Group commit: rows from concurrent ingests are written in one transaction, so the
/// cost of a durable commit (an fsync) is shared while every caller still waits for its
/// own row to be durable. The task ends when every `Catalog` clone is dropped.
async fn group_commit(
    pool: AnyPool,
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    lock: Option<WriteLock>,
    hook: HookSlot,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        let mut works = Vec::with_capacity(batch.len());
        for (row, acq, work, reply) in batch {
            rows.push((row, acq));
            works.push(work);
            replies.push(reply);
        }
        let _held = hold(&lock).await;
        let result = async {
            let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
            let fresh = insert_instance_rows(&mut tx, &rows)
                .await
                .map_err(|e| e.to_string())?;
            // The batch's new instances, by series: one summary update per series.
            let mut by_series: std::collections::BTreeMap<&str, SeriesBatch<'_>> =
                Default::default();
            for ((row, acq), f) in rows.iter().zip(fresh.iter().copied()) {
                // A series' facts count each instance once: a repeated upload adds
                // nothing.
                if f {
                    if let Some(a) = acq {
                        let b = by_series.entry(&row.series_uid).or_insert(SeriesBatch {
                            row,
                            acq: a,
                            instances: 0,
                            temporal: 0,
                            b_values: Vec::new(),
                        });
                        b.instances += 1;
                        b.temporal = b.temporal.max(i64::from(
                            a.temporal_position
                                .unwrap_or(0)
                                .max(a.temporal_positions.unwrap_or(0)),
                        ));
                        if let Some(v) = a.b_value {
                            if !b.b_values.contains(&v) {
                                b.b_values.push(v);
                            }
                        }
                    }
                }
            }
            let series: Vec<&SeriesBatch<'_>> = by_series.values().collect();
            upsert_series(&mut tx, &series)
                .await
                .map_err(|e| e.to_string())?;
            if fresh.iter().any(|f| *f) {
                bump_version(&mut tx).await.map_err(|e| e.to_string())?;
            }
            let works: Vec<(TxWork, bool)> = works
                .into_iter()
                .zip(fresh.iter().copied())
                .filter_map(|(w, f)| Some((w?, f)))
                .collect();
            if !works.is_empty() {
                let hook = hook.0.get().ok_or(
                    "rows carry work for the commit but the catalogue has no batch hook set",
                )?;
                hook(&mut tx, works).await?;
            }
            tx.commit().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(fresh)
        }
        .await;
        match result {
            Ok(fresh) => {
                for (reply, f) in replies.into_iter().zip(fresh) {
                    let _ = reply.send(Ok(f));
                }
            }
            Err(msg) => {
                for reply in replies {
                    let _ = reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

/// Most rows in one multi-row statement. A statement is a round trip to the database;
/// each row count is its own prepared statement.
const ROWS_PER_STATEMENT: usize = 64;

/// `($1, ..., $cols), (...)`: `rows` rows of placeholders.
fn placeholders(rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| {
            let marks: Vec<String> = (1..=cols).map(|i| format!("${}", r * cols + i)).collect();
            format!("({})", marks.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts a batch's instance rows in a few multi-row statements (one round trip to the
/// database each, where a statement per row would cost one per row). Returns, per row,
/// whether it is new: false when the same instance was already stored, or came earlier
/// in the same batch.
async fn insert_instance_rows(
    conn: &mut sqlx::AnyConnection,
    rows: &[(InstanceRow, Option<Acquisition>)],
) -> Result<Vec<bool>, sqlx::Error> {
    let mut inserted = std::collections::HashSet::new();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO instances ({INSTANCE_COLUMNS}, created_at) VALUES {}
             ON CONFLICT DO NOTHING RETURNING object_id",
            placeholders(chunk.len(), 16)
        );
        let mut q = sqlx::query(&sql);
        for (r, _) in chunk {
            q = q
                .bind(&r.object_id)
                .bind(&r.pseudonym)
                .bind(&r.site)
                .bind(&r.study_uid)
                .bind(&r.series_uid)
                .bind(&r.sop_uid)
                .bind(&r.sop_class)
                .bind(&r.modality)
                .bind(&r.manufacturer)
                .bind(&r.series_description)
                .bind(&r.study_date)
                .bind(&r.transfer_syntax)
                .bind(r.size)
                .bind(&r.sha256)
                .bind(r.key_version as i64)
                .bind(now());
        }
        for row in q.fetch_all(&mut *conn).await? {
            inserted.insert(row.try_get::<String, _>(0)?);
        }
    }
    // Taking the ID out of the set makes a second copy in the same batch not new.
    Ok(rows
        .iter()
        .map(|(r, _)| inserted.remove(&r.object_id))
        .collect())
}

/// Counts a change to what the catalogue holds (instances added, a patient withdrawn), so
/// readers that keep a summary know when to rebuild it.
async fn bump_version(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Adds an instance to its series' facts (the catalogue's summary: one row per series,
/// its distinct b-values beside it).
/// A batch's new instances of one series: the first one's facts, how many, the most
/// temporal positions and the distinct b-values among them.
struct SeriesBatch<'a> {
    row: &'a InstanceRow,
    acq: &'a Acquisition,
    instances: i64,
    temporal: i64,
    b_values: Vec<f64>,
}

/// Adds a batch's instances to their series' facts (the catalogue's summary: one row per
/// series, its distinct b-values beside it), in multi-row statements. `series` holds each
/// series once.
async fn upsert_series(
    conn: &mut sqlx::AnyConnection,
    series: &[&SeriesBatch<'_>],
) -> Result<(), sqlx::Error> {
    for chunk in series.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO series_facts (series_uid, pseudonym, site, study_uid, study_date, modality, sop_class,
                manufacturer, model, series_description, image_type, scanning_sequence, echo_time_ms,
                field_strength_t, temporal_positions, segments, instances, first_received)
             VALUES {}
             ON CONFLICT (series_uid) DO UPDATE SET
                instances = series_facts.instances + excluded.instances,
                temporal_positions = CASE WHEN excluded.temporal_positions > series_facts.temporal_positions
                    THEN excluded.temporal_positions ELSE series_facts.temporal_positions END",
            placeholders(chunk.len(), 18)
        );
        // Not kept prepared on PostgreSQL: sqlx 0.8 declares an absent f64 as float4, so a
        // statement prepared when a row had no echo time would later misread one row's
        // float8 ("incorrect binary data format"). Parsed afresh, each execution declares
        // its own types.
        let keep = conn.backend_name() != "PostgreSQL";
        let mut q = sqlx::query(&sql).persistent(keep);
        for b in chunk {
            let (r, a) = (b.row, b.acq);
            q = q
                .bind(&r.series_uid)
                .bind(&r.pseudonym)
                .bind(&r.site)
                .bind(&r.study_uid)
                .bind(&r.study_date)
                .bind(&r.modality)
                .bind(&r.sop_class)
                .bind(&r.manufacturer)
                .bind(&a.model)
                .bind(&r.series_description)
                .bind(&a.image_type)
                .bind(&a.scanning_sequence)
                .bind(a.echo_time_ms)
                .bind(a.field_strength_t)
                .bind(b.temporal)
                .bind(a.segments.join(","))
                .bind(b.instances)
                .bind(now());
        }
        q.execute(&mut *conn).await?;
    }
    let b_values: Vec<(&str, f64)> = series
        .iter()
        .flat_map(|b| b.b_values.iter().map(|v| (b.row.series_uid.as_str(), *v)))
        .collect();
    for chunk in b_values.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO series_b_values (series_uid, b_value) VALUES {} ON CONFLICT DO NOTHING",
            placeholders(chunk.len(), 2)
        );
        let mut q = sqlx::query(&sql);
        for (uid, v) in chunk {
            q = q.bind(*uid).bind(*v);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A series as the catalogue summarises it (pseudonymized values only).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesRow {
    /// New Series Instance UID.
    pub series_uid: String,
    /// Patient pseudonym.
    pub pseudonym: String,
    /// Contributing site.
    pub site: String,
    /// New Study Instance UID.
    pub study_uid: String,
    /// Shifted study date.
    pub study_date: String,
    /// Modality.
    pub modality: String,
    /// SOP Class UID.
    pub sop_class: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// What the first instance said of its acquisition (b-value and temporal position
    /// aside: those are over the whole series).
    pub acquisition: Acquisition,
    /// Cleaned Series Description.
    pub series_description: String,
    /// Distinct b-values of the series, ascending.
    pub b_values: Vec<f64>,
    /// The most temporal positions any instance named.
    pub temporal_positions: u32,
    /// Instances stored.
    pub instances: i64,
    /// When hbs first received an instance of it (seconds since 1970, like `created_at`).
    pub first_received: i64,
}

fn instance_row(r: sqlx::any::AnyRow) -> InstanceRow {
    InstanceRow {
        object_id: r.get(0),
        pseudonym: r.get(1),
        site: r.get(2),
        study_uid: r.get(3),
        series_uid: r.get(4),
        sop_uid: r.get(5),
        sop_class: r.get(6),
        modality: r.get(7),
        manufacturer: r.get(8),
        series_description: r.get(9),
        study_date: r.get(10),
        transfer_syntax: r.get(11),
        size: r.get(12),
        sha256: r.get(13),
        key_version: r.get::<i64, _>(14) as u32,
    }
}

const INSTANCE_COLUMNS: &str = "object_id, pseudonym, site, study_uid, series_uid, sop_uid, sop_class, modality, manufacturer, series_description, study_date, transfer_syntax, size, sha256, key_version";

/// A search over the catalogue (QIDO-RS): every condition given must hold; an empty
/// list or `None` matches everything. All values are pseudonymized ones.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Only this contributing site (a data provider sees its own site only).
    pub site: Option<String>,
    /// Study Instance UIDs (any of).
    pub study_uids: Vec<String>,
    /// Series Instance UIDs (any of).
    pub series_uids: Vec<String>,
    /// SOP Instance UIDs (any of).
    pub sop_uids: Vec<String>,
    /// SOP Class UIDs (any of).
    pub sop_classes: Vec<String>,
    /// Patient pseudonym.
    pub pseudonym: Option<String>,
    /// Series modality.
    pub modality: Option<String>,
    /// Studies with at least one series of this modality.
    pub modality_in_study: Option<String>,
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Shifted study date, inclusive lower bound (YYYYMMDD).
    pub date_from: Option<String>,
    /// Shifted study date, inclusive upper bound (YYYYMMDD).
    pub date_to: Option<String>,
    /// Most results returned.
    pub limit: i64,
    /// Results skipped (in UID order).
    pub offset: i64,
}

impl Search {
    /// The WHERE clause (possibly empty) and its values, bound in order as $1, $2...
    fn clause(&self) -> (String, Vec<String>) {
        let mut conds = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut eq = |col: &str, v: &Option<String>, conds: &mut Vec<String>| {
            if let Some(v) = v {
                binds.push(v.clone());
                conds.push(format!("{col} = ${}", binds.len()));
            }
        };
        eq("site", &self.site, &mut conds);
        eq("pseudonym", &self.pseudonym, &mut conds);
        eq("modality", &self.modality, &mut conds);
        eq("manufacturer", &self.manufacturer, &mut conds);
        if let Some(m) = &self.modality_in_study {
            binds.push(m.clone());
            conds.push(format!(
                "study_uid IN (SELECT study_uid FROM instances WHERE modality = ${})",
                binds.len()
            ));
        }
        if let Some(d) = &self.date_from {
            binds.push(d.clone());
            conds.push(format!("study_date >= ${}", binds.len()));
        }
        if let Some(d) = &self.date_to {
            binds.push(d.clone());
            conds.push(format!("study_date <= ${}", binds.len()));
        }
        for (col, list) in [
            ("study_uid", &self.study_uids),
            ("series_uid", &self.series_uids),
            ("sop_uid", &self.sop_uids),
            ("sop_class", &self.sop_classes),
        ] {
            if list.is_empty() {
                continue;
            }
            let mut marks = Vec::new();
            for v in list {
                binds.push(v.clone());
                marks.push(format!("${}", binds.len()));
            }
            conds.push(format!("{col} IN ({})", marks.join(", ")));
        }
        let clause = if conds.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conds.join(" AND "))
        };
        (clause, binds)
    }

    fn page(&self) -> String {
        format!("LIMIT {} OFFSET {}", self.limit.max(0), self.offset.max(0))
    }
}

/// A study matched by a search.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StudyMatch {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient pseudonym.
    pub pseudonym: String,
    /// Shifted study date.
    pub study_date: String,
    /// Modalities of its series, sorted.
    pub modalities: Vec<String>,
    /// Number of series.
    pub series: i64,
    /// Number of instances.
    pub instances: i64,
}

/// A series matched by a search.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeriesMatch {
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Patient pseudonym.
    pub pseudonym: String,
    /// Shifted study date.
    pub study_date: String,
    /// Modality.
    pub modality: String,
    /// Manufacturer.
    pub manufacturer: String,
    /// Cleaned Series Description.
    pub series_description: String,
    /// Number of instances.
    pub instances: i64,
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    binds: Vec<String>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for b in binds {
        q = q.bind(b);
    }
    q
}

impl Catalog {
    /// Studies matching `s`, in Study Instance UID order.
    pub async fn search_studies(&self, s: &Search) -> Result<Vec<StudyMatch>, CatalogError> {
        let (clause, binds) = s.clause();
        let agg = match self.engine {
            Engine::Sqlite => "group_concat(DISTINCT modality)",
            Engine::Postgres => "string_agg(DISTINCT modality, ',')",
        };
        let sql = format!(
            "SELECT study_uid, MIN(pseudonym), MIN(study_date), COUNT(DISTINCT series_uid), COUNT(*), {agg}
             FROM instances {clause} GROUP BY study_uid ORDER BY study_uid {}",
            s.page()
        );
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mods: String = r.get(5);
                let mut modalities: Vec<String> = mods
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect();
                modalities.sort();
                StudyMatch {
                    study_uid: r.get(0),
                    pseudonym: r.get(1),
                    study_date: r.get(2),
                    modalities,
                    series: r.get(3),
                    instances: r.get(4),
                }
            })
            .collect())
    }

    /// Series matching `s`, in (study, series) UID order.
    pub async fn search_series(&self, s: &Search) -> Result<Vec<SeriesMatch>, CatalogError> {
        let (clause, binds) = s.clause();
        let sql = format!(
            "SELECT study_uid, series_uid, MIN(pseudonym), MIN(study_date), MIN(modality),
                    MIN(manufacturer), MIN(series_description), COUNT(*)
             FROM instances {clause} GROUP BY study_uid, series_uid
             ORDER BY study_uid, series_uid {}",
            s.page()
        );
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SeriesMatch {
                study_uid: r.get(0),
                series_uid: r.get(1),
                pseudonym: r.get(2),
                study_date: r.get(3),
                modality: r.get(4),
                manufacturer: r.get(5),
                series_description: r.get(6),
                instances: r.get(7),
            })
            .collect())
    }

    /// Instances matching `s`, in (study, series, SOP) UID order.
    pub async fn search_instances(&self, s: &Search) -> Result<Vec<InstanceRow>, CatalogError> {
        let (clause, binds) = s.clause();
        let sql = format!(
            "SELECT {INSTANCE_COLUMNS} FROM instances {clause}
             ORDER BY study_uid, series_uid, sop_uid {}",
            s.page()
        );
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(instance_row).collect())
    }

    /// Connects and creates the schema if needed.
    pub async fn connect(url: &str) -> Result<Self, CatalogError> {
        Self::connect_with(url, None).await
    }

    /// Like [`Catalog::connect`], the group commit taking `lock` around each transaction.
    pub async fn connect_with(url: &str, lock: Option<WriteLock>) -> Result<Self, CatalogError> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Engine::Postgres
        } else {
            return Err(CatalogError::Scheme);
        };
        let opts = AnyConnectOptions::from_str(url)?;
        let mut pool_opts =
            AnyPoolOptions::new().max_connections(if engine == Engine::Sqlite { 4 } else { 8 });
        if engine == Engine::Sqlite {
            // An in-process SQLite connection cannot go stale: no ping before each use.
            pool_opts = pool_opts
                .test_before_acquire(false)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA secure_delete = ON").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                });
        }
        let pool = pool_opts.connect_with(opts).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_BATCH * 4);
        let hook = HookSlot::default();
        // The group commit runs on its own thread and runtime: each of its statements is
        // a round trip to the database, and the reply wakes this thread directly instead
        // of queueing behind the CPU-heavy tasks (de-identification, encryption, TLS) on
        // the shared runtime's workers. (Its own connection, opened on that runtime, made
        // the slowest commits slower in the STOW-RS benchmark: it shares the pool.)
        let fail = |e: &dyn std::fmt::Display| {
            CatalogError::Commit(format!("cannot start the group commit: {e}"))
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(&e))?;
        std::thread::Builder::new()
            .name("hbs-catalog-commit".into())
            .spawn({
                let (pool, hook) = (pool.clone(), hook.clone());
                let lock = lock.clone();
                move || runtime.block_on(group_commit(pool, rx, lock, hook))
            })
            .map_err(|e| fail(&e))?;
        let c = Catalog {
            pool,
            engine,
            batcher: tx,
            hook,
            lock,
        };
        c.migrate().await?;
        Ok(c)
    }

    /// The engine in use.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    async fn migrate(&self) -> Result<(), CatalogError> {
        let blob = match self.engine {
            Engine::Sqlite => "BLOB",
            Engine::Postgres => "BYTEA",
        };
        let stmts = [
            format!(
                "CREATE TABLE IF NOT EXISTS patients (
                    pseudonym TEXT PRIMARY KEY,
                    site TEXT NOT NULL,
                    wrapped_key {blob} NOT NULL,
                    kek_version BIGINT NOT NULL,
                    key_version BIGINT NOT NULL,
                    created_at BIGINT NOT NULL)"
            ),
            "CREATE TABLE IF NOT EXISTS instances (
                object_id TEXT PRIMARY KEY,
                pseudonym TEXT NOT NULL REFERENCES patients(pseudonym),
                site TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                series_uid TEXT NOT NULL,
                sop_uid TEXT NOT NULL UNIQUE,
                sop_class TEXT NOT NULL,
                modality TEXT NOT NULL,
                manufacturer TEXT NOT NULL,
                series_description TEXT NOT NULL,
                study_date TEXT NOT NULL,
                transfer_syntax TEXT NOT NULL,
                size BIGINT NOT NULL,
                sha256 TEXT NOT NULL,
                key_version BIGINT NOT NULL,
                created_at BIGINT NOT NULL)"
                .to_string(),
            "CREATE INDEX IF NOT EXISTS instances_by_patient ON instances(pseudonym)".to_string(),
            "CREATE INDEX IF NOT EXISTS instances_by_study ON instances(study_uid, series_uid)"
                .to_string(),
            "CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid)".to_string(),
            "CREATE TABLE IF NOT EXISTS series_facts (
                series_uid TEXT PRIMARY KEY,
                pseudonym TEXT NOT NULL,
                site TEXT NOT NULL,
                study_uid TEXT NOT NULL,
                study_date TEXT NOT NULL,
                modality TEXT NOT NULL,
                sop_class TEXT NOT NULL,
                manufacturer TEXT NOT NULL,
                model TEXT NOT NULL,
                series_description TEXT NOT NULL,
                image_type TEXT NOT NULL,
                scanning_sequence TEXT NOT NULL,
                echo_time_ms DOUBLE PRECISION,
                field_strength_t DOUBLE PRECISION,
                temporal_positions BIGINT NOT NULL,
                segments TEXT NOT NULL,
                instances BIGINT NOT NULL,
                first_received BIGINT NOT NULL)"
                .to_string(),
            "CREATE INDEX IF NOT EXISTS series_facts_by_patient ON series_facts(pseudonym)"
                .to_string(),
            "CREATE TABLE IF NOT EXISTS catalog_version (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)"
                .to_string(),
            "INSERT INTO catalog_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING"
                .to_string(),
            "CREATE TABLE IF NOT EXISTS series_b_values (
                series_uid TEXT NOT NULL,
                b_value DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (series_uid, b_value))"
                .to_string(),
            "CREATE TABLE IF NOT EXISTS clinical_records (
                object_id TEXT PRIMARY KEY,
                pseudonym TEXT NOT NULL REFERENCES patients(pseudonym),
                site TEXT NOT NULL,
                key_version BIGINT NOT NULL,
                created_at BIGINT NOT NULL)"
                .to_string(),
            "CREATE TABLE IF NOT EXISTS withdrawals (
                pseudonym TEXT PRIMARY KEY,
                site TEXT NOT NULL,
                instances BIGINT NOT NULL,
                withdrawn_at BIGINT NOT NULL)"
                .to_string(),
        ];
        for s in stmts {
            self.pool.execute(s.as_str()).await?;
        }
        Ok(())
    }

    /// Whether the database answers (for readiness checks).
    pub async fn ready(&self) -> bool {
        self.pool.execute("SELECT 1").await.is_ok()
    }

    /// The key record of a patient, if any.
    pub async fn patient_key(&self, pseudonym: &str) -> Result<Option<PatientKey>, CatalogError> {
        let row = sqlx::query(
            "SELECT wrapped_key, kek_version, key_version FROM patients WHERE pseudonym = $1",
        )
        .bind(pseudonym)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| PatientKey {
            wrapped: r.get::<Vec<u8>, _>(0),
            kek_version: r.get::<i64, _>(1) as u32,
            key_version: r.get::<i64, _>(2) as u32,
        }))
    }

    /// Records a new patient's wrapped key unless one exists already (a concurrent
    /// ingest may have created it first); returns the key record that is in force.
    pub async fn insert_patient_key(
        &self,
        pseudonym: &str,
        site: &str,
        key: &PatientKey,
    ) -> Result<PatientKey, CatalogError> {
        let held = hold(&self.lock).await;
        sqlx::query(
            "INSERT INTO patients (pseudonym, site, wrapped_key, kek_version, key_version, created_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (pseudonym) DO NOTHING",
        )
        .bind(pseudonym)
        .bind(site)
        .bind(key.wrapped.clone())
        .bind(key.kek_version as i64)
        .bind(key.key_version as i64)
        .bind(now())
        .execute(&self.pool)
        .await?;
        drop(held);
        self.patient_key(pseudonym)
            .await?
            .ok_or(CatalogError::Db(sqlx::Error::RowNotFound))
    }

    /// Records an instance durably (group-committed with concurrent callers). Returns
    /// false when the same SOP instance is already stored.
    pub async fn insert_instance(&self, r: &InstanceRow) -> Result<bool, CatalogError> {
        self.insert_instance_with(r, None, None).await
    }

    /// Sets the work run inside every group-commit transaction whose rows carry
    /// [`TxWork`]. Set once; returns false (and changes nothing) when a hook is already set.
    pub fn set_batch_hook(&self, hook: BatchHook) -> bool {
        self.hook.0.set(hook).is_ok()
    }

    /// Like [`Catalog::insert_instance`], also adding the instance to its series' facts
    /// (`acquisition`), and handing `work` to the [`BatchHook`] inside the committing
    /// transaction: the row commits only if the hook succeeds.
    pub async fn insert_instance_with(
        &self,
        r: &InstanceRow,
        acquisition: Option<Acquisition>,
        work: Option<TxWork>,
    ) -> Result<bool, CatalogError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.batcher
            .send((r.clone(), acquisition, work, reply))
            .await
            .map_err(|_| CatalogError::Commit("the group-commit writer has stopped".into()))?;
        wait.await
            .map_err(|_| CatalogError::Commit("the group-commit writer has stopped".into()))?
            .map_err(CatalogError::Commit)
    }

    /// The catalogue's version: it changes whenever instances are added or a patient is
    /// withdrawn, by any process.
    pub async fn version(&self) -> Result<i64, CatalogError> {
        Ok(
            sqlx::query("SELECT version FROM catalog_version WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .get(0),
        )
    }

    /// Every series' facts, in series order (the catalogue's summary: one row per series,
    /// however many instances).
    pub async fn series(&self) -> Result<Vec<SeriesRow>, CatalogError> {
        let mut b_values: std::collections::HashMap<String, Vec<f64>> = Default::default();
        for r in sqlx::query(
            "SELECT series_uid, b_value FROM series_b_values ORDER BY series_uid, b_value",
        )
        .fetch_all(&self.pool)
        .await?
        {
            b_values.entry(r.get(0)).or_default().push(r.get(1));
        }
        let rows = sqlx::query(
            "SELECT series_uid, pseudonym, site, study_uid, study_date, modality, sop_class, manufacturer,
                model, series_description, image_type, scanning_sequence, echo_time_ms, field_strength_t,
                temporal_positions, instances, first_received, segments
             FROM series_facts ORDER BY series_uid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let series_uid: String = r.get(0);
                SeriesRow {
                    b_values: b_values.remove(&series_uid).unwrap_or_default(),
                    pseudonym: r.get(1),
                    site: r.get(2),
                    study_uid: r.get(3),
                    study_date: r.get(4),
                    modality: r.get(5),
                    sop_class: r.get(6),
                    manufacturer: r.get(7),
                    acquisition: Acquisition {
                        model: r.get(8),
                        image_type: r.get(10),
                        scanning_sequence: r.get(11),
                        echo_time_ms: r.get(12),
                        field_strength_t: r.get(13),
                        segments: r
                            .get::<String, _>(17)
                            .split(',')
                            .filter(|v| !v.is_empty())
                            .map(String::from)
                            .collect(),
                        ..Default::default()
                    },
                    series_description: r.get(9),
                    temporal_positions: r.get::<i64, _>(14).clamp(0, i64::from(u32::MAX)) as u32,
                    instances: r.get(15),
                    first_received: r.get(16),
                    series_uid,
                }
            })
            .collect())
    }

    /// Records a clinical record blob.
    pub async fn insert_clinical(
        &self,
        object_id: &str,
        pseudonym: &str,
        site: &str,
        key_version: u32,
    ) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO clinical_records (object_id, pseudonym, site, key_version, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (object_id) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(object_id)
        .bind(pseudonym)
        .bind(site)
        .bind(key_version as i64)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        bump_version(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The patients with a clinical record.
    pub async fn with_clinical(&self) -> Result<std::collections::BTreeSet<String>, CatalogError> {
        Ok(
            sqlx::query("SELECT DISTINCT pseudonym FROM clinical_records")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| r.get(0))
                .collect(),
        )
    }

    /// Instances of one patient, or all.
    pub async fn instances(
        &self,
        pseudonym: Option<&str>,
    ) -> Result<Vec<InstanceRow>, CatalogError> {
        let q = format!("SELECT {INSTANCE_COLUMNS} FROM instances");
        let rows = match pseudonym {
            Some(p) => {
                sqlx::query(&format!("{q} WHERE pseudonym = $1 ORDER BY object_id"))
                    .bind(p)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{q} ORDER BY object_id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(instance_row).collect())
    }

    /// Clinical record object IDs of one patient, or all: (object ID, pseudonym, key version).
    pub async fn clinical(
        &self,
        pseudonym: Option<&str>,
    ) -> Result<Vec<(String, String, u32)>, CatalogError> {
        let rows = match pseudonym {
            Some(p) => {
                sqlx::query("SELECT object_id, pseudonym, key_version FROM clinical_records WHERE pseudonym = $1 ORDER BY object_id")
                    .bind(p)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT object_id, pseudonym, key_version FROM clinical_records ORDER BY object_id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) as u32))
            .collect())
    }

    /// Counts: (patients, instances, clinical records).
    pub async fn counts(&self) -> Result<(i64, i64, i64), CatalogError> {
        let one = |sql: &'static str| {
            let pool = self.pool.clone();
            async move {
                sqlx::query(sql)
                    .fetch_one(&pool)
                    .await
                    .map(|r| r.get::<i64, _>(0))
            }
        };
        Ok((
            one("SELECT COUNT(*) FROM patients").await?,
            one("SELECT COUNT(*) FROM instances").await?,
            one("SELECT COUNT(*) FROM clinical_records").await?,
        ))
    }

    /// Crypto-shredding, database side: deletes the patient's wrapped key and every
    /// catalogue row in one transaction and records the withdrawal. Returns the number
    /// of instances that became unreadable, or None when the patient is unknown.
    pub async fn withdraw(&self, pseudonym: &str) -> Result<Option<i64>, CatalogError> {
        let mut tx = self.pool.begin().await?;
        let site: Option<String> = sqlx::query("SELECT site FROM patients WHERE pseudonym = $1")
            .bind(pseudonym)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
        let Some(site) = site else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(
            "DELETE FROM series_b_values WHERE series_uid IN
             (SELECT series_uid FROM series_facts WHERE pseudonym = $1)",
        )
        .bind(pseudonym)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM series_facts WHERE pseudonym = $1")
            .bind(pseudonym)
            .execute(&mut *tx)
            .await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query("DELETE FROM instances WHERE pseudonym = $1")
            .bind(pseudonym)
            .execute(&mut *tx)
            .await?
            .rows_affected() as i64;
        sqlx::query("DELETE FROM clinical_records WHERE pseudonym = $1")
            .bind(pseudonym)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM patients WHERE pseudonym = $1")
            .bind(pseudonym)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO withdrawals (pseudonym, site, instances, withdrawn_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (pseudonym) DO UPDATE SET withdrawn_at = excluded.withdrawn_at",
        )
        .bind(pseudonym)
        .bind(&site)
        .bind(n)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // Make sure the old key is gone from the files too, not just unreachable.
        match self.engine {
            Engine::Sqlite => {
                self.pool.execute("PRAGMA wal_checkpoint(TRUNCATE)").await?;
            }
            Engine::Postgres => {
                self.pool.execute("VACUUM patients").await?;
            }
        }
        Ok(Some(n))
    }

    /// Whether a patient was withdrawn.
    pub async fn is_withdrawn(&self, pseudonym: &str) -> Result<bool, CatalogError> {
        Ok(
            sqlx::query("SELECT 1 FROM withdrawals WHERE pseudonym = $1")
                .bind(pseudonym)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// All patients' key records, for KEK rotation.
    pub async fn all_keys(&self) -> Result<Vec<(String, PatientKey)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT pseudonym, wrapped_key, kek_version, key_version FROM patients ORDER BY pseudonym",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get(0),
                    PatientKey {
                        wrapped: r.get(1),
                        kek_version: r.get::<i64, _>(2) as u32,
                        key_version: r.get::<i64, _>(3) as u32,
                    },
                )
            })
            .collect())
    }

    /// Replaces wrapped keys (KEK rotation) in one transaction.
    pub async fn rewrap(&self, keys: &[(String, Vec<u8>, u32)]) -> Result<(), CatalogError> {
        let mut tx = self.pool.begin().await?;
        for (p, wrapped, kek_version) in keys {
            sqlx::query(
                "UPDATE patients SET wrapped_key = $1, kek_version = $2 WHERE pseudonym = $3",
            )
            .bind(wrapped.clone())
            .bind(*kek_version as i64)
            .bind(p)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize) -> InstanceRow {
        InstanceRow {
            object_id: format!("P1/{i}"),
            pseudonym: "P1".into(),
            site: "SITE_A".into(),
            study_uid: "2.25.1".into(),
            series_uid: "2.25.2".into(),
            sop_uid: format!("2.25.3.{i}"),
            sop_class: "1.2.840.10008.5.1.4.1.1.4".into(),
            modality: "MR".into(),
            manufacturer: "SIEMENS".into(),
            series_description: "t2_tse_tra".into(),
            study_date: "20200101".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            size: 1,
            sha256: "00".into(),
            key_version: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_spans_several_statements_and_stores_each_instance_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
        let cat = Catalog::connect(&url).await.unwrap();
        let key = PatientKey {
            wrapped: vec![1],
            kek_version: 1,
            key_version: 1,
        };
        cat.insert_patient_key("P1", "SITE_A", &key).await.unwrap();
        assert!(cat.insert_instance(&row(10)).await.unwrap());
        // 150 rows, more than one statement holds; rows 7 and 149 are copies of row 3,
        // and row 10 is already stored.
        let mut rows: Vec<(InstanceRow, Option<Acquisition>)> =
            (0..150).map(|i| (row(i), None)).collect();
        rows[7].0 = row(3);
        rows[149].0 = row(3);
        let mut conn = cat.pool.acquire().await.unwrap();
        let fresh = insert_instance_rows(&mut conn, &rows).await.unwrap();
        assert_eq!(fresh.len(), 150);
        for (i, f) in fresh.iter().enumerate() {
            assert_eq!(*f, ![7, 10, 149].contains(&i), "row {i}");
        }
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM instances")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 148, "150 rows, two copies");
    }
}
