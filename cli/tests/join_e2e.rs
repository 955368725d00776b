//! Joining over the network with mutual TLS, end to end: `shoal up
//! --join-listen` on the main engine, and `shoal agent` for an extra engine
//! run inside that host's network namespace, dialling the control plane's
//! address on the test switch with the join token. A wrong token is refused
//! with a clear message; the joined host runs tasks; restarted without the
//! token, the agent comes back with the credentials it kept.
//!
//! The API listens on the switch address too, so it serves HTTPS with a
//! bearer token: the shoal CLI and kubectl use the kubeconfig (also from the
//! other host's namespace); a wrong token gets 401.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};

use common::{Killed, TwoHosts, ok, task_hosts};
use shoal_tests::ROOT_ADDRESS;

const SERVICE: &str = r#"
apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: { name: spread, namespace: default }
spec:
  replicas: 4
  template:
    image: shoal-test/busybox:1
    command: ["sleep", "100000"]
    init: true
    stopGracePeriod: 1s
"#;

/// `shoal agent` inside the extra host's network namespace.
fn agent_in_netns(h: &TwoHosts, args: &[&str], log: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &h.extra.netns])
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .arg("agent")
        .args(["--host-name", &h.extra.name])
        .args(args)
        .env("DOCKER_HOST", &h.extra.docker_host)
        .env_remove("SHOAL_CLUSTER_ID")
        .env_remove("SHOAL_JOIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(h.tmp.path().join(log)).unwrap());
    c
}

#[test]
fn a_host_joins_over_mutual_tls_with_the_token() {
    let listen = format!("{ROOT_ADDRESS}:0");
    let h = TwoHosts::start_with(
        "join-main",
        "join",
        &["--join-listen", &listen, "--listen", &listen],
    );
    let kubeconfig = std::fs::read_to_string(&h.kc).unwrap();
    assert!(
        kubeconfig.contains(&format!("server: \"https://{ROOT_ADDRESS}:")),
        "{kubeconfig}"
    );
    let join = h.join.clone().expect("shoal up printed a join address");
    assert!(
        join.starts_with(&format!("https://{ROOT_ADDRESS}:")),
        "{join}"
    );
    let token = std::fs::read_to_string(h.data.join("join-token"))
        .unwrap()
        .trim()
        .to_string();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.data.join("join-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the token file is private: {mode:o}");
    }
    let state = h.tmp.path().join("agent-state");
    let state_arg = state.to_str().unwrap();

    // A token with another secret: refused, saying why, nothing kept.
    let mut parts: Vec<&str> = token.split('-').collect();
    let wrong_secret = "0".repeat(32);
    parts[3] = &wrong_secret;
    let wrong = parts.join("-");
    let o = agent_in_netns(
        &h,
        &[
            "--dispatcher",
            &join,
            "--join-token",
            &wrong,
            "--state-dir",
            state_arg,
        ],
        "wrong.log",
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("secret is not this cluster's"), "{err}");
    assert!(!state.join("host.key").exists());
    // A token that is not one: clap names the argument.
    let o = agent_in_netns(
        &h,
        &["--dispatcher", &join, "--join-token", "SWMTKN-1-abc"],
        "bad.log",
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("--join-token") && err.contains("not a Shoal join token"),
        "{err}"
    );

    // The real token: joined, Ready, and running tasks.
    let agent = Killed(
        agent_in_netns(
            &h,
            &[
                "--dispatcher",
                &join,
                "--join-token",
                &token,
                "--state-dir",
                state_arg,
            ],
            "agent.log",
        )
        .spawn()
        .unwrap(),
    );
    h.wait_ready(&[&h.main, &h.extra.name]);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("host.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the host key is private: {mode:o}");
    }
    let manifest = h.tmp.path().join("spread.yaml");
    std::fs::write(&manifest, SERVICE).unwrap();
    ok(&h.kc, &["apply", "-f", manifest.to_str().unwrap()]);
    common::eventually("a task running on the joined host", 60, || {
        task_hosts(&h.kc, "spread")
            .iter()
            .any(|(_, host, phase)| host == &h.extra.name && phase == "Running")
    });

    // Restarted without the token: the kept credentials are enough.
    drop(agent);
    let _agent = Killed(
        agent_in_netns(
            &h,
            &["--dispatcher", &join, "--state-dir", state_arg],
            "again.log",
        )
        .spawn()
        .unwrap(),
    );
    common::eventually("the host back with its kept credentials", 30, || {
        let log = std::fs::read_to_string(h.tmp.path().join("again.log")).unwrap_or_default();
        log.contains("welcomed by the control plane")
    });
    h.wait_ready(&[&h.extra.name]);

    // The API from the other host's namespace, over HTTPS with the token.
    let o = Command::new("ip")
        .args(["netns", "exec", &h.extra.netns])
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .args(["host", "ls"])
        .env("KUBECONFIG", &h.kc)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains(&h.extra.name), "{out}");
    // kubectl too, with a fresh cache (discovery, OpenAPI, the table).
    let kubectl = |token: Option<&str>| {
        let mut c = Command::new("kubectl");
        c.args([
            "--cache-dir",
            h.tmp.path().join("kube-cache").to_str().unwrap(),
        ])
        .args(["get", "ssvc", "-n", "default"])
        .env("KUBECONFIG", &h.kc);
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c.output().unwrap()
    };
    let o = kubectl(None);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("spread"), "{out}");
    // Another token: 401, which kubectl reports as such.
    let o = kubectl(Some("not-the-token"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("Unauthorized"), "{err}");

    ok(
        &h.kc,
        &["delete", "service", "spread", "--wait", "--timeout", "60s"],
    );
}
