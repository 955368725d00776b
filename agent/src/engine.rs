//! The engine seam: what the agent needs of a container engine, as a trait,
//! with the Docker implementation in [`crate::docker`] and an in-memory fake in
//! [`crate::fake`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::models::ContainerCreateBody;
use futures::stream::BoxStream;
use shoal_crds::HealthState;

use crate::error::EngineError;
use crate::labels::TASK_UID;

/// Run state of a container, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, never started (or the start failed).
    Created,
    /// Running.
    Running,
    /// Paused.
    Paused,
    /// The engine is restarting it (never for Shoal's containers).
    Restarting,
    /// Being removed.
    Removing,
    /// Exited.
    Exited,
    /// Dead (removal failed).
    Dead,
}

impl RunState {
    /// Running or paused: a process exists.
    pub fn is_up(self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Restarting)
    }
}

/// What the agent knows of one container, from an inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Engine id.
    pub id: String,
    /// Name, without the leading `/`.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Run state.
    pub state: RunState,
    /// Exit code of the last exit (meaningful once it exited).
    pub exit_code: Option<i64>,
    /// Whether the last exit was an OOM kill.
    pub oom_killed: bool,
    /// Health, if the container has a health check.
    pub health: Option<HealthState>,
    /// When the current (or last) process started; `None` if never.
    pub started_at: Option<SystemTime>,
    /// When the last process exited; `None` if never.
    pub finished_at: Option<SystemTime>,
    /// The engine's error message of the last start, if any.
    pub error: Option<String>,
    /// Engine restart policy name (`no` for Shoal's containers).
    pub restart_policy: Option<String>,
}

impl ContainerInfo {
    /// The task uid label, if any.
    pub fn task_uid(&self) -> Option<&str> {
        self.labels.get(TASK_UID).map(String::as_str)
    }
}

/// One line of a container listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerListing {
    /// Engine id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// What happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Create,
    /// Started.
    Start,
    /// Its process exited.
    Die,
    /// The kernel's OOM killer hit it.
    Oom,
    /// Its health changed.
    Health(HealthState),
    /// Removed.
    Destroy,
    /// Anything else (stop, kill, rename, …), by action name.
    Other(String),
}

/// One container event from the engine's event stream.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineEvent {
    /// The container's id.
    pub container_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When, by the engine's clock.
    pub time: SystemTime,
    /// The container's labels (as the engine attaches them to events).
    pub labels: BTreeMap<String, String>,
    /// The exit code, on a `die` event.
    pub exit_code: Option<i64>,
}

/// Engine identity, from the version call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineVersion {
    /// Engine version, e.g. `20.10.24`.
    pub version: String,
    /// API version in use (negotiated).
    pub api_version: String,
}

/// A one-shot resource sample of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ContainerStats {
    /// Memory in use, bytes.
    pub memory_bytes: u64,
    /// Memory limit, bytes.
    pub memory_limit_bytes: u64,
    /// Total CPU time, nanoseconds.
    pub cpu_total_ns: u64,
    /// CPU used over about the last second, millicores (from the engine's
    /// previous reading); `None` without one.
    pub cpu_millicores: Option<u64>,
}

/// CPU use between two engine readings, in millicores: the container's CPU
/// time over the host's (all CPUs together), times the CPUs online — the
/// `docker stats` formula. `None` when the readings do not allow it (no
/// earlier reading, or the host's time did not move).
pub fn cpu_millicores(
    container_ns: (u64, u64),
    system_ns: (u64, u64),
    online_cpus: u32,
) -> Option<u64> {
    let (before, now) = container_ns;
    let (sys_before, sys_now) = system_ns;
    if sys_before == 0 || before == 0 && now == 0 {
        return None;
    }
    let used = now.checked_sub(before)?;
    let host = sys_now.checked_sub(sys_before).filter(|d| *d > 0)?;
    let cores = u128::from(used) * u128::from(online_cpus.max(1)) * 1000 / u128::from(host);
    u64::try_from(cores).ok()
}

