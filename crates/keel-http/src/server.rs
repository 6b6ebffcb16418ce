//! The accept loop: what `axum::serve` does, plus the limits a server on the public internet
//! needs — a cap on concurrent connections (a connection past it is answered 503 with
//! Retry-After and closed, so an overloaded server says so instead of leaving clients in a
//! full listen backlog), a header read timeout (a slow client cannot hold a connection
//! forever), optional TLS (rustls), and a graceful drain on shutdown.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::ServerConfig;
pub use tokio_rustls::TlsAcceptor;

#[derive(Clone)]
pub struct ServerOptions {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time a client gets to send a request's headers (and to finish a TLS handshake).
    pub header_read_timeout: Duration,
    pub tls: Option<TlsAcceptor>,
}

/// Builds a TLS acceptor from PEM files: a certificate chain and its private key.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How long connections accepted last get to deliver their request before shutdown.
const SETTLE: Duration = Duration::from_millis(250);

/// Connections past MAX_CONNECTIONS being refused at once; more than this wait in the backlog,
/// so refusing cannot itself take unbounded memory.
const REFUSING: usize = 256;

/// Answers every request of a connection past MAX_CONNECTIONS: 503, Retry-After, close.
fn refusal_router() -> Router {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    Router::new().fallback(|| async {
        metrics::counter!(keel_telemetry::metrics::names::CONNECTIONS_REFUSED).increment(1);
        let body = axum::Json(serde_json::json!({"error": {
            "code": "too_many_connections",
            "message": "the server is at MAX_CONNECTIONS; retry shortly",
        }}));
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    })
}

fn spawn_connection(
    stream: tokio::net::TcpStream,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    builder: &auto::Builder<TokioExecutor>,
    router: &Router,
    graceful: &GracefulShutdown,
    options: &ServerOptions,
) {
    let _ = stream.set_nodelay(true);
    let service = TowerToHyperService::new(router.clone());
    let builder = builder.clone();
    let watcher = graceful.watcher();
    let tls = options.tls.clone();
    let handshake_timeout = options.header_read_timeout;
    tokio::spawn(async move {
        let _permit = permit;
        let result = match tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                watcher.watch(conn).await
            }
            Some(acceptor) => {
                let stream =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                watcher.watch(conn).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    });
}

/// Serves `router` on `listener` until `stop_accepting` resolves, then stops accepting and
/// waits up to `drain_timeout` for open connections to finish their requests. Returns
/// whether every connection drained in time.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServerOptions,
    stop_accepting: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> bool {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING));
    let refusal = refusal_router();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let mut stop = std::pin::pin!(stop_accepting);
    loop {
        // Take a slot before accepting: a serving one while there are any, else a refusing
        // one; with neither, connections wait in the listen backlog.
        let slot = tokio::select! {
            biased;
            _ = &mut stop => break,
            permit = permits.clone().acquire_owned() => Ok(permit.expect("never closed")),
            permit = refusing.clone().acquire_owned() => Err(permit.expect("never closed")),
        };
        let (stream, _peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (permit, service) = match slot {
            Ok(permit) => (permit, &router),
            // A serving slot may have freed while this connection was accepted.
            Err(refusing) => match permits.clone().try_acquire_owned() {
                Ok(permit) => (permit, &router),
                Err(_) => (refusing, &refusal),
            },
        };
        spawn_connection(stream, Some(permit), &builder, service, &graceful, &options);
    }
    // Connections still in the kernel's backlog have sent their requests already: serve
    // them rather than reset them by closing the listener under them.
    while let Some(Ok((stream, _))) = std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        std::task::Poll::Pending => std::task::Poll::Ready(None),
        std::task::Poll::Ready(result) => std::task::Poll::Ready(Some(result)),
    })
    .await
    {
        spawn_connection(stream, None, &builder, &router, &graceful, &options);
    }
    drop(listener);
    // A connection just accepted looks idle to hyper until its request is parsed, and a
    // graceful shutdown closes idle connections at once: give the last ones a moment to
    // become in-flight requests, which the shutdown then waits for.
    tokio::time::sleep(SETTLE.min(drain_timeout)).await;
    tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_ok()
}
