//! `shoal completion bash|zsh|fish`.

use std::process::ExitCode;

/// Print a shell completion script
///
/// Load it in the current shell, e.g. `source <(shoal completion bash)`, or
/// install it: `shoal completion bash > /etc/bash_completion.d/shoal`,
/// `shoal completion zsh > "${fpath[1]}/_shoal"`,
/// `shoal completion fish > ~/.config/fish/completions/shoal.fish`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

pub fn run(args: Args, mut cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "shoal", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
