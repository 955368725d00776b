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

use common::{Killed, TwoHosts, ok, shoal, task_hosts};
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

/// Runs `shoal agent` in the extra host's namespace, expecting a refusal;
/// its standard error.
fn refused(h: &TwoHosts, args: &[&str], log: &str) -> String {
    let o = agent_in_netns(h, args, log)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    err
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
    // `shoal join-token` prints the command, or the token alone.
    let data = h.data.to_str().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["join-token", "--data-dir", data])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "shoal agent --dispatcher {join} --join-token {token}"
        )),
        "{out}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["join-token", "-q", "--data-dir", data])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), token);
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["join-token", "--data-dir", h.tmp.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--join-listen"));

    let state = h.tmp.path().join("agent-state");
    let state_arg = state.to_str().unwrap();

    // A token with another secret: refused, saying why, nothing kept.
    let mut parts: Vec<&str> = token.split('-').collect();
    let wrong_secret = "0".repeat(32);
    parts[3] = &wrong_secret;
    let wrong = parts.join("-");
    let err = refused(
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
    );
    assert!(err.contains("secret is not this cluster's"), "{err}");
    assert!(!state.join("host.key").exists());
    // A token that is not one: clap names the argument.
    let err = refused(
        &h,
        &["--dispatcher", &join, "--join-token", "SWMTKN-1-abc"],
        "bad.log",
    );
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

    // Another name with this host's certificate: refused at once, saying why.
    let err = refused(
        &h,
        &[
            "--dispatcher",
            &join,
            "--state-dir",
            state_arg,
            "--host-name",
            "someone-else",
        ],
        "renamed.log",
    );
    assert!(
        err.contains(&format!("this host joined as \"{}\"", h.extra.name)),
        "{err}"
    );

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

    // The read-only token (DATA_DIR/api-token-view, in kubeconfig-view)
    // reads, and is refused any change with 403.
    let view = std::fs::read_to_string(h.data.join("api-token-view")).unwrap();
    let o = kubectl(Some(view.trim()));
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("spread"));
    let view_kc = h.data.join("kubeconfig-view");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&view_kc).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "kubeconfig-view is private: {mode:o}");
    }
    let listed = ok(&view_kc, &["get", "services"]);
    assert!(listed.contains("spread"), "{listed}");
    let o = shoal(&view_kc, &["scale", "spread=1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Forbidden: the read-only token cannot PATCH"),
        "{err}"
    );
    // Nor run commands; but it may measure, and the admin token may run them.
    let o = shoal(&view_kc, &["exec", "spread", "--", "true"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("read-only token cannot POST"), "{err}");
    // Not over a WebSocket either, although that starts with a GET.
    let o = shoal(&view_kc, &["exec", "-i", "spread", "--", "true"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("read-only token cannot GET"), "{err}");
    let top = ok(&view_kc, &["top", "spread"]);
    assert!(top.contains("spread-"), "{top}");
    let o = shoal(&h.kc, &["exec", "spread", "--", "true"]);
    assert!(o.status.success(), "{o:?}");

    ok(
        &h.kc,
        &["delete", "service", "spread", "--wait", "--timeout", "60s"],
    );
}

const GUARDED: &str = r#"
apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: { name: guarded, namespace: default }
spec:
  replicas: 2
  onHostLoss: Fence
  template:
    image: shoal-test/busybox:1
    command: ["sleep", "100000"]
    init: true
    stopGracePeriod: 1s
"#;

/// (time in ns, container name) of every `die` of the engine since `since`
/// (unix seconds).
fn dies(docker_host: &str, since: u64) -> Vec<(u128, String)> {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let o = Command::new("docker")
        .args(["-H", docker_host, "events"])
        .args(["--since", &since.to_string(), "--until", &until.to_string()])
        .args(["--filter", "event=die"])
        .args(["--format", "{{.TimeNano}} {{.Actor.Attributes.name}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let (t, n) = l.split_once(' ')?;
            Some((t.parse().ok()?, n.to_string()))
        })
        .collect()
}

/// `StartedAt` (ns since the epoch) of the running containers of a service.
fn started(docker_host: &str, service: &str) -> Vec<u128> {
    let ids = Command::new("docker")
        .args(["-H", docker_host, "ps", "-q"])
        .args(["--filter", &format!("label=shoal.dev/service={service}")])
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
    ids.split_whitespace()
        .map(|id| {
            let o = Command::new("docker")
                .args([
                    "-H",
                    docker_host,
                    "inspect",
                    "-f",
                    "{{.State.StartedAt}}",
                    id,
                ])
                .output()
                .unwrap();
            let t = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let ts: jiff::Timestamp = t.parse().unwrap();
            u128::try_from(ts.as_nanosecond()).unwrap()
        })
        .collect()
}

#[test]
fn fence_keeps_at_most_n_replicas_across_a_partition() {
    let h = TwoHosts::start_with(
        "fence-main",
        "fence",
        &["--join-listen", &format!("{ROOT_ADDRESS}:0")],
    );
    let join = h.join.clone().expect("a join address");
    let token = std::fs::read_to_string(h.data.join("join-token")).unwrap();
    let state = h.tmp.path().join("agent-state");
    let _agent = Killed(
        agent_in_netns(
            &h,
            &[
                "--dispatcher",
                &join,
                "--join-token",
                token.trim(),
                "--state-dir",
                state.to_str().unwrap(),
            ],
            "agent.log",
        )
        .spawn()
        .unwrap(),
    );
    h.wait_ready(&[&h.main, &h.extra.name]);
    let manifest = h.tmp.path().join("guarded.yaml");
    std::fs::write(&manifest, GUARDED).unwrap();
    ok(&h.kc, &["apply", "-f", manifest.to_str().unwrap()]);
    let running_on = |host: &str| {
        task_hosts(&h.kc, "guarded")
            .iter()
            .filter(|(_, th, phase)| th == host && phase == "Running")
            .count()
    };
    common::eventually("one replica on each host", 60, || {
        running_on(&h.main) == 1 && running_on(&h.extra.name) == 1
    });

    // Cut the extra host off: its agent hears nothing any more.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(h.extra.partition()).unwrap();
    common::eventually("the fenced replica replaced on the main host", 60, || {
        running_on(&h.main) == 2
    });
    let main_starts = started(&shoal_tests::main_docker_host(), "guarded");
    assert_eq!(main_starts.len(), 2, "{main_starts:?}");
    let replacement_start = main_starts.iter().copied().max().unwrap();
    // The isolated agent killed its replica, and before the replacement
    // started (the engines share this machine's clock).
    common::eventually("the fenced container's die event", 10, || {
        !dies(&h.extra.docker_host, since).is_empty()
    });
    let fenced = dies(&h.extra.docker_host, since);
    let last_die = fenced.iter().map(|d| d.0).max().unwrap();
    assert!(
        last_die < replacement_start,
        "the fenced replica died at {last_die}, after its replacement started at {replacement_start}: {fenced:?}"
    );
    let log = std::fs::read_to_string(h.tmp.path().join("agent.log")).unwrap_or_default();
    assert!(
        log.contains("killing the tasks with onHostLoss Fence"),
        "{log}"
    );

    rt.block_on(h.extra.heal()).unwrap();
    h.wait_ready(&[&h.extra.name]);
    ok(
        &h.kc,
        &["delete", "service", "guarded", "--wait", "--timeout", "60s"],
    );
}

/// Containers of the cluster on an engine (running or not).
fn cluster_containers(docker_host: &str, cluster: &str) -> usize {
    let o = Command::new("docker")
        .args(["-H", docker_host, "ps", "-aq"])
        .args(["--filter", &format!("label=shoal.dev/cluster={cluster}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .count()
}

#[test]
fn hosts_are_drained_relabelled_and_removed_and_a_removed_host_is_cut_off() {
    let listen = format!("{ROOT_ADDRESS}:0");
    let h = TwoHosts::start_with("rm-main", "rm", &["--join-listen", &listen]);
    let join = h.join.clone().expect("shoal up printed a join address");
    let token = std::fs::read_to_string(h.data.join("join-token"))
        .unwrap()
        .trim()
        .to_string();
    let state = h.tmp.path().join("agent-state");
    let state_arg = state.to_str().unwrap();
    let with_token = [
        "--dispatcher",
        &join,
        "--join-token",
        &token,
        "--state-dir",
        state_arg,
    ];
    let mut agent = Killed(
        agent_in_netns(&h, &with_token, "agent.log")
            .spawn()
            .unwrap(),
    );
    h.wait_ready(&[&h.main, &h.extra.name]);
    let extra = h.extra.name.as_str();

    // Labels: added and removed, shown by `host ls -o wide`.
    ok(
        &h.kc,
        &[
            "host",
            "update",
            extra,
            "--label-add",
            "zone=far",
            "--label-add",
            "rack=r1",
        ],
    );
    ok(&h.kc, &["host", "update", extra, "--label-rm", "rack"]);
    let wide = ok(&h.kc, &["host", "ls", "-o", "wide"]);
    let line = wide.lines().find(|l| l.starts_with(extra)).unwrap();
    assert!(
        line.contains("zone=far") && !line.contains("rack"),
        "{wide}"
    );
    let o = common::shoal(
        &h.kc,
        &["host", "update", "nowhere", "--availability", "Drain"],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not found"), "{err}");

    // Drain: the extra host's tasks move to the main host.
    let manifest = h.tmp.path().join("spread.yaml");
    std::fs::write(&manifest, SERVICE).unwrap();
    ok(
        &h.kc,
        &["apply", "-f", manifest.to_str().unwrap(), "--wait"],
    );
    assert!(
        task_hosts(&h.kc, "spread")
            .iter()
            .any(|(_, host, _)| host == extra),
        "spread over both hosts"
    );
    ok(&h.kc, &["host", "update", extra, "--availability", "Drain"]);
    common::eventually("the drained host to run nothing", 60, || {
        let tasks = task_hosts(&h.kc, "spread");
        let running: Vec<_> = tasks.iter().filter(|(_, _, p)| p == "Running").collect();
        running.len() == 4 && running.iter().all(|(_, host, _)| host == &h.main)
    });
    common::eventually("its containers to go", 30, || {
        cluster_containers(&h.extra.docker_host, &h.cluster) == 0
    });
    ok(
        &h.kc,
        &["host", "update", extra, "--availability", "Active"],
    );
    ok(&h.kc, &["scale", "spread=6"]);
    common::eventually("new tasks on the active host again", 60, || {
        task_hosts(&h.kc, "spread")
            .iter()
            .any(|(_, host, phase)| host == extra && phase == "Running")
    });

    // A Ready host is not removed without --force.
    let o = common::shoal(&h.kc, &["host", "rm", extra]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is Ready"));

    // Forced: its agent is cut off, removes the cluster's containers,
    // forgets its credentials and stops; its tasks run on the main host.
    let out = ok(&h.kc, &["host", "rm", "--force", extra]);
    assert!(out.contains(&format!("host/{extra} removed")), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = agent.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the removed host's agent runs on"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(h.tmp.path().join("agent.log")).unwrap();
    assert!(log.contains("was removed from the cluster"), "{log}");
    assert_eq!(cluster_containers(&h.extra.docker_host, &h.cluster), 0);
    assert!(!state.join("host.key").exists(), "revoked credentials kept");
    common::eventually("six replicas on the main host", 60, || {
        let tasks = task_hosts(&h.kc, "spread");
        tasks
            .iter()
            .filter(|(_, host, p)| p == "Running" && host == &h.main)
            .count()
            == 6
    });
    let hosts = ok(&h.kc, &["host", "ls"]);
    assert!(!hosts.contains(extra), "{hosts}");

    // The machine joins again with a token.
    agent = Killed(
        agent_in_netns(&h, &with_token, "rejoin.log")
            .spawn()
            .unwrap(),
    );
    h.wait_ready(&[extra]);
    drop(agent);
    ok(
        &h.kc,
        &["delete", "service", "spread", "--wait", "--timeout", "60s"],
    );
}
