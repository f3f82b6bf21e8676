//! The sandbox every job runs in: a worker process, started by [`Launcher::run`],
//! that confines itself with [`confine`] before it reads a byte of its job.
//!
//! Layers, outermost first (each one alone would stop most escapes; together they
//! leave a compromised worker nothing to reach):
//!
//! 1. **Namespaces** (bubblewrap): new user (uid 65534), network (loopback only, down),
//!    PID, mount, IPC, UTS and cgroup namespaces; a root file system holding only
//!    `/usr` read-only, the worker binary, an empty `/tmp` and the job's output folder;
//!    no capabilities; an empty environment; a new session; killed with its parent.
//! 2. **cgroup v1** memory and pids controllers: a memory limit (the kernel kills the
//!    worker past it) and a process limit (a fork bomb stops at it).
//! 3. **rlimits**, lowered by the worker itself: address space, CPU seconds, open
//!    files, file size, no core dumps.
//! 4. **Landlock** (ABI 6 rules): read and execute under `/usr` and the worker binary,
//!    write only under the output folder; no TCP bind or connect; no signals or
//!    abstract sockets outside the sandbox.
//! 5. **seccomp**: no sockets, no exec, no ptrace, no mounts or namespaces, no bpf, no
//!    keyrings, no new processes (threads only), and the rest of the usual list.
//! 6. **A wall-clock timeout** and **an output cap**, enforced by the launcher.
//!
//! Layers 3 to 5 are applied by the worker to itself at the top of `main`, before any
//! thread exists (a seccomp filter that forbids `execve`, installed by the launcher,
//! would stop the launcher itself). If any layer cannot be set up the worker exits
//! with [`EXIT_NO_SANDBOX`] and the job is refused, never run unconfined.
//!
//! What crosses the boundary: the job (spec, model, decrypted inputs) on the worker's
//! stdin, its results on stdout; no file holds plaintext. What the launcher reports
//! back is a fixed vocabulary ([`Failure`]): a worker's own text never reaches a
//! researcher, so a compromised worker has no channel out but its typed results,
//! which disclosure control checks.
//!
//! This is the one module of the crate with `unsafe`: `pre_exec`, to move the child
//! into its cgroups between `fork` and `exec` (cgroup v1 has no `CLONE_INTO_CGROUP`).

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Exit code of a worker that could not confine itself.
pub const EXIT_NO_SANDBOX: i32 = 90;
/// Exit code of a worker whose job was malformed (spec, model or inputs).
pub const EXIT_BAD_JOB: i32 = 91;
/// Exit code of a worker whose model failed while running.
pub const EXIT_MODEL_FAILED: i32 = 92;

/// Where the output folder appears inside the sandbox.
pub const OUT_INSIDE: &str = "/out";
/// Where the worker binary appears inside the sandbox.
pub const WORKER_INSIDE: &str = "/enclave/worker";

/// The limits of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory (cgroup) and address space (rlimit), bytes.
    pub memory_bytes: u64,
    /// Processes and threads in the worker's cgroup.
    pub pids: u64,
    /// CPU seconds (rlimit).
    pub cpu_seconds: u64,
    /// Wall-clock seconds before the launcher kills the worker.
    pub wall_seconds: u64,
    /// Largest output on stdout, bytes; also the largest file it may write.
    pub output_bytes: u64,
    /// Open files.
    pub files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 2 << 30,
            pids: 32,
            cpu_seconds: 600,
            wall_seconds: 300,
            output_bytes: 64 << 20,
            files: 64,
        }
    }
}

impl Limits {
    /// The limits as worker arguments (the worker applies the rlimits itself).
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--memory-bytes={}", self.memory_bytes),
            format!("--cpu-seconds={}", self.cpu_seconds),
            format!("--output-bytes={}", self.output_bytes),
            format!("--files={}", self.files),
        ]
    }
}

/// Why a sandbox could not be set up, or a worker failed: a fixed vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "failure", content = "detail")]
pub enum Failure {
    /// The host cannot confine a worker (the detail names the missing layer).
    #[error(
        "the sandbox cannot be set up on this host: {0}; jobs are refused, never run unconfined"
    )]
    NoSandbox(String),
    /// Killed past the wall-clock limit.
    #[error("the worker ran past its time limit of {0} s and was killed")]
    Timeout(u64),
    /// Killed by the kernel past its memory limit.
    #[error("the worker went over its memory limit of {0} MiB and was killed")]
    Memory(u64),
    /// Its output went over the cap.
    #[error("the worker's output went over the cap of {0} bytes and was discarded")]
    OutputTooLarge(u64),
    /// The worker said its job was malformed.
    #[error("the job could not be read by the worker (model, spec or inputs malformed)")]
    BadJob,
    /// The model failed while running.
    #[error("the model failed while running")]
    ModelFailed,
    /// The worker crashed (a Rust panic in the model's engine: exit status 101).
    #[error("the worker crashed while running the model")]
    Crashed,
    /// Killed by a signal (CPU limit: SIGXCPU or SIGKILL; a seccomp kill: SIGSYS).
    #[error("the worker was killed by signal {0}")]
    Signal(i32),
    /// Exited with another status.
    #[error("the worker exited with status {0}")]
    Exit(i32),
    /// Its output could not be read as results.
    #[error("the worker's output was malformed")]
    Malformed,
}

