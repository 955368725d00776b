//! The control loop on a real engine, without orchestrator: a Task bound to a
//! host in the store reaches that host's agent through the dispatcher, the
//! agent runs its container and reports it Running; deleting the Task stops
//! and removes the container, and the Task object goes once the container is
//! gone (the finalizer the dispatcher releases).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use shoal_agent::docker::DockerEngine;
use shoal_agent::session::{EngineLogs, HostInfo, LogSource, SessionConfig};
use shoal_agent::{AgentConfig, ContainerEngine, Reconciler};
use shoal_crds::{ContainerTemplate, Host, TASK_FINALIZER, Task, TaskPhase, TaskSpec};
use shoal_dispatcher::{
    DataChunk, Dispatcher, DispatcherConfig, ExecOptions, LogOptions, is_ready,
};
use shoal_proto::{ExecInput, TerminalSize};
use shoal_store::{ClusterStore, DeletePreconditions, MemStore, typed};
use shoal_tests::{TEST_IMAGE, eventually, main_docker_host, unique_name};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Engine logs, counting the streams open on the agent.
struct CountingLogs {
    inner: EngineLogs,
    open: Arc<AtomicUsize>,
}

/// Decrements the count when the stream it rides with is dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl LogSource for CountingLogs {
    async fn logs(
        &self,
        req: &shoal_proto::LogsRequest,
    ) -> Result<BoxStream<'static, shoal_proto::v1::LogLine>, String> {
        let lines = self.inner.logs(req).await?;
        self.open.fetch_add(1, Ordering::SeqCst);
        let guard = Open(self.open.clone());
        Ok(lines
            .map(move |l| {
                let _ = &guard;
                l
            })
            .boxed())
    }

    async fn stats(
        &self,
        task_uids: &[String],
    ) -> Result<Vec<shoal_proto::v1::StatsSample>, String> {
        self.inner.stats(task_uids).await
    }

    async fn exec(
        &self,
        req: &shoal_proto::ExecRequest,
        input: Option<BoxStream<'static, shoal_agent::engine::ExecInput>>,
    ) -> Result<BoxStream<'static, shoal_agent::session::ExecEvent>, String> {
        self.inner.exec(req, input).await
    }
}