/// The container operations the agent uses. Implementations make them
/// idempotent where the engine allows: starting a running container and
/// removing a missing one succeed.
#[async_trait]
pub trait ContainerEngine: Send + Sync + Debug {
    /// Engine version and the API version in use; also a liveness check.
    async fn version(&self) -> Result<EngineVersion, EngineError>;
    /// Create a container named `name`. A name conflict is
    /// [`EngineError::Conflict`]; see [`create_for_task`] for the adoption rule.
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, EngineError>;
    /// Start a container; starting a running one succeeds.
    async fn start(&self, id: &str) -> Result<(), EngineError>;
    /// Stop: the stop signal, then SIGKILL after `grace_secs` (the
    /// container's own stop timeout when `None`). A missing or stopped
    /// container succeeds.
    async fn stop(&self, id: &str, grace_secs: Option<i64>) -> Result<(), EngineError>;
    /// Send a signal.
    async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError>;
    /// Remove (forced); a missing container succeeds.
    async fn remove(&self, id: &str) -> Result<(), EngineError>;
    /// Inspect by id or name.
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError>;
    /// All containers (running or not) carrying every `key=value` label given.
    async fn list(&self, labels: &[(String, String)])
    -> Result<Vec<ContainerListing>, EngineError>;
    /// Container events of containers carrying every label given, from
    /// `since` (replayed by the engine) onwards. Exec events (health-check
    /// noise) are not delivered. The stream ends when the engine goes away.
    fn events(
        &self,
        since: Option<SystemTime>,
        labels: &[(String, String)],
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>>;
    /// The last `tail` lines of output (stdout and stderr).
    async fn logs(&self, id: &str, tail: usize) -> Result<String, EngineError>;
    /// The container's output as a stream of lines with the engine's
    /// timestamps. Without `follow` it ends after the lines present now;
    /// with `follow` it ends when the container stops.
    fn log_stream(
        &self,
        id: &str,
        opts: &LogStreamOptions,
    ) -> BoxStream<'static, Result<LogEntry, EngineError>>;
    /// One resource sample.
    async fn stats(&self, id: &str) -> Result<ContainerStats, EngineError>;
    /// Runs a command in the running container `id`, as `docker exec`
    /// does: its output as it comes, then its exit code. With `spec.input`
    /// its standard input is attached and fed from it (its end closes the
    /// standard input); with `spec.tty` it gets a terminal (output
    /// [`LogOrigin::Console`], not split).
    fn exec(&self, id: &str, spec: ExecSpec)
    -> BoxStream<'static, Result<ExecOutput, EngineError>>;
    /// Whether the engine has the image.
    async fn image_present(&self, image: &str) -> Result<bool, EngineError>;
    /// Pull the image, giving up after `timeout` ([`EngineError::ImageNotFound`]).
    async fn pull(&self, image: &str, timeout: Duration) -> Result<(), EngineError>;
    /// Create the user-defined bridge network `name` unless it exists.
    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), EngineError>;
}

/// What [`ContainerEngine::log_stream`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStreamOptions {
    /// Keep streaming until the container stops.
    pub follow: bool,
    /// Only the last N lines (all when `None`).
    pub tail: Option<usize>,
    /// Only lines at or after this time. The engine filters by whole
    /// seconds; [`filter_since`] makes it exact.
    pub since: Option<SystemTime>,
}

/// Which output a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOrigin {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A TTY's merged output.
    Console,
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When the engine received it.
    pub time: Option<SystemTime>,
    /// stdout or stderr.
    pub origin: LogOrigin,
    /// The bytes, with the trailing newline if there was one.
    pub data: Vec<u8>,
}

/// A command to run in a container.
pub struct ExecSpec {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Give it a terminal.
    pub tty: bool,
    /// The terminal's size at the start.
    pub size: Option<TermSize>,
    /// Its input; `None`: no standard input.
    pub input: Option<BoxStream<'static, ExecInput>>,
}

impl std::fmt::Debug for ExecSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSpec")
            .field("command", &self.command)
            .field("tty", &self.tty)
            .field("size", &self.size)
            .field("input", &self.input.is_some())
            .finish()
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// Input to a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    /// Bytes for its standard input.
    Stdin(Vec<u8>),
    /// The end of its standard input.
    Close,
    /// Its terminal's new size.
    Resize(TermSize),
}

/// What a command run in a container gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutput {
    /// Output (without times).
    Output(LogEntry),
    /// It ended with this exit code.
    Exit(i64),
}

