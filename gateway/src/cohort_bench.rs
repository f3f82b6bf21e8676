//! `hbs cohort bench`: cohort count latency with 20,000 patients and 10 million instances
//! in the catalogue (rows generated directly), on SQLite and PostgreSQL, written into
//! BENCHMARKS.md between markers.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use catalogue::classify::Sequence;
use catalogue::count::{By, Filter, Studies, Vendor};
use catalogue::split::Origin;
use sqlx::{Connection, Executor};

/// Where the section starts in BENCHMARKS.md.
pub const START: &str = "<!-- cohort-bench start -->";
/// Where it ends.
pub const END: &str = "<!-- cohort-bench end -->";

/// Counts measured per database.
const SAMPLES: usize = 300;
/// Sites of the generated catalogue.
const SITES: usize = 13;

struct Row {
    db: &'static str,
    patients: usize,
    series: usize,
    instances: u64,
    fill_s: f64,
    first_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

use crate::policy_bench::pct;

fn pseudonym(p: usize) -> String {
    format!("PN-{p:020}")
}

/// Patient p's series: (study, kind) with 1 or 2 studies, T2W, DWI, ADC, DCE in each and
/// a segmentation for 1 patient in 20.
fn layout(p: usize) -> Vec<(usize, Sequence)> {
    let studies = if p % 5 < 2 { 2 } else { 1 };
    let mut v = Vec::new();
    for st in 0..studies {
        for k in [Sequence::T2W, Sequence::DWI, Sequence::ADC, Sequence::DCE] {
            v.push((st, k));
        }
        if st == 0 && p.is_multiple_of(20) {
            v.push((st, Sequence::SEG));
        }
    }
    v
}

/// Fills the catalogue at `url` with `patients` patients, their series and `instances`
/// instance rows; returns the number of series.
async fn fill(url: &str, sqlite: bool, patients: usize, instances: u64) -> Result<usize> {
    let mut c = sqlx::AnyConnection::connect(url).await?;
    // Patients, server-side.
    let (pn, site) = if sqlite {
        (
            "'PN-' || printf('%020d', n)",
            format!("'SITE_' || (n % {SITES})"),
        )
    } else {
        (
            "'PN-' || lpad(n::text, 20, '0')",
            format!("'SITE_' || (n % {SITES})"),
        )
    };
    let numbers = |n: u64| {
        if sqlite {
            format!(
                "WITH RECURSIVE c(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM c WHERE n < {}) ",
                n - 1
            )
        } else {
            String::new()
        }
    };
    let from = |n: u64| {
        if sqlite {
            "FROM c".to_string()
        } else {
            format!("FROM generate_series(0, {}) AS n", n - 1)
        }
    };
    let blob = if sqlite { "x'00'" } else { "'\\x00'::bytea" };
    c.execute(
        format!(
            "{}INSERT INTO patients (pseudonym, site, wrapped_key, kek_version, key_version, created_at)
             SELECT {pn}, {site}, {blob}, 1, 1, 0 {}",
            numbers(patients as u64),
            from(patients as u64)
        )
        .as_str(),
    )
    .await?;
    // Series and their b-values, from Rust in one transaction.
    let year_s: i64 = 365 * 86_400;
    let start_s: i64 = 1_700_000_000;
    let mut series = 0usize;
    c.execute("BEGIN").await?;
    for p in 0..patients {
        let vendor = ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips Medical Systems"][p % 3];
        // Received over two years; the cut-off is a year in, so about half retrospective.
        let received = start_s + (p as i64 * 2 * year_s) / patients as i64;
        for (st, kind) in layout(p) {
            let uid = format!("2.25.{p}.{st}.{}", kind.as_str());
            let (modality, sop, image_type, scanning, te, temporal): (
                &str,
                &str,
                &str,
                &str,
                f64,
                i64,
            ) = match kind {
                Sequence::T2W => (
                    "MR",
                    "1.2.840.10008.5.1.4.1.1.4",
                    "ORIGINAL\\PRIMARY",
                    "SE",
                    104.0,
                    0,
                ),
                Sequence::DWI => (
                    "MR",
                    "1.2.840.10008.5.1.4.1.1.4",
                    "ORIGINAL\\PRIMARY\\DIFFUSION",
                    "EP",
                    66.0,
                    0,
                ),
                Sequence::ADC => (
                    "MR",
                    "1.2.840.10008.5.1.4.1.1.4",
                    "DERIVED\\PRIMARY\\ADC",
                    "EP",
                    66.0,
                    0,
                ),
                Sequence::DCE => (
                    "MR",
                    "1.2.840.10008.5.1.4.1.1.4",
                    "ORIGINAL\\PRIMARY",
                    "GR",
                    1.8,
                    40,
                ),
                _ => (
                    "SEG",
                    catalogue::classify::SEG_SOP_CLASS,
                    "DERIVED\\PRIMARY",
                    "",
                    0.0,
                    0,
                ),
            };
            sqlx::query(
                "INSERT INTO series_facts (series_uid, pseudonym, site, study_uid, study_date, modality, sop_class,
                    manufacturer, model, series_description, image_type, scanning_sequence, echo_time_ms,
                    field_strength_t, temporal_positions, segments, instances, first_received)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'bench', '', $9, $10, $11, 3.0, $12, $13, $14, $15)",
            )
            .bind(uid.clone())
            .bind(pseudonym(p))
            .bind(format!("SITE_{}", p % SITES))
            .bind(format!("2.25.{p}.{st}"))
            .bind(format!("2024{:02}01", 1 + st * 6))
            .bind(modality)
            .bind(sop)
            .bind(vendor)
            .bind(image_type)
            .bind(scanning)
            .bind(te)
            .bind(temporal)
            .bind(if kind == Sequence::SEG { "gland,lesion" } else { "" })
            .bind(90i64)
            .bind(received)
            .execute(&mut c)
            .await?;
            if kind == Sequence::DWI {
                for b in [0.0f64, 800.0, 1400.0] {
                    sqlx::query(
                        "INSERT INTO series_b_values (series_uid, b_value) VALUES ($1, $2)",
                    )
                    .bind(uid.clone())
                    .bind(b)
                    .execute(&mut c)
                    .await?;
                }
            }
            series += 1;
        }
    }
    c.execute("COMMIT").await?;
    // The instance rows, server-side: the catalogue's real size (counts do not read them).
    // Keys zero-padded so the primary and unique indexes grow at their end; the other
    // indexes dropped during the load and built once after it (as a bulk load would).
    let indexes = [
        "CREATE INDEX IF NOT EXISTS instances_by_patient ON instances(pseudonym)",
        "CREATE INDEX IF NOT EXISTS instances_by_study ON instances(study_uid, series_uid)",
        "CREATE INDEX IF NOT EXISTS instances_by_series ON instances(series_uid)",
    ];
    for name in [
        "instances_by_patient",
        "instances_by_study",
        "instances_by_series",
    ] {
        c.execute(format!("DROP INDEX IF EXISTS {name}").as_str())
            .await?;
    }
    if sqlite {
        c.execute("PRAGMA synchronous = OFF").await?;
    }
    let pad = |e: &str| {
        if sqlite {
            format!("printf('%012d', {e})")
        } else {
            format!("lpad(({e})::text, 12, '0')")
        }
    };
    let (ipn, isite) = if sqlite {
        (
            format!("'PN-' || printf('%020d', n % {patients})"),
            format!("'SITE_' || (n % {patients} % {SITES})"),
        )
    } else {
        (
            format!("'PN-' || lpad((n % {patients})::text, 20, '0')"),
            format!("'SITE_' || (n % {patients} % {SITES})"),
        )
    };
    const CHUNK: u64 = 1_000_000;
    let mut start = 0u64;
    while start < instances {
        let end = (start + CHUNK).min(instances);
        let (head, from) = if sqlite {
            (
                format!("WITH RECURSIVE c(n) AS (SELECT {start} UNION ALL SELECT n + 1 FROM c WHERE n < {}) ", end - 1),
                "FROM c".to_string(),
            )
        } else {
            (
                String::new(),
                format!("FROM generate_series({start}, {}) AS n", end - 1),
            )
        };
        c.execute(
            format!(
                "{head}INSERT INTO instances (object_id, pseudonym, site, study_uid, series_uid, sop_uid,
                    sop_class, modality, manufacturer, series_description, study_date, transfer_syntax,
                    size, sha256, key_version, created_at)
                 SELECT 'obj-' || {n}, {ipn}, {isite}, '2.25.' || (n % {patients}),
                    '2.25.s.' || (n % {series}), '2.25.9.' || {n}, '1.2.840.10008.5.1.4.1.1.4', 'MR',
                    'SIEMENS', '', '20240101', '1.2.840.10008.1.2.1', 100000, '', 1, 0 {from}",
                n = pad("n"),
            )
            .as_str(),
        )
        .await?;
        start = end;
    }
    for i in indexes {
        c.execute(i).await?;
    }
    c.execute("UPDATE catalog_version SET version = version + 1 WHERE id = 1")
        .await?;
    Ok(series)
}

