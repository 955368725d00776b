//! The core group's `v1` Event, served at `/api/v1/events` and
//! `/api/v1/namespaces/{ns}/events[/{name}]` with the verbs of the
//! `shoal.dev` resources: its place in the [`Model`](crate::model::Model),
//! its validation and its Table columns (kubectl's: Last Seen, Type, Reason,
//! Object, Message; Subobject, Source, First Seen, Count and Name with
//! `-o wide`).

use serde_json::{Value, json};
use shoal_crds::{FieldError, ValidationErrors};
use shoal_store::Kind;

use crate::model::{PrinterColumn, Resource};

/// The served Event resource.
pub fn resource() -> Resource {
    Resource {
        kind: Kind::Event,
        api_version: "v1".into(),
        plural: "events".into(),
        singular: "event".into(),
        short_names: vec!["ev".into()],
        categories: Vec::new(),
        namespaced: true,
        // Not used for Tables (see `columns`), but listed for completeness.
        columns: vec![
            col("Last Seen", "string", ".lastTimestamp", 0),
            col("Type", "string", ".type", 0),
            col("Reason", "string", ".reason", 0),
            col("Object", "string", ".involvedObject.name", 0),
            col("Message", "string", ".message", 0),
        ],
        status: false,
        scale: None,
        schema: schema(),
    }
}

fn col(name: &str, type_: &str, json_path: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        json_path: json_path.into(),
        priority,
        description: String::new(),
    }
}

