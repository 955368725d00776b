//! The Kubernetes backend against a real Kubernetes-dialect API server:
//! Shoal's embedded one (over a memory store), spoken to over HTTP by
//! kube-rs exactly as a cluster's would be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use shoal_apiserver::RunningServer;
use shoal_kubestore::KubeStore;
use shoal_store::{
    ClusterStore, DeleteOutcome, DeletePreconditions, Kind, ListOptions, MemStore, ObjectKey,
    StoreError, WatchConfig, WatchEvent,
};

async fn serve(store: MemStore) -> (RunningServer, KubeStore) {
    let store: Arc<dyn ClusterStore> = Arc::new(store);
    let server = RunningServer::start(
        "127.0.0.1:0".parse().unwrap(),
        store,
        shoal_apiserver::Config::default(),
    )
    .await
    .unwrap();
    let config = kube::Config::new(server.url().parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    (server, KubeStore::new(client))
}

fn service(name: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "template": {"image": "shoal-test/busybox:1", "command": ["sleep", "1000"]},
        },
    })
}

fn meta<'a>(v: &'a Value, field: &str) -> &'a Value {
    &v["metadata"][field]
}

fn svc_key(name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Service, "default", name)
}

async fn next(w: &mut shoal_store::WatchStream) -> WatchEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("a watch event within 10 s")
            .expect("the watch goes on")
            .expect("no watch error");
        if !matches!(ev, WatchEvent::Progress(_)) {
            return ev;
        }
    }
}

#[tokio::test]
async fn objects_are_created_read_updated_and_conflicts_refused() {
    let (_server, kube) = serve(MemStore::new()).await;
    kube.check_kinds().await.unwrap();

    // A create keeps the status it was given (written after the create,
    // as a status subresource drops it).
    let mut svc = service("web", 2);
    svc["status"] = json!({"observedGeneration": 0, "replicas": 0});
    let created = kube.create(svc).await.unwrap();
    assert_eq!(created["kind"], "Service");
    assert_eq!(created["status"]["replicas"], 0);
    assert_eq!(meta(&created, "generation"), 1);
    assert!(
        meta(&created, "uid")
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );
    let got = kube.get(&svc_key("web")).await.unwrap().unwrap();
    assert_eq!(got, created);
    assert_eq!(kube.get(&svc_key("nope")).await.unwrap(), None);
    assert!(matches!(
        kube.create(service("web", 1)).await,
        Err(StoreError::AlreadyExists(_))
    ));

    // A stale resourceVersion is a conflict; none at all is unconditional.
    let mut changed = created.clone();
    changed["spec"]["replicas"] = json!(3);
    let updated = kube.update(changed.clone()).await.unwrap();
    assert_eq!(updated["spec"]["replicas"], 3);
    assert_eq!(meta(&updated, "generation"), 2);
    assert_eq!(
        updated["status"]["replicas"], 0,
        "an update keeps the status"
    );
    assert!(matches!(
        kube.update(changed).await,
        Err(StoreError::Conflict { .. })
    ));
    let mut unconditional = service("web", 5);
    unconditional["status"] = json!({"replicas": 99});
    let updated = kube.update(unconditional).await.unwrap();
    assert_eq!(updated["spec"]["replicas"], 5);
    assert_eq!(updated["status"]["replicas"], 0);

    // Status alone.
    let mut st = updated.clone();
    st["status"] = json!({"observedGeneration": 3, "replicas": 5, "readyReplicas": 4});
    st["spec"]["replicas"] = json!(1);
    let after = kube.update_status(st).await.unwrap();
    assert_eq!(after["status"]["readyReplicas"], 4);
    assert_eq!(
        after["spec"]["replicas"], 5,
        "a status update keeps the spec"
    );

    // Invalid objects are refused by the server, with the field.
    let mut bad = service("bad", 1);
    bad["spec"]["replicas"] = json!(-1);
    assert!(matches!(
        kube.create(bad).await,
        Err(StoreError::Invalid(m)) if m.contains("replicas")
    ));
}

