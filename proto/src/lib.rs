//! The Shoal agent ⇄ control-plane contract: the gRPC service `Dispatcher`
//! of `proto/shoal/agent/v1/agent.proto` (package `shoal.agent.v1`), its
//! generated client and server ([`v1`], generated at build time, so it can
//! never drift from the `.proto`), and the conversions between its messages
//! and the resource types of `shoal-crds` ([`convert`]).
//!
//! # Who dials whom
//!
//! The agent on every Docker host always dials out to the control plane
//! (mutual TLS); hosts listen on no port. The control plane is the gRPC
//! server ([`DispatcherServer`]), agents are clients ([`DispatcherClient`]).
//!
//! # The session and the data streams
//!
//! Each agent holds one long-lived bidirectional [`Session`] stream carrying
//! control traffic only, so nothing can delay a heartbeat:
//!
//! - agent → control plane ([`AgentMessage`]): a [`Hello`] first (host name,
//!   labels, capacity, engine and API versions, os/arch, agent version, a
//!   per-process session id), then [`Heartbeat`]s, batched task status
//!   changes ([`TaskStatusBatch`], always full statuses, not patches),
//!   [`ContainerEvent`]s from the engine's event stream, and
//!   [`RequestError`]s for data requests it cannot serve;
//! - control plane → agent ([`ControlMessage`]): a [`Welcome`] (cluster id,
//!   heartbeat interval and the misses that make a host lost), then the
//!   assignments, and requests for logs ([`LogsRequest`]) or stats
//!   ([`StatsRequest`]), each with a request id, and [`CancelRequest`]s; on
//!   sessions over mutual TLS with a highly available control plane, the
//!   servers' join addresses ([`ControlPlaneServers`]).
//!
//! Bulk data never travels on the session: the agent answers a request id by
//! opening a separate client stream, `SendLogs` ([`LogChunk`]s) or
//! `SendStats` ([`StatsChunk`]s), whose every chunk carries that id; it
//! half-closes the stream when done (or cancelled) and the control plane
//! answers with a [`DataAck`].
//!
//! # Assignments: a complete set, then deltas
//!
//! After the `Welcome`, every session starts with an [`AssignmentSet`]: the
//! **complete** set of tasks assigned to the host, each an [`Assignment`]
//! (task uid, namespace, name, resource version and the full `TaskSpec`).
//! Changes follow as [`AssignmentDelta`]s (assignments upserted by task uid,
//! task uids removed). Sets and deltas carry a sequence number that increases
//! within the session, and a delta names the sequence it applies on
//! (`previous_sequence`); an agent that holds another sequence does not apply
//! it, but drops the session and reconnects, and gets a complete set again.
//! Heartbeats report the last sequence applied.
//!
//! # When the agent may remove containers
//!
//! The agent stops and removes containers of its cluster that are not
//! assigned to it **only once it holds a complete set received on its current
//! session** — never from a delta alone, never while disconnected, never on a
//! guess. Until then it keeps running what it finds (adopting containers by
//! their labels after a restart) and restarts them locally per their restart
//! policy.
//!
//! # Encoding conventions
//!
//! - Points in time are `google.protobuf.Timestamp` ([`prost_types::Timestamp`]),
//!   normalised; they cover `jiff::Timestamp`'s whole range at nanosecond
//!   precision ([`convert::timestamp_from_jiff`], [`convert::timestamp_to_jiff`]).
//! - Quantities and durations stay strings exactly as the user wrote them.
//! - Enums have an `UNSPECIFIED = 0` value meaning "absent" (`None`).
//! - Lists and maps that are `Option`al in the resource types travel in
//!   wrapper messages ([`StringList`], [`StringMap`], [`EnvVarList`],
//!   [`PortMappingList`], [`MountList`]): an absent wrapper is `None`, a
//!   present empty one is `Some(empty)`, so conversions round-trip exactly.
//!
//! [`Session`]: v1::dispatcher_server::Dispatcher::session

pub mod convert;
pub mod join;

/// Code generated from `proto/shoal/agent/v1/agent.proto` by
/// `tonic-prost-build` (messages, the `Dispatcher` client and server).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod v1 {
    tonic::include_proto!("shoal.agent.v1");
}

/// Code generated from `proto/shoal/control/v1/raft.proto` by
/// `tonic-prost-build`: the `RaftPeer` service that carries Raft messages
/// between the control plane's servers (client and server).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod control_v1 {
    tonic::include_proto!("shoal.control.v1");
}

pub use convert::{ConvertError, ConvertErrorReason};

/// HTTP/2 flow-control window of each call between an agent and the control
/// plane (both ends set it). A call whose reader waits (an exec whose
/// output nobody reads yet, an input the command does not read) holds at
/// most this much of its connection's window.
pub const STREAM_WINDOW: u32 = 1 << 20;

/// HTTP/2 flow-control window of the whole connection between an agent and
/// the control plane: 64 calls may wait at once before the session's
/// heartbeats and assignments, which share the connection, would wait too
/// (HTTP/2's default windows are 64 KiB each: one waiting exec would starve
/// the heartbeats and get its host declared lost).
pub const CONNECTION_WINDOW: u32 = 64 << 20;
pub use v1::dispatcher_client::DispatcherClient;
pub use v1::dispatcher_server::{Dispatcher, DispatcherServer};
pub use v1::{
    AgentMessage, Assignment, AssignmentDelta, AssignmentSet, CancelRequest, ContainerEvent,
    ControlMessage, ControlPlaneServers, DataAck, EnvVarList, ExecInput, ExecRequest, Heartbeat,
    HeartbeatAck, Hello, JoinRequest, JoinResponse, LogChunk, LogsRequest, MountList,
    PortMappingList, RenewRequest, RequestError, StatsChunk, StatsRequest, StringList, StringMap,
    TaskStatusBatch, TerminalSize, Welcome,
};
