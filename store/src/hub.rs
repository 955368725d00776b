//! The state machine behind a lock, with watch fan-out: the part every backend
//! shares. A backend decides *when* a command is applied (at once for
//! [`crate::MemStore`], once committed for the Raft store); the hub applies it,
//! records the change and hands it to every matching watcher.
//!
//! Each watcher has a bounded channel. A writer never waits for a watcher: if
//! a watcher's channel is full it is cut off, and its stream ends with
//! [`StoreError::TooOld`] after the events already queued (the client relists,
//! as with Kubernetes' 410). Progress notifications ([`WatchEvent::Progress`])
//! go through the same channels, so one never overtakes an event.
//!
//! A change goes to its watchers as one [`SharedObject`] behind an `Arc`: the
//! writer clones the object once per change, not once per watcher, and its
//! JSON encoding is computed once, by the first consumer that asks for it
//! ([`SharedObject::json`]; the API server's watches all write that encoding).

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::selector::Selector;
use crate::state::{Applied, Change, ChangeKind, Command, StateMachine};
use crate::{
    Kind, ListOptions, ObjectKey, ObjectList, Revision, SharedWatchStream, StoreError, WatchEvent,
    WatchStream,
};

/// Watch and history settings, shared by every backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// How many changes the history keeps (a watch may start from any of them).
    pub history: usize,
    /// How many events may wait for one watcher before it is cut off.
    pub watch_buffer: usize,
    /// How often every watcher gets a [`WatchEvent::Progress`].
    pub progress_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            history: 10_000,
            watch_buffer: 1_024,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// An object in a watch event, shared by every watcher the change goes to.
#[derive(Debug)]
pub struct SharedObject {
    value: Value,
    json: OnceLock<Box<[u8]>>,
}

impl SharedObject {
    /// Shares an object.
    pub fn new(value: Value) -> Arc<Self> {
        Arc::new(Self {
            value,
            json: OnceLock::new(),
        })
    }

    /// The object.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The object's compact JSON encoding, computed on the first call.
    pub fn json(&self) -> &[u8] {
        self.json
            .get_or_init(|| self.value.to_string().into_bytes().into_boxed_slice())
    }

    /// The object, cloned unless this was its last holder.
    pub fn into_value(self: Arc<Self>) -> Value {
        Arc::try_unwrap(self).map_or_else(|shared| shared.value.clone(), |own| own.value)
    }
}

/// A [`WatchEvent`] whose object is shared (see [`SharedObject`]): what
/// [`crate::ClusterStore::watch_shared`] streams.
#[derive(Clone, Debug)]
pub enum SharedEvent {
    /// An object was created (or entered the selection).
    Added(Arc<SharedObject>),
    /// An object changed.
    Modified(Arc<SharedObject>),
    /// An object was deleted (or left the selection).
    Deleted(Arc<SharedObject>),
    /// Every change up to this revision has been delivered.
    Progress(Revision),
}

impl SharedEvent {
    /// The Kubernetes watch event type (`ADDED`, `MODIFIED`, `DELETED`), and
    /// the object; `None` for a progress notification.
    pub fn object(&self) -> Option<(&'static str, &Arc<SharedObject>)> {
        match self {
            SharedEvent::Added(o) => Some(("ADDED", o)),
            SharedEvent::Modified(o) => Some(("MODIFIED", o)),
            SharedEvent::Deleted(o) => Some(("DELETED", o)),
            SharedEvent::Progress(_) => None,
        }
    }
}

impl From<SharedEvent> for WatchEvent {
    fn from(ev: SharedEvent) -> Self {
        match ev {
            SharedEvent::Added(o) => WatchEvent::Added(o.into_value()),
            SharedEvent::Modified(o) => WatchEvent::Modified(o.into_value()),
            SharedEvent::Deleted(o) => WatchEvent::Deleted(o.into_value()),
            SharedEvent::Progress(rev) => WatchEvent::Progress(rev),
        }
    }
}

impl From<WatchEvent> for SharedEvent {
    fn from(ev: WatchEvent) -> Self {
        match ev {
            WatchEvent::Added(o) => SharedEvent::Added(SharedObject::new(o)),
            WatchEvent::Modified(o) => SharedEvent::Modified(SharedObject::new(o)),
            WatchEvent::Deleted(o) => SharedEvent::Deleted(SharedObject::new(o)),
            WatchEvent::Progress(rev) => SharedEvent::Progress(rev),
        }
    }
}

type CutSlot = Arc<Mutex<Option<StoreError>>>;

