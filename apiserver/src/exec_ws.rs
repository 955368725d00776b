//! Interactive commands: `GET .../namespaces/NS/tasks/NAME/exec
//! ?command=sh&stdin=true&tty=true` upgraded to a WebSocket that speaks
//! Kubernetes' channel protocol (`v5.channel.k8s.io`, or
//! `v4.channel.k8s.io`), as `kubectl exec` does with pods. Every binary
//! message starts with its channel: 0 standard input, 1 standard output, 2
//! standard error, 3 the outcome (a `Status`, once, at the end: `Success`,
//! or `Failure` with the exit code as cause `ExitCode`), 4 terminal size
//! (`{"Width": 80, "Height": 24}`), and with v5, 255 closes a channel
//! (`[255, 0]`: the end of standard input). With `tty=true` the command
//! gets a terminal and all output comes on channel 1.
//!
//! Errors found before the command starts (no such task, not running,
//! host unreachable) are plain HTTP answers with a `Status`, as for any
//! request. Only the admin token may run commands, read-only tokens get
//! 403 here too although the method is `GET`.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
use tracing::Instrument;

use crate::App;
use crate::error::ApiError;
use crate::exec::{ExecCall, ExecEvent, ExecInput, TermSize};
use crate::resources::{Query, Target};

/// The subprotocols served, best first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Standard input (client to server).
pub const STDIN: u8 = 0;
/// Standard output (with a terminal, all output).
pub const STDOUT: u8 = 1;
/// Standard error.
pub const STDERR: u8 = 2;
/// The outcome: a `Status`, once, at the end.
pub const STATUS: u8 = 3;
/// A terminal size (`{"Width": W, "Height": H}`).
pub const RESIZE: u8 = 4;
/// v5: closes the channel named by the next byte.
pub const CLOSE: u8 = 255;

/// How long a client has to close after the outcome was sent (it may
/// still be sending input the command never read).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Input messages that may wait for a slow command before the reader
/// waits too (and so the client, through the connection's flow control).
const INPUT_BUFFER: usize = 16;

/// The subprotocol to answer with: the first of ours the client offers.
fn pick_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_ascii_lowercase())
        .collect();
    PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

/// Whether the request asks for a WebSocket.
fn wants_websocket(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

pub(crate) async fn serve(
    app: &Arc<App>,
    t: &Target<'_>,
    q: &Query,
    headers: &HeaderMap,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response, ApiError> {
    let (Some(upgrade), true) = (upgrade, wants_websocket(headers)) else {
        return Err(ApiError::bad_request(
            "exec with GET needs a WebSocket (Upgrade: websocket); without one, POST {\"command\": [...]}",
        ));
    };
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("Sec-WebSocket-Key: required for a WebSocket"))?;
    let Some(protocol) = pick_protocol(headers) else {
        return Err(ApiError::bad_request(format!(
            "Sec-WebSocket-Protocol: exec speaks {}",
            PROTOCOLS.join(" or ")
        )));
    };
    let command = q.all("command").into_iter().map(str::to_owned).collect();
    let command = crate::exec::check_command(Some(command))?;
    let (stdin, tty) = (q.flag("stdin"), q.flag("tty"));
    let Some(provider) = app.cfg.exec.clone() else {
        return Err(crate::logs::not_served("commands"));
    };
    let task = crate::logs::placed_task(app, t, "it has no container to run in").await?;
    // Input flows whenever there is some to give: standard input, or a
    // terminal's sizes.
    let (input_tx, input_rx) = mpsc::channel(INPUT_BUFFER);
    let input = (stdin || tty)
        .then(|| tokio_stream_of(input_rx))
        .map(StreamExt::boxed);
    let call = ExecCall {
        command,
        tty,
        input,
    };
    let events = provider
        .exec(&task, call)
        .await
        .map_err(crate::logs::api_error)?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let session = Session {
        v5: protocol == PROTOCOLS[0],
        stdin,
        input: input_tx,
        shutdown: app.shutdown.clone(),
    };
    let name = task.metadata.name.clone().unwrap_or_default();
    tokio::spawn(
        async move {
            match upgrade.await {
                Ok(io) => {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None)
                        .await;
                    session.run(ws, events).await;
                }
                Err(e) => tracing::debug!(error = %e, "exec: the WebSocket upgrade failed"),
            }
        }
        .instrument(tracing::info_span!("exec-ws", task = %name)),
    );
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

/// A receiver as a stream (without another dependency).
fn tokio_stream_of<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

struct Session {
    v5: bool,
    stdin: bool,
    input: mpsc::Sender<ExecInput>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Session {
    async fn run<S>(
        self,
        ws: WebSocketStream<S>,
        mut events: futures::stream::BoxStream<'static, ExecEvent>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let (mut sink, mut stream) = ws.split();
        let (v5, stdin, input) = (self.v5, self.stdin, self.input);
        // The client's messages become the command's input; its end (or
        // the client's going away) ends that input.
        let reader = async {
            while let Some(msg) = stream.next().await {
                let data = match msg {
                    Ok(Message::Binary(b)) => b,
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => continue,
                };
                let Some(i) = input_of(&data, v5, stdin) else {
                    continue;
                };
                if input.send(i).await.is_err() {
                    break;
                }
            }
        };
        // The command's output goes to the client; its end, the outcome.
        let writer = async {
            let status = loop {
                let Some(e) = events.next().await else {
                    break failure(
                        "InternalError",
                        "the task's host stopped answering before the command ended".into(),
                        None,
                    );
                };
                let msg = match e {
                    ExecEvent::Stdout(b) => framed(STDOUT, &b),
                    ExecEvent::Stderr(b) => framed(STDERR, &b),
                    ExecEvent::Exit(0) => break json!({"metadata": {}, "status": "Success"}),
                    ExecEvent::Exit(code) => {
                        break failure(
                            "NonZeroExitCode",
                            format!("command terminated with non-zero exit code: {code}"),
                            Some(code),
                        );
                    }
                };
                if sink.send(msg).await.is_err() {
                    return;
                }
            };
            let _ = sink
                .send(framed(STATUS, status.to_string().as_bytes()))
                .await;
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "".into(),
                })))
                .await;
        };
        // A WebSocket has no half-close (the end of standard input is a
        // message): when the client's side ends, the client is gone, and
        // so is the command's answer (the agent hangs up a terminal).
        let mut shutdown = self.shutdown;
        let answered = tokio::select! {
            () = writer => true,
            () = reader => false,
            _ = shutdown.wait_for(|v| *v) => false,
        };
        if answered {
            // The client may still be sending input the command never
            // read: read it (dropped) until the client closes too, or it
            // would get a reset instead of the outcome.
            let drain = async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
        }
    }
}

