//! Server-side apply and field ownership (`metadata.managedFields`), as
//! Kubernetes does it for custom resources, so `kubectl apply
//! --server-side`, kube-rs' `Patch::Apply` and GitOps tools (Flux) work.
//!
//! Every field of an object may be owned by managers: each entry of
//! `managedFields` names a manager, its operation (`Apply` for a manager's
//! applied configuration, `Update` for other writes) and the fields
//! (`fieldsV1`: `{"f:spec": {"f:replicas": {}}}`). A field is a leaf of the
//! object: a scalar, a list (lists are atomic, as in a CRD without list
//! markers) or an empty map.
//!
//! - An apply by manager M sets the fields of its configuration; a field
//!   another manager owns with a different value is a conflict (409, each
//!   field named) unless `force=true`, which takes it over. Fields M applied
//!   before and leaves out now are removed, unless another manager owns
//!   them too. M then owns exactly the fields of its configuration.
//! - Any other write by manager M (create, update, patch, scale) makes M the
//!   owner of the fields it changed; the fields it removed are no one's.
//!
//! Status is not tracked (its writers are the control plane's).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field: the keys from the object's top to a leaf.
type Path = Vec<String>;

/// A set of fields.
type Fields = BTreeSet<Path>;

/// Metadata that belongs to the server or names the object: never owned.
const SERVER_META: [&str; 11] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
    "generateName",
];

/// The owned fields of `obj`: everything but its type, its status and the
/// server's metadata.
fn fields_of(obj: &Value) -> Fields {
    let mut out = Fields::new();
    let Some(top) = obj.as_object() else {
        return out;
    };
    for (k, v) in top {
        match k.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                if let Some(meta) = v.as_object() {
                    for (mk, mv) in meta {
                        if !SERVER_META.contains(&mk.as_str()) {
                            leaves(mv, vec![k.clone(), mk.clone()], &mut out);
                        }
                    }
                }
            }
            _ => leaves(v, vec![k.clone()], &mut out),
        }
    }
    out
}

fn leaves(v: &Value, at: Path, out: &mut Fields) {
    match v {
        Value::Null => {}
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                let mut p = at.clone();
                p.push(k.clone());
                leaves(c, p, out);
            }
        }
        _ => {
            out.insert(at);
        }
    }
}

fn value_at<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |v, k| v.get(k))
}

/// Removes the field at `p`, and the maps it leaves empty.
fn remove_at(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    if let Some(parent) = parents
        .iter()
        .try_fold(&mut *v, |v, k| v.get_mut(k))
        .and_then(Value::as_object_mut)
    {
        parent.remove(last);
        if parent.is_empty() && !parents.is_empty() {
            remove_at(v, parents);
        }
    }
}

/// Sets the field at `p` to `value`, making the maps on the way.
fn set_at(v: &mut Value, p: &[String], value: Value) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for k in parents {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = json!({});
        }
        cur = &mut cur[k.as_str()];
    }
    match (cur.get(last), &value) {
        // An empty map owns the map, not what is in it.
        (Some(Value::Object(_)), Value::Object(m)) if m.is_empty() => {}
        _ => cur[last.as_str()] = value,
    }
}

/// The `fieldsV1` form of every owned field of `obj` (as
/// `to_fields_v1(&fields_of(obj))`, in one pass: a create records them all).
fn owned_fields_v1(obj: &Value) -> Value {
    fn walk(v: &Value) -> Value {
        match v {
            Value::Object(m) if !m.is_empty() => Value::Object(
                m.iter()
                    .filter(|(_, c)| !c.is_null())
                    .map(|(k, c)| (format!("f:{k}"), walk(c)))
                    .collect(),
            ),
            _ => Value::Object(Map::new()),
        }
    }
    let mut out = Map::new();
    let Some(top) = obj.as_object() else {
        return Value::Object(out);
    };
    for (k, v) in top {
        match k.as_str() {
            "apiVersion" | "kind" | "status" => {}
            "metadata" => {
                let owned: Map<String, Value> = v
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(mk, mv)| !SERVER_META.contains(&mk.as_str()) && !mv.is_null())
                    .map(|(mk, mv)| (format!("f:{mk}"), walk(mv)))
                    .collect();
                if !owned.is_empty() {
                    out.insert("f:metadata".into(), Value::Object(owned));
                }
            }
            _ if !v.is_null() => {
                out.insert(format!("f:{k}"), walk(v));
            }
            _ => {}
        }
    }
    Value::Object(out)
}

