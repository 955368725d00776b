//! `docker exec` on the engine's own attach connection.
//!
//! bollard's `start_exec` splits a terminal's output into lines, and holds a
//! shell's prompt (no newline) until the next one, and takes output
//! starting with bytes 0–2 for a stream header. Here the exec is started
//! with the engine's connection upgrade (`POST /exec/ID/start`,
//! `Upgrade: tcp`) and the raw stream read directly: a terminal's bytes as
//! they come, or, without a terminal, the engine's frames (an 8-byte header
//! naming stdout or stderr and the length, then the bytes).

use std::path::PathBuf;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::engine::{ExecOutput, LogEntry, LogOrigin};
use crate::error::EngineError;

/// Where the engine's API is reached for an attach connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEndpoint {
    /// A unix socket.
    Unix(PathBuf),
    /// Plain TCP (`tcp://HOST:PORT` without TLS).
    Tcp(String),
    /// Not reachable this way (TLS): why.
    Unsupported(String),
}

impl AttachEndpoint {
    /// The endpoint for an agent given `address` (`unix:///path` or a bare
    /// path), or else `docker_host` (`DOCKER_HOST`) and whether TLS is asked
    /// for (`DOCKER_TLS_VERIFY`), as bollard's local defaults read them.
    pub fn of(address: Option<&str>, docker_host: Option<&str>, tls: bool) -> AttachEndpoint {
        if let Some(a) = address {
            return AttachEndpoint::Unix(PathBuf::from(a.strip_prefix("unix://").unwrap_or(a)));
        }
        match docker_host.filter(|h| !h.is_empty()) {
            None => AttachEndpoint::Unix(PathBuf::from("/var/run/docker.sock")),
            Some(h) if h.starts_with("unix://") => {
                AttachEndpoint::Unix(PathBuf::from(h.trim_start_matches("unix://")))
            }
            Some(h) if h.starts_with("tcp://") && !tls => {
                AttachEndpoint::Tcp(h.trim_start_matches("tcp://").to_string())
            }
            Some(h) => AttachEndpoint::Unsupported(format!(
                "commands run only on an engine reached over a unix socket or plain TCP, not {h}{}",
                if tls { " with TLS" } else { "" }
            )),
        }
    }
}

/// The two directions of an attached exec.
pub trait AttachIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AttachIo for T {}

/// Starts exec `exec_id` attached: the raw connection.
pub async fn start(
    endpoint: &AttachEndpoint,
    exec_id: &str,
    tty: bool,
) -> Result<Box<dyn AttachIo>, EngineError> {
    let unavailable = |e: &dyn std::fmt::Display| EngineError::Unavailable(format!("exec: {e}"));
    match endpoint {
        AttachEndpoint::Unix(path) => {
            let io = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| unavailable(&format!("{}: {e}", path.display())))?;
            upgrade(io, exec_id, tty).await
        }
        AttachEndpoint::Tcp(addr) => {
            let io = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| unavailable(&format!("{addr}: {e}")))?;
            upgrade(io, exec_id, tty).await
        }
        AttachEndpoint::Unsupported(why) => Err(EngineError::Other(why.clone())),
    }
}

async fn upgrade<S>(io: S, exec_id: &str, tty: bool) -> Result<Box<dyn AttachIo>, EngineError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let failed = |e: &dyn std::fmt::Display| EngineError::Unavailable(format!("exec: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| failed(&e))?;
    // Drives the connection until it is upgraded (then it hands it over).
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "exec attach connection");
            }
        },
        tracing::debug_span!("exec-attach"),
    ));
    let body = serde_json::json!({ "Detach": false, "Tty": tty }).to_string();
    let req = hyper::Request::post(format!("/exec/{exec_id}/start"))
        .header(header::HOST, "docker")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| EngineError::Other(format!("exec: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| failed(&e))?;
    let status = resp.status();
    if status != hyper::StatusCode::SWITCHING_PROTOCOLS && !status.is_success() {
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
            .unwrap_or_default();
        return Err(match status.as_u16() {
            404 => EngineError::NotFound(text),
            409 => EngineError::Conflict(text),
            _ => EngineError::Other(format!("{status}: {text}")),
        });
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| failed(&e))?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// The output read from `reader`: with a terminal, bytes as they come;
/// otherwise the engine's frames, as stdout and stderr.
pub fn output<R>(reader: R, tty: bool) -> BoxStream<'static, Result<ExecOutput, EngineError>>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let state = (reader, BytesMut::with_capacity(32 * 1024), false);
    futures::stream::unfold(state, move |(mut reader, mut buf, done)| async move {
        if done {
            return None;
        }
        loop {
            if tty && !buf.is_empty() {
                let data = buf.split().to_vec();
                return Some((Ok(entry(LogOrigin::Console, data)), (reader, buf, false)));
            }
            if !tty && let Some((origin, data)) = next_frame(&mut buf) {
                return Some((Ok(entry(origin, data)), (reader, buf, false)));
            }
            buf.reserve(32 * 1024);
            match reader.read_buf(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    let e = EngineError::Unavailable(format!("exec output: {e}"));
                    return Some((Err(e), (reader, buf, true)));
                }
            }
        }
    })
    .boxed()
}

