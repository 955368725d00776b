//! Shoal's host agent: given the set of tasks assigned to its host, it makes
//! the local Docker engine run exactly those containers and keeps them
//! running (DESIGN.md "Agent protocol", "Failure model and timings").
//!
//! - [`engine`]: the engine seam (trait), [`docker`] its bollard
//!   implementation, [`fake`] an in-memory one for unit tests;
//! - [`spec`]: template → create request; [`labels`]: names and labels;
//! - [`plan`]: the pure planner and restart policy; [`executor`]: runs one
//!   action; [`reconciler`]: the loop that ties them together;
//! - [`assignments`]: the `--assignments FILE` feeder; [`session`]: the
//!   control-plane session, the other feeder;
//! - [`policy`]: the host's local policy (bind mounts, capabilities) that
//!   the control plane cannot override.

pub mod assignments;
pub mod dispatchers;
pub mod docker;
pub mod docker_exec;
pub mod engine;
pub mod error;
pub mod executor;
pub mod fake;
pub mod join;
pub mod labels;
pub mod plan;
pub mod policy;
pub mod reconciler;
pub mod session;
pub mod spec;
pub mod task;

pub use engine::ContainerEngine;
pub use error::{AgentError, EngineError};
pub use policy::LocalPolicy;
pub use reconciler::{AgentConfig, Assignments, Reconciler, StatusUpdate};
pub use task::{AssignedTask, RestartSettings};
pub use tokio_util::sync::CancellationToken;