#[derive(Debug)]
struct Watcher {
    sel: Selector,
    tx: mpsc::Sender<SharedEvent>,
    cut: CutSlot,
    /// The last revision queued for this watcher.
    last: Revision,
}

/// The state machine and the watchers, always locked together so that a watch
/// sees every change exactly once.
#[derive(Debug)]
pub struct Core {
    sm: StateMachine,
    watchers: Vec<Watcher>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The watch event a change means for a selector, if any.
pub fn event_for(sel: &Selector, change: &Change) -> Option<WatchEvent> {
    let mut obj = None;
    shared_event_for(sel, change, &mut obj).map(WatchEvent::from)
}

/// The watch event a change means for a selector, if any, with the change's
/// object shared through `obj` (made on the first event that needs it).
fn shared_event_for(
    sel: &Selector,
    change: &Change,
    obj: &mut Option<Arc<SharedObject>>,
) -> Option<SharedEvent> {
    if change.key.kind != sel.kind {
        return None;
    }
    let now = sel.matches(&change.object);
    let mut obj = || {
        obj.get_or_insert_with(|| SharedObject::new(change.object.clone()))
            .clone()
    };
    match change.kind {
        ChangeKind::Added => now.then(|| SharedEvent::Added(obj())),
        ChangeKind::Deleted => now.then(|| SharedEvent::Deleted(obj())),
        ChangeKind::Modified => {
            let before = change.prev.as_ref().is_some_and(|p| sel.matches(p));
            match (before, now) {
                (true, true) => Some(SharedEvent::Modified(obj())),
                (false, true) => Some(SharedEvent::Added(obj())),
                (true, false) => Some(SharedEvent::Deleted(obj())),
                (false, false) => None,
            }
        }
    }
}

impl Core {
    /// The state machine.
    pub fn state(&self) -> &StateMachine {
        &self.sm
    }

    /// Applies a command and sends its change to the watchers.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, StoreError> {
        let applied = self.sm.apply(cmd)?;
        if let Some(change) = &applied.change {
            self.publish(change);
        }
        Ok(applied)
    }

    /// Queues a change's events: one shared object for every watcher it
    /// goes to.
    fn publish(&mut self, change: &Change) {
        let oldest = self.sm.oldest_watchable();
        let mut obj = None;
        self.watchers
            .retain_mut(|w| match shared_event_for(&w.sel, change, &mut obj) {
                None => !w.tx.is_closed(),
                Some(ev) => {
                    let ok = offer(w, ev, oldest);
                    if ok {
                        w.last = change.revision;
                    }
                    ok
                }
            });
    }

    /// Sends every watcher a progress notification at the current revision.
    pub fn progress(&mut self) {
        let (rev, oldest) = (self.sm.revision(), self.sm.oldest_watchable());
        self.watchers
            .retain_mut(|w| offer(w, SharedEvent::Progress(rev), oldest));
    }

    /// Replaces the whole state (a Raft snapshot was installed). Every watcher
    /// is cut off with `TooOld`: what changed in between is unknown.
    pub fn replace_state(&mut self, sm: StateMachine) {
        self.sm = sm;
        let oldest = self.sm.oldest_watchable();
        for w in self.watchers.drain(..) {
            *lock(&w.cut) = Some(StoreError::TooOld {
                requested: w.last,
                oldest,
            });
        }
    }

    /// Ends every watch stream (the store is shutting down).
    pub fn close_watchers(&mut self) {
        self.watchers.clear();
    }

    /// Number of live watchers.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }
}

/// Queues an event for a watcher; on a full channel the watcher is cut off.
/// Returns whether the watcher stays.
fn offer(w: &mut Watcher, ev: SharedEvent, oldest: Revision) -> bool {
    match w.tx.try_send(ev) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::debug!(last = w.last, "watcher too slow: cut off");
            *lock(&w.cut) = Some(StoreError::TooOld {
                requested: w.last,
                oldest,
            });
            false
        }
    }
}

