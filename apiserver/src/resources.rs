//! The verbs on `/apis/shoal.dev/v1alpha1/...` (and on the core group's
//! `/api/v1/...events`): get, list, create, update, patch, delete, and the
//! `status` and `scale` subresources. Watch lives in [`crate::watch`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shoal_store::{DeleteOutcome, DeletePreconditions, ListOptions, ObjectKey, StoreError};

use crate::App;
use crate::error::{ApiError, Subject};
use crate::fields::{self, FieldValidation};
use crate::model::Resource;
use crate::table::{self, Include};

/// Query parameters, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Query {
        Query(
            q.map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a repeated key, in order.
    pub(crate) fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub(crate) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }
    fn dry_run(&self) -> bool {
        self.0.iter().any(|(k, v)| k == "dryRun" && v == "All")
    }
}

/// A subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sub {
    Status,
    Scale,
    Log,
    Stats,
    Exec,
}

/// What a path names.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    pub(crate) res: &'a Resource,
    pub(crate) namespace: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) sub: Option<Sub>,
}

impl Target<'_> {
    pub(crate) fn subject(&self) -> Subject {
        Subject {
            plural: self.res.plural.clone(),
            kind: self.res.kind_name().to_owned(),
            name: self.name.clone(),
        }
    }
    fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.res.kind,
            namespace: if self.res.namespaced {
                self.namespace.clone()
            } else {
                None
            },
            name: self.name.clone().unwrap_or_default(),
        }
    }
    pub(crate) fn list_options(&self, q: &Query) -> ListOptions {
        ListOptions {
            namespace: self.namespace.clone(),
            label_selector: q
                .get("labelSelector")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            field_selector: q
                .get("fieldSelector")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        }
    }
}

/// Parses the part of the path after `/apis/shoal.dev/v1alpha1/` (or
/// `/api/v1/` for `api_version` `v1`).
pub(crate) fn parse_target<'a>(app: &'a App, api_version: &str, rest: &str) -> Option<Target<'a>> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, segs) = match segs.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some((*ns).to_owned()), tail),
        s => (None, s),
    };
    let (plural, tail) = segs.split_first()?;
    let res = app.model.by_plural_in(api_version, plural)?;
    if namespace.is_some() && !res.namespaced {
        return None;
    }
    if namespace.is_none() && res.namespaced && !tail.is_empty() {
        return None;
    }
    let (name, sub) = match tail {
        [] => (None, None),
        [name] => (Some((*name).to_owned()), None),
        [name, "status"] if res.status => (Some((*name).to_owned()), Some(Sub::Status)),
        [name, "scale"] if res.scale.is_some() => (Some((*name).to_owned()), Some(Sub::Scale)),
        [name, "log"] if res.kind == shoal_store::Kind::Task => {
            (Some((*name).to_owned()), Some(Sub::Log))
        }
        [name, "stats"] if res.kind == shoal_store::Kind::Task => {
            (Some((*name).to_owned()), Some(Sub::Stats))
        }
        [name, "exec"] if res.kind == shoal_store::Kind::Task => {
            (Some((*name).to_owned()), Some(Sub::Exec))
        }
        _ => return None,
    };
    Some(Target {
        res,
        namespace,
        name,
        sub,
    })
}

/// A JSON response with optional `Warning` headers.
pub(crate) fn json_response(code: StatusCode, body: &Value, warnings: &[String]) -> Response {
    let mut resp = (code, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let text = format!("299 - {:?}", w.replace('"', "'"));
        if let Ok(v) = HeaderValue::from_str(&text) {
            h.append(header::WARNING, v);
        }
    }
    resp
}

pub(crate) fn ok(body: &Value) -> Response {
    json_response(StatusCode::OK, body, &[])
}

