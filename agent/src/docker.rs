//! The Docker implementation of [`ContainerEngine`] over bollard. The API
//! version is negotiated at connect (Debian's engine speaks ≤ 1.41), and the
//! agent sends no field newer than 1.41.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, ResizeExecOptions};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EventMessageTypeEnum, HealthStatusEnum,
    NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_crds::HealthState;

use crate::engine::{
    ContainerEngine, ContainerInfo, ContainerListing, ContainerStats, EngineEvent, EngineVersion,
    EventKind, ExecOutput, LogEntry, LogOrigin, LogStreamOptions, RunState, filter_since,
    parse_engine_time, split_log_frame,
};
use crate::error::EngineError;

/// Seconds a single request may take to get an answer (streams are not cut).
const REQUEST_TIMEOUT_S: u64 = 60;

/// A Docker engine reached over its unix socket.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    address: String,
    network_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    attach: crate::docker_exec::AttachEndpoint,
}

impl DockerEngine {
    /// Connect to `address` (`unix:///path`, a bare socket path, or `None`
    /// for `DOCKER_HOST` / the default socket) and negotiate the API version.
    pub async fn connect(address: Option<&str>) -> Result<DockerEngine, EngineError> {
        let (docker, address) = match address {
            Some(a) => {
                let path = a.strip_prefix("unix://").unwrap_or(a);
                let d = Docker::connect_with_unix(path, REQUEST_TIMEOUT_S, API_DEFAULT_VERSION)
                    .map_err(map_err)?;
                (d, format!("unix://{path}"))
            }
            None => (
                Docker::connect_with_local_defaults().map_err(map_err)?,
                std::env::var("DOCKER_HOST").unwrap_or_else(|_| "default".into()),
            ),
        };
        let docker = docker.negotiate_version().await.map_err(map_err)?;
        let attach = crate::docker_exec::AttachEndpoint::of(
            address
                .strip_prefix("unix://")
                .filter(|_| address.starts_with("unix://")),
            std::env::var("DOCKER_HOST").ok().as_deref(),
            std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty()),
        );
        Ok(DockerEngine {
            docker,
            address,
            network_lock: Default::default(),
            attach,
        })
    }

    /// The address connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bollard client (for tests and benchmarks).
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

/// Maps bollard's errors to the seam's kinds.
/// Writes a command's input until it ends (then closes its standard
/// input, as an explicit close does) and passes on terminal resizes. When
/// the input of a command with a terminal ends while it still runs (its
/// user went away), the command gets SIGHUP, as from a terminal hung up:
/// the engine keeps the terminal open, so a shell would otherwise wait for
/// input in the container forever.
async fn feed(
    mut input: BoxStream<'static, crate::engine::ExecInput>,
    mut writer: tokio::io::WriteHalf<Box<dyn crate::docker_exec::AttachIo>>,
    docker: &Docker,
    exec_id: &str,
    tty: bool,
) {
    use crate::engine::ExecInput;
    use tokio::io::AsyncWriteExt;
    let mut open = true;
    while let Some(i) = input.next().await {
        match i {
            ExecInput::Stdin(data) if open => {
                let written = writer.write_all(&data).await;
                if let Err(e) = written.and(writer.flush().await) {
                    tracing::debug!(error = %e, "writing the command's input");
                    open = false;
                }
            }
            ExecInput::Stdin(_) => {}
            ExecInput::Close if open => {
                open = false;
                // A terminal's input ends only when its user is gone (the
                // end of typing is a key, Ctrl-D): hang up, then close.
                if tty {
                    hang_up(docker, exec_id).await;
                }
                if let Err(e) = writer.shutdown().await {
                    tracing::debug!(error = %e, "closing the command's input");
                }
            }
            ExecInput::Close => {}
            ExecInput::Resize(size) => resize(docker, exec_id, size).await,
        }
    }
    // Hung up first: closing a terminal's input may end the engine's
    // attach connection, and with it this task, before the signal is sent.
    if tty {
        hang_up(docker, exec_id).await;
    }
    if open && let Err(e) = writer.shutdown().await {
        tracing::debug!(error = %e, "closing the command's input");
    }
}

