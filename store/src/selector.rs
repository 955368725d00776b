//! Kubernetes label and field selectors in their string form, parsed once and
//! matched against stored objects.
//!
//! Label selectors: comma-separated requirements `a=b`, `a==b`, `a!=b`,
//! `a in (x,y)`, `a notin (x)`, `a` (exists) and `!a` (does not exist). As in
//! Kubernetes, `a!=b` and `a notin (…)` also match objects without label `a`.
//! Field selectors: `metadata.name` and `metadata.namespace` with `=`, `==`
//! and `!=`; a cluster-scoped object's namespace is the empty string.

use serde_json::Value;

use crate::{Kind, ListOptions, StoreError};

/// One label requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the label is absent).
    NotEquals(String, String),
    /// `key in (v1,v2)`.
    In(String, Vec<String>),
    /// `key notin (v1,v2)` (also true when the label is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A parsed label selector: every requirement must hold (empty = everything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, all of which must match.
    pub requirements: Vec<LabelRequirement>,
}

fn bad(sel: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::BadSelector(format!("{sel:?}: {why}"))
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => {
                depth += 1;
                if depth > 1 {
                    return Err("nested parentheses".into());
                }
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    parts.push(&s[start..]);
    Ok(parts)
}

fn parse_set(sel: &str, rest: &str) -> Result<Vec<String>, StoreError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(sel, "a set must be written (v1,v2)"))?;
    let mut values = Vec::new();
    for v in inner.split(',') {
        let v = v.trim();
        if !valid_value(v) {
            return Err(bad(sel, format!("invalid label value {v:?}")));
        }
        values.push(v.to_owned());
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses a selector string; an empty string selects everything.
    pub fn parse(sel: &str) -> Result<Self, StoreError> {
        let mut requirements = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for part in split_top_level(sel).map_err(|e| bad(sel, e))? {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad(sel, "empty requirement"));
            }
            requirements.push(Self::parse_requirement(sel, part)?);
        }
        Ok(Self { requirements })
    }

    fn parse_requirement(sel: &str, part: &str) -> Result<LabelRequirement, StoreError> {
        if let Some(key) = part.strip_prefix('!') {
            let key = key.trim();
            if !valid_key(key) {
                return Err(bad(sel, format!("invalid label key {key:?}")));
            }
            return Ok(LabelRequirement::DoesNotExist(key.to_owned()));
        }
        let key_end = part
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
            .unwrap_or(part.len());
        let key = &part[..key_end];
        if !valid_key(key) {
            return Err(bad(sel, format!("invalid label key in {part:?}")));
        }
        let rest = &part[key_end..];
        let trimmed = rest.trim_start();
        let value = |v: &str| -> Result<String, StoreError> {
            let v = v.trim();
            if valid_value(v) {
                Ok(v.to_owned())
            } else {
                Err(bad(sel, format!("invalid label value {v:?}")))
            }
        };
        if trimmed.is_empty() {
            return Ok(LabelRequirement::Exists(key.to_owned()));
        }
        if let Some(v) = trimmed.strip_prefix("==") {
            return Ok(LabelRequirement::Equals(key.to_owned(), value(v)?));
        }
        if let Some(v) = trimmed.strip_prefix("!=") {
            return Ok(LabelRequirement::NotEquals(key.to_owned(), value(v)?));
        }
        if let Some(v) = trimmed.strip_prefix('=') {
            return Ok(LabelRequirement::Equals(key.to_owned(), value(v)?));
        }
        // `in` / `notin` need whitespace after the key.
        if rest.len() != trimmed.len() {
            if let Some(r) = trimmed.strip_prefix("notin")
                && r.trim_start().starts_with('(')
            {
                return Ok(LabelRequirement::NotIn(key.to_owned(), parse_set(sel, r)?));
            }
            if let Some(r) = trimmed.strip_prefix("in")
                && r.trim_start().starts_with('(')
            {
                return Ok(LabelRequirement::In(key.to_owned(), parse_set(sel, r)?));
            }
        }
        Err(bad(sel, format!("cannot parse requirement {part:?}")))
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

/// A field a field selector may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// `metadata.name`.
    Name,
    /// `metadata.namespace`.
    Namespace,
    /// A field of a kind that has more selectable fields (Events:
    /// `involvedObject.*`, `reason`, `type`, `source`), at this JSON pointer.
    Other(&'static str),
}

/// The fields besides `metadata.name` and `metadata.namespace` that a field
/// selector may name for Events (Kubernetes' set), with their JSON pointers.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject.kind", "/involvedObject/kind"),
    ("involvedObject.namespace", "/involvedObject/namespace"),
    ("involvedObject.name", "/involvedObject/name"),
    ("involvedObject.uid", "/involvedObject/uid"),
    ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
    (
        "involvedObject.resourceVersion",
        "/involvedObject/resourceVersion",
    ),
    ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
    ("reason", "/reason"),
    ("reportingComponent", "/reportingComponent"),
    ("source", "/source/component"),
    ("type", "/type"),
];

