//! The `exec` subresource of tasks: `POST .../namespaces/NS/tasks/NAME/exec`
//! with `{"command": ["ls", "-l"]}` runs a command in the task's running
//! container, like `docker exec` without a TTY; `"stdin"` (base64) is
//! written to its standard input, which is then closed. The answer streams
//! JSON lines as the output comes — `{"stdout": "…"}`, `{"stderr": "…"}`
//! (text, invalid UTF-8 replaced) — and ends with `{"exitCode": N}`; a
//! stream that ends without one lost its host midway. Only the admin token
//! may run commands (the read-only one gets 403, as for any POST).
//!
//! Interactive commands and terminals go over a WebSocket instead: `GET`
//! on the same path (see `exec_ws`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::json;
use shoal_crds::Task;

use crate::App;
use crate::error::ApiError;
use crate::logs::LogError;
use crate::resources::Target;

/// What a command run in a task's container gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Standard output.
    Stdout(Vec<u8>),
    /// Standard error.
    Stderr(Vec<u8>),
    /// It ended with this exit code.
    Exit(i64),
}

/// A command to run in a task's container.
pub struct ExecCall {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Give it a terminal (its output is then all `Stdout`).
    pub tty: bool,
    /// Its input: standard input, its end, terminal sizes; `None`: no
    /// standard input.
    pub input: Option<BoxStream<'static, ExecInput>>,
}

impl std::fmt::Debug for ExecCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecCall")
            .field("command", &self.command)
            .field("tty", &self.tty)
            .field("input", &self.input.is_some())
            .finish()
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub cols: u16,
    /// Rows.
    pub rows: u16,
}

/// Input to a running command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    /// Bytes for its standard input.
    Stdin(Vec<u8>),
    /// The end of its standard input.
    Close,
    /// Its terminal's new size.
    Resize(TermSize),
}

/// Where commands run.
pub trait TaskExec: Send + Sync + std::fmt::Debug + 'static {
    /// Runs the command in the task's running container. Errors as for
    /// logs.
    fn exec<'a>(
        &'a self,
        task: &'a Task,
        call: ExecCall,
    ) -> BoxFuture<'a, Result<BoxStream<'static, ExecEvent>, LogError>>;
}

/// One JSON line of the answer.
pub fn frame(e: &ExecEvent) -> Bytes {
    let v = match e {
        ExecEvent::Stdout(b) => json!({ "stdout": String::from_utf8_lossy(b) }),
        ExecEvent::Stderr(b) => json!({ "stderr": String::from_utf8_lossy(b) }),
        ExecEvent::Exit(code) => json!({ "exitCode": code }),
    };
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// The command (a non-empty list of strings), or why it is not one.
pub(crate) fn check_command(command: Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let command = command.ok_or_else(|| {
        ApiError::bad_request(
            "command: required, a list of strings (the program and its arguments)",
        )
    })?;
    if command.first().is_none_or(String::is_empty) {
        return Err(ApiError::bad_request(
            "command: the program to run must be given",
        ));
    }
    Ok(command)
}

/// The command of the request body (a non-empty list of strings) and its
/// standard input (`stdin`, base64; absent: none).
fn command_of(body: &[u8]) -> Result<(Vec<String>, Vec<u8>), ApiError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let command = check_command(
        v.get("command")
            .and_then(|c| serde_json::from_value(c.clone()).ok()),
    )?;
    let stdin = match v.get("stdin") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(b64)) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ApiError::bad_request(format!("stdin: not base64: {e}")))?
        }
        Some(_) => return Err(ApiError::bad_request("stdin: a base64 string")),
    };
    Ok((command, stdin))
}

pub(crate) async fn serve(
    app: &Arc<App>,
    t: &Target<'_>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let (command, stdin) = command_of(body)?;
    let Some(provider) = app.cfg.exec.clone() else {
        return Err(crate::logs::not_served("commands"));
    };
    let task = crate::logs::placed_task(app, t, "it has no container to run in").await?;
    // All of its standard input is here: given, then closed.
    let input = (!stdin.is_empty())
        .then(|| futures::stream::iter([ExecInput::Stdin(stdin), ExecInput::Close]).boxed());
    let call = ExecCall {
        command,
        tty: false,
        input,
    };
    let events = provider
        .exec(&task, call)
        .await
        .map_err(crate::logs::api_error)?;
    let body = events.map(|e| Ok::<_, Infallible>(frame(&e)));
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_are_json_lines() {
        assert_eq!(
            frame(&ExecEvent::Stdout(b"hi\n".to_vec())),
            "{\"stdout\":\"hi\\n\"}\n"
        );
        assert_eq!(
            frame(&ExecEvent::Stderr(vec![0xff, b'x'])),
            "{\"stderr\":\"\u{fffd}x\"}\n"
        );
        assert_eq!(frame(&ExecEvent::Exit(3)), "{\"exitCode\":3}\n");
    }

    #[test]
    fn the_command_is_a_non_empty_list() {
        let (command, stdin) = command_of(br#"{"command":["ls","-l"]}"#).unwrap();
        assert_eq!(command, ["ls", "-l"]);
        assert!(stdin.is_empty());
        let (_, stdin) = command_of(br#"{"command":["cat"],"stdin":"aGk="}"#).unwrap();
        assert_eq!(stdin, b"hi");
        for bad in [
            &br#"{}"#[..],
            br#"{"command":"ls"}"#,
            br#"{"command":[]}"#,
            b"nope",
            br#"{"command":["cat"],"stdin":"%%"}"#,
            br#"{"command":["cat"],"stdin":3}"#,
        ] {
            let e = command_of(bad).unwrap_err();
            assert_eq!(e.code, 400, "{}", String::from_utf8_lossy(bad));
        }
    }
}
