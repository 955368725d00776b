//! `shoal server`: the control plane on a data directory, without a local
//! agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::client::{ConnArgs, block_on, connect};
use crate::control_plane::{ControlPlane, Settings, default_data_dir, stop_signal};

/// Run the control plane: store, API server, orchestrator, scheduler and
/// dispatcher
///
/// The store (Raft, single voter) lives in `DATA_DIR/store`; the API speaks
/// the Kubernetes REST dialect for shoal.dev and `DATA_DIR/kubeconfig` points
/// kubectl and the shoal CLI at it. Agents dial the dispatcher: on this
/// machine over loopback, from other hosts over mutual TLS on --join-listen
/// once they joined with the token in DATA_DIR/join-token. The API is plain
/// HTTP without authentication on loopback (dev mode), and HTTPS with a
/// bearer token beyond. Stops gracefully on SIGTERM or Ctrl-C. `shoal up`
/// runs the same plus a local agent.
///
/// High availability: run three (or five) servers, each with its
/// --node-id, --raft-listen and a --peer for every other one. The store is
/// replicated among them with Raft and survives the loss of a minority; the
/// API answers on every server, and the leader alone runs the orchestrator,
/// the scheduler and the dispatcher; it tells its agents every server's join
/// address (--join-advertise), so an agent given one of them finds the
/// next leader, servers added later included. The servers share one
/// cluster: start the first, then copy its DATA_DIR/cluster-id, DATA_DIR/pki
/// and (with an API beyond loopback) DATA_DIR/api-token and
/// DATA_DIR/api-token-view into the others' data directories before their
/// first start.
///
///   shoal server --node-id 1 --raft-listen 10.0.0.1:6446 \
///     --peer 2=https://10.0.0.2:6446 --peer 3=https://10.0.0.3:6446 \
///     --listen 0.0.0.0:6443 --join-listen 0.0.0.0:6445
///
/// Changing the servers: a new server (a new --node-id, the same copies of
/// cluster-id, pki/, api-token and api-token-view) joins the running ones
/// with --join and a --peer for some of them; a lost one is removed with
/// `shoal server rm ID`. Agents learn of both from the leader.
/// To replace server 3: `shoal server rm 3`, then start the new one:
///
///   shoal server --node-id 4 --raft-listen 10.0.0.4:6446 --join \
///     --peer 1=https://10.0.0.1:6446 --peer 2=https://10.0.0.2:6446
///
///   shoal server ls          # the servers, who leads
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    /// Data directory (store, cluster id, kubeconfig). Default:
    /// /var/lib/shoal for root, else ~/.local/share/shoal.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// API server address (port 0 picks a free port). On loopback: plain
    /// HTTP without authentication (dev mode). Beyond (e.g. 0.0.0.0:6443):
    /// HTTPS with the cluster CA and a bearer token, both in the kubeconfig.
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address this machine's agents dial, without TLS (loopback only).
    #[arg(long, default_value = "127.0.0.1:6444")]
    dispatcher_listen: SocketAddr,
    /// Address agents of other hosts dial, with mutual TLS, after joining
    /// with the token in DATA_DIR/join-token (e.g. 0.0.0.0:6445). Off by
    /// default.
    #[arg(long, value_name = "ADDRESS")]
    join_listen: Option<SocketAddr>,
    /// Another name or address clients use for the API, for its certificate
    /// (repeatable; with a --listen beyond loopback, e.g. 10.0.0.1 or
    /// shoal.example.com).
    #[arg(long = "api-name", value_name = "NAME")]
    api_names: Vec<String>,
    /// Largest accepted API request body, in bytes (larger ones get 413).
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_body_bytes: usize,
    /// This server's id among the servers of a replicated control plane
    /// (1, 2, 3…; with --raft-listen and --peer).
    #[arg(long, value_name = "ID", requires = "raft_listen", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: Option<u64>,
    /// Where the other servers reach this one (mutual TLS with the cluster
    /// CA), e.g. 10.0.0.1:6446.
    #[arg(long, value_name = "ADDRESS", requires = "node_id")]
    raft_listen: Option<SocketAddr>,
    /// Another server: ID=https://HOST:PORT of its --raft-listen
    /// (repeatable; every other server once).
    #[arg(long = "peer", value_name = "ID=URL", requires = "node_id", value_parser = parse_peer)]
    peers: Vec<(u64, String)>,
    /// Join the running control plane the --peer servers belong to: this
    /// server (a new --node-id, an empty data directory but for the copies
    /// of cluster-id, pki/ and the api-token files) asks them to add it to the voters
    /// and catches up from the leader. Harmless once it has joined.
    #[arg(long, requires = "node_id")]
    join: bool,
    /// Where the other servers reach this one, https://HOST:PORT. Default:
    /// https://ADDRESS of --raft-listen (needed when that listens on every
    /// address, e.g. 0.0.0.0:6446).
    #[arg(long, value_name = "URL", requires = "node_id")]
    raft_advertise: Option<String>,
    /// Where agents of other hosts reach this server's --join-listen,
    /// https://HOST:PORT. The leader tells its agents every server's, so
    /// they find the next leader, servers that joined later included.
    /// Default: https://ADDRESS of --join-listen, or, when that listens on
    /// every address, the host of --raft-advertise with its port.
    #[arg(long, value_name = "URL", requires_all = ["node_id", "join_listen"])]
    join_advertise: Option<String>,
}

