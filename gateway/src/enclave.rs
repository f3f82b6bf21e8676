//! The gateway's side of the compute enclave: starting sandboxed workers.

use anyhow::{bail, Context, Result};
use compute::sandbox::{Launcher, Limits};

/// A launcher for workers of this very binary.
pub fn launcher(limits: Limits) -> Result<Launcher> {
    Ok(Launcher::new(std::env::current_exe()?, limits))
}

/// `hbs enclave probe`: one escape attempt in a job's sandbox; prints what the launcher
/// saw and, when the worker finished, what the attempt itself reported (JSON).
pub fn probe(attempt: &str, arg: &str, limits: Limits) -> Result<()> {
    let l = launcher(limits)?;
    let out = tempfile::tempdir()?;
    let mut args = vec![format!("--probe={attempt}")];
    if !arg.is_empty() {
        args.push(format!("--probe-arg={arg}"));
    }
    let o = l.run(&args, Vec::new(), out.path());
    let written: Vec<String> = std::fs::read_dir(out.path())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let doc = match &o.result {
        Ok(bytes) => serde_json::json!({
            "contained": true,
            "worker": serde_json::from_slice::<serde_json::Value>(bytes)
                .unwrap_or(serde_json::Value::Null),
            "written": written,
            "ms": o.elapsed.as_secs_f64() * 1000.0,
        }),
        Err(f) => serde_json::json!({
            "contained": true,
            "failure": f,
            "reason": f.to_string(),
            "written": written,
            "ms": o.elapsed.as_secs_f64() * 1000.0,
        }),
    };
    println!("{doc}");
    Ok(())
}

