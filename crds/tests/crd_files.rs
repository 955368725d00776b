//! The committed `crds/*.yaml` match the types (drift test), and every CRD is
//! a structural schema a real Kubernetes API server accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use shoal_crds::crd;

fn dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_yaml_matches_the_types() {
    for c in crd::all() {
        let path = dir().join(crd::file_name(&c));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p shoal-crds --bin crdgen`",
                path.display()
            )
        });
        let fresh = crd::to_yaml(&c).unwrap();
        assert!(
            committed == fresh,
            "{} drifted from the types: run `cargo run -p shoal-crds --bin crdgen` and commit",
            path.display()
        );
    }
}

/// Walks a schema and returns the paths of nodes that break the structural
/// rules: a node without a type, or `oneOf`/`anyOf`/`allOf`/`not` (which are
/// only allowed under `x-kubernetes-int-or-string`, unused here), or
/// `additionalProperties` next to `properties`.
fn structural_problems(s: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    let preserve = s.x_kubernetes_preserve_unknown_fields == Some(true);
    if s.type_.is_none() && !preserve && s.x_kubernetes_int_or_string != Some(true) {
        out.push(format!("{path}: no type"));
    }
    if s.one_of.is_some() || s.any_of.is_some() || s.all_of.is_some() || s.not.is_some() {
        out.push(format!("{path}: oneOf/anyOf/allOf/not"));
    }
    if s.properties.is_some() && s.additional_properties.is_some() {
        out.push(format!("{path}: properties with additionalProperties"));
    }
    for (k, v) in s.properties.iter().flatten() {
        structural_problems(v, &format!("{path}.{k}"), out);
    }
    if let Some(items) = &s.items {
        match items {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(i) => {
                structural_problems(i, &format!("{path}[]"), out)
            }
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schemas(_) => {
                out.push(format!("{path}: tuple items"))
            }
        }
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(a)) =
        &s.additional_properties
    {
        structural_problems(a, &format!("{path}{{}}"), out);
    }
}

fn load(name: &str) -> CustomResourceDefinition {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{name} is not a CustomResourceDefinition: {e}"))
}

#[test]
fn every_crd_is_structural_with_subresources_and_columns() {
    for (file, scope, short) in [
        ("services.yaml", "Namespaced", "ssvc"),
        ("tasks.yaml", "Namespaced", "stask"),
        ("hosts.yaml", "Cluster", "shost"),
    ] {
        let c = load(file);
        assert_eq!(c.spec.group, "shoal.dev");
        assert_eq!(c.spec.scope, scope, "{file}");
        assert_eq!(
            c.spec.names.short_names.as_deref(),
            Some(&[short.to_string()][..]),
            "{file}"
        );
        let v = &c.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        let sub = v.subresources.as_ref().unwrap();
        assert!(sub.status.is_some(), "{file}: status subresource");
        let schema = v
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let mut problems = Vec::new();
        structural_problems(schema, file, &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(cols.contains(&"Age"), "{file}: {cols:?}");
    }
    let svc = load("services.yaml");
    let v = &svc.spec.versions[0];
    let scale = v.subresources.as_ref().unwrap().scale.as_ref().unwrap();
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    let cols: Vec<_> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.json_path.as_str())
        .collect();
    assert!(
        cols.contains(&".spec.replicas") && cols.contains(&".status.readyReplicas"),
        "{cols:?}"
    );
    let task = load("tasks.yaml");
    let cols: Vec<_> = task.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        ["Service", "Slot", "Host", "Phase", "Restarts", "Age"]
    );
}

fn prop<'a>(s: &'a JSONSchemaProps, path: &[&str]) -> &'a JSONSchemaProps {
    let mut cur = s;
    for p in path {
        cur = cur
            .properties
            .as_ref()
            .and_then(|m| m.get(*p))
            .unwrap_or_else(|| panic!("no {p} in {path:?}"));
    }
    cur
}

#[test]
fn quantities_are_patterned_strings_enums_are_enums_and_defaults_are_documented() {
    let svc = load("services.yaml");
    let root = svc.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    let mem = prop(root, &["spec", "template", "resources", "limits", "memory"]);
    assert_eq!(mem.type_.as_deref(), Some("string"));
    let re = regex::Regex::new(mem.pattern.as_deref().unwrap()).unwrap();
    for ok in [
        "128Mi", "1Gi", "512Ki", "128M", "1G", "300mb", "1gb", "512kb", "100b",
    ] {
        assert!(re.is_match(ok), "memory pattern refuses {ok}");
        assert!(shoal_crds::quantity::parse_bytes(ok).is_ok(), "{ok}");
    }
    for bad in ["300m", "512k", "12XB", "-1Mi", "1 Gi"] {
        assert!(!re.is_match(bad), "memory pattern accepts {bad}");
    }
    let cpu = prop(root, &["spec", "template", "resources", "limits", "cpu"]);
    let re = regex::Regex::new(cpu.pattern.as_deref().unwrap()).unwrap();
    for ok in ["500m", "0.5", "2"] {
        assert!(re.is_match(ok), "cpu pattern refuses {ok}");
    }
    for bad in ["-1", "0.1234", "1k", "two"] {
        assert!(!re.is_match(bad), "cpu pattern accepts {bad}");
    }
    let dur = prop(root, &["spec", "template", "stopGracePeriod"]);
    let re = regex::Regex::new(dur.pattern.as_deref().unwrap()).unwrap();
    for ok in ["1m30s", "200ms", "1h", "10s"] {
        assert!(re.is_match(ok), "duration pattern refuses {ok}");
    }
    for bad in ["10", "10 s", "10d"] {
        assert!(!re.is_match(bad), "duration pattern accepts {bad}");
    }
    let cond = prop(root, &["spec", "restartPolicy", "condition"]);
    let values: Vec<_> = cond
        .enum_
        .iter()
        .flatten()
        .map(|v| v.0.as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(values, ["Always", "OnFailure", "Never"]);
    // The defaults of DESIGN.md appear in the field descriptions (kubectl explain).
    for (path, default) in [
        (
            &["spec", "restartPolicy", "condition"][..],
            "Default: `Always`",
        ),
        (&["spec", "restartPolicy", "delay"][..], "Default: `0s`"),
        (&["spec", "restartPolicy", "maxDelay"][..], "Default: `30s`"),
        (&["spec", "restartPolicy", "window"][..], "Default: `60s`"),
        (
            &["spec", "template", "stopGracePeriod"][..],
            "Default: `10s`",
        ),
        (
            &["spec", "template", "imagePullPolicy"][..],
            "Default: `IfNotPresent`",
        ),
        (&["spec", "update"][..], "parallelism 1, delay 0s"),
        (&["spec", "mode"][..], "Default: `Replicated`"),
        (&["spec", "onHostLoss"][..], "Default:"),
    ] {
        let d = prop(root, path).description.clone().unwrap_or_default();
        let flat = d.replace('\n', " ");
        assert!(flat.contains(default), "{path:?}: {d:?} lacks {default:?}");
    }
}
