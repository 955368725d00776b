//! `shoal scale SERVICE=N …`.

use std::process::ExitCode;

use kube::api::{Patch, PatchParams};
use shoal_crds::{Service, ServiceMode};

use crate::client::{ConnArgs, block_on, connect};

/// Set the number of replicas of services
///
/// Each argument is SERVICE=N, e.g. `shoal scale web=5 api=2`. Only
/// Replicated services can be scaled (a Global service runs one task per
/// eligible host). Follow the result with `shoal ps SERVICE` or
/// `shoal get services -w`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// SERVICE=REPLICAS, repeatable.
    #[arg(required = true, value_name = "SERVICE=N", value_parser = parse_target)]
    targets: Vec<(String, i32)>,
    #[command(flatten)]
    conn: ConnArgs,
}

fn parse_target(s: &str) -> Result<(String, i32), String> {
    let (name, n) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SERVICE=N"))?;
    let n: i32 = n
        .parse()
        .map_err(|_| format!("{s:?}: {n:?} is not a number of replicas"))?;
    if n < 0 {
        return Err(format!("{s:?}: replicas cannot be negative"));
    }
    if name.is_empty() {
        return Err(format!("{s:?}: the service name is missing"));
    }
    Ok((name.to_string(), n))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(scale(args))
}

async fn scale(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let api = conn.namespaced::<Service>();
    let mut failed = false;
    for (name, n) in &args.targets {
        match api.get_opt(name).await.map_err(|e| conn.explain(e))? {
            None => {
                eprintln!(
                    "error: service {name:?} not found in namespace {}",
                    conn.namespace
                );
                failed = true;
                continue;
            }
            Some(s) if s.spec.mode() == ServiceMode::Global => {
                eprintln!(
                    "error: service {name:?} is Global (one task per host): it cannot be scaled"
                );
                failed = true;
                continue;
            }
            Some(_) => {}
        }
        let patch = serde_json::json!({ "spec": { "replicas": n } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| conn.explain(e))?;
        println!("service/{name} scaled to {n}");
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn targets_are_service_equals_count() {
        assert_eq!(parse_target("web=5"), Ok(("web".into(), 5)));
        assert!(parse_target("web").is_err());
        assert!(parse_target("web=-1").is_err());
        assert!(parse_target("web=x").is_err());
        assert!(parse_target("=3").is_err());
    }
}