/// Splits a timestamped engine log frame (`2026-11-24T19:30:00.123456789Z
/// text…`) into its time and its text; a frame without a readable
/// timestamp is all text.
pub fn split_log_frame(frame: &[u8]) -> (Option<SystemTime>, &[u8]) {
    let Some(space) = frame.iter().take(40).position(|b| *b == b' ') else {
        return (None, frame);
    };
    let Some(time) = std::str::from_utf8(&frame[..space])
        .ok()
        .and_then(parse_engine_time)
    else {
        return (None, frame);
    };
    (Some(time), &frame[space + 1..])
}

/// Whether a line belongs to a stream that starts at `since` (exactly, to
/// the nanosecond; lines without a time are kept).
pub fn filter_since(entry: &LogEntry, since: Option<SystemTime>) -> bool {
    match (since, entry.time) {
        (Some(since), Some(t)) => t >= since,
        _ => true,
    }
}

/// Create the container of task `task_uid` of cluster `cluster`. A name
/// conflict is success only when the existing container carries the same
/// cluster and task uid (then its id is returned); otherwise it is an error,
/// never adopted.
pub async fn create_for_task(
    engine: &dyn ContainerEngine,
    name: &str,
    body: ContainerCreateBody,
    cluster: &str,
    task_uid: &str,
) -> Result<String, EngineError> {
    match engine.create(name, body).await {
        Err(EngineError::Conflict(msg)) => {
            let existing = engine.inspect(name).await?;
            let same_cluster = existing
                .labels
                .get(crate::labels::CLUSTER)
                .map(String::as_str)
                == Some(cluster);
            if same_cluster && existing.task_uid() == Some(task_uid) {
                Ok(existing.id)
            } else {
                Err(EngineError::Conflict(format!(
                    "{msg} (the existing container belongs to cluster {:?}, task {:?})",
                    existing
                        .labels
                        .get(crate::labels::CLUSTER)
                        .map(String::as_str)
                        .unwrap_or("none"),
                    existing.task_uid().unwrap_or("none")
                )))
            }
        }
        other => other,
    }
}

/// Parses an engine timestamp (RFC 3339); the engine's zero time
/// (`0001-01-01T00:00:00Z`) and anything before 1970 mean "never".
pub fn parse_engine_time(s: &str) -> Option<SystemTime> {
    let ts: k8s_openapi::jiff::Timestamp = s.parse().ok()?;
    let ns = ts.as_nanosecond();
    if ns <= 0 {
        return None;
    }
    let ns = u64::try_from(ns).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_between_two_readings() {
        // Half a second of CPU while the host's 2 CPUs gave 2 s: half a core.
        assert_eq!(
            cpu_millicores(
                (1_000_000_000, 1_500_000_000),
                (10_000_000_000, 12_000_000_000),
                2
            ),
            Some(500)
        );
        // Both CPUs busy.
        assert_eq!(
            cpu_millicores((0, 2_000_000_000), (10_000_000_000, 12_000_000_000), 2),
            Some(2000)
        );
        // No earlier reading, the host's time not moving, a counter reset.
        assert_eq!(cpu_millicores((0, 5), (0, 12_000_000_000), 2), None);
        assert_eq!(cpu_millicores((1, 5), (10, 10), 2), None);
        assert_eq!(cpu_millicores((9, 5), (10, 20), 2), None);
    }

    #[test]
    fn log_frames() {
        let (t, text) = split_log_frame(b"2026-11-24T19:30:00.123456789Z hello world\n");
        assert_eq!(text, b"hello world\n");
        let t = t.unwrap();
        let ns = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
        assert_eq!(ns % 1_000_000_000, 123_456_789);
        assert_eq!(
            split_log_frame(b"no timestamp here\n"),
            (None, &b"no timestamp here\n"[..])
        );
        assert_eq!(split_log_frame(b""), (None, &b""[..]));
        let e = |secs| LogEntry {
            time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            origin: LogOrigin::Stdout,
            data: vec![],
        };
        let since = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(10));
        assert!(!filter_since(&e(9), since));
        assert!(filter_since(&e(10), since));
        assert!(filter_since(&e(11), since));
        assert!(filter_since(&e(1), None));
    }

    #[test]
    fn engine_times() {
        assert_eq!(parse_engine_time("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_engine_time(""), None);
        let t = parse_engine_time("2026-11-24T16:53:49.123456789Z").unwrap();
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.subsec_nanos(), 123_456_789);
        assert_eq!(d.as_secs(), 1_795_539_229);
    }
}