/// The counts asked during the measurement, in turn.
fn queries() -> Vec<(Filter, Vec<By>)> {
    let sites = |n: usize| Some((0..n).map(|i| format!("SITE_{i}")).collect());
    vec![
        (Filter::default(), vec![]),
        (Filter::default(), vec![By::Site, By::Vendor]),
        (
            Filter {
                vendors: Some([Vendor::Ge].into()),
                sequences: Some([Sequence::T2W, Sequence::DWI, Sequence::ADC].into()),
                ..Default::default()
            },
            vec![By::Split],
        ),
        (
            Filter {
                sites: sites(4),
                studies: Studies::FollowUp,
                ..Default::default()
            },
            vec![By::Site],
        ),
        (
            Filter {
                origin: Some(Origin::Prospective),
                annotated: Some(true),
                ..Default::default()
            },
            vec![By::Vendor, By::Split],
        ),
    ]
}

async fn measure(db: &'static str, url: &str, patients: usize, instances: u64) -> Result<Row> {
    let sqlite = db == "SQLite";
    // Creates the tables.
    let catalog = vault::catalog::Catalog::connect(url).await?;
    let t = Instant::now();
    let series = fill(url, sqlite, patients, instances).await?;
    let fill_s = t.elapsed().as_secs_f64();
    let keys =
        vault::pseudonym::Pseudonymizer::new(&[7u8; 32]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = crate::catalogue::CatalogueConfig {
        // A year after the first patient arrived.
        cutoff: Some("2024-11-14".into()),
        countries: Default::default(),
    };
    let cat = crate::catalogue::Catalogue::new(&keys, &cfg)?;
    let qs = queries();
    // The first count after a change rebuilds the summary from the series rows.
    let t = Instant::now();
    let first = cat.count(&catalog, &qs[0].0, &qs[0].1).await?;
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    if let catalogue::disclosure::Shown::Count(n) = first.total.patients {
        anyhow::ensure!(
            n.abs_diff(patients as u64) <= 4,
            "{db}: {n} patients counted, {patients} made"
        );
    } else {
        anyhow::bail!("{db}: the whole catalogue was suppressed");
    }
    let mut lat = Vec::with_capacity(SAMPLES);
    for k in 0..SAMPLES {
        let (f, by) = &qs[k % qs.len()];
        let t = Instant::now();
        cat.count(&catalog, f, by).await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    catalog.close().await;
    let max_ms = lat.iter().copied().fold(0.0, f64::max);
    Ok(Row {
        db,
        patients,
        series,
        instances,
        fill_s,
        first_ms,
        p50_ms: pct(&mut lat, 0.5),
        p99_ms: pct(&mut lat, 0.99),
        max_ms,
    })
}

/// Runs the benchmark and rewrites its section of `report`.
pub async fn run(
    work: &Path,
    pg: Option<String>,
    patients: usize,
    instances: u64,
    report: &Path,
) -> Result<()> {
    anyhow::ensure!(
        patients > 0 && instances > 0,
        "patients and instances must be positive"
    );
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let mut rows = Vec::new();
    let url = format!("sqlite://{}?mode=rwc", work.join("catalogue.db").display());
    eprintln!("SQLite: {patients} patients, {instances} instances");
    rows.push(measure("SQLite", &url, patients, instances).await?);
    let _ = std::fs::remove_dir_all(work);
    if let Some(base) = &pg {
        let db = crate::audit_bench::fresh_pg(base).await?;
        eprintln!("PostgreSQL: {patients} patients, {instances} instances");
        let r = measure("PostgreSQL", &db, patients, instances).await;
        // Drop the generated database whatever happened.
        if let Some((_, name)) = db.rsplit_once('/') {
            if let Ok(mut c) = sqlx::PgConnection::connect(base).await {
                let _ = c.execute(format!("DROP DATABASE {name}").as_str()).await;
            }
        }
        rows.push(r?);
    }
    let mut md = String::new();
    md.push_str(START);
    md.push_str("\n## Cohort counts\n\n");
    md.push_str(&format!(
        "Produced by `cargo build --release -p hbs && target/release/hbs cohort bench{}` on the same machine. The catalogue holds {patients} patients at {SITES} sites on 3 vendors (1 or 2 studies each, T2W, DWI, ADC and DCE in every study, a segmentation for 1 in 20) and {instances} instance rows, generated directly in the database. A count is what `POST /cohort/count` does: read the catalogue version, and walk the cached patient summaries (rebuilt from the per-series rows only when the version moved; *first count* is that rebuild), then protect every figure. {SAMPLES} counts, cycling through five cohorts with and without breakdowns. Milliseconds.\n\n",
        if pg.is_some() { " --pg postgres://postgres@127.0.0.1:5432/test" } else { "" }
    ));
    md.push_str("| database | patients | series | instances | fill s | first count | p50 | p99 | max |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |\n",
            r.db,
            r.patients,
            r.series,
            r.instances,
            r.fill_s,
            r.first_ms,
            r.p50_ms,
            r.p99_ms,
            r.max_ms
        ));
    }
    md.push_str("\nTarget: p99 under 50 ms at 20,000 patients and 10 million instances, on SQLite and PostgreSQL. Counts never read the instance rows: the vault keeps one summary row per series as it stores each instance, and the gateway keeps the patient summaries of the catalogue version it last read.\n");
    md.push_str(END);
    crate::policy_bench::write_section(report, START, END, &md)
}
