//! Dispatcher settings, with DESIGN.md's defaults.

use std::time::Duration;

/// How the dispatcher talks to agents and judges their liveness.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Cluster id sent to agents in `Welcome`; they label their containers
    /// with it and touch no other.
    pub cluster_id: String,
    /// How often agents send a heartbeat. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// Heartbeats missed before a connected host is lost. Default 4.
    pub heartbeat_misses: u32,
    /// After an agent's stream closes, how long the host may take to come
    /// back before it is lost (covers an agent restart). Default 1 s.
    pub reconnect_grace: Duration,
    /// Longest time a task status waits to be written with others. Default
    /// 20 ms.
    pub status_batch_window: Duration,
    /// Version reported to agents.
    pub server_version: String,
    /// How long a host's certificate is valid (its agent renews it when a
    /// third of that is left). Default 90 days.
    pub host_cert_validity: Duration,
    /// How long a host this dispatcher has not heard from yet may take to
    /// connect after it starts, before it is lost. Default (`None`): the
    /// longer of the heartbeat timeout and the reconnect grace. A new leader
    /// of a replicated control plane gives more: agents look for it first.
    pub startup_grace: Option<Duration>,
    /// The join addresses of the control plane's servers (this one first),
    /// told to agents on mutual-TLS sessions and again when they change.
    /// `None` (a lone server): not told.
    pub servers: Option<tokio::sync::watch::Receiver<Vec<String>>>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            cluster_id: "local".into(),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_misses: 4,
            reconnect_grace: Duration::from_secs(1),
            status_batch_window: Duration::from_millis(20),
            server_version: env!("CARGO_PKG_VERSION").into(),
            host_cert_validity: Duration::from_secs(90 * 24 * 3600),
            startup_grace: None,
            servers: None,
        }
    }
}

impl DispatcherConfig {
    /// Silence after which a connected host is lost.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_interval * self.heartbeat_misses.max(1)
    }
}