/// The shared core of a store: state, watchers, progress ticker.
#[derive(Debug)]
pub struct Hub {
    core: Mutex<Core>,
    config: WatchConfig,
    ticker: Mutex<bool>,
    shutdown: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Hub {
    /// A hub over a state machine.
    pub fn new(sm: StateMachine, config: WatchConfig) -> Arc<Self> {
        Arc::new(Self {
            core: Mutex::new(Core {
                sm,
                watchers: Vec::new(),
            }),
            config,
            ticker: Mutex::new(false),
            shutdown: CancellationToken::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &WatchConfig {
        &self.config
    }

    /// Locks the core.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Stops the progress ticker and ends every watch stream.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        self.lock().close_watchers();
    }

    /// One object.
    pub fn get(&self, key: &ObjectKey) -> Option<serde_json::Value> {
        self.lock().sm.get(key).cloned()
    }

    /// A consistent list.
    pub fn list(&self, kind: Kind, opts: &ListOptions) -> Result<ObjectList, StoreError> {
        let sel = Selector::new(kind, opts)?;
        Ok(self.lock().sm.list(&sel))
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.lock().sm.revision()
    }

    /// Applies a command now.
    pub fn apply(&self, cmd: &Command) -> Result<Applied, StoreError> {
        self.lock().apply(cmd)
    }

    /// Starts a watch: the recorded changes after `from`, then live ones.
    pub fn watch(
        self: &Arc<Self>,
        kind: Kind,
        from: Revision,
        opts: &ListOptions,
    ) -> Result<WatchStream, StoreError> {
        Ok(self
            .watch_shared(kind, from, opts)?
            .map(|r| r.map(WatchEvent::from))
            .boxed())
    }

    /// [`Hub::watch`] with the objects shared between watchers.
    pub fn watch_shared(
        self: &Arc<Self>,
        kind: Kind,
        from: Revision,
        opts: &ListOptions,
    ) -> Result<SharedWatchStream, StoreError> {
        let sel = Selector::new(kind, opts)?;
        if self.shutdown.is_cancelled() {
            return Err(StoreError::Unavailable("the store is shutting down".into()));
        }
        self.start_ticker();
        let (tx, rx) = mpsc::channel(self.config.watch_buffer.max(1));
        let cut: CutSlot = Arc::new(Mutex::new(None));
        let backlog: Vec<SharedEvent> = {
            let mut core = self.lock();
            let changes = core.sm.changes_since(from)?;
            let last = changes
                .last()
                .map_or(from.max(core.sm.revision()), |c| c.revision);
            let backlog = changes
                .iter()
                .filter_map(|c| shared_event_for(&sel, c, &mut None))
                .collect();
            core.watchers.push(Watcher {
                sel,
                tx,
                cut: cut.clone(),
                last,
            });
            backlog
        };
        let live = futures::stream::unfold((rx, cut, false), |(mut rx, cut, done)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(ev) => Some((Ok(ev), (rx, cut, false))),
                None => {
                    let err = lock(&cut).take();
                    err.map(|e| (Err(e), (rx, cut, true)))
                }
            }
        });
        Ok(futures::stream::iter(backlog.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }

    fn start_ticker(self: &Arc<Self>) {
        let mut started = lock(&self.ticker);
        if *started {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *started = true;
        let hub = Arc::downgrade(self);
        let token = self.shutdown.clone();
        let every = self.config.progress_interval;
        rt.spawn(
            ticker(hub, token, every).instrument(tracing::debug_span!("store_watch_progress")),
        );
    }
}

async fn ticker(hub: Weak<Hub>, token: CancellationToken, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            _ = tick.tick() => {
                let Some(hub) = hub.upgrade() else { break };
                hub.lock().progress();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use serde_json::json;

    fn hub(watch_buffer: usize) -> Arc<Hub> {
        Hub::new(
            StateMachine::new(100),
            WatchConfig {
                history: 100,
                watch_buffer,
                progress_interval: Duration::from_secs(3600),
            },
        )
    }

    fn service(name: &str, tier: &str) -> Value {
        json!({
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "Service",
            "metadata": { "name": name, "namespace": "default", "labels": { "tier": tier } },
            "spec": { "replicas": 1, "template": { "image": "busybox" } },
        })
    }

    fn all() -> ListOptions {
        ListOptions::default()
    }

    fn next(s: &mut SharedWatchStream) -> Option<Result<SharedEvent, StoreError>> {
        s.next().now_or_never().flatten()
    }

    fn rv(o: &SharedObject) -> Revision {
        o.value()["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }

    /// Every watcher gets the same events in revision order, each change's
    /// object shared (one allocation, one JSON encoding) between them.
    #[tokio::test]
    async fn watchers_share_identical_ordered_events() {
        let hub = hub(64);
        let mut watches: Vec<_> = (0..5)
            .map(|_| hub.watch_shared(Kind::Service, 0, &all()).unwrap())
            .collect();
        for i in 0..20 {
            hub.apply(&Command::create(service(&format!("s{i}"), "web")))
                .unwrap();
        }
        let mut per_watch: Vec<Vec<Arc<SharedObject>>> = Vec::new();
        for w in &mut watches {
            let mut got = Vec::new();
            while let Some(ev) = next(w) {
                match ev.unwrap() {
                    SharedEvent::Added(o) => got.push(o),
                    other => panic!("unexpected {other:?}"),
                }
            }
            per_watch.push(got);
        }
        let first = &per_watch[0];
        assert_eq!(first.len(), 20);
        let revs: Vec<Revision> = first.iter().map(|o| rv(o)).collect();
        assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
        for (i, o) in first.iter().enumerate() {
            assert_eq!(o.value()["metadata"]["name"], format!("s{i}"));
        }
        for other in &per_watch[1..] {
            assert_eq!(other.len(), first.len());
            for (a, b) in first.iter().zip(other) {
                assert!(Arc::ptr_eq(a, b), "one shared object per change");
            }
        }
        // One encoding, equal to the object's JSON, whoever asks first.
        let json = first[3].json();
        assert!(std::ptr::eq(json, per_watch[4][3].json()));
        let back: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(&back, first[3].value());
    }

    /// A watcher that starts with a backlog gets it, then live events, in
    /// order and without duplicates; `watch` (unshared) sees the same.
    #[tokio::test]
    async fn backlog_then_live_without_duplicates() {
        let hub = hub(64);
        for i in 0..3 {
            hub.apply(&Command::create(service(&format!("a{i}"), "web")))
                .unwrap();
        }
        let mut shared = hub.watch_shared(Kind::Service, 1, &all()).unwrap();
        let mut plain = hub.watch(Kind::Service, 1, &all()).unwrap();
        hub.apply(&Command::create(service("b", "web"))).unwrap();
        let mut names = Vec::new();
        while let Some(ev) = next(&mut shared) {
            let (_, o) = ev.unwrap().object().map(|(t, o)| (t, o.clone())).unwrap();
            names.push(o.value()["metadata"]["name"].as_str().unwrap().to_owned());
        }
        assert_eq!(names, ["a1", "a2", "b"]);
        let mut plain_names = Vec::new();
        while let Some(ev) = plain.next().now_or_never().flatten() {
            let WatchEvent::Added(o) = ev.unwrap() else {
                panic!("expected ADDED")
            };
            plain_names.push(o["metadata"]["name"].as_str().unwrap().to_owned());
        }
        assert_eq!(plain_names, names);
    }

    /// A watcher that does not read is cut off with `TooOld` once its buffer
    /// is full (after the events it holds); the writer never waits, and a
    /// watcher that reads gets every event.
    #[tokio::test]
    async fn slow_watcher_is_cut_off_not_the_writer() {
        let hub = hub(4);
        let mut slow = hub.watch_shared(Kind::Service, 0, &all()).unwrap();
        let mut fast = hub.watch_shared(Kind::Service, 0, &all()).unwrap();
        let mut fast_got = 0;
        for i in 0..10 {
            hub.apply(&Command::create(service(&format!("s{i}"), "web")))
                .unwrap();
            while let Some(ev) = next(&mut fast) {
                assert!(matches!(ev, Ok(SharedEvent::Added(_))));
                fast_got += 1;
            }
        }
        assert_eq!(fast_got, 10);
        assert_eq!(hub.lock().watcher_count(), 1);
        let mut held = 0;
        let err = loop {
            match slow.next().await {
                Some(Ok(SharedEvent::Added(_))) => held += 1,
                Some(Err(e)) => break e,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(held, 4);
        assert!(
            matches!(err, StoreError::TooOld { requested: 4, .. }),
            "{err:?}"
        );
        assert!(slow.next().await.is_none());
    }

    /// A change that moves an object out of a label selection is a DELETED
    /// event for that watch and a MODIFIED one for an unfiltered watch.
    #[tokio::test]
    async fn selector_transitions_share_the_object() {
        let hub = hub(64);
        let web = ListOptions {
            label_selector: Some("tier=web".into()),
            ..ListOptions::default()
        };
        hub.apply(&Command::create(service("s", "web"))).unwrap();
        let mut filtered = hub.watch_shared(Kind::Service, 1, &web).unwrap();
        let mut plain = hub.watch_shared(Kind::Service, 1, &all()).unwrap();
        let mut obj = hub
            .get(&ObjectKey::namespaced(Kind::Service, "default", "s"))
            .unwrap();
        obj["metadata"]["labels"]["tier"] = json!("db");
        hub.apply(&Command::Update { object: obj }).unwrap();
        let Some(Ok(f)) = next(&mut filtered) else {
            panic!("no event")
        };
        let Some(Ok(p)) = next(&mut plain) else {
            panic!("no event")
        };
        let (ft, fo) = f.object().unwrap();
        let (pt, po) = p.object().unwrap();
        assert_eq!((ft, pt), ("DELETED", "MODIFIED"));
        assert!(Arc::ptr_eq(fo, po));
    }
}
