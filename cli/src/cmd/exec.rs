//! `shoal exec TARGET -- COMMAND...`: run a command in a running task's
//! container.

use std::io::Write;
use std::process::ExitCode;

use futures::{AsyncBufReadExt, StreamExt};

use crate::client::{ConnArgs, block_on, connect};
use crate::cmd::logs::{is_running, list_params, resolve, selected};
use crate::view;

/// Run a command in the container of a running task
///
/// Like `docker exec` without -t, wherever the task runs: the command runs
/// in the container of a running task of the service — the lowest slot,
/// unless a slot (`web.2`) or a task is named — its output is printed as it
/// comes (its standard error on standard error), and `shoal exec` exits with
/// its exit code. With -i, this command's standard input (up to 2 MiB) is
/// the command's; no terminal. Ctrl-C stops the printing, not the command
/// (the engine cannot stop it).
///
/// Examples:
///   shoal exec web -- cat /etc/hostname
///   shoal exec web.2 -- sh -c 'ps; df -h'
///   shoal exec -i web -- sh -c 'cat > /tmp/app.conf' < app.conf
///   shoal exec web-2-x7k2p -- env
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A service, a slot of one (`web.2`), or a task name.
    target: String,
    /// Pass this command's standard input (up to 2 MiB) to the command.
    #[arg(short, long)]
    interactive: bool,
    /// The program and its arguments, after `--` (not through a shell).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(exec(args))
}

/// The most standard input passed along (its base64 stays within the API's
/// 3 MiB request limit).
const MAX_STDIN: u64 = 2 << 20;

/// What the command's exit code becomes for this process (as a shell
/// reports it: modulo 256; unknown is 255).
fn exit_code(code: i64) -> u8 {
    u8::try_from(code.rem_euclid(256)).unwrap_or(255)
}

async fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let conn = connect(&args.conn).await?;
    let sel = resolve(&conn, &args.target).await?;
    let mut tasks: Vec<_> = conn
        .namespaced::<shoal_crds::Task>()
        .list(&list_params(&sel))
        .await
        .map_err(|e| conn.explain(e))?
        .items
        .into_iter()
        .filter(|t| selected(&sel, t) && is_running(t))
        .collect();
    view::sort_tasks(&mut tasks);
    let Some(task) = tasks.first() else {
        anyhow::bail!("{} has no running task to run the command in", args.target);
    };
    let name = task.metadata.name.clone().unwrap_or_default();
    let mut request = serde_json::json!({ "command": args.command });
    if args.interactive {
        let mut input = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::io::stdin(), MAX_STDIN + 1),
            &mut input,
        )?;
        if input.len() as u64 > MAX_STDIN {
            anyhow::bail!(
                "--interactive: standard input is larger than 2 MiB; copy larger data another way (a volume, an image)"
            );
        }
        use base64::Engine as _;
        request["stdin"] = base64::engine::general_purpose::STANDARD
            .encode(&input)
            .into();
    }
    let body = serde_json::to_vec(&request)?;
    let req = http::Request::post(conn.task_path(task, "exec"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)?;
    let reader = conn.client.request_stream(req).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 502 || s.code == 400 => {
            anyhow::anyhow!("task {name}: {}", s.message)
        }
        other => conn.explain(other),
    })?;
    let mut lines = reader.lines();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    while let Some(line) = lines.next().await {
        let line = line?;
        let frame: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("unreadable answer {line:?}: {e}"))?;
        if let Some(text) = frame["stdout"].as_str() {
            out.write_all(text.as_bytes())?;
            out.flush()?;
        } else if let Some(text) = frame["stderr"].as_str() {
            err.write_all(text.as_bytes())?;
        } else if let Some(code) = frame["exitCode"].as_i64() {
            return Ok(ExitCode::from(exit_code(code)));
        }
    }
    anyhow::bail!("task {name}: the answer ended before the command did (its host went away?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_a_shell_reports_them() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3), 3);
        assert_eq!(exit_code(137), 137);
        assert_eq!(exit_code(256 + 7), 7);
        assert_eq!(exit_code(-1), 255);
    }
}
