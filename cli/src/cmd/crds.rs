//! `shoal crds`: print the CustomResourceDefinitions of the shoal.dev group.

use std::process::ExitCode;

/// Print the CustomResourceDefinitions as YAML
///
/// The Service, Task and Host definitions of group shoal.dev, e.g. to install
/// them in a Kubernetes cluster with `shoal crds | kubectl apply -f -`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_: Args) -> anyhow::Result<ExitCode> {
    let mut out = String::new();
    for crd in shoal_crds::crd::all() {
        out.push_str("---\n");
        out.push_str(&shoal_crds::crd::to_yaml(&crd)?);
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
