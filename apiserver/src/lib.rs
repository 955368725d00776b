//! The embedded API server: the Kubernetes REST dialect for group
//! `shoal.dev` (and the core group's `v1` Events) over a [`ClusterStore`],
//! so kube-rs clients and plain `kubectl` work against Shoal as against a
//! Kubernetes cluster.
//!
//! Served: discovery (`/version`, `/api`, `/api/v1`, `/apis`,
//! `/apis/shoal.dev[/v1alpha1]`), OpenAPI v3 generated from the CRD schemas,
//! and on every resource (`shoal.dev` Services, Tasks and Hosts; core `v1`
//! Events at `/api/v1/[namespaces/NS/]events`, see [`events`]) get, list
//! (never truncated), watch (with bookmarks and the in-stream 410), create,
//! update, JSON merge patch and JSON patch, delete, the `status` and `scale`
//! subresources, and the Table format. Every write is validated with
//! [`shoal_crds::validate`]; every error is a Kubernetes `Status`.
//!
//! Not served (each answers a `Status` saying so): server-side apply and
//! strategic merge patch (415), delete-collection (405), `continue` tokens
//! (lists are never truncated, `limit` is ignored), the rest of the core API
//! group (`/api/v1` lists Events only; no Pods, Namespaces…), OpenAPI for
//! Events, and authentication — hence loopback only.

mod apply;
pub mod discovery;
pub mod error;
pub mod events;
pub mod exec;
pub mod exec_ws;
pub mod fields;
pub mod kubeconfig;
pub mod logs;
pub mod members;
pub mod metrics;
pub mod model;
pub mod openapi;
mod resources;
pub mod secure;
pub mod stats;
pub mod table;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use shoal_store::ClusterStore;
use tokio::sync::watch as signal;
use tracing::Instrument;

pub use error::ApiError;
pub use members::{Member, Members};
pub use secure::Security;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body accepted; larger ones get 413 (Kubernetes: 3 MiB).
    pub max_body_bytes: usize,
    /// How long a watch without `timeoutSeconds` lasts.
    pub watch_timeout: Duration,
    /// Where task logs come from (`tasks/NAME/log`); without it that
    /// subresource answers 501.
    pub logs: Option<Arc<dyn logs::TaskLogs>>,
    /// Where task resource samples come from (`tasks/NAME/stats`); without
    /// it that subresource answers 501.
    pub stats: Option<Arc<dyn stats::TaskStats>>,
    /// Where commands run (`tasks/NAME/exec`); without it that subresource
    /// answers 501.
    pub exec: Option<Arc<dyn exec::TaskExec>>,
    /// What the server adds to `/metrics` (its Raft node, its dispatcher).
    pub metrics: Option<Arc<dyn metrics::MetricsSource>>,
    /// TLS and a bearer token: required to listen beyond loopback.
    pub security: Option<Security>,
    /// The servers of a replicated control plane (`/shoal/v1/servers`);
    /// `None` for a lone server.
    pub members: Option<Arc<dyn Members>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_body_bytes: 3 * 1024 * 1024,
            watch_timeout: Duration::from_secs(30 * 60),
            logs: None,
            stats: None,
            exec: None,
            metrics: None,
            security: None,
            members: None,
        }
    }
}

/// Errors starting or running the server. All are fatal for the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The CRDs could not be read into the served model (a bug).
    #[error("reading the CRDs: {0}")]
    Model(#[from] serde_json::Error),
    /// Binding or serving failed.
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
    /// The listen address is not loopback, and there is no TLS and token.
    #[error(
        "refusing to listen on {0} without TLS and a bearer token: only loopback may be unauthenticated"
    )]
    NotLoopback(SocketAddr),
}

impl ServerError {
    /// Never retryable: the configuration or the machine must change.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Shared state of the handlers.
pub(crate) struct App {
    pub(crate) store: Arc<dyn ClusterStore>,
    pub(crate) model: model::Model,
    pub(crate) openapi: openapi::OpenApi,
    pub(crate) cfg: Config,
    pub(crate) shutdown: signal::Receiver<bool>,
    pub(crate) requests: Arc<metrics::RequestMetrics>,
}

fn json_ok(v: &serde_json::Value) -> Response {
    resources::json_response(StatusCode::OK, v, &[])
}

async fn resource(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Option<axum::Extension<hyper::upgrade::OnUpgrade>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::too_large(app.cfg.max_body_bytes).into_response();
        }
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    let res = resources::handle(
        app.clone(),
        method.clone(),
        &uri,
        &headers,
        body,
        upgrade.map(|axum::Extension(u)| u),
    )
    .await;
    match res {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, path = uri.path(), code = e.code, "{}", e.message);
            e.into_response()
        }
    }
}

async fn fallback(req: Request) -> Response {
    ApiError::no_route(req.uri().path()).into_response()
}

