//! Shoal's store seam over a Kubernetes API server: kubernetes mode.
//!
//! [`KubeStore`] implements [`ClusterStore`] with kube-rs requests against
//! the `shoal.dev/v1alpha1` CRDs (Service, Task, Host; see `crds/*.yaml`) and
//! core `v1` Events of an existing cluster, so the orchestrator, the
//! scheduler and the dispatcher run unchanged on either backend. Objects
//! travel as JSON values in their Kubernetes shape, as they do in the
//! embedded store.
//!
//! Where Kubernetes differs from the store's contract, this backend bridges
//! the gap:
//! - a create's `status` is dropped by an API server whose CRDs have a status
//!   subresource: it is written right after, with the created object's
//!   resourceVersion;
//! - an update without a resourceVersion is refused for custom resources: it
//!   is made conditional on the current one and retried on a conflict;
//! - a watch ends at the server's timeout: it is opened again from the last
//!   revision seen (bookmarks included), and a `410 Gone` becomes
//!   [`StoreError::TooOld`];
//! - list items may come without `apiVersion` and `kind`: they are filled in.
//!
//! Revisions are Kubernetes resourceVersions, which every API server backed
//! by etcd (and Shoal's embedded one) hands out as increasing integers; a
//! resourceVersion that is not one is an [`StoreError::Internal`] error.

pub mod lease;
pub mod secret;

use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use kube::core::params::{
    DeleteParams, GetParams, ListParams, PostParams, Preconditions, WatchParams,
};
use kube::core::{Request, Status};
use serde_json::{Value, json};
use shoal_store::{
    ClusterStore, DeleteOutcome, DeletePreconditions, Kind, ListOptions, ObjectKey, ObjectList,
    Revision, StoreError, WatchEvent, WatchStream,
};

/// How many times an unconditional update is retried on a conflict.
const UPDATE_ATTEMPTS: usize = 8;

/// How long one watch request lasts before it is opened again (the server
/// may end it sooner).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// [`ClusterStore`] over a Kubernetes API server (see the crate docs).
#[derive(Clone)]
pub struct KubeStore {
    client: kube::Client,
    watch_timeout: u32,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").finish_non_exhaustive()
    }
}

/// Why a [`KubeStore`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeStoreError {
    /// No usable cluster configuration: neither a kubeconfig nor an
    /// in-cluster service account (fatal until the configuration changes).
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    /// The client could not be built from the configuration (fatal).
    #[error("cannot build a Kubernetes client: {0}")]
    Client(String),
}

impl KubeStore {
    /// A store over the cluster `client` talks to.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            watch_timeout: WATCH_TIMEOUT_SECS,
        }
    }

    /// Each watch request asks the server to end it after `secs` seconds
    /// (then it is opened again; 290 by default).
    pub fn with_watch_timeout(mut self, secs: u32) -> Self {
        self.watch_timeout = secs.max(1);
        self
    }

    /// A store over the cluster of the environment: `KUBECONFIG` or
    /// `~/.kube/config`, else the in-cluster service account.
    pub async fn infer() -> Result<Self, KubeStoreError> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| KubeStoreError::Config(e.to_string()))?;
        Self::from_config(config)
    }

    /// A store over the cluster of the kubeconfig file at `path` (its
    /// current context).
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self, KubeStoreError> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| KubeStoreError::Config(format!("{}: {e}", path.display())))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|e| KubeStoreError::Config(format!("{}: {e}", path.display())))?;
        Self::from_config(config)
    }

    fn from_config(config: kube::Config) -> Result<Self, KubeStoreError> {
        let client =
            kube::Client::try_from(config).map_err(|e| KubeStoreError::Client(e.to_string()))?;
        Ok(Self::new(client))
    }

    /// The client (for the CRD check at start-up and the like).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Checks that the cluster serves every kind Shoal needs (the CRDs are
    /// installed): a list of each, with a clear error naming what is
    /// missing.
    pub async fn check_kinds(&self) -> Result<(), StoreError> {
        for kind in Kind::ALL {
            let req = Request::new(collection(kind, None))
                .list(&ListParams::default().limit(1))
                .map_err(build_error)?;
            match self.client.request::<Value>(req).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(StoreError::NotFound(format!(
                        "the {} resource ({}): install Shoal's CRDs (crds/*.yaml, or the Helm chart)",
                        kind.plural(),
                        kind.api_version()
                    )));
                }
                Err(e) => return Err(store_error(&collection(kind, None), e)),
            }
        }
        Ok(())
    }
}