/// Sends SIGHUP to exec `exec_id`'s process if it still runs. The engine
/// names its process id on the host; a pidfd taken while the engine still
/// reports it running (checked after) makes sure it is that process. An
/// agent that does not see the engine's processes (another PID namespace)
/// cannot, and says so in its debug log.
async fn hang_up(docker: &Docker, exec_id: &str) {
    use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
    let running_pid = |info: bollard::models::ExecInspectResponse| {
        (info.running == Some(true))
            .then_some(info.pid)
            .flatten()
            .and_then(|p| i32::try_from(p).ok())
    };
    let Some(pid) = docker
        .inspect_exec(exec_id)
        .await
        .ok()
        .and_then(running_pid)
    else {
        return;
    };
    let Some(process) = Pid::from_raw(pid) else {
        return;
    };
    let fd = match pidfd_open(process, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(pid, error = %e, "the command's process is out of reach: it keeps running");
            return;
        }
    };
    if docker
        .inspect_exec(exec_id)
        .await
        .ok()
        .and_then(running_pid)
        != Some(pid)
    {
        return;
    }
    match pidfd_send_signal(&fd, Signal::HUP) {
        Ok(()) => tracing::info!(pid, "the command's user went away: hung up"),
        Err(e) => tracing::debug!(pid, error = %e, "hanging up the command"),
    }
}

/// Resizes an exec's terminal; a failure (the command ended) only logged.
async fn resize(docker: &Docker, exec_id: &str, size: crate::engine::TermSize) {
    let opts = ResizeExecOptions {
        height: size.rows,
        width: size.cols,
    };
    if let Err(e) = docker.resize_exec(exec_id, opts).await {
        tracing::debug!(error = %e, "resizing the command's terminal");
    }
}

/// The exit code of an exec whose output has ended (the engine may take a
/// moment to record it).
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<i64, EngineError> {
    for _ in 0..50 {
        let info = docker.inspect_exec(exec_id).await.map_err(map_err)?;
        if info.running != Some(true) {
            return Ok(info.exit_code.unwrap_or(-1));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(EngineError::Other(
        "the command's output ended but it still runs".into(),
    ))
}

fn map_err(e: BollardError) -> EngineError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => EngineError::NotFound(message),
            409 => EngineError::Conflict(message),
            400 => EngineError::Rejected(message),
            // The daemon refuses invalid templates (bad mount source,
            // unknown capability, …) with a 500 and these words.
            500 if is_refusal(&message) => EngineError::Rejected(message),
            503 => EngineError::Unavailable(message),
            _ => EngineError::Other(format!("{status_code}: {message}")),
        },
        BollardError::RequestTimeoutError => EngineError::Unavailable("request timed out".into()),
        e @ (BollardError::IOError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::SocketNotFoundError(_)) => EngineError::Unavailable(e.to_string()),
        other => EngineError::Other(other.to_string()),
    }
}

fn is_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "invalid",
        "no such file or directory",
        "not a directory",
        "unknown capability",
        "bind source path does not exist",
        "must be an absolute path",
        "is not a valid",
        "minimum memory limit",
        "oci runtime create failed",
    ]
    .iter()
    .any(|w| m.contains(w))
}

fn label_filters(labels: &[(String, String)]) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn health_of(s: &str) -> Option<HealthState> {
    match s.trim() {
        "healthy" => Some(HealthState::Healthy),
        "unhealthy" => Some(HealthState::Unhealthy),
        "starting" => Some(HealthState::Starting),
        _ => None,
    }
}

fn system_time_of_nanos(ns: i64) -> SystemTime {
    u64::try_from(ns)
        .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
        .unwrap_or(UNIX_EPOCH)
}

fn to_event(msg: bollard::models::EventMessage) -> Option<EngineEvent> {
    if msg.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let action = msg.action.unwrap_or_default();
    let kind = match action.as_str() {
        "create" => EventKind::Create,
        "start" => EventKind::Start,
        "die" => EventKind::Die,
        "oom" => EventKind::Oom,
        "destroy" => EventKind::Destroy,
        a if a.starts_with("exec_") => return None,
        a if a.starts_with("health_status") => {
            let state = a.split_once(':').and_then(|(_, s)| health_of(s))?;
            EventKind::Health(state)
        }
        a => EventKind::Other(a.to_string()),
    };
    let actor = msg.actor.unwrap_or_default();
    let time = match (msg.time_nano, msg.time) {
        (Some(ns), _) => system_time_of_nanos(ns),
        (None, Some(s)) => system_time_of_nanos(s.saturating_mul(1_000_000_000)),
        (None, None) => SystemTime::now(),
    };
    let labels: BTreeMap<String, String> =
        actor.attributes.unwrap_or_default().into_iter().collect();
    let exit_code = match kind {
        EventKind::Die => labels.get("exitCode").and_then(|c| c.parse().ok()),
        _ => None,
    };
    Some(EngineEvent {
        container_id: actor.id.unwrap_or_default(),
        kind,
        time,
        labels,
        exit_code,
    })
}

