//! `hbs serve`: the HTTPS gateway. TLS 1.3 through openssl, client certificate mandatory,
//! verified against the platform CA and its CRL; there is no setting that turns any of it
//! off.
//!
//! Why a hand-written accept loop rather than axum-server: with axum-server's openssl
//! support, `peer_cert_chain()` on the server side leaves out the client's own
//! certificate, so the identity would be read from the wrong certificate. Here each
//! connection is accepted with `tokio-openssl`, the client's own certificate is read
//! with `ssl.peer_certificate()`, turned into a [`certs::Principal`], and handed to every
//! request of that connection.
//!
//! The CRL is re-read when its file changes (checked twice a second): a revocation takes
//! effect on new connections within a second, without a restart. Once an hour the
//! gateway re-signs the CRL if it expires within a day (it is valid for 7), since openssl
//! refuses every client once the CRL is past its nextUpdate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::X509;

use crate::routes::{self, AppState};

/// Builds the TLS acceptor from the data folder's PKI: server certificate and key, the
/// platform CA as the only trust anchor, and its CRL, checked for every client.
pub fn acceptor(data: &Path) -> Result<SslAcceptor> {
    let ca = data.join("ca/ca.pem");
    let crl = data.join("ca/crl.pem");
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_private_key_file(data.join("tls/key.pem"), SslFiletype::PEM)
        .context("server key (run `hbs init`)")?;
    b.set_certificate_chain_file(data.join("tls/cert.pem"))
        .context("server certificate (run `hbs init`)")?;
    b.check_private_key()?;
    let mut store = X509StoreBuilder::new()?;
    let ca_cert =
        X509::from_pem(&std::fs::read(&ca).with_context(|| format!("{}", ca.display()))?)?;
    store.add_cert(ca_cert)?;
    // The CRL goes in through a file lookup; without CRL_CHECK openssl would accept a
    // revoked certificate.
    let lookup = store.add_lookup(X509Lookup::file())?;
    lookup
        .load_crl_file(&crl, SslFiletype::PEM)
        .with_context(|| format!("CRL {}", crl.display()))?;
    store.set_flags(X509VerifyFlags::CRL_CHECK)?;
    b.set_verify_cert_store(store.build())?;
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    Ok(b.build())
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Runs the gateway until SIGINT or SIGTERM, then stops accepting and waits (up to 30 s)
/// for requests in flight.
pub async fn serve(state: AppState, data: PathBuf, listen: SocketAddr) -> Result<()> {
    let current = Arc::new(RwLock::new(Arc::new(acceptor(&data)?)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    println!("hbs gateway listening on https://{local}");
    tracing::info!(%local, "listening");

    // CRL reloader.
    {
        let current = current.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let crl = data.join("ca/crl.pem");
            let mut seen = mtime(&crl);
            let mut checked: Option<std::time::Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                // Re-sign the CRL a day before it expires (an expired CRL would lock
                // every client out); the file change is then picked up below.
                if checked.is_none_or(|c| c.elapsed() >= Duration::from_secs(3600)) {
                    checked = Some(std::time::Instant::now());
                    match certs::Ca::open(&data.join("ca")).and_then(|ca| ca.refresh_crl_if_due(1))
                    {
                        Ok(true) => tracing::info!("revocation list re-signed before expiry"),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "revocation list could not be re-signed")
                        }
                    }
                }
                let now = mtime(&crl);
                if now != seen {
                    match acceptor(&data) {
                        Ok(a) => {
                            *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(a);
                            seen = now;
                            tracing::info!("revocation list reloaded");
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "revocation list reload failed; keeping the previous one")
                        }
                    }
                }
            }
        });
    }

    let router = routes::router(state.clone());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let tracker = conn_tracker::Tracker::default();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = &mut shutdown => break,
        };
        // Answers are small and written in pieces (TLS records, headers, body): without
        // this, Nagle's algorithm and the client's delayed ACK add up to 40 ms to each.
        let _ = tcp.set_nodelay(true);
        let acc = current.read().unwrap_or_else(|p| p.into_inner()).clone();
        let router = router.clone();
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let guard = tracker.guard();
        tokio::spawn(async move {
            let _guard = guard;
            let ssl = match openssl::ssl::Ssl::new(acc.context()) {
                Ok(s) => s,
                Err(_) => return,
            };
            let mut stream = match tokio_openssl::SslStream::new(ssl, tcp) {
                Ok(s) => s,
                Err(_) => return,
            };
            let handshake = tokio::time::timeout(
                Duration::from_secs(10),
                std::pin::Pin::new(&mut stream).accept(),
            )
            .await;
            if !matches!(handshake, Ok(Ok(()))) {
                state.metrics.handshake_failed();
                tracing::info!(%peer, "TLS handshake refused");
                return;
            }
            // The client's own certificate, not the chain (see the module doc).
            let Some(cert) = stream.ssl().peer_certificate() else {
                return;
            };
            let principal = match certs::principal_from_cert(&cert) {
                Ok(p) => p,
                Err(e) => {
                    state.metrics.handshake_failed();
                    tracing::info!(%peer, reason = %e, "certificate is not a platform identity");
                    return;
                }
            };
            // The key of the verified certificate, to check what the caller signs.
            let Ok(key) = cert.public_key() else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(
                router
                    .layer(axum::Extension(principal))
                    .layer(axum::Extension(crate::routes::PeerKey(Arc::new(key)))),
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    // Finish the request in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    println!("shutting down: finishing requests in flight");
    let _ = stop_tx.send(true);
    stop_rx.mark_unchanged();
    let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
    state.vault.close().await;
    // A last signed checkpoint, so no event waits for the next run to be covered.
    state.audit.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Counts live connections so shutdown can wait for them.
mod conn_tracker {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A counter of live guards and a notifier for when it reaches zero.
    #[derive(Default, Clone)]
    pub struct Tracker {
        inner: Arc<(AtomicUsize, tokio::sync::Notify)>,
    }

    /// Held by a connection task while it runs.
    pub struct Guard(Arc<(AtomicUsize, tokio::sync::Notify)>);

    impl Tracker {
        pub fn guard(&self) -> Guard {
            self.inner.0.fetch_add(1, Ordering::SeqCst);
            Guard(self.inner.clone())
        }
        pub async fn wait(&self) {
            loop {
                let notified = self.inner.1.notified();
                if self.inner.0.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if self.0 .0.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.0 .1.notify_waiters();
            }
        }
    }
}
