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

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::selector::Selector;
use crate::state::{Applied, Change, ChangeKind, Command, StateMachine};
use crate::{
    Kind, ListOptions, ObjectKey, ObjectList, Revision, StoreError, WatchEvent, WatchStream,
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

type CutSlot = Arc<Mutex<Option<StoreError>>>;

#[derive(Debug)]
struct Watcher {
    sel: Selector,
    tx: mpsc::Sender<WatchEvent>,
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
    if change.key.kind != sel.kind {
        return None;
    }
    let now = sel.matches(&change.object);
    let obj = || change.object.clone();
    match change.kind {
        ChangeKind::Added => now.then(|| WatchEvent::Added(obj())),
        ChangeKind::Deleted => now.then(|| WatchEvent::Deleted(obj())),
        ChangeKind::Modified => {
            let before = change.prev.as_ref().is_some_and(|p| sel.matches(p));
            match (before, now) {
                (true, true) => Some(WatchEvent::Modified(obj())),
                (false, true) => Some(WatchEvent::Added(obj())),
                (true, false) => Some(WatchEvent::Deleted(obj())),
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

    fn publish(&mut self, change: &Change) {
        let oldest = self.sm.oldest_watchable();
        self.watchers
            .retain_mut(|w| match event_for(&w.sel, change) {
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
            .retain_mut(|w| offer(w, WatchEvent::Progress(rev), oldest));
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
fn offer(w: &mut Watcher, ev: WatchEvent, oldest: Revision) -> bool {
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
        let sel = Selector::new(kind, opts)?;
        if self.shutdown.is_cancelled() {
            return Err(StoreError::Unavailable("the store is shutting down".into()));
        }
        self.start_ticker();
        let (tx, rx) = mpsc::channel(self.config.watch_buffer.max(1));
        let cut: CutSlot = Arc::new(Mutex::new(None));
        let backlog: Vec<WatchEvent> = {
            let mut core = self.lock();
            let changes = core.sm.changes_since(from)?;
            let last = changes
                .last()
                .map_or(from.max(core.sm.revision()), |c| c.revision);
            let backlog = changes.iter().filter_map(|c| event_for(&sel, c)).collect();
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
