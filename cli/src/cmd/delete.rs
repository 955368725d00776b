//! `shoal delete -f FILE | service NAME… [--wait]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use kube::api::DeleteParams;
use shoal_crds::{Host, Service, Validated};

use crate::client::{Conn, ConnArgs, EXIT_FAILED, block_on, connect};

/// Delete services (their tasks and containers go with them)
///
/// Either the objects named in manifests (`-f FILE|DIR|-`), or
/// `service NAME…`. A service's containers are stopped and removed, then
/// its Tasks, then the Service itself. With `--wait`, returns only once
/// the service is gone — every container and task included.
///
/// Exit status: 0 deleted; 1 not found (unless --ignore-not-found), or the
/// API failed; 3 --wait timed out.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `service` (then NAMEs).
    #[arg(value_name = "KIND", required_unless_present = "files", requires = "names", value_parser = ["service", "services", "svc", "ssvc"])]
    kind: Option<String>,
    /// Names of the services.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Delete the objects named in these manifests (file, directory or `-`).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE|DIR|-",
        conflicts_with = "kind"
    )]
    files: Vec<PathBuf>,
    /// Wait until the services and all their tasks and containers are gone.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, e.g. `60s`, `5m`.
    #[arg(long, default_value = "2m", value_parser = crate::cmd::apply::parse_timeout)]
    timeout: Duration,
    /// Succeed when an object does not exist.
    #[arg(long)]
    ignore_not_found: bool,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(delete(args))
}

#[derive(Debug, Clone)]
enum Target {
    Service { namespace: String, name: String },
    Host(String),
}

impl Target {
    fn label(&self) -> String {
        match self {
            Self::Service { name, .. } => format!("service/{name}"),
            Self::Host(n) => format!("host/{n}"),
        }
    }
}

async fn delete(args: Args) -> anyhow::Result<ExitCode> {
    let mut targets = Vec::new();
    let mut docs = Vec::new();
    for path in &args.files {
        docs.extend(shoal_crds::manifest::read_path(path)?);
    }
    let conn = connect(&args.conn).await?;
    for doc in docs {
        // Only the identity matters for a delete: take it from the
        // validated object when possible, else from the raw document.
        let (kind, name, ns) = match shoal_crds::validate(&doc.value) {
            Ok(Validated::Service(s)) => (
                "Service",
                s.metadata.name.clone(),
                s.metadata.namespace.clone(),
            ),
            Ok(Validated::Host(h)) => ("Host", h.metadata.name.clone(), None),
            Ok(Validated::Task(_)) => {
                eprintln!(
                    "{}: skipping a Task: tasks are deleted by the control plane",
                    doc.source
                );
                continue;
            }
            Err(_) => {
                let v = &doc.value;
                let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
                let meta = v.get("metadata");
                let name = meta
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
                    .map(str::to_owned);
                let ns = meta
                    .and_then(|m| m.get("namespace"))
                    .and_then(|n| n.as_str())
                    .map(str::to_owned);
                match kind {
                    "Service" => ("Service", name, ns),
                    "Host" => ("Host", name, None),
                    other => anyhow::bail!("{}: cannot delete kind {other:?}", doc.source),
                }
            }
        };
        let Some(name) = name else {
            anyhow::bail!("{}: metadata.name is missing", doc.source);
        };
        targets.push(if kind == "Host" {
            Target::Host(name)
        } else {
            Target::Service {
                namespace: ns.unwrap_or_else(|| conn.namespace.clone()),
                name,
            }
        });
    }
    for name in &args.names {
        targets.push(Target::Service {
            namespace: conn.namespace.clone(),
            name: name.clone(),
        });
    }
    if targets.is_empty() {
        anyhow::bail!("nothing to delete");
    }
    let mut missing = false;
    let mut pending = Vec::new();
    for t in &targets {
        let res = match t {
            Target::Service { namespace, name } => conn
                .in_namespace::<Service>(namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
            Target::Host(n) => conn
                .cluster::<Host>()
                .delete(n, &DeleteParams::default())
                .await
                .map(|_| ()),
        };
        match res {
            Ok(()) => {
                if args.wait {
                    pending.push(t.clone());
                } else {
                    println!("{} deleted", t.label());
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if !args.ignore_not_found {
                    eprintln!("error: {} not found", t.label());
                    missing = true;
                }
            }
            Err(e) => return Err(conn.explain(e)),
        }
    }
    if !pending.is_empty() && !wait_gone(&conn, &pending, args.timeout).await? {
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    Ok(if missing {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Polls until every target is gone; false on timeout.
async fn wait_gone(conn: &Conn, targets: &[Target], timeout: Duration) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut left: Vec<Target> = targets.to_vec();
    loop {
        let mut still = Vec::new();
        for t in left {
            let exists = match &t {
                Target::Service { namespace, name } => conn
                    .in_namespace::<Service>(namespace)
                    .get_opt(name)
                    .await
                    .map_err(|e| conn.explain(e))?
                    .is_some(),
                Target::Host(n) => conn
                    .cluster::<Host>()
                    .get_opt(n)
                    .await
                    .map_err(|e| conn.explain(e))?
                    .is_some(),
            };
            if exists {
                still.push(t);
            } else {
                println!("{} deleted", t.label());
            }
        }
        if still.is_empty() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            for t in &still {
                eprintln!(
                    "timed out after {}s: {} is still being deleted (its tasks and containers are stopping)",
                    timeout.as_secs(),
                    t.label()
                );
            }
            return Ok(false);
        }
        left = still;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
