//! The gateway's side of the compute enclave: starting sandboxed workers.

use anyhow::{bail, Result};
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
    let o = l.run(&args, b"", out.path());
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
        let o = l.run(&["--probe=none".to_string()], b"", out.path());
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
