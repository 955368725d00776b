//! `shoal join-token`: how another machine joins this cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::control_plane::default_data_dir;

/// Print the command that makes another machine a host of this cluster
///
/// Reads the control plane's data directory: the join token (made when
/// `shoal up` or `shoal server` first ran with --join-listen) and the
/// address it listened on. Run the printed command on the other machine,
/// next to its Docker engine. Anyone with the token can join a host: keep
/// it as you would a password.
///
/// Examples:
///   shoal join-token                 # the whole `shoal agent` command
///   shoal join-token -q              # the token alone (for scripts)
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The control plane's data directory. Default: /var/lib/shoal for
    /// root, else ~/.local/share/shoal.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print only the token.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.data_dir.unwrap_or_else(default_data_dir);
    let token_file = dir.join("join-token");
    let token = match std::fs::read_to_string(&token_file) {
        Ok(t) => t.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "{} has no join token: start the control plane with --join-listen ADDRESS (e.g. `shoal up --join-listen 0.0.0.0:6445`) to let other machines join",
            dir.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", token_file.display()));
        }
    };
    if args.quiet {
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    let address = std::fs::read_to_string(dir.join("join-address"))
        .map(|a| crate::control_plane::dialable(a.trim()))
        .unwrap_or_else(|_| "https://<this host's address>:6445".into());
    println!("To add a host to this cluster, run on it (next to its Docker engine):");
    println!();
    println!("  shoal agent --dispatcher {address} --join-token {token}");
    println!();
    println!("Add --host-name NAME to name it otherwise than its machine.");
    Ok(ExitCode::SUCCESS)
}
