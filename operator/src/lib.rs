//! The Shoal control plane's deciding parts: the orchestrator and the
//! scheduler, on the store seam of `shoal-store`.
//!
//! - [`orchestrator`] turns Services into Tasks: a pure planner
//!   ([`orchestrator::plan()`]) and a keyed, level-triggered loop
//!   ([`orchestrator::Orchestrator::run`]).
//! - [`scheduler`] places unbound Tasks on Hosts: a pure function
//!   ([`scheduler::schedule`]) and a thin loop
//!   ([`scheduler::Scheduler::run`]) that writes `spec.hostName` once.
//! - [`spawn_controllers`] starts both, sharing the scheduler's explanations
//!   ([`reports::SchedulingReports`]) with the orchestrator, the one writer of
//!   Service status, and the [`events`] sweeper (Events expire after a TTL
//!   and are capped per namespace).
//! - Both record Kubernetes Events (`shoal_store::events`): the scheduler
//!   `Scheduled` and `FailedScheduling` on Tasks, the orchestrator `Scaled`
//!   on Services.
//!
//! What other components rely on:
//! - every Task carries the label `shoal.dev/service=<service>`, the label
//!   `shoal.dev/template-hash`, an ownerReference to its Service and the
//!   finalizer [`shoal_crds::TASK_FINALIZER`], which the dispatcher removes
//!   once the container is gone; the orchestrator deletes Task objects (the
//!   store marks them) when their slot goes, when their Service goes, or
//!   when they fall out of the per-slot history;
//! - Global-mode Tasks carry `shoal.dev/target-host=<host>` and no slot; the
//!   scheduler binds them to that host only;
//! - every Service gets the finalizer `shoal.dev/tasks`, removed by the
//!   orchestrator once all its Tasks are gone.

pub mod events;
pub mod orchestrator;
pub mod reports;
mod runner;
pub mod scheduler;
pub mod selector;

use std::sync::Arc;

use shoal_store::ClusterStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Starts the orchestrator and the scheduler on `store`, sharing the
/// scheduler's explanations with the orchestrator, and the Event sweeper
/// (settings in [`orchestrator::OrchestratorConfig::events`]); all stop on
/// `shutdown`. Await the handles to know they have stopped.
pub fn spawn_controllers(
    store: Arc<dyn ClusterStore>,
    orchestrator: orchestrator::OrchestratorConfig,
    scheduler: scheduler::SchedulerConfig,
    shutdown: CancellationToken,
) -> [JoinHandle<()>; 3] {
    let reports = reports::SchedulingReports::new();
    let sweeper = events::run(store.clone(), orchestrator.events.clone(), shutdown.clone());
    let o =
        orchestrator::Orchestrator::new(store.clone(), orchestrator).with_reports(reports.clone());
    let s = scheduler::Scheduler::new(store, scheduler).with_reports(reports);
    [
        tokio::spawn(o.run(shutdown.clone())),
        tokio::spawn(s.run(shutdown)),
        tokio::spawn(sweeper),
    ]
}
