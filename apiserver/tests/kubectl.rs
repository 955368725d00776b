//! Conformance with the real `kubectl` binary (fresh `--cache-dir` per test,
//! default validation, the kubeconfig the server writes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shoal_crds::Service;
use tokio::io::AsyncBufReadExt;

const WEB: &str = "apiVersion: shoal.dev/v1alpha1
kind: Service
metadata:
  name: web
  labels: { app: web }
spec:
  replicas: 3
  template:
    image: shoal-test/busybox:1
    command: [httpd, -f, -p, \"8080\"]
    env: [{ name: GREETING, value: hello }]
";

const API: &str = "apiVersion: shoal.dev/v1alpha1
kind: Service
metadata:
  name: api
spec:
  mode: Global
  template:
    image: shoal-test/busybox:1
";

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reapply_get_scale_explain_delete() {
    let (server, _store) = common::start().await;
    let k = common::Kubectl::new(&server.url());
    let manifests = tempfile::tempdir().unwrap();
    write(manifests.path(), "web.yaml", WEB);
    write(manifests.path(), "api.yaml", API);
    let dir = manifests.path().to_str().unwrap();

    let out = k.ok(&["apply", "-f", dir]).await;
    assert!(out.contains("service.shoal.dev/web created"), "{out}");
    assert!(out.contains("service.shoal.dev/api created"), "{out}");

    // Printer columns.
    let out = k.ok(&["get", "ssvc"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "MODE", "DESIRED", "READY", "AGE"]);
    let web: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("web"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(web[1], "3", "{out}");
    let out = k.ok(&["get", "ssvc", "-o", "wide"]).await;
    assert!(out.lines().next().unwrap().contains("IMAGE"), "{out}");
    assert!(out.contains("shoal-test/busybox:1"), "{out}");
    let out = k.ok(&["get", "ssvc", "-A"]).await;
    assert!(out.starts_with("NAMESPACE"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("default") && l.contains("api")),
        "{out}"
    );
    let out = k.ok(&["get", "shoal"]).await; // the category
    assert!(out.contains("service.shoal.dev/web"), "{out}");

    // Re-apply with a field removed: client-side apply removes it.
    write(
        manifests.path(),
        "web.yaml",
        &WEB.replace("    env: [{ name: GREETING, value: hello }]\n", ""),
    );
    let out = k.ok(&["apply", "-f", dir]).await;
    assert!(out.contains("service.shoal.dev/web configured"), "{out}");
    assert!(out.contains("service.shoal.dev/api unchanged"), "{out}");
    let env = k
        .ok(&["get", "ssvc", "web", "-o", "jsonpath={.spec.template.env}"])
        .await;
    assert_eq!(env, "");

    // Scale.
    let out = k.ok(&["scale", "ssvc", "web", "--replicas=5"]).await;
    assert!(out.contains("scaled"), "{out}");
    let n = k
        .ok(&["get", "ssvc", "web", "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(n, "5");

    // Explain, from the OpenAPI v3 schema.
    let out = k.ok(&["explain", "ssvc.spec"]).await;
    assert!(
        out.contains("KIND:       Service")
            || out.contains("KIND:\tService")
            || out.contains("Service"),
        "{out}"
    );
    assert!(
        out.contains("template") && out.contains("replicas") && out.contains("onHostLoss"),
        "{out}"
    );
    let out = k.ok(&["explain", "ssvc.spec.template.image"]).await;
    assert!(out.contains("<string>"), "{out}");

    // Delete and wait.
    let out = k
        .ok(&["delete", "-f", dir, "--wait", "--timeout=30s"])
        .await;
    assert!(
        out.contains("\"web\" deleted") && out.contains("\"api\" deleted"),
        "{out}"
    );
    let o = k.run(&["get", "ssvc"]).await;
    assert!(
        o.ok && o.stdout.is_empty() && o.stderr.contains("No resources found"),
        "{}{}",
        o.stdout,
        o.stderr
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_rejected_with_the_field_path() {
    let (server, _store) = common::start().await;
    let k = common::Kubectl::new(&server.url());
    let manifests = tempfile::tempdir().unwrap();
    let bad = WEB.replace("replicas: 3", "replicas: -2");
    write(manifests.path(), "bad.yaml", &bad);
    let o = k
        .run(&[
            "apply",
            "-f",
            manifests.path().join("bad.yaml").to_str().unwrap(),
        ])
        .await;
    assert!(!o.ok);
    assert!(o.stderr.contains("spec.replicas"), "{}", o.stderr);
    assert!(o.stderr.contains("is invalid"), "{}", o.stderr);

    // kubectl's default validation is Strict: unknown fields are refused.
    let unknown = WEB.replace("  replicas: 3\n", "  replicas: 3\n  replicaz: 4\n");
    write(manifests.path(), "unknown.yaml", &unknown);
    let o = k
        .run(&[
            "apply",
            "-f",
            manifests.path().join("unknown.yaml").to_str().unwrap(),
        ])
        .await;
    assert!(!o.ok);
    assert!(o.stderr.contains("spec.replicaz"), "{}", o.stderr);
    // ...and with --validate=false they are dropped.
    let out = k
        .ok(&[
            "apply",
            "--validate=false",
            "-f",
            manifests.path().join("unknown.yaml").to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("created"), "{out}");

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_owns_fields_and_names_conflicts() {
    let (server, _store) = common::start().await;
    let k = common::Kubectl::new(&server.url());
    let manifests = tempfile::tempdir().unwrap();
    let file = manifests.path().join("ssa.yaml");
    let file = file.to_str().unwrap();
    let with_label = WEB.replace("labels: { app: web }", "labels: { app: web, tier: front }");
    write(manifests.path(), "ssa.yaml", &with_label);
    let out = k.ok(&["apply", "--server-side", "-f", file]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let managers = k
        .ok(&[
            "get",
            "ssvc",
            "web",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}/{.metadata.managedFields[*].operation}",
        ])
        .await;
    assert_eq!(managers, "kubectl/Apply");
    // A label left out of the configuration is removed.
    write(manifests.path(), "ssa.yaml", WEB);
    k.ok(&["apply", "--server-side", "-f", file]).await;
    let labels = k
        .ok(&["get", "ssvc", "web", "-o", "jsonpath={.metadata.labels}"])
        .await;
    assert_eq!(labels, r#"{"app":"web"}"#);
    // Another manager's change is a conflict naming the field...
    k.ok(&["scale", "ssvc", "web", "--replicas=5"]).await;
    let o = k.run(&["apply", "--server-side", "-f", file]).await;
    assert!(!o.ok, "{}", o.stdout);
    assert!(
        o.stderr.contains("conflict") && o.stderr.contains(".spec.replicas"),
        "{}",
        o.stderr
    );
    let n = k
        .ok(&["get", "ssvc", "web", "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(n, "5", "nothing written on a conflict");
    // ...until forced.
    k.ok(&["apply", "--server-side", "--force-conflicts", "-f", file])
        .await;
    let n = k
        .ok(&["get", "ssvc", "web", "-o", "jsonpath={.spec.replicas}"])
        .await;
    assert_eq!(n, "3");
    // Bad configurations are refused as with any write.
    let bad = WEB.replace("replicas: 3", "replicas: -2");
    write(manifests.path(), "ssa.yaml", &bad);
    let o = k.run(&["apply", "--server-side", "-f", file]).await;
    assert!(!o.ok);
    assert!(o.stderr.contains("spec.replicas"), "{}", o.stderr);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_changes_as_they_happen() {
    let (server, _store) = common::start().await;
    let k = common::Kubectl::new(&server.url());
    let api: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    api.create(&PostParams::default(), &common::typed_service("web", 1))
        .await
        .unwrap();

    let mut child = k
        .command(&["get", "ssvc", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let want = ["ADDED web 1", "MODIFIED web 4", "DELETED web 4"];
    let mut changed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < want.len() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("kubectl get -w printed only {seen:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("kubectl get -w ended after {seen:?}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.first() == Some(&"EVENT") {
            continue;
        }
        // EVENT NAME MODE? DESIRED READY? AGE: MODE and READY are empty here.
        seen.push(format!("{} {} {}", cols[0], cols[1], cols[2]));
        if !changed {
            changed = true;
            api.patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": 4 } })),
            )
            .await
            .unwrap();
            api.delete("web", &DeleteParams::default()).await.unwrap();
        }
    }
    assert_eq!(seen, want);
    child.kill().await.unwrap();
    server.shutdown().await.unwrap();
}
