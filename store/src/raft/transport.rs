//! How Raft messages travel between voters. A node hands its outgoing
//! messages to a [`Transport`]; whatever receives messages for a node hands
//! them to that node's [`Inbox`]. [`MemTransport`] connects nodes in one
//! process (tests); a network transport implements the same trait.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use raft::eraftpb::Message;

use super::node::Msg;

/// Where a node receives Raft messages.
#[derive(Clone, Debug)]
pub struct Inbox(pub(crate) std::sync::mpsc::Sender<Msg>);

impl Inbox {
    /// Delivers a message to the node; false if the node has stopped.
    pub fn deliver(&self, msg: Message) -> bool {
        self.0.send(Msg::Raft(Box::new(msg))).is_ok()
    }
}

/// Carries Raft messages to peers. `send` must not block: queue or drop (Raft
/// retries). Returning false reports the peer unreachable now.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends one message to `msg.to`.
    fn send(&self, msg: Message) -> bool;
    /// Called once when a node opens, with the inbox of node `id`.
    fn attach(&self, id: u64, inbox: Inbox) {
        let _ = (id, inbox);
    }
    /// Voter `id` is reached at `address`: learned from a membership change
    /// (or a snapshot) and at open for the voters added so. `None`: forget
    /// it. Transports that find peers otherwise ignore it.
    fn set_peer(&self, id: u64, address: Option<&str>) {
        let _ = (id, address);
    }
}

/// A transport for a single voter: there is nobody to talk to.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTransport;

impl Transport for NoTransport {
    fn send(&self, _msg: Message) -> bool {
        false
    }
}

/// Nodes in one process, with switches to cut a node off (partition) and
/// to forget a stopped node.
#[derive(Debug, Default)]
pub struct MemTransport {
    peers: Mutex<HashMap<u64, Inbox>>,
    isolated: Mutex<HashSet<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemTransport {
    /// A transport with no nodes yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Drops every message to or from `id` until [`MemTransport::heal`].
    pub fn isolate(&self, id: u64) {
        lock(&self.isolated).insert(id);
    }

    /// Lets messages to and from `id` through again.
    pub fn heal(&self, id: u64) {
        lock(&self.isolated).remove(&id);
    }

    /// Forgets node `id` (it was stopped).
    pub fn detach(&self, id: u64) {
        lock(&self.peers).remove(&id);
    }
}

impl Transport for MemTransport {
    fn send(&self, msg: Message) -> bool {
        {
            let cut = lock(&self.isolated);
            if cut.contains(&msg.from) || cut.contains(&msg.to) {
                return false;
            }
        }
        let inbox = lock(&self.peers).get(&msg.to).cloned();
        inbox.is_some_and(|i| i.deliver(msg))
    }

    fn attach(&self, id: u64, inbox: Inbox) {
        lock(&self.peers).insert(id, inbox);
    }
}
