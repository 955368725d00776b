//! Conformance of the core group's `v1` Events: kube-rs `Api<Event>` (list
//! and watch with field selectors, validation) and the real `kubectl`
//! (`get events`, `describe`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use shoal_crds::Service;
use shoal_store::events::{EventRecorder, EventType, ObjectRef, component};
use shoal_store::{ClusterStore, Kind};

fn svc_ref(svc: &Service) -> ObjectRef {
    ObjectRef::of(svc)
}

#[tokio::test]
async fn discovery_lists_events_in_the_core_group() {
    let (server, _store) = common::start().await;
    let client = common::client(&server.url());
    let api = client
        .request::<Value>(http::Request::get("/api").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(api["versions"], json!(["v1"]));
    let v1 = client
        .request::<Value>(http::Request::get("/api/v1").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(v1["groupVersion"], "v1");
    let res = v1["resources"].as_array().unwrap();
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!(res[0]["name"], "events");
    assert_eq!(res[0]["kind"], "Event");
    assert_eq!(res[0]["namespaced"], true);
    assert_eq!(res[0]["shortNames"], json!(["ev"]));
    assert!(
        res[0]["verbs"]
            .as_array()
            .unwrap()
            .contains(&json!("watch"))
    );
    // Events are not part of shoal.dev.
    let shoal = client
        .request::<Value>(
            http::Request::get("/apis/shoal.dev/v1alpha1")
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        !shoal["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "events")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn kube_rs_lists_and_watches_events_with_field_selectors() {
    let (server, store) = common::start().await;
    let client = common::client(&server.url());
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let web = services
        .create(&PostParams::default(), &common::typed_service("web", 1))
        .await
        .unwrap();
    let db = services
        .create(&PostParams::default(), &common::typed_service("db", 1))
        .await
        .unwrap();
    let rec = EventRecorder::new(store.clone(), component::ORCHESTRATOR);
    rec.record(
        &svc_ref(&web),
        EventType::Normal,
        "Scaled",
        "Scaled from 1 to 3 replicas",
    )
    .await
    .unwrap();
    rec.record(
        &svc_ref(&db),
        EventType::Warning,
        "Unhealthy",
        "check failed",
    )
    .await
    .unwrap();

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let all = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 2);
    let only_web = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Service,involvedObject.name=web,involvedObject.namespace=default,involvedObject.uid={}",
            web.metadata.uid.as_deref().unwrap()
        )))
        .await
        .unwrap();
    assert_eq!(only_web.items.len(), 1);
    let e = &only_web.items[0];
    assert_eq!(e.reason.as_deref(), Some("Scaled"));
    assert_eq!(e.count, Some(1));
    assert_eq!(
        e.involved_object.api_version.as_deref(),
        Some("shoal.dev/v1alpha1")
    );
    let warnings = Api::<Event>::all(client.clone())
        .list(&ListParams::default().fields("type=Warning"))
        .await
        .unwrap();
    assert_eq!(warnings.items.len(), 1);
    assert_eq!(
        warnings.items[0].involved_object.name.as_deref(),
        Some("db")
    );
    // An unknown field is a 400 naming the supported ones.
    let err = events
        .list(&ListParams::default().fields("spec.x=1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("involvedObject.name")),
        "{err:?}"
    );

    // Watch with a field selector: only web's events, a repeat as MODIFIED.
    let rv = only_web.metadata.resource_version.clone().unwrap();
    let mut stream = events
        .watch(
            &WatchParams::default().fields("involvedObject.name=web"),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    rec.record(
        &svc_ref(&db),
        EventType::Warning,
        "Unhealthy",
        "check failed",
    )
    .await
    .unwrap();
    rec.record(
        &svc_ref(&web),
        EventType::Normal,
        "Scaled",
        "Scaled from 1 to 3 replicas",
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Modified(e) => {
            assert_eq!(e.involved_object.name.as_deref(), Some("web"));
            assert_eq!(e.count, Some(2));
        }
        other => panic!("expected the bumped event, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn created_events_are_validated_naming_the_field() {
    let (server, store) = common::start().await;
    let client = common::client(&server.url());
    let events: Api<Event> = Api::namespaced(client, "default");
    let mut ev: Event = serde_json::from_value(json!({
        "metadata": { "name": "web.1" },
        "involvedObject": { "kind": "Service", "namespace": "default" },
        "message": "m",
    }))
    .unwrap();
    let err = events
        .create(&PostParams::default(), &ev)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err:?}")
    };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("involvedObject.name"), "{}", s.message);
    assert!(s.message.contains("reason"), "{}", s.message);
    ev.involved_object.name = Some("web".into());
    ev.reason = Some("Custom".into());
    let created = events.create(&PostParams::default(), &ev).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    let stored = store
        .get(&shoal_store::ObjectKey::namespaced(
            Kind::Event,
            "default",
            "web.1",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored["apiVersion"], "v1");
    events.delete("web.1", &Default::default()).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_and_describes_events() {
    let (server, store) = common::start().await;
    let k = common::Kubectl::new(&server.url());
    let services: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    let web = services
        .create(&PostParams::default(), &common::typed_service("web", 1))
        .await
        .unwrap();
    let store: Arc<dyn ClusterStore> = store;
    let rec = EventRecorder::new(store.clone(), component::ORCHESTRATOR);
    for _ in 0..3 {
        rec.record(
            &svc_ref(&web),
            EventType::Normal,
            "Scaled",
            "Scaled from 1 to 3 replicas",
        )
        .await
        .unwrap();
    }
    EventRecorder::new(store, component::SCHEDULER)
        .record(
            &ObjectRef {
                kind: Kind::Task,
                namespace: Some("default".into()),
                name: "web-0-abcde".into(),
                uid: None,
            },
            EventType::Warning,
            "FailedScheduling",
            "0/3 hosts: 3 insufficient memory",
        )
        .await
        .unwrap();

    let out = k.ok(&["get", "events"]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{out}"
    );
    assert!(
        out.contains("(x3 over")
            && out.contains("service/web")
            && out.contains("Scaled from 1 to 3 replicas"),
        "{out}"
    );
    assert!(
        out.contains("Warning") && out.contains("task/web-0-abcde"),
        "{out}"
    );

    let out = k
        .ok(&[
            "get",
            "ev",
            "--field-selector",
            "reason=FailedScheduling",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("event/web-0-abcde."), "{out}");

    let out = k.ok(&["get", "events", "-A", "-o", "wide"]).await;
    assert!(
        out.contains("NAMESPACE") && out.contains("shoal-orchestrator"),
        "{out}"
    );

    // kubectl describe lists the object's events through the core API.
    let out = k.ok(&["describe", "ssvc", "web"]).await;
    let events = out
        .split("Events:")
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        events.contains("Scaled") && events.contains("Scaled from 1 to 3 replicas"),
        "{out}"
    );
    assert!(!events.contains("FailedScheduling"), "{out}");
    server.shutdown().await.unwrap();
}

async fn next_event(
    w: &mut futures::stream::BoxStream<'static, Result<Event, kube::runtime::watcher::Error>>,
) -> Event {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn kube_runtime_watcher_follows_events_with_a_field_selector() {
    use kube::runtime::{WatchStreamExt, watcher};
    let (server, store) = common::start().await;
    let client = common::client(&server.url());
    let web = ObjectRef {
        kind: Kind::Service,
        namespace: Some("default".into()),
        name: "web".into(),
        uid: None,
    };
    let db = ObjectRef {
        name: "db".into(),
        ..web.clone()
    };
    let rec = EventRecorder::new(store.clone(), component::ORCHESTRATOR);
    rec.record(
        &web,
        EventType::Normal,
        "Scaled",
        "Scaled from 1 to 2 replicas",
    )
    .await
    .unwrap();
    for streaming in [false, true] {
        let config = watcher::Config::default().fields("involvedObject.name=web");
        let config = if streaming {
            config.streaming_lists()
        } else {
            config
        };
        let api: Api<Event> = Api::namespaced(client.clone(), "default");
        let mut w = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        let first = next_event(&mut w).await;
        assert_eq!(first.reason.as_deref(), Some("Scaled"));
        rec.record(&db, EventType::Warning, "Unhealthy", "check failed")
            .await
            .unwrap();
        rec.record(
            &web,
            EventType::Normal,
            "Scaled",
            "Scaled from 2 to 4 replicas",
        )
        .await
        .unwrap();
        let second = next_event(&mut w).await;
        assert_eq!(
            second.message.as_deref(),
            Some("Scaled from 2 to 4 replicas"),
            "streaming lists: {streaming}"
        );
        assert_eq!(second.involved_object.name.as_deref(), Some("web"));
    }
    server.shutdown().await.unwrap();
}
