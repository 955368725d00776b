//! `shoal agent`: the host agent against the local Docker engine.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_agent::assignments::feed_file;
use shoal_agent::docker::DockerEngine;
use shoal_agent::join::Credentials;
use shoal_agent::{AgentConfig, CancellationToken, ContainerEngine, Reconciler, StatusUpdate};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Run the host agent: make the local Docker engine run exactly the tasks
/// assigned to this host, and keep them running
///
/// With `--dispatcher`, the agent joins a control plane (`shoal up` or
/// `shoal server` on another host, or on this one): it dials out, registers
/// this host, runs the tasks placed on it, reports their status and serves
/// their logs; it reconnects with backoff when the control plane goes away.
///
/// From another host, dial the control plane's join address (https://, its
/// --join-listen) with the join token from its data directory: the agent
/// checks the control plane's certificate against the CA the token names,
/// gets a certificate for this host, keeps it in --state-dir, and speaks
/// mutual TLS from then on (a restarted agent needs no token). On the control
/// plane's own machine, the loopback address (http://127.0.0.1:6444) and the
/// cluster id (`cat /var/lib/shoal/cluster-id`) do.
///
/// A highly available control plane runs several servers, of which only the
/// leader serves agents: give one or more of their join addresses
/// (comma-separated, or --dispatcher repeated). The leader tells the agent
/// every server's, kept in --state-dir/dispatchers (servers added later
/// included, removed ones forgotten). The agent tries them in turn, and when
/// the leader changes it moves to the new one at once; it backs off only
/// after none of them answered.
///
/// With `--assignments` instead, the tasks come from a YAML file of Task
/// objects, re-read when it changes, and status changes are printed one per
/// line (for trying the agent alone).
///
/// This host decides what it runs, whatever the control plane asks: bind
/// mounts of host paths and added capabilities are refused (the task ends
/// Rejected) unless --allow-bind / --allow-cap allow them.
///
/// Containers keep running when the agent stops; a new agent adopts them.
/// Stops on SIGTERM or Ctrl-C.
///
/// Examples:
///   shoal agent --dispatcher https://10.0.0.1:6445 \
///     --join-token SHOAL1-…   # from /var/lib/shoal/join-token there
///   shoal agent \
///     --dispatcher https://10.0.0.1:6445,https://10.0.0.2:6445,https://10.0.0.3:6445 \
///     --join-token SHOAL1-…   # a control plane of three servers
///   shoal agent --dispatcher http://127.0.0.1:6444 \
///     --cluster-id "$(cat /var/lib/shoal/cluster-id)" --host-name node-2
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["dispatcher", "assignments"])))]
pub struct Args {
    /// The control plane's dispatcher address: its join address
    /// (https://HOST:6445, mutual TLS) or, on its machine,
    /// http://127.0.0.1:6444. Several (comma-separated, or repeated): the
    /// servers of a highly available control plane, tried in turn, all
    /// https:// or all http://.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    dispatcher: Vec<String>,
    /// The cluster's join token (the control plane's DATA_DIR/join-token);
    /// needed once, to join over https://.
    #[arg(
        long,
        env = "SHOAL_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    join_token: Option<shoal_proto::join::JoinToken>,
    /// Where the agent keeps this host's credentials (certificate and key,
    /// readable by root only) and cluster id after joining.
    #[arg(long, default_value = "/var/lib/shoal/agent", value_name = "DIR")]
    state_dir: PathBuf,
    /// YAML file of Tasks: the complete set assigned to this host.
    #[arg(long, value_name = "FILE")]
    assignments: Option<PathBuf>,
    /// Cluster id: the agent touches only containers labelled with it (and,
    /// with --dispatcher, joins only that cluster's control plane).
    #[arg(long, env = "SHOAL_CLUSTER_ID", default_value = "local")]
    cluster_id: String,
    /// Name of this host (default: the machine's host name); with
    /// --dispatcher.
    #[arg(long, value_name = "NAME")]
    host_name: Option<String>,
    /// Label of this host as KEY=VALUE, applied when it first joins
    /// (repeatable); with --dispatcher.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::host_agent::parse_label)]
    labels: Vec<(String, String)>,
    /// Docker engine address (unix:///path); default DOCKER_HOST, else the
    /// standard socket.
    #[arg(long, env = "DOCKER_HOST", value_name = "ADDRESS")]
    docker_host: Option<String>,
    /// Engine actions (create, start, stop) running at once.
    #[arg(long, env = "SHOAL_AGENT_MAX_CONCURRENCY", default_value_t = 16)]
    max_concurrency: usize,
    /// Full resync period, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// Bound on one image pull, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pull_timeout: Duration,
    /// Print status changes as JSON lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: crate::policy_args::PolicyArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_crds::quantity::parse_duration(s).map_err(|e| e.to_string())
}