/// Dispatches one request on a resource path (`/api/v1/…` or
/// `/apis/shoal.dev/v1alpha1/…`); `upgrade` takes over the connection of
/// one asking for a WebSocket.
pub(crate) async fn handle(
    app: Arc<App>,
    method: Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ApiError> {
    let (api_version, rest) = match uri.path().strip_prefix("/api/v1/") {
        Some(rest) => ("v1", rest),
        None => (
            shoal_crds::API_VERSION,
            uri.path()
                .strip_prefix("/apis/shoal.dev/v1alpha1/")
                .unwrap_or_default(),
        ),
    };
    let query = uri.query();
    let Some(t) = parse_target(&app, api_version, rest) else {
        let prefix = if api_version == "v1" { "api" } else { "apis" };
        return Err(ApiError::no_route(&format!(
            "/{prefix}/{api_version}/{rest}"
        )));
    };
    let q = Query::parse(query);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let as_table = table::wants_table(accept).then(|| Include::parse(q.get("includeObject")));
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let manager = crate::apply::manager_of(q.get("fieldManager"), user_agent);
    crate::apply::check_manager(&manager).map_err(ApiError::bad_request)?;
    let w = Write {
        q: &q,
        manager: &manager,
    };
    match (&t.name, t.sub, &method) {
        (None, _, &Method::GET) => {
            if q.flag("watch") {
                crate::watch::watch(app.clone(), &t, &q, as_table).await
            } else {
                list(&app, &t, &q, as_table).await
            }
        }
        (None, _, &Method::POST) if t.namespace.is_some() || !t.res.namespaced => {
            create(&app, &t, &w, &body).await
        }
        (Some(_), None, &Method::GET) => get(&app, &t, as_table).await,
        (Some(_), None, &Method::PUT) => update(&app, &t, &w, &body).await,
        (Some(_), None, &Method::PATCH) if is_apply(content_type) => {
            server_side_apply(&app, &t, &w, &body).await
        }
        (Some(_), None | Some(Sub::Status), &Method::PATCH) => {
            patch(&app, &t, &w, content_type, &body).await
        }
        (Some(_), None, &Method::DELETE) => delete(&app, &t, &q, &body).await,
        (Some(_), Some(Sub::Status), &Method::GET) => get(&app, &t, None).await,
        (Some(_), Some(Sub::Status), &Method::PUT) => update_status(&app, &t, &q, &body).await,
        (Some(_), Some(Sub::Log), &Method::GET) => crate::logs::serve(&app, &t, &q).await,
        (Some(_), Some(Sub::Stats), &Method::GET) => crate::stats::serve(&app, &t).await,
        (Some(_), Some(Sub::Exec), &Method::POST) => crate::exec::serve(&app, &t, &body).await,
        (Some(_), Some(Sub::Exec), &Method::GET) => {
            crate::exec_ws::serve(&app, &t, &q, headers, upgrade).await
        }
        (Some(_), Some(Sub::Scale), &Method::GET) => {
            let cur = current(&app, &t).await?;
            Ok(ok(&to_scale(&t, &cur)))
        }
        (Some(_), Some(Sub::Scale), &Method::PUT) => {
            let scale = parse_body(&body)?;
            write_scale(&app, &t, &w, scale).await
        }
        (Some(_), Some(Sub::Scale), &Method::PATCH) => {
            let cur = current(&app, &t).await?;
            let scale = apply_patch(to_scale(&t, &cur), content_type, &body)?;
            write_scale(&app, &t, &w, scale).await
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {}",
            t.res.plural
        ))),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn field_validation(q: &Query) -> Result<FieldValidation, ApiError> {
    FieldValidation::parse(q.get("fieldValidation")).map_err(ApiError::bad_request)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = v;
}

fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove(field);
    }
}

/// Checks `apiVersion`, `kind`, name and namespace of a body against the path,
/// filling in what is missing.
fn conform(t: &Target<'_>, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let kind = t.res.kind_name();
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(kind),
        Some(k) if k == kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the body is a {k}, but the path is for {}",
                t.res.plural
            )));
        }
    }
    if obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        obj["apiVersion"] = json!(t.res.api_version);
    }
    if let Some(name) = &t.name {
        match meta_str(obj, "name") {
            None | Some("") => set_meta(obj, "name", json!(name)),
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
    }
    if t.res.namespaced {
        let ns = t.namespace.clone().unwrap_or_default();
        match meta_str(obj, "namespace") {
            None | Some("") => set_meta(obj, "namespace", json!(ns)),
            Some(n) if n == ns => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
                )));
            }
        }
    }
    Ok(())
}

fn check(t: &Target<'_>, obj: Value, mode: FieldValidation) -> Result<fields::Checked, ApiError> {
    let mut s = t.subject();
    if s.name.is_none() {
        s.name = meta_str(&obj, "name").map(str::to_owned);
    }
    if t.res.kind == shoal_store::Kind::Event {
        // Events keep unknown fields (their schema preserves them).
        return crate::events::validate(&obj)
            .map(|()| fields::Checked {
                object: obj,
                warnings: Vec::new(),
            })
            .map_err(|e| ApiError::invalid(&s, &e));
    }
    fields::check(obj, mode).map_err(|e| ApiError::invalid(&s, &e))
}