/// What a worker run gave.
#[derive(Debug)]
pub struct Outcome {
    /// Its stdout, when it exited 0 within the limits.
    pub result: Result<Vec<u8>, Failure>,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
    /// Time from spawn until the worker asked for its input (sandbox start-up).
    pub started: Option<Duration>,
}

/// Starts workers in the sandbox.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// bubblewrap.
    pub bwrap: PathBuf,
    /// The worker executable (the `hbs` binary).
    pub worker: PathBuf,
    /// Where this launcher's cgroups go, under each v1 controller's mount.
    pub cgroup_root: PathBuf,
    /// The name of this launcher's cgroup folder under each controller.
    pub cgroup_name: String,
    /// Limits.
    pub limits: Limits,
}

/// The cgroup v1 controllers a worker is confined by.
const CONTROLLERS: &[&str] = &["memory", "pids"];

impl Launcher {
    /// A launcher for `worker`, with bubblewrap from PATH and the system's cgroup v1
    /// mounts; [`Launcher::check`] says whether it can confine anything here.
    pub fn new(worker: PathBuf, limits: Limits) -> Launcher {
        Launcher {
            bwrap: find_on_path("bwrap").unwrap_or_else(|| PathBuf::from("/usr/bin/bwrap")),
            worker,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_name: "hbs".into(),
            limits,
        }
    }

    /// Whether this host has what the sandbox needs (bubblewrap, the cgroup v1 memory
    /// and pids controllers, writable); Landlock and seccomp are checked by each
    /// worker, which refuses to run without them.
    pub fn check(&self) -> Result<(), Failure> {
        if !self.bwrap.is_file() {
            return Err(Failure::NoSandbox(format!(
                "bubblewrap not found at {} (Debian package bubblewrap)",
                self.bwrap.display()
            )));
        }
        if !self.worker.is_file() {
            return Err(Failure::NoSandbox(
                "the worker executable is missing".into(),
            ));
        }
        for c in CONTROLLERS {
            let dir = self.cgroup_root.join(c);
            if !dir.join("cgroup.procs").is_file() {
                return Err(Failure::NoSandbox(format!(
                    "no cgroup v1 {c} controller mounted at {}",
                    dir.display()
                )));
            }
            let parent = dir.join(&self.cgroup_name);
            std::fs::create_dir_all(&parent).map_err(|e| {
                Failure::NoSandbox(format!(
                    "cannot create the cgroup {}: {e}",
                    parent.display()
                ))
            })?;
        }
        Ok(())
    }

    /// The bubblewrap command line for one worker with `out` as its output folder.
    fn command(&self, args: &[String], out: &Path) -> Command {
        let mut c = Command::new(&self.bwrap);
        c.env_clear()
            .args([
                "--unshare-all",
                "--die-with-parent",
                "--new-session",
                "--clearenv",
            ])
            .args(["--cap-drop", "ALL", "--uid", "65534", "--gid", "65534"])
            .args(["--ro-bind", "/usr", "/usr"])
            .args(["--symlink", "usr/lib", "/lib"])
            .args(["--symlink", "usr/lib64", "/lib64"])
            .args(["--symlink", "usr/bin", "/bin"])
            .args(["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"])
            .arg("--ro-bind")
            .arg(&self.worker)
            .arg(WORKER_INSIDE)
            .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
            .arg("--bind")
            .arg(out)
            .arg(OUT_INSIDE)
            .args(["--chdir", OUT_INSIDE, WORKER_INSIDE, "enclave-worker"])
            .args(self.limits.args())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        c
    }

