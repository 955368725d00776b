//! Names, label keys and values, and label selectors, checked by Kubernetes'
//! rules (DNS-1123 labels and subdomains, qualified names).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Why a name is refused, or `None` if it is a DNS-1123 label: lowercase
/// letters, digits and `-`, starting and ending with a letter or digit, at
/// most `max` characters.
pub fn dns_label_error(s: &str, max: usize) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > max {
        return Some(format!("{s:?} is longer than {max} characters"));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if !s.chars().all(ok_char) {
        return Some(format!(
            "{s:?} must consist of lowercase letters, digits and '-' (a DNS-1123 label, e.g. \"web-1\")"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some(format!("{s:?} must start and end with a letter or digit"));
    }
    None
}

/// Why a DNS-1123 subdomain (dot-separated labels, at most 253 characters)
/// is refused.
pub fn dns_subdomain_error(s: &str) -> Option<String> {
    if s.len() > 253 {
        return Some(format!("{s:?} is longer than 253 characters"));
    }
    for part in s.split('.') {
        if let Some(e) = dns_label_error(part, 63) {
            return Some(format!("{s:?} is not a DNS-1123 subdomain: {e}"));
        }
    }
    None
}

fn name_part_error(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("the name part must not be empty".into());
    }
    if s.len() > 63 {
        return Some(format!("the name part {s:?} is longer than 63 characters"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if !s.chars().all(ok) {
        return Some(format!(
            "{s:?} must consist of letters, digits, '-', '_' and '.'"
        ));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Some(format!("{s:?} must start and end with a letter or digit"));
    }
    None
}

/// Why a label key (`[prefix/]name`, prefix a DNS subdomain) is refused.
pub fn label_key_error(key: &str) -> Option<String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Some(format!("label key {key:?} has an empty prefix"));
            }
            dns_subdomain_error(prefix)
                .map(|e| format!("label key {key:?}: prefix {e}"))
                .or_else(|| name_part_error(name).map(|e| format!("label key {key:?}: {e}")))
        }
        None => name_part_error(key).map(|e| format!("label key {key:?}: {e}")),
    }
}

/// Why a label value (empty, or a name part) is refused.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    name_part_error(value).map(|e| format!("label value {value:?}: {e}"))
}

/// Errors of a label selector as `(path suffix, message)` pairs, e.g.
/// `(".matchExpressions[0].operator", "...")`.
pub fn selector_errors(sel: &LabelSelector) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        if let Some(e) = label_key_error(k) {
            out.push((format!(".matchLabels[{k:?}]"), e));
        }
        if let Some(e) = label_value_error(v) {
            out.push((format!(".matchLabels[{k:?}]"), e));
        }
    }
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!(".matchExpressions[{i}]");
        if let Some(e) = label_key_error(&expr.key) {
            out.push((format!("{at}.key"), e));
        }
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    out.push((
                        format!("{at}.values"),
                        format!("must not be empty with operator {}", expr.operator),
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    out.push((
                        format!("{at}.values"),
                        format!("must be empty with operator {}", expr.operator),
                    ));
                }
            }
            other => out.push((
                format!("{at}.operator"),
                format!("{other:?} is not an operator (one of In, NotIn, Exists, DoesNotExist)"),
            )),
        }
        for (j, v) in values.iter().enumerate() {
            if let Some(e) = label_value_error(v) {
                out.push((format!("{at}.values[{j}]"), e));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert_eq!(dns_label_error("web-1", 63), None);
        assert!(dns_label_error("Web", 63).is_some());
        assert!(dns_label_error("-web", 63).is_some());
        assert!(dns_label_error("web_1", 63).is_some());
        assert!(dns_label_error(&"a".repeat(64), 63).is_some());
        assert!(dns_label_error("", 63).is_some());
    }

    #[test]
    fn label_keys_and_values() {
        assert_eq!(label_key_error("zone"), None);
        assert_eq!(label_key_error("topology.shoal.dev/zone"), None);
        assert!(label_key_error("/zone").is_some());
        assert!(label_key_error("Bad_Prefix/zone").is_some());
        assert!(label_key_error("zone!").is_some());
        assert_eq!(label_value_error(""), None);
        assert_eq!(label_value_error("east-1"), None);
        assert!(label_value_error("east 1").is_some());
    }
}