/// The object now: every write acknowledged before is in it, whichever
/// server answers (see [`shoal_store::ClusterStore::linearize`]).
pub(crate) async fn current(app: &App, t: &Target<'_>) -> Result<Value, ApiError> {
    app.store
        .linearize()
        .await
        .map_err(|e| ApiError::from_store(&t.subject(), e))?;
    match app.store.get(&t.key()).await {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(ApiError::not_found(&t.subject())),
        Err(e) => Err(ApiError::from_store(&t.subject(), e)),
    }
}

async fn get(app: &App, t: &Target<'_>, as_table: Option<Include>) -> Result<Response, ApiError> {
    let obj = current(app, t).await?;
    match as_table {
        Some(inc) => {
            let rv = meta_str(&obj, "resourceVersion")
                .unwrap_or_default()
                .to_owned();
            Ok(ok(&table::table(
                t.res,
                std::slice::from_ref(&obj),
                inc,
                &rv,
            )))
        }
        None => Ok(ok(&obj)),
    }
}

async fn list(
    app: &App,
    t: &Target<'_>,
    q: &Query,
    as_table: Option<Include>,
) -> Result<Response, ApiError> {
    if q.get("continue").is_some_and(|c| !c.is_empty()) {
        return Err(ApiError::bad_request(
            "continue tokens are never issued by this server: lists are not truncated",
        ));
    }
    let opts = t.list_options(q);
    // Without a resourceVersion, the most recent state (Kubernetes' default
    // for a list); with one, any state this server has is recent enough.
    if q.get("resourceVersion").is_none_or(|v| v.is_empty()) {
        app.store
            .linearize()
            .await
            .map_err(|e| ApiError::from_store(&t.subject(), e))?;
    }
    let list = app
        .store
        .list(t.res.kind, &opts)
        .await
        .map_err(|e| ApiError::from_store(&t.subject(), e))?;
    let rv = list.revision.to_string();
    // `limit` is ignored: the whole list comes in one answer, never truncated.
    let body = match as_table {
        Some(inc) => table::table(t.res, &list.items, inc, &rv),
        None => json!({
            "apiVersion": t.res.api_version,
            "kind": format!("{}List", t.res.kind_name()),
            "metadata": { "resourceVersion": rv },
            "items": list.items,
        }),
    };
    Ok(ok(&body))
}

fn generated_name(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    let mut n = h.finish();
    let mut s = prefix.to_owned();
    for _ in 0..5 {
        s.push(char::from(ALPHABET[(n % ALPHABET.len() as u64) as usize]));
        n /= ALPHABET.len() as u64;
    }
    s
}

async fn create(
    app: &App,
    t: &Target<'_>,
    w: &Write<'_>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let q = w.q;
    let mode = field_validation(q)?;
    let mut obj = parse_body(body)?;
    conform(t, &mut obj)?;
    if meta_str(&obj, "name").is_none_or(str::is_empty)
        && let Some(prefix) = meta_str(&obj, "generateName").filter(|p| !p.is_empty())
    {
        let name = generated_name(prefix);
        set_meta(&mut obj, "name", json!(name));
    }
    for f in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
    ] {
        remove_meta(&mut obj, f);
    }
    if t.res.status
        && let Some(m) = obj.as_object_mut()
    {
        // The status subresource owns status: a create starts without one.
        m.remove("status");
    }
    w.record(t, None, &mut obj);
    let checked = check(t, obj, mode)?;
    if q.dry_run() {
        return Ok(json_response(
            StatusCode::CREATED,
            &checked.object,
            &checked.warnings,
        ));
    }
    let mut s = t.subject();
    s.name = meta_str(&checked.object, "name").map(str::to_owned);
    let stored = app
        .store
        .create(checked.object)
        .await
        .map_err(|e| ApiError::from_store(&s, e))?;
    Ok(json_response(
        StatusCode::CREATED,
        &stored,
        &checked.warnings,
    ))
}

async fn update(
    app: &App,
    t: &Target<'_>,
    w: &Write<'_>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let q = w.q;
    let mode = field_validation(q)?;
    let mut obj = parse_body(body)?;
    conform(t, &mut obj)?;
    // The main resource never changes status: validate the object with the
    // stored status, which the store keeps.
    let cur = current(app, t).await?;
    keep_status(&mut obj, &cur);
    w.record(t, Some(&cur), &mut obj);
    let checked = check(t, obj, mode)?;
    if q.dry_run() {
        return Ok(json_response(
            StatusCode::OK,
            &checked.object,
            &checked.warnings,
        ));
    }
    let stored = app
        .store
        .update(checked.object)
        .await
        .map_err(|e| ApiError::from_store(&t.subject(), e))?;
    Ok(json_response(StatusCode::OK, &stored, &checked.warnings))
}

