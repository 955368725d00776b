//! The agent's local policy (DESIGN.md "Security"): what this host lets a
//! template do, whatever the control plane asks. A compromised control plane
//! must not equal root on every host, so the host's own configuration
//! (`shoal agent --allow-bind`, `--allow-cap`) decides:
//!
//! - bind mounts: the source must be at or under an allowed host path. The
//!   check is lexical (the engine resolves the path on its host, which the
//!   agent may not see): a source with `..` components is refused outright,
//!   and a symbolic link inside an allowed directory is followed by the
//!   engine, so allow only directories that containers cannot write to (or
//!   that no container mounts read-write);
//! - added capabilities: each must be allowed, or belong to the engine's
//!   default set (adding one of those back after a `drop: [ALL]` grants
//!   nothing a default container lacks). Dropping is always fine.
//!
//! The template has no privileged or host-network fields, so there is
//! nothing else to refuse yet.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use shoal_crds::{ContainerTemplate, MountType};

/// The capabilities Docker grants a container by default (moby's
/// `oci/caps/defaults.go`): adding one of them back is never an escalation.
pub const ENGINE_DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// A policy setting that is not well-formed (a bad `--allow-bind` or
/// `--allow-cap` value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyConfigError {
    /// An allowed bind path that is not absolute.
    #[error("{0:?} must be an absolute path")]
    RelativePath(String),
    /// An allowed bind path with a `..` component.
    #[error("{0:?} must not contain \"..\" components")]
    ParentDir(String),
    /// Not a Linux capability name.
    #[error("{0:?} is not a Linux capability (e.g. NET_ADMIN, SYS_TIME, ALL)")]
    UnknownCapability(String),
}

/// A host path under which bind mounts are allowed: absolute, without `..`,
/// normalised (no `.` components, repeated or trailing slashes). `/` allows
/// every path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowedPath(PathBuf);

impl AllowedPath {
    /// The normalised path.
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    fn is_root(&self) -> bool {
        self.0 == Path::new("/")
    }
}

impl FromStr for AllowedPath {
    type Err = PolicyConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match normalise(s) {
            Ok(p) => Ok(AllowedPath(p)),
            Err(PathProblem::Relative) => Err(PolicyConfigError::RelativePath(s.into())),
            Err(PathProblem::ParentDir) => Err(PolicyConfigError::ParentDir(s.into())),
        }
    }
}

impl fmt::Display for AllowedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// A Linux capability in canonical form: upper case without the `CAP_`
/// prefix (`NET_ADMIN`), or `ALL`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability(String);

impl Capability {
    /// The canonical name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Capability {
    type Err = PolicyConfigError;

    /// Accepts `NET_ADMIN`, `CAP_NET_ADMIN`, `net_admin` and `ALL`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let c = canonical_capability(s);
        if shoal_crds::validate::is_capability(&c) {
            Ok(Capability(c))
        } else {
            Err(PolicyConfigError::UnknownCapability(s.into()))
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The form the engine compares capabilities in (it ignores case and the
/// `CAP_` prefix): `cap_net_admin` → `NET_ADMIN`.
fn canonical_capability(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    match up.strip_prefix("CAP_") {
        Some(rest) => rest.to_string(),
        None => up,
    }
}

/// Where bind mounts are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAllowance {
    /// Any host path.
    Any,
    /// Only at or under these paths (none: no bind mounts at all).
    Under(Vec<AllowedPath>),
}

/// Which capabilities a template may add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapAllowance {
    /// Any, `ALL` included.
    Any,
    /// Only these, besides the engine's default set.
    Only(BTreeSet<Capability>),
}

/// What this host lets a template do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPolicy {
    /// Where bind mounts are allowed.
    pub allow_bind: BindAllowance,
    /// Which capabilities may be added.
    pub allow_caps: CapAllowance,
}

impl Default for LocalPolicy {
    /// Strict: the safe choice when nothing is said.
    fn default() -> Self {
        Self::strict()
    }
}

impl LocalPolicy {
    /// Everything allowed (a control plane on the user's own machine).
    pub fn permissive() -> LocalPolicy {
        LocalPolicy {
            allow_bind: BindAllowance::Any,
            allow_caps: CapAllowance::Any,
        }
    }

    /// No bind mounts of host paths, no added capabilities beyond the
    /// engine's default set.
    pub fn strict() -> LocalPolicy {
        LocalPolicy {
            allow_bind: BindAllowance::Under(Vec::new()),
            allow_caps: CapAllowance::Only(BTreeSet::new()),
        }
    }