/// The dispatcher addresses given, checked: none empty, each `https://` or
/// `http://`, all of one scheme (joined over mutual TLS, or loopback).
fn dispatcher_urls(given: &[String]) -> Result<Vec<String>, String> {
    let urls: Vec<String> = given.iter().map(|u| u.trim().to_string()).collect();
    let scheme = |u: &str| {
        if u.starts_with("https://") {
            Some("https")
        } else if u.starts_with("http://") {
            Some("http")
        } else {
            None
        }
    };
    for u in &urls {
        if u.is_empty() {
            return Err(format!(
                "invalid value '{}' for '--dispatcher <URL>': an empty address in the list",
                given.join(",")
            ));
        }
        if scheme(u).is_none() {
            return Err(format!(
                "invalid value '{u}' for '--dispatcher <URL>': not an https:// (join address) or http:// (loopback) URL"
            ));
        }
    }
    if let Some(first) = urls.first()
        && urls.iter().any(|u| scheme(u) != scheme(first))
    {
        return Err(format!(
            "invalid value '{}' for '--dispatcher <URL>': the addresses must be all https:// (join addresses, mutual TLS) or all http:// (loopback), not a mix",
            urls.join(",")
        ));
    }
    Ok(urls)
}

/// Ends the process with a usage error of `shoal agent`, as clap does for
/// the arguments it checks itself.
fn usage_error(message: &str) -> ! {
    let mut cmd =
        <Args as clap::Args>::augment_args(clap::Command::new("agent")).bin_name("shoal agent");
    cmd.error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    match dispatcher_urls(&args.dispatcher) {
        Ok(urls) => args.dispatcher = urls,
        Err(message) => usage_error(&message),
    }
    crate::logging::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(agent(args))?;
    Ok(ExitCode::SUCCESS)
}

fn line(u: &StatusUpdate) -> String {
    let s = &u.status;
    let mut out = format!(
        "{}/{} {:?}",
        u.namespace,
        u.name,
        s.phase.unwrap_or_default()
    );
    if let Some(r) = &s.reason {
        out.push_str(&format!(" reason={r}"));
    }
    if let Some(c) = &s.container_id {
        out.push_str(&format!(" container={}", &c[..c.len().min(12)]));
    }
    if let Some(h) = s.health {
        out.push_str(&format!(" health={h:?}"));
    }
    out.push_str(&format!(" restarts={}", s.restart_count.unwrap_or(0)));
    if let Some(code) = s.exit_code {
        out.push_str(&format!(" exit={code}"));
    }
    if s.oom_killed == Some(true) {
        out.push_str(" oom=true");
    }
    if let Some(m) = &s.message {
        out.push_str(&format!(" message={m:?}"));
    }
    out
}

