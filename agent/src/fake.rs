//! An in-memory [`ContainerEngine`] for unit tests: containers are records
//! whose state tests change ([`FakeEngine::exit`], [`FakeEngine::set_health`]),
//! every call is counted, and events are delivered like the engine's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::models::ContainerCreateBody;
use futures::StreamExt;
use futures::stream::BoxStream;
use shoal_crds::HealthState;
use tokio::sync::broadcast;

use crate::engine::{
    ContainerEngine, ContainerInfo, ContainerListing, ContainerStats, EngineEvent, EngineVersion,
    EventKind, LogEntry, LogStreamOptions, RunState,
};
use crate::error::EngineError;

#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, ContainerInfo>,
    bodies: BTreeMap<String, ContainerCreateBody>,
    images: BTreeSet<String>,
    networks: BTreeSet<String>,
    calls: BTreeMap<&'static str, usize>,
    next_id: u64,
    log: Vec<EngineEvent>,
    reject_create: Option<String>,
    down: bool,
}

/// The fake engine. Clones share state.
#[derive(Debug, Clone)]
pub struct FakeEngine {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<EngineEvent>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeEngine {
    /// An empty engine with no images.
    pub fn new() -> FakeEngine {
        let (events, _) = broadcast::channel(1024);
        FakeEngine {
            state: Arc::new(Mutex::new(State::default())),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn count(st: &mut State, call: &'static str) -> Result<(), EngineError> {
        *st.calls.entry(call).or_default() += 1;
        if st.down {
            return Err(EngineError::Unavailable("fake engine is down".into()));
        }
        Ok(())
    }

    fn emit(&self, st: &mut State, id: &str, kind: EventKind) {
        let c = st.containers.get(id);
        let labels = c.map(|c| c.labels.clone()).unwrap_or_default();
        let exit_code = match kind {
            EventKind::Die => c.and_then(|c| c.exit_code),
            _ => None,
        };
        let ev = EngineEvent {
            container_id: id.to_string(),
            kind,
            time: c
                .and_then(|c| c.finished_at)
                .filter(|_| exit_code.is_some())
                .unwrap_or_else(SystemTime::now),
            labels,
            exit_code,
        };
        st.log.push(ev.clone());
        let _ = self.events.send(ev);
    }

    /// Make `image` present.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(image.to_string());
    }

    /// Make every create fail with this refusal (`None` to stop).
    pub fn reject_creates(&self, message: Option<&str>) {
        self.lock().reject_create = message.map(str::to_string);
    }

    /// How many times `call` (`create`, `start`, `pull`, …) was made.
    pub fn calls(&self, call: &str) -> usize {
        self.lock().calls.get(call).copied().unwrap_or(0)
    }

    /// Every container.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.lock().containers.values().cloned().collect()
    }

    /// The create body of a container.
    pub fn body(&self, id: &str) -> Option<ContainerCreateBody> {
        self.lock().bodies.get(id).cloned()
    }

    /// Add a container as if someone else created it (running).
    pub fn insert_running(&self, name: &str, labels: BTreeMap<String, String>) -> String {
        let mut st = self.lock();
        st.next_id += 1;
        let id = format!("fake{:08}", st.next_id);
        st.containers.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: name.to_string(),
                labels,
                state: RunState::Running,
                exit_code: None,
                oom_killed: false,
                health: None,
                started_at: Some(SystemTime::now()),
                finished_at: None,
                error: None,
                restart_policy: Some("no".into()),
            },
        );
        id
    }

    /// The container's process exits with `code` (an OOM kill if `oom`).
    pub fn exit(&self, id: &str, code: i64, oom: bool) {
        let mut st = self.lock();
        let Some(c) = st.containers.get_mut(id) else {
            return;
        };
        c.state = RunState::Exited;
        c.exit_code = Some(code);
        c.oom_killed = oom;
        c.finished_at = Some(SystemTime::now());
        if oom {
            self.emit(&mut st, id, EventKind::Oom);
        }
        self.emit(&mut st, id, EventKind::Die);
    }

    /// The health check reports `h`.
    pub fn set_health(&self, id: &str, h: HealthState) {
        let mut st = self.lock();
        let Some(c) = st.containers.get_mut(id) else {
            return;
        };
        c.health = Some(h);
        self.emit(&mut st, id, EventKind::Health(h));
    }

    /// Take the engine down (every call fails, event streams end) or up.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }
}

