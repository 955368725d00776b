//! What a `shoal server` (or `shoal up`) adds to the API's `/metrics`: its
//! Raft node and, while it leads, its dispatcher's agents.

use std::sync::Arc;

use shoal_apiserver::metrics::{MetricsSource, Sample, SampleKind};
use shoal_dispatcher::{Dispatcher, Link};
use shoal_store::raft::RaftStore;

/// The server's own metrics.
pub struct ServerMetrics {
    /// Its Raft node.
    pub raft: Arc<RaftStore>,
    /// Its dispatcher while it leads.
    pub current: tokio::sync::watch::Receiver<Option<Dispatcher>>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics").finish_non_exhaustive()
    }
}

fn int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl MetricsSource for ServerMetrics {
    fn samples(&self) -> Vec<Sample> {
        let s = self.raft.status();
        let gauge = |name, help, value| Sample {
            name,
            help,
            kind: SampleKind::Gauge,
            value,
        };
        let counter = |name, help, value| Sample {
            name,
            help,
            kind: SampleKind::Counter,
            value,
        };
        let mut out = vec![
            gauge("shoal_raft_term", "This server's Raft term", int(s.term)),
            gauge(
                "shoal_raft_leader",
                "1 while this server leads the control plane, else 0",
                i64::from(s.is_leader),
            ),
            gauge(
                "shoal_raft_voters",
                "Servers in the control plane's membership",
                int(s.voters.len()),
            ),
            gauge(
                "shoal_raft_commit_index",
                "Last Raft log index known committed",
                int(s.commit),
            ),
            gauge(
                "shoal_raft_applied_index",
                "Last Raft log index applied to this server's store",
                int(s.applied),
            ),
            counter(
                "shoal_raft_proposals",
                "Writes proposed through this server",
                int(s.proposals),
            ),
            counter(
                "shoal_raft_syncs",
                "Durable writes (fsync) of this server's Raft log",
                int(s.syncs),
            ),
            counter(
                "shoal_raft_snapshots_installed",
                "Snapshots this server installed from a leader",
                int(s.snapshots_installed),
            ),
        ];
        if let Some(d) = self.current.borrow().as_ref() {
            let connected = d
                .liveness()
                .values()
                .filter(|e| matches!(e.link, Link::Connected { .. }))
                .count();
            out.push(gauge(
                "shoal_agents_connected",
                "Agents in session with this server's dispatcher (only the leader's serves them)",
                int(connected),
            ));
        }
        out
    }
}