/// `cur` with `status` taken from `from`, and `from`'s resourceVersion (if
/// any) as the precondition.
fn with_status(mut cur: Value, from: &Value) -> Value {
    match from.get("status") {
        Some(st) => cur["status"] = st.clone(),
        None => {
            if let Some(m) = cur.as_object_mut() {
                m.remove("status");
            }
        }
    }
    match meta_str(from, "resourceVersion") {
        Some(rv) if !rv.is_empty() => set_meta(&mut cur, "resourceVersion", json!(rv)),
        _ => remove_meta(&mut cur, "resourceVersion"),
    }
    cur
}

async fn update_status(
    app: &App,
    t: &Target<'_>,
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let mode = field_validation(q)?;
    let mut obj = parse_body(body)?;
    conform(t, &mut obj)?;
    let cur = current(app, t).await?;
    let merged = with_status(cur, &obj);
    let checked = check(t, merged, mode)?;
    if q.dry_run() {
        return Ok(json_response(
            StatusCode::OK,
            &checked.object,
            &checked.warnings,
        ));
    }
    let stored = app
        .store
        .update_status(checked.object)
        .await
        .map_err(|e| ApiError::from_store(&t.subject(), e))?;
    Ok(json_response(StatusCode::OK, &stored, &checked.warnings))
}

/// Applies a patch body of the given media type to a document.
fn apply_patch(mut doc: Value, content_type: &str, body: &Bytes) -> Result<Value, ApiError> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/merge-patch+json" => {
            let p = parse_body(body)?;
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        "application/json-patch+json" => {
            let p = parse_body(body)?;
            let p: json_patch::Patch = serde_json::from_value(p)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &p.0).map_err(|e| {
                ApiError::new(
                    422,
                    "Invalid",
                    format!("the JSON patch does not apply: {e}"),
                )
            })?;
            Ok(doc)
        }
        "application/strategic-merge-patch+json" => Err(ApiError::unsupported_media(
            "strategic merge patch is not supported for shoal.dev resources (as for any custom resource): use a JSON merge patch (application/merge-patch+json) or a JSON patch (application/json-patch+json)",
        )),
        m if m.starts_with("application/apply-patch") => Err(ApiError::unsupported_media(
            "server-side apply is served for whole objects only, not their status or scale: apply the object",
        )),
        other => Err(ApiError::unsupported_media(format!(
            "the media type {other:?} is not supported for PATCH: use application/merge-patch+json or application/json-patch+json"
        ))),
    }
}

/// Who writes, and the write's parameters.
pub(crate) struct Write<'a> {
    pub(crate) q: &'a Query,
    /// The field manager: `fieldManager`, else the client's name.
    pub(crate) manager: &'a str,
}

impl Write<'_> {
    /// Records in `after` the fields this write changes from `before`
    /// (see [`crate::apply`]); not for Events, whose writers do not apply.
    fn record(&self, t: &Target<'_>, before: Option<&Value>, after: &mut Value) {
        if t.res.kind != shoal_store::Kind::Event {
            crate::apply::record_update(before, after, self.manager, &t.res.api_version);
        }
    }
}

/// Gives `obj` the stored object's status (or none): only the status
/// subresource changes it.
fn keep_status(obj: &mut Value, cur: &Value) {
    match cur.get("status") {
        Some(st) => obj["status"] = st.clone(),
        None => {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
    }
}

/// Whether a PATCH is a server-side apply.
fn is_apply(content_type: &str) -> bool {
    content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/apply-patch")
}

/// An apply body: YAML or JSON (which is YAML).
fn parse_apply_body(body: &Bytes) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply configuration is not UTF-8 text"))?;
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        ApiError::bad_request(format!("the apply configuration is not YAML or JSON: {e}"))
    })
}