/// The `fieldsV1` form of a set.
fn to_fields_v1(fields: &Fields) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut cur = &mut root;
        for k in p {
            let entry = cur
                .entry(format!("f:{k}"))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else {
                break;
            };
            cur = next;
        }
    }
    Value::Object(root)
}

/// A set from its `fieldsV1` form (keys other than `f:` ones, which Shoal
/// does not write, are skipped).
fn from_fields_v1(v: &Value) -> Fields {
    fn walk(v: &Value, at: Path, out: &mut Fields) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !at.is_empty() {
                out.insert(at);
            }
            return;
        }
        for (k, c) in children {
            let mut p = at.clone();
            p.push(k[2..].to_string());
            walk(c, p, out);
        }
    }
    let mut out = Fields::new();
    walk(v, Vec::new(), &mut out);
    out
}

/// The path as Kubernetes prints it: `.spec.replicas`.
fn dotted(p: &Path) -> String {
    p.iter().map(|k| format!(".{k}")).collect()
}

/// One entry of `managedFields`.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    apply: bool,
    api_version: String,
    time: String,
    fields: Fields,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({
            "manager": self.manager,
            "operation": if self.apply { "Apply" } else { "Update" },
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&self.fields),
        })
    }

    fn from_json(v: &Value) -> Option<Entry> {
        Some(Entry {
            manager: v.get("manager")?.as_str()?.to_owned(),
            apply: v.get("operation").and_then(Value::as_str) == Some("Apply"),
            api_version: v
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            time: v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            fields: v.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
    }
}

fn entries_of(obj: &Value) -> Vec<Entry> {
    obj.get("metadata")
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Entry::from_json).collect())
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Another manager owns fields an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflicts(pub(crate) Vec<(String, String)>);

impl Conflicts {
    /// Kubernetes' message: `Apply failed with 1 conflict: conflict with
    /// "kubectl" using shoal.dev/v1alpha1: .spec.replicas`.
    pub(crate) fn message(&self) -> String {
        let n = self.0.len();
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(m, f)| format!("conflict with {m:?}: {f}"))
            .collect();
        format!(
            "Apply failed with {n} conflict{}: {}; apply again with force (kubectl apply --server-side --force-conflicts) to take them over, or leave them out of the configuration",
            if n == 1 { "" } else { "s" },
            list.join(", ")
        )
    }
}

