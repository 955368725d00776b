//! Durability under kill -9: a child process writes in a loop and acknowledges
//! every write on stdout; it is killed with SIGKILL at random moments, many
//! times; after every kill the store is reopened and every acknowledged write
//! must be there, with revisions strictly increasing across all rounds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_store::typed::revision_of;
use shoal_store::{ClusterStore, Kind, ObjectKey, RaftStore};

const ROUNDS: u32 = 20;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Service, "default", name)
}

#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut creates: Vec<(String, u64)> = Vec::new();
    let mut counter: Option<(u64, u64)> = None;
    let mut last_rev = 0u64;
    let mut total_acks = 0usize;

    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
            .arg(dir.path())
            .arg(format!("r{round}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Mostly kill while writing; sometimes while it is still opening the store.
        let mut lines = Vec::new();
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(30)));
        } else {
            lines.push(
                rx.recv_timeout(Duration::from_secs(20))
                    .expect("the writer acknowledges a write"),
            );
            std::thread::sleep(Duration::from_millis(rng.below(150)));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let rev: u64 = parts[2].parse().unwrap();
            assert!(
                rev > last_rev,
                "round {round}: revision {rev} after {last_rev}"
            );
            last_rev = rev;
            total_acks += 1;
            match parts[0] {
                "C" => creates.push((parts[1].to_owned(), rev)),
                "U" => counter = Some((parts[1].parse().unwrap(), rev)),
                other => panic!("unexpected line {other}"),
            }
        }

        let store = RaftStore::open_single(dir.path()).unwrap();
        for (name, rev) in &creates {
            let got = store.get(&key(name)).await.unwrap();
            let got = got.unwrap_or_else(|| panic!("round {round}: acknowledged {name} is lost"));
            assert_eq!(revision_of(&got), Some(*rev), "round {round}: {name}");
        }
        if let Some((n, rev)) = counter {
            let got = store.get(&key("counter")).await.unwrap().unwrap();
            let stored_n = got["spec"]["replicas"].as_u64().unwrap();
            assert!(
                stored_n >= n,
                "round {round}: counter {stored_n} < acknowledged {n}"
            );
            assert!(revision_of(&got).unwrap() >= rev);
        }
        let now = store.revision().await.unwrap();
        assert!(
            now >= last_rev,
            "round {round}: store revision {now} < acknowledged {last_rev}"
        );
        // Writes not acknowledged may or may not have survived; either way later
        // revisions must be above everything the store has.
        last_rev = now;
    }
    println!("{total_acks} acknowledged writes over {ROUNDS} kills");
    assert!(total_acks > ROUNDS as usize, "the writer made progress");
}
