//! `hbs serve` with real clients: curl and `openssl s_client` with client certificates.
//! The role matrix covers every route of the gateway's own table; the TLS checks cover
//! no certificate, a foreign CA, a revoked, an expired and a malformed certificate.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ROLES: [&str; 6] = [
    "data-provider",
    "researcher",
    "ethics-board",
    "auditor",
    "operator",
    "compute",
];

/// The expected outcome of every route for every role. A route the gateway has and this
/// table lacks fails the test: add its row when you add a route.
fn expected(method: &str, path: &str, role: &str) -> Option<u16> {
    let all = 200;
    let ops = if matches!(role, "operator" | "auditor") {
        200
    } else {
        403
    };
    match (method, path) {
        ("GET", "/healthz") => Some(all),
        ("GET", "/whoami") => Some(all),
        ("GET", "/readyz") => Some(ops),
        ("GET", "/metrics") => Some(ops),
        _ => None,
    }
}

struct Server {
    child: Child,
    port: u16,
    data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("HBS_DATABASE_URL")
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
fn curl(s: &Server, path: &str, cert_dir: Option<&Path>) -> (Option<u16>, String) {
    let mut c = Command::new("curl");
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

fn openssl_ca_sign(data: &Path, dir: &Path, san: &str, days: u32) {
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

#[test]
fn every_route_times_every_caller() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = start(&data);
    let dev = data.join("dev-certs");

    // The gateway's own route table; every route must have a row above.
    let table: serde_json::Value = serde_json::from_slice(
        &Command::new(env!("CARGO_BIN_EXE_hbs"))
            .arg("routes")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let routes = table.as_array().unwrap();
    assert!(routes.len() >= 4);
    for r in routes {
        let (m, p) = (r["method"].as_str().unwrap(), r["path"].as_str().unwrap());
        for role in ROLES {
            let want = expected(m, p, role)
                .unwrap_or_else(|| panic!("route {m} {p} has no row in the test matrix"));
            assert_eq!(m, "GET", "extend the matrix's client for {m}");
            let (got, body) = curl(&s, p, Some(&dev.join(role)));
            assert_eq!(got, Some(want), "{role} {m} {p}: {body}");
        }
        // No certificate: the handshake fails, nothing is answered.
        assert_eq!(curl(&s, p, None).0, None, "no certificate on {p}");
    }
    // An unknown route is not found for anyone (deny by default is the route table).
    assert_eq!(
        curl(&s, "/nothing", Some(&dev.join("operator"))).0,
        Some(404)
    );

    // Two clients, two principals: the identity is the client's own certificate.
    let (_, a) = curl(&s, "/whoami", Some(&dev.join("auditor")));
    let (_, b) = curl(&s, "/whoami", Some(&dev.join("data-provider")));
    let a: serde_json::Value = serde_json::from_str(&a).unwrap();
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(a["role"], "auditor");
    assert_eq!(b["role"], "data-provider");
    assert_eq!(b["site"], "SITE_A");
    assert_ne!(a["serial"], b["serial"]);

    // Metrics count what happened.
    let (_, m) = curl(&s, "/metrics", Some(&dev.join("operator")));
    assert!(
        m.contains("hbs_requests_total{method=\"GET\",route=\"/whoami\",status=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("hbs_tls_refused_total"), "{m}");
}

#[test]
fn untrusted_revoked_expired_and_malformed_certificates_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    let s = start(&data);
    let dev = data.join("dev-certs");
    assert_eq!(
        curl(&s, "/healthz", Some(&dev.join("researcher"))).0,
        Some(200)
    );

    // A certificate from another CA.
    let other = d.path().join("other");
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["init", "--data"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        curl(&s, "/healthz", Some(&other.join("dev-certs/researcher"))).0,
        None
    );

    // Signed by our CA but with two URI SANs: not a SPIFFE identity.
    let two = d.path().join("two");
    openssl_ca_sign(
        &data,
        &two,
        "URI:spiffe://prostatenet/auditor/a,URI:spiffe://prostatenet/auditor/b",
        1,
    );
    assert_eq!(curl(&s, "/healthz", Some(&two)).0, None);
    // Signed by our CA, well formed: accepted (the control for the case above).
    let good = d.path().join("good");
    openssl_ca_sign(&data, &good, "URI:spiffe://prostatenet/auditor/good", 1);
    assert_eq!(curl(&s, "/healthz", Some(&good)).0, Some(200));

    // Expired: valid for zero days.
    let expired = d.path().join("expired");
    openssl_ca_sign(&data, &expired, "URI:spiffe://prostatenet/auditor/late", 0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(curl(&s, "/healthz", Some(&expired)).0, None);

    // Revoked while the gateway runs: refused within seconds, no restart.
    let o = Command::new(env!("CARGO_BIN_EXE_hbs"))
        .args(["ca", "revoke", "--data"])
        .arg(&data)
        .arg("--cert")
        .arg(dev.join("researcher/cert.pem"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut refused = false;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        if curl(&s, "/healthz", Some(&dev.join("researcher")))
            .0
            .is_none()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "a revoked certificate is refused within 5 seconds");
    assert_eq!(
        curl(&s, "/healthz", Some(&dev.join("auditor"))).0,
        Some(200)
    );

    // openssl s_client: TLS 1.3, and a client without a certificate gets no session.
    let ok = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-connect",
            &format!("127.0.0.1:{}", s.port),
            "-CAfile",
        ])
        .arg(data.join("ca/ca.pem"))
        .arg("-cert")
        .arg(dev.join("operator/cert.pem"))
        .arg("-key")
        .arg(dev.join("operator/key.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&ok.stderr).to_string() + &String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("TLSv1.3"), "{text}");
    let tls12 = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-tls1_2",
            "-connect",
            &format!("127.0.0.1:{}", s.port),
            "-CAfile",
        ])
        .arg(data.join("ca/ca.pem"))
        .arg("-cert")
        .arg(dev.join("operator/cert.pem"))
        .arg("-key")
        .arg(dev.join("operator/key.pem"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!tls12.status.success(), "TLS 1.2 is refused");
}
