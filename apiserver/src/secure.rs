//! An API reachable beyond loopback: TLS with the cluster CA's serving
//! certificate, and a bearer token on every request but the health checks
//! (DESIGN.md, Security). On loopback in `shoal up`'s dev mode neither
//! applies, and the control plane says so at start-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How the API is secured when it listens beyond loopback.
#[derive(Clone)]
pub struct Security {
    /// The serving certificate chain (PEM, leaf first).
    pub cert_chain_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// The bearer token every request must carry: it may do anything.
    pub token: String,
    /// A second token that may only read (GET: lists, watches, logs); any
    /// change asked with it gets 403. `None`: no such token.
    pub view_token: Option<String>,
}

/// The tokens [`require_token`] accepts.
#[derive(Clone)]
pub(crate) struct Tokens {
    pub admin: String,
    pub view: Option<String>,
}

// The key and the token never reach a log.
impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security").finish_non_exhaustive()
    }
}

impl Security {
    /// The rustls configuration for the serving certificate.
    pub(crate) fn tls(&self) -> std::io::Result<rustls::ServerConfig> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
        };
        let chain = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("the API certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad("the API key", &e))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| bad("the API certificate", &e))?;
        // kubectl and kube-rs speak HTTP/2 when offered; watches stream
        // well over both.
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// Whether `given` is `token` (constant time).
fn same(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

/// Refuses a request without the bearer token: 401 with a Kubernetes
/// Status, as kubectl expects.
pub(crate) async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/livez" | "/readyz") {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let is = |token: &str| given.is_some_and(|t| same(t.as_bytes(), token.as_bytes()));
    if is(&tokens.admin) {
        return next.run(req).await;
    }
    if tokens.view.as_deref().is_some_and(is) {
        // Running a command is never a read, whatever the method (a
        // WebSocket starts with GET).
        let reads = matches!(
            *req.method(),
            axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
        ) && !is_exec(path);
        if reads {
            return next.run(req).await;
        }
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "Forbidden: the read-only token cannot {} {path}; changes take the cluster's admin token (DATA_DIR/kubeconfig)",
                req.method()
            ),
        );
    }
    status(
        StatusCode::UNAUTHORIZED,
        "Unauthorized",
        "Unauthorized: a bearer token of this cluster is required (the kubeconfig `shoal up` writes has it)",
    )
}

/// Whether `path` is a task's `exec` subresource.
fn is_exec(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(3).collect();
    matches!(segs.as_slice(), ["exec", _, "tasks"])
}

/// A Kubernetes Status answer, as kubectl expects for 401 and 403.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut r = (code, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A listener whose connections have finished their TLS handshake. The
/// handshakes run in tasks of their own (a slow client delays nobody); the
/// accept loop ends with the listener.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Longest a client may take for its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl TlsListener {
    pub(crate) fn new(
        tcp: tokio::net::TcpListener,
        tls: rustls::ServerConfig,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (tx, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little.
                        tracing::warn!(error = %e, "accepting an API connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY on an accepted connection: {e}");
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accept_task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop never ends on its own; should it, wait forever
            // (the server stops through its shutdown signal).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_is_told_apart_from_a_task_named_exec() {
        assert!(is_exec(
            "/apis/shoal.dev/v1alpha1/namespaces/default/tasks/web.0.ab/exec"
        ));
        assert!(is_exec(
            "/apis/shoal.dev/v1alpha1/namespaces/default/tasks/web.0.ab/exec/"
        ));
        assert!(!is_exec(
            "/apis/shoal.dev/v1alpha1/namespaces/default/tasks/exec"
        ));
        assert!(!is_exec(
            "/apis/shoal.dev/v1alpha1/namespaces/default/tasks/web.0.ab/log"
        ));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abd", b"abc"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"", b"abc"));
    }
}
