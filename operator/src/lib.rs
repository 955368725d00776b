//! The Shoal control plane's deciding parts: orchestrator and scheduler (and,
//! later, the dispatcher), all on the store seam of `shoal-store`.

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
/// scheduler's explanations with the orchestrator; both stop on `shutdown`.
/// Await the handles to know they have stopped.
pub fn spawn_controllers(
    store: Arc<dyn ClusterStore>,
    orchestrator: orchestrator::OrchestratorConfig,
    scheduler: scheduler::SchedulerConfig,
    shutdown: CancellationToken,
) -> [JoinHandle<()>; 2] {
    let reports = reports::SchedulingReports::new();
    let o =
        orchestrator::Orchestrator::new(store.clone(), orchestrator).with_reports(reports.clone());
    let s = scheduler::Scheduler::new(store, scheduler).with_reports(reports);
    [
        tokio::spawn(o.run(shutdown.clone())),
        tokio::spawn(s.run(shutdown)),
    ]
}
