//! `tasks/NAME/exec` over a WebSocket: Kubernetes' channel protocol as
//! kube-rs speaks it (its `connect`), in front of a command provider that
//! answers what it is given (the real agents and engines are exercised by
//! the CLI's end-to-end tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use shoal_apiserver::exec::{ExecCall, ExecEvent, ExecInput, TaskExec};
use shoal_apiserver::logs::LogError;
use shoal_apiserver::{Config, RunningServer};
use shoal_crds::Task;
use shoal_store::ClusterStore;
use shoal_store::mem::MemStore;
use tokio_tungstenite::tungstenite::Message;

/// `cat -`: echoes standard input on stdout, reports sizes on stderr, and
/// exits with the number of input bytes when its input is closed.
#[derive(Debug)]
struct Echo;

impl TaskExec for Echo {
    fn exec<'a>(
        &'a self,
        task: &'a Task,
        call: ExecCall,
    ) -> BoxFuture<'a, Result<BoxStream<'static, ExecEvent>, LogError>> {
        Box::pin(async move {
            if call.command != ["cat", "-"] {
                return Err(LogError::BadRequest(format!(
                    "no such program in {}",
                    task.metadata.name.clone().unwrap_or_default()
                )));
            }
            let header = ExecEvent::Stdout(format!("tty={}\n", call.tty).into_bytes());
            let Some(input) = call.input else {
                return Ok(futures::stream::iter([header, ExecEvent::Exit(0)]).boxed());
            };
            // Each input answered; the close ends it, with the input's size.
            let body = futures::stream::unfold((input, 0usize), |(mut input, n)| async move {
                let (out, n) = match input.next().await? {
                    ExecInput::Stdin(b) => (ExecEvent::Stdout(b.clone()), n + b.len()),
                    ExecInput::Resize(s) => (
                        ExecEvent::Stderr(format!("size {}x{}", s.cols, s.rows).into_bytes()),
                        n,
                    ),
                    ExecInput::Close => return Some((ExecEvent::Exit(n as i64), (input, n))),
                };
                Some((out, (input, n)))
            });
            Ok(futures::stream::iter([header]).chain(body).boxed())
        })
    }
}

const PATH: &str = "/apis/shoal.dev/v1alpha1/namespaces/default/tasks/web-0/exec";

async fn server() -> RunningServer {
    let store = Arc::new(MemStore::new());
    store
        .create(json!({
            "apiVersion": "shoal.dev/v1alpha1", "kind": "Task",
            "metadata": {"name": "web-0", "namespace": "default"},
            "spec": {"service": "web", "slot": 0, "templateHash": "abc", "hostName": "node-1",
                     "template": {"image": "shoal-test/busybox:1"}},
        }))
        .await
        .unwrap();
    let cfg = Config {
        exec: Some(Arc::new(Echo)),
        ..Default::default()
    };
    RunningServer::start(
        "127.0.0.1:0".parse().unwrap(),
        store as Arc<dyn ClusterStore>,
        cfg,
    )
    .await
    .unwrap()
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut m = vec![channel];
    m.extend_from_slice(data);
    Message::Binary(m.into())
}

#[tokio::test]
async fn input_output_resizes_and_the_outcome_go_over_their_channels() {
    let server = server().await;
    let client = common::client(&server.url());
    let req = http::Request::get(format!("{PATH}?command=cat&command=-&stdin=true&tty=true"))
        .body(Vec::new())
        .unwrap();
    let conn = client.connect(req).await.unwrap();
    assert!(conn.supports_stream_close(), "v5 is picked");
    let (mut tx, mut rx) = conn.into_stream().split();
    tx.send(framed(0, b"abc")).await.unwrap();
    tx.send(framed(4, br#"{"Width":90,"Height":30}"#))
        .await
        .unwrap();
    tx.send(framed(0, b"de")).await.unwrap();
    tx.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let mut got = Vec::new();
    let mut closed = false;
    while let Some(m) = rx.next().await {
        match m.unwrap() {
            Message::Binary(b) => got.push((b[0], String::from_utf8_lossy(&b[1..]).to_string())),
            Message::Close(_) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the server closes after the outcome: {got:?}");
    let (status_ch, status) = got.pop().unwrap();
    assert_eq!(status_ch, 3, "{got:?}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(
        status["details"]["causes"][0]["message"], "5",
        "bytes of input"
    );
    assert_eq!(
        got,
        [
            (1, "tty=true\n".to_string()),
            (1, "abc".to_string()),
            (2, "size 90x30".to_string()),
            (1, "de".to_string()),
        ]
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn refusals_come_before_the_upgrade_as_statuses() {
    let server = server().await;
    let client = common::client(&server.url());
    let connect = |path: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(path).body(Vec::new()).unwrap();
            match client.connect(req).await {
                Err(kube::Error::Api(s)) => (s.code, s.message),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("upgraded"),
            }
        }
    };
    let (code, message) = connect(format!("{PATH}?stdin=true")).await;
    assert_eq!(code, 400);
    assert!(
        message.contains("command: the program to run must be given"),
        "{message}"
    );
    let (code, message) = connect(format!("{PATH}?command=nope")).await;
    assert_eq!(code, 400);
    assert!(message.contains("no such program in web-0"), "{message}");
    let (code, _) = connect(
        "/apis/shoal.dev/v1alpha1/namespaces/default/tasks/web-9/exec?command=cat&command=-".into(),
    )
    .await;
    assert_eq!(code, 404);
    // A plain GET is not a WebSocket.
    let req = http::Request::get(format!("{PATH}?command=cat&command=-"))
        .body(Vec::new())
        .unwrap();
    let Err(kube::Error::Api(s)) = client.request_text(req).await else {
        panic!("a plain GET ran a command")
    };
    assert_eq!(s.code, 400);
    assert!(s.message.contains("needs a WebSocket"), "{}", s.message);
    server.shutdown().await.unwrap();
}