#[async_trait]
impl ContainerEngine for DockerEngine {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        let v = self.docker.version().await.map_err(map_err)?;
        Ok(EngineVersion {
            version: v.version.unwrap_or_default(),
            api_version: self.docker.client_version().to_string(),
        })
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, EngineError> {
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let res = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| match map_err(e) {
                // A missing image on create is a 404 "No such image".
                EngineError::NotFound(m) if m.to_ascii_lowercase().contains("image") => {
                    EngineError::ImageNotFound(m)
                }
                EngineError::NotFound(m) => EngineError::Rejected(m),
                other => other,
            })?;
        Ok(res.id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        // bollard treats 304 (already running) as success.
        self.docker.start_container(id, None).await.map_err(map_err)
    }

    async fn stop(&self, id: &str, grace_secs: Option<i64>) -> Result<(), EngineError> {
        let opts = grace_secs.map(|g| {
            let t = i32::try_from(g).unwrap_or(i32::MAX);
            StopContainerOptionsBuilder::default().t(t).build()
        });
        match self.docker.stop_container(id, opts).await.map_err(map_err) {
            Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let opts = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        self.docker
            .kill_container(id, Some(opts))
            .await
            .map_err(map_err)
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(false)
            .build();
        match self
            .docker
            .remove_container(id, Some(opts))
            .await
            .map_err(map_err)
        {
            Ok(()) | Err(EngineError::NotFound(_)) => Ok(()),
            // "removal already in progress" is a 409: the goal is reached.
            Err(EngineError::Conflict(m)) if m.contains("already in progress") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError> {
        let r = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(map_err)?;
        let state = r.state.unwrap_or_default();
        let run = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
            Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
            Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => RunState::Removing,
            Some(ContainerStateStatusEnum::DEAD) => RunState::Dead,
            _ => RunState::Exited,
        };
        let health = state.health.and_then(|h| match h.status {
            Some(HealthStatusEnum::HEALTHY) => Some(HealthState::Healthy),
            Some(HealthStatusEnum::UNHEALTHY) => Some(HealthState::Unhealthy),
            Some(HealthStatusEnum::STARTING) => Some(HealthState::Starting),
            _ => None,
        });
        let config = r.config.unwrap_or_default();
        Ok(ContainerInfo {
            id: r.id.unwrap_or_default(),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            state: run,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            health,
            started_at: state.started_at.as_deref().and_then(parse_engine_time),
            finished_at: state.finished_at.as_deref().and_then(parse_engine_time),
            error: state.error.filter(|e| !e.is_empty()),
            restart_policy: r
                .host_config
                .and_then(|h| h.restart_policy)
                .and_then(|p| p.name)
                .map(|n| n.to_string()),
        })
    }

    async fn list(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<ContainerListing>, EngineError> {
        let filters = HashMap::from([("label".to_string(), label_filters(labels))]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(map_err)?;
        Ok(list
            .into_iter()
            .map(|c| ContainerListing {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }

    fn events(
        &self,
        since: Option<SystemTime>,
        labels: &[(String, String)],
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "event".to_string(),
                ["create", "start", "die", "oom", "destroy", "health_status"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            ),
            ("label".to_string(), label_filters(labels)),
        ]);
        let mut b = EventsOptionsBuilder::default().filters(&filters);
        let since_s;
        if let Some(t) = since {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            since_s = format!("{}.{:09}", d.as_secs(), d.subsec_nanos());
            b = b.since(&since_s);
        }
        let stream = self.docker.events(Some(b.build()));
        stream
            .filter_map(|r| async move {
                match r {
                    Ok(msg) => to_event(msg).map(Ok),
                    Err(e) => Some(Err(map_err(e))),
                }
            })
            .boxed()
    }

    async fn logs(&self, id: &str, tail: usize) -> Result<String, EngineError> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        let mut stream = self.docker.logs(id, Some(opts));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            let item = item.map_err(map_err)?;
            out.push_str(&String::from_utf8_lossy(&item.into_bytes()));
        }
        Ok(out)
    }

    fn log_stream(
        &self,
        id: &str,
        opts: &LogStreamOptions,
    ) -> BoxStream<'static, Result<LogEntry, EngineError>> {
        // The engine filters `since` by whole seconds: ask from the second
        // before and drop the earlier lines here.
        let since_secs = opts
            .since
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
        let q = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(opts.follow)
            .since(since_secs)
            .tail(
                &opts
                    .tail
                    .map_or_else(|| "all".to_string(), |n| n.to_string()),
            )
            .build();
        let since = opts.since;
        self.docker
            .logs(id, Some(q))
            .map(|item| {
                let out = item.map_err(map_err)?;
                let (origin, bytes) = match out {
                    LogOutput::StdOut { message } => (LogOrigin::Stdout, message),
                    LogOutput::StdErr { message } => (LogOrigin::Stderr, message),
                    LogOutput::Console { message } => (LogOrigin::Console, message),
                    LogOutput::StdIn { message } => (LogOrigin::Console, message),
                };
                let (time, data) = split_log_frame(&bytes);
                Ok(LogEntry {
                    time,
                    origin,
                    data: data.to_vec(),
                })
            })
            .filter(move |e| {
                let keep = match e {
                    Ok(e) => filter_since(e, since),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .boxed()
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, EngineError> {
        // Not one-shot: the engine then also gives its reading of about a
        // second before, for the CPU rate.
        let opts = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(false)
            .build();
        let mut stream = self.docker.stats(id, Some(opts));
        let s = stream
            .next()
            .await
            .ok_or_else(|| EngineError::Other("empty stats answer".into()))?
            .map_err(map_err)?;
        let mem = s.memory_stats.unwrap_or_default();
        let now = s.cpu_stats.unwrap_or_default();
        let before = s.precpu_stats.unwrap_or_default();
        let total = |c: &bollard::models::ContainerCpuStats| {
            c.cpu_usage
                .as_ref()
                .and_then(|u| u.total_usage)
                .unwrap_or(0)
        };
        let cpu_millicores = crate::engine::cpu_millicores(
            (total(&before), total(&now)),
            (
                before.system_cpu_usage.unwrap_or(0),
                now.system_cpu_usage.unwrap_or(0),
            ),
            now.online_cpus.unwrap_or(1),
        );
        Ok(ContainerStats {
            memory_bytes: mem.usage.unwrap_or(0),
            memory_limit_bytes: mem.limit.unwrap_or(0),
            cpu_total_ns: total(&now),
            cpu_millicores,
        })
    }

    fn exec(
        &self,
        id: &str,
        spec: crate::engine::ExecSpec,
    ) -> BoxStream<'static, Result<ExecOutput, EngineError>> {
        let (docker, id, endpoint) = (self.docker.clone(), id.to_owned(), self.attach.clone());
        let tty = spec.tty;
        let started = async move {
            let created = docker
                .create_exec(
                    &id,
                    CreateExecOptions {
                        attach_stdin: Some(spec.input.is_some()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        tty: Some(spec.tty),
                        cmd: Some(spec.command),
                        ..Default::default()
                    },
                )
                .await
                .map_err(map_err)?;
            let io = crate::docker_exec::start(&endpoint, &created.id, spec.tty).await?;
            if let Some(size) = spec.size {
                resize(&docker, &created.id, size).await;
            }
            let (reader, writer) = tokio::io::split(io);
            // Fed beside the reading of the output, so a command that talks
            // before it reads cannot stall; stopped when the output ends,
            // or is dropped unfinished (nobody wants it any more: a
            // command with a terminal is then hung up).
            let feeding = tokio_util::sync::CancellationToken::new();
            let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (docker2, exec_id, stop, done) = (
                docker.clone(),
                created.id.clone(),
                feeding.clone(),
                finished.clone(),
            );
            let input = spec.input;
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let fed = async {
                        match input {
                            Some(input) => feed(input, writer, &docker2, &exec_id, tty).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = fed => {}
                        () = stop.cancelled() => {
                            let abandoned = !done.load(std::sync::atomic::Ordering::SeqCst);
                            if tty && abandoned {
                                hang_up(&docker2, &exec_id).await;
                            }
                        }
                    }
                },
                tracing::debug_span!("exec-input"),
            ));
            Ok((docker, created.id, reader, (feeding.drop_guard(), finished)))
        };
        futures::stream::once(started)
            .flat_map(move |started| match started {
                Err(e) => futures::stream::once(futures::future::ready(Err(e))).boxed(),
                Ok((docker, exec_id, reader, (feeding, finished))) => {
                    let output = crate::docker_exec::output(reader, tty);
                    // Once the output ends the command has: its exit code.
                    let exit = futures::stream::once(async move {
                        finished.store(true, std::sync::atomic::Ordering::SeqCst);
                        drop(feeding);
                        exit_code(&docker, &exec_id).await.map(ExecOutput::Exit)
                    });
                    output.chain(exit).boxed()
                }
            })
            .boxed()
    }

    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        match self.docker.inspect_image(image).await.map_err(map_err) {
            Ok(_) => Ok(true),
            Err(EngineError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn pull(&self, image: &str, timeout: Duration) -> Result<(), EngineError> {
        let (repo, tag) = split_image(image);
        let opts = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(tag)
            .build();
        let mut stream = self.docker.create_image(Some(opts), None, None);
        let pull = async {
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(err) = info.error_detail.and_then(|d| d.message) {
                            return Err(EngineError::ImageNotFound(format!("{image}: {err}")));
                        }
                    }
                    Err(e) => {
                        return Err(match map_err(e) {
                            EngineError::Unavailable(m) => EngineError::Unavailable(m),
                            other => EngineError::ImageNotFound(format!("{image}: {other}")),
                        });
                    }
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, pull).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::ImageNotFound(format!(
                "{image}: pull timed out after {timeout:?}"
            ))),
        }
    }

    async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        // Engines before API 1.44 accept duplicate network names; serialize
        // this agent's inspect-then-create, and after a create drop any
        // duplicate another process made at the same time (all keep the
        // smallest id).
        let _guard = self.network_lock.lock().await;
        match self
            .docker
            .inspect_network(name, None)
            .await
            .map_err(map_err)
        {
            Ok(_) => return Ok(()),
            Err(EngineError::NotFound(_)) => {}
            Err(EngineError::Other(m)) if m.contains("ambiguous") => {}
            Err(e) => return Err(e),
        }
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        match self.docker.create_network(req).await.map_err(map_err) {
            Ok(_) | Err(EngineError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut ids: Vec<String> = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(map_err)?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        ids.sort();
        for extra in ids.iter().skip(1) {
            if let Err(e) = self.docker.remove_network(extra).await {
                tracing::debug!(network = %extra, error = %e, "removing a duplicate network");
            }
        }
        Ok(())
    }
}

/// `repo[:tag]` → (repo, tag), default tag `latest`; a digest stays in the repo.
fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => (&image[..image.len() - tag.len() - 1], tag),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split() {
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_image("shoal-test/busybox:1"),
            ("shoal-test/busybox", "1")
        );
        assert_eq!(
            split_image("localhost:5000/a/b:2"),
            ("localhost:5000/a/b", "2")
        );
        assert_eq!(
            split_image("localhost:5000/a"),
            ("localhost:5000/a", "latest")
        );
    }

    #[test]
    fn errors_are_classified() {
        let e = |code, msg: &str| {
            map_err(BollardError::DockerResponseServerError {
                status_code: code,
                message: msg.into(),
            })
        };
        assert!(matches!(e(404, "x"), EngineError::NotFound(_)));
        assert!(matches!(e(409, "x"), EngineError::Conflict(_)));
        assert!(matches!(e(400, "x"), EngineError::Rejected(_)));
        assert!(matches!(
            e(
                500,
                "invalid mount config for type \"bind\": bind source path does not exist"
            ),
            EngineError::Rejected(_)
        ));
        assert!(matches!(e(500, "something broke"), EngineError::Other(_)));
        assert!(!e(400, "x").is_retryable());
        assert!(e(500, "x").is_retryable());
    }

    #[test]
    fn exec_events_are_noise() {
        let msg = |action: &str| bollard::models::EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(bollard::models::EventActor {
                id: Some("c1".into()),
                attributes: None,
            }),
            time_nano: Some(1_000_000_123),
            ..Default::default()
        };
        assert_eq!(to_event(msg("exec_start: sh -c true")), None);
        assert_eq!(to_event(msg("exec_die")), None);
        let h = to_event(msg("health_status: unhealthy")).unwrap();
        assert_eq!(h.kind, EventKind::Health(HealthState::Unhealthy));
        let d = to_event(msg("die")).unwrap();
        assert_eq!(d.kind, EventKind::Die);
        assert_eq!(d.time, UNIX_EPOCH + Duration::from_nanos(1_000_000_123));
    }
}
