//! What a cluster's kube-apiserver answers differently from Shoal's embedded
//! API server, as mocked exchanges: the backend must bridge each.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures::StreamExt;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use shoal_kubestore::KubeStore;
use shoal_store::{
    ClusterStore, DeleteOutcome, DeletePreconditions, Kind, ListOptions, ObjectKey, StoreError,
    WatchEvent,
};

/// One expected request and its answer.
struct Exchange {
    method: &'static str,
    /// The request's path and query start with this.
    path: &'static str,
    /// Checks the request's JSON body.
    check: Option<fn(&Value)>,
    status: u16,
    body: String,
}

fn ex(method: &'static str, path: &'static str, status: u16, body: Value) -> Exchange {
    Exchange {
        method,
        path,
        check: None,
        status,
        body: body.to_string(),
    }
}

/// A client whose API server answers `exchanges` in order (and fails the
/// test on any other request).
fn mocked_client(exchanges: Vec<Exchange>) -> (kube::Client, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        for e in exchanges {
            let (req, send) = handle.next_request().await.expect("a request");
            let uri = req.uri().path_and_query().unwrap().as_str().to_string();
            assert_eq!(req.method().as_str(), e.method, "{uri}");
            assert!(uri.starts_with(e.path), "expected {} got {uri}", e.path);
            if let Some(check) = e.check {
                let bytes = req.into_body().collect_bytes().await.unwrap();
                check(&serde_json::from_slice(&bytes).unwrap());
            }
            send.send_response(
                Response::builder()
                    .status(e.status)
                    .body(Body::from(e.body.into_bytes()))
                    .unwrap(),
            );
        }
    });
    (kube::Client::new(service, "default"), server)
}

/// A store over [`mocked_client`].
fn mocked(exchanges: Vec<Exchange>) -> (KubeStore, tokio::task::JoinHandle<()>) {
    let (client, server) = mocked_client(exchanges);
    (KubeStore::new(client), server)
}

fn svc(rv: &str) -> Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": rv, "uid": "u1"},
        "spec": {"replicas": 1, "template": {"image": "i", "command": ["c"]}},
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "code": code, "reason": reason, "message": message})
}

const SVC: &str = "/apis/shoal.dev/v1alpha1/namespaces/default/services";

#[tokio::test]
async fn a_create_whose_status_is_dropped_writes_it_after() {
    let mut given = svc("");
    given["status"] = json!({"replicas": 3});
    let created = svc("5"); // the status subresource dropped it
    let mut with_status = svc("6");
    with_status["status"] = json!({"replicas": 3});
    let (kube, server) = mocked(vec![
        Exchange {
            check: Some(|b| assert!(b["metadata"].get("resourceVersion").is_none(), "{b}")),
            ..ex("POST", SVC, 201, created)
        },
        Exchange {
            check: Some(|b| {
                assert_eq!(b["metadata"]["resourceVersion"], "5");
                assert_eq!(b["status"]["replicas"], 3);
            }),
            ..ex(
                "PUT",
                "/apis/shoal.dev/v1alpha1/namespaces/default/services/web/status",
                200,
                with_status.clone(),
            )
        },
    ]);
    assert_eq!(kube.create(given).await.unwrap(), with_status);
    server.await.unwrap();
}

#[tokio::test]
async fn an_update_without_a_resource_version_is_made_conditional_and_retried() {
    let (kube, server) = mocked(vec![
        ex(
            "GET",
            "/apis/shoal.dev/v1alpha1/namespaces/default/services/web",
            200,
            svc("7"),
        ),
        Exchange {
            check: Some(|b| assert_eq!(b["metadata"]["resourceVersion"], "7")),
            ..ex(
                "PUT",
                "/apis/shoal.dev/v1alpha1/namespaces/default/services/web",
                409,
                status(409, "Conflict", "the object has been modified"),
            )
        },
        ex(
            "GET",
            "/apis/shoal.dev/v1alpha1/namespaces/default/services/web",
            200,
            svc("8"),
        ),
        Exchange {
            check: Some(|b| assert_eq!(b["metadata"]["resourceVersion"], "8")),
            ..ex(
                "PUT",
                "/apis/shoal.dev/v1alpha1/namespaces/default/services/web",
                200,
                svc("9"),
            )
        },
    ]);
    let stored = kube.update(svc("")).await.unwrap();
    assert_eq!(stored["metadata"]["resourceVersion"], "9");
    server.await.unwrap();
}

