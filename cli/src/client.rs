//! Connecting to the Shoal API: find a kubeconfig, build a kube-rs client,
//! and say plainly when nothing answers.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Exit status: `--wait` timed out or a service failed.
pub const EXIT_FAILED: u8 = 3;
/// Exit status: a manifest was refused by validation.
pub const EXIT_INVALID: u8 = 2;

/// How to reach the API; shared by every subcommand that talks to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Kubeconfig of the Shoal API. Default: $KUBECONFIG, else the one
    /// `shoal up` writes in its data directory (/var/lib/shoal/kubeconfig
    /// for root, ~/.local/share/shoal/kubeconfig otherwise), else
    /// ~/.kube/config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace. Default: the kubeconfig context's, else `default`.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A connected client, the API's URL (for messages) and the namespace to use.
#[derive(Clone)]
pub struct Conn {
    /// The client.
    pub client: kube::Client,
    /// The API's URL.
    pub url: String,
    /// The namespace of namespaced resources.
    pub namespace: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Conn {
    /// The API path of a task's subresource (`log`, `stats`, `exec`).
    pub fn task_path(&self, task: &shoal_crds::Task, sub: &str) -> String {
        let ns = task
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(&self.namespace);
        let name = task.metadata.name.as_deref().unwrap_or_default();
        format!("/apis/shoal.dev/v1alpha1/namespaces/{ns}/tasks/{name}/{sub}")
    }

    /// The typed API of a namespaced resource in the chosen namespace.
    pub fn namespaced<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        kube::Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The typed API of a namespaced resource in namespace `ns`.
    pub fn in_namespace<K>(&self, ns: &str) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        kube::Api::namespaced(self.client.clone(), ns)
    }

    /// The typed API of a cluster-scoped resource.
    pub fn cluster<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::ClusterResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        kube::Api::all(self.client.clone())
    }

    /// Wraps an API error with the URL when the API could not be reached.
    pub fn explain(&self, e: kube::Error) -> anyhow::Error {
        explain(&self.url, e)
    }
}

/// The error for an API call: "cannot reach …" when nothing answered, else
/// the API's own message.
pub fn explain(url: &str, e: kube::Error) -> anyhow::Error {
    match e {
        // Still no leader after the retries: say what that usually means.
        kube::Error::Api(s) if s.code == 503 && s.message.contains("Raft") => anyhow::anyhow!(
            "{} ({}): the control plane has no leader; are most of its servers down? (`shoal server ls` on a server that answers)",
            s.message,
            s.code
        ),
        kube::Error::Api(s) => anyhow::anyhow!("{} ({})", s.message, s.code),
        other => anyhow::anyhow!(
            "cannot reach the Shoal API at {url}: {} — is `shoal up` running?",
            root_cause(&other)
        ),
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The kubeconfig to use: `--kubeconfig`, else `KUBECONFIG` (the first
/// existing file of the list), else `shoal up`'s, else `~/.kube/config`.
pub fn find_kubeconfig(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let mut looked = Vec::new();
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        for p in std::env::split_paths(&list) {
            if p.is_file() {
                return Ok(p);
            }
            looked.push(p);
        }
    }
    let shoal = crate::control_plane::default_data_dir().join("kubeconfig");
    if shoal.is_file() {
        return Ok(shoal);
    }
    looked.push(shoal);
    if let Some(home) = std::env::var_os("HOME") {
        let kube = PathBuf::from(home).join(".kube/config");
        if kube.is_file() {
            return Ok(kube);
        }
        looked.push(kube);
    }
    let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    anyhow::bail!(
        "no kubeconfig found (looked at {}) — is `shoal up` running? Point at one with --kubeconfig or KUBECONFIG",
        looked.join(", ")
    )
}

/// Connects: reads the kubeconfig, builds the client and checks that the API
/// answers (within 5 s).
/// Answers 429, 503 and 504 are tried again this many times, 0.1 s apart
/// doubling to 1 s (about 4 s in all).
const RETRIES: u32 = 5;

pub async fn connect(args: &ConnArgs) -> anyhow::Result<Conn> {
    let path = find_kubeconfig(args.kubeconfig.as_deref())?;
    let kc = Kubeconfig::read_from(&path)
        .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("using the kubeconfig {}", path.display()))?;
    let url = config.cluster_url.to_string();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    // kube's own retries of 429/503/504 back off up to 1000 s, 15 times: a
    // command facing a control plane without a majority would hang for
    // minutes. Ours ride out a leader election (0.5-1 s) and then say why.
    config.default_retry = false;
    // Its writes are the field manager `shoal` (server-side apply's
    // ownership, shown by `kubectl get --show-managed-fields`).
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(concat!("shoal/", env!("CARGO_PKG_VERSION"))),
    ));
    let retry = kube::client::retry::RetryPolicy::new(
        Duration::from_millis(100),
        Duration::from_secs(1),
        RETRIES,
        true,
    )
    .map_err(|e| anyhow::anyhow!("the API client's retry policy: {e}"))?;
    let client = kube::client::ClientBuilder::try_from(config)
        .with_context(|| format!("a client for {url}"))?
        // Retrying needs a clonable service: a buffer in front of kube's.
        .with_layer(&tower::buffer::BufferLayer::new(64))
        .with_layer(&tower::retry::RetryLayer::new(retry))
        .build();
    match tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(explain(&url, e)),
        Err(_) => {
            anyhow::bail!(
                "cannot reach the Shoal API at {url}: no answer within 5s — is `shoal up` running?"
            )
        }
    }
    Ok(Conn {
        client,
        url,
        namespace,
    })
}

/// Runs an async command body on a fresh runtime.
pub fn block_on<F>(f: F) -> anyhow::Result<ExitCode>
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(f)
}
