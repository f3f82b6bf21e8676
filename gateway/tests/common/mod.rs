//! Helpers shared by the gateway's integration tests: a running `hbs serve`, curl and
//! openssl with client certificates, the Python DICOMweb client, synthetic corpora.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hbs serve` on `data` at a free port, with the embedded defaults.
pub fn start(data: &Path) -> Server {
    start_with(data, &[])
}

/// `hbs serve` on `data` at a free port, with more arguments.
pub fn start_with(data: &Path, args: &[&str]) -> Server {
    start_env(data, args, &[])
}

/// `hbs serve` on `data` at a free port, with more arguments and environment variables.
pub fn start_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("HBS_DATABASE_URL")
        .env_remove("HBS_SIGNED_ONLY_SITES")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let port = loop {
        let line = lines
            .next()
            .expect("hbs serve printed its address")
            .unwrap();
        if let Some(addr) = line.strip_prefix("hbs gateway listening on https://") {
            break addr.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        port,
        data: data.to_path_buf(),
    }
}

/// curl with a client certificate (or none); returns the HTTP status, or None when the
/// TLS handshake or connection failed.
pub fn curl(s: &Server, path: &str, cert_dir: Option<&Path>) -> (Option<u16>, String) {
    curl_method(s, "GET", path, cert_dir)
}

pub fn curl_method(
    s: &Server,
    method: &str,
    path: &str,
    cert_dir: Option<&Path>,
) -> (Option<u16>, String) {
    let mut c = Command::new("curl");
    c.args(["-X", method]);
    c.args(["-s", "-w", "\n%{http_code}", "--max-time", "10", "--cacert"])
        .arg(s.data.join("ca/ca.pem"));
    if let Some(d) = cert_dir {
        c.arg("--cert")
            .arg(d.join("cert.pem"))
            .arg("--key")
            .arg(d.join("key.pem"));
    }
    let o = c
        .arg(format!("https://127.0.0.1:{}{path}", s.port))
        .output()
        .expect("curl is installed");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "000"));
    let code: u16 = code.trim().parse().unwrap_or(0);
    (
        (o.status.success() && code != 0).then_some(code),
        body.to_string(),
    )
}