    /// Bind mounts at or under `binds` (`/` among them: any path) and the
    /// added capabilities `caps` (`ALL` among them: any).
    pub fn allowing(
        binds: impl IntoIterator<Item = AllowedPath>,
        caps: impl IntoIterator<Item = Capability>,
    ) -> LocalPolicy {
        let binds: Vec<AllowedPath> = binds.into_iter().collect();
        let caps: BTreeSet<Capability> = caps.into_iter().collect();
        LocalPolicy {
            allow_bind: if binds.iter().any(AllowedPath::is_root) {
                BindAllowance::Any
            } else {
                BindAllowance::Under(binds)
            },
            allow_caps: if caps.iter().any(|c| c.0 == "ALL") {
                CapAllowance::Any
            } else {
                CapAllowance::Only(caps)
            },
        }
    }

    /// Every way `t` breaks this policy, or `Ok` when it breaks none.
    pub fn check(&self, t: &ContainerTemplate) -> Result<(), PolicyViolation> {
        let mut problems = Vec::new();
        if let BindAllowance::Under(allowed) = &self.allow_bind {
            for (i, m) in t.mounts.iter().flatten().enumerate() {
                if m.kind != MountType::Bind {
                    continue;
                }
                let field = format!("template.mounts[{i}].source");
                let src = m.source.as_deref().unwrap_or_default();
                let message = match normalise(src) {
                    Ok(p) if allowed.iter().any(|a| p.starts_with(&a.0)) => continue,
                    Ok(_) if allowed.is_empty() => format!(
                        "{src:?}: this host allows no bind mounts of host paths (shoal agent --allow-bind)"
                    ),
                    Ok(_) => format!(
                        "{src:?} is outside the paths this host allows for bind mounts (shoal agent --allow-bind)"
                    ),
                    Err(PathProblem::Relative) => {
                        format!("{src:?} must be an absolute host path")
                    }
                    Err(PathProblem::ParentDir) => format!(
                        "{src:?} must not contain \"..\" components (this host checks bind mounts against the paths it allows)"
                    ),
                };
                problems.push(FieldViolation { field, message });
            }
        }
        if let CapAllowance::Only(allowed) = &self.allow_caps {
            let added = t.capabilities.iter().flat_map(|c| c.add.iter().flatten());
            for (i, name) in added.enumerate() {
                let c = canonical_capability(name);
                if ENGINE_DEFAULT_CAPABILITIES.contains(&c.as_str())
                    || allowed.contains(&Capability(c))
                {
                    continue;
                }
                problems.push(FieldViolation {
                    field: format!("template.capabilities.add[{i}]"),
                    message: format!(
                        "{} is not allowed on this host (shoal agent --allow-cap)",
                        shown(name)
                    ),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PolicyViolation { problems })
        }
    }
}

impl fmt::Display for LocalPolicy {
    /// One line for the agent's start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bind mounts: ")?;
        match &self.allow_bind {
            BindAllowance::Any => f.write_str("any host path")?,
            BindAllowance::Under(p) if p.is_empty() => f.write_str("none")?,
            BindAllowance::Under(p) => {
                let list: Vec<String> = p.iter().map(ToString::to_string).collect();
                write!(f, "under {}", list.join(", "))?;
            }
        }
        f.write_str("; added capabilities: ")?;
        match &self.allow_caps {
            CapAllowance::Any => f.write_str("any"),
            CapAllowance::Only(c) if c.is_empty() => f.write_str("the engine's defaults only"),
            CapAllowance::Only(c) => {
                let list: Vec<&str> = c.iter().map(Capability::as_str).collect();
                write!(f, "the engine's defaults and {}", list.join(", "))
            }
        }
    }
}

/// A capability name as given, quoted unless it is a plain name (it comes
/// from the control plane, which this policy does not trust).
fn shown(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

enum PathProblem {
    Relative,
    ParentDir,
}

/// `path` without `.` components and repeated or trailing slashes; refuses
/// relative paths and `..` components (never resolved: `/a/../etc` is
/// refused, not read as `/etc`).
fn normalise(path: &str) -> Result<PathBuf, PathProblem> {
    if !path.starts_with('/') {
        return Err(PathProblem::Relative);
    }
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::ParentDir => return Err(PathProblem::ParentDir),
            Component::CurDir => {}
            Component::RootDir | Component::Normal(_) | Component::Prefix(_) => out.push(c),
        }
    }
    Ok(out)
}

/// One field of a template that the local policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldViolation {
    /// Path of the field, e.g. `template.mounts[1].source`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A template this host refuses to run: every field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", join(.problems))]
pub struct PolicyViolation {
    /// The refused fields, in template order (mounts, then capabilities).
    pub problems: Vec<FieldViolation>,
}