#[tokio::test]
async fn lists_select_and_scopes_hold() {
    let (_server, kube) = serve(MemStore::new()).await;
    for (name, n) in [("b", 1), ("a", 2)] {
        kube.create(service(name, n)).await.unwrap();
    }
    let mut other = service("c", 1);
    other["metadata"]["namespace"] = json!("other");
    kube.create(other).await.unwrap();

    let all = kube
        .list(Kind::Service, &ListOptions::default())
        .await
        .unwrap();
    let names: Vec<_> = all
        .items
        .iter()
        .map(|v| meta(v, "name").as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "sorted by namespace, then name");
    assert!(all.items.iter().all(|v| v["kind"] == "Service"));
    assert!(all.revision > 0);
    assert!(kube.revision().await.unwrap() >= all.revision);

    let one_ns = ListOptions {
        namespace: Some("other".into()),
        ..ListOptions::default()
    };
    assert_eq!(
        kube.list(Kind::Service, &one_ns).await.unwrap().items.len(),
        1
    );
    let labelled = ListOptions {
        label_selector: Some("app in (a,c)".into()),
        ..ListOptions::default()
    };
    assert_eq!(
        kube.list(Kind::Service, &labelled)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let bad = ListOptions {
        label_selector: Some("app in (".into()),
        ..ListOptions::default()
    };
    assert!(matches!(
        kube.list(Kind::Service, &bad).await,
        Err(StoreError::BadSelector(_) | StoreError::Invalid(_))
    ));

    // A cluster-scoped Host and a core v1 Event.
    let host = kube
        .create(json!({
            "apiVersion": "shoal.dev/v1alpha1", "kind": "Host",
            "metadata": {"name": "h1", "labels": {"zone": "east"}},
            "spec": {"availability": "Active"},
        }))
        .await
        .unwrap();
    assert_eq!(meta(&host, "namespace"), &Value::Null);
    assert!(
        kube.get(&ObjectKey::cluster(Kind::Host, "h1"))
            .await
            .unwrap()
            .is_some()
    );
    kube.create(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "default"},
        "involvedObject": {"apiVersion": "shoal.dev/v1alpha1", "kind": "Service", "name": "a", "namespace": "default"},
        "reason": "Scaled", "message": "scaled to 2", "type": "Normal", "count": 1,
        "source": {"component": "shoal-orchestrator"},
    }))
    .await
    .unwrap();
    let events = kube
        .list(Kind::Event, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(events.items.len(), 1);
    assert_eq!(events.items[0]["kind"], "Event");
    assert_eq!(events.items[0]["reason"], "Scaled");
    let gone = kube
        .delete(
            &ObjectKey::namespaced(Kind::Event, "default", "web.1"),
            &DeletePreconditions::default(),
        )
        .await
        .unwrap();
    assert!(matches!(gone, DeleteOutcome::Deleted(_)));
}

#[tokio::test]
async fn deletes_honour_finalizers_and_preconditions() {
    let (_server, kube) = serve(MemStore::new()).await;
    let mut svc = service("web", 1);
    svc["metadata"]["finalizers"] = json!(["shoal.dev/test"]);
    let created = kube.create(svc).await.unwrap();

    let wrong_uid = DeletePreconditions {
        uid: Some("not-its-uid".into()),
        resource_version: None,
    };
    assert!(matches!(
        kube.delete(&svc_key("web"), &wrong_uid).await,
        Err(StoreError::Conflict { .. })
    ));
    let pre = DeletePreconditions {
        uid: meta(&created, "uid").as_str().map(String::from),
        resource_version: None,
    };
    let marked = match kube.delete(&svc_key("web"), &pre).await.unwrap() {
        DeleteOutcome::Marked(v) => v,
        other => panic!("expected a mark, got {other:?}"),
    };
    assert!(meta(&marked, "deletionTimestamp").is_string());

    // Removing the last finalizer deletes it.
    let mut last = marked.clone();
    last["metadata"]["finalizers"] = json!([]);
    kube.update(last).await.unwrap();
    assert_eq!(kube.get(&svc_key("web")).await.unwrap(), None);
    assert!(matches!(
        kube.delete(&svc_key("web"), &DeletePreconditions::default())
            .await,
        Err(StoreError::NotFound(_))
    ));

    kube.create(service("plain", 1)).await.unwrap();
    let gone = kube
        .delete(&svc_key("plain"), &DeletePreconditions::default())
        .await
        .unwrap();
    assert!(matches!(gone, DeleteOutcome::Deleted(v) if meta(&v, "name") == "plain"));
}

#[tokio::test]
async fn watches_deliver_changes_in_order_across_the_servers_timeouts() {
    let (_server, kube) = serve(MemStore::new()).await;
    kube.create(service("before", 1)).await.unwrap();
    let from = kube.revision().await.unwrap();
    // Every request of this watch ends after 1 s: the stream goes on.
    let kube = kube.with_watch_timeout(1);
    let mut w = kube
        .watch(Kind::Service, from, &ListOptions::default())
        .await
        .unwrap();

    let created = kube.create(service("web", 1)).await.unwrap();
    match next(&mut w).await {
        WatchEvent::Added(v) => {
            assert_eq!(meta(&v, "name"), "web");
            assert_eq!(v["kind"], "Service");
            assert_eq!(
                meta(&v, "resourceVersion"),
                meta(&created, "resourceVersion")
            );
        }
        other => panic!("expected Added, got {other:?}"),
    }
    // Past two of the server's timeouts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut changed = created.clone();
    changed["spec"]["replicas"] = json!(2);
    kube.update(changed).await.unwrap();
    match next(&mut w).await {
        WatchEvent::Modified(v) => assert_eq!(v["spec"]["replicas"], 2),
        other => panic!("expected Modified, got {other:?}"),
    }
    kube.delete(&svc_key("web"), &DeletePreconditions::default())
        .await
        .unwrap();
    match next(&mut w).await {
        WatchEvent::Deleted(v) => assert_eq!(meta(&v, "name"), "web"),
        other => panic!("expected Deleted, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_from_beyond_the_history_is_too_old() {
    let (_server, kube) = serve(MemStore::with_config(WatchConfig {
        history: 2,
        ..WatchConfig::default()
    }))
    .await;
    let from = kube.create(service("first", 1)).await.unwrap();
    let from: u64 = meta(&from, "resourceVersion")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for n in 2..=6 {
        kube.create(service(&format!("s{n}"), 1)).await.unwrap();
    }
    let res = match kube
        .watch(Kind::Service, from, &ListOptions::default())
        .await
    {
        Err(e) => Err(e),
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(e))) => Err(e),
            other => Ok(format!("{other:?}")),
        },
    };
    assert!(
        matches!(res, Err(StoreError::TooOld { requested, .. }) if requested == from),
        "{res:?}"
    );
}