/// `hbs enclave check`: whether this host can sandbox jobs, and the start-up time of an
/// empty worker (spawn to the worker reading its stdin, and to its exit).
pub fn check(runs: usize, json: bool) -> Result<()> {
    let l = launcher(Limits::default())?;
    if let Err(f) = l.check() {
        bail!("{f}");
    }
    let out = tempfile::tempdir()?;
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        let o = l.run(&["--probe=none".to_string()], Vec::new(), out.path());
        if let Err(f) = o.result {
            bail!("{f}");
        }
        times.push(o.elapsed.as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    if json {
        println!(
            "{}",
            serde_json::json!({"sandbox": "ok", "startup_ms": times, "median_ms": median})
        );
    } else {
        println!("sandbox: ok (bubblewrap namespaces, cgroup v1 memory and pids, rlimits, Landlock, seccomp)");
        println!(
            "worker start-up to exit, median of {}: {median:.1} ms",
            times.len()
        );
    }
    Ok(())
}

/// One row of the enclave benchmark.
struct BenchRow {
    model: String,
    ort1: f64,
    ort2: f64,
    tract1: f64,
    enclave1: f64,
    enclave2: f64,
}

/// `hbs enclave bench`: inference throughput of the shipped models over `studies`
/// studies of `slices` 128x128 slices: onnxruntime (Python, 1 and 2 threads), tract in
/// this process (1 thread, no sandbox), and the enclave (sandboxed workers, start-up,
/// transfer and model loading included; 1 worker, and 2 workers in parallel each with
/// half the studies); and the sandbox's start-up. Writes BENCHMARKS.md's section.
pub fn bench(
    studies: usize,
    slices: usize,
    python: &std::path::Path,
    report: &std::path::Path,
) -> Result<()> {
    use compute::protocol::{Action, Case, Job, JobSpec};
    use std::time::Instant;
    // Start-up first, from a small process: forking copies the parent's page tables,
    // so a launcher holding gigabytes of inputs starts workers more slowly.
    let launcher = launcher(Limits::default())?;
    if let Err(f) = launcher.check() {
        bail!("{f}");
    }
    let scratch = tempfile::tempdir()?;
    // Start-up: an empty worker, spawn to exit.
    let mut startup = Vec::new();
    for _ in 0..20 {
        let o = launcher.run(&["--probe=none".to_string()], Vec::new(), scratch.path());
        startup.push(o.elapsed.as_secs_f64() * 1000.0);
    }
    let (rows, cols) = (128usize, 128usize);
    let per_study = slices * rows * cols;
    let values: Vec<f32> = (0..studies * per_study)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % 1000) as f32 / 1000.0 * 1.5)
        .collect();
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("inputs.f32");
    std::fs::write(
        &raw,
        values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/bench/ort_bench.py");
    let mut out = Vec::new();
    for (onnx, card_json) in crate::jobs::SHIPPED {
        let card = compute::card::Card::parse(card_json).map_err(anyhow::Error::msg)?;
        let g = card.geometry().map_err(anyhow::Error::msg)?;
        let model_path = dir.path().join(format!("{}.onnx", card.name));
        std::fs::write(&model_path, onnx)?;
        let ort = |threads: usize| -> Result<f64> {
            let o = std::process::Command::new(python)
                .arg(&script)
                .arg(&model_path)
                .arg(&raw)
                .args([studies, slices, rows, cols].map(|v| v.to_string()))
                .arg(if g.volume { "3d" } else { "2d" })
                .arg(threads.to_string())
                .output()?;
            anyhow::ensure!(
                o.status.success(),
                "onnxruntime: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
            v["seconds"].as_f64().context("onnxruntime gave no time")
        };
        let cases = |range: std::ops::Range<usize>| -> Vec<Case> {
            range
                .map(|s| Case {
                    id: s as u32,
                    label: None,
                    shape: vec![slices, rows, cols],
                    values: values[s * per_study..(s + 1) * per_study].to_vec(),
                })
                .collect()
        };
        let frame = |range: std::ops::Range<usize>| {
            compute::protocol::encode(&Job {
                spec: JobSpec {
                    action: Action::Infer,
                    card: card.clone(),
                    model_sha256: crate::dicomweb::sha256_hex(onnx),
                    threads: 1,
                },
                model: onnx.to_vec(),
                cases: cases(range),
            })
        };
        // tract in process: load once (as a worker does), then every study.
        let t = Instant::now();
        let mut m = compute::infer::Model::load(onnx, &card)?;
        for c in cases(0..studies) {
            m.run(&c)?;
        }
        let tract1 = t.elapsed().as_secs_f64();
        let run_workers = |parts: Vec<std::ops::Range<usize>>| -> Result<f64> {
            let frames: Vec<Vec<u8>> = parts.into_iter().map(frame).collect();
            let t = Instant::now();
            let outcomes: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = frames
                    .into_iter()
                    .map(|f| {
                        let l = launcher.clone();
                        s.spawn(move || {
                            let out = tempfile::tempdir().ok()?;
                            Some(l.run(&[], f, out.path()))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().ok().flatten())
                    .collect()
            });
            let secs = t.elapsed().as_secs_f64();
            for o in outcomes {
                let o = o.context("a worker could not start")?;
                if let Err(f) = o.result {
                    bail!("{f}");
                }
            }
            Ok(secs)
        };
        let enclave1 = run_workers(std::iter::once(0..studies).collect())?;
        let half = studies / 2;
        let enclave2 = run_workers(vec![0..half, half..studies])?;
        out.push(BenchRow {
            model: card.name.clone(),
            ort1: ort(1)?,
            ort2: ort(2)?,
            tract1,
            enclave1,
            enclave2,
        });
    }
    startup.sort_by(f64::total_cmp);
    let n = (studies * slices) as f64;
    let mut md = format!(
        "<!-- enclave-bench start -->\n## Compute enclave\n\nProduced by `cargo build --release -p hbs && target/release/hbs enclave bench --python .venv/bin/python` on the same machine. Each model runs over {studies} studies of {slices} slices of 128x128 (2D models: one batch of slices per study; the 3D model: one volume per study). Slices per second, each figure from one run over the same inputs. *onnxruntime* is Python's onnxruntime (CPU, intra-op threads 1 or 2, after a warm-up study). *tract* is the enclave's engine in this process without the sandbox, one thread. *Enclave* is the whole path: a sandboxed worker started (bubblewrap, cgroups, rlimits, Landlock, seccomp), the job frame piped in, the model loaded and optimized, every study run, the results piped out; with 2 workers each takes half the studies, in parallel.\n\n| model | onnxruntime 1 thread | onnxruntime 2 threads | tract, 1 thread | enclave, 1 worker | enclave, 2 workers | enclave (2 workers) / onnxruntime best |\n|---|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in &out {
        let best = r.ort1.min(r.ort2);
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% |\n",
            r.model,
            n / r.ort1,
            n / r.ort2,
            n / r.tract1,
            n / r.enclave1,
            n / r.enclave2,
            100.0 * best / r.enclave2
        ));
    }
    md.push_str(&format!(
        "\nSandbox start-up (an empty worker, spawn to exit, 20 runs, from the benchmark process before it loads its inputs): median {:.1} ms, max {:.1} ms.\n\nTargets: the enclave's throughput over a whole cohort at least half of onnxruntime's best on both cores; sandbox start-up under 50 ms.\n<!-- enclave-bench end -->",
        startup[startup.len() / 2],
        startup[startup.len() - 1]
    ));
    crate::policy_bench::write_section(
        report,
        "<!-- enclave-bench start -->",
        "<!-- enclave-bench end -->",
        &md,
    )
}