/// The collection path of a kind (in a namespace, or across all).
fn collection(kind: Kind, namespace: Option<&str>) -> String {
    let root = match kind {
        Kind::Event => "/api/v1".to_string(),
        _ => format!("/apis/{}", shoal_crds::API_VERSION),
    };
    match namespace.filter(|_| kind.namespaced()) {
        Some(ns) => format!("{root}/namespaces/{ns}/{}", kind.plural()),
        None => format!("{root}/{}", kind.plural()),
    }
}

/// The key of an object to write: its kind, namespace and name, checked.
fn key_of(obj: &Value) -> Result<ObjectKey, StoreError> {
    let kind_name = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Invalid("kind: required".into()))?;
    let kind = Kind::from_name(kind_name)
        .ok_or_else(|| StoreError::Invalid(format!("kind: {kind_name:?} is not stored here")))?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| StoreError::Invalid("metadata.name: required".into()))?;
    let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str);
    if kind.namespaced() {
        match namespace.filter(|n| !n.is_empty()) {
            Some(ns) => Ok(ObjectKey::namespaced(kind, ns, name)),
            None => Err(StoreError::Invalid(format!(
                "metadata.namespace: required for a {kind_name}"
            ))),
        }
    } else {
        Ok(ObjectKey::cluster(kind, name))
    }
}

/// A resourceVersion as a store revision.
fn parse_revision(rv: &str) -> Result<Revision, StoreError> {
    rv.parse().map_err(|_| {
        StoreError::Internal(format!(
            "resourceVersion {rv:?} is not an integer: this API server is not supported"
        ))
    })
}

/// The resourceVersion of an object or list, as a revision.
fn revision_of(v: &Value) -> Result<Revision, StoreError> {
    match v
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv) => parse_revision(rv),
        None => Err(StoreError::Internal(
            "the API server's answer has no metadata.resourceVersion".into(),
        )),
    }
}

/// Fills in `apiVersion` and `kind` (list items and watch objects of some
/// servers lack them).
fn typed(kind: Kind, mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.entry("apiVersion")
            .or_insert_with(|| json!(kind.api_version()));
        m.entry("kind").or_insert_with(|| json!(kind.name()));
    }
    v
}

fn build_error(e: kube::core::request::Error) -> StoreError {
    StoreError::Internal(format!("building the request: {e}"))
}

/// A Kubernetes error status as a store error about `subject`.
fn status_error(subject: &str, s: &Status) -> StoreError {
    match s.code {
        404 => StoreError::NotFound(subject.to_string()),
        409 if s.reason == "AlreadyExists" => StoreError::AlreadyExists(subject.to_string()),
        409 => StoreError::Conflict {
            key: subject.to_string(),
            message: s.message.clone(),
        },
        410 => StoreError::TooOld {
            requested: 0,
            oldest: 0,
        },
        400 if s.message.contains("selector") => StoreError::BadSelector(s.message.clone()),
        400 | 422 => StoreError::Invalid(s.message.clone()),
        429 | 500 | 502..=504 => StoreError::Unavailable(format!("{} ({})", s.message, s.code)),
        code => StoreError::Internal(format!("{} ({code} {})", s.message, s.reason)),
    }
}

/// A kube-rs error as a store error about `subject`: the API's refusals by
/// their code, a server out of reach as [`StoreError::Unavailable`].
fn store_error(subject: &str, e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(s) => status_error(subject, &s),
        kube::Error::HyperError(e) => StoreError::Unavailable(format!("the API server: {e}")),
        kube::Error::Service(e) => StoreError::Unavailable(format!("the API server: {e}")),
        kube::Error::ReadEvents(e) => StoreError::Unavailable(format!("the API server: {e}")),
        other => StoreError::Internal(other.to_string()),
    }
}