#[async_trait]
impl ContainerEngine for FakeEngine {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "version")?;
        Ok(EngineVersion {
            version: "fake".into(),
            api_version: "1.41".into(),
        })
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "create")?;
        if let Some(m) = &st.reject_create {
            return Err(EngineError::Rejected(m.clone()));
        }
        let image = body.image.clone().unwrap_or_default();
        if !st.images.contains(&image) {
            return Err(EngineError::ImageNotFound(format!(
                "No such image: {image}"
            )));
        }
        if st.containers.values().any(|c| c.name == name) {
            return Err(EngineError::Conflict(format!(
                "the container name \"/{name}\" is already in use"
            )));
        }
        st.next_id += 1;
        let id = format!("fake{:08}", st.next_id);
        let labels = body
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        st.containers.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: name.to_string(),
                labels,
                state: RunState::Created,
                exit_code: None,
                oom_killed: false,
                health: None,
                started_at: None,
                finished_at: None,
                error: None,
                restart_policy: body
                    .host_config
                    .as_ref()
                    .and_then(|h| h.restart_policy.as_ref())
                    .and_then(|p| p.name)
                    .map(|n| n.to_string()),
            },
        );
        st.bodies.insert(id.clone(), body);
        self.emit(&mut st, &id, EventKind::Create);
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "start")?;
        let has_check = st.bodies.get(id).is_some_and(|b| b.healthcheck.is_some());
        let c = st
            .containers
            .get_mut(id)
            .ok_or_else(|| EngineError::NotFound(format!("No such container: {id}")))?;
        if c.state == RunState::Running {
            return Ok(());
        }
        c.state = RunState::Running;
        c.started_at = Some(SystemTime::now());
        c.oom_killed = false;
        c.health = has_check.then_some(HealthState::Starting);
        self.emit(&mut st, id, EventKind::Start);
        Ok(())
    }

    async fn stop(&self, id: &str, _grace_secs: Option<i64>) -> Result<(), EngineError> {
        let running = {
            let mut st = self.lock();
            Self::count(&mut st, "stop")?;
            st.containers
                .get(id)
                .is_some_and(|c| c.state == RunState::Running)
        };
        if running {
            self.exit(id, 143, false);
        }
        Ok(())
    }

    async fn kill(&self, id: &str, _signal: &str) -> Result<(), EngineError> {
        let running = {
            let mut st = self.lock();
            Self::count(&mut st, "kill")?;
            st.containers
                .get(id)
                .is_some_and(|c| c.state == RunState::Running)
        };
        if running {
            self.exit(id, 137, false);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "remove")?;
        if st.containers.contains_key(id) {
            self.emit(&mut st, id, EventKind::Destroy);
            st.containers.remove(id);
            st.bodies.remove(id);
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "inspect")?;
        st.containers
            .get(id)
            .or_else(|| st.containers.values().find(|c| c.name == id))
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("No such container: {id}")))
    }

    async fn list(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<ContainerListing>, EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "list")?;
        Ok(st
            .containers
            .values()
            .filter(|c| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .map(|c| ContainerListing {
                id: c.id.clone(),
                name: c.name.clone(),
                labels: c.labels.clone(),
            })
            .collect())
    }

    fn events(
        &self,
        since: Option<SystemTime>,
        labels: &[(String, String)],
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let rx = self.events.subscribe();
        let replay: Vec<EngineEvent> = {
            let st = self.lock();
            match since {
                Some(t) => st.log.iter().filter(|e| e.time >= t).cloned().collect(),
                None => Vec::new(),
            }
        };
        let labels = labels.to_vec();
        let state = self.state.clone();
        let live = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures::stream::iter(replay)
            .chain(live)
            .take_while(move |_| {
                let down = state.lock().map(|s| s.down).unwrap_or(true);
                async move { !down }
            })
            .filter(move |ev| {
                let ok = labels.iter().all(|(k, v)| ev.labels.get(k) == Some(v));
                async move { ok }
            })
            .map(Ok)
            .boxed()
    }

    async fn logs(&self, _id: &str, _tail: usize) -> Result<String, EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "logs")?;
        Ok(String::new())
    }

    fn log_stream(
        &self,
        _id: &str,
        _opts: &LogStreamOptions,
    ) -> BoxStream<'static, Result<LogEntry, EngineError>> {
        let mut st = self.lock();
        match Self::count(&mut st, "log_stream") {
            Ok(()) => futures::stream::empty().boxed(),
            Err(e) => futures::stream::once(futures::future::ready(Err(e))).boxed(),
        }
    }

    async fn stats(&self, _id: &str) -> Result<ContainerStats, EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "stats")?;
        Ok(ContainerStats::default())
    }

    fn exec(
        &self,
        _id: &str,
        _spec: crate::engine::ExecSpec,
    ) -> BoxStream<'static, Result<crate::engine::ExecOutput, EngineError>> {
        let mut st = self.lock();
        let err = Self::count(&mut st, "exec")
            .err()
            .unwrap_or_else(|| EngineError::Other("the fake engine runs no commands".into()));
        futures::stream::once(futures::future::ready(Err(err))).boxed()
    }

    async fn image_present(&self, image: &str) -> Result<bool, EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "image_present")?;
        Ok(st.images.contains(image))
    }

    async fn pull(&self, image: &str, _timeout: Duration) -> Result<(), EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "pull")?;
        Err(EngineError::ImageNotFound(format!(
            "{image}: no registry reachable"
        )))
    }

    async fn ensure_network(
        &self,
        name: &str,
        _labels: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let mut st = self.lock();
        Self::count(&mut st, "ensure_network")?;
        st.networks.insert(name.to_string());
        Ok(())
    }
}
