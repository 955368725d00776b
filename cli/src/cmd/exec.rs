//! `shoal exec TARGET -- COMMAND...`: run a command in a running task's
//! container.

use std::io::Write;
use std::process::ExitCode;

use std::io::IsTerminal;

use futures::{AsyncBufReadExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use shoal_apiserver::exec_ws::{CLOSE, RESIZE, STATUS, STDERR, STDIN, STDOUT, framed};

use crate::client::{ConnArgs, block_on, connect};
use crate::cmd::logs::{is_running, list_params, resolve, selected};
use crate::view;

/// Run a command in the container of a running task
///
/// Like `docker exec`, wherever the task runs: the command runs in the
/// container of a running task of the service — the lowest slot, unless a
/// slot (`web.2`) or a task is named — its output is printed as it comes
/// (its standard error on standard error), and `shoal exec` exits with its
/// exit code.
///
/// With -i, this command's standard input streams to the command until it
/// ends (end of file closes the command's). With -t, the command gets a
/// terminal, sized like this one and resized with it; with -it, this
/// terminal is in raw mode while the command runs, so keys like Ctrl-C and
/// Ctrl-D go to the command. Without -t, Ctrl-C stops the printing, not the
/// command (the engine cannot stop it).
///
/// Examples:
///   shoal exec web -- cat /etc/hostname
///   shoal exec -it web -- sh
///   shoal exec web.2 -- sh -c 'ps; df -h'
///   shoal exec -i web -- sh -c 'cat > /tmp/app.conf' < app.conf
///   shoal exec web-2-x7k2p -- env
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A service, a slot of one (`web.2`), or a task name.
    target: String,
    /// Pass this command's standard input to the command, as it comes.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal (for shells and full-screen programs).
    #[arg(short, long)]
    tty: bool,
    /// The program and its arguments, after `--` (not through a shell).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(exec(args))
}

/// What the command's exit code becomes for this process (as a shell
/// reports it: modulo 256; unknown is 255).
fn exit_code(code: i64) -> u8 {
    u8::try_from(code.rem_euclid(256)).unwrap_or(255)
}

async fn exec(args: Args) -> anyhow::Result<ExitCode> {
    if args.tty && args.interactive && !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "-t: the input device is not a terminal; drop -t (-i alone passes piped input)"
        );
    }
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
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) if s.code == 502 || s.code == 400 => {
            anyhow::anyhow!("task {name}: {}", s.message)
        }
        other => conn.explain(other),
    };
    if args.interactive || args.tty {
        return attached(&conn, task, &args, refused).await;
    }
    let body = serde_json::to_vec(&serde_json::json!({ "command": args.command }))?;
    let req = http::Request::post(conn.task_path(task, "exec"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)?;
    let reader = conn.client.request_stream(req).await.map_err(refused)?;
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

/// The query of an attached exec: the command, and what to attach.
fn exec_query(command: &[String], stdin: bool, tty: bool) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for c in command {
        q.append_pair("command", c);
    }
    q.append_pair("stdin", if stdin { "true" } else { "false" });
    q.append_pair("stdout", "true");
    q.append_pair("stderr", if tty { "false" } else { "true" });
    q.append_pair("tty", if tty { "true" } else { "false" });
    q.finish()
}

/// A resize message for this terminal, if it is one with a size.
fn resize_message() -> Option<Message> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()
        .filter(|w| w.ws_col > 0 && w.ws_row > 0)?;
    let body = serde_json::json!({ "Width": size.ws_col, "Height": size.ws_row });
    Some(framed(RESIZE, body.to_string().as_bytes()))
}

/// The exit code a final `Status` gives, or the error it reports.
fn outcome(status: &serde_json::Value) -> Result<i64, String> {
    if status["status"] == "Success" {
        return Ok(0);
    }
    let code = status["details"]["causes"].as_array().and_then(|causes| {
        causes
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse().ok())
    });
    code.ok_or_else(|| {
        status["message"]
            .as_str()
            .unwrap_or("the command failed")
            .to_string()
    })
}

/// This terminal in raw mode until dropped (keys go to the command as
/// typed, unechoed: its terminal echoes).
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(std::io::stdin(), OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// Reads this process's standard input on a thread of its own (a blocked
/// read must not hold up the exit): chunks, then `None` at its end.
fn read_stdin() -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// `exec -i`/`-t`: the command over a WebSocket (Kubernetes' channel
/// protocol), this process's input streamed to it.
async fn attached(
    conn: &crate::client::Conn,
    task: &shoal_crds::Task,
    args: &Args,
    refused: impl Fn(kube::Error) -> anyhow::Error,
) -> anyhow::Result<ExitCode> {
    let name = task.metadata.name.clone().unwrap_or_default();
    let path = format!(
        "{}?{}",
        conn.task_path(task, "exec"),
        exec_query(&args.command, args.interactive, args.tty)
    );
    let req = http::Request::get(path).body(Vec::new())?;
    let ws = conn.client.connect(req).await.map_err(refused)?;
    let can_close = ws.supports_stream_close();
    let (mut sink, mut stream) = ws.into_stream().split();
    let raw = if args.tty && args.interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if args.tty
        && let Some(m) = resize_message()
    {
        sink.send(m).await?;
    }
    let mut input = args.interactive.then(read_stdin);
    let mut resized = if args.tty {
        Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::window_change(),
        )?)
    } else {
        None
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let mut status = None;
    loop {
        let next_input = async {
            match input.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let next_resize = async {
            match resized.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => match b.split_first() {
                    Some((&STDOUT, data)) => {
                        out.write_all(data)?;
                        out.flush()?;
                    }
                    Some((&STDERR, data)) => {
                        err.write_all(data)?;
                        err.flush()?;
                    }
                    Some((&STATUS, data)) => {
                        status = serde_json::from_slice::<serde_json::Value>(data).ok();
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            chunk = next_input => {
                // The end of input ends the command's. A send that fails
                // (the command ended without reading all of it) stops the
                // input; the outcome may still come.
                let sent = match chunk.flatten() {
                    Some(data) => sink.send(framed(STDIN, &data)).await,
                    None => {
                        input = None;
                        if can_close {
                            sink.send(Message::Binary(vec![CLOSE, STDIN].into())).await
                        } else {
                            Ok(())
                        }
                    }
                };
                if sent.is_err() {
                    input = None;
                }
            },
            Some(()) = next_resize => {
                if let Some(m) = resize_message() {
                    sink.send(m).await?;
                }
            }
        }
    }
    drop(raw);
    match status.as_ref().map(outcome) {
        Some(Ok(code)) => Ok(ExitCode::from(exit_code(code))),
        Some(Err(message)) => anyhow::bail!("task {name}: {message}"),
        None => anyhow::bail!(
            "task {name}: the answer ended before the command did (its host went away?)"
        ),
    }
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

    #[test]
    fn the_query_names_the_command_and_what_is_attached() {
        let q = exec_query(&["sh".into(), "-c".into(), "echo a&b".into()], true, true);
        assert_eq!(
            q,
            "command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=true&stderr=false&tty=true"
        );
    }

    #[test]
    fn the_final_status_gives_the_exit_code_or_the_error() {
        use serde_json::json;
        assert_eq!(outcome(&json!({"status": "Success"})), Ok(0));
        let failed = json!({"status": "Failure", "message": "x",
            "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}});
        assert_eq!(outcome(&failed), Ok(42));
        let lost = json!({"status": "Failure", "message": "the host stopped answering"});
        assert_eq!(outcome(&lost), Err("the host stopped answering".into()));
    }
}