/// `PATCH` with `application/apply-patch+yaml`: server-side apply of the
/// configuration in the body by `fieldManager` (required), creating the
/// object if it does not exist (see [`crate::apply`]).
async fn server_side_apply(
    app: &App,
    t: &Target<'_>,
    w: &Write<'_>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let q = w.q;
    let mode = field_validation(q)?;
    if q.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::new(
            422,
            "Invalid",
            "fieldManager: Required value: is required for apply patch",
        ));
    }
    let force = q.flag("force");
    let mut config = parse_apply_body(body)?;
    conform(t, &mut config)?;
    if config.get("apiVersion").and_then(Value::as_str) != Some(t.res.api_version.as_str()) {
        return Err(ApiError::bad_request(format!(
            "apiVersion: the configuration must be {} for this path",
            t.res.api_version
        )));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cur = match current(app, t).await {
            Ok(c) => Some(c),
            Err(e) if e.code == 404 => None,
            Err(e) => return Err(e),
        };
        let mut obj =
            crate::apply::apply(cur.as_ref(), &config, w.manager, &t.res.api_version, force)
                .map_err(|c| ApiError {
                    code: 409,
                    reason: "Conflict",
                    message: c.message(),
                    details: Some(json!({
                        "name": t.name,
                        "group": shoal_crds::GROUP,
                        "kind": t.res.plural,
                        "causes": c.0.iter().map(|(m, f)| json!({
                            "reason": "FieldManagerConflict",
                            "message": format!("conflict with {m:?}"),
                            "field": f,
                        })).collect::<Vec<_>>(),
                    })),
                })?;
        let Some(cur) = cur else {
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
            let checked = check(t, obj, mode)?;
            if q.dry_run() {
                return Ok(json_response(
                    StatusCode::CREATED,
                    &checked.object,
                    &checked.warnings,
                ));
            }
            match app.store.create(checked.object).await {
                Ok(stored) => {
                    return Ok(json_response(
                        StatusCode::CREATED,
                        &stored,
                        &checked.warnings,
                    ));
                }
                // Created meanwhile: apply to it.
                Err(StoreError::AlreadyExists(_)) if attempt < PATCH_ATTEMPTS => continue,
                Err(e) => return Err(ApiError::from_store(&t.subject(), e)),
            }
        };
        keep_status(&mut obj, &cur);
        let checked = check(t, obj, mode)?;
        if q.dry_run() {
            return Ok(json_response(
                StatusCode::OK,
                &checked.object,
                &checked.warnings,
            ));
        }
        match app.store.update(checked.object).await {
            Ok(stored) => return Ok(json_response(StatusCode::OK, &stored, &checked.warnings)),
            Err(StoreError::Conflict { .. }) if attempt < PATCH_ATTEMPTS => continue,
            Err(e) => return Err(ApiError::from_store(&t.subject(), e)),
        }
    }
}

/// How many times a patch is retried on a concurrent write.
const PATCH_ATTEMPTS: usize = 8;

async fn patch(
    app: &App,
    t: &Target<'_>,
    w: &Write<'_>,
    content_type: &str,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let q = w.q;
    let mode = field_validation(q)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let cur = current(app, t).await?;
        let cur_rv = meta_str(&cur, "resourceVersion")
            .unwrap_or_default()
            .to_owned();
        let mut patched = apply_patch(cur.clone(), content_type, body)?;
        // A resourceVersion set by the patch is a precondition.
        let precondition = match meta_str(&patched, "resourceVersion") {
            Some(rv) if rv != cur_rv => Some(rv.to_owned()),
            _ => None,
        };
        if patched.get("metadata").is_some_and(|m| !m.is_object()) || !patched.is_object() {
            return Err(ApiError::bad_request(
                "the patch replaces the object or its metadata",
            ));
        }
        conform(t, &mut patched)?;
        for f in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
        ] {
            match cur.get("metadata").and_then(|m| m.get(f)) {
                Some(v) => set_meta(&mut patched, f, v.clone()),
                None => remove_meta(&mut patched, f),
            }
        }
        let new = if t.sub == Some(Sub::Status) {
            with_status(cur.clone(), &patched)
        } else {
            keep_status(&mut patched, &cur);
            w.record(t, Some(&cur), &mut patched);
            patched
        };
        let mut new = new;
        set_meta(
            &mut new,
            "resourceVersion",
            json!(precondition.clone().unwrap_or(cur_rv)),
        );
        let checked = check(t, new, mode)?;
        if q.dry_run() {
            return Ok(json_response(
                StatusCode::OK,
                &checked.object,
                &checked.warnings,
            ));
        }
        let res = if t.sub == Some(Sub::Status) {
            app.store.update_status(checked.object).await
        } else {
            app.store.update(checked.object).await
        };
        match res {
            Ok(stored) => return Ok(json_response(StatusCode::OK, &stored, &checked.warnings)),
            Err(StoreError::Conflict { .. })
                if precondition.is_none() && attempt < PATCH_ATTEMPTS =>
            {
                continue;
            }
            Err(e) => return Err(ApiError::from_store(&t.subject(), e)),
        }
    }
}