/// A parsed field selector: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// `(field, value, equal)`: `equal` is false for `!=`.
    pub requirements: Vec<(Field, String, bool)>,
}

impl FieldSelector {
    /// Parses a field selector string over `metadata.name` and
    /// `metadata.namespace`; an empty string selects everything.
    pub fn parse(sel: &str) -> Result<Self, StoreError> {
        Self::parse_with(sel, &[])
    }

    /// Parses a field selector string for objects of `kind`: Events also
    /// take `involvedObject.{kind,namespace,name,uid,apiVersion,
    /// resourceVersion,fieldPath}`, `reason`, `type`, `source` and
    /// `reportingComponent`.
    pub fn parse_for(kind: Kind, sel: &str) -> Result<Self, StoreError> {
        match kind {
            Kind::Event => Self::parse_with(sel, EVENT_FIELDS),
            _ => Self::parse(sel),
        }
    }

    fn parse_with(sel: &str, extra: &[(&str, &'static str)]) -> Result<Self, StoreError> {
        let mut requirements = Vec::new();
        if sel.trim().is_empty() {
            return Ok(Self { requirements });
        }
        for part in sel.split(',') {
            let part = part.trim();
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, true)
            } else {
                return Err(bad(
                    sel,
                    format!("{part:?} is not field=value or field!=value"),
                ));
            };
            let field = match field.trim() {
                "metadata.name" => Field::Name,
                "metadata.namespace" => Field::Namespace,
                other => match extra.iter().find(|(name, _)| *name == other) {
                    Some((_, pointer)) => Field::Other(pointer),
                    None => {
                        let mut names = vec!["metadata.name", "metadata.namespace"];
                        names.extend(extra.iter().map(|(n, _)| *n));
                        return Err(bad(
                            sel,
                            format!("field {other:?} is not supported ({})", names.join(", ")),
                        ));
                    }
                },
            };
            requirements.push((field, value.trim().to_owned(), equal));
        }
        Ok(Self { requirements })
    }

    /// Whether an object's fields satisfy the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|(field, value, equal)| {
            let actual = match field {
                Field::Name => obj.pointer("/metadata/name"),
                Field::Namespace => obj.pointer("/metadata/namespace"),
                Field::Other(pointer) => obj.pointer(pointer),
            }
            .and_then(Value::as_str)
            .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

/// Everything a list or watch filters by: kind, namespace, labels, fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// The kind.
    pub kind: Kind,
    /// Only this namespace (ignored for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// The label selector.
    pub labels: LabelSelector,
    /// The field selector.
    pub fields: FieldSelector,
}

impl Selector {
    /// Parses list options for a kind.
    pub fn new(kind: Kind, opts: &ListOptions) -> Result<Self, StoreError> {
        Ok(Self {
            kind,
            namespace: if kind.namespaced() {
                opts.namespace.clone()
            } else {
                None
            },
            labels: LabelSelector::parse(opts.label_selector.as_deref().unwrap_or(""))?,
            fields: FieldSelector::parse_for(kind, opts.field_selector.as_deref().unwrap_or(""))?,
        })
    }

