//! `/shoal/v1/servers`: the servers of a replicated control plane (not a
//! Kubernetes resource; `shoal server ls` and `shoal server rm` read it).
//!
//! - `GET /shoal/v1/servers` → `{"servers": [{"id", "address", "leader",
//!   "answering"}]}`: the voters as the answering server knows them.
//! - `DELETE /shoal/v1/servers/{id}` → `{"voters": [...]}` once the removal
//!   is applied; 404 for a server that is not a voter, 422 for the last one,
//!   503 without a leader.
//!
//! A lone server answers 404 on both: it has no peers.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shoal_store::StoreError;

use crate::error::ApiError;

/// One server of the control plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its Raft id (`--node-id`).
    pub id: u64,
    /// Where the other servers reach it (`https://HOST:PORT`).
    pub address: String,
    /// Whether it leads, as the answering server knows.
    pub leader: bool,
    /// Whether it is the server answering.
    pub answering: bool,
    /// Where agents reach its join listener (`https://HOST:PORT`), as it
    /// named it; absent when unknown (no join listener, or not heard from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_address: Option<String>,
}

/// The membership of a replicated control plane.
pub trait Members: Send + Sync + std::fmt::Debug + 'static {
    /// The voters.
    fn list(&self) -> Vec<Member>;
    /// Removes voter `id`; the voters once applied.
    fn remove(&self, id: u64) -> futures::future::BoxFuture<'_, Result<Vec<u64>, StoreError>>;
}

fn lone() -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        "this control plane is a single server (started without --node-id): it has no other servers",
    )
}

fn json(v: &serde_json::Value) -> Response {
    crate::json_ok(v)
}

pub(crate) async fn list(State(app): State<Arc<crate::App>>) -> Response {
    match &app.cfg.members {
        Some(m) => json(&serde_json::json!({ "servers": m.list() })),
        None => lone().into_response(),
    }
}

pub(crate) async fn remove(State(app): State<Arc<crate::App>>, Path(id): Path<String>) -> Response {
    let Some(m) = &app.cfg.members else {
        return lone().into_response();
    };
    let Ok(id) = id.parse::<u64>() else {
        return ApiError::bad_request(format!("{id:?} is not a server id (1, 2, 3…)"))
            .into_response();
    };
    match m.remove(id).await {
        Ok(voters) => {
            tracing::info!(server = id, ?voters, "server removed from the voters");
            json(&serde_json::json!({ "voters": voters }))
        }
        Err(StoreError::NotFound(msg)) => ApiError::new(404, "NotFound", msg).into_response(),
        Err(StoreError::Invalid(msg)) => ApiError::new(422, "Invalid", msg).into_response(),
        Err(e) => ApiError::new(503, "ServiceUnavailable", e.to_string()).into_response(),
    }
}
