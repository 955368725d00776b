//! The `shoal` CLI without a running API: help texts, completions, refused
//! documents (exit 2 before any connection) and the one-line error when
//! nothing answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output, Stdio};

fn shoal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn every_subcommand_has_a_help_with_a_short_first_line() {
    let top = text(&shoal(&["--help"])).0;
    for (cmd, first) in [
        (
            vec!["apply"],
            "Create or update Services (and Hosts) from manifests",
        ),
        (vec!["get"], "List Services, Tasks or Hosts, or show one"),
        (vec!["ps"], "List the tasks of a service"),
        (vec!["describe"], "Show one Service, Task or Host in detail"),
        (vec!["scale"], "Set the number of replicas of services"),
        (vec!["delete"], "Delete services"),
        (vec!["host"], "Manage the hosts of the cluster"),
        (vec!["host", "ls"], "List hosts"),
        (vec!["completion"], "Print a shell completion script"),
        (
            vec!["exec"],
            "Run a command in the container of a running task",
        ),
        (
            vec!["top"],
            "Show the CPU and memory use of services' running tasks",
        ),
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let o = shoal(&args);
        let (out, _) = text(&o);
        assert!(o.status.success(), "{cmd:?}");
        let line = out.lines().next().unwrap_or_default();
        assert!(line.starts_with(first), "{cmd:?}: {line:?}");
        assert!(line.len() <= 90, "{cmd:?}: first line too long: {line:?}");
        // Details follow the first line.
        assert!(out.lines().count() > 6, "{cmd:?}: {out}");
        if cmd.len() == 1 {
            assert!(top.contains(cmd[0]), "{top}");
        }
    }
}

#[test]
fn top_has_no_wide_view_and_exec_needs_a_command() {
    let o = shoal(&["top", "-o", "wide"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("-o wide: top has no wider view"),
        "{o:?}"
    );
    let o = shoal(&["exec", "web"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(text(&o).1.contains("<COMMAND>"), "{o:?}");
}

#[test]
fn completions_for_three_shells() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef shoal"),
        ("fish", "complete -c shoal"),
    ] {
        let o = shoal(&["completion", shell]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("apply") && out.contains("describe"), "{shell}");
    }
    assert!(!shoal(&["completion", "powershell-9"]).status.success());
}

#[test]
fn refused_documents_exit_2_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: shoal.dev/v1alpha1\nkind: Service\nmetadata: {name: bad}\nspec:\n  replicas: -1\n  template: {image: a}\n",
    )
    .unwrap();
    // A kubeconfig that points nowhere: validation comes first.
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, kubeconfig("http://127.0.0.1:1")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["apply", "-f"])
        .arg(&f)
        .env("KUBECONFIG", &kc)
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.yaml#0: spec.replicas:"), "{err}");
    assert!(err.contains("nothing applied"), "{err}");
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{server}\"}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
    )
}

#[test]
fn a_clear_error_when_nothing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(&kc, kubeconfig(&format!("http://127.0.0.1:{port}"))).unwrap();
    for args in [
        vec!["get", "services"],
        vec!["ps", "web"],
        vec!["host", "ls"],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(&args)
            .arg("--kubeconfig")
            .arg(&kc)
            .output()
            .unwrap();
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "cannot reach the Shoal API at http://127.0.0.1:{port}/"
            )) && err.contains("is `shoal up` running?"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn no_kubeconfig_anywhere_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["get", "hosts"])
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("xdg"))
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // As root the default data dir is /var/lib/shoal, which may hold a
    // kubeconfig of a real `shoal up`; only check when it does not.
    if !std::path::Path::new("/var/lib/shoal/kubeconfig").exists() {
        assert!(err.contains("no kubeconfig found"), "{err}");
    }
}