/// A message on `channel`.
pub fn framed(channel: u8, data: &[u8]) -> Message {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    Message::Binary(m.into())
}

/// The outcome `Status` of a command that failed.
fn failure(reason: &str, message: String, code: Option<i64>) -> serde_json::Value {
    let mut s = json!({
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    });
    if let Some(code) = code {
        s["details"] = json!({"causes": [{"reason": "ExitCode", "message": code.to_string()}]});
    }
    s
}

/// The command input a client message means, if any: standard input (if
/// asked for), a resize, or (v5) the close of standard input.
fn input_of(data: &[u8], v5: bool, stdin: bool) -> Option<ExecInput> {
    let (channel, rest) = data.split_first()?;
    match *channel {
        STDIN if stdin && !rest.is_empty() => Some(ExecInput::Stdin(rest.to_vec())),
        RESIZE => {
            let v: serde_json::Value = serde_json::from_slice(rest).ok()?;
            let dim = |k: &str| {
                v.get(k)
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
            };
            Some(ExecInput::Resize(TermSize {
                cols: dim("Width")?,
                rows: dim("Height")?,
            }))
        }
        CLOSE if v5 && stdin && rest.first() == Some(&STDIN) => Some(ExecInput::Close),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_best_offered_protocol_is_picked() {
        let mut h = HeaderMap::new();
        assert_eq!(pick_protocol(&h), None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(pick_protocol(&h), Some("v5.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io,v4.channel.k8s.io"),
        );
        assert_eq!(pick_protocol(&h), Some("v4.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("channel.k8s.io"),
        );
        assert_eq!(pick_protocol(&h), None);
    }

    #[test]
    fn client_messages_become_input() {
        assert_eq!(
            input_of(b"\x00ls\n", true, true),
            Some(ExecInput::Stdin(b"ls\n".to_vec()))
        );
        // Standard input not asked for: dropped.
        assert_eq!(input_of(b"\x00ls\n", true, false), None);
        assert_eq!(
            input_of(br#"\x04{"Width":120,"Height":40}"#.as_slice(), true, true),
            None,
            "the channel is a byte, not text"
        );
        let mut resize = vec![RESIZE];
        resize.extend(br#"{"Width":120,"Height":40}"#);
        assert_eq!(
            input_of(&resize, false, false),
            Some(ExecInput::Resize(TermSize {
                cols: 120,
                rows: 40
            }))
        );
        let mut bad = vec![RESIZE];
        bad.extend(br#"{"Width":-1,"Height":40}"#);
        assert_eq!(input_of(&bad, true, true), None);
        assert_eq!(
            input_of(&[CLOSE, STDIN], true, true),
            Some(ExecInput::Close)
        );
        // v4 has no close signal.
        assert_eq!(input_of(&[CLOSE, STDIN], false, true), None);
        assert_eq!(input_of(&[], true, true), None);
    }

    #[test]
    fn a_non_zero_exit_is_a_failure_naming_the_code() {
        let s = failure("NonZeroExitCode", "x".into(), Some(7));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "7");
    }

    #[test]
    fn only_websocket_upgrades_are_served() {
        let mut h = HeaderMap::new();
        assert!(!wants_websocket(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(wants_websocket(&h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(&h));
    }
}
