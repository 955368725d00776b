//! `scripts/build-image`: the image the Helm chart runs is made from the
//! binary without a base image or a registry, and runs as the chart expects
//! (unprivileged, read-only root filesystem).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use shoal_tests::{main_docker_host, repo_root};

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .arg("-H")
        .arg(main_docker_host())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_image_runs_shoal_unprivileged_on_a_read_only_root() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(shoal_tests::Engine::main()).unwrap();
    let tag = format!("shoal-test/shoal:{}", shoal_tests::unique_name("image"));
    let out = Command::new(repo_root().join("scripts/build-image"))
        .args(["--binary", env!("CARGO_BIN_EXE_shoal"), "--tag", &tag])
        .env("DOCKER_HOST", main_docker_host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tag);

    let user = docker(&["image", "inspect", "-f", "{{.Config.User}}", &tag]);
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "65532:65532");
    let version = docker(&["run", "--rm", "--read-only", &tag, "--version"]);
    assert!(version.status.success(), "{version:?}");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("shoal "),
        "{version:?}"
    );
    // The operator starts as far as the cluster's configuration, and says
    // what is missing.
    let op = docker(&[
        "run",
        "--rm",
        "--read-only",
        &tag,
        "operator",
        "--kubeconfig",
        "/nope",
    ]);
    assert!(!op.status.success());
    let err = String::from_utf8_lossy(&op.stderr);
    assert!(err.contains("/nope"), "{err}");
    // Its data directory is where the chart mounts its volume.
    let env = docker(&["image", "inspect", "-f", "{{.Config.Env}}", &tag]);
    assert!(String::from_utf8_lossy(&env.stdout).contains("SHOAL_DATA_DIR=/var/lib/shoal"));
    let _ = docker(&["rmi", "-f", &tag]);
}