fn body(v: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn set_resource_version(obj: &mut Value, rv: &str) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rv));
    }
}

impl KubeStore {
    async fn request(
        &self,
        subject: &str,
        req: http::Request<Vec<u8>>,
    ) -> Result<Value, StoreError> {
        self.client
            .request::<Value>(req)
            .await
            .map_err(|e| store_error(subject, e))
    }

    /// PUT `obj` to the object (`status`: its status subresource). Without a
    /// resourceVersion in `obj`, conditional on the current one, retried on
    /// a conflict.
    async fn replace(&self, mut obj: Value, status: bool) -> Result<Value, StoreError> {
        let key = key_of(&obj)?;
        let subject = key.to_string();
        let req = Request::new(collection(key.kind, key.namespace.as_deref()));
        let put = |obj: &Value| -> Result<http::Request<Vec<u8>>, StoreError> {
            let pp = PostParams::default();
            if status {
                req.replace_subresource("status", &key.name, &pp, body(obj)?)
            } else {
                req.replace(&key.name, &pp, body(obj)?)
            }
            .map_err(build_error)
        };
        let conditional = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|rv| !rv.is_empty());
        if conditional {
            let stored = self.request(&subject, put(&obj)?).await?;
            return Ok(typed(key.kind, stored));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(cur) = self.get(&key).await? else {
                return Err(StoreError::NotFound(subject));
            };
            let rv = revision_of(&cur)?.to_string();
            set_resource_version(&mut obj, &rv);
            match self.request(&subject, put(&obj)?).await {
                Ok(stored) => return Ok(typed(key.kind, stored)),
                Err(StoreError::Conflict { .. }) if attempt < UPDATE_ATTEMPTS => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait::async_trait]
impl ClusterStore for KubeStore {
    async fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let req = Request::new(collection(key.kind, key.namespace.as_deref()))
            .get(&key.name, &GetParams::default())
            .map_err(build_error)?;
        match self.request(&key.to_string(), req).await {
            Ok(v) => Ok(Some(typed(key.kind, v))),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, kind: Kind, opts: &ListOptions) -> Result<ObjectList, StoreError> {
        let path = collection(kind, opts.namespace.as_deref());
        let lp = ListParams {
            label_selector: opts.label_selector.clone(),
            field_selector: opts.field_selector.clone(),
            ..ListParams::default()
        };
        let req = Request::new(&path).list(&lp).map_err(build_error)?;
        let list = self.request(&path, req).await?;
        let revision = revision_of(&list)?;
        let mut items: Vec<Value> = match list.get("items") {
            Some(Value::Array(items)) => items.iter().cloned().map(|v| typed(kind, v)).collect(),
            _ => Vec::new(),
        };
        let sort_key = |v: &Value| {
            (
                v.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                v.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        items.sort_by_cached_key(sort_key);
        Ok(ObjectList { items, revision })
    }

    async fn create(&self, mut obj: Value) -> Result<Value, StoreError> {
        let key = key_of(&obj)?;
        let subject = key.to_string();
        // The server sets these; Kubernetes refuses a create that names a
        // resourceVersion.
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        let status = match obj.get("status") {
            Some(s) if !s.is_null() && s.as_object().is_none_or(|m| !m.is_empty()) => {
                Some(s.clone())
            }
            _ => None,
        };
        let req = Request::new(collection(key.kind, key.namespace.as_deref()))
            .create(&PostParams::default(), body(&obj)?)
            .map_err(build_error)?;
        let created = typed(key.kind, self.request(&subject, req).await?);
        let Some(status) = status else {
            return Ok(created);
        };
        // Events have no status subresource: the create kept everything.
        if key.kind == Kind::Event || created.get("status") == Some(&status) {
            return Ok(created);
        }
        let mut with_status = created;
        if let Some(m) = with_status.as_object_mut() {
            m.insert("status".into(), status);
        }
        self.replace(with_status, true).await
    }

    async fn update(&self, obj: Value) -> Result<Value, StoreError> {
        self.replace(obj, false).await
    }

    async fn update_status(&self, obj: Value) -> Result<Value, StoreError> {
        self.replace(obj, true).await
    }

    async fn delete(
        &self,
        key: &ObjectKey,
        preconditions: &DeletePreconditions,
    ) -> Result<DeleteOutcome, StoreError> {
        let pre = Preconditions {
            uid: preconditions.uid.clone(),
            resource_version: preconditions.resource_version.map(|r| r.to_string()),
        };
        let dp = DeleteParams {
            preconditions: (pre != Preconditions::default()).then_some(pre),
            ..DeleteParams::default()
        };
        let req = Request::new(collection(key.kind, key.namespace.as_deref()))
            .delete(&key.name, &dp)
            .map_err(build_error)?;
        let v = self.request(&key.to_string(), req).await?;
        if v.get("kind").and_then(Value::as_str) == Some("Status") {
            // Some kinds answer a finished delete with a Status, not the
            // object: all that is known of it is its name.
            let mut meta = json!({ "name": key.name });
            if let Some(ns) = &key.namespace {
                meta["namespace"] = json!(ns);
            }
            return Ok(DeleteOutcome::Deleted(json!({
                "apiVersion": key.kind.api_version(),
                "kind": key.kind.name(),
                "metadata": meta,
            })));
        }
        let v = typed(key.kind, v);
        let marked = v.pointer("/metadata/deletionTimestamp").is_some()
            && v.pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        Ok(if marked {
            DeleteOutcome::Marked(v)
        } else {
            DeleteOutcome::Deleted(v)
        })
    }

    async fn watch(
        &self,
        kind: Kind,
        from: Revision,
        opts: &ListOptions,
    ) -> Result<WatchStream, StoreError> {
        let mut watch = Watch {
            client: self.client.clone(),
            path: collection(kind, opts.namespace.as_deref()),
            kind,
            params: WatchParams {
                label_selector: opts.label_selector.clone(),
                field_selector: opts.field_selector.clone(),
                timeout: Some(self.watch_timeout),
                bookmarks: true,
                ..WatchParams::default()
            },
            last: from,
            events: None,
            done: false,
        };
        // The first request's refusal (a bad selector, a revision already
        // too old) is the call's error, as in the embedded store.
        watch.open().await?;
        Ok(futures::stream::unfold(watch, |mut w| async move {
            let item = w.next_event().await?;
            Some((item, w))
        })
        .boxed())
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let path = collection(Kind::Service, None);
        let req = Request::new(&path)
            .list(&ListParams::default().limit(1))
            .map_err(build_error)?;
        revision_of(&self.request(&path, req).await?)
    }
}

type KubeEvents = BoxStream<'static, Result<kube::core::WatchEvent<Value>, kube::Error>>;

/// One watch of a kind, opened again from the last revision seen whenever
/// the server ends a request.
struct Watch {
    client: kube::Client,
    path: String,
    kind: Kind,
    params: WatchParams,
    /// Every change up to here has been delivered.
    last: Revision,
    events: Option<KubeEvents>,
    done: bool,
}

impl Watch {
    async fn open(&mut self) -> Result<(), StoreError> {
        let req = Request::new(&self.path)
            .watch(&self.params, &self.last.to_string())
            .map_err(build_error)?;
        let events = self
            .client
            .request_events::<Value>(req)
            .await
            .map_err(|e| self.error(e))?;
        self.events = Some(events.boxed());
        Ok(())
    }

    fn error(&self, e: kube::Error) -> StoreError {
        match store_error(&self.path, e) {
            StoreError::TooOld { .. } => StoreError::TooOld {
                requested: self.last,
                oldest: 0,
            },
            other => other,
        }
    }

    /// The next change, or the error that ends the watch (`None` after it).
    async fn next_event(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        use kube::core::WatchEvent as K;
        if self.done {
            return None;
        }
        let mut reopened_empty = 0u32;
        loop {
            let Some(events) = self.events.as_mut() else {
                if let Err(e) = self.open().await {
                    self.done = true;
                    return Some(Err(e));
                }
                continue;
            };
            let ev = match events.next().await {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(self.error(e)));
                }
                None => {
                    // The server's timeout: watch on from the last revision.
                    self.events = None;
                    reopened_empty += 1;
                    if reopened_empty > 1 {
                        // Ended again at once: do not spin on a server
                        // that closes every watch.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    tracing::debug!(path = %self.path, from = self.last, "watch reopened");
                    continue;
                }
            };
            let (obj, wrap): (Value, fn(Value) -> WatchEvent) = match ev {
                K::Added(v) => (v, WatchEvent::Added),
                K::Modified(v) => (v, WatchEvent::Modified),
                K::Deleted(v) => (v, WatchEvent::Deleted),
                K::Bookmark(b) => match parse_revision(&b.metadata.resource_version) {
                    Ok(rev) => {
                        self.last = self.last.max(rev);
                        return Some(Ok(WatchEvent::Progress(self.last)));
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                },
                K::Error(s) => {
                    self.done = true;
                    return Some(Err(self.error(kube::Error::Api(s))));
                }
            };
            match revision_of(&obj) {
                Ok(rev) => self.last = self.last.max(rev),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
            return Some(Ok(wrap(typed(self.kind, obj))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_kind_and_scope() {
        assert_eq!(
            collection(Kind::Service, Some("web")),
            "/apis/shoal.dev/v1alpha1/namespaces/web/services"
        );
        assert_eq!(
            collection(Kind::Service, None),
            "/apis/shoal.dev/v1alpha1/services"
        );
        assert_eq!(
            collection(Kind::Host, Some("ignored")),
            "/apis/shoal.dev/v1alpha1/hosts"
        );
        assert_eq!(
            collection(Kind::Event, Some("a")),
            "/api/v1/namespaces/a/events"
        );
    }

    #[test]
    fn statuses_map_to_store_errors() {
        let st = |code: u16, reason: &str, message: &str| Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Status::default()
        };
        assert!(matches!(
            status_error("x", &st(409, "AlreadyExists", "")),
            StoreError::AlreadyExists(_)
        ));
        assert!(matches!(
            status_error("x", &st(409, "Conflict", "stale")),
            StoreError::Conflict { .. }
        ));
        assert!(matches!(
            status_error("x", &st(410, "Expired", "")),
            StoreError::TooOld { .. }
        ));
        assert!(matches!(
            status_error("x", &st(400, "BadRequest", "unable to parse selector")),
            StoreError::BadSelector(_)
        ));
        assert!(matches!(
            status_error("x", &st(422, "Invalid", "spec.replicas")),
            StoreError::Invalid(_)
        ));
        assert!(status_error("x", &st(503, "ServiceUnavailable", "")).is_retryable());
        assert!(!status_error("x", &st(403, "Forbidden", "")).is_retryable());
    }

    #[test]
    fn keys_need_kind_name_and_namespace() {
        let ok = key_of(&json!({"kind": "Task", "metadata": {"name": "a", "namespace": "n"}}));
        assert_eq!(ok, Ok(ObjectKey::namespaced(Kind::Task, "n", "a")));
        let host = key_of(&json!({"kind": "Host", "metadata": {"name": "h"}}));
        assert_eq!(host, Ok(ObjectKey::cluster(Kind::Host, "h")));
        let no_ns = key_of(&json!({"kind": "Service", "metadata": {"name": "a"}}));
        assert!(matches!(no_ns, Err(StoreError::Invalid(m)) if m.contains("metadata.namespace")));
        let other = key_of(&json!({"kind": "Pod", "metadata": {"name": "a"}}));
        assert!(matches!(other, Err(StoreError::Invalid(m)) if m.contains("Pod")));
        assert!(matches!(
            parse_revision("abc"),
            Err(StoreError::Internal(m)) if m.contains("not an integer")
        ));
    }
}
