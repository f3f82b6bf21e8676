//! The gateway's own HTTPS client: mTLS with a platform certificate, and STOW-RS request
//! bodies. Used by every client command (`hbs contribute`, `hbs whoami`, `hbs search`)
//! and by the STOW-RS benchmark.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
use openssl::x509::X509;

/// A TLS connector that trusts only the platform CA and presents `cert`/`key`.
pub fn connector(ca: &Path, cert: &Path, key: &Path) -> Result<SslConnector> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_ca_file(ca)
        .with_context(|| format!("CA {}", ca.display()))?;
    b.set_certificate_chain_file(cert)
        .with_context(|| format!("certificate {}", cert.display()))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .with_context(|| format!("key {}", key.display()))?;
    Ok(b.build())
}

/// An HTTP/1.1 connection over mTLS, and the certificate the gateway presented.
pub async fn connect(
    connector: &SslConnector,
    host: &str,
    port: u16,
) -> Result<(hyper::client::conn::http1::SendRequest<Full<Bytes>>, X509)> {
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    // Requests go out in pieces (TLS records, headers, body): no Nagle delay between them.
    let _ = tcp.set_nodelay(true);
    let ssl = connector.configure()?.into_ssl(host)?;
    let mut tls = tokio_openssl::SslStream::new(ssl, tcp)?;
    std::pin::Pin::new(&mut tls)
        .connect()
        .await
        .context("TLS handshake with the gateway failed (certificate refused or revoked?)")?;
    let server_cert = tls
        .ssl()
        .peer_certificate()
        .context("the gateway presented no certificate")?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok((sender, server_cert))
}

/// A STOW-RS request: `parts` (content type, bytes) as `multipart/related`.
pub fn stow_request(
    host: &str,
    boundary: &str,
    parts: &[(&str, &[u8])],
) -> Result<hyper::Request<Full<Bytes>>> {
    let mut body = Vec::with_capacity(parts.iter().map(|(_, b)| b.len() + 64).sum());
    for (ct, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: {ct}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Ok(hyper::Request::post("/dicomweb/studies")
        .header("host", host)
        .header(
            "content-type",
            format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"),
        )
        .body(Full::new(Bytes::from(body)))?)
}

/// How a client command reaches the gateway, and who it is there. Every client command
/// takes these flags (or the `HBS_*` variables).
#[derive(clap::Args, Clone, Debug)]
pub struct ClientArgs {
    /// The gateway.
    #[arg(long, env = "HBS_GATEWAY", default_value = "https://127.0.0.1:8443")]
    pub gateway: String,
    /// Your certificate (PEM), issued by the platform CA.
    #[arg(long, env = "HBS_CERT")]
    pub cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, env = "HBS_KEY")]
    pub key: PathBuf,
    /// The platform CA (PEM), the only issuer the gateway's certificate is trusted from.
    #[arg(long, env = "HBS_CA")]
    pub ca: PathBuf,
    /// Machine-readable output (JSON on stdout).
    #[arg(long)]
    pub json: bool,
}

/// An answer from the gateway: status, headers, body, and the certificate it presented.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: Vec<u8>,
    /// The gateway's certificate, as verified in the handshake.
    pub server_cert: X509,
}

impl ClientArgs {
    /// Host and port of the gateway URL (`https://host[:port]`, port 8443 by default).
    pub fn host_port(&self) -> Result<(String, u16)> {
        let rest = self
            .gateway
            .strip_prefix("https://")
            .context("the gateway URL must start with https://")?;
        let hp = rest.split('/').next().unwrap_or(rest);
        let (h, p) = hp.rsplit_once(':').unwrap_or((hp, "8443"));
        Ok((
            h.to_string(),
            p.parse().context("bad port in the gateway URL")?,
        ))
    }

    /// A connector with this caller's certificate.
    pub fn connector(&self) -> Result<SslConnector> {
        connector(&self.ca, &self.cert, &self.key)
    }

    /// Sends one request over a new mTLS connection and reads the whole answer.
    pub async fn send(
        &self,
        connector: &SslConnector,
        req: impl FnOnce(&str) -> Result<hyper::Request<Full<Bytes>>>,
    ) -> Result<Answer> {
        let (host, port) = self.host_port()?;
        let (mut sender, server_cert) = connect(connector, &host, port).await?;
        let resp = sender.send_request(req(&host)?).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await?
            .to_bytes()
            .to_vec();
        Ok(Answer {
            status,
            headers,
            body,
            server_cert,
        })
    }

    /// `GET path_and_query`.
    pub async fn get(&self, path_and_query: &str) -> Result<Answer> {
        self.get_with(path_and_query, &[]).await
    }

    /// `GET path_and_query` with extra headers.
    pub async fn get_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Result<Answer> {
        let connector = self.connector()?;
        self.send(&connector, |host| {
            let mut r = hyper::Request::get(path_and_query)
                .header("host", host)
                .header("accept", "application/dicom+json, application/json");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            Ok(r.body(Full::new(Bytes::new()))?)
        })
        .await
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass as they are).
pub fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
