//! The dispatcher over a real gRPC connection, with a scripted agent and the
//! in-memory store: hello → Host object, welcome, complete set then deltas,
//! status ingestion, finalizer release, reconnect grace, heartbeat loss.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_crds::{ContainerTemplate, Host, TASK_FINALIZER, Task, TaskPhase, TaskSpec, TaskStatus};
use shoal_dispatcher::{Dispatcher, DispatcherConfig, is_ready};
use shoal_proto::v1::agent_message::Message as FromAgent;
use shoal_proto::v1::control_message::Message as ToAgent;
use shoal_proto::v1::{HostCapacity, TaskStatusUpdate};
use shoal_proto::{
    AgentMessage, ControlMessage, DispatcherClient, Heartbeat, Hello, TaskStatusBatch,
};
use shoal_store::{ClusterStore, DeletePreconditions, MemStore, typed};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

struct Plane {
    store: Arc<dyn ClusterStore>,
    addr: String,
    shutdown: CancellationToken,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn plane() -> Plane {
    let store: Arc<dyn ClusterStore> = Arc::new(MemStore::new());
    let shutdown = CancellationToken::new();
    let config = DispatcherConfig {
        cluster_id: "test".into(),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_misses: 3,
        reconnect_grace: Duration::from_millis(400),
        ..Default::default()
    };
    let d = Dispatcher::new(store.clone(), config, shutdown.clone());
    let listener = Dispatcher::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(d.serve(listener));
    Plane {
        store,
        addr,
        shutdown,
    }
}

struct Agent {
    tx: mpsc::Sender<AgentMessage>,
    rx: tonic::Streaming<ControlMessage>,
}

impl Agent {
    async fn connect(addr: &str, host: &str) -> Agent {
        let mut client = DispatcherClient::connect(addr.to_string()).await.unwrap();
        let (tx, out) = mpsc::channel(64);
        tx.send(AgentMessage {
            message: Some(FromAgent::Hello(Hello {
                host_name: host.into(),
                labels: BTreeMap::from([("zone".to_string(), "east".to_string())]),
                capacity: Some(HostCapacity {
                    cpu_millicores: 2000,
                    memory_bytes: 1 << 30,
                }),
                engine_version: "20.10.24".into(),
                engine_api_version: "1.41".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
                agent_version: "test".into(),
                last_applied_sequence: None,
                session_id: "s1".into(),
            })),
        })
        .await
        .unwrap();
        let rx = client
            .session(ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        Agent { tx, rx }
    }

    async fn next(&mut self) -> ToAgent {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("no control message within 5s")
            .unwrap()
            .unwrap()
            .message
            .unwrap()
    }

    async fn send(&self, m: FromAgent) {
        self.tx
            .send(AgentMessage { message: Some(m) })
            .await
            .unwrap();
    }
}

fn task(name: &str, host: &str) -> Task {
    let mut t = Task::new(
        name,
        TaskSpec {
            service: "web".into(),
            slot: Some(0),
            template: ContainerTemplate {
                image: "shoal-test/busybox:1".into(),
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

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn get_task(store: &dyn ClusterStore, name: &str) -> Option<Task> {
    typed::get::<Task>(store, Some("default"), name)
        .await
        .unwrap()
}

async fn host(store: &dyn ClusterStore, name: &str) -> Host {
    typed::get::<Host>(store, None, name)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_session_from_hello_to_finalizer_release() {
    let p = plane().await;
    let store = p.store.as_ref();
    // A task placed before the agent connects is in its complete set.
    let before = typed::create(store, &task("web-0-aaaaa", "h1"))
        .await
        .unwrap();
    let mut agent = Agent::connect(&p.addr, "h1").await;
    let ToAgent::Welcome(w) = agent.next().await else {
        panic!("welcome first")
    };
    assert_eq!(
        (
            w.cluster_id.as_str(),
            w.heartbeat_interval_ms,
            w.heartbeat_misses
        ),
        ("test", 100, 3)
    );
    let ToAgent::AssignmentSet(set) = agent.next().await else {
        panic!("then the complete set")
    };
    assert_eq!(set.sequence, 1);
    assert_eq!(set.assignments.len(), 1);
    assert_eq!(set.assignments[0].uid, before.metadata.uid.clone().unwrap());

    // The Host object exists with the agent's labels, capacity and Ready.
    let h = host(store, "h1").await;
    assert_eq!(h.metadata.labels.as_ref().unwrap()["zone"], "east");
    assert!(is_ready(&h));
    let st = h.status.unwrap();
    assert_eq!(st.capacity.unwrap().cpu.unwrap().as_str(), "2000m");
    assert_eq!(st.engine_api_version.as_deref(), Some("1.41"));

    // A task bound to another host is not sent; one bound here is, as a delta.
    typed::create(store, &task("web-1-bbbbb", "h2"))
        .await
        .unwrap();
    let mine = typed::create(store, &task("web-2-ccccc", "h1"))
        .await
        .unwrap();
    let ToAgent::AssignmentDelta(d) = agent.next().await else {
        panic!("delta")
    };
    assert_eq!((d.sequence, d.previous_sequence), (2, 1));
    assert_eq!(d.upserted.len(), 1);
    assert_eq!(d.upserted[0].name, "web-2-ccccc");

    // Status reports land in the store.
    let uid = mine.metadata.uid.clone().unwrap();
    let running = TaskStatus {
        phase: Some(TaskPhase::Running),
        container_id: Some("c1".into()),
        ..Default::default()
    };
    agent
        .send(FromAgent::TaskStatus(TaskStatusBatch {
            updates: vec![TaskStatusUpdate {
                task_uid: uid.clone(),
                namespace: "default".into(),
                name: "web-2-ccccc".into(),
                status: Some(running.into()),
            }],
        }))
        .await;
    eventually("status Running", || async {
        get_task(store, "web-2-ccccc")
            .await
            .and_then(|t| t.status)
            .and_then(|s| s.phase)
            == Some(TaskPhase::Running)
    })
    .await;

    // Delete: the finalizer holds the task while its container runs...
    store
        .delete(
            &typed::key::<Task>(Some("default"), "web-2-ccccc"),
            &DeletePreconditions::default(),
        )
        .await
        .unwrap();
    let ToAgent::AssignmentDelta(d) = agent.next().await else {
        panic!("delta for the mark")
    };
    assert_eq!(
        d.upserted.len(),
        1,
        "the marked task is still assigned, so the agent stops it"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        get_task(store, "web-2-ccccc").await.is_some(),
        "released before the container was gone"
    );
    // ...and goes once the agent reports the container gone.
    let gone = TaskStatus {
        phase: Some(TaskPhase::Shutdown),
        container_id: None,
        ..Default::default()
    };
    agent
        .send(FromAgent::TaskStatus(TaskStatusBatch {
            updates: vec![TaskStatusUpdate {
                task_uid: uid.clone(),
                namespace: "default".into(),
                name: "web-2-ccccc".into(),
                status: Some(gone.into()),
            }],
        }))
        .await;
    eventually("task deleted", || async {
        get_task(store, "web-2-ccccc").await.is_none()
    })
    .await;
    loop {
        match agent.next().await {
            ToAgent::AssignmentDelta(d) if d.removed_task_uids == [uid.clone()] => break,
            ToAgent::AssignmentDelta(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_closed_stream_loses_the_host_after_the_grace_and_orphans_its_tasks() {
    let p = plane().await;
    let store = p.store.as_ref();
    let mut agent = Agent::connect(&p.addr, "h1").await;
    agent.next().await;
    // Bound once the host exists (a task of a host that is not in the
    // store is orphaned as removed).
    typed::create(store, &task("web-0-ddddd", "h1"))
        .await
        .unwrap();
    agent.next().await;
    // Reconnecting within the grace keeps the host Ready.
    drop(agent);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut agent = Agent::connect(&p.addr, "h1").await;
    agent.next().await;
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        agent
            .send(FromAgent::Heartbeat(Heartbeat {
                agent_time: None,
                last_applied_sequence: Some(1),
                engine_unavailable: None,
            }))
            .await;
        assert!(
            is_ready(&host(store, "h1").await),
            "flapped within the grace"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Gone for good: NotReady after the grace, and the task is Orphaned.
    drop(agent);
    eventually("host NotReady", || async {
        !is_ready(&host(store, "h1").await)
    })
    .await;
    let t = get_task(store, "web-0-ddddd").await.unwrap();
    let s = t.status.unwrap();
    assert_eq!(s.phase, Some(TaskPhase::Orphaned));
    assert_eq!(s.reason.as_deref(), Some("HostLost"));
    let cond = host(store, "h1").await.status.unwrap().conditions.unwrap();
    assert_eq!(cond[0].reason.as_deref(), Some("AgentDisconnected"));
}

#[tokio::test]
async fn a_silent_agent_is_lost_after_missed_heartbeats() {
    let p = plane().await;
    let store = p.store.as_ref();
    let mut agent = Agent::connect(&p.addr, "h9").await;
    agent.next().await;
    agent.next().await;
    // Heartbeats keep it Ready past several timeouts...
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        agent
            .send(FromAgent::Heartbeat(Heartbeat {
                agent_time: None,
                last_applied_sequence: Some(1),
                engine_unavailable: None,
            }))
            .await;
    }
    // ...silence with the stream open loses it (timeout 300 ms).
    let silent = tokio::time::Instant::now();
    assert!(is_ready(&host(store, "h9").await));
    eventually("host NotReady", || async {
        !is_ready(&host(store, "h9").await)
    })
    .await;
    assert!(
        silent.elapsed() >= Duration::from_millis(300),
        "lost before the timeout"
    );
    let cond = host(store, "h9").await.status.unwrap().conditions.unwrap();
    assert_eq!(cond[0].reason.as_deref(), Some("HeartbeatsMissed"));
    drop(agent);
}

#[tokio::test]
async fn a_host_whose_engine_stays_away_is_lost_and_rejoins_when_it_is_back() {
    let p = plane().await;
    let store = p.store.as_ref();
    typed::create(store, &task("web-0-eeeee", "h7"))
        .await
        .unwrap();
    let mut agent = Agent::connect(&p.addr, "h7").await;
    agent.next().await;
    agent.next().await;
    let hb = |down: Option<&str>| {
        FromAgent::Heartbeat(Heartbeat {
            agent_time: None,
            last_applied_sequence: Some(1),
            engine_unavailable: down.map(str::to_owned),
        })
    };
    // The engine goes away while the agent keeps heartbeating: Ready within
    // the grace (400 ms; a dockerd restart fits), lost after it.
    let down = tokio::time::Instant::now();
    while down.elapsed() < Duration::from_millis(250) {
        agent
            .send(hb(Some("engine unavailable: connection refused")))
            .await;
        assert!(is_ready(&host(store, "h7").await), "lost within the grace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        agent
            .send(hb(Some("engine unavailable: connection refused")))
            .await;
        if !is_ready(&host(store, "h7").await) {
            break;
        }
        assert!(down.elapsed() < Duration::from_secs(5), "never lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cond = host(store, "h7").await.status.unwrap().conditions.unwrap();
    assert_eq!(cond[0].reason.as_deref(), Some("EngineUnavailable"));
    eventually("the task Orphaned", || async {
        get_task(store, "web-0-eeeee")
            .await
            .and_then(|t| t.status)
            .is_some_and(|s| s.phase == Some(TaskPhase::Orphaned))
    })
    .await;
    // The engine is back: the session is ended so the agent rejoins (a
    // fresh Hello makes the host Ready again).
    agent.send(hb(None)).await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match agent.rx.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the session did not end");
    let status = end.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
    assert!(status.message().contains("rejoin"), "{status}");
    drop(agent);
    let mut again = Agent::connect(&p.addr, "h7").await;
    again.next().await;
    eventually("host Ready again", || async {
        is_ready(&host(store, "h7").await)
    })
    .await;
}

#[tokio::test]
async fn the_first_message_must_be_a_hello() {
    let p = plane().await;
    let mut client = DispatcherClient::connect(p.addr.clone()).await.unwrap();
    let (tx, out) = mpsc::channel(4);
    tx.send(AgentMessage {
        message: Some(FromAgent::Heartbeat(Heartbeat::default())),
    })
    .await
    .unwrap();
    let err = client.session(ReceiverStream::new(out)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
