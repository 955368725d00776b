//! The template hash, computed once by the orchestrator, and task names.

use std::fmt::Write as _;

use serde_json::Value;
use shoal_crds::{ContainerTemplate, RestartPolicy};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// JSON with object keys sorted, whatever map type serde_json was built with.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = m.get(k) {
                    canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The template hash: FNV-1a 64 over the canonical JSON of the template and
/// the restart policy, as 16 hex digits. Stable across processes and
/// releases as long as the serialized form of the types is.
pub fn template_hash(template: &ContainerTemplate, restart: Option<&RestartPolicy>) -> String {
    let v = serde_json::json!({ "template": template, "restartPolicy": restart });
    let mut s = String::new();
    canonical(&v, &mut s);
    format!("{:016x}", fnv1a(FNV_OFFSET, s.as_bytes()))
}

/// Five characters for a task name, derived from the service's uid, the
/// slot and the attempt: random-looking, but two orchestrators creating the
/// same attempt of the same slot pick the same name, so only one create
/// succeeds (the other gets AlreadyExists).
pub fn name_suffix(service_uid: &str, slot: &str, attempt: u32) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h = fnv1a(FNV_OFFSET, service_uid.as_bytes());
    h = fnv1a(h, b"/");
    h = fnv1a(h, slot.as_bytes());
    h = fnv1a(h, b"/");
    h = fnv1a(h, &attempt.to_le_bytes());
    // A final avalanche so that neighbouring attempts differ everywhere.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    let mut s = String::with_capacity(5);
    let n = ALPHABET.len() as u64;
    for _ in 0..5 {
        let i = usize::try_from(h % n).unwrap_or(0);
        s.push(char::from(ALPHABET[i]));
        h /= n;
    }
    s
}

/// A task name: `<service>-<slot>-<suffix>` (Global: `<service>-<host>-<suffix>`,
/// dots in the host name turned into `-`), shortened to a DNS label of at
/// most 63 characters by trimming the middle part.
pub fn task_name(service: &str, slot: &str, suffix: &str) -> String {
    let slot: String = slot
        .chars()
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    let mut name = String::new();
    let _ = write!(name, "{service}-{slot}-{suffix}");
    if name.len() <= 63 {
        return name;
    }
    // Keep the suffix whole; trim the service and slot parts.
    let room = 63 - suffix.len() - 1;
    let mut head: String = format!("{service}-{slot}").chars().take(room).collect();
    while head.ends_with('-') {
        head.pop();
    }
    format!("{head}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_sensitive() {
        let t = ContainerTemplate {
            image: "busybox:1".into(),
            ..Default::default()
        };
        let h = template_hash(&t, None);
        assert_eq!(h.len(), 16);
        assert_eq!(h, template_hash(&t.clone(), None));
        let t2 = ContainerTemplate {
            image: "busybox:2".into(),
            ..Default::default()
        };
        assert_ne!(h, template_hash(&t2, None));
        let rp = RestartPolicy {
            max_attempts: Some(3),
            ..Default::default()
        };
        assert_ne!(h, template_hash(&t, Some(&rp)));
        // A fixed value: changing it changes every running task's hash.
        assert_eq!(h, "208bda3ef7657179");
    }

    #[test]
    fn names() {
        let s = name_suffix("uid-1", "0", 1);
        assert_eq!(s.len(), 5);
        assert_eq!(s, name_suffix("uid-1", "0", 1));
        assert_ne!(s, name_suffix("uid-1", "0", 2));
        assert_ne!(s, name_suffix("uid-1", "1", 1));
        assert_eq!(task_name("web", "3", "abcde"), "web-3-abcde");
        assert_eq!(task_name("mon", "host.a", "abcde"), "mon-host-a-abcde");
        let long = task_name(&"s".repeat(60), "12", "abcde");
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-abcde"));
        assert!(shoal_crds::labels::dns_label_error(&long, 63).is_none());
    }
}
