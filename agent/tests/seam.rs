//! The Docker implementation of the engine seam against the real engine:
//! idempotent operations, the name-conflict rule, logs, stats, images.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use shoal_agent::EngineError;
use shoal_agent::docker::DockerEngine;
use shoal_agent::engine::{ContainerEngine, RunState, create_for_task};
use shoal_agent::labels::{CLUSTER, TaskIdentity};
use shoal_agent::spec::create_body;

#[tokio::test]
async fn operations_are_idempotent_and_conflicts_are_never_adopted() {
    let _g = Cleanup::fresh().await;
    let (host, cluster, ns) = _g.names();
    let e = DockerEngine::connect(Some(&host)).await.unwrap();
    let v = e.version().await.unwrap();
    assert!(!v.api_version.is_empty());
    let id = TaskIdentity {
        cluster: &cluster,
        namespace: &ns,
        service: "seam",
        slot: Some(0),
        uid: "uid-seam-1",
        template_hash: "h",
    };
    let body = create_body(&id, &shell("echo hello-logs; sleep 100000")).unwrap();
    e.ensure_network(&shoal_agent::labels::network_name(&ns), &Default::default())
        .await
        .unwrap();
    e.ensure_network(&shoal_agent::labels::network_name(&ns), &Default::default())
        .await
        .unwrap();
    let name = id.container_name();
    let cid = create_for_task(&e, &name, body.clone(), &cluster, "uid-seam-1")
        .await
        .unwrap();
    // 409 with the same cluster and task uid: the existing container.
    assert_eq!(
        create_for_task(&e, &name, body.clone(), &cluster, "uid-seam-1")
            .await
            .unwrap(),
        cid
    );
    // 409 with another task uid or cluster: an error, never adopted.
    assert!(matches!(
        create_for_task(&e, &name, body.clone(), &cluster, "other").await,
        Err(EngineError::Conflict(_))
    ));
    assert!(matches!(
        create_for_task(&e, &name, body, "other-cluster", "uid-seam-1").await,
        Err(EngineError::Conflict(_))
    ));
    e.start(&cid).await.unwrap();
    e.start(&cid).await.expect("304 on start is success");
    let i = e.inspect(&cid).await.unwrap();
    assert_eq!(i.state, RunState::Running);
    assert_eq!(i.labels[CLUSTER], cluster);
    let listed = e
        .list(&[(CLUSTER.to_string(), cluster.clone())])
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, name);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.logs(&cid, 10).await.unwrap().contains("hello-logs") {
        assert!(Instant::now() < deadline, "no logs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = e.stats(&cid).await.unwrap();
    assert!(s.memory_bytes > 0, "{s:?}");
    e.stop(&cid, Some(1)).await.unwrap();
    e.stop(&cid, Some(1))
        .await
        .expect("stopping a stopped container succeeds");
    assert_eq!(e.inspect(&cid).await.unwrap().state, RunState::Exited);
    e.remove(&cid).await.unwrap();
    e.remove(&cid).await.expect("404 on remove is success");
    assert!(matches!(
        e.inspect(&cid).await,
        Err(EngineError::NotFound(_))
    ));
}

#[tokio::test]
async fn images_are_inspected_and_pulls_are_bounded() {
    let host = main_host().await;
    let e = DockerEngine::connect(Some(&host)).await.unwrap();
    assert!(e.image_present(TEST_IMAGE).await.unwrap());
    assert!(!e.image_present("shoal-test/missing:1").await.unwrap());
    let t0 = Instant::now();
    let r = e.pull("shoal-test/missing:1", Duration::from_secs(3)).await;
    assert!(matches!(r, Err(EngineError::ImageNotFound(_))), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "bounded by the timeout: {:?}",
        t0.elapsed()
    );
}
