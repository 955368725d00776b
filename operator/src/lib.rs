//! The Shoal control plane's deciding parts: orchestrator and scheduler (and,
//! later, the dispatcher), all on the store seam of `shoal-store`.

pub mod orchestrator;
pub mod reports;
mod runner;
pub mod scheduler;
pub mod selector;
