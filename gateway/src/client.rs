//! The gateway's own HTTPS client: mTLS with a platform certificate, and STOW-RS request
//! bodies. Used by `hbs contribute` and by the STOW-RS benchmark.

use std::path::Path;

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
