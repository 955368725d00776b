//! `--allow-bind`, `--allow-cap` and `--no-exec`: the agent's local policy,
//! which the control plane cannot override (DESIGN.md "Security").

use shoal_agent::policy::{AllowedPath, Capability, LocalPolicy};

/// What this host lets the control plane run on it.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Local policy")]
pub struct PolicyArgs {
    /// Allow bind mounts of this host path and everything under it
    /// (repeatable; `/` allows every path).
    ///
    /// Other bind mounts are refused: the task ends Rejected. Paths are
    /// compared as written, so allow only directories that containers cannot
    /// write to (a container could plant a symbolic link there).
    #[arg(long = "allow-bind", value_name = "PATH")]
    allow_bind: Vec<AllowedPath>,
    /// Allow templates to add this Linux capability, e.g. NET_ADMIN
    /// (repeatable; `ALL` allows every capability).
    ///
    /// Other added capabilities are refused (the task ends Rejected), except
    /// those Docker grants by default, e.g. NET_BIND_SERVICE after dropping
    /// ALL. Dropping is always allowed.
    #[arg(long = "allow-cap", value_name = "NAME")]
    allow_cap: Vec<Capability>,
    /// Refuse to run commands in this host's containers for the control
    /// plane (`shoal exec` then gets this host's refusal).
    #[arg(long)]
    pub no_exec: bool,
}

impl PolicyArgs {
    /// The policy these flags describe; without any flag, permissive when
    /// `default_permissive` (the control plane is on this machine), else
    /// strict (no bind mounts, no added capabilities).
    pub fn to_policy(&self, default_permissive: bool) -> LocalPolicy {
        if self.allow_bind.is_empty() && self.allow_cap.is_empty() {
            return if default_permissive {
                LocalPolicy::permissive()
            } else {
                LocalPolicy::strict()
            };
        }
        LocalPolicy::allowing(
            self.allow_bind.iter().cloned(),
            self.allow_cap.iter().cloned(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use clap::Parser;
    use shoal_agent::policy::{BindAllowance, CapAllowance};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn parse(args: &[&str]) -> Result<PolicyArgs, String> {
        let mut all = vec!["shoal"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map(|c| c.policy)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn without_flags_the_caller_picks_the_default() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.to_policy(false), LocalPolicy::strict());
        assert_eq!(a.to_policy(true), LocalPolicy::permissive());
    }

    #[test]
    fn flags_give_exactly_what_they_say() {
        let a = parse(&[
            "--allow-bind",
            "/srv/data/",
            "--allow-bind=/var/lib/app",
            "--allow-cap",
            "cap_net_admin",
        ])
        .unwrap();
        for default_permissive in [false, true] {
            let p = a.to_policy(default_permissive);
            let paths: Vec<String> = match &p.allow_bind {
                BindAllowance::Under(v) => v.iter().map(ToString::to_string).collect(),
                BindAllowance::Any => panic!("any"),
            };
            assert_eq!(paths, ["/srv/data", "/var/lib/app"]);
            let caps: Vec<String> = match &p.allow_caps {
                CapAllowance::Only(c) => c.iter().map(ToString::to_string).collect(),
                CapAllowance::Any => panic!("any"),
            };
            assert_eq!(caps, ["NET_ADMIN"]);
        }
        // Only capabilities given: no bind mounts, even for `shoal up`.
        let p = parse(&["--allow-cap", "SYS_TIME"]).unwrap().to_policy(true);
        assert_eq!(p.allow_bind, BindAllowance::Under(Vec::new()));
        let p = parse(&["--allow-bind", "/", "--allow-cap", "ALL"])
            .unwrap()
            .to_policy(false);
        assert_eq!(p, LocalPolicy::permissive());
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, want) in [
            (
                &["--allow-bind", "data"][..],
                "\"data\" must be an absolute path",
            ),
            (
                &["--allow-bind", "/srv/../etc"][..],
                "must not contain \"..\"",
            ),
            (
                &["--allow-cap", "NET_ADMINS"][..],
                "is not a Linux capability",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(e.contains(args[0]), "{args:?}: {e}");
        }
    }
}