pub fn openssl_ca_sign(data: &Path, dir: &Path, san: &str, days: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let ok = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=t",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .args([
            "-addext",
            &format!("subjectAltName={san}"),
            "-addext",
            "extendedKeyUsage=clientAuth",
            "-out",
        ])
        .arg(dir.join("req.csr"))
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    let ok = Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-copy_extensions",
            "copy",
            "-days",
            &days.to_string(),
            "-in",
        ])
        .arg(dir.join("req.csr"))
        .arg("-CA")
        .arg(data.join("ca/ca.pem"))
        .arg("-CAkey")
        .arg(data.join("ca/ca.key"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
}

/// Writes a synthetic corpus of `patients` patients at one site, two slices per series.
pub fn synth(corpus: &Path, patients: usize) {
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["synth", "--sites", "1", "--slices", "2", "--patients"])
        .arg(patients.to_string())
        .arg("--out")
        .arg(corpus)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

pub fn python() -> Option<PathBuf> {
    let p = std::env::var_os("HBS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("python with dicomweb-client is required under CI=true (run bash .ci/run)");
    }
    eprintln!(
        "SKIPPED: STOW-RS with dicomweb-client: no python at {}",
        p.display()
    );
    None
}

/// Runs the standard Python dicomweb-client against the gateway.
pub fn dicomweb_store(
    s: &Server,
    cert: &Path,
    files: &[PathBuf],
    study: Option<&str>,
) -> serde_json::Value {
    let py = python().expect("checked by the caller");
    let mut c = Command::new(py);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/stow_client.py"))
        .arg(format!("https://127.0.0.1:{}", s.port))
        .arg(s.data.join("ca/ca.pem"))
        .arg(cert.join("cert.pem"))
        .arg(cert.join("key.pem"));
    if let Some(st) = study {
        c.args(["--study", st]);
    }
    let o = c.args(files).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

pub fn stats(data: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["vault", "stats", "--data"])
        .arg(data)
        .output()
        .unwrap();
    assert!(o.status.success());
    serde_json::from_slice(&o.stdout).unwrap()
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Sends a multipart/related body of `parts` (content type, bytes) with curl; returns
/// (status, body, headers).
pub fn post_parts(
    s: &Server,
    cert: &Path,
    parts: &[(&str, Vec<u8>)],
    dir: &Path,
) -> (String, String, String) {
    post_parts_to(s, cert, "/dicomweb/studies", parts, dir)
}

/// Like [`post_parts`], to another path.
pub fn post_parts_to(
    s: &Server,
    cert: &Path,
    path: &str,
    parts: &[(&str, Vec<u8>)],
    dir: &Path,
) -> (String, String, String) {
    let boundary = "hbs-test-boundary-2";
    let mut body = Vec::new();
    for (ct, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let body_file = dir.join("post.bin");
    let headers_file = dir.join("post.headers");
    std::fs::write(&body_file, &body).unwrap();
    let o = Command::new("curl")
        .arg("-D")
        .arg(&headers_file)
        .args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.data.join("ca/ca.pem"))
        .arg("--cert")
        .arg(cert.join("cert.pem"))
        .arg("--key")
        .arg(cert.join("key.pem"))
        .args([
            "-H",
            &format!(
                "Content-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}"
            ),
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("https://127.0.0.1:{}{path}", s.port))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (json, code) = out.rsplit_once('\n').unwrap();
    (
        code.to_string(),
        json.to_string(),
        std::fs::read_to_string(&headers_file).unwrap_or_default(),
    )
}

/// Signs `data` with a PEM key through the openssl command line; returns base64 DER.
pub fn openssl_sign(key: &Path, data: &[u8], dir: &Path) -> Vec<u8> {
    let f = dir.join("to-sign.bin");
    let sig = dir.join("sig.der");
    std::fs::write(&f, data).unwrap();
    let ok = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg("-out")
        .arg(&sig)
        .arg(&f)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(&sig).unwrap())
        .into_bytes()
}

/// `hbs ca issue` into `out` (cert.pem, key.pem, ca.pem).
pub fn issue(data: &Path, role: &str, name: &str, site: Option<&str>, out: &Path) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hbs"));
    c.args(["ca", "issue", "--role", role, "--name", name, "--data"])
        .arg(data)
        .arg("--out")
        .arg(out);
    if let Some(site) = site {
        c.args(["--site", site]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// GET with curl and a client certificate; returns (status, body, response headers).
pub fn curl_get_headers(s: &Server, path: &str, cert_dir: &Path) -> (u16, String, String) {
    let headers = cert_dir.join("last.headers");
    let o = Command::new("curl")
        .arg("-D")
        .arg(&headers)
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "10", "--cacert"])
        .arg(s.data.join("ca/ca.pem"))
        .arg("--cert")
        .arg(cert_dir.join("cert.pem"))
        .arg("--key")
        .arg(cert_dir.join("key.pem"))
        .arg(format!("https://127.0.0.1:{}{path}", s.port))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        std::fs::read_to_string(&headers).unwrap_or_default(),
    )
}

/// Runs the standard Python dicomweb-client's search (QIDO-RS) against the gateway:
/// `level` is studies, series or instances; `args` are passed on (--study UID,
/// --series UID, --limit N, --offset N, KEY=VALUE filters).
pub fn dicomweb_search(s: &Server, cert: &Path, level: &str, args: &[&str]) -> serde_json::Value {
    let py = python().expect("checked by the caller");
    let o = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/qido_client.py"))
        .arg(format!("https://127.0.0.1:{}", s.port))
        .arg(s.data.join("ca/ca.pem"))
        .arg(cert.join("cert.pem"))
        .arg(cert.join("key.pem"))
        .arg(level)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Runs `hbs ARGS` as the holder of the certificates in `who` against `s`.
pub fn hbs_as(s: &Server, who: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(args)
        .arg("--gateway")
        .arg(format!("https://127.0.0.1:{}", s.port))
        .arg("--cert")
        .arg(who.join("cert.pem"))
        .arg("--key")
        .arg(who.join("key.pem"))
        .arg("--ca")
        .arg(s.data.join("ca/ca.pem"))
        .env_remove("HBS_GATEWAY")
        .env_remove("HBS_DATABASE_URL")
        .output()
        .unwrap()
}

/// A data folder holding a synthetic corpus of `patients` patients from SITE_A
/// (`hbs init`, `hbs ingest`), served.
pub fn served_corpus(dir: &Path, patients: usize) -> Server {
    let (data, corpus) = (dir.join("data"), dir.join("corpus"));
    synth(&corpus, patients);
    for args in [
        vec!["init"],
        vec![
            "ingest",
            "--site",
            "SITE_A",
            "--jobs",
            "4",
            "--in",
            corpus.to_str().unwrap(),
        ],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
            .args(&args)
            .arg("--data")
            .arg(&data)
            .env_remove("HBS_DATABASE_URL")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    start(&data)
}

/// A command's JSON answer; fails the test, with its output, when it did not succeed.
pub fn ok_json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&o.stdout)))
}
