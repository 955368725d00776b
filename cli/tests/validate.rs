//! `shoal validate` through the real binary: valid examples pass, every
//! refusal surfaces with its field path and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

#[test]
fn the_examples_are_valid() {
    let out = shoal()
        .args([
            "validate",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("service/web is valid"), "{stdout}");
}

#[test]
fn bad_documents_exit_2_with_field_paths() {
    let mut child = shoal()
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"apiVersion: shoal.dev/v1alpha1\nkind: Service\nmetadata: {name: ok}\nspec: {template: {image: a}}\n---\n\
apiVersion: shoal.dev/v1alpha1\nkind: Service\nmetadata: {name: bad}\nspec:\n  template: {image: a, resources: {limits: {memory: 300m}}, ports: [{containerPort: 80, hostPort: 70000}]}\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("<stdin>#1: spec.template.resources.limits.memory: \"300m\" is ambiguous"),
        "{stderr}"
    );
    assert!(
        stderr.contains("<stdin>#1: spec.template.ports[0].hostPort: 70000 is not a port"),
        "{stderr}"
    );
    assert!(!stderr.contains("#0"), "{stderr}");
}

#[test]
fn unreadable_input_exits_1() {
    let out = shoal()
        .args(["validate", "-f", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.yaml"));
}
