//! Host liveness, decided by a pure function over what the dispatcher holds
//! in memory: when each host was last heard from and whether its stream is
//! open. Only transitions are written to the store.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the dispatcher knows of one host's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// A session is open; the last message arrived at this instant.
    Connected {
        /// Last heartbeat (or any message).
        last_seen: Instant,
    },
    /// No session since this instant (stream closed, or the dispatcher just
    /// started and the host has not connected yet).
    Disconnected {
        /// When the link was lost (or the dispatcher started).
        since: Instant,
    },
}

/// A host's liveness entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The link.
    pub link: Link,
    /// Whether the store currently says Ready (the last transition written).
    pub ready: bool,
}

/// Why a host is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// A connected host stopped sending heartbeats.
    HeartbeatsMissed,
    /// A host's stream closed and it did not come back within the grace.
    Disconnected,
}

impl LostReason {
    /// The condition reason written to the store.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::HeartbeatsMissed => "HeartbeatsMissed",
            LostReason::Disconnected => "AgentDisconnected",
        }
    }
}

/// Hosts that must be declared lost now: Ready in the store, and silent for
/// longer than the heartbeat timeout (connected) or the grace (disconnected).
pub fn lost_hosts(
    now: Instant,
    hosts: &BTreeMap<String, Entry>,
    heartbeat_timeout: Duration,
    grace: Duration,
) -> Vec<(String, LostReason)> {
    hosts
        .iter()
        .filter(|(_, e)| e.ready)
        .filter_map(|(name, e)| match e.link {
            Link::Connected { last_seen }
                if now.saturating_duration_since(last_seen) > heartbeat_timeout =>
            {
                Some((name.clone(), LostReason::HeartbeatsMissed))
            }
            Link::Disconnected { since } if now.saturating_duration_since(since) > grace => {
                Some((name.clone(), LostReason::Disconnected))
            }
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (timeout, grace) = (ms(2000), ms(1000));
        let cases: Vec<(&str, Entry, Duration, Option<LostReason>)> = vec![
            (
                "fresh heartbeat",
                Entry {
                    link: Link::Connected { last_seen: t0 },
                    ready: true,
                },
                ms(500),
                None,
            ),
            (
                "at the timeout",
                Entry {
                    link: Link::Connected { last_seen: t0 },
                    ready: true,
                },
                ms(2000),
                None,
            ),
            (
                "past the timeout",
                Entry {
                    link: Link::Connected { last_seen: t0 },
                    ready: true,
                },
                ms(2001),
                Some(LostReason::HeartbeatsMissed),
            ),
            (
                "closed within grace",
                Entry {
                    link: Link::Disconnected { since: t0 },
                    ready: true,
                },
                ms(900),
                None,
            ),
            (
                "closed past grace",
                Entry {
                    link: Link::Disconnected { since: t0 },
                    ready: true,
                },
                ms(1001),
                Some(LostReason::Disconnected),
            ),
            (
                "already not ready",
                Entry {
                    link: Link::Disconnected { since: t0 },
                    ready: false,
                },
                ms(60_000),
                None,
            ),
            (
                "silent but not ready",
                Entry {
                    link: Link::Connected { last_seen: t0 },
                    ready: false,
                },
                ms(60_000),
                None,
            ),
        ];
        for (name, entry, after, want) in cases {
            let hosts = BTreeMap::from([("h".to_string(), entry)]);
            let got = lost_hosts(t0 + after, &hosts, timeout, grace);
            assert_eq!(got.first().map(|(_, r)| *r), want, "{name}");
        }
    }
}
