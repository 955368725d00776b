//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/shoal.dev` and
//! `/apis/shoal.dev/v1alpha1`, generated from the [`Model`].

use serde_json::{Value, json};
use shoal_crds::{API_VERSION, GROUP, VERSION};

use crate::model::Model;

/// The Kubernetes minor version whose dialect is spoken (kubectl warns about
/// skew beyond one minor version).
pub const KUBE_MINOR: &str = "32";

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0+shoal-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

/// `/api`: the core group is served for Events only, in `v1`.
pub fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "" }],
    })
}

/// `/api/v1`: the core resources served (Events).
pub fn core_resource_list(model: &Model) -> Value {
    resource_list_of(model, "v1")
}

fn group() -> Value {
    let gv = json!({ "groupVersion": API_VERSION, "version": VERSION });
    json!({
        "name": GROUP,
        "versions": [gv.clone()],
        "preferredVersion": gv,
    })
}

/// `/apis`.
pub fn group_list() -> Value {
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": [group()] })
}

/// `/apis/shoal.dev`.
pub fn group_doc() -> Value {
    let mut g = group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

/// `/apis/shoal.dev/v1alpha1`.
pub fn resource_list(model: &Model) -> Value {
    resource_list_of(model, API_VERSION)
}

fn resource_list_of(model: &Model, group_version: &str) -> Value {
    let mut resources = Vec::new();
    for r in model.in_group(group_version) {
        let mut main = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind_name(),
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        });
        if !r.short_names.is_empty() {
            main["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            main["categories"] = json!(r.categories);
        }
        resources.push(main);
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind_name(),
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if r.kind == shoal_store::Kind::Task {
            // log: plain text, like pods/log; stats: a TaskStats object;
            // exec: JSON lines of output, then the exit code.
            for (sub, kind, verb) in [
                ("log", r.kind_name(), "get"),
                ("stats", "TaskStats", "get"),
                ("exec", r.kind_name(), "create"),
            ] {
                resources.push(json!({
                    "name": format!("{}/{sub}", r.plural),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": kind,
                    "verbs": [verb],
                }));
            }
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}