/// What to do instead of running a server.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List the servers of a replicated control plane: which one leads,
    /// where the servers reach each other and where agents reach them
    Ls(ConnArgs),
    /// Remove a server from a replicated control plane (a lost one, or one
    /// to retire); the others go on without it. Its process, if it still
    /// runs, stops taking part: stop it and delete its data directory.
    Rm {
        /// The server's --node-id.
        id: u64,
        #[command(flatten)]
        conn: ConnArgs,
    },
}

/// Where agents reach this server's join listener (see `--join-advertise`):
/// `given`, else `join_listen` itself, else the host of `raft_advertise`
/// with `join_listen`'s port; `None` without a join listener, or with one on
/// a port picked at start (port 0) and nothing given.
fn join_advertise(
    given: Option<&str>,
    join_listen: Option<SocketAddr>,
    raft_advertise: &str,
) -> Result<Option<String>, String> {
    let Some(listen) = join_listen else {
        return Ok(None);
    };
    if let Some(url) = given {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() || uri.port().is_none() {
            return Err(format!(
                "{url:?}: the join address must be https://HOST:PORT"
            ));
        }
        return Ok(Some(url.trim_end_matches('/').to_owned()));
    }
    if listen.port() == 0 {
        return Ok(None);
    }
    if !listen.ip().is_unspecified() {
        return Ok(Some(format!("https://{listen}")));
    }
    let uri: http::Uri = raft_advertise
        .parse()
        .map_err(|e| format!("--raft-advertise {raft_advertise:?}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("--raft-advertise {raft_advertise:?} names no host"))?;
    Ok(Some(format!("https://{host}:{}", listen.port())))
}

/// `ID=https://HOST:PORT`.
fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=https://HOST:PORT"))?;
    let id: u64 = id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?}: {id:?} is not a node id (1, 2, 3…)"))?;
    if !url.starts_with("https://") {
        return Err(format!(
            "{s:?}: the peer's address must be https://HOST:PORT"
        ));
    }
    Ok((id, url.to_string()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(Action::Ls(conn)) => return block_on(list(conn)),
        Some(Action::Rm { id, conn }) => return block_on(remove(id, conn)),
        None => {}
    }
    crate::logging::init();
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let settings = Settings {
        data_dir: args.data_dir.unwrap_or_else(default_data_dir),
        api_listen: args.listen,
        dispatcher_listen: args.dispatcher_listen,
        join_listen: args.join_listen,
        api_names: args.api_names.clone(),
        max_body_bytes: args.max_body_bytes,
        ha: match (args.node_id, args.raft_listen) {
            (Some(node_id), Some(raft_listen)) => {
                if args.peers.is_empty() {
                    anyhow::bail!("--node-id: give the other servers with --peer ID=URL");
                }
                let advertise = match &args.raft_advertise {
                    Some(url) => {
                        parse_peer(&format!("{node_id}={url}"))
                            .map_err(|e| anyhow::anyhow!("--raft-advertise: {e}"))?;
                        url.clone()
                    }
                    None if raft_listen.ip().is_unspecified() => anyhow::bail!(
                        "--raft-advertise: --raft-listen {raft_listen} listens on every address; say where the other servers reach this one (https://HOST:PORT)"
                    ),
                    None => format!("https://{raft_listen}"),
                };
                let join_advertise =
                    join_advertise(args.join_advertise.as_deref(), args.join_listen, &advertise)
                        .map_err(|e| anyhow::anyhow!("--join-advertise: {e}"))?;
                Some(crate::control_plane::HaSettings {
                    node_id,
                    raft_listen,
                    peers: args.peers.iter().cloned().collect(),
                    join: args.join,
                    advertise,
                    join_advertise,
                })
            }
            _ => None,
        },
    };
    let cp = ControlPlane::start(&settings).await?;
    tracing::info!(
        api = %cp.api_url,
        dispatcher = %cp.dispatcher_url,
        cluster = %cp.cluster_id,
        kubeconfig = %cp.kubeconfig.display(),
        "control plane up, {}; use KUBECONFIG={}",
        if cp.api_url.starts_with("https://") {
            "the API with HTTPS and a bearer token"
        } else {
            "the API in dev mode: no authentication, loopback only"
        },
        cp.kubeconfig.display()
    );
    if let Some((url, _)) = &cp.join {
        tracing::info!(
            join = %url,
            "agents of other hosts join with: shoal agent --dispatcher {} --join-token \"$(cat {})\"",
            crate::control_plane::dialable(url),
            settings.data_dir.join("join-token").display()
        );
    }
    let why = stop_signal().await?;
    tracing::info!("{why}: shutting down");
    cp.stop().await?;
    tracing::info!("stopped");
    Ok(())
}

#[derive(serde::Deserialize)]
struct ServerList {
    servers: Vec<shoal_apiserver::Member>,
}

#[derive(serde::Deserialize)]
struct Voters {
    voters: Vec<u64>,
}

async fn list(conn: ConnArgs) -> anyhow::Result<ExitCode> {
    let conn = connect(&conn).await?;
    let req = http::Request::get("/shoal/v1/servers")
        .body(Vec::new())
        .context("building the request")?;
    let list: ServerList = conn
        .client
        .request(req)
        .await
        .map_err(|e| conn.explain(e))?;
    let mut table = crate::output::Table::new(["ID", "ROLE", "ADDRESS", "JOIN ADDRESS", ""]);
    for m in list.servers {
        let role = if m.leader { "leader" } else { "follower" };
        let here = if m.answering { "(answering)" } else { "" };
        table.row(vec![
            m.id.to_string().into(),
            role.into(),
            m.address.into(),
            m.join_address.unwrap_or_else(|| "-".into()).into(),
            here.into(),
        ]);
    }
    print!("{}", table.render(false));
    Ok(ExitCode::SUCCESS)
}

async fn remove(id: u64, conn: ConnArgs) -> anyhow::Result<ExitCode> {
    let conn = connect(&conn).await?;
    let req = http::Request::delete(format!("/shoal/v1/servers/{id}"))
        .body(Vec::new())
        .context("building the request")?;
    let voters: Voters = conn
        .client
        .request(req)
        .await
        .map_err(|e| conn.explain(e))?;
    println!("server {id} removed; the servers now: {:?}", voters.voters);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_join_address_told_to_agents() {
        let raft = "https://10.0.0.1:6446";
        assert_eq!(join_advertise(None, None, raft), Ok(None));
        assert_eq!(
            join_advertise(None, addr("10.0.0.1:6445"), raft)
                .unwrap()
                .as_deref(),
            Some("https://10.0.0.1:6445")
        );
        // Every address: the host the other servers reach this one by.
        assert_eq!(
            join_advertise(None, addr("0.0.0.0:6445"), "https://node-1.example:6446")
                .unwrap()
                .as_deref(),
            Some("https://node-1.example:6445")
        );
        assert_eq!(
            join_advertise(None, addr("[::]:6445"), "https://[fd00::1]:6446")
                .unwrap()
                .as_deref(),
            Some("https://[fd00::1]:6445")
        );
        assert_eq!(
            join_advertise(Some("https://lb.example:443/"), addr("0.0.0.0:6445"), raft)
                .unwrap()
                .as_deref(),
            Some("https://lb.example:443")
        );
        assert_eq!(join_advertise(None, addr("0.0.0.0:0"), raft), Ok(None));
        for bad in ["http://10.0.0.1:6445", "https://10.0.0.1", "10.0.0.1:6445"] {
            let e = join_advertise(Some(bad), addr("0.0.0.0:6445"), raft).unwrap_err();
            assert!(
                e.contains("https://HOST:PORT") || e.contains("not a URL"),
                "{bad}: {e}"
            );
        }
    }
}
