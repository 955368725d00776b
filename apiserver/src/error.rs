//! API errors as Kubernetes `Status` bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shoal_crds::ValidationErrors;
use shoal_store::StoreError;

/// One failed request: the HTTP code, the Kubernetes `reason`, a message for
/// people and optional `details`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason` (`NotFound`, `Conflict`, `Invalid`…).
    pub reason: &'static str,
    /// `Status.message`.
    pub message: String,
    /// `Status.details`, if any.
    pub details: Option<Value>,
}

/// What a request was about, for error messages and details.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// Plural resource name (`services`).
    pub plural: String,
    /// Kind (`Service`).
    pub kind: String,
    /// Object name, if one.
    pub name: Option<String>,
}

impl Subject {
    /// The API group: the core group (`""`) for Events, else `shoal.dev`.
    fn group(&self) -> &'static str {
        if self.kind == "Event" {
            ""
        } else {
            shoal_crds::GROUP
        }
    }
    fn qualified(&self) -> String {
        match self.group() {
            "" => self.plural.clone(),
            g => format!("{}.{g}", self.plural),
        }
    }
    /// `Kind.group` as Kubernetes writes it in 422 messages (`Event` alone
    /// for the core group).
    fn qualified_kind(&self) -> String {
        match self.group() {
            "" => self.kind.clone(),
            g => format!("{}.{g}", self.kind),
        }
    }
    fn details(&self) -> Value {
        let mut d = json!({ "group": self.group(), "kind": self.plural });
        if let Some(n) = &self.name {
            d["name"] = Value::String(n.clone());
        }
        d
    }
}

impl ApiError {
    /// A plain error without details.
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }
    /// 404 for a path that names nothing served.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }
    /// 405 for a verb a resource does not support.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }
    /// 415 Unsupported Media Type.
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }
    /// 413 Request Entity Too Large.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }
    /// 404 for a missing object.
    pub fn not_found(s: &Subject) -> Self {
        let name = s.name.clone().unwrap_or_default();
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} {name:?} not found", s.qualified()),
            details: Some(s.details()),
        }
    }
    /// 422 with one cause per field error.
    pub fn invalid(s: &Subject, errs: &ValidationErrors) -> Self {
        let causes: Vec<Value> = errs
            .0
            .iter()
            .map(|e| {
                let reason = if e.message == "unknown field" {
                    "FieldValueNotSupported"
                } else if e.message == "required" {
                    "FieldValueRequired"
                } else {
                    "FieldValueInvalid"
                };
                json!({ "reason": reason, "message": e.message, "field": e.path })
            })
            .collect();
        let list: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        let name = s.name.clone().unwrap_or_default();
        let mut details = s.details();
        details["kind"] = Value::String(s.kind.clone());
        details["causes"] = Value::Array(causes);
        Self {
            code: 422,
            reason: "Invalid",
            message: format!(
                "{} {name:?} is invalid: [{}]",
                s.qualified_kind(),
                list.join(", ")
            ),
            details: Some(details),
        }
    }
    /// A store error, in Kubernetes terms.
    pub fn from_store(s: &Subject, e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::not_found(s),
            StoreError::AlreadyExists(_) => Self {
                code: 409,
                reason: "AlreadyExists",
                message: format!(
                    "{} {:?} already exists",
                    s.qualified(),
                    s.name.clone().unwrap_or_default()
                ),
                details: Some(s.details()),
            },
            StoreError::Conflict { message, .. } => Self {
                code: 409,
                reason: "Conflict",
                message: format!(
                    "Operation cannot be fulfilled on {} {:?}: {message}; the object has been modified; please apply your changes to the latest version and try again",
                    s.qualified(),
                    s.name.clone().unwrap_or_default()
                ),
                details: Some(s.details()),
            },
            StoreError::Invalid(m) => Self {
                code: 422,
                reason: "Invalid",
                message: format!(
                    "{} {:?} is invalid: {m}",
                    s.qualified(),
                    s.name.clone().unwrap_or_default()
                ),
                details: Some(s.details()),
            },
            StoreError::BadSelector(m) => {
                Self::bad_request(format!("unable to parse requirement: {m}"))
            }
            StoreError::TooOld { requested, oldest } => Self::gone(requested, oldest),
            StoreError::Unavailable(m) => Self::new(503, "ServiceUnavailable", m),
            StoreError::Internal(m) => Self::new(500, "InternalError", m),
        }
    }
    /// 410 Gone for a watch from a revision older than the history.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }
    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = self.status().to_string();
        let mut resp = (code, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The store is electing a leader (or lost its majority): clients
        // that honour Retry-After (kubectl, client-go) try again in a second.
        if code == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn subject() -> Subject {
        Subject {
            plural: "services".into(),
            kind: "Service".into(),
            name: Some("web".into()),
        }
    }

    #[test]
    fn only_an_unavailable_store_asks_to_retry() {
        let busy = ApiError::from_store(
            &subject(),
            StoreError::Unavailable("no Raft leader at the moment".into()),
        )
        .into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let missing =
            ApiError::from_store(&subject(), StoreError::NotFound("web".into())).into_response();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.headers().get(header::RETRY_AFTER).is_none());
    }
}
