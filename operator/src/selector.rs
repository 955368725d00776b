//! Label selectors (Kubernetes `LabelSelector` shape) compiled once and
//! matched against host labels.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `key=value` (from `matchLabels`).
    Equals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`: also true when the key is missing.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A compiled label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// Compiles a selector. An operator other than `In`, `NotIn`, `Exists` and
    /// `DoesNotExist` (refused at validation) matches nothing, so a bad
    /// selector never places a task anywhere.
    pub fn new(sel: &LabelSelector) -> Self {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            reqs.push(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                // `In` with no values matches nothing.
                _ => Requirement::In(e.key.clone(), Vec::new()),
            });
        }
        Self { reqs }
    }

    /// Compiles an optional selector (`None` matches everything).
    pub fn from_option(sel: Option<&LabelSelector>) -> Self {
        sel.map(Self::new).unwrap_or_default()
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// The selector in Kubernetes' string form, e.g. `zone=east,disk in (ssd)`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.reqs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|s| s.to_string()).collect())
            },
        }
    }

    #[test]
    fn matching_table() {
        let east = labels(&[("zone", "east"), ("disk", "ssd")]);
        let west = labels(&[("zone", "west")]);
        let bare = labels(&[]);
        let cases: Vec<(LabelSelector, [bool; 3], &str)> = vec![
            (LabelSelector::default(), [true, true, true], ""),
            (
                LabelSelector {
                    match_labels: Some(labels(&[("zone", "east")])),
                    ..Default::default()
                },
                [true, false, false],
                "zone=east",
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![expr("zone", "In", &["east", "west"])]),
                    ..Default::default()
                },
                [true, true, false],
                "zone in (east,west)",
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![expr("zone", "NotIn", &["east"])]),
                    ..Default::default()
                },
                [false, true, true],
                "zone notin (east)",
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![expr("disk", "Exists", &[])]),
                    ..Default::default()
                },
                [true, false, false],
                "disk",
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![expr("disk", "DoesNotExist", &[])]),
                    ..Default::default()
                },
                [false, true, true],
                "!disk",
            ),
            (
                LabelSelector {
                    match_expressions: Some(vec![expr("disk", "Bogus", &[])]),
                    ..Default::default()
                },
                [false, false, false],
                "disk in ()",
            ),
        ];
        for (sel, want, text) in cases {
            let s = Selector::new(&sel);
            let got = [s.matches(&east), s.matches(&west), s.matches(&bare)];
            assert_eq!(got, want, "{text}");
            assert_eq!(s.to_string(), text);
        }
    }
}
