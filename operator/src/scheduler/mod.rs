//! The scheduler: places unbound Tasks on Hosts.
//!
//! [`schedule`] is a pure function of (hosts, what bound tasks hold, unbound
//! task groups) returning bindings and, for what fits nowhere, the reasons
//! each host gave. Filters: host Ready and Active, hostSelector, reservations
//! against allocatable CPU and memory, host-port conflicts (including tasks
//! still shutting down), maxPerHost. Ordering: spread across `spreadBy`
//! values, then fewest tasks of the service, then least allocated; hosts
//! where the service failed recently last; ties by host name.
//! [`Scheduler`] is the thin loop that feeds it from the
//! store and writes `spec.hostName`.

mod input;
mod model;
mod place;
mod run;

pub use input::{TARGET_HOST_LABEL, groups_from, host_ports, is_unbound, phase_of};
pub use model::{
    Allocation, Binding, Demand, HostPort, PendingTask, Reason, SchedHost, ScheduleOutcome,
    ServiceRef, TaskGroup, Unschedulable, static_filter,
};
pub use place::{schedule, verify};
pub use run::{PassStats, Scheduler, SchedulerConfig, write_bindings};

#[cfg(test)]
mod tests;