/// The router, for a store, settings and the shutdown signal (watches end
/// when it turns true).
pub fn router(
    store: Arc<dyn ClusterStore>,
    cfg: Config,
    shutdown: signal::Receiver<bool>,
) -> Result<Router, ServerError> {
    let model = model::Model::from_crds()?;
    let openapi = openapi::OpenApi::new(&model);
    let limit = cfg.max_body_bytes;
    let token = cfg.security.as_ref().map(|s| {
        Arc::new(secure::Tokens {
            admin: s.token.clone(),
            view: s.view_token.clone(),
        })
    });
    let requests = Arc::new(metrics::RequestMetrics::default());
    let app = Arc::new(App {
        store,
        model,
        openapi,
        cfg,
        shutdown,
        requests: requests.clone(),
    });
    let health = || async { "ok" };
    let router = Router::new()
        .route("/version", get(|| async { json_ok(&discovery::version()) }))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route(
            "/api",
            get(|| async { json_ok(&discovery::core_versions()) }),
        )
        .route(
            "/api/v1",
            get(|State(app): State<Arc<App>>| async move {
                json_ok(&discovery::core_resource_list(&app.model))
            }),
        )
        .route("/api/v1/{*rest}", any(resource))
        .route("/apis", get(|| async { json_ok(&discovery::group_list()) }))
        .route(
            "/apis/shoal.dev",
            get(|| async { json_ok(&discovery::group_doc()) }),
        )
        .route(
            "/apis/shoal.dev/v1alpha1",
            get(|State(app): State<Arc<App>>| async move {
                json_ok(&discovery::resource_list(&app.model))
            }),
        )
        .route("/apis/shoal.dev/v1alpha1/{*rest}", any(resource))
        .route("/metrics", get(metrics::serve))
        .route("/shoal/v1/servers", get(members::list))
        .route(
            "/shoal/v1/servers/{id}",
            axum::routing::delete(members::remove),
        )
        .route(
            "/openapi/v3",
            get(|State(app): State<Arc<App>>| async move { json_ok(&app.openapi.index) }),
        )
        .route(
            openapi::GV_PATH,
            get(|State(app): State<Arc<App>>| async move {
                let mut r = (StatusCode::OK, app.openapi.group_version.clone()).into_response();
                r.headers_mut().insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                );
                r
            }),
        )
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            requests,
            metrics::track,
        ));
    Ok(match token {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(
            token,
            secure::require_token,
        )),
        None => router,
    })
}

/// Serves on a bound listener until `shutdown` turns true, then finishes the
/// requests in flight (watches end at once) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<dyn ClusterStore>,
    cfg: Config,
    shutdown: signal::Receiver<bool>,
) -> Result<(), ServerError> {
    let app = router(store, cfg, shutdown.clone())?;
    serve_router(listener, app, shutdown).await
}

async fn serve_router(
    listener: tokio::net::TcpListener,
    app: Router,
    mut stop: signal::Receiver<bool>,
) -> Result<(), ServerError> {
    // Small writes (watch events) go out at once, as Go's net/http does.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY on an accepted connection: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            // An error means the sender is gone: shut down as well.
            let _ = stop.wait_for(|v| *v).await;
        })
        .await?;
    Ok(())
}

async fn serve_tls_router(
    listener: secure::TlsListener,
    app: Router,
    mut stop: signal::Receiver<bool>,
) -> Result<(), ServerError> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|v| *v).await;
        })
        .await?;
    Ok(())
}

/// A server running in a task of its own.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    tls: bool,
    stop: signal::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Binds `addr` and serves in a spawned task: plain HTTP on loopback, or
    /// HTTPS with a bearer token on every request when `cfg.security` is set
    /// (required beyond loopback).
    pub async fn start(
        addr: SocketAddr,
        store: Arc<dyn ClusterStore>,
        cfg: Config,
    ) -> Result<RunningServer, ServerError> {
        if !addr.ip().is_loopback() && cfg.security.is_none() {
            return Err(ServerError::NotLoopback(addr));
        }
        let tls = cfg.security.as_ref().map(Security::tls).transpose()?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, rx) = signal::channel(false);
        let app = router(store, cfg, rx.clone())?;
        let span = tracing::info_span!("apiserver", %addr);
        let is_tls = tls.is_some();
        let task = match tls {
            Some(tls) => {
                let listener = secure::TlsListener::new(listener, tls)?;
                tokio::spawn(serve_tls_router(listener, app, rx).instrument(span))
            }
            None => tokio::spawn(serve_router(listener, app, rx).instrument(span)),
        };
        Ok(RunningServer {
            addr,
            tls: is_tls,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, or `https://ADDRESS:PORT` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Io(std::io::Error::other(e))),
        }
    }
}
