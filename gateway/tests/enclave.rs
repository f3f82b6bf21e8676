//! The compute enclave's sandbox against escape attempts: each attempt runs in the
//! sandbox a job gets (`hbs enclave probe`), and each is checked from outside where the
//! outside can see it (the listener got no connection, the file was not written, the
//! secret is not in the output), not only from the worker's own report.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn probe(attempt: &str, arg: &str, extra: &[&str]) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["enclave", "probe", attempt, "--arg", arg])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "hbs enclave probe {attempt}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The attempt ran to its end in the sandbox and reports it did not get through.
fn refused(v: &Value) -> String {
    assert_eq!(v["worker"]["succeeded"], false, "{v}");
    v["worker"]["detail"].as_str().unwrap().to_string()
}

#[test]
fn the_sandbox_is_there_and_starts_quickly() {
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["enclave", "check", "--json", "--runs", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sandbox"], "ok");
    // The positive control: the one folder a job may write.
    let v = probe("write-out", "", &[]);
    assert_eq!(v["worker"]["succeeded"], true, "{v}");
    assert_eq!(v["written"], serde_json::json!(["result.txt"]));
}

#[test]
fn no_network_no_tcp_no_names() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let detail = refused(&probe("tcp", &addr, &[]));
    assert!(detail.contains("not permitted"), "{detail}");
    assert!(listener.accept().is_err(), "the listener got a connection");
    refused(&probe("dns", "localhost", &[]));
    refused(&probe("dns", "example.org", &[]));
}

#[test]
fn nothing_outside_is_read_or_written() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("kek.key");
    std::fs::write(&secret, "SECRET-KEY-MATERIAL-4f1d").unwrap();
    for path in [
        secret.to_str().unwrap(),
        "/etc/passwd",
        "/proc/self/environ",
    ] {
        let v = probe("read", path, &[]);
        refused(&v);
        assert!(!v.to_string().contains("SECRET-KEY-MATERIAL"), "{v}");
    }
    // /proc/1 is the sandbox's own init at most, and not readable either.
    refused(&probe("ptrace", "", &[]));
    let target = dir.path().join("escaped.txt");
    refused(&probe("write", target.to_str().unwrap(), &[]));
    assert!(
        !target.exists(),
        "the worker wrote outside its output folder"
    );
    refused(&probe("write", "/tmp/escaped.txt", &[]));
    refused(&probe("write", "/usr/escaped.txt", &[]));
}

#[test]
fn no_programs_no_processes() {
    let detail = refused(&probe("exec", "/usr/bin/id", &[]));
    assert!(
        detail.contains("not permitted") || detail.contains("denied"),
        "{detail}"
    );
    let v = probe("fork-bomb", "", &[]);
    if v.get("failure").is_some() {
        // The C library may abort the worker when a thread cannot be created: contained
        // too, and the launcher killed whatever was left in its cgroup.
        assert_eq!(v["failure"]["failure"], "signal", "{v}");
        return;
    }
    let detail = refused(&v);
    // No process at all; threads stop at the cgroup's pids limit (32).
    assert!(detail.starts_with("0 processes"), "{detail}");
    let threads: usize = detail
        .split(", ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(threads < 32, "{detail}");
}

#[test]
fn memory_time_and_output_are_bounded_and_reported() {
    // Past the limit: the allocation is refused (address-space rlimit) or the kernel
    // kills the worker (cgroup); either way it never gets its 64 GiB.
    let v = probe("alloc", "", &["--memory-mib", "256"]);
    match v.get("failure") {
        Some(f) => assert_eq!(f["failure"], "memory", "{v}"),
        None => {
            let d = refused(&v);
            assert!(d.contains("allocation refused"), "{d}");
        }
    }
    let t = std::time::Instant::now();
    let v = probe("loop", "", &["--wall-seconds", "2"]);
    assert_eq!(v["failure"]["failure"], "timeout", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("time limit"));
    assert!(t.elapsed().as_secs() < 30);
    let v = probe("loop", "", &["--wall-seconds", "30", "--cpu-seconds", "1"]);
    // The CPU rlimit: SIGXCPU (24), or SIGKILL (9) at the hard limit.
    assert_eq!(v["failure"]["failure"], "signal", "{v}");
    let v = probe("output", "", &["--output-bytes", "100000"]);
    assert_eq!(v["failure"]["failure"], "output_too_large", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("100000 bytes"));
}

#[test]
fn no_cgroup_is_left_behind() {
    probe("write-out", "", &[]);
    for c in ["memory", "pids"] {
        let dir = Path::new("/sys/fs/cgroup").join(c).join("hbs");
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .collect();
        // Other tests may be running a worker right now; none of theirs outlives it, so
        // a few at most.
        assert!(left.len() <= 8, "{c}: {} cgroups left", left.len());
    }
}
