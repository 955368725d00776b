//! Helper of the kill -9 durability test (`store/tests/crash.rs`): opens a
//! single-voter store in DIR and writes in a loop, printing one line per
//! acknowledged write — `C NAME REVISION` for a create of `PREFIX-N`, then
//! `U R REVISION` for an update raising the `counter` Service's replicas to R
//! (one more than before, so every update is a real write) — until it is
//! killed.
//!
//! usage: store-crash-writer DIR PREFIX

use std::io::Write;

use serde_json::json;
use shoal_store::typed::revision_of;
use shoal_store::{ClusterStore, Kind, ObjectKey, RaftStore};

fn svc(name: &str, replicas: u64) -> serde_json::Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "padding": "x".repeat(512)}
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(prefix)) = (args.next(), args.next()) else {
        return Err("usage: store-crash-writer DIR PREFIX".into());
    };
    let store = RaftStore::open_single(dir)?;
    let counter_key = ObjectKey::namespaced(Kind::Service, "default", "counter");
    let mut replicas = match store.get(&counter_key).await? {
        Some(c) => c["spec"]["replicas"].as_u64().unwrap_or(0),
        None => {
            store.create(svc("counter", 0)).await?;
            0
        }
    };
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let name = format!("{prefix}-{n}");
        let created = store.create(svc(&name, 1)).await?;
        writeln!(out, "C {name} {}", revision_of(&created).unwrap_or(0))?;
        out.flush()?;
        // Unconditional update of the counter (the last acknowledged value must survive).
        replicas += 1;
        let updated = store.update(svc("counter", replicas)).await?;
        writeln!(out, "U {replicas} {}", revision_of(&updated).unwrap_or(0))?;
        out.flush()?;
    }
    Ok(())
}