fn scale_replicas(t: &Target<'_>, obj: &Value, status: bool) -> i64 {
    let path = t
        .res
        .scale
        .as_ref()
        .map(|(spec, st)| if status { st.clone() } else { spec.clone() })
        .unwrap_or_default();
    let ptr = path.replace('.', "/");
    obj.pointer(&ptr).and_then(Value::as_i64).unwrap_or(0)
}

/// The `autoscaling/v1` Scale of an object.
fn to_scale(t: &Target<'_>, obj: &Value) -> Value {
    let mut meta = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = obj.get("metadata").and_then(|m| m.get(f)) {
            meta[f] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": { "replicas": scale_replicas(t, obj, false) },
        "status": { "replicas": scale_replicas(t, obj, true), "selector": "" },
    })
}

async fn write_scale(
    app: &App,
    t: &Target<'_>,
    w: &Write<'_>,
    scale: Value,
) -> Result<Response, ApiError> {
    let q = w.q;
    let mode = field_validation(q)?;
    let Some(replicas) = scale.pointer("/spec/replicas").and_then(Value::as_i64) else {
        return Err(ApiError::new(
            422,
            "Invalid",
            "spec.replicas: Required value: a Scale needs an integer spec.replicas",
        ));
    };
    if let Some(n) = meta_str(&scale, "name")
        && Some(n) != t.name.as_deref()
    {
        return Err(ApiError::bad_request(
            "the name of the Scale does not match the URL",
        ));
    }
    let precondition = meta_str(&scale, "resourceVersion")
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let spec_path = t
        .res
        .scale
        .as_ref()
        .map(|(spec, _)| spec.clone())
        .unwrap_or_default();
    let parts: Vec<&str> = spec_path.trim_start_matches('.').split('.').collect();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut obj = current(app, t).await?;
        let before = obj.clone();
        let cur_rv = meta_str(&obj, "resourceVersion")
            .unwrap_or_default()
            .to_owned();
        let mut slot = &mut obj;
        for p in &parts {
            if !slot.get(*p).is_some_and(Value::is_object) && Some(p) != parts.last() {
                slot[*p] = json!({});
            }
            slot = &mut slot[*p];
        }
        *slot = json!(replicas);
        w.record(t, Some(&before), &mut obj);
        set_meta(
            &mut obj,
            "resourceVersion",
            json!(precondition.clone().unwrap_or(cur_rv)),
        );
        let checked = check(t, obj, mode)?;
        if q.dry_run() {
            return Ok(ok(&to_scale(t, &checked.object)));
        }
        match app.store.update(checked.object).await {
            Ok(stored) => return Ok(ok(&to_scale(t, &stored))),
            Err(StoreError::Conflict { .. })
                if precondition.is_none() && attempt < PATCH_ATTEMPTS =>
            {
                continue;
            }
            Err(e) => return Err(ApiError::from_store(&t.subject(), e)),
        }
    }
}

async fn delete(app: &App, t: &Target<'_>, q: &Query, body: &Bytes) -> Result<Response, ApiError> {
    let mut pre = DeletePreconditions::default();
    let mut dry_run = q.dry_run();
    if !body.is_empty() {
        let opts = parse_body(body)?;
        if let Some(p) = opts.get("preconditions") {
            pre.uid = p.get("uid").and_then(Value::as_str).map(str::to_owned);
            if let Some(rv) = p.get("resourceVersion").and_then(Value::as_str) {
                pre.resource_version = Some(rv.parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "preconditions.resourceVersion {rv:?} is not a resource version"
                    ))
                })?);
            }
        }
        if opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"))
        {
            dry_run = true;
        }
    }
    if dry_run {
        let cur = current(app, t).await?;
        return Ok(ok(&cur));
    }
    match app.store.delete(&t.key(), &pre).await {
        Ok(DeleteOutcome::Deleted(v)) => Ok(ok(&v)),
        Ok(DeleteOutcome::Marked(v)) => Ok(json_response(StatusCode::ACCEPTED, &v, &[])),
        Err(e) => Err(ApiError::from_store(&t.subject(), e)),
    }
}
