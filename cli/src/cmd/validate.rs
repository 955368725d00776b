//! `shoal validate -f FILE|DIR|-`: check manifests offline with the same
//! rules the API server applies.

use std::path::PathBuf;
use std::process::ExitCode;

use shoal_crds::{Validated, validate};

/// Check manifests offline, with the API server's rules
///
/// Every problem is printed with its field path and reason, e.g.
/// `spec.template.resources.limits.memory: "300m" is ambiguous ...`.
///
/// Exit status: 0 if every document is valid, 2 if any is not, 1 if a file
/// cannot be read or parsed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest file, directory of `.yaml`/`.yml`/`.json` files, or `-` for
    /// standard input. Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    files: Vec<PathBuf>,
    /// Print nothing for valid documents.
    #[arg(short, long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut bad = 0usize;
    let mut total = 0usize;
    for path in &args.files {
        for doc in shoal_crds::manifest::read_path(path)? {
            total += 1;
            match validate(&doc.value) {
                Ok(v) => {
                    if !args.quiet {
                        let (kind, name) = match &v {
                            Validated::Service(s) => ("service", s.metadata.name.clone()),
                            Validated::Task(t) => ("task", t.metadata.name.clone()),
                            Validated::Host(h) => ("host", h.metadata.name.clone()),
                        };
                        println!(
                            "{}: {kind}/{} is valid",
                            doc.source,
                            name.unwrap_or_default()
                        );
                    }
                }
                Err(errs) => {
                    bad += 1;
                    for e in errs.0 {
                        eprintln!("{}: {e}", doc.source);
                    }
                }
            }
        }
    }
    if total == 0 {
        anyhow::bail!("no documents found in {:?}", args.files);
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