#[tokio::test]
async fn list_items_without_kind_get_it_and_a_non_integer_version_is_refused() {
    let (kube, server) = mocked(vec![
        ex(
            "GET",
            "/api/v1/events",
            200,
            json!({
                "kind": "EventList", "apiVersion": "v1", "metadata": {"resourceVersion": "12"},
                "items": [{"metadata": {"name": "b", "namespace": "x"}, "reason": "R"},
                          {"metadata": {"name": "a", "namespace": "x"}, "reason": "R"}],
            }),
        ),
        ex(
            "GET",
            "/apis/shoal.dev/v1alpha1/services",
            200,
            json!({
                "kind": "ServiceList", "metadata": {"resourceVersion": "abc"}, "items": [],
            }),
        ),
    ]);
    let list = kube
        .list(Kind::Event, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(list.revision, 12);
    assert_eq!(list.items[0]["metadata"]["name"], "a");
    assert!(
        list.items
            .iter()
            .all(|i| i["kind"] == "Event" && i["apiVersion"] == "v1")
    );
    assert!(matches!(
        kube.list(Kind::Service, &ListOptions::default()).await,
        Err(StoreError::Internal(m)) if m.contains("not an integer")
    ));
    server.await.unwrap();
}

#[tokio::test]
async fn a_delete_answered_with_a_status_is_a_deletion() {
    let (kube, server) = mocked(vec![
        Exchange {
            check: Some(|b| assert_eq!(b["preconditions"]["uid"], "u1")),
            ..ex(
                "DELETE",
                "/api/v1/namespaces/default/events/e1",
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success",
                        "details": {"name": "e1", "kind": "events"}}),
            )
        },
        ex(
            "DELETE",
            "/apis/shoal.dev/v1alpha1/hosts/h1",
            403,
            status(403, "Forbidden", "hosts is forbidden: User cannot delete"),
        ),
    ]);
    let pre = DeletePreconditions {
        uid: Some("u1".into()),
        resource_version: None,
    };
    match kube
        .delete(&ObjectKey::namespaced(Kind::Event, "default", "e1"), &pre)
        .await
        .unwrap()
    {
        DeleteOutcome::Deleted(v) => {
            assert_eq!(v["metadata"]["name"], "e1");
            assert_eq!(v["kind"], "Event");
        }
        other => panic!("{other:?}"),
    }
    let denied = kube
        .delete(
            &ObjectKey::cluster(Kind::Host, "h1"),
            &DeletePreconditions::default(),
        )
        .await;
    assert!(
        matches!(&denied, Err(StoreError::Internal(m)) if m.contains("forbidden")),
        "{denied:?}"
    );
    assert!(!denied.unwrap_err().is_retryable());
    server.await.unwrap();
}

#[tokio::test]
async fn a_gone_error_inside_the_stream_ends_the_watch_as_too_old() {
    let mut added = svc("42");
    added.as_object_mut().unwrap().remove("kind");
    let lines = [
        json!({"type": "ADDED", "object": added}),
        json!({"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "shoal.dev/v1alpha1",
                                             "metadata": {"resourceVersion": "45"}}}),
        json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version: 45 (50)")}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let (kube, server) = mocked(vec![Exchange {
        method: "GET",
        path: "/apis/shoal.dev/v1alpha1/services?",
        check: None,
        status: 200,
        body,
    }]);
    let mut w = kube
        .watch(Kind::Service, 41, &ListOptions::default())
        .await
        .unwrap();
    match w.next().await {
        Some(Ok(WatchEvent::Added(v))) => assert_eq!(v["kind"], "Service"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(w.next().await, Some(Ok(WatchEvent::Progress(45)))));
    match w.next().await {
        Some(Err(StoreError::TooOld { requested, .. })) => assert_eq!(requested, 45),
        other => panic!("{other:?}"),
    }
    assert!(w.next().await.is_none());
    server.await.unwrap();
}

