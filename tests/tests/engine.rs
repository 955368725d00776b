//! The private test engine runs the test image: exit code and output are real.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use shoal_tests::{ContainerSpec, Engine, TEST_IMAGE};

#[tokio::test]
async fn container_runs_and_reports_exit_code_and_output() {
    let engine = Engine::main().await.expect("main test engine");
    let spec = ContainerSpec::shell("echo hello from $(id -un); echo oops >&2; exit 3");
    let c = engine.run(&spec).await.expect("run container");

    let code = c.wait(Duration::from_secs(30)).await.expect("wait");
    let (out, err) = c.logs().await.expect("logs");
    assert_eq!(code, 3, "exit code (stdout {out:?}, stderr {err:?})");
    assert_eq!(out, "hello from root\n");
    assert_eq!(err, "oops\n");

    let inspect = engine
        .docker
        .inspect_container(&c.id, None)
        .await
        .expect("inspect");
    let config = inspect.config.expect("config");
    assert_eq!(config.image.as_deref(), Some(TEST_IMAGE));
    let labels = config.labels.unwrap_or_default();
    assert_eq!(labels.get("shoal.dev/test").map(String::as_str), Some("1"));

    c.remove().await.expect("remove");
}

#[tokio::test]
async fn user_nobody_exists_in_the_test_image() {
    let engine = Engine::main().await.expect("main test engine");
    let mut spec = ContainerSpec::new(["id"]);
    spec.user = Some("nobody".to_string());
    let c = engine.run(&spec).await.expect("run container");
    assert_eq!(c.wait(Duration::from_secs(30)).await.expect("wait"), 0);
    let (out, _) = c.logs().await.expect("logs");
    assert_eq!(
        out,
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n"
    );
    c.remove().await.expect("remove");
}

#[tokio::test]
async fn stopping_a_trapping_workload_is_quick() {
    let engine = Engine::main().await.expect("main test engine");
    let c = engine
        .run(&ContainerSpec::new(["sleep", "100000"]))
        .await
        .expect("run container");
    let started = std::time::Instant::now();
    // init: true makes PID 1 forward SIGTERM, so the stop does not wait for the timeout.
    c.stop(10).await.expect("stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    c.remove().await.expect("remove");
}
