//! `hbs audit bench`: the audit log's throughput and proof costs, on SQLite and (when
//! given) PostgreSQL. Writes its section of BENCHMARKS.md (between markers, so that
//! `hbs bench` and this command each keep the other's section).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use audit::{Actor, AuditLog, NewEvent};

/// Start and end markers of this command's section in the report.
pub const START: &str = "<!-- audit-bench start -->";
/// End marker.
pub const END: &str = "<!-- audit-bench end -->";

fn event(i: u64) -> NewEvent {
    NewEvent {
        actor: Actor {
            role: "data-provider".into(),
            site: Some(format!("SITE_{}", (b'A' + (i % 13) as u8) as char)),
            name: format!("provider{}", i % 40),
            serial: format!("{:032X}", 0xABCDEF00u64 + i % 40),
        },
        action: "contribution.instance".into(),
        resource: format!(
            "PN-{:020X}/2.25.{}/2.25.{}",
            i / 100,
            1_000_000_000_000u64 + i / 20,
            7_000_000_000_000u64 + i
        ),
        decision: "allow".into(),
        rule: "data provider of site; unsigned".into(),
        outcome: "accepted".into(),
        request_id: format!("{:024x}", i / 4),
    }
}

async fn appends(url: &str, dir: &Path, writers: usize, total: u64) -> Result<f64> {
    let log = Arc::new(AuditLog::open(url, dir).await?);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..writers as u64 {
        let log = log.clone();
        set.spawn(async move {
            let mut i = w;
            while i < total {
                log.append(event(i)).await?;
                i += writers as u64;
            }
            Ok::<_, audit::AuditError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let rate = total as f64 / t.elapsed().as_secs_f64();
    log.close().await;
    Ok(rate)
}

/// Fills a log to `n` events in batches; returns the seconds it took.
async fn fill(log: &AuditLog, n: u64) -> Result<f64> {
    let t = Instant::now();
    let mut i = log.refresh_size().await?;
    while i < n {
        let k = (n - i).min(50_000);
        log.append_batch((i..i + k).map(event).collect()).await?;
        i += k;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Mean milliseconds of an inclusion and of a consistency proof at size `n`, over
/// `rounds` positions spread over the log (correctness is the tests' business).
async fn proofs(log: &AuditLog, n: u64, rounds: u64) -> Result<(f64, f64)> {
    let mut inc = 0.0;
    let mut con = 0.0;
    for k in 0..rounds {
        let seq = (k * 7_919_993 + 13) % n;
        let t = Instant::now();
        let p = log.inclusion_proof(seq, n).await?;
        inc += t.elapsed().as_secs_f64();
        if p.is_empty() && n > 1 {
            anyhow::bail!("empty inclusion proof");
        }
        let old = 1 + (k * 104_729 + 7) % (n - 1);
        let t = Instant::now();
        let p = log.consistency_proof(old, n).await?;
        con += t.elapsed().as_secs_f64();
        if p.is_empty() && old < n {
            anyhow::bail!("empty consistency proof");
        }
    }
    Ok((inc * 1000.0 / rounds as f64, con * 1000.0 / rounds as f64))
}

async fn verify_all(log: &AuditLog) -> Result<(f64, u64, bool)> {
    let t = Instant::now();
    let report = log.verify(log.verifier_key()).await?;
    Ok((t.elapsed().as_secs_f64(), report.events, report.ok()))
}

/// Runs the benchmark and writes its section into `report`.
pub async fn run(work: &Path, pg: Option<String>, big: u64, report: &Path) -> Result<()> {
    std::fs::create_dir_all(work)?;
    let mut md = format!(
        "{START}\n## Audit log\n\nProduced by `cargo build --release -p hbs && target/release/hbs audit bench --pg postgres://postgres@127.0.0.1:5432/test --big {big}` on the same machine. Durable means the append returned after its transaction committed (SQLite WAL with `synchronous=FULL`; PostgreSQL defaults). Each event is about 420 bytes of canonical JSON.\n\n| database | writers | events | events/s (median of 3) | runs |\n|---|---:|---:|---:|---|\n"
    );
    let mut dbs = vec![("SQLite".to_string(), None)];
    if let Some(pg) = &pg {
        dbs.push(("PostgreSQL".to_string(), Some(pg.clone())));
    }
    for (name, pg_url) in &dbs {
        for (writers, total) in [(1usize, 2_000u64), (16, 20_000), (64, 60_000)] {
            // Median of three runs, each on a fresh log: this disk's flush latency varies.
            let mut rates = Vec::new();
            for _ in 0..3 {
                let dir = work.join(format!("appends-{writers}"));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                let url = match pg_url {
                    None => format!("sqlite://{}?mode=rwc", dir.join("a.db").display()),
                    Some(u) => fresh_pg(u).await?,
                };
                rates.push(appends(&url, &dir, writers, total).await?);
                let _ = std::fs::remove_dir_all(&dir);
            }
            let runs: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
            rates.sort_by(|a, b| a.total_cmp(b));
            let rate = rates[1];
            eprintln!(
                "{name}: {writers} writers: {rate:.0} events/s (runs {})",
                runs.join(", ")
            );
            md.push_str(&format!(
                "| {name} | {writers} | {total} | {rate:.0} | {} |\n",
                runs.join(", ")
            ));
        }
    }
    md.push_str("\n| log size (SQLite) | fill seconds | inclusion proof, mean ms | consistency proof, mean ms | full verification seconds |\n|---:|---:|---:|---:|---:|\n");
    let dir = work.join("big");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("a.db").display());
    let log = AuditLog::open_for_reading(&url, &dir).await?;
    let mut sizes = vec![1_000_000u64];
    if big > 1_000_000 {
        sizes.push(big);
    }
    let mut filled = 0.0;
    for n in sizes {
        filled += fill(&log, n).await?;
        log.checkpoint().await?;
        let (inc, con) = proofs(&log, n, 1000).await?;
        let verification = if n == 1_000_000 {
            let (secs, events, ok) = verify_all(&log).await?;
            if !ok || events != n {
                anyhow::bail!("verification failed on the benchmark log");
            }
            format!("{secs:.2}")
        } else {
            "-".into()
        };
        eprintln!("{n}: fill {filled:.0}s, inclusion {inc:.3} ms, consistency {con:.3} ms, verify {verification}");
        md.push_str(&format!(
            "| {n} | {filled:.0} | {inc:.3} | {con:.3} | {verification} |\n"
        ));
    }
    log.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    md.push_str("\nTargets: 20,000 events/s or more at 64 writers on SQLite; proofs under 1 ms at 10 million events; verification of 1 million events under 5 s. Proof times include reading the O(log n) stored hashes from the database and are measured in process (no HTTP). Fill time is the bulk path (`AuditLog::append_batch`, 50,000 events per transaction).\n");
    md.push_str(END);
    md.push('\n');
    let old = std::fs::read_to_string(report).unwrap_or_default();
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!(
            "{}{}{}",
            &old[..a],
            md,
            &old[b + END.len()..].trim_start_matches('\n')
        ),
        _ => format!("{}\n{}", old.trim_end(), md),
    };
    std::fs::write(report, new)?;
    println!("{md}");
    Ok(())
}

/// A new, empty database on the PostgreSQL server at `base`; its URL.
pub async fn fresh_pg(base: &str) -> Result<String> {
    use sqlx::{Connection, Executor};
    let mut c = sqlx::PgConnection::connect(base).await?;
    let mut r = [0u8; 6];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let name = format!(
        "hbs_bench_{}",
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    c.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let (head, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("bad PostgreSQL URL"))?;
    Ok(format!("{head}/{name}"))
}
