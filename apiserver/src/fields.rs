//! `fieldValidation`: what to do with fields the schema does not know, and
//! validation of every write with `shoal_crds::validate`.

use serde_json::Value;
use shoal_crds::{FieldError, ValidationErrors};

/// The `fieldValidation` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop unknown fields silently.
    Ignore,
    /// Drop unknown fields with a `Warning` header (the server default).
    #[default]
    Warn,
    /// Refuse unknown fields with 422 (kubectl's default).
    Strict,
}

impl FieldValidation {
    /// Parses the parameter (Kubernetes accepts exactly these spellings).
    pub fn parse(s: Option<&str>) -> Result<FieldValidation, String> {
        match s {
            None | Some("") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(format!(
                "fieldValidation {other:?} is invalid: use Ignore, Warn or Strict"
            )),
        }
    }
}

const UNKNOWN: &str = "unknown field";

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Parses a path as written by `validate` (`a.b[1].c`, `a["x-y"]`).
fn parse_path(path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut chars = path.chars().peekable();
    let mut cur = String::new();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                if !cur.is_empty() {
                    steps.push(Step::Key(std::mem::take(&mut cur)));
                }
            }
            '[' => {
                if !cur.is_empty() {
                    steps.push(Step::Key(std::mem::take(&mut cur)));
                }
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut key = String::new();
                    loop {
                        match chars.next()? {
                            '\\' => key.push(chars.next()?),
                            '"' => break,
                            c => key.push(c),
                        }
                    }
                    if chars.next()? != ']' {
                        return None;
                    }
                    steps.push(Step::Key(key));
                } else {
                    let mut n = String::new();
                    loop {
                        match chars.next()? {
                            ']' => break,
                            c => n.push(c),
                        }
                    }
                    steps.push(Step::Index(n.parse().ok()?));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        steps.push(Step::Key(cur));
    }
    Some(steps)
}

/// Removes the field at `path`; false if the path does not name a field.
fn remove_path(obj: &mut Value, path: &str) -> bool {
    let Some(steps) = parse_path(path) else {
        return false;
    };
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut cur = obj;
    for s in parents {
        let next = match s {
            Step::Key(k) => cur.get_mut(k.as_str()),
            Step::Index(i) => cur.get_mut(*i),
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Step::Key(k), Value::Object(m)) => m.remove(k).is_some(),
        _ => false,
    }
}

/// The outcome of validating a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The object to store (unknown fields dropped unless Strict).
    pub object: Value,
    /// Warnings for the `Warning` header.
    pub warnings: Vec<String>,
}

/// Validates an object about to be written. Unknown fields are handled as
/// `mode` says; every other problem fails.
pub fn check(mut obj: Value, mode: FieldValidation) -> Result<Checked, ValidationErrors> {
    let mut warnings = Vec::new();
    // Each pass drops the unknown fields found; an unknown field can hide
    // others only below it, which go with it, so two passes are enough.
    for _ in 0..2 {
        let errs = match shoal_crds::validate(&obj) {
            Ok(_) => {
                return Ok(Checked {
                    object: obj,
                    warnings,
                });
            }
            Err(e) => e,
        };
        if mode == FieldValidation::Strict {
            return Err(errs);
        }
        let (unknown, other): (Vec<FieldError>, Vec<FieldError>) =
            errs.0.into_iter().partition(|e| e.message == UNKNOWN);
        if unknown.is_empty() {
            return Err(ValidationErrors(other));
        }
        for u in &unknown {
            if !remove_path(&mut obj, &u.path) {
                // Cannot drop it: report it as is.
                return Err(ValidationErrors(unknown));
            }
            if mode == FieldValidation::Warn {
                warnings.push(format!("unknown field {:?}", u.path));
            }
        }
    }
    shoal_crds::validate(&obj)?;
    Ok(Checked {
        object: obj,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    fn svc() -> Value {
        json!({
            "apiVersion": "shoal.dev/v1alpha1", "kind": "Service",
            "metadata": { "name": "web", "namespace": "default" },
            "spec": { "replicas": 2, "template": { "image": "busybox:1", "ports": [{ "containerPort": 80 }] } },
        })
    }

    #[test]
    fn paths_parse_keys_indexes_and_quoted_keys() {
        assert_eq!(
            parse_path("spec.template.ports[1].x").unwrap(),
            vec![
                Step::Key("spec".into()),
                Step::Key("template".into()),
                Step::Key("ports".into()),
                Step::Index(1),
                Step::Key("x".into())
            ]
        );
        assert_eq!(
            parse_path(r#"metadata.labels["a/b\"c"]"#).unwrap(),
            vec![
                Step::Key("metadata".into()),
                Step::Key("labels".into()),
                Step::Key("a/b\"c".into())
            ]
        );
        assert!(parse_path("a[x").is_none());
    }

    #[test]
    fn strict_refuses_unknown_fields_by_path() {
        let mut o = svc();
        o["spec"]["template"]["ports"][0]["bogus"] = json!(1);
        let e = check(o, FieldValidation::Strict).unwrap_err();
        assert_eq!(e.paths(), vec!["spec.template.ports[0].bogus"]);
    }

    #[test]
    fn warn_and_ignore_drop_unknown_fields() {
        let mut o = svc();
        o["spec"]["template"]["ports"][0]["bogus"] = json!(1);
        o["spec"]["extra-thing"] = json!({ "deep": true });
        let c = check(o.clone(), FieldValidation::Warn).unwrap();
        assert_eq!(c.object, svc());
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        let c = check(o, FieldValidation::Ignore).unwrap();
        assert_eq!(c.object, svc());
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn other_errors_fail_in_every_mode() {
        let mut o = svc();
        o["spec"]["replicas"] = json!(-1);
        o["spec"]["bogus"] = json!(1);
        for mode in [FieldValidation::Ignore, FieldValidation::Warn] {
            let e = check(o.clone(), mode).unwrap_err();
            assert_eq!(e.paths(), vec!["spec.replicas"]);
        }
        assert_eq!(
            FieldValidation::parse(Some("Strict")),
            Ok(FieldValidation::Strict)
        );
        assert!(FieldValidation::parse(Some("strict")).is_err());
    }
}