fn entry(origin: LogOrigin, data: Vec<u8>) -> ExecOutput {
    ExecOutput::Output(LogEntry {
        time: None,
        origin,
        data,
    })
}

/// The next complete frame of a multiplexed stream, taken off `buf`.
fn next_frame(buf: &mut BytesMut) -> Option<(LogOrigin, Vec<u8>)> {
    if buf.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if buf.len() < 8 + len {
        return None;
    }
    let origin = match buf[0] {
        2 => LogOrigin::Stderr,
        _ => LogOrigin::Stdout,
    };
    buf.advance(8);
    Some((origin, buf.split_to(len).to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![kind, 0, 0, 0];
        f.extend((data.len() as u32).to_be_bytes());
        f.extend(data);
        f
    }

    async fn collect(input: Vec<u8>, tty: bool) -> Vec<ExecOutput> {
        output(std::io::Cursor::new(input), tty)
            .map(Result::unwrap)
            .collect()
            .await
    }

    #[tokio::test]
    async fn frames_are_split_into_stdout_and_stderr() {
        let mut input = frame(1, b"out\n");
        input.extend(frame(2, b"err"));
        input.extend(frame(1, b""));
        input.extend(frame(1, &[0, 1, 2]));
        let got = collect(input, false).await;
        assert_eq!(
            got,
            [
                entry(LogOrigin::Stdout, b"out\n".to_vec()),
                entry(LogOrigin::Stderr, b"err".to_vec()),
                entry(LogOrigin::Stdout, vec![]),
                entry(LogOrigin::Stdout, vec![0, 1, 2]),
            ]
        );
    }

    #[tokio::test]
    async fn a_cut_frame_at_the_end_is_dropped() {
        let mut input = frame(1, b"whole");
        input.extend(&frame(2, b"cut off")[..10]);
        let got = collect(input, false).await;
        assert_eq!(got, [entry(LogOrigin::Stdout, b"whole".to_vec())]);
    }

    #[tokio::test]
    async fn a_terminal_gives_its_bytes_as_they_are() {
        // A prompt without a newline, and bytes that look like a header.
        let got = collect(b"\x01\x00/ # ".to_vec(), true).await;
        assert_eq!(got, [entry(LogOrigin::Console, b"\x01\x00/ # ".to_vec())]);
    }

    #[test]
    fn the_endpoint_follows_the_agents_address_then_docker_host() {
        let unix = |p: &str| AttachEndpoint::Unix(PathBuf::from(p));
        assert_eq!(
            AttachEndpoint::of(Some("unix:///run/e.sock"), Some("tcp://x:1"), false),
            unix("/run/e.sock")
        );
        assert_eq!(
            AttachEndpoint::of(Some("/e.sock"), None, false),
            unix("/e.sock")
        );
        assert_eq!(
            AttachEndpoint::of(None, None, false),
            unix("/var/run/docker.sock")
        );
        assert_eq!(
            AttachEndpoint::of(None, Some("unix:///d.sock"), false),
            unix("/d.sock")
        );
        assert_eq!(
            AttachEndpoint::of(None, Some("tcp://10.0.0.1:2375"), false),
            AttachEndpoint::Tcp("10.0.0.1:2375".into())
        );
        assert!(matches!(
            AttachEndpoint::of(None, Some("tcp://10.0.0.1:2376"), true),
            AttachEndpoint::Unsupported(m) if m.contains("TLS")
        ));
    }
}
