//! The `meta.k8s.io/v1` Table format (`Accept: ...;as=Table`), from the
//! CRD's printer columns, with Kubernetes' human-readable ages.

use serde_json::{Value, json};

use crate::model::Resource;

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .next()
            .is_some_and(|first| first.split(';').any(|p| p.trim() == "as=Table"))
    })
}

/// How much of each object rides along in a row (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl Include {
    /// Parses `includeObject`.
    pub fn parse(s: Option<&str>) -> Include {
        match s {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// Column definitions: Name, then the printer columns (Events: kubectl's
/// columns, see [`crate::events::columns`]).
pub fn columns(r: &Resource) -> Value {
    if r.kind == shoal_store::Kind::Event {
        return crate::events::columns();
    }
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace.",
    })];
    for c in &r.columns {
        cols.push(json!({
            "name": c.name,
            "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
            "format": if c.type_ == "date" { "date" } else { "" },
            "priority": c.priority,
            "description": c.description,
        }));
    }
    Value::Array(cols)
}

/// The value at a printer column's JSONPath: `.a.b`, with an index `[N]` or
/// a filter `[?(@.key=="value")]` (first match) after a field, as the CRDs'
/// columns use (e.g. `.status.conditions[?(@.type=="Ready")].status`).
fn lookup<'a>(obj: &'a Value, json_path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for part in path_parts(json_path) {
        let (field, bracket) = match part.find('[') {
            Some(i) => (&part[..i], Some(&part[i..])),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(b) = bracket {
            let inner = b.strip_prefix('[')?.strip_suffix(']')?;
            cur = match inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                Some(filter) => {
                    let (key, want) = filter.split_once("==")?;
                    let want = want.trim().trim_matches(|c| c == '"' || c == '\'');
                    cur.as_array()?
                        .iter()
                        .find(|item| item.get(key.trim()).and_then(Value::as_str) == Some(want))?
                }
                None => cur.get(inner.parse::<usize>().ok()?)?,
            };
        }
    }
    Some(cur)
}

/// Splits a JSONPath at the dots outside brackets.
fn path_parts(json_path: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in json_path.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                if i > start {
                    parts.push(&json_path[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if json_path.len() > start {
        parts.push(&json_path[start..]);
    }
    parts
}

/// Kubernetes' `duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        let d = days % 365;
        return if d == 0 {
            format!("{years}y")
        } else {
            format!("{years}y{d}d")
        };
    }
    format!("{years}y")
}

fn age(ts: &str, now: jiff::Timestamp) -> Value {
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => Value::String(human_duration(now.as_second() - t.as_second())),
        Err(_) => Value::String("<invalid>".into()),
    }
}

/// One row for an object.
pub fn row(r: &Resource, obj: &Value, include: Include, now: jiff::Timestamp) -> Value {
    let cells = if r.kind == shoal_store::Kind::Event {
        crate::events::cells(obj, |ts| match age(ts, now) {
            Value::String(s) => s,
            other => other.to_string(),
        })
    } else {
        cells(r, obj, now)
    };
    let mut row = json!({ "cells": cells });
    match include {
        Include::None => {}
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        Include::Object => row["object"] = obj.clone(),
    }
    row
}

/// The cells of a row: Name, then the printer columns.
fn cells(r: &Resource, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let mut cells = vec![
        obj.pointer("/metadata/name")
            .cloned()
            .unwrap_or(Value::Null),
    ];
    for c in &r.columns {
        let v = lookup(obj, &c.json_path);
        let cell = match (c.type_.as_str(), v) {
            (_, None) | (_, Some(Value::Null)) => Value::Null,
            ("date", Some(Value::String(s))) => age(s, now),
            (_, Some(v)) => v.clone(),
        };
        cells.push(cell);
    }
    cells
}

/// A Table of objects.
pub fn table(r: &Resource, objs: &[Value], include: Include, resource_version: &str) -> Value {
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objs.iter().map(|o| row(r, o, include, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": columns(r),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::model::Model;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60), "3h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86400), "100d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn filters_and_indexes_in_column_paths() {
        let host = json!({ "status": { "conditions": [
            { "type": "Other", "status": "False" },
            { "type": "Ready", "status": "True" }
        ] } });
        let ready = r#".status.conditions[?(@.type=="Ready")].status"#;
        assert_eq!(lookup(&host, ready), Some(&json!("True")));
        assert_eq!(
            lookup(&host, ".status.conditions[0].type"),
            Some(&json!("Other"))
        );
        assert_eq!(
            lookup(&host, r#".status.conditions[?(@.type=="Gone")].status"#),
            None
        );
        assert_eq!(lookup(&json!({}), ready), None);
    }

    #[test]
    fn rows_follow_the_printer_columns() {
        let m = Model::from_crds().unwrap();
        let r = m.by_plural("services").unwrap();
        let obj = json!({
            "metadata": { "name": "web", "creationTimestamp": "2026-01-01T00:00:00Z" },
            "spec": { "mode": "Replicated", "replicas": 3, "template": { "image": "x:1" } },
        });
        let now: jiff::Timestamp = "2026-01-01T00:02:30Z".parse().unwrap();
        let row = row(r, &obj, Include::Metadata, now);
        assert_eq!(
            row["cells"],
            json!(["web", "Replicated", 3, null, "x:1", "2m30s"])
        );
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        let cols = columns(r);
        assert_eq!(cols[0]["name"], "Name");
        assert_eq!(cols.as_array().unwrap().len(), 6);
        assert!(wants_table(Some(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        )));
        assert!(!wants_table(Some("application/json")));
    }
}