fn join(problems: &[FieldViolation]) -> String {
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    all.join("; ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use shoal_crds::{Capabilities, Mount};

    use super::*;

    fn bind(source: &str) -> Mount {
        Mount {
            kind: MountType::Bind,
            source: Some(source.into()),
            target: "/data".into(),
            ..Default::default()
        }
    }

    fn with_mounts(mounts: Vec<Mount>) -> ContainerTemplate {
        ContainerTemplate {
            image: "img".into(),
            mounts: Some(mounts),
            ..Default::default()
        }
    }

    fn with_caps(add: &[&str], drop: &[&str]) -> ContainerTemplate {
        ContainerTemplate {
            image: "img".into(),
            capabilities: Some(Capabilities {
                add: Some(add.iter().map(|s| s.to_string()).collect()),
                drop: Some(drop.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        }
    }

    fn policy(binds: &[&str], caps: &[&str]) -> LocalPolicy {
        LocalPolicy::allowing(
            binds.iter().map(|b| b.parse().unwrap()),
            caps.iter().map(|c| c.parse().unwrap()),
        )
    }

    fn message(p: &LocalPolicy, t: &ContainerTemplate) -> Option<String> {
        p.check(t).err().map(|e| e.to_string())
    }

    #[test]
    fn bind_mounts_are_checked_against_the_allowed_paths() {
        let p = policy(&["/srv/data", "/var/lib/app/"], &[]);
        for (source, ok) in [
            ("/srv/data", true),
            ("/srv/data/", true),
            ("/srv/data/x/y", true),
            ("//srv//data/./x", true),
            ("/var/lib/app", true),
            ("/var/lib/app/cache", true),
            ("/srv/database", false),
            ("/srv", false),
            ("/", false),
            ("/etc", false),
            ("/srv/data/../../etc", false),
            ("/srv/data/..", false),
            ("srv/data", false),
            ("./srv/data", false),
            ("", false),
        ] {
            let t = with_mounts(vec![bind(source)]);
            assert_eq!(p.check(&t).is_ok(), ok, "{source:?}: {:?}", p.check(&t));
        }
    }

    #[test]
    fn refusals_name_the_field_and_the_flag() {
        let p = policy(&["/srv/data"], &[]);
        let t = with_mounts(vec![
            Mount {
                kind: MountType::Tmpfs,
                target: "/tmp".into(),
                ..Default::default()
            },
            bind("/etc"),
        ]);
        assert_eq!(
            message(&p, &t).as_deref(),
            Some(
                "template.mounts[1].source: \"/etc\" is outside the paths this host allows for bind mounts (shoal agent --allow-bind)"
            )
        );
        let t = with_mounts(vec![bind("/srv/data/../../etc")]);
        let m = message(&p, &t).unwrap();
        assert!(
            m.starts_with(
                "template.mounts[0].source: \"/srv/data/../../etc\" must not contain \"..\""
            ),
            "{m}"
        );
        let t = with_mounts(vec![bind("data")]);
        assert_eq!(
            message(&p, &t).as_deref(),
            Some("template.mounts[0].source: \"data\" must be an absolute host path")
        );
        let t = with_mounts(vec![bind("/etc")]);
        assert_eq!(
            message(&LocalPolicy::strict(), &t).as_deref(),
            Some(
                "template.mounts[0].source: \"/etc\": this host allows no bind mounts of host paths (shoal agent --allow-bind)"
            )
        );
        let t = with_caps(&["NET_ADMIN", "SYS_ADMIN"], &[]);
        assert_eq!(
            message(&policy(&[], &["NET_ADMIN"]), &t).as_deref(),
            Some(
                "template.capabilities.add[1]: SYS_ADMIN is not allowed on this host (shoal agent --allow-cap)"
            )
        );
    }

    #[test]
    fn every_refused_field_is_reported() {
        let mut t = with_caps(&["SYS_ADMIN", "NET_RAW", "sys_ptrace"], &[]);
        t.mounts = Some(vec![bind("/etc"), bind("/srv/ok"), bind("/root")]);
        let e = policy(&["/srv"], &[]).check(&t).unwrap_err();
        let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "template.mounts[0].source",
                "template.mounts[2].source",
                "template.capabilities.add[0]",
                "template.capabilities.add[2]",
            ]
        );
        assert_eq!(e.to_string().matches("; ").count(), 3, "{e}");
    }

    #[test]
    fn other_mounts_are_not_bind_mounts() {
        let t = with_mounts(vec![
            Mount {
                kind: MountType::Volume,
                source: Some("data".into()),
                target: "/data".into(),
                ..Default::default()
            },
            Mount {
                kind: MountType::Tmpfs,
                target: "/tmp".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(LocalPolicy::strict().check(&t), Ok(()));
    }

    #[test]
    fn added_capabilities_are_checked_in_any_spelling() {
        for (allowed, add, ok) in [
            (&[][..], "SYS_ADMIN", false),
            (&[][..], "ALL", false),
            (&["NET_ADMIN"][..], "NET_ADMIN", true),
            (&["NET_ADMIN"][..], "CAP_NET_ADMIN", true),
            (&["CAP_NET_ADMIN"][..], "net_admin", true),
            (&["cap_net_admin"][..], "cap_net_admin", true),
            (&["NET_ADMIN"][..], "SYS_ADMIN", false),
            (&["NET_ADMIN"][..], "ALL", false),
            (&["ALL"][..], "ALL", true),
            (&["ALL"][..], "SYS_ADMIN", true),
            // The engine's default set may always be added back.
            (&[][..], "NET_BIND_SERVICE", true),
            (&[][..], "cap_chown", true),
            (&[][..], "", false),
            (&[][..], "CAP_", false),
        ] {
            let p = policy(&[], allowed);
            let t = with_caps(&[add], &["ALL"]);
            assert_eq!(p.check(&t).is_ok(), ok, "allowed {allowed:?}, add {add:?}");
        }
    }

    #[test]
    fn dropping_is_always_fine() {
        let t = with_caps(&[], &["ALL", "SYS_ADMIN", "whatever"]);
        assert_eq!(LocalPolicy::strict().check(&t), Ok(()));
    }

    #[test]
    fn odd_capability_names_are_quoted() {
        let t = with_caps(&["SYS_ADMIN\n"], &[]);
        let m = message(&LocalPolicy::strict(), &t).unwrap();
        assert!(m.contains("\"SYS_ADMIN\\n\" is not allowed"), "{m}");
    }

    #[test]
    fn permissive_allows_everything_and_strict_nothing() {
        let mut t = with_caps(&["ALL", "SYS_ADMIN"], &[]);
        t.mounts = Some(vec![bind("/"), bind("/etc/../root"), bind("rel")]);
        assert_eq!(LocalPolicy::permissive().check(&t), Ok(()));
        let e = LocalPolicy::strict().check(&t).unwrap_err();
        assert_eq!(e.problems.len(), 5, "{e}");
        assert_eq!(LocalPolicy::default(), LocalPolicy::strict());
        assert_eq!(
            LocalPolicy::strict().check(&ContainerTemplate::default()),
            Ok(())
        );
    }

    #[test]
    fn root_and_all_mean_any() {
        let p = policy(&["/srv", "/"], &["NET_ADMIN", "CAP_ALL"]);
        assert_eq!(p, LocalPolicy::permissive());
        let p = policy(&["//"], &[]);
        assert_eq!(p.allow_bind, BindAllowance::Any);
        assert_eq!(p.allow_caps, CapAllowance::Only(BTreeSet::new()));
    }

    #[test]
    fn policy_settings_are_validated() {
        for (s, want) in [
            ("/srv/data/", Ok("/srv/data")),
            ("/srv/./data//x", Ok("/srv/data/x")),
            ("/", Ok("/")),
            ("srv", Err(PolicyConfigError::RelativePath("srv".into()))),
            ("", Err(PolicyConfigError::RelativePath("".into()))),
            (
                "/srv/../etc",
                Err(PolicyConfigError::ParentDir("/srv/../etc".into())),
            ),
        ] {
            let got = s.parse::<AllowedPath>().map(|p| p.to_string());
            assert_eq!(got, want.map(String::from), "{s:?}");
        }
        for (s, want) in [
            ("NET_ADMIN", Some("NET_ADMIN")),
            ("cap_sys_time", Some("SYS_TIME")),
            ("all", Some("ALL")),
            ("NET_ADMIN_PLUS", None),
            ("", None),
        ] {
            let got = s.parse::<Capability>().ok().map(|c| c.to_string());
            assert_eq!(got.as_deref(), want, "{s:?}");
        }
        let e = "FOO".parse::<Capability>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"FOO\" is not a Linux capability (e.g. NET_ADMIN, SYS_TIME, ALL)"
        );
    }

    #[test]
    fn display_summarises_the_policy() {
        assert_eq!(
            LocalPolicy::strict().to_string(),
            "bind mounts: none; added capabilities: the engine's defaults only"
        );
        assert_eq!(
            LocalPolicy::permissive().to_string(),
            "bind mounts: any host path; added capabilities: any"
        );
        assert_eq!(
            policy(&["/srv", "/data"], &["SYS_TIME", "NET_ADMIN"]).to_string(),
            "bind mounts: under /srv, /data; added capabilities: the engine's defaults and NET_ADMIN, SYS_TIME"
        );
    }
}