/// The agent in session with the dispatchers at `urls` (checked: at least
/// one, all of one scheme).
async fn joined(args: Args, urls: Vec<String>) -> anyhow::Result<()> {
    let host_name = args
        .host_name
        .clone()
        .unwrap_or_else(crate::host_agent::machine_host_name);
    let dispatcher = urls.join(",");
    let (cluster_id, tls, tls_updates) = if urls.iter().all(|u| u.starts_with("https://")) {
        let (id, creds) = credentials(&args, &urls, &host_name).await?;
        let (tx, rx) = watch::channel(creds);
        (id, Some(rx), Some(tx))
    } else {
        if args.join_token.is_some() {
            anyhow::bail!(
                "--join-token: joining needs the control plane's join address (https://HOST:PORT, its --join-listen), not {dispatcher}"
            );
        }
        (args.cluster_id.clone(), None, None)
    };
    if cluster_id == "local" {
        anyhow::bail!(
            "--cluster-id: the control plane's cluster id is needed to join it (it is in the `cluster-id` file of its data directory, and `shoal up` prints it)"
        );
    }
    let host = crate::host_agent::connect_engine(args.docker_host.as_deref()).await?;
    let shutdown = CancellationToken::new();
    let mut config = AgentConfig::new(cluster_id.clone());
    config.max_concurrency = args.max_concurrency;
    config.resync_interval = args.resync_interval;
    config.pull_timeout = args.pull_timeout;
    config.policy = args.policy.to_policy(false);
    let settings = crate::host_agent::AgentSettings {
        dispatcher_urls: urls.clone(),
        cluster_id,
        host_name: host_name.clone(),
        labels: args.labels.iter().cloned().collect(),
        dispatchers_file: tls
            .is_some()
            .then(|| args.state_dir.join(shoal_agent::dispatchers::FILE)),
        exec_allowed: !args.policy.no_exec,
        config,
        tls,
    };
    tracing::info!(
        engine = %host.version,
        address = %host.address,
        %dispatcher,
        host = %host_name,
        "starting the agent"
    );
    // The certificate is renewed in the background while the agent runs.
    let renewal = tls_updates.map(|current| {
        tokio::spawn(
            shoal_agent::join::keep_renewed(
                urls.clone(),
                args.state_dir.clone(),
                current,
                shutdown.child_token(),
            )
            .instrument(tracing::info_span!("certificate-renewal")),
        )
    });
    let mut tasks = crate::host_agent::start(host, settings, shutdown.child_token())?;
    let (refused, session_ended) = tokio::select! {
        why = crate::control_plane::stop_signal() => {
            tracing::info!("{}: stopping (containers keep running)", why?);
            (None, false)
        }
        refused = &mut tasks.session => (refused.ok().flatten(), true),
    };
    shutdown.cancel();
    let _ = tasks.reconciler.await;
    if !session_ended {
        let _ = tasks.session.await;
    }
    if let Some(r) = renewal {
        let _ = r.await;
    }
    if let Some(why) = refused {
        // The certificate is revoked: keeping it would only be refused again.
        Credentials::forget(&args.state_dir)?;
        shoal_agent::dispatchers::Dispatchers::forget(&args.state_dir).with_context(|| {
            format!(
                "deleting the server addresses in {}",
                args.state_dir.display()
            )
        })?;
        anyhow::bail!(
            "the control plane refused this host: {why}. Its containers of the cluster were removed and its credentials in {} deleted; to join again: shoal agent --dispatcher {dispatcher} --join-token TOKEN",
            args.state_dir.display()
        );
    }
    Ok(())
}