    /// Whether an object of this selector's kind matches (namespace, labels,
    /// fields).
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns.as_str())
        {
            return false;
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "prod", "labels": labels}})
    }

    #[test]
    fn label_selector_table() {
        let o = obj(json!({"app": "web", "tier": "front", "zone": "east"}));
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app = web", true),
            ("app=db", false),
            ("app!=db", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("app notin (web, db)", false),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web,db),zone notin (west),!gpu", true),
            ("example.com/role!=x", true),
            ("app in(web)", true),
            ("app=", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&o), *want, "{sel}");
        }
    }

    #[test]
    fn object_without_labels() {
        let o = json!({"metadata": {"name": "x"}});
        assert!(LabelSelector::parse("a!=b").unwrap().matches(&o));
        assert!(LabelSelector::parse("!a").unwrap().matches(&o));
        assert!(!LabelSelector::parse("a").unwrap().matches(&o));
    }

    #[test]
    fn bad_label_selectors() {
        for sel in [
            "=web",
            "app in web",
            "app in (web",
            "app in ((web))",
            "app==we b",
            ",",
            "app=web,",
            "app >1",
            "!",
            "a=b)c",
        ] {
            let got = LabelSelector::parse(sel);
            assert!(
                matches!(got, Err(StoreError::BadSelector(_))),
                "{sel:?} gave {got:?}"
            );
        }
    }

    #[test]
    fn parsed_shapes() {
        assert_eq!(
            LabelSelector::parse("a in (x, y),!b,c!=d")
                .unwrap()
                .requirements,
            vec![
                LabelRequirement::In("a".into(), vec!["x".into(), "y".into()]),
                LabelRequirement::DoesNotExist("b".into()),
                LabelRequirement::NotEquals("c".into(), "d".into()),
            ]
        );
    }

    #[test]
    fn field_selector_table() {
        let o = obj(json!({}));
        let host = json!({"metadata": {"name": "h1"}});
        let cases: &[(&str, &Value, bool)] = &[
            ("metadata.name=web", &o, true),
            ("metadata.name==web", &o, true),
            ("metadata.name!=web", &o, false),
            ("metadata.namespace=prod", &o, true),
            ("metadata.namespace=prod,metadata.name=db", &o, false),
            ("metadata.namespace=", &host, true),
            ("metadata.name=h1", &host, true),
        ];
        for (sel, o, want) in cases {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches(o),
                *want,
                "{sel}"
            );
        }
        for sel in ["spec.replicas=1", "metadata.name", "status.phase!=Running"] {
            assert!(
                matches!(FieldSelector::parse(sel), Err(StoreError::BadSelector(_))),
                "{sel}"
            );
        }
    }

    #[test]
    fn event_field_selectors() {
        let ev = json!({
            "metadata": {"name": "web.1a2b", "namespace": "default"},
            "involvedObject": {"kind": "Service", "name": "web", "namespace": "default", "uid": "u1"},
            "reason": "Scaled", "type": "Normal", "source": {"component": "shoal-orchestrator"},
        });
        let cases: &[(&str, bool)] = &[
            ("involvedObject.kind=Service,involvedObject.name=web", true),
            (
                "involvedObject.namespace=default,involvedObject.uid=u1",
                true,
            ),
            ("involvedObject.uid!=u1", false),
            ("involvedObject.kind=Task", false),
            ("reason=Scaled,type=Normal", true),
            ("type==Warning", false),
            ("source=shoal-orchestrator", true),
            ("involvedObject.fieldPath=", true),
            ("metadata.name=web.1a2b", true),
        ];
        for (sel, want) in cases {
            let f = FieldSelector::parse_for(Kind::Event, sel).unwrap();
            assert_eq!(f.matches(&ev), *want, "{sel}");
        }
        // Only Events have these fields.
        assert!(matches!(
            FieldSelector::parse_for(Kind::Service, "reason=Scaled"),
            Err(StoreError::BadSelector(_))
        ));
        let e = FieldSelector::parse_for(Kind::Event, "message=x").unwrap_err();
        assert!(e.to_string().contains("involvedObject.name"), "{e}");
        let opts = ListOptions {
            field_selector: Some("involvedObject.name=web".into()),
            ..Default::default()
        };
        assert!(Selector::new(Kind::Event, &opts).unwrap().matches(&ev));
        assert!(Selector::new(Kind::Task, &opts).is_err());
    }

    #[test]
    fn selector_namespace_ignored_for_cluster_kinds() {
        let opts = ListOptions {
            namespace: Some("prod".into()),
            ..Default::default()
        };
        let s = Selector::new(Kind::Host, &opts).unwrap();
        assert!(s.matches(&json!({"metadata": {"name": "h1"}})));
        let s = Selector::new(Kind::Task, &opts).unwrap();
        assert!(!s.matches(&json!({"metadata": {"name": "t", "namespace": "dev"}})));
        assert!(s.matches(&json!({"metadata": {"name": "t", "namespace": "prod"}})));
    }
}
