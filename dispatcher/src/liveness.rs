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
    /// A session is open, but the agent reports that its container engine
    /// has not answered since `since`.
    EngineDown {
        /// Last heartbeat (or any message).
        last_seen: Instant,
        /// When the agent first reported the engine unavailable.
        since: Instant,
    },
}

impl Link {
    /// A message arrived now.
    pub fn seen(&mut self, now: Instant) {
        match self {
            Link::Connected { last_seen } | Link::EngineDown { last_seen, .. } => *last_seen = now,
            Link::Disconnected { .. } => {}
        }
    }

    /// The agent says whether its engine answers (a connected link only).
    pub fn engine(&mut self, available: bool, now: Instant) {
        *self = match *self {
            Link::Connected { last_seen } if !available => Link::EngineDown {
                last_seen,
                since: now,
            },
            Link::EngineDown { last_seen, .. } if available => Link::Connected { last_seen },
            other => other,
        };
    }
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
    /// A host's container engine stayed unavailable past the grace.
    EngineUnavailable,
}

impl LostReason {
    /// The condition reason written to the store.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::HeartbeatsMissed => "HeartbeatsMissed",
            LostReason::Disconnected => "AgentDisconnected",
            LostReason::EngineUnavailable => "EngineUnavailable",
        }
    }
}

/// Hosts that must be declared lost now: Ready in the store, and silent for
/// longer than the heartbeat timeout (connected), or disconnected or
/// without an engine for longer than the grace.
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
            Link::EngineDown { last_seen, .. }
                if now.saturating_duration_since(last_seen) > heartbeat_timeout =>
            {
                Some((name.clone(), LostReason::HeartbeatsMissed))
            }
            Link::EngineDown { since, .. } if now.saturating_duration_since(since) > grace => {
                Some((name.clone(), LostReason::EngineUnavailable))
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
                "engine down within grace",
                Entry {
                    link: Link::EngineDown {
                        last_seen: t0 + ms(800),
                        since: t0,
                    },
                    ready: true,
                },
                ms(900),
                None,
            ),
            (
                "engine down past grace",
                Entry {
                    link: Link::EngineDown {
                        last_seen: t0 + ms(1000),
                        since: t0,
                    },
                    ready: true,
                },
                ms(1001),
                Some(LostReason::EngineUnavailable),
            ),
            (
                "engine down and silent",
                Entry {
                    link: Link::EngineDown {
                        last_seen: t0,
                        since: t0,
                    },
                    ready: true,
                },
                ms(2001),
                Some(LostReason::HeartbeatsMissed),
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
        // The link follows what the agent says of its engine.
        let mut l = Link::Connected { last_seen: t0 };
        l.engine(false, t0 + ms(5));
        assert_eq!(
            l,
            Link::EngineDown {
                last_seen: t0,
                since: t0 + ms(5)
            }
        );
        l.engine(false, t0 + ms(9));
        l.seen(t0 + ms(10));
        assert_eq!(
            l,
            Link::EngineDown {
                last_seen: t0 + ms(10),
                since: t0 + ms(5)
            },
            "a repeat keeps the first time"
        );
        l.engine(true, t0 + ms(20));
        assert_eq!(
            l,
            Link::Connected {
                last_seen: t0 + ms(10)
            }
        );
        let mut d = Link::Disconnected { since: t0 };
        d.engine(false, t0 + ms(1));
        d.seen(t0 + ms(1));
        assert_eq!(d, Link::Disconnected { since: t0 });
        for (name, entry, after, want) in cases {
            let hosts = BTreeMap::from([("h".to_string(), entry)]);
            let got = lost_hosts(t0 + after, &hosts, timeout, grace);
            assert_eq!(got.first().map(|(_, r)| *r), want, "{name}");
        }
    }
}
