//! Labels and names on the engine (DESIGN.md "Labels and names on the engine").
//! The agent identifies its containers by these labels only.

use std::collections::BTreeMap;

/// The cluster id.
pub const CLUSTER: &str = "shoal.dev/cluster";
/// The task's namespace.
pub const NAMESPACE: &str = "shoal.dev/namespace";
/// The owning service.
pub const SERVICE: &str = "shoal.dev/service";
/// The replica slot (empty for a global-mode task).
pub const SLOT: &str = "shoal.dev/slot";
/// The task uid.
pub const TASK_UID: &str = "shoal.dev/task-uid";
/// The frozen template's hash, as the orchestrator computed it.
pub const TEMPLATE_HASH: &str = "shoal.dev/template-hash";

/// Identity of a task on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskIdentity<'a> {
    /// Cluster id.
    pub cluster: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Service name.
    pub service: &'a str,
    /// Slot, if replicated.
    pub slot: Option<i32>,
    /// Task uid.
    pub uid: &'a str,
    /// Template hash.
    pub template_hash: &'a str,
}

impl TaskIdentity<'_> {
    /// The six Shoal labels.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CLUSTER.to_string(), self.cluster.to_string()),
            (NAMESPACE.to_string(), self.namespace.to_string()),
            (SERVICE.to_string(), self.service.to_string()),
            (
                SLOT.to_string(),
                self.slot.map(|s| s.to_string()).unwrap_or_default(),
            ),
            (TASK_UID.to_string(), self.uid.to_string()),
            (TEMPLATE_HASH.to_string(), self.template_hash.to_string()),
        ])
    }

    /// `shoal.<namespace>.<service>.<slot>.<short task uid>`; a global-mode
    /// task has slot `g`.
    pub fn container_name(&self) -> String {
        let slot = self
            .slot
            .map(|s| s.to_string())
            .unwrap_or_else(|| "g".into());
        format!(
            "shoal.{}.{}.{}.{}",
            self.namespace,
            self.service,
            slot,
            short_uid(self.uid)
        )
    }
}

/// The first 12 alphanumeric characters of a uid.
pub fn short_uid(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect()
}

/// The namespace's network: `shoal-<namespace>`.
pub fn network_name(namespace: &str) -> String {
    format!("shoal-{namespace}")
}

/// A uid derived deterministically from a task's namespace and name (for
/// tasks written in an assignments file without one), shaped like a UUID.
pub fn derived_uid(namespace: &str, name: &str) -> String {
    fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
        let mut h = seed;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
    let key = format!("{namespace}/{name}");
    let a = fnv1a(0xcbf2_9ce4_8422_2325, key.as_bytes());
    let b = fnv1a(0x8422_2325_cbf2_9ce4, key.as_bytes());
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let id = TaskIdentity {
            cluster: "c1",
            namespace: "default",
            service: "web",
            slot: Some(2),
            uid: "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            template_hash: "h1",
        };
        assert_eq!(id.container_name(), "shoal.default.web.2.0a1b2c3d4e5f");
        let l = id.labels();
        assert_eq!(l.len(), 6);
        assert_eq!(l[CLUSTER], "c1");
        assert_eq!(l[SLOT], "2");
        assert_eq!(l[TASK_UID], "0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        let global = TaskIdentity { slot: None, ..id };
        assert_eq!(global.container_name(), "shoal.default.web.g.0a1b2c3d4e5f");
        assert_eq!(global.labels()[SLOT], "");
        assert_eq!(network_name("default"), "shoal-default");
    }

    #[test]
    fn derived_uids_are_stable_and_distinct() {
        let a = derived_uid("default", "web-0");
        assert_eq!(a, derived_uid("default", "web-0"));
        assert_ne!(a, derived_uid("default", "web-1"));
        assert_ne!(a, derived_uid("other", "web-0"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
