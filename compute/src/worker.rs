//! The worker's `main`: confine, read the job, run it, write the results.
//!
//! `hbs enclave-worker` runs this inside the sandbox the [`crate::sandbox::Launcher`]
//! builds. The first thing it does, before reading anything or starting a thread, is
//! [`crate::sandbox::confine`]. It exits 0 with [`crate::protocol::Results`] on
//! stdout, or with one of the sandbox's exit codes; it prints nothing else anywhere.
//!
//! `--probe=ATTEMPT` replaces the job with an escape attempt (TCP, DNS, reading or
//! writing outside, exec, fork bomb, allocation, endless loop, oversized output), so
//! the tests can show each is contained by the same confinement a job gets. It runs
//! only after confinement, like a job.

use std::io::Write;

use crate::protocol::Results;
use crate::sandbox::{
    confine, Confinement, Limits, EXIT_BAD_JOB, EXIT_MODEL_FAILED, EXIT_NO_SANDBOX,
};

/// Ridge penalty of a fine-tuned head's weights.
const RIDGE: f64 = 1e-2;

/// Runs the worker with its arguments (after `enclave-worker`); returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let mut limits = Limits::default();
    let mut probe = None;
    let mut probe_arg = String::new();
    for a in args {
        let (k, v) = a.split_once('=').unwrap_or((a.as_str(), ""));
        let n = v.parse::<u64>();
        match (k, n) {
            ("--memory-bytes", Ok(n)) => limits.memory_bytes = n,
            ("--cpu-seconds", Ok(n)) => limits.cpu_seconds = n,
            ("--output-bytes", Ok(n)) => limits.output_bytes = n,
            ("--files", Ok(n)) => limits.files = n,
            ("--probe", _) => probe = Some(v.to_string()),
            ("--probe-arg", _) => probe_arg = v.to_string(),
            _ => return EXIT_BAD_JOB,
        }
    }
    if confine(&Confinement::standard(limits)).is_err() {
        return EXIT_NO_SANDBOX;
    }
    if let Some(attempt) = probe {
        let (succeeded, detail) = try_escape(&attempt, &probe_arg);
        let doc = serde_json::json!({"attempt": attempt, "succeeded": succeeded, "detail": detail});
        let _ = std::io::stdout().write_all(doc.to_string().as_bytes());
        return 0;
    }
    // Cases are read and run one at a time, as they arrive.
    let mut stdin = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
    let Ok((spec, model_bytes, count)) = crate::protocol::read_head(&mut stdin) else {
        return EXIT_BAD_JOB;
    };
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &model_bytes));
    if digest != spec.model_sha256 {
        return EXIT_BAD_JOB;
    }
    let Ok(mut model) = crate::infer::Model::load(&model_bytes, &spec.card) else {
        return EXIT_BAD_JOB;
    };
    drop(model_bytes);
    let mut results = Results {
        cases: Vec::with_capacity(count.min(100_000)),
        head: None,
    };
    let mut labels = Vec::with_capacity(count.min(100_000));
    let mut buf = Vec::new();
    for _ in 0..count {
        let Ok(case) = crate::protocol::read_case(&mut stdin, &mut buf) else {
            return EXIT_BAD_JOB;
        };
        match model.run(&case) {
            Ok(r) => results.cases.push(r),
            Err(crate::infer::InferError::Input(_)) => return EXIT_BAD_JOB,
            Err(_) => return EXIT_MODEL_FAILED,
        }
        labels.push(case.label);
    }
    if spec.action == crate::protocol::Action::FineTune {
        if spec.card.task != crate::card::Task::Classifier {
            return EXIT_BAD_JOB;
        }
        let (x, y): (Vec<Vec<f32>>, Vec<bool>) = labels
            .iter()
            .zip(&results.cases)
            .filter_map(|(l, r)| Some((r.features.clone(), (*l)?)))
            .unzip();
        let Some(head) = crate::head::fit(&x, &y, RIDGE) else {
            return EXIT_BAD_JOB;
        };
        for r in &mut results.cases {
            r.tuned = Some(head.predict(&r.features) as f32);
        }
        results.head = Some(head);
    }
    let Ok(out) = serde_json::to_vec(&results) else {
        return EXIT_MODEL_FAILED;
    };
    match std::io::stdout().write_all(&out) {
        Ok(()) => 0,
        Err(_) => EXIT_MODEL_FAILED,
    }
}

/// One escape attempt; (whether it got through, what happened).
fn try_escape(attempt: &str, arg: &str) -> (bool, String) {
    let show = |r: std::io::Result<String>| match r {
        Ok(s) => (true, s),
        Err(e) => (false, e.to_string()),
    };
    match attempt {
        "tcp" => show(
            std::net::TcpStream::connect_timeout(
                &arg.parse().unwrap_or_else(|_| ([127, 0, 0, 1], 1).into()),
                std::time::Duration::from_secs(2),
            )
            .map(|_| "connected".to_string()),
        ),
        "dns" => show(
            std::net::ToSocketAddrs::to_socket_addrs(&(arg, 443))
                .map(|a| format!("resolved {} addresses", a.count())),
        ),
        "read" => show(std::fs::read(arg).map(|b| String::from_utf8_lossy(&b).into_owned())),
        "write" => show(std::fs::write(arg, b"escaped").map(|()| "written".to_string())),
        "write-out" => show(
            std::fs::write(format!("{}/result.txt", crate::sandbox::OUT_INSIDE), b"ok")
                .map(|()| "written".to_string()),
        ),
        "exec" => show(
            std::process::Command::new(if arg.is_empty() { "/usr/bin/id" } else { arg })
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
        ),
        "fork-bomb" => {
            let mut processes = 0;
            for _ in 0..200 {
                if std::process::Command::new("/enclave/worker")
                    .spawn()
                    .is_ok()
                {
                    processes += 1;
                }
            }
            let mut threads = Vec::new();
            for _ in 0..10_000 {
                match std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(|| std::thread::sleep(std::time::Duration::from_secs(30)))
                {
                    Ok(t) => threads.push(t),
                    Err(_) => break,
                }
            }
            (
                processes > 0 || threads.len() >= 10_000,
                format!("{processes} processes, {} threads", threads.len()),
            )
        }
        "alloc" => {
            // Touch every page, 64 MiB at a time, up to 64 GiB.
            let mut held: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1024 {
                let mut v: Vec<u8> = Vec::new();
                if v.try_reserve_exact(64 << 20).is_err() {
                    return (
                        false,
                        format!("allocation refused after {} MiB", held.len() * 64),
                    );
                }
                v.resize(64 << 20, 1);
                held.push(v);
            }
            (true, format!("{} MiB", held.len() * 64))
        }
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        "output" => {
            let chunk = vec![b'x'; 1 << 20];
            let mut out = std::io::stdout();
            for _ in 0..4096 {
                if out.write_all(&chunk).is_err() {
                    break;
                }
            }
            (true, "wrote".into())
        }
        "ptrace" => {
            show(std::fs::read_to_string("/proc/1/environ").map(|_| "read another process".into()))
        }
        _ => (false, "unknown attempt".into()),
    }
}
