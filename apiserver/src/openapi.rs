//! OpenAPI v3 documents generated from the CRD schemas: the `/openapi/v3`
//! index and the `shoal.dev/v1alpha1` document. kubectl reads the latter to
//! learn that PATCH takes `fieldValidation` (so `kubectl apply` validates on
//! the server) and for `kubectl explain`.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value, json};
use shoal_crds::{GROUP, VERSION};

use crate::model::{Model, Resource};

/// Path of the group-version document, relative to the server.
pub const GV_PATH: &str = "/openapi/v3/apis/shoal.dev/v1alpha1";

/// The generated documents, built once at start-up.
#[derive(Debug, Clone)]
pub struct OpenApi {
    /// `/openapi/v3`.
    pub index: Value,
    /// `/openapi/v3/apis/shoal.dev/v1alpha1`, serialized.
    pub group_version: String,
}

fn schema_name(kind: &str) -> String {
    // Kubernetes names CRD schemas by the reversed group: dev.shoal.v1alpha1.Service.
    let rev: Vec<&str> = GROUP.split('.').rev().collect();
    format!("{}.{VERSION}.{kind}", rev.join("."))
}

const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
const SCALE: &str = "io.k8s.api.autoscaling.v1.Scale";

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!({ "group": group, "version": version, "kind": kind })
}

fn query_param(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "query",
        "description": description,
        "schema": { "type": "string", "uniqueItems": true },
    })
}

fn write_params(patch: bool) -> Vec<Value> {
    let mut p = vec![
        query_param(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid value: All.",
        ),
        query_param(
            "fieldManager",
            "A name associated with the actor or entity that is making these changes.",
        ),
        query_param(
            "fieldValidation",
            "How the server handles unknown fields in the object: Ignore (drop silently), Warn (drop with a warning), Strict (fail with 422 naming the field).",
        ),
    ];
    if patch {
        p.push(json!({
            "name": "force", "in": "query",
            "description": "Force is going to \"force\" Apply requests. Server-side apply is not served yet.",
            "schema": { "type": "boolean", "uniqueItems": true },
        }));
    }
    p
}

fn list_params() -> Vec<Value> {
    [
        ("allowWatchBookmarks", "boolean", "requests watch events with type BOOKMARK"),
        ("continue", "string", "not issued by this server: lists are never truncated"),
        ("fieldSelector", "string", "metadata.name and metadata.namespace, with =, == and !="),
        ("labelSelector", "string", "a Kubernetes label selector"),
        ("limit", "integer", "ignored: lists are never truncated"),
        ("resourceVersion", "string", "for watch: deliver changes after this version"),
        ("resourceVersionMatch", "string", "ignored"),
        ("sendInitialEvents", "boolean", "with watch: the current objects first, then a bookmark annotated k8s.io/initial-events-end"),
        ("timeoutSeconds", "integer", "ends a watch after this many seconds"),
        ("watch", "boolean", "watch for changes and return them as a stream of events"),
    ]
    .iter()
    .map(|(n, t, d)| {
        json!({ "name": n, "in": "query", "description": d, "schema": { "type": t, "uniqueItems": true } })
    })
    .collect()
}

fn path_param(name: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true,
        "description": format!("{name} of the object"),
        "schema": { "type": "string", "uniqueItems": true },
    })
}

fn body(schema: Value, types: &[&str]) -> Value {
    let content: Map<String, Value> = types
        .iter()
        .map(|t| ((*t).to_owned(), json!({ "schema": schema.clone() })))
        .collect();
    json!({ "content": content, "required": true })
}

fn ok(schema: Value) -> Value {
    json!({
        "200": { "description": "OK", "content": { "application/json": { "schema": schema } } },
        "401": { "description": "Unauthorized" },
    })
}

fn op(
    id: String,
    action: &str,
    gvk: Value,
    params: Vec<Value>,
    request: Option<Value>,
    response: Value,
) -> Value {
    let mut o = json!({
        "operationId": id,
        "tags": ["shoalDev_v1alpha1"],
        "parameters": params,
        "responses": ok(response),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    });
    if let Some(r) = request {
        o["requestBody"] = r;
    }
    o
}

