//! The scheduler's inputs and outputs, and the per-host filters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use shoal_crds::{Availability, Protocol};

use crate::selector::Selector;

/// A service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceRef {
    /// A service reference.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A published host port: protocol and port number.
pub type HostPort = (Protocol, i32);

/// What the scheduler knows of a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedHost {
    /// Host name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// `Ready` condition is `True`.
    pub ready: bool,
    /// `Active`, `Pause` or `Drain`.
    pub availability: Availability,
    /// Allocatable CPU in millicores.
    pub cpu_millis: u64,
    /// Allocatable memory in bytes.
    pub memory_bytes: u64,
}

/// What one existing task bound to a host holds there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The host it is bound to.
    pub host: String,
    /// Its service.
    pub service: ServiceRef,
    /// Reserved CPU (millicores); counted against the host.
    pub cpu_millis: u64,
    /// Reserved memory (bytes); counted against the host.
    pub memory_bytes: u64,
    /// Host ports it may still hold (its container may still run,
    /// including while it shuts down).
    pub host_ports: Vec<HostPort>,
    /// Whether it is a live replica (desired Running, not terminal): counted
    /// for spreading.
    pub live: bool,
}

/// What each task of a group needs of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Reserved CPU (millicores).
    pub cpu_millis: u64,
    /// Reserved memory (bytes).
    pub memory_bytes: u64,
    /// Host ports to publish.
    pub host_ports: Vec<HostPort>,
}

/// One task waiting for a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTask {
    /// Task name (unique within the group's namespace).
    pub name: String,
    /// For a Global-mode task, the one host it is meant for.
    pub pinned_host: Option<String>,
}

/// Unbound tasks of one service that need the same things (same template):
/// the unit the scheduler places.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskGroup {
    /// The service.
    pub service: ServiceRef,
    /// Only hosts whose labels match.
    pub selector: Selector,
    /// Host label keys to even tasks out across, in order of priority.
    pub spread_by: Vec<String>,
    /// At most this many tasks of the service on one host.
    pub max_per_host: Option<u32>,
    /// What each task needs.
    pub demand: Demand,
    /// Hosts where tasks of this service failed recently: tried last.
    pub failed_hosts: BTreeSet<String>,
    /// The tasks, placed in this order.
    pub tasks: Vec<PendingTask>,
}

/// A decision: bind `task` (of `service`) to `host`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The service.
    pub service: ServiceRef,
    /// The task name.
    pub task: String,
    /// The host.
    pub host: String,
}

/// Tasks of a group that fit nowhere, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    /// The service.
    pub service: ServiceRef,
    /// The tasks left unbound.
    pub tasks: Vec<String>,
    /// Hosts that could take a task when this was decided.
    pub fitting: usize,
    /// Hosts considered.
    pub considered: usize,
    /// Each reason and how many hosts it excluded, most common first.
    pub reasons: Vec<(String, usize)>,
}

impl Unschedulable {
    /// The aggregate explanation, e.g.
    /// `0/3 hosts: 2 insufficient memory, 1 does not match hostSelector zone=east`.
    pub fn message(&self) -> String {
        let mut s = format!("{}/{} hosts", self.fitting, self.considered);
        for (i, (reason, n)) in self.reasons.iter().enumerate() {
            s.push_str(if i == 0 { ": " } else { ", " });
            s.push_str(&format!("{n} {reason}"));
        }
        s
    }
}

/// What one call of the scheduler decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScheduleOutcome {
    /// Tasks to bind.
    pub bindings: Vec<Binding>,
    /// Groups with tasks that fit nowhere.
    pub unschedulable: Vec<Unschedulable>,
}

/// Why a host cannot take a task.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Its `Ready` condition is not `True`.
    NotReady,
    /// Availability `Pause`.
    Paused,
    /// Availability `Drain`.
    Draining,
    /// Its labels do not match the service's hostSelector.
    SelectorMismatch(String),
    /// Not enough unreserved CPU.
    InsufficientCpu,
    /// Not enough unreserved memory.
    InsufficientMemory,
    /// A host port is taken (possibly by a task still shutting down).
    PortInUse(HostPort),
    /// The service already has `maxPerHost` tasks there.
    MaxPerHost(u32),
    /// A Global-mode task meant for another host.
    NotPinnedHost,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NotReady => f.write_str("not ready"),
            Reason::Paused => f.write_str("paused"),
            Reason::Draining => f.write_str("draining"),
            Reason::SelectorMismatch(s) => write!(f, "does not match hostSelector {s}"),
            Reason::InsufficientCpu => f.write_str("insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("insufficient memory"),
            Reason::PortInUse((proto, port)) => {
                let p = match proto {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                };
                write!(f, "host port {port}/{p} in use")
            }
            Reason::MaxPerHost(n) => write!(f, "already at maxPerHost {n}"),
            Reason::NotPinnedHost => f.write_str("not the task's host"),
        }
    }
}

/// The filters that depend only on the host and the group, not on what is
/// placed: Ready, Active, hostSelector. The orchestrator uses them to decide
/// which hosts a Global-mode service runs on.
pub fn static_filter(host: &SchedHost, selector: &Selector) -> Result<(), Reason> {
    if !host.ready {
        return Err(Reason::NotReady);
    }
    match host.availability {
        Availability::Active => {}
        Availability::Pause => return Err(Reason::Paused),
        Availability::Drain => return Err(Reason::Draining),
    }
    if !selector.matches(&host.labels) {
        return Err(Reason::SelectorMismatch(selector.to_string()));
    }
    Ok(())
}