/// What several operators share: the Lease of their leader and the Secret of
/// their cluster state.
mod operator_ha {
    use super::*;
    use shoal_kubestore::lease::{LeaseConfig, LeaseElector};
    use std::time::Duration;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/shoal/leases/op";

    fn lease(holder: Option<&str>, rv: &str, transitions: i32) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "op", "namespace": "shoal", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                     "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": transitions},
        })
    }

    fn elector(client: kube::Client) -> LeaseElector {
        LeaseElector::new(client, LeaseConfig::new("shoal", "op", "me"))
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_a_lost_race_is_not_leading() {
        let (client, server) = mocked_client(vec![
            ex("GET", LEASE, 404, status(404, "NotFound", "not found")),
            Exchange {
                check: Some(|b| {
                    assert_eq!(b["spec"]["holderIdentity"], "me");
                    assert_eq!(b["spec"]["leaseDurationSeconds"], 15);
                }),
                ..ex(
                    "POST",
                    "/apis/coordination.k8s.io/v1/namespaces/shoal/leases",
                    201,
                    lease(Some("me"), "1", 0),
                )
            },
            ex("GET", LEASE, 404, status(404, "NotFound", "not found")),
            ex(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/shoal/leases",
                409,
                status(409, "AlreadyExists", "exists"),
            ),
        ]);
        let mut e = elector(client);
        assert!(e.try_acquire_or_renew().await.unwrap());
        assert!(!e.try_acquire_or_renew().await.unwrap());
        server.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_is_waited_out_by_this_clock_then_taken_over() {
        let (client, server) = mocked_client(vec![
            ex("GET", LEASE, 200, lease(Some("other"), "5", 2)),
            // 10 s later, unchanged: still theirs.
            ex("GET", LEASE, 200, lease(Some("other"), "5", 2)),
            // They renewed (a new record): the wait starts again.
            ex("GET", LEASE, 200, lease(Some("other"), "6", 2)),
            ex("GET", LEASE, 200, lease(Some("other"), "6", 2)),
            // 16 s after the last change: taken.
            ex("GET", LEASE, 200, lease(Some("other"), "6", 2)),
            Exchange {
                check: Some(|b| {
                    assert_eq!(b["metadata"]["resourceVersion"], "6");
                    assert_eq!(b["spec"]["holderIdentity"], "me");
                    assert_eq!(b["spec"]["leaseTransitions"], 3);
                }),
                ..ex("PUT", LEASE, 200, lease(Some("me"), "7", 3))
            },
        ]);
        let mut e = elector(client);
        assert!(!e.try_acquire_or_renew().await.unwrap());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!e.try_acquire_or_renew().await.unwrap());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            !e.try_acquire_or_renew().await.unwrap(),
            "renewed: wait again"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!e.try_acquire_or_renew().await.unwrap());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(e.try_acquire_or_renew().await.unwrap());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_holder_renews_loses_on_a_conflict_and_releases() {
        let (client, server) = mocked_client(vec![
            ex("GET", LEASE, 200, lease(Some("me"), "8", 1)),
            Exchange {
                check: Some(|b| {
                    assert_eq!(b["spec"]["holderIdentity"], "me");
                    assert_ne!(b["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z");
                }),
                ..ex("PUT", LEASE, 200, lease(Some("me"), "9", 1))
            },
            ex("GET", LEASE, 200, lease(Some("me"), "9", 1)),
            ex("PUT", LEASE, 409, status(409, "Conflict", "modified")),
            ex("GET", LEASE, 200, lease(Some("me"), "10", 1)),
            Exchange {
                check: Some(|b| {
                    assert!(
                        b["spec"].get("holderIdentity").is_none_or(Value::is_null),
                        "{b}"
                    )
                }),
                ..ex("PUT", LEASE, 200, lease(None, "11", 1))
            },
            // Not ours: nothing written.
            ex("GET", LEASE, 200, lease(Some("other"), "12", 2)),
        ]);
        let mut e = elector(client);
        assert!(e.try_acquire_or_renew().await.unwrap());
        assert!(!e.try_acquire_or_renew().await.unwrap());
        e.release().await.unwrap();
        e.release().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_leaders_pod_is_labelled_and_unlabelled() {
        use shoal_kubestore::lease::LeaderPod;
        const POD: &str = "/api/v1/namespaces/shoal/pods/op-0";
        let pod = |labels: Value| {
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "op-0", "namespace": "shoal", "labels": labels}})
        };
        let (client, server) = mocked_client(vec![
            Exchange {
                check: Some(|b| {
                    assert_eq!(
                        b,
                        &json!({"metadata": {"labels": {"shoal.dev/leader": "true"}}})
                    )
                }),
                ..ex("PATCH", POD, 200, pod(json!({"shoal.dev/leader": "true"})))
            },
            Exchange {
                check: Some(|b| {
                    assert_eq!(
                        b,
                        &json!({"metadata": {"labels": {"shoal.dev/leader": null}}})
                    )
                }),
                ..ex("PATCH", POD, 200, pod(json!({})))
            },
            ex(
                "PATCH",
                POD,
                403,
                status(403, "Forbidden", "pods \"op-0\" is forbidden"),
            ),
        ]);
        let leader = LeaderPod::new(client, "shoal", "op-0");
        leader.mark(true).await.unwrap();
        leader.mark(false).await.unwrap();
        assert!(leader.mark(true).await.is_err());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_state_secret_is_taken_or_published_and_a_lost_race_takes_theirs() {
        use shoal_kubestore::secret::{Published, SecretFiles};
        use std::os::unix::fs::PermissionsExt;
        const SECRETS: &str = "/api/v1/namespaces/shoal/secrets";
        let theirs = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "state", "namespace": "shoal"},
            // "theirs-id", "THEIR KEY"
            "data": {"cluster-id": "dGhlaXJzLWlk", "ca.key": "VEhFSVIgS0VZ"},
        });
        let (client, server) = mocked_client(vec![
            ex(
                "GET",
                "/api/v1/namespaces/shoal/secrets/state",
                404,
                status(404, "NotFound", ""),
            ),
            Exchange {
                check: Some(|b| {
                    assert_eq!(b["data"]["cluster-id"], "bWluZQ=="); // "mine"
                    assert_eq!(b["data"]["join-token"], "dG9r"); // "tok"
                    assert!(b["data"].get("ca.key").is_none(), "no such file yet");
                }),
                ..ex("POST", SECRETS, 409, status(409, "AlreadyExists", "exists"))
            },
            ex(
                "GET",
                "/api/v1/namespaces/shoal/secrets/state",
                200,
                theirs.clone(),
            ),
            ex("GET", "/api/v1/namespaces/shoal/secrets/state", 200, theirs),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let files = [
            ("cluster-id".to_string(), dir.join("cluster-id")),
            ("ca.key".to_string(), dir.join("pki/ca.key")),
        ];
        let secret = SecretFiles::new(client, "shoal", "state", files);
        assert!(!secret.fetch().await.unwrap());
        std::fs::write(dir.join("cluster-id"), "mine").unwrap();
        let extra = std::collections::BTreeMap::from([("join-token".to_string(), b"tok".to_vec())]);
        assert_eq!(secret.publish(extra).await.unwrap(), Published::TookTheirs);
        assert_eq!(
            std::fs::read_to_string(dir.join("cluster-id")).unwrap(),
            "theirs-id"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("pki/ca.key")).unwrap(),
            "THEIR KEY"
        );
        let mode = std::fs::metadata(dir.join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(secret.fetch().await.unwrap());
        server.await.unwrap();
    }
}