    /// Runs one worker: `args` after `enclave-worker`, `input` on its stdin, `out` its
    /// only writable folder. Blocks until the worker ends or is killed.
    pub fn run(&self, args: &[String], input: Vec<u8>, out: &Path) -> Outcome {
        let t = Instant::now();
        let failed = |f: Failure| Outcome {
            result: Err(f),
            elapsed: t.elapsed(),
            started: None,
        };
        if let Err(f) = self.check() {
            return failed(f);
        }
        let group = match Group::create(self, &self.limits) {
            Ok(g) => g,
            Err(f) => return failed(f),
        };
        let mut cmd = self.command(args, out);
        let procs: Vec<std::os::fd::OwnedFd> = match group
            .dirs
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .map(std::os::fd::OwnedFd::from)
            })
            .collect::<std::io::Result<_>>()
        {
            Ok(p) => p,
            Err(e) => return failed(Failure::NoSandbox(format!("cgroup: {e}"))),
        };
        let raw: Vec<i32> = procs.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        // SAFETY: the closure runs in the child between fork and exec. It only calls
        // write(2) on descriptors opened before the fork (no allocation, no locks),
        // which is async-signal-safe. Writing "0" to a v1 `cgroup.procs` moves the
        // writing process, so bubblewrap and everything it starts are in the groups
        // before any of them runs.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                for fd in &raw {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                    rustix::io::write(fd, b"0")?;
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return failed(Failure::NoSandbox(format!("cannot start bubblewrap: {e}"))),
        };
        drop(procs);
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return failed(Failure::NoSandbox("no pipes to the worker".into()));
        };
        // Input on its own thread: the worker may end (or be killed) before reading it all.
        let (tx_started, rx_started) = std::sync::mpsc::channel();
        let feeder = std::thread::spawn(move || {
            // The first write returns once the worker has confined itself and reads.
            let first = input.len().min(1);
            let ok = stdin.write_all(&input[..first]).is_ok();
            let _ = tx_started.send(Instant::now());
            if ok {
                let _ = stdin.write_all(&input[first..]);
            }
        });
        let cap = self.limits.output_bytes;
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let r = (&mut stdout).take(cap + 1).read_to_end(&mut buf);
            (buf, r.is_ok())
        });
        let deadline = t + Duration::from_secs(self.limits.wall_seconds);
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => {
                    timed_out = true;
                    group.kill_all();
                    let _ = child.kill();
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => break None,
            }
        };
        group.kill_all();
        let elapsed = t.elapsed();
        let _ = feeder.join();
        let started = rx_started.try_recv().ok().map(|at| at - t);
        let (buf, _) = reader.join().unwrap_or_default();
        let oom = group.oom_killed();
        drop(group);
        let result = if timed_out {
            Err(Failure::Timeout(self.limits.wall_seconds))
        } else if oom {
            Err(Failure::Memory(self.limits.memory_bytes >> 20))
        } else if buf.len() as u64 > cap {
            Err(Failure::OutputTooLarge(cap))
        } else {
            match status {
                Some(s) if s.success() => Ok(buf),
                Some(s) => Err(match (s.code(), s.signal()) {
                    (Some(EXIT_NO_SANDBOX), _) => Failure::NoSandbox(
                        "the worker could not confine itself (Landlock, seccomp or rlimits)".into(),
                    ),
                    (Some(EXIT_BAD_JOB), _) => Failure::BadJob,
                    (Some(EXIT_MODEL_FAILED), _) => Failure::ModelFailed,
                    (Some(101), _) => Failure::Crashed,
                    // bubblewrap reports its child's death by signal as 128 + signal.
                    (Some(c), _) if c > 128 && c < 160 => Failure::Signal(c - 128),
                    (Some(c), _) => Failure::Exit(c),
                    (None, Some(sig)) => Failure::Signal(sig),
                    (None, None) => Failure::Exit(-1),
                }),
                None => Err(Failure::Exit(-1)),
            }
        };
        Outcome {
            result,
            elapsed,
            started,
        }
    }
}

/// One worker's cgroups; removed when dropped.
struct Group {
    dirs: Vec<PathBuf>,
}

impl Group {
    fn create(l: &Launcher, limits: &Limits) -> Result<Group, Failure> {
        let mut id = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
            .map_err(|_| Failure::NoSandbox("system random generator failed".into()))?;
        let name = hex(&id);
        let mut g = Group { dirs: Vec::new() };
        for c in CONTROLLERS {
            let dir = l.cgroup_root.join(c).join(&l.cgroup_name).join(&name);
            std::fs::create_dir(&dir)
                .map_err(|e| Failure::NoSandbox(format!("cannot create cgroup {c}: {e}")))?;
            g.dirs.push(dir);
        }
        let set = |dir: &Path, file: &str, v: u64| {
            std::fs::write(dir.join(file), v.to_string())
                .map_err(|e| Failure::NoSandbox(format!("cannot set {file}: {e}")))
        };
        set(&g.dirs[0], "memory.limit_in_bytes", limits.memory_bytes)?;
        // Swap counts too where the kernel accounts it.
        let memsw = g.dirs[0].join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            set(
                &g.dirs[0],
                "memory.memsw.limit_in_bytes",
                limits.memory_bytes,
            )?;
        }
        set(&g.dirs[1], "pids.max", limits.pids)?;
        Ok(g)
    }

    fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for d in &self.dirs {
            if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// SIGKILLs every process left in the group (a fork bomb's children included).
    fn kill_all(&self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                if let Some(pid) = rustix::process::Pid::from_raw(p) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the kernel's OOM killer acted in the memory group.
    fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.dirs[0].join("memory.oom_control"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(|v| v.trim().parse::<u64>()))
            })
            .and_then(Result::ok)
            .is_some_and(|n| n > 0)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_all();
        for d in &self.dirs {
            // A cgroup can be removed once its last process is gone (reaped).
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// What the worker confines itself to.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// rlimits, from the launcher's arguments.
    pub limits: Limits,
    /// Folders it may read (and execute from).
    pub read: Vec<PathBuf>,
    /// The folder it may write.
    pub write: PathBuf,
}

