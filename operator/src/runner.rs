//! What both controllers' loops share: a keyed queue with due times, and the
//! merged watch of several kinds.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use serde_json::Value;
use shoal_store::{ClusterStore, Kind, ListOptions, Revision, StoreError, WatchEvent};
use tokio::time::Instant;

/// Keys waiting to be reconciled, each with the time it is due.
#[derive(Debug)]
pub(crate) struct Queue<K> {
    due: BTreeMap<K, Instant>,
    failures: HashMap<K, u32>,
}

impl<K: Ord + Hash + Clone> Queue<K> {
    pub(crate) fn new() -> Self {
        Self {
            due: BTreeMap::new(),
            failures: HashMap::new(),
        }
    }

    /// Due at `at`, or earlier if it already was.
    pub(crate) fn add_at(&mut self, k: K, at: Instant) {
        let e = self.due.entry(k).or_insert(at);
        if at < *e {
            *e = at;
        }
    }

    /// Due now.
    pub(crate) fn add(&mut self, k: K) {
        self.add_at(k, Instant::now());
    }

    /// The earliest due time.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Takes every key due by now.
    pub(crate) fn take_due(&mut self) -> Vec<K> {
        let now = Instant::now();
        let keys: Vec<K> = self
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.due.remove(k);
        }
        keys
    }

    /// Records the outcome of a reconcile: success forgets earlier failures
    /// (and requeues after `after`, if given); failure requeues with
    /// exponential backoff from 100 ms to 10 s.
    pub(crate) fn done(&mut self, k: K, ok: bool, after: Option<Duration>) {
        if ok {
            self.failures.remove(&k);
            if let Some(d) = after {
                self.add_at(k, Instant::now() + d);
            }
        } else {
            let n = self.failures.entry(k.clone()).or_insert(0);
            *n = n.saturating_add(1);
            let backoff = Duration::from_millis(100)
                .saturating_mul(1u32 << (*n - 1).min(7))
                .min(Duration::from_secs(10));
            self.add_at(k, Instant::now() + backoff);
        }
    }
}

/// One event of a merged watch: its kind and what happened.
pub(crate) type KindEvent = (Kind, Result<WatchEvent, StoreError>);

/// Watches of several kinds from one revision, merged.
pub(crate) async fn watch_kinds(
    store: &dyn ClusterStore,
    kinds: &[Kind],
    from: Revision,
) -> Result<SelectAll<BoxStream<'static, KindEvent>>, StoreError> {
    let mut all = SelectAll::new();
    for &kind in kinds {
        let s = store.watch(kind, from, &ListOptions::default()).await?;
        all.push(s.map(move |e| (kind, e)).boxed());
    }
    Ok(all)
}

/// The object of a watch event (`None` for progress notifications).
pub(crate) fn event_object(e: &WatchEvent) -> Option<&Value> {
    match e {
        WatchEvent::Added(v) | WatchEvent::Modified(v) | WatchEvent::Deleted(v) => Some(v),
        WatchEvent::Progress(_) => None,
    }
}

/// A string at a JSON pointer.
pub(crate) fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queue_dedups_and_backs_off() {
        let mut q: Queue<&str> = Queue::new();
        q.add("a");
        q.add("a");
        q.add_at("b", Instant::now() + Duration::from_secs(5));
        assert_eq!(q.take_due(), vec!["a"]);
        assert!(q.take_due().is_empty());
        q.done("a", false, None);
        assert_eq!(
            q.next_due(),
            Some(Instant::now() + Duration::from_millis(100))
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(q.take_due(), vec!["a"]);
        q.done("a", false, None);
        assert_eq!(
            q.next_due(),
            Some(Instant::now() + Duration::from_millis(200))
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(q.take_due(), vec!["a"]);
        q.done("a", true, Some(Duration::from_secs(1)));
        assert_eq!(q.next_due(), Some(Instant::now() + Duration::from_secs(1)));
        // An earlier due time wins.
        q.add_at("b", Instant::now() + Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut due = q.take_due();
        due.sort();
        assert_eq!(due, vec!["a", "b"]);
    }
}
