//! The Event sweeper: Events are bounded and expiring, as in Kubernetes. An
//! Event whose `lastTimestamp` is older than [`SweeperConfig::ttl`] (1 h by
//! default) is deleted, and a namespace keeps at most
//! [`SweeperConfig::max_per_namespace`] Events (1000 by default), the least
//! recently seen going first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use shoal_store::events::last_seen;
use shoal_store::{ClusterStore, DeletePreconditions, Kind, ListOptions, StoreError};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

/// Sweeper settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweeperConfig {
    /// Events not seen for this long are deleted (Kubernetes: 1 h).
    pub ttl: Duration,
    /// At most this many Events per namespace; the least recently seen
    /// beyond it are deleted.
    pub max_per_namespace: usize,
    /// How often a sweep runs.
    pub interval: Duration,
}

impl Default for SweeperConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            max_per_namespace: 1000,
            interval: Duration::from_secs(60),
        }
    }
}

/// What one sweep deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Deleted for being older than the TTL.
    pub expired: usize,
    /// Deleted to bring a namespace under the cap.
    pub over_cap: usize,
}

fn seen_at(ev: &Value) -> Option<Timestamp> {
    last_seen(ev).and_then(|s| s.parse().ok())
}

/// Deletes an Event unless it changed since it was listed (then it was seen
/// again: keep it). Whether it is gone.
async fn delete(store: &dyn ClusterStore, ev: &Value) -> Result<bool, StoreError> {
    let key = shoal_store::state::key_of(ev)?;
    let pre = DeletePreconditions {
        uid: None,
        resource_version: shoal_store::typed::revision_of(ev),
    };
    match store.delete(&key, &pre).await {
        Ok(_) | Err(StoreError::NotFound(_)) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One sweep at time `now`.
pub async fn sweep(
    store: &dyn ClusterStore,
    config: &SweeperConfig,
    now: Timestamp,
) -> Result<SweepStats, StoreError> {
    let list = store.list(Kind::Event, &ListOptions::default()).await?;
    let ttl = i64::try_from(config.ttl.as_secs()).unwrap_or(i64::MAX);
    let mut stats = SweepStats::default();
    let mut kept: BTreeMap<String, Vec<(i64, Value)>> = BTreeMap::new();
    for ev in list.items {
        // An Event without a readable time counts as seen at the epoch.
        let at = seen_at(&ev).map(|t| t.as_second()).unwrap_or(0);
        if now.as_second().saturating_sub(at) > ttl {
            if delete(store, &ev).await? {
                stats.expired += 1;
            }
            continue;
        }
        let ns = ev
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        kept.entry(ns).or_default().push((at, ev));
    }
    for (_, mut evs) in kept {
        if evs.len() <= config.max_per_namespace {
            continue;
        }
        // Oldest first; ties by name, for a stable order.
        evs.sort_by(|(a, x), (b, y)| {
            a.cmp(b).then_with(|| {
                x.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .cmp(&y.pointer("/metadata/name").and_then(Value::as_str))
            })
        });
        let excess = evs.len() - config.max_per_namespace;
        for (_, ev) in evs.iter().take(excess) {
            if delete(store, ev).await? {
                stats.over_cap += 1;
            }
        }
    }
    Ok(stats)
}

/// Sweeps every `config.interval` until `shutdown`.
pub async fn run(store: Arc<dyn ClusterStore>, config: SweeperConfig, shutdown: CancellationToken) {
    let span = tracing::info_span!("event-sweeper");
    async move {
        let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match sweep(store.as_ref(), &config, Timestamp::now()).await {
                Ok(s) if s.expired + s.over_cap > 0 => {
                    info!(expired = s.expired, over_cap = s.over_cap, "events deleted");
                }
                Ok(_) => debug!("nothing to sweep"),
                Err(e) => warn!(error = %e, "event sweep failed; next one retries"),
            }
        }
    }
    .instrument(span)
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;
    use shoal_store::MemStore;

    fn event(ns: &str, name: &str, last: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": { "name": name, "namespace": ns },
            "involvedObject": { "kind": "Service", "name": "web", "namespace": ns },
            "reason": "Scaled", "message": "m", "type": "Normal", "count": 1,
            "firstTimestamp": last, "lastTimestamp": last,
        })
    }

    async fn names(store: &dyn ClusterStore) -> Vec<String> {
        store
            .list(Kind::Event, &ListOptions::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    e["metadata"]["namespace"].as_str().unwrap(),
                    e["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn expired_events_go_and_namespaces_keep_the_newest() {
        let store = MemStore::new();
        let now: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        for (ns, name, last) in [
            ("a", "old", "2026-01-01T10:00:00Z"),
            ("a", "e1", "2026-01-01T11:50:00Z"),
            ("a", "e2", "2026-01-01T11:51:00Z"),
            ("a", "e3", "2026-01-01T11:52:00Z"),
            ("a", "e4", "2026-01-01T11:53:00Z"),
            ("b", "e1", "2026-01-01T11:10:00Z"),
            ("b", "e2", "2026-01-01T11:59:00Z"),
        ] {
            store.create(event(ns, name, last)).await.unwrap();
        }
        let config = SweeperConfig {
            ttl: Duration::from_secs(1800),
            max_per_namespace: 2,
            interval: Duration::from_secs(1),
        };
        let stats = sweep(&store, &config, now).await.unwrap();
        assert_eq!(
            stats,
            SweepStats {
                expired: 2,
                over_cap: 2
            }
        );
        assert_eq!(names(&store).await, ["a/e3", "a/e4", "b/e2"]);
        // Nothing left to do.
        let stats = sweep(&store, &config, now).await.unwrap();
        assert_eq!(stats, SweepStats::default());
    }

    #[tokio::test]
    async fn an_event_seen_again_meanwhile_is_kept() {
        let store = MemStore::new();
        let stale = store
            .create(event("a", "e", "2026-01-01T10:00:00Z"))
            .await
            .unwrap();
        let mut bumped = stale.clone();
        bumped["lastTimestamp"] = json!("2026-01-01T12:00:00Z");
        store.update(bumped).await.unwrap();
        assert!(!delete(&store, &stale).await.unwrap());
        assert_eq!(names(&store).await, ["a/e"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_sweeps_and_stops_on_shutdown() {
        let store = Arc::new(MemStore::new());
        store
            .create(event("a", "old", "2000-01-01T00:00:00Z"))
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let h = tokio::spawn(run(
            store.clone(),
            SweeperConfig::default(),
            shutdown.clone(),
        ));
        for _ in 0..100 {
            if names(store.as_ref()).await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(names(store.as_ref()).await.is_empty());
        shutdown.cancel();
        h.await.unwrap();
    }
}
