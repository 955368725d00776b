//! What the server serves, read from the CRDs of `shoal_crds::crd::all()`:
//! names, scope, printer columns, subresources and schemas; plus the core
//! group's `v1` Event ([`crate::events::resource`]).

use serde_json::Value;
use shoal_store::Kind;

/// One printer column of a CRD version.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub type_: String,
    /// Simple JSONPath (`.spec.replicas`).
    pub json_path: String,
    /// 0 for the default view, more for `-o wide`.
    pub priority: i64,
    /// Column description.
    pub description: String,
}

/// One served resource.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Store kind.
    pub kind: Kind,
    /// `shoal.dev/v1alpha1`, or `v1` for the core group.
    pub api_version: String,
    /// `plural` (`services`).
    pub plural: String,
    /// `singular` (`service`).
    pub singular: String,
    /// Short names (`ssvc`).
    pub short_names: Vec<String>,
    /// Categories (`shoal`).
    pub categories: Vec<String>,
    /// Whether namespaced.
    pub namespaced: bool,
    /// Printer columns (besides Name).
    pub columns: Vec<PrinterColumn>,
    /// Whether the `status` subresource is served.
    pub status: bool,
    /// `specReplicasPath` and `statusReplicasPath` if `scale` is served.
    pub scale: Option<(String, String)>,
    /// The version's `openAPIV3Schema`.
    pub schema: Value,
}

impl Resource {
    /// Kind name (`Service`).
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }
}

/// Every served resource.
#[derive(Debug, Clone)]
pub struct Model {
    /// In the order of `shoal_crds::crd::all()`.
    pub resources: Vec<Resource>,
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn string(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl Model {
    /// Reads the CRDs. A CRD whose kind the store does not hold is skipped.
    pub fn from_crds() -> Result<Model, serde_json::Error> {
        let mut resources = Vec::new();
        for crd in shoal_crds::crd::all() {
            let v = serde_json::to_value(&crd)?;
            let Some(kind) = Kind::from_name(&string(&v, "/spec/names/kind")) else {
                continue;
            };
            let version = v
                .pointer("/spec/versions")
                .and_then(Value::as_array)
                .and_then(|vs| {
                    vs.iter().find(|x| {
                        x.get("name").and_then(Value::as_str) == Some(shoal_crds::VERSION)
                    })
                })
                .cloned()
                .unwrap_or(Value::Null);
            let columns = version
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .map(|cols| {
                    cols.iter()
                        .map(|c| PrinterColumn {
                            name: string(c, "/name"),
                            type_: string(c, "/type"),
                            json_path: string(c, "/jsonPath"),
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                            description: string(c, "/description"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let scale = version.pointer("/subresources/scale").map(|s| {
                (
                    string(s, "/specReplicasPath"),
                    string(s, "/statusReplicasPath"),
                )
            });
            resources.push(Resource {
                kind,
                api_version: shoal_crds::API_VERSION.to_owned(),
                plural: string(&v, "/spec/names/plural"),
                singular: string(&v, "/spec/names/singular"),
                short_names: strings(v.pointer("/spec/names/shortNames")),
                categories: strings(v.pointer("/spec/names/categories")),
                namespaced: string(&v, "/spec/scope") == "Namespaced",
                columns,
                status: version.pointer("/subresources/status").is_some(),
                scale,
                schema: version
                    .pointer("/schema/openAPIV3Schema")
                    .cloned()
                    .unwrap_or(Value::Null),
            });
        }
        resources.push(crate::events::resource());
        Ok(Model { resources })
    }

    /// The resource with this plural name (in any group).
    pub fn by_plural(&self, plural: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.plural == plural)
    }

    /// The resource with this plural name in a group version
    /// (`shoal.dev/v1alpha1` or `v1`).
    pub fn by_plural_in(&self, api_version: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.plural == plural && r.api_version == api_version)
    }

    /// The resources of a group version.
    pub fn in_group<'a>(&'a self, api_version: &'a str) -> impl Iterator<Item = &'a Resource> {
        self.resources
            .iter()
            .filter(move |r| r.api_version == api_version)
    }

    /// The resource of a kind.
    pub fn by_kind(&self, kind: Kind) -> Option<&Resource> {
        self.resources.iter().find(|r| r.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn model_reads_names_columns_and_subresources_from_the_crds() {
        let m = Model::from_crds().unwrap();
        let svc = m.by_plural("services").unwrap();
        assert_eq!(svc.kind, Kind::Service);
        assert_eq!(svc.short_names, vec!["ssvc"]);
        assert_eq!(svc.categories, vec!["shoal"]);
        assert!(svc.namespaced && svc.status);
        assert_eq!(
            svc.scale,
            Some((".spec.replicas".into(), ".status.replicas".into()))
        );
        assert!(
            svc.columns
                .iter()
                .any(|c| c.name == "Age" && c.type_ == "date")
        );
        assert!(svc.schema.pointer("/properties/spec").is_some());
        let host = m.by_plural("hosts").unwrap();
        assert!(!host.namespaced && host.scale.is_none());
        assert!(m.by_plural("pods").is_none());
        let ev = m.by_plural_in("v1", "events").unwrap();
        assert_eq!(ev.kind, Kind::Event);
        assert_eq!(ev.short_names, vec!["ev"]);
        assert!(ev.namespaced && !ev.status && ev.scale.is_none());
        assert!(m.by_plural_in(shoal_crds::API_VERSION, "events").is_none());
        assert_eq!(m.in_group("v1").count(), 1);
    }
}
