//! `GET /metrics`: the control plane in the Prometheus text format, behind
//! the API's authentication (either token may read it).
//!
//! - The API's own requests: `shoal_api_requests_total{method, code}` and
//!   `shoal_api_request_duration_seconds{method}` (until the response
//!   headers: a watch counts its set-up, not its life).
//! - The cluster as this server's store holds it, read at each scrape:
//!   `shoal_services`, per service `shoal_service_replicas_desired`,
//!   `shoal_service_replicas_ready` and `shoal_service_restarts` (restarts of
//!   its current tasks), `shoal_tasks{phase}`,
//!   `shoal_hosts{ready, availability}`, and per host its running tasks
//!   (`shoal_host_tasks_running`) and what tasks may reserve on it
//!   (`shoal_host_allocatable_cpu_millicores`,
//!   `shoal_host_allocatable_memory_bytes`).
//! - What the server adds through a [`MetricsSource`]: its Raft node, its
//!   dispatcher.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shoal_crds::{Host, Service, Task, TaskPhase};
use shoal_store::{ClusterStore, Kind, ListOptions};

use crate::App;
use crate::error::ApiError;

/// How a server-provided sample is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleKind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only grows (exposed with `_total`).
    Counter,
}

/// One unlabelled value a server adds to `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (`shoal_raft_term`; a counter's without `_total`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: SampleKind,
    /// The value now.
    pub value: i64,
}

/// What a server adds to `/metrics` (its Raft node, its dispatcher).
pub trait MetricsSource: Send + Sync + std::fmt::Debug + 'static {
    /// The values now.
    fn samples(&self) -> Vec<Sample>;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// The API's request counts and durations, kept for the server's life.
#[derive(Debug, Clone)]
pub(crate) struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<MethodLabel, Histogram>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 1 ms to about 8 s.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
        }
    }
}

/// Counts every request and its time to the response headers.
pub(crate) async fn track(
    State(metrics): State<Arc<RequestMetrics>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            code: resp.status().as_u16().to_string(),
        })
        .inc();
    metrics
        .durations
        .get_or_create(&MethodLabel { method })
        .observe(started.elapsed().as_secs_f64());
    resp
}

type Labels = Vec<(String, String)>;

/// A gauge family filled from `(labels, value)` pairs.
fn gauges(values: impl IntoIterator<Item = (Labels, i64)>) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    for (labels, v) in values {
        family.get_or_create(&labels).inc_by(v);
    }
    family
}

fn label(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_owned(), v.into())
}

/// The objects of a kind (one that does not decode is left out rather
/// than failing the scrape).
async fn objects<T: serde::de::DeserializeOwned>(
    store: &dyn ClusterStore,
    kind: Kind,
) -> Result<Vec<T>, String> {
    let list = store
        .list(kind, &ListOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect())
}