/// The object after manager `manager` applies `config` to `current` (or
/// to nothing yet): its fields set, those it no longer applies removed, the
/// ownership recorded. `config` has been checked to name the same object.
pub(crate) fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    api_version: &str,
    force: bool,
) -> Result<Value, Conflicts> {
    let applied = fields_of(config);
    let mut entries = current.map(entries_of).unwrap_or_default();
    let mut obj = match current {
        Some(c) => c.clone(),
        None => {
            let mut o =
                json!({"apiVersion": config["apiVersion"], "kind": config["kind"], "metadata": {}});
            for k in ["name", "namespace", "generateName"] {
                if let Some(v) = config.get("metadata").and_then(|m| m.get(k)) {
                    o["metadata"][k] = v.clone();
                }
            }
            o
        }
    };
    // Fields another manager owns, which this configuration would change.
    let mut conflicts = Vec::new();
    // (The same name's updates count as another manager's, as in
    // Kubernetes: `kubectl scale` then `kubectl apply --server-side`.)
    for e in entries
        .iter_mut()
        .filter(|e| !(e.manager == manager && e.apply))
    {
        let clashing: Vec<Path> = e
            .fields
            .intersection(&applied)
            .filter(|p| value_at(&obj, p) != value_at(config, p))
            .cloned()
            .collect();
        if force {
            for p in &clashing {
                e.fields.remove(p);
            }
        } else {
            conflicts.extend(clashing.iter().map(|p| (e.manager.clone(), dotted(p))));
        }
    }
    if !conflicts.is_empty() {
        return Err(Conflicts(conflicts));
    }
    // What this manager applied before and leaves out now goes, unless
    // someone else owns it too.
    let before = entries
        .iter()
        .find(|e| e.manager == manager && e.apply)
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    for p in before.difference(&applied) {
        let shared = entries
            .iter()
            .any(|e| !(e.manager == manager && e.apply) && e.fields.contains(p));
        if !shared {
            remove_at(&mut obj, p);
        }
    }
    for p in &applied {
        if let Some(v) = value_at(config, p) {
            set_at(&mut obj, p, v.clone());
        }
    }
    entries.retain(|e| !(e.manager == manager && e.apply));
    entries.push(Entry {
        manager: manager.to_owned(),
        apply: true,
        api_version: api_version.to_owned(),
        time: now(),
        fields: applied,
    });
    write_entries(&mut obj, &entries);
    Ok(obj)
}

/// Records a write other than an apply by `manager`: it owns what it
/// changed from `before` (nothing: a create); what it removed is no one's.
/// `after`'s own `managedFields` (a client's) are replaced by the record.
pub(crate) fn record_update(
    before: Option<&Value>,
    after: &mut Value,
    manager: &str,
    api_version: &str,
) {
    let Some(before) = before else {
        // A create: the writer owns every field it wrote.
        let fields_v1 = owned_fields_v1(after);
        if let Some(meta) = after.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
            if fields_v1.as_object().is_some_and(|m| !m.is_empty()) {
                let entry = json!({
                    "manager": manager,
                    "operation": "Update",
                    "apiVersion": api_version,
                    "time": now(),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1,
                });
                meta.insert("managedFields".into(), Value::Array(vec![entry]));
            }
        }
        return;
    };
    let before = Some(before);
    let new = fields_of(after);
    let old = before.map(fields_of).unwrap_or_default();
    let changed: Fields = new
        .iter()
        .filter(|p| before.and_then(|b| value_at(b, p)) != value_at(after, p))
        .cloned()
        .collect();
    let mut entries = before.map(entries_of).unwrap_or_default();
    if changed.is_empty() && old.is_subset(&new) {
        write_entries(after, &entries);
        return;
    }
    for e in &mut entries {
        e.fields.retain(|p| new.contains(p) && !changed.contains(p));
    }
    if !changed.is_empty() {
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && !e.apply)
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now();
            }
            None => entries.push(Entry {
                manager: manager.to_owned(),
                apply: false,
                api_version: api_version.to_owned(),
                time: now(),
                fields: changed,
            }),
        }
    }
    write_entries(after, &entries);
}