fn resource_paths(r: &Resource, paths: &mut Map<String, Value>) {
    let kind = r.kind_name();
    let this = gvk(GROUP, VERSION, kind);
    let obj = reference(&schema_name(kind));
    let list = reference(&schema_name(&format!("{kind}List")));
    let ns = if r.namespaced { "Namespaced" } else { "" };
    let base = "/apis/shoal.dev/v1alpha1";
    let (coll, item) = if r.namespaced {
        (
            format!("{base}/namespaces/{{namespace}}/{}", r.plural),
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
        )
    } else {
        (
            format!("{base}/{}", r.plural),
            format!("{base}/{}/{{name}}", r.plural),
        )
    };
    let mut scope_params = Vec::new();
    if r.namespaced {
        scope_params.push(path_param("namespace"));
    }
    // No strategic merge patch (kubectl would use it for client-side apply
    // if declared) and no apply patch (server-side apply is not served yet).
    let patch_types = [
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    let patch_body = body(json!({ "type": "object" }), &patch_types);

    let mut c = json!({
        "get": op(format!("list{ns}{kind}"), "list", this.clone(), list_params(), None, list.clone()),
        "post": op(format!("create{ns}{kind}"), "post", this.clone(), write_params(false), Some(body(obj.clone(), &["application/json"])), obj.clone()),
        "parameters": scope_params.clone(),
    });
    if r.namespaced {
        // All-namespaces list.
        paths.insert(
            format!("{base}/{}", r.plural),
            json!({
                "get": op(format!("list{kind}ForAllNamespaces"), "list", this.clone(), list_params(), None, list),
            }),
        );
    } else if let Some(m) = c.as_object_mut() {
        m.remove("parameters");
    }
    paths.insert(coll, c);

    let mut item_params = scope_params;
    item_params.insert(0, path_param("name"));
    paths.insert(
        item.clone(),
        json!({
            "get": op(format!("read{ns}{kind}"), "get", this.clone(), vec![], None, obj.clone()),
            "put": op(format!("replace{ns}{kind}"), "put", this.clone(), write_params(false), Some(body(obj.clone(), &["application/json"])), obj.clone()),
            "patch": op(format!("patch{ns}{kind}"), "patch", this.clone(), write_params(true), Some(patch_body.clone()), obj.clone()),
            "delete": op(format!("delete{ns}{kind}"), "delete", this.clone(), vec![query_param("dryRun", "ignored")], Some(body(reference(DELETE_OPTIONS), &["application/json"])), reference(STATUS)),
            "parameters": item_params.clone(),
        }),
    );
    if r.status {
        paths.insert(
            format!("{item}/status"),
            json!({
                "get": op(format!("read{ns}{kind}Status"), "get", this.clone(), vec![], None, obj.clone()),
                "put": op(format!("replace{ns}{kind}Status"), "put", this.clone(), write_params(false), Some(body(obj.clone(), &["application/json"])), obj.clone()),
                "patch": op(format!("patch{ns}{kind}Status"), "patch", this.clone(), write_params(true), Some(patch_body.clone()), obj.clone()),
                "parameters": item_params.clone(),
            }),
        );
    }
    if r.scale.is_some() {
        let sgvk = gvk("autoscaling", "v1", "Scale");
        let scale = reference(SCALE);
        paths.insert(
            format!("{item}/scale"),
            json!({
                "get": op(format!("read{ns}{kind}Scale"), "get", sgvk.clone(), vec![], None, scale.clone()),
                "put": op(format!("replace{ns}{kind}Scale"), "put", sgvk.clone(), write_params(false), Some(body(scale.clone(), &["application/json"])), scale.clone()),
                "patch": op(format!("patch{ns}{kind}Scale"), "patch", sgvk, write_params(true), Some(patch_body), scale),
                "parameters": item_params,
            }),
        );
    }
}

fn object_schema(r: &Resource) -> Value {
    let mut s = r.schema.clone();
    if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "apiVersion".into(),
            json!({ "type": "string", "description": "APIVersion defines the versioned schema of this representation of an object." }),
        );
        props.insert(
            "kind".into(),
            json!({ "type": "string", "description": "Kind is a string value representing the REST resource this object represents." }),
        );
        props.insert(
            "metadata".into(),
            json!({ "allOf": [reference(META)], "description": "Standard object's metadata." }),
        );
    }
    s["x-kubernetes-group-version-kind"] = json!([gvk(GROUP, VERSION, r.kind_name())]);
    s
}

