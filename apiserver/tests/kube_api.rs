//! Conformance with kube-rs `Api<T>`: the verbs, subresources and Status
//! errors a kube-rs client relies on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use shoal_crds::{Host, Service};

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn create_get_list_replace_patch_delete() {
    let (server, _store) = common::start().await;
    let client = common::client(&server.url());
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    let created = api
        .create(&pp, &common::typed_service("web", 2))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(created.spec.replicas, Some(2));

    let got = api.get("web").await.unwrap();
    assert_eq!(got, created);

    api.create(&pp, &common::typed_service("api", 1))
        .await
        .unwrap();
    let list = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["api", "web"]);
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= 2);

    // Label selector and the metadata.name field selector.
    let by_label = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(by_label.items.len(), 1);
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=api"))
        .await
        .unwrap();
    assert_eq!(by_field.items[0].metadata.name.as_deref(), Some("api"));
    // All namespaces.
    let all: Api<Service> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    // A limit never truncates without a continue token.
    let limited = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert!(limited.items.len() == 2 || limited.metadata.continue_.is_some());

    // Replace with the right resourceVersion, then with a stale one.
    let mut changed = got.clone();
    changed.spec.replicas = Some(5);
    let replaced = api.replace("web", &pp, &changed).await.unwrap();
    assert_eq!(replaced.spec.replicas, Some(5));
    assert_eq!(replaced.metadata.generation, Some(2));
    let stale = api.replace("web", &pp, &changed).await.unwrap_err();
    let s = api_err(stale);
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));

    // Merge patch and JSON patch.
    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 7 } })),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.replicas, Some(7));
    let jp: json_patch::Patch = serde_json::from_value(json!([
        { "op": "replace", "path": "/spec/replicas", "value": 1 },
        { "op": "add", "path": "/metadata/labels/tier", "value": "front" },
    ]))
    .unwrap();
    let patched = api
        .patch("web", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap();
    assert_eq!(patched.spec.replicas, Some(1));
    assert_eq!(patched.metadata.labels.unwrap()["tier"], "front");
    // A patch that makes the object invalid is refused with the field path.
    let bad = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": -3 } })),
        )
        .await
        .unwrap_err();
    let s = api_err(bad);
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let causes = s.details.unwrap().causes;
    assert_eq!(causes[0].field, "spec.replicas");

    // Delete: the object comes back, then it is gone.
    let deleted = api.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(deleted.left().is_some());
    let s = api_err(api.get("web").await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert!(api.get_opt("web").await.unwrap().is_none());
    // Delete with a failing uid precondition.
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let s = api_err(api.delete("api", &dp).await.unwrap_err());
    assert_eq!(s.code, 409);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_and_scale_subresources_have_one_writer_each() {
    let (server, _store) = common::start().await;
    let api: Api<Service> = Api::namespaced(common::client(&server.url()), "default");
    let pp = PostParams::default();
    let mut svc = common::typed_service("web", 3);
    svc.status = Some(shoal_crds::ServiceStatus {
        replicas: Some(9),
        ..Default::default()
    });
    let created = api.create(&pp, &svc).await.unwrap();
    assert_eq!(
        created.status, None,
        "create ignores status (status subresource)"
    );

    // Status: replace and patch change status only.
    let mut with_status = created.clone();
    with_status.status = Some(shoal_crds::ServiceStatus {
        replicas: Some(3),
        ready_replicas: Some(1),
        ..Default::default()
    });
    with_status.spec.replicas = Some(100);
    let st = api.replace_status("web", &pp, &with_status).await.unwrap();
    assert_eq!(st.status.as_ref().unwrap().ready_replicas, Some(1));
    assert_eq!(
        st.spec.replicas,
        Some(3),
        "the status subresource does not change spec"
    );
    let st = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "readyReplicas": 3 } })),
        )
        .await
        .unwrap();
    assert_eq!(st.status.as_ref().unwrap().ready_replicas, Some(3));
    assert_eq!(api.get_status("web").await.unwrap().status, st.status);

    // The main resource never changes status.
    let p = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "readyReplicas": 0 }, "spec": { "replicas": 4 } })),
        )
        .await
        .unwrap();
    assert_eq!(p.status.as_ref().unwrap().ready_replicas, Some(3));
    assert_eq!(p.spec.replicas, Some(4));

    // Scale reads and writes spec.replicas.
    let scale = api.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(4));
    assert_eq!(scale.status.unwrap().replicas, 3);
    let scale = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 6 } })),
        )
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(6));
    assert_eq!(api.get("web").await.unwrap().spec.replicas, Some(6));
    let mut scale = api.get_scale("web").await.unwrap();
    scale.spec.as_mut().unwrap().replicas = Some(2);
    let scale = api.replace_scale("web", &pp, &scale).await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(2));
    assert_eq!(api.get("web").await.unwrap().spec.replicas, Some(2));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn errors_are_kubernetes_status_bodies() {
    let (server, _store) = common::start().await;
    let client = common::client(&server.url());
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    api.create(&pp, &common::typed_service("web", 1))
        .await
        .unwrap();

    let s = api_err(
        api.create(&pp, &common::typed_service("web", 1))
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert!(
        s.message.contains("\"web\" already exists"),
        "{}",
        s.message
    );

    // Invalid objects name every bad field.
    let mut bad = common::typed_service("bad", 1);
    bad.spec.replicas = Some(-1);
    bad.spec.template.image = String::new();
    let s = api_err(api.create(&pp, &bad).await.unwrap_err());
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let fields: Vec<String> = s
        .details
        .unwrap()
        .causes
        .into_iter()
        .map(|c| c.field)
        .collect();
    assert!(fields.contains(&"spec.replicas".to_string()), "{fields:?}");
    assert!(
        fields.contains(&"spec.template.image".to_string()),
        "{fields:?}"
    );

    // Strategic merge patch and server-side apply: 415 with a clear message.
    let s = api_err(
        api.patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({ "spec": { "replicas": 2 } })),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 415);
    // Server-side apply: kube-rs' Patch::Apply. The creator owns what it
    // wrote: changing it is a conflict until forced, then the applier owns it.
    let s = api_err(
        api.patch(
            "web",
            &PatchParams::apply("test"),
            &Patch::Apply(common::service("web", 2)),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 409, "{}", s.message);
    let applied = api
        .patch(
            "web",
            &PatchParams::apply("test").force(),
            &Patch::Apply(common::service("web", 2)),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.replicas, Some(2));
    let managed = applied.metadata.managed_fields.unwrap_or_default();
    assert!(
        managed.iter().any(
            |m| m.manager.as_deref() == Some("test") && m.operation.as_deref() == Some("Apply")
        ),
        "{managed:?}"
    );
    // Another manager applying a different value: 409, the field named.
    let s = api_err(
        api.patch(
            "web",
            &PatchParams::apply("other"),
            &Patch::Apply(common::service("web", 4)),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(s.code, 409);
    assert!(
        s.message.contains("conflict with \"test\": .spec.replicas"),
        "{}",
        s.message
    );
    let forced = api
        .patch(
            "web",
            &PatchParams::apply("other").force(),
            &Patch::Apply(common::service("web", 4)),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.replicas, Some(4));
    // Applying a service that does not exist creates it.
    let created = api
        .patch(
            "fresh",
            &PatchParams::apply("test"),
            &Patch::Apply(common::service("fresh", 1)),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    // The manager is required for an apply.
    let req = http::Request::patch("/apis/shoal.dev/v1alpha1/namespaces/default/services/web")
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&common::service("web", 4)).unwrap())
        .unwrap();
    let Err(kube::Error::Api(s)) = common::client(&server.url()).request_text(req).await else {
        panic!("an apply without a manager")
    };
    assert_eq!(s.code, 422);
    assert!(s.message.contains("fieldManager"), "{}", s.message);

    // A bad label selector is a 400.
    let s = api_err(
        api.list(&ListParams::default().labels("a in ("))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.code, 400);

    // A cluster-scoped kind works without a namespace.
    let hosts: Api<Host> = Api::all(client.clone());
    assert!(
        hosts
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_http_statuses_for_bodies_paths_and_field_validation() {
    let store = std::sync::Arc::new(shoal_store::mem::MemStore::new());
    let cfg = shoal_apiserver::Config {
        max_body_bytes: 4096,
        ..Default::default()
    };
    let server = shoal_apiserver::RunningServer::start("127.0.0.1:0".parse().unwrap(), store, cfg)
        .await
        .unwrap();
    let client = common::client(&server.url());
    let base = "/apis/shoal.dev/v1alpha1/namespaces/default/services";
    let send = |method: &str, path: &str, body: Vec<u8>, ct: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(body)
            .unwrap();
        let client = client.clone();
        async move {
            let resp = client
                .send(req.map(kube::client::Body::from))
                .await
                .unwrap();
            let code = resp.status().as_u16();
            let warning = resp
                .headers()
                .get("warning")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            let v: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            (code, v, warning)
        }
    };
    // 413 for a large body, as a Status.
    let (code, v, _) = send("POST", base, vec![b' '; 10_000], "application/json").await;
    assert_eq!((code, v["kind"].as_str()), (413, Some("Status")));
    // 400 for a body that is not JSON.
    let (code, v, _) = send("POST", base, b"{not json".to_vec(), "application/json").await;
    assert_eq!((code, v["reason"].as_str()), (400, Some("BadRequest")));
    // 404 for an unknown resource.
    let (code, v, _) = send(
        "GET",
        "/apis/shoal.dev/v1alpha1/namespaces/default/pods",
        vec![],
        "application/json",
    )
    .await;
    assert_eq!((code, v["kind"].as_str()), (404, Some("Status")));

    // fieldValidation: Strict refuses the unknown field by path; Warn drops it with a Warning.
    let mut svc = common::service("web", 1);
    svc["spec"]["template"]["bogus"] = serde_json::json!(true);
    let body = serde_json::to_vec(&svc).unwrap();
    let (code, v, _) = send(
        "POST",
        &format!("{base}?fieldValidation=Strict"),
        body.clone(),
        "application/json",
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(v["details"]["causes"][0]["field"], "spec.template.bogus");
    let (code, v, warning) = send(
        "POST",
        &format!("{base}?fieldValidation=Warn"),
        body.clone(),
        "application/json",
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert!(v["spec"]["template"].get("bogus").is_none());
    assert!(warning.unwrap().contains("spec.template.bogus"));
    let (code, _, _) = send(
        "POST",
        &format!("{base}?fieldValidation=Nonsense"),
        body,
        "application/json",
    )
    .await;
    assert_eq!(code, 400);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn cluster_scoped_hosts_are_served_without_a_namespace() {
    let (server, _store) = common::start().await;
    let client = common::client(&server.url());
    let hosts: Api<Host> = Api::all(client.clone());
    let host: Host = serde_json::from_value(json!({
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Host",
        "metadata": { "name": "node-1.example", "labels": { "zone": "east" } },
        "spec": { "availability": "Active" },
    }))
    .unwrap();
    let created = hosts.create(&PostParams::default(), &host).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    let patched = hosts
        .patch_status(
            "node-1.example",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "os": "linux", "arch": "amd64" } })),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().os.as_deref(), Some("linux"));
    let list = hosts
        .list(&ListParams::default().labels("zone=east"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    // A Host has no scale subresource, and no namespaced path.
    let s = api_err(hosts.get_scale("node-1.example").await.unwrap_err());
    assert_eq!(s.code, 404);
    let req =
        http::Request::get("/apis/shoal.dev/v1alpha1/namespaces/default/hosts/node-1.example")
            .body(kube::client::Body::from(Vec::new()))
            .unwrap();
    assert_eq!(client.send(req).await.unwrap().status().as_u16(), 404);
    hosts
        .delete("node-1.example", &DeleteParams::default())
        .await
        .unwrap();
    assert!(hosts.get_opt("node-1.example").await.unwrap().is_none());
    server.shutdown().await.unwrap();
}