/// This host's credentials and cluster id: kept from an earlier join, or
/// got now with the join token (retrying while the control plane cannot be
/// reached).
async fn credentials(
    args: &Args,
    urls: &[String],
    host_name: &str,
) -> anyhow::Result<(String, Credentials)> {
    let dir = &args.state_dir;
    let id_file = dir.join("cluster-id");
    let name_file = dir.join("host-name");
    let kept = Credentials::load(dir)?;
    let token = args.join_token.as_ref();
    if let Some(creds) = kept {
        let same_ca = match token {
            Some(t) => creds.ca_fingerprint()? == t.ca_fingerprint,
            None => true,
        };
        // The certificate names the host it was issued for.
        let joined_as = std::fs::read_to_string(&name_file)
            .map(|s| s.trim().to_string())
            .ok();
        let same_name = joined_as.as_deref().is_none_or(|n| n == host_name);
        if same_ca && !same_name && token.is_none() {
            anyhow::bail!(
                "--host-name: this host joined as {:?} (its certificate says so), not {host_name:?}; run with --host-name {0:?}, or give --join-token to join again as {host_name:?}",
                joined_as.unwrap_or_default()
            );
        }
        if same_ca && same_name {
            let id = match token {
                Some(t) => t.cluster_id.clone(),
                None => std::fs::read_to_string(&id_file)
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| args.cluster_id.clone()),
            };
            return Ok((id, creds));
        }
    }
    let Some(token) = token else {
        anyhow::bail!(
            "--join-token: this host has not joined the cluster yet (no credentials in {}); give the token from the control plane's DATA_DIR/join-token",
            dir.display()
        );
    };
    let creds = loop {
        match shoal_agent::join::join_any(urls, token, host_name).await {
            Ok(c) => break c,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "cannot join yet; trying again in 2s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    why = crate::control_plane::stop_signal() => {
                        anyhow::bail!("{}: stopped before joining", why?);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    creds.save(dir)?;
    for (file, value) in [
        (&id_file, &token.cluster_id),
        (&name_file, &host_name.to_string()),
    ] {
        std::fs::write(file, format!("{value}\n"))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    tracing::info!(host = %host_name, cluster = %token.cluster_id, state = %dir.display(), "joined the cluster");
    Ok((token.cluster_id.clone(), creds))
}

async fn agent(args: Args) -> anyhow::Result<()> {
    let Some(assignments) = args.assignments.clone() else {
        let urls = args.dispatcher.clone();
        return joined(args, urls).await;
    };
    let shutdown = CancellationToken::new();
    let engine = DockerEngine::connect(args.docker_host.as_deref())
        .await
        .with_context(|| {
            format!(
                "connecting to the Docker engine at {}",
                args.docker_host.as_deref().unwrap_or("the default socket")
            )
        })?;
    let version = engine.version().await.context("engine version")?;
    tracing::info!(
        engine = %version.version,
        api = %version.api_version,
        address = %engine.address(),
        cluster = %args.cluster_id,
        "connected to the engine"
    );
    let (tx, rx) = watch::channel(None);
    let feeder = feed_file(
        assignments.clone(),
        Duration::from_secs(2),
        tx,
        shutdown.child_token(),
    )
    .await
    .with_context(|| format!("reading {}", assignments.display()))?;

    let mut config = AgentConfig::new(args.cluster_id);
    config.max_concurrency = args.max_concurrency;
    config.resync_interval = args.resync_interval;
    config.pull_timeout = args.pull_timeout;
    config.policy = args.policy.to_policy(false);
    let (status_tx, mut status_rx) = mpsc::unbounded_channel();
    let reconciler = Reconciler::new(Arc::new(engine), config, status_tx);
    let handle = tokio::spawn(
        reconciler
            .run(rx, shutdown.child_token())
            .instrument(tracing::info_span!("reconciler")),
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping (containers keep running)"); break; }
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                tracing::info!("interrupted: stopping (containers keep running)");
                break;
            }
            u = status_rx.recv() => match u {
                Some(u) if args.json => println!("{}", serde_json::json!({
                    "uid": u.uid, "namespace": u.namespace, "name": u.name, "status": u.status,
                })),
                Some(u) => println!("{}", line(&u)),
                None => break,
            }
        }
    }
    shutdown.cancel();
    let _ = feeder.await;
    let _ = handle.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Args {
        let argv = ["shoal", "agent"].iter().chain(args);
        match crate::Cli::try_parse_from(argv).unwrap().command {
            crate::Command::Agent(a) => a,
            other => panic!("not the agent: {other:?}"),
        }
    }

    #[test]
    fn several_dispatchers_comma_separated_or_repeated() {
        let a = parse(&[
            "--dispatcher",
            "https://10.0.0.1:6445,https://10.0.0.2:6445",
            "--dispatcher",
            "https://10.0.0.3:6445",
        ]);
        assert_eq!(
            dispatcher_urls(&a.dispatcher).unwrap(),
            [
                "https://10.0.0.1:6445",
                "https://10.0.0.2:6445",
                "https://10.0.0.3:6445"
            ]
        );
        let a = parse(&["--dispatcher", "http://127.0.0.1:6444"]);
        assert_eq!(
            dispatcher_urls(&a.dispatcher).unwrap(),
            ["http://127.0.0.1:6444"]
        );
        // --assignments instead: none.
        let a = parse(&["--assignments", "tasks.yaml"]);
        assert!(dispatcher_urls(&a.dispatcher).unwrap().is_empty());
    }

    #[test]
    fn dispatchers_of_mixed_schemes_or_none_are_refused() {
        let mixed = parse(&[
            "--dispatcher",
            "https://10.0.0.1:6445,http://127.0.0.1:6444",
        ]);
        let e = dispatcher_urls(&mixed.dispatcher).unwrap_err();
        assert!(
            e.contains("--dispatcher") && e.contains("all https://"),
            "{e}"
        );
        let e = dispatcher_urls(&parse(&["--dispatcher", "10.0.0.1:6445"]).dispatcher).unwrap_err();
        assert!(
            e.contains("--dispatcher") && e.contains("10.0.0.1:6445"),
            "{e}"
        );
        let e = dispatcher_urls(&parse(&["--dispatcher", "https://10.0.0.1:6445,"]).dispatcher)
            .unwrap_err();
        assert!(e.contains("empty address"), "{e}");
    }
}