fn common_schemas(schemas: &mut Map<String, Value>) {
    let string_map =
        json!({ "type": "object", "additionalProperties": { "type": "string", "default": "" } });
    schemas.insert(
        META.into(),
        json!({
            "description": "ObjectMeta is metadata that all persisted resources must have.",
            "type": "object",
            "properties": {
                "name": { "type": "string", "description": "Name must be unique within a namespace." },
                "generateName": { "type": "string", "description": "Optional prefix for a server-generated name." },
                "namespace": { "type": "string", "description": "Namespace of the object (namespaced kinds)." },
                "labels": string_map.clone(),
                "annotations": string_map,
                "uid": { "type": "string" },
                "resourceVersion": { "type": "string" },
                "generation": { "type": "integer", "format": "int64" },
                "creationTimestamp": { "type": "string", "format": "date-time" },
                "deletionTimestamp": { "type": "string", "format": "date-time" },
                "deletionGracePeriodSeconds": { "type": "integer", "format": "int64" },
                "finalizers": { "type": "array", "items": { "type": "string", "default": "" } },
                "ownerReferences": { "type": "array", "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
                "managedFields": { "type": "array", "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } },
            },
        }),
    );
    schemas.insert(
        LIST_META.into(),
        json!({
            "type": "object",
            "properties": {
                "resourceVersion": { "type": "string" },
                "continue": { "type": "string" },
                "remainingItemCount": { "type": "integer", "format": "int64" },
            },
        }),
    );
    schemas.insert(
        STATUS.into(),
        json!({
            "type": "object",
            "properties": {
                "apiVersion": { "type": "string" }, "kind": { "type": "string" },
                "code": { "type": "integer", "format": "int32" },
                "message": { "type": "string" }, "reason": { "type": "string" }, "status": { "type": "string" },
                "details": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                "metadata": { "allOf": [reference(LIST_META)] },
            },
            "x-kubernetes-group-version-kind": [gvk("", "v1", "Status")],
        }),
    );
    schemas.insert(
        DELETE_OPTIONS.into(),
        json!({
            "type": "object",
            "properties": {
                "apiVersion": { "type": "string" }, "kind": { "type": "string" },
                "dryRun": { "type": "array", "items": { "type": "string", "default": "" } },
                "gracePeriodSeconds": { "type": "integer", "format": "int64" },
                "preconditions": { "type": "object", "properties": { "resourceVersion": { "type": "string" }, "uid": { "type": "string" } } },
                "propagationPolicy": { "type": "string" },
            },
            "x-kubernetes-group-version-kind": [gvk("", "v1", "DeleteOptions"), gvk(GROUP, VERSION, "DeleteOptions")],
        }),
    );
    schemas.insert(
        SCALE.into(),
        json!({
            "description": "Scale represents a scaling request for a resource.",
            "type": "object",
            "properties": {
                "apiVersion": { "type": "string" }, "kind": { "type": "string" },
                "metadata": { "allOf": [reference(META)] },
                "spec": { "type": "object", "properties": { "replicas": { "type": "integer", "format": "int32", "description": "desired number of instances" } } },
                "status": { "type": "object", "properties": {
                    "replicas": { "type": "integer", "format": "int32", "default": 0 },
                    "selector": { "type": "string" },
                } },
            },
            "x-kubernetes-group-version-kind": [gvk("autoscaling", "v1", "Scale")],
        }),
    );
}

impl OpenApi {
    /// Builds the documents from the model.
    pub fn new(model: &Model) -> OpenApi {
        let mut paths = Map::new();
        let mut schemas = Map::new();
        common_schemas(&mut schemas);
        // The core group's Events are not described (kubectl needs no
        // OpenAPI to get, list, watch or describe them).
        for r in model.in_group(shoal_crds::API_VERSION) {
            resource_paths(r, &mut paths);
            let kind = r.kind_name();
            schemas.insert(schema_name(kind), object_schema(r));
            schemas.insert(
                schema_name(&format!("{kind}List")),
                json!({
                    "description": format!("{kind}List is a list of {kind}"),
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "apiVersion": { "type": "string" },
                        "kind": { "type": "string" },
                        "items": { "type": "array", "items": reference(&schema_name(kind)) },
                        "metadata": { "allOf": [reference(LIST_META)] },
                    },
                    "x-kubernetes-group-version-kind": [gvk(GROUP, VERSION, &format!("{kind}List"))],
                }),
            );
        }
        let doc = json!({
            "openapi": "3.0.0",
            "info": { "title": "Shoal", "version": format!("v1.{}.0", crate::discovery::KUBE_MINOR) },
            "paths": paths,
            "components": { "schemas": schemas },
        });
        let group_version = doc.to_string();
        let mut h = DefaultHasher::new();
        group_version.hash(&mut h);
        let index = json!({
            "paths": {
                "apis/shoal.dev/v1alpha1": {
                    "serverRelativeURL": format!("{GV_PATH}?hash={:016X}", h.finish()),
                },
            },
        });
        OpenApi {
            index,
            group_version,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_patch_operation_declares_field_validation_and_its_gvk() {
        let m = Model::from_crds().unwrap();
        let o = OpenApi::new(&m);
        let doc: Value = serde_json::from_str(&o.group_version).unwrap();
        let mut patches = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            if let Some(p) = item.get("patch") {
                patches += 1;
                let names: Vec<&str> = p["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["in"] == "query")
                    .map(|x| x["name"].as_str().unwrap())
                    .collect();
                assert!(names.contains(&"fieldValidation"), "{path}");
                assert!(
                    p["x-kubernetes-group-version-kind"]["kind"].is_string(),
                    "{path}"
                );
            }
        }
        // services, services/status, services/scale, tasks, tasks/status, hosts, hosts/status
        assert_eq!(patches, 7);
        // kubectl's client-side apply sends a strategic merge patch when the
        // operation declares one.
        for item in doc["paths"].as_object().unwrap().values() {
            if let Some(p) = item.get("patch") {
                let content = p["requestBody"]["content"].as_object().unwrap();
                assert!(!content.contains_key("application/strategic-merge-patch+json"));
                assert!(content.contains_key("application/merge-patch+json"));
            }
        }
        let svc = &doc["components"]["schemas"]["dev.shoal.v1alpha1.Service"];
        assert_eq!(svc["x-kubernetes-group-version-kind"][0]["kind"], "Service");
        assert!(
            svc.pointer("/properties/spec/properties/template")
                .is_some()
        );
        assert!(
            o.index["paths"]["apis/shoal.dev/v1alpha1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with(GV_PATH)
        );
    }
}
