//! `shoal logs` end to end on two real engines: `shoal up` on the main
//! engine and `shoal agent --dispatcher` on an extra host (its own network
//! namespace and dockerd). A 4-replica service that prints a few lines and
//! exits (restart policy Always) is read merged with `SERVICE.SLOT`
//! prefixes, one slot alone with `--tail`, followed with `-f` across its
//! restarts (no line lost or repeated), and after the extra host's agent is
//! killed, read again: the lines of the reachable hosts are shown, with a
//! note naming the lost host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Killed, TwoHosts, eventually, ok, shoal, task_hosts};

const MAIN_HOST: &str = "logs-main";

const SERVICE: &str = r#"
apiVersion: shoal.dev/v1alpha1
kind: Service
metadata: { name: ticker, namespace: default }
spec:
  replicas: 4
  template:
    image: shoal-test/busybox:1
    command: ["sh", "-c", "echo start; i=0; while [ $i -lt 3 ]; do echo tick $i; i=$((i+1)); sleep 0.5; done; echo bye >&2; exit 1"]
    init: true
    stopGracePeriod: 1s
  restartPolicy: { condition: Always, maxDelay: 1s }
"#;

/// `ticker.S | TIME TEXT` → (slot, time, text).
fn parse(line: &str) -> (String, String, String) {
    let (prefix, rest) = line
        .split_once(" | ")
        .unwrap_or_else(|| panic!("no prefix in {line:?}"));
    let (time, text) = rest
        .split_once(' ')
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"));
    assert!(
        time.parse::<jiff::Timestamp>().is_ok(),
        "not a timestamp: {line:?}"
    );
    (
        prefix.trim().to_string(),
        time.to_string(),
        text.to_string(),
    )
}

#[test]
fn logs_merge_follow_restarts_and_survive_a_lost_host() {
    let hosts = TwoHosts::start(MAIN_HOST, "logs");
    let (kc, extra, dispatcher) = (&hosts.kc, &hosts.extra, &hosts.dispatcher);
    let tmp = &hosts.tmp;

    eprintln!("step: An agent without the cluster id");
    // An agent without the cluster id is refused with a clear error.
    let o = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["agent", "--dispatcher", dispatcher])
        .env("DOCKER_HOST", &extra.docker_host)
        .env_remove("SHOAL_CLUSTER_ID")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--cluster-id"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut agent = hosts.start_agent();

    eprintln!("step: apply the service");
    let manifest = tmp.path().join("ticker.yaml");
    std::fs::write(&manifest, SERVICE).unwrap();
    ok(kc, &["apply", "-f", manifest.to_str().unwrap()]);
    eventually("tasks running on both hosts", 60, || {
        let t = task_hosts(kc, "ticker");
        let on = |h: &str| t.iter().any(|(_, host, _)| host == h);
        t.len() >= 4 && on(MAIN_HOST) && on(&extra.name)
    });
    // Every slot has printed its first lines, and one has exited.
    eventually("lines of all four slots and an exit", 30, || {
        let out = ok(kc, &["logs", "ticker", "--timestamps"]);
        let slots: HashSet<String> = out.lines().map(|l| parse(l).0).collect();
        slots.len() == 4 && out.contains(" bye")
    });

    eprintln!("step: Merged, sorted by time");
    // Merged, sorted by time, every line prefixed.
    let out = ok(kc, &["logs", "ticker", "--timestamps"]);
    let lines: Vec<_> = out.lines().map(parse).collect();
    let times: Vec<jiff::Timestamp> = lines.iter().map(|l| l.1.parse().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "not sorted:\n{out}");
    assert!(
        lines.iter().any(|l| l.2 == "bye"),
        "stderr lines too:\n{out}"
    );

    eprintln!("step: One slot, the last line only.");
    // One slot, the last line only.
    let out = ok(kc, &["logs", "ticker.1", "--tail", "1"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("ticker.1 | "), "{out}");
    let out = ok(kc, &["logs", "ticker", "--no-prefix", "--tail", "1"]);
    assert!(out.lines().all(|l| !l.contains(" | ")), "{out}");

    eprintln!("step: Follow: every slot");
    // Follow: every slot across at least one restart, nothing repeated.
    let mut follower = Killed(
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["logs", "ticker", "-f", "--timestamps", "--tail", "0"])
            .env("KUBECONFIG", kc)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = follower.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut per_slot: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let crossed = |per_slot: &BTreeMap<String, Vec<(String, String)>>| {
        per_slot.len() == 4
            && per_slot.values().all(|ls| {
                let bye = ls.iter().position(|l| l.1 == "bye");
                bye.is_some_and(|b| ls[b..].iter().any(|l| l.1 == "start"))
            })
    };
    while Instant::now() < deadline && !crossed(&per_slot) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            let (slot, time, text) = parse(&line);
            per_slot.entry(slot).or_default().push((time, text));
        }
    }
    drop(follower);
    assert!(
        crossed(&per_slot),
        "every slot followed across a restart: {per_slot:#?}"
    );
    for (slot, ls) in &per_slot {
        let seen: HashSet<&(String, String)> = ls.iter().collect();
        assert_eq!(seen.len(), ls.len(), "{slot}: a line repeated: {ls:#?}");
        let times: Vec<jiff::Timestamp> = ls.iter().map(|l| l.0.parse().unwrap()).collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{slot}: out of order: {ls:#?}"
        );
    }

    eprintln!("step: The extra host is lost");
    // The extra host is lost: its tasks are replaced; their old lines cannot
    // be read, the rest still can, and a note names the host.
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    eventually("the lost host's tasks orphaned and replaced", 30, || {
        let t = task_hosts(kc, "ticker");
        let orphaned = t
            .iter()
            .filter(|(_, h, p)| h == &extra.name && p == "Orphaned")
            .count();
        let running_main = t
            .iter()
            .filter(|(_, h, p)| h == MAIN_HOST && (p == "Running" || p == "Starting"))
            .count();
        orphaned >= 1 && running_main == 4
    });
    let note = format!("host {} cannot be reached", extra.name);
    let read = || {
        let o = shoal(kc, &["logs", "ticker"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let slots: HashSet<String> = out
            .lines()
            .filter_map(|l| l.split(" | ").next())
            .map(|p| p.trim().to_string())
            .collect();
        (o.status.success(), out, err, slots.len())
    };
    // The replacements print their first lines within a moment.
    eventually("lines of every slot's new task, and the note", 20, || {
        let (ok, _, err, slots) = read();
        ok && err.contains(&note) && slots == 4
    });
    let (ok, out, err, _) = read();
    assert!(ok, "{out}{err}");
    assert!(err.contains(&note), "{err}");
    assert!(err.contains("not shown: ticker."), "{err}");

    // Unknown names are refused, naming them.
    let o = shoal(kc, &["logs", "nosuch"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"nosuch\""));
    let o = shoal(kc, &["logs", "ticker.9"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no slot \"9\""));
}