/// A permissive OpenAPI v3 schema: the fields Shoal reads, unknown ones kept.
fn schema() -> Value {
    let s = json!({ "type": "string" });
    let reference = json!({
        "type": "object",
        "properties": {
            "apiVersion": s, "kind": s, "name": s, "namespace": s, "uid": s,
            "resourceVersion": s, "fieldPath": s,
        },
        "x-kubernetes-preserve-unknown-fields": true,
    });
    json!({
        "description": "Event is a report of an event somewhere in the cluster.",
        "type": "object",
        "required": ["metadata", "involvedObject"],
        "properties": {
            "apiVersion": s, "kind": s,
            "metadata": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
            "involvedObject": reference,
            "related": reference,
            "reason": s, "message": s, "type": s, "action": s,
            "source": { "type": "object", "properties": { "component": s, "host": s } },
            "firstTimestamp": { "type": "string", "format": "date-time" },
            "lastTimestamp": { "type": "string", "format": "date-time" },
            "eventTime": { "type": "string", "format": "date-time" },
            "count": { "type": "integer", "format": "int32" },
            "reportingComponent": s, "reportingInstance": s,
        },
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

fn err(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

fn str_at<'a>(obj: &'a Value, ptr: &str) -> Option<&'a str> {
    obj.pointer(ptr).and_then(Value::as_str)
}

/// Validates an Event about to be written: it must decode as a core/v1
/// Event, name its object (`involvedObject.name`) and a `reason`; `type`, if
/// set, is `Normal` or `Warning`; `involvedObject.namespace`, if set, is the
/// Event's namespace.
pub fn validate(obj: &Value) -> Result<(), ValidationErrors> {
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::core::v1::Event>(obj.clone()) {
        return Err(ValidationErrors(vec![err(
            "",
            format!("not a v1 Event: {e}"),
        )]));
    }
    let mut errs = Vec::new();
    if str_at(obj, "/involvedObject/name").is_none_or(str::is_empty) {
        errs.push(err("involvedObject.name", "required"));
    }
    if str_at(obj, "/reason").is_none_or(str::is_empty) {
        errs.push(err("reason", "required"));
    }
    match str_at(obj, "/type") {
        None | Some("" | "Normal" | "Warning") => {}
        Some(t) => errs.push(err(
            "type",
            format!("{t:?} is not supported: use Normal or Warning"),
        )),
    }
    if let Some(ns) = str_at(obj, "/involvedObject/namespace").filter(|n| !n.is_empty())
        && Some(ns) != str_at(obj, "/metadata/namespace")
    {
        errs.push(err(
            "involvedObject.namespace",
            "does not match the namespace of the event",
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errs))
    }
}

/// Table column definitions, as Kubernetes prints Events.
pub fn columns() -> Value {
    let c = |name: &str, priority: i64, description: &str| {
        json!({ "name": name, "type": "string", "format": if name == "Name" { "name" } else { "" },
                "priority": priority, "description": description })
    };
    json!([
        c("Last Seen", 0, "When the event last happened."),
        c("Type", 0, "Normal or Warning."),
        c("Reason", 0, "Why the event happened, in one word."),
        c("Object", 0, "The object the event is about."),
        c("Subobject", 1, "The part of the object (fieldPath)."),
        c("Source", 1, "The component that reported the event."),
        c("Message", 0, "What happened, for a person."),
        c("First Seen", 1, "When the event first happened."),
        c("Count", 1, "How many times the event happened."),
        c("Name", 1, "Name must be unique within a namespace."),
    ])
}

/// The Table cells of an Event, in the order of [`columns`].
pub fn cells(ev: &Value, age: impl Fn(&str) -> String) -> Vec<Value> {
    let s = |p: &str| str_at(ev, p).unwrap_or_default().to_owned();
    let first = str_at(ev, "/firstTimestamp")
        .or_else(|| str_at(ev, "/eventTime"))
        .map(&age)
        .unwrap_or_else(|| "<unknown>".into());
    let count = ev.get("count").and_then(Value::as_i64).unwrap_or(1);
    let last = shoal_store::events::last_seen(ev)
        .map(&age)
        .unwrap_or_else(|| "<unknown>".into());
    let last_seen = if count > 1 {
        format!("{last} (x{count} over {first})")
    } else {
        last
    };
    let object = format!(
        "{}/{}",
        s("/involvedObject/kind").to_lowercase(),
        s("/involvedObject/name")
    );
    let mut source = s("/source/component");
    if source.is_empty() {
        source = s("/reportingComponent");
    }
    vec![
        json!(last_seen),
        json!(s("/type")),
        json!(s("/reason")),
        json!(object),
        json!(s("/involvedObject/fieldPath")),
        json!(source),
        json!(s("/message").trim()),
        json!(first),
        json!(count),
        json!(s("/metadata/name")),
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ev() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": { "name": "web.1", "namespace": "default" },
            "involvedObject": { "kind": "Service", "name": "web", "namespace": "default" },
            "reason": "Scaled", "message": "Scaled from 3 to 5 replicas", "type": "Normal",
            "count": 3, "firstTimestamp": "2026-01-01T00:00:00Z",
            "lastTimestamp": "2026-01-01T00:01:00Z",
            "source": { "component": "shoal-orchestrator" },
        })
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate(&ev()).is_ok());
        let mut e = ev();
        e["involvedObject"].as_object_mut().unwrap().remove("name");
        e.as_object_mut().unwrap().remove("reason");
        assert_eq!(
            validate(&e).unwrap_err().paths(),
            vec!["involvedObject.name", "reason"]
        );
        let mut e = ev();
        e["type"] = json!("Fatal");
        e["involvedObject"]["namespace"] = json!("other");
        assert_eq!(
            validate(&e).unwrap_err().paths(),
            vec!["type", "involvedObject.namespace"]
        );
        let mut e = ev();
        e["count"] = json!("many");
        assert!(validate(&e).is_err());
    }

    #[test]
    fn cells_read_like_kubectl() {
        let cells = cells(&ev(), |t| format!("age({t})"));
        assert_eq!(
            cells,
            vec![
                json!("age(2026-01-01T00:01:00Z) (x3 over age(2026-01-01T00:00:00Z))"),
                json!("Normal"),
                json!("Scaled"),
                json!("service/web"),
                json!(""),
                json!("shoal-orchestrator"),
                json!("Scaled from 3 to 5 replicas"),
                json!("age(2026-01-01T00:00:00Z)"),
                json!(3),
                json!("web.1"),
            ]
        );
        assert_eq!(columns().as_array().unwrap().len(), cells.len());
    }
}