fn task(name: &str, host: &str) -> Task {
    let mut t = Task::new(
        name,
        TaskSpec {
            service: "echo".into(),
            slot: Some(0),
            template: ContainerTemplate {
                image: TEST_IMAGE.into(),
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "echo hello from $HOSTNAME; exec sleep 100000".into(),
                ]),
                init: Some(true),
                stop_grace_period: Some("1s".into()),
                ..Default::default()
            },
            template_hash: "h1".into(),
            host_name: Some(host.into()),
            ..Default::default()
        },
    );
    t.metadata.namespace = Some("default".into());
    t.metadata.finalizers = Some(vec![TASK_FINALIZER.into()]);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_task_runs_on_its_host_and_goes_away_with_its_container() {
    let cluster = unique_name("ctl");
    let _cleanup = shoal_tests::RemoveClusterOnDrop(Some(cluster.clone()));
    let host = "node-a";
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();

    // Control plane: the in-memory store and the dispatcher.
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let d = Dispatcher::new(
        store.clone(),
        DispatcherConfig {
            cluster_id: cluster.clone(),
            ..Default::default()
        },
        shutdown.child_token(),
    );
    let listener = Dispatcher::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(d.clone().serve(listener));

    // Agent: reconciler on the real engine, fed by the session.
    let engine = Arc::new(
        DockerEngine::connect(Some(&main_docker_host()))
            .await
            .unwrap(),
    );
    let version = engine.version().await.unwrap();
    let (assigned_tx, assigned_rx) = watch::channel(None);
    let (status_tx, status_rx) = mpsc::unbounded_channel();
    let reconciler = Reconciler::new(engine.clone(), AgentConfig::new(cluster.clone()), status_tx);
    tokio::spawn(reconciler.run(assigned_rx, shutdown.child_token()));
    let info = HostInfo {
        host_name: host.into(),
        cpu_millicores: 2000,
        memory_bytes: 1 << 30,
        engine_version: version.version,
        engine_api_version: version.api_version,
        os: "linux".into(),
        arch: std::env::consts::ARCH.into(),
        ..Default::default()
    };
    let logs = Arc::new(CountingLogs {
        inner: EngineLogs {
            engine: engine.clone(),
            cluster_id: cluster.clone(),
            exec_allowed: true,
        },
        open: Arc::new(AtomicUsize::new(0)),
    });
    let open_streams = logs.open.clone();
    tokio::spawn(shoal_agent::session::run(
        SessionConfig::new(endpoint, cluster.clone(), info),
        assigned_tx,
        status_rx,
        logs,
        shutdown.child_token(),
    ));

    // The host joins.
    let s = store.clone();
    eventually("the host to be Ready", 10, || {
        let s = s.clone();
        async move {
            typed::get::<Host>(s.as_ref(), None, host)
                .await
                .unwrap()
                .is_some_and(|h| is_ready(&h))
        }
    })
    .await;

    // A task bound to it runs, and its status comes back.
    typed::create(store.as_ref(), &task("echo-0-aaaaa", host))
        .await
        .unwrap();
    let s = store.clone();
    eventually("the task to be Running", 20, || {
        let s = s.clone();
        async move {
            typed::get::<Task>(s.as_ref(), Some("default"), "echo-0-aaaaa")
                .await
                .unwrap()
                .and_then(|t| t.status)
                .is_some_and(|st| st.phase == Some(TaskPhase::Running) && st.container_id.is_some())
        }
    })
    .await;
    let labels = [("shoal.dev/cluster".to_string(), cluster.clone())];
    let containers = engine.list(&labels).await.unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert!(
        containers[0].name.starts_with("shoal.default.echo.0."),
        "{}",
        containers[0].name
    );

    // Its logs come back through the dispatcher, on the agent's data stream.
    let t = typed::get::<Task>(store.as_ref(), Some("default"), "echo-0-aaaaa")
        .await
        .unwrap()
        .unwrap();
    let mut text = String::new();
    for _ in 0..50 {
        let mut rx = d.logs(&t, LogOptions::default()).await.unwrap();
        text.clear();
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
        {
            match chunk {
                DataChunk::Logs(c) => {
                    for l in c.lines {
                        text.push_str(&String::from_utf8_lossy(&l.data));
                        text.push('\n');
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        if text.contains("hello from") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains("hello from"), "{text:?}");

    // A followed log of the quiet container: its first line comes; once the
    // reader drops the answer, the agent stops reading the engine's stream
    // (it would otherwise stay open until the container stops).
    eventually("finished reads to close", 10, || {
        let n = open_streams.load(Ordering::SeqCst);
        async move { n == 0 }
    })
    .await;
    let mut answer = d
        .logs(
            &t,
            LogOptions {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut followed = String::new();
    while !followed.contains("hello from") {
        match tokio::time::timeout(Duration::from_secs(10), answer.recv())
            .await
            .unwrap()
        {
            Some(DataChunk::Logs(c)) => {
                for l in c.lines {
                    followed.push_str(&String::from_utf8_lossy(&l.data));
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(open_streams.load(Ordering::SeqCst), 1, "the follow is open");
    drop(answer);
    eventually("the agent to stop following", 10, || {
        let n = open_streams.load(Ordering::SeqCst);
        async move { n == 0 }
    })
    .await;

    // Streamed stats: a sample of the running container every second, until
    // the reader drops the answer.
    let uid = t.metadata.uid.clone().unwrap();
    let mut answer = d.stats(host, vec![uid.clone()], true).await.unwrap();
    for round in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), answer.recv())
            .await
            .unwrap()
        {
            Some(DataChunk::Stats(c)) => {
                let s = c.samples.iter().find(|s| s.task_uid == uid);
                assert!(
                    s.is_some_and(|s| s.memory_bytes > 0),
                    "round {round}: {c:?}"
                );
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
    drop(answer);

    // A command in the container: its output, then its exit code.
    let answer = d
        .exec(
            &t,
            ExecOptions {
                command: vec!["sh".into(), "-c".into(), "cat; exit 5".into()],
                stdin: b"ran here\n".to_vec(),
                ..ExecOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(exec_output(answer).await, ("ran here\n".into(), Some(5)));

    // Interactive, with a terminal: the input streams in (after the
    // command has started), the terminal takes its new size, and the
    // output comes unsplit, prompt-like text without a newline included.
    let (input_tx, input_rx) = mpsc::channel(4);
    let answer = d
        .exec(
            &t,
            ExecOptions {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "printf 'name? '; read x; echo hi $x; stty size; tty; exit 6".into(),
                ],
                tty: true,
                size: Some(TerminalSize { cols: 80, rows: 24 }),
                input: Some(tokio_stream::wrappers::ReceiverStream::new(input_rx).boxed()),
                ..ExecOptions::default()
            },
        )
        .await
        .unwrap();
    // The prompt (no newline) arrives before any input is given; then the
    // answer and the new size.
    let (mut out, mut exit, mut typed) = (String::new(), None, false);
    let mut answer = answer;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), answer.recv())
        .await
        .unwrap()
    {
        let DataChunk::Logs(c) = chunk else {
            panic!("{chunk:?}")
        };
        for l in c.lines {
            out.push_str(&String::from_utf8_lossy(&l.data));
        }
        exit = exit.or(c.exit_code);
        if !typed && out.contains("name? ") {
            use shoal_proto::v1::exec_input::Input;
            typed = true;
            let send = |i| input_tx.send(ExecInput { input: Some(i) });
            send(Input::Resize(TerminalSize {
                cols: 101,
                rows: 33,
            }))
            .await
            .unwrap();
            send(Input::Stdin(b"there\n".to_vec())).await.unwrap();
        }
    }
    drop(input_tx);
    assert_eq!(exit, Some(6), "{out}");
    let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
    assert!(
        lines.contains(&"name? there"),
        "prompt, then the echo: {out:?}"
    );
    assert!(lines.contains(&"hi there"), "{out:?}");
    assert!(lines.contains(&"33 101"), "terminal size: {out:?}");
    assert!(
        lines.iter().any(|l| l.starts_with("/dev/pts/")),
        "a terminal: {out:?}"
    );

    // Delete: the container is stopped and removed, then the Task goes.
    store
        .delete(
            &typed::key::<Task>(Some("default"), "echo-0-aaaaa"),
            &DeletePreconditions::default(),
        )
        .await
        .unwrap();
    let s = store.clone();
    eventually("the Task object to go", 20, || {
        let s = s.clone();
        async move {
            typed::get::<Task>(s.as_ref(), Some("default"), "echo-0-aaaaa")
                .await
                .unwrap()
                .is_none()
        }
    })
    .await;
    assert!(
        engine.list(&labels).await.unwrap().is_empty(),
        "the container outlived its Task"
    );
}

/// The output and exit code of a command's answer.
async fn exec_output(mut answer: shoal_dispatcher::Answer) -> (String, Option<i64>) {
    let (mut out, mut exit) = (String::new(), None);
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), answer.recv())
        .await
        .unwrap()
    {
        match chunk {
            DataChunk::Logs(c) => {
                for l in c.lines {
                    out.push_str(&String::from_utf8_lossy(&l.data));
                }
                exit = exit.or(c.exit_code);
            }
            other => panic!("{other:?}"),
        }
    }
    (out, exit)
}