/// The cluster's gauges, from the store.
async fn cluster(registry: &mut Registry, store: &dyn ClusterStore) -> Result<(), String> {
    let services: Vec<Service> = objects(store, Kind::Service).await?;
    let tasks: Vec<Task> = objects(store, Kind::Task).await?;
    let hosts: Vec<Host> = objects(store, Kind::Host).await?;

    registry.register(
        "shoal_services",
        "Services declared",
        ConstGauge::new(i64::try_from(services.len()).unwrap_or(i64::MAX)),
    );
    let key = |ns: &Option<String>, name: &Option<String>| {
        vec![
            label("namespace", ns.clone().unwrap_or_default()),
            label("service", name.clone().unwrap_or_default()),
        ]
    };
    registry.register(
        "shoal_service_replicas_desired",
        "Tasks of the service that should be running",
        gauges(services.iter().map(|s| {
            let desired = s
                .status
                .as_ref()
                .and_then(|st| st.replicas)
                .or(s.spec.replicas)
                .unwrap_or(0);
            (
                key(&s.metadata.namespace, &s.metadata.name),
                i64::from(desired),
            )
        })),
    );
    registry.register(
        "shoal_service_replicas_ready",
        "Tasks of the service running and, with a health check, healthy",
        gauges(services.iter().map(|s| {
            let ready = s.status.as_ref().and_then(|st| st.ready_replicas);
            (
                key(&s.metadata.namespace, &s.metadata.name),
                i64::from(ready.unwrap_or(0)),
            )
        })),
    );
    // Restarts per (namespace, service), in one pass over the tasks.
    let mut restarts: std::collections::HashMap<(Option<&str>, &str), i64> =
        std::collections::HashMap::new();
    for t in &tasks {
        let n = t.status.as_ref().and_then(|st| st.restart_count);
        *restarts
            .entry((t.metadata.namespace.as_deref(), t.spec.service.as_str()))
            .or_default() += i64::from(n.unwrap_or(0));
    }
    registry.register(
        "shoal_service_restarts",
        "Restarts in place of the service's current tasks' containers",
        gauges(services.iter().map(|s| {
            let name = s.metadata.name.as_deref().unwrap_or_default();
            let n = restarts
                .get(&(s.metadata.namespace.as_deref(), name))
                .copied()
                .unwrap_or(0);
            (key(&s.metadata.namespace, &s.metadata.name), n)
        })),
    );
    registry.register(
        "shoal_tasks",
        "Tasks by phase",
        gauges(tasks.iter().map(|t| {
            let phase = t.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
            (vec![label("phase", format!("{phase:?}"))], 1)
        })),
    );
    registry.register(
        "shoal_hosts",
        "Hosts by readiness and availability",
        gauges(hosts.iter().map(|h| {
            let ready = h
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map_or_else(|| "Unknown".to_owned(), |c| format!("{:?}", c.status));
            let availability = h.spec.availability.unwrap_or_default();
            (
                vec![
                    label("ready", ready),
                    label("availability", format!("{availability:?}")),
                ],
                1,
            )
        })),
    );
    let host_label = |h: &Host| vec![label("host", h.metadata.name.clone().unwrap_or_default())];
    registry.register(
        "shoal_host_tasks_running",
        "Tasks running on the host",
        gauges(hosts.iter().map(|h| {
            let running = tasks
                .iter()
                .filter(|t| t.spec.host_name == h.metadata.name)
                .filter(|t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Running))
                .count();
            (host_label(h), i64::try_from(running).unwrap_or(i64::MAX))
        })),
    );
    let allocatable = |h: &Host| h.status.as_ref().and_then(|s| s.allocatable.clone());
    registry.register(
        "shoal_host_allocatable_cpu_millicores",
        "CPU tasks may reserve on the host",
        gauges(hosts.iter().filter_map(|h| {
            let cpu = allocatable(h)?.cpu?.parse().ok()?;
            Some((host_label(h), i64::try_from(cpu).unwrap_or(i64::MAX)))
        })),
    );
    registry.register(
        "shoal_host_allocatable_memory_bytes",
        "Memory tasks may reserve on the host",
        gauges(hosts.iter().filter_map(|h| {
            let bytes = allocatable(h)?.memory?.parse().ok()?;
            Some((host_label(h), i64::try_from(bytes).unwrap_or(i64::MAX)))
        })),
    );
    Ok(())
}

/// `GET /metrics`.
pub(crate) async fn serve(State(app): State<Arc<App>>) -> Response {
    let mut registry = Registry::default();
    registry.register(
        "shoal_api_requests",
        "API requests by method and response code",
        app.requests.requests.clone(),
    );
    registry.register(
        "shoal_api_request_duration_seconds",
        "Time from an API request to its response headers",
        app.requests.durations.clone(),
    );
    if let Err(e) = cluster(&mut registry, app.store.as_ref()).await {
        return ApiError::new(503, "ServiceUnavailable", format!("reading the store: {e}"))
            .into_response();
    }
    if let Some(source) = &app.cfg.metrics {
        for s in source.samples() {
            match s.kind {
                SampleKind::Gauge => registry.register(s.name, s.help, ConstGauge::new(s.value)),
                SampleKind::Counter => registry.register(
                    s.name,
                    s.help,
                    ConstCounter::new(u64::try_from(s.value).unwrap_or(0)),
                ),
            }
        }
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return ApiError::new(500, "InternalError", format!("encoding the metrics: {e}"))
            .into_response();
    }
    let mut resp = (StatusCode::OK, text).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