impl Confinement {
    /// The confinement inside the sandbox that [`Launcher`] builds.
    pub fn standard(limits: Limits) -> Confinement {
        Confinement {
            limits,
            read: vec![PathBuf::from("/usr"), PathBuf::from("/enclave")],
            write: PathBuf::from(OUT_INSIDE),
        }
    }
}

/// Confines the calling process: rlimits, then Landlock, then seccomp. Call it first
/// thing in the worker's `main`, before any thread exists; on error, exit with
/// [`EXIT_NO_SANDBOX`].
pub fn confine(c: &Confinement) -> Result<(), String> {
    rlimits(&c.limits)?;
    landlock(c)?;
    seccomp()?;
    Ok(())
}

fn rlimits(l: &Limits) -> Result<(), String> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let set = |r: Resource, v: u64, what: &str| {
        setrlimit(
            r,
            Rlimit {
                current: Some(v),
                maximum: Some(v),
            },
        )
        .map_err(|e| format!("rlimit {what}: {e}"))
    };
    set(Resource::As, l.memory_bytes, "address space")?;
    set(Resource::Cpu, l.cpu_seconds, "cpu")?;
    set(Resource::Nofile, l.files, "open files")?;
    set(Resource::Fsize, l.output_bytes, "file size")?;
    set(Resource::Core, 0, "core")?;
    Ok(())
}

fn landlock(c: &Confinement) -> Result<(), String> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    let abi = ABI::V6;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(&c.read, AccessFs::from_read(abi))))
        .and_then(|r| r.add_rules(path_beneath_rules([&c.write], AccessFs::from_all(abi))))
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("landlock: {e}"))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err("landlock: not fully enforced by this kernel".into());
    }
    Ok(())
}

/// The system calls a worker may not make.
fn denied() -> Vec<i64> {
    use libc::*;
    vec![
        SYS_socket,
        SYS_socketpair,
        SYS_connect,
        SYS_bind,
        SYS_listen,
        SYS_accept,
        SYS_accept4,
        SYS_execve,
        SYS_execveat,
        SYS_fork,
        SYS_vfork,
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_chroot,
        SYS_unshare,
        SYS_setns,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_userfaultfd,
        SYS_io_uring_setup,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_personality,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_fanotify_init,
        SYS_syslog,
        SYS_acct,
        SYS_quotactl,
        SYS_settimeofday,
        SYS_clock_settime,
        SYS_adjtimex,
        SYS_mknod,
        SYS_mknodat,
    ]
}

fn seccomp() -> Result<(), String> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e:?}"))?;
    let mut rules: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
        denied().into_iter().map(|s| (s, vec![])).collect();
    // clone: threads only. A clone without CLONE_THREAD (a new process) is refused.
    let no_thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(|e| format!("seccomp: {e}"))?;
    rules.insert(libc::SYS_clone, vec![no_thread]);
    let deny: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| format!("seccomp: {e}"))?;
    // clone3 passes its flags in memory a filter cannot read: answer ENOSYS, so the C
    // library falls back to clone, which the rule above checks.
    let clone3: BpfProgram = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| format!("seccomp: {e}"))?;
    seccompiler::apply_filter(&clone3).map_err(|e| format!("seccomp: {e}"))?;
    seccompiler::apply_filter(&deny).map_err(|e| format!("seccomp: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_its_layers_nothing_runs_unconfined() {
        let mut l = Launcher::new(PathBuf::from("/proc/self/exe"), Limits::default());
        l.bwrap = PathBuf::from("/nonexistent/bwrap");
        let o = l.run(&[], b"job".to_vec(), Path::new("/tmp"));
        match o.result {
            Err(Failure::NoSandbox(why)) => assert!(why.contains("bubblewrap"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut l = Launcher::new(PathBuf::from("/proc/self/exe"), Limits::default());
        l.cgroup_root = PathBuf::from("/nonexistent/cgroup");
        if l.bwrap.is_file() {
            match l.run(&[], Vec::new(), Path::new("/tmp")).result {
                Err(Failure::NoSandbox(why)) => assert!(why.contains("cgroup v1"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(Failure::NoSandbox("x".into())
            .to_string()
            .contains("never run unconfined"));
    }
}