/// The manager of a write: `fieldManager`, else the client's name from its
/// `User-Agent` (`kubectl/v1.31.0 …` → `kubectl`), as Kubernetes derives it.
pub(crate) fn manager_of(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    if let Some(m) = field_manager.filter(|m| !m.is_empty()) {
        return m.to_owned();
    }
    user_agent
        .and_then(|ua| ua.split('/').next())
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

/// Checks a field manager's name (Kubernetes: at most 128 characters).
pub(crate) fn check_manager(m: &str) -> Result<(), String> {
    if m.chars().count() > 128 {
        return Err("fieldManager: at most 128 characters".into());
    }
    if m.chars().any(char::is_control) {
        return Err("fieldManager: printable characters only".into());
    }
    Ok(())
}

/// The fields each manager owns, for tests and diagnostics.
#[cfg(test)]
fn owners(obj: &Value) -> std::collections::BTreeMap<String, Vec<String>> {
    entries_of(obj)
        .into_iter()
        .map(|e| {
            let op = if e.apply { "Apply" } else { "Update" };
            (
                format!("{}/{op}", e.manager),
                e.fields.iter().map(dotted).collect(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::collections::BTreeMap;

    const V: &str = "shoal.dev/v1alpha1";

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": V, "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn field_sets_go_to_fields_v1_and_back() {
        let obj =
            svc(json!({"replicas": 3, "template": {"image": "x", "command": ["a"], "env": []}}));
        let f = fields_of(&obj);
        let v1 = to_fields_v1(&f);
        assert_eq!(
            v1,
            json!({"f:spec": {"f:replicas": {}, "f:template": {
                "f:image": {}, "f:command": {}, "f:env": {}}}})
        );
        assert_eq!(from_fields_v1(&v1), f);
        // Status and the server's metadata are no one's.
        let mut with_status = obj.clone();
        with_status["status"] = json!({"replicas": 3});
        with_status["metadata"]["uid"] = json!("u");
        with_status["metadata"]["labels"] = json!({"app": "web"});
        let f2 = fields_of(&with_status);
        assert!(f2.contains(&vec!["metadata".to_string(), "labels".into(), "app".into()]));
        assert_eq!(f2.len(), f.len() + 1);
    }

    #[test]
    fn a_creates_record_is_every_field_it_wrote() {
        let mut obj = svc(json!({"replicas": 3, "mode": null,
            "template": {"image": "x", "command": ["a"], "env": [], "resources": {}}}));
        obj["metadata"]["labels"] = json!({"app": "web"});
        obj["metadata"]["uid"] = json!("u");
        obj["status"] = json!({"replicas": 1});
        assert_eq!(owned_fields_v1(&obj), to_fields_v1(&fields_of(&obj)));
        record_update(None, &mut obj, "shoal", V);
        assert_eq!(
            owners(&obj),
            BTreeMap::from([(
                "shoal/Update".into(),
                [
                    ".metadata.labels.app",
                    ".spec.replicas",
                    ".spec.template.command",
                    ".spec.template.env",
                    ".spec.template.image",
                    ".spec.template.resources"
                ]
                .map(String::from)
                .to_vec()
            )])
        );
    }

    #[test]
    fn an_apply_creates_then_owns_exactly_its_configuration() {
        let first = apply(
            None,
            &svc(json!({"replicas": 3, "mode": "Replicated"})),
            "flux",
            V,
            false,
        )
        .unwrap();
        assert_eq!(first["spec"], json!({"replicas": 3, "mode": "Replicated"}));
        assert_eq!(first["metadata"]["name"], "web");
        assert_eq!(
            owners(&first),
            BTreeMap::from([(
                "flux/Apply".into(),
                vec![".spec.mode".into(), ".spec.replicas".into()]
            )])
        );
        // Leaving a field out removes it; a new one is set.
        let second = apply(
            Some(&first),
            &svc(json!({"replicas": 3, "update": {"parallelism": 2}})),
            "flux",
            V,
            false,
        )
        .unwrap();
        assert_eq!(
            second["spec"],
            json!({"replicas": 3, "update": {"parallelism": 2}})
        );
    }

    #[test]
    fn another_managers_field_is_a_conflict_unless_forced_or_equal() {
        let applied = apply(None, &svc(json!({"replicas": 3})), "flux", V, false).unwrap();
        // kubectl scale: an update by another manager.
        let mut scaled = applied.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&applied), &mut scaled, "kubectl", V);
        assert_eq!(
            owners(&scaled),
            BTreeMap::from([("kubectl/Update".into(), vec![".spec.replicas".into()])])
        );
        // Applying 3 again clashes with kubectl's 5.
        let e = apply(
            Some(&scaled),
            &svc(json!({"replicas": 3})),
            "flux",
            V,
            false,
        )
        .unwrap_err();
        assert_eq!(e.0, [("kubectl".to_string(), ".spec.replicas".to_string())]);
        assert!(
            e.message().starts_with(
                "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.replicas"
            ),
            "{}",
            e.message()
        );
        // Agreeing with the current value is no conflict: both own it.
        let same = apply(
            Some(&scaled),
            &svc(json!({"replicas": 5})),
            "flux",
            V,
            false,
        )
        .unwrap();
        assert_eq!(owners(&same).len(), 2);
        // Forced, the field changes hands.
        let forced = apply(Some(&scaled), &svc(json!({"replicas": 3})), "flux", V, true).unwrap();
        assert_eq!(forced["spec"]["replicas"], 3);
        assert_eq!(
            owners(&forced),
            BTreeMap::from([("flux/Apply".into(), vec![".spec.replicas".into()])])
        );
    }

    #[test]
    fn the_same_names_updates_are_another_managers() {
        let applied = apply(None, &svc(json!({"replicas": 3})), "kubectl", V, false).unwrap();
        let mut scaled = applied.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update(Some(&applied), &mut scaled, "kubectl", V);
        let e = apply(
            Some(&scaled),
            &svc(json!({"replicas": 3})),
            "kubectl",
            V,
            false,
        );
        assert_eq!(
            e.unwrap_err().0,
            [("kubectl".to_string(), ".spec.replicas".to_string())]
        );
    }

    #[test]
    fn a_field_left_out_stays_while_someone_else_owns_it() {
        let a = apply(
            None,
            &svc(json!({"replicas": 3, "mode": "Replicated"})),
            "one",
            V,
            false,
        )
        .unwrap();
        let b = apply(
            Some(&a),
            &svc(json!({"mode": "Replicated"})),
            "two",
            V,
            false,
        )
        .unwrap();
        let c = apply(Some(&b), &svc(json!({"replicas": 3})), "one", V, false).unwrap();
        assert_eq!(c["spec"]["mode"], "Replicated", "two still applies it");
        let d = apply(Some(&c), &svc(json!({"replicas": 4})), "two", V, false);
        assert!(d.is_err(), "replicas is one's");
    }

    #[test]
    fn maps_are_merged_and_lists_replaced_whole() {
        let a = apply(
            None,
            &svc(json!({"template": {"image": "x", "env": [{"name": "A", "value": "1"}]}})),
            "one",
            V,
            false,
        )
        .unwrap();
        let mut edited = a.clone();
        edited["spec"]["template"]["command"] = json!(["sh"]);
        record_update(Some(&a), &mut edited, "kubectl-edit", V);
        let b = apply(
            Some(&edited),
            &svc(json!({"template": {"image": "y", "env": [{"name": "B", "value": "2"}]}})),
            "one",
            V,
            false,
        )
        .unwrap();
        assert_eq!(
            b["spec"]["template"],
            json!({"image": "y", "env": [{"name": "B", "value": "2"}], "command": ["sh"]})
        );
    }

    #[test]
    fn an_update_that_removes_a_field_frees_it() {
        let a = apply(
            None,
            &svc(json!({"replicas": 3, "mode": "Replicated"})),
            "one",
            V,
            false,
        )
        .unwrap();
        let mut replaced = a.clone();
        replaced["spec"] = json!({"replicas": 3});
        record_update(Some(&a), &mut replaced, "kubectl-replace", V);
        assert_eq!(
            owners(&replaced),
            BTreeMap::from([("one/Apply".into(), vec![".spec.replicas".into()])])
        );
        // An update that changes nothing records nothing.
        let mut same = replaced.clone();
        record_update(Some(&replaced), &mut same, "other", V);
        assert_eq!(owners(&same), owners(&replaced));
    }

    #[test]
    fn managers_come_from_the_parameter_or_the_user_agent() {
        assert_eq!(manager_of(Some("flux"), Some("kubectl/v1.31")), "flux");
        assert_eq!(
            manager_of(None, Some("kubectl/v1.31.0 (linux/amd64)")),
            "kubectl"
        );
        assert_eq!(manager_of(Some(""), None), "unknown");
        assert!(check_manager(&"x".repeat(129)).is_err());
        assert!(check_manager("kustomize-controller").is_ok());
    }
}
