//! Behaviour every `ClusterStore` backend must show, written once and run
//! against each backend by its own test file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use shoal_store::{
    ClusterStore, DeleteOutcome, DeletePreconditions, Kind, ListOptions, ObjectKey, StoreError,
    WatchEvent, WatchStream, typed::revision_of,
};

pub fn svc(name: &str, replicas: u64) -> Value {
    json!({
        "apiVersion": "shoal.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"replicas": replicas}
    })
}

pub fn svc_key(name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Service, "default", name)
}

/// The next watch event, skipping progress notifications.
pub async fn next_change(w: &mut WatchStream) -> Result<WatchEvent, StoreError> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch event within 10 s")
            .expect("watch stream ended");
        if !matches!(ev, Ok(WatchEvent::Progress(_))) {
            return ev;
        }
    }
}

pub fn summary(ev: &WatchEvent) -> (&'static str, String, u64) {
    let (t, o) = match ev {
        WatchEvent::Added(o) => ("Added", o),
        WatchEvent::Modified(o) => ("Modified", o),
        WatchEvent::Deleted(o) => ("Deleted", o),
        WatchEvent::Progress(r) => return ("Progress", String::new(), *r),
    };
    (
        t,
        o["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        revision_of(o).unwrap_or(0),
    )
}

/// Create, update, status, conflict, delete through the trait.
pub async fn crud_and_conflict(store: &dyn ClusterStore) {
    let start = store.revision().await.unwrap();
    let created = store.create(svc("web", 1)).await.unwrap();
    let rv1 = revision_of(&created).unwrap();
    assert!(rv1 > start);
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(
        created["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36)
    );
    assert!(
        created["metadata"]["creationTimestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(
        store.get(&svc_key("web")).await.unwrap().as_ref(),
        Some(&created)
    );
    assert!(matches!(
        store.create(svc("web", 1)).await,
        Err(StoreError::AlreadyExists(_))
    ));

    let mut req = created.clone();
    req["spec"]["replicas"] = json!(2);
    let updated = store.update(req).await.unwrap();
    let rv2 = revision_of(&updated).unwrap();
    assert!(rv2 > rv1);
    assert_eq!(updated["metadata"]["generation"], 2);

    // The stale resourceVersion of `created` conflicts, for update, status and delete.
    let mut stale = created.clone();
    stale["spec"]["replicas"] = json!(5);
    let err = store.update(stale.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(err.is_retryable());
    stale["status"] = json!({"replicas": 5});
    assert!(matches!(
        store.update_status(stale).await,
        Err(StoreError::Conflict { .. })
    ));
    let pre = DeletePreconditions {
        uid: None,
        resource_version: Some(rv1),
    };
    assert!(matches!(
        store.delete(&svc_key("web"), &pre).await,
        Err(StoreError::Conflict { .. })
    ));

    let mut st = updated.clone();
    st["status"] = json!({"replicas": 2});
    st["spec"]["replicas"] = json!(9);
    let with_status = store.update_status(st).await.unwrap();
    assert_eq!(with_status["spec"]["replicas"], 2);
    assert_eq!(with_status["status"]["replicas"], 2);
    assert_eq!(with_status["metadata"]["generation"], 2);

    let pre = DeletePreconditions {
        uid: created["metadata"]["uid"].as_str().map(str::to_owned),
        resource_version: revision_of(&with_status),
    };
    let gone = store.delete(&svc_key("web"), &pre).await.unwrap();
    let DeleteOutcome::Deleted(last) = gone else {
        panic!("{gone:?}")
    };
    assert!(revision_of(&last).unwrap() > revision_of(&with_status).unwrap());
    assert_eq!(store.get(&svc_key("web")).await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), revision_of(&last).unwrap());
}

/// Finalizers: delete marks, the last removal deletes, no new finalizer once marked.
pub async fn finalizers(store: &dyn ClusterStore) {
    let mut obj = svc("fin", 1);
    obj["metadata"]["finalizers"] = json!(["shoal.dev/container-gone"]);
    let created = store.create(obj).await.unwrap();
    let mut w = store
        .watch(
            Kind::Service,
            revision_of(&created).unwrap(),
            &ListOptions::default(),
        )
        .await
        .unwrap();

    let marked = store
        .delete(&svc_key("fin"), &DeletePreconditions::default())
        .await
        .unwrap();
    let DeleteOutcome::Marked(marked) = marked else {
        panic!("{marked:?}")
    };
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(
        next_change(&mut w).await.unwrap(),
        WatchEvent::Modified(marked.clone())
    );
    assert!(store.get(&svc_key("fin")).await.unwrap().is_some());

    let mut more = marked.clone();
    more["metadata"]["finalizers"] = json!(["shoal.dev/container-gone", "x"]);
    assert!(matches!(
        store.update(more).await,
        Err(StoreError::Invalid(_))
    ));

    let mut done = marked.clone();
    done["metadata"]["finalizers"] = json!([]);
    let last = store.update(done).await.unwrap();
    assert!(revision_of(&last).unwrap() > revision_of(&marked).unwrap());
    assert_eq!(store.get(&svc_key("fin")).await.unwrap(), None);
    assert_eq!(
        next_change(&mut w).await.unwrap(),
        WatchEvent::Deleted(last)
    );
}

/// Events come in revision order, a watch resumes from any revision in the
/// history, and the selectors filter (with enter/leave as Added/Deleted).
pub async fn watch_ordering_and_resume(store: &dyn ClusterStore) {
    let start = store.revision().await.unwrap();
    let mut live = store
        .watch(Kind::Service, start, &ListOptions::default())
        .await
        .unwrap();
    let labelled = ListOptions {
        label_selector: Some("tier=front".into()),
        ..Default::default()
    };
    let mut filtered = store.watch(Kind::Service, start, &labelled).await.unwrap();

    let a = store.create(svc("a", 1)).await.unwrap();
    let b = store.create(svc("b", 1)).await.unwrap();
    let mut req = a.clone();
    req["metadata"]["labels"]["tier"] = json!("front");
    let a2 = store.update(req).await.unwrap();
    store
        .create(json!({"kind": "Host", "metadata": {"name": "h1"}}))
        .await
        .unwrap();
    let mut req = a2.clone();
    req["metadata"]["labels"]["tier"] = json!("back");
    let a3 = store.update(req).await.unwrap();
    let DeleteOutcome::Deleted(b_gone) = store
        .delete(&svc_key("b"), &DeletePreconditions::default())
        .await
        .unwrap()
    else {
        panic!("b has no finalizers")
    };

    let want = vec![
        ("Added", "a".to_owned(), revision_of(&a).unwrap()),
        ("Added", "b".to_owned(), revision_of(&b).unwrap()),
        ("Modified", "a".to_owned(), revision_of(&a2).unwrap()),
        ("Modified", "a".to_owned(), revision_of(&a3).unwrap()),
        ("Deleted", "b".to_owned(), revision_of(&b_gone).unwrap()),
    ];
    let mut got = Vec::new();
    for _ in 0..want.len() {
        got.push(summary(&next_change(&mut live).await.unwrap()));
    }
    assert_eq!(got, want);
    assert!(
        got.windows(2).all(|p| p[0].2 < p[1].2),
        "revisions increase: {got:?}"
    );

    // The filtered watch sees `a` enter (Added) and leave (Deleted) the selection.
    let f1 = summary(&next_change(&mut filtered).await.unwrap());
    let f2 = summary(&next_change(&mut filtered).await.unwrap());
    assert_eq!(f1, ("Added", "a".to_owned(), revision_of(&a2).unwrap()));
    assert_eq!(f2, ("Deleted", "a".to_owned(), revision_of(&a3).unwrap()));

    // Resume from the middle: exactly the later changes, from the history.
    let mut resumed = store
        .watch(
            Kind::Service,
            revision_of(&a2).unwrap(),
            &ListOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(summary(&next_change(&mut resumed).await.unwrap()), want[3]);
    assert_eq!(summary(&next_change(&mut resumed).await.unwrap()), want[4]);

    // Host changes reach Host watchers only.
    let mut hosts = store
        .watch(Kind::Host, start, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(summary(&next_change(&mut hosts).await.unwrap()).1, "h1");

    // The list is consistent with its revision.
    let list = store
        .list(Kind::Service, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(list.revision, store.revision().await.unwrap());
    assert_eq!(list.items, vec![a3]);
}

/// With a history of `history` changes, a watch from before it is too old.
pub async fn too_old_beyond_history(store: &dyn ClusterStore, history: u64) {
    let start = store.revision().await.unwrap();
    for i in 0..history + 3 {
        store.create(svc(&format!("old-{i}"), 1)).await.unwrap();
    }
    let now = store.revision().await.unwrap();
    match store
        .watch(Kind::Service, start, &ListOptions::default())
        .await
    {
        Err(StoreError::TooOld { requested, oldest }) => {
            assert_eq!(requested, start);
            assert!(
                oldest > start && oldest <= now - history,
                "oldest {oldest}, now {now}"
            );
        }
        Err(e) => panic!("expected TooOld, got {e:?}"),
        Ok(_) => panic!("expected TooOld, got a stream"),
    }
    // The edge of the history still works.
    let mut w = store
        .watch(Kind::Service, now - history, &ListOptions::default())
        .await
        .unwrap();
    assert_eq!(
        summary(&next_change(&mut w).await.unwrap()).2,
        now - history + 1
    );
}

/// A watcher that does not read is cut off with TooOld; writers never wait.
pub async fn slow_watcher_is_cut_off(store: &dyn ClusterStore, buffer: usize) {
    let start = store.revision().await.unwrap();
    let mut w = store
        .watch(Kind::Service, start, &ListOptions::default())
        .await
        .unwrap();
    for i in 0..buffer + 10 {
        tokio::time::timeout(
            Duration::from_secs(10),
            store.create(svc(&format!("slow-{i}"), 1)),
        )
        .await
        .expect("a write never waits for a watcher")
        .unwrap();
    }
    let mut seen = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("stream answers")
        {
            Some(Ok(WatchEvent::Progress(_))) => {}
            Some(Ok(_)) => seen += 1,
            Some(Err(StoreError::TooOld { .. })) => break,
            other => panic!("expected TooOld, got {other:?}"),
        }
    }
    assert!(
        seen <= buffer,
        "saw {seen} events with a buffer of {buffer}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .is_none(),
        "stream ends"
    );
}

/// Progress notifications carry the current revision.
pub async fn progress_notifications(store: &dyn ClusterStore) {
    let created = store.create(svc("prog", 1)).await.unwrap();
    let rev = revision_of(&created).unwrap();
    let mut w = store
        .watch(Kind::Task, rev, &ListOptions::default())
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev, WatchEvent::Progress(store.revision().await.unwrap()));
}

/// A bad selector is a BadSelector error for list and watch.
pub async fn bad_selectors(store: &dyn ClusterStore) {
    let bad = ListOptions {
        label_selector: Some("app in (x".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.list(Kind::Service, &bad).await,
        Err(StoreError::BadSelector(_))
    ));
    assert!(matches!(
        store.watch(Kind::Service, 0, &bad).await,
        Err(StoreError::BadSelector(_))
    ));
    let bad = ListOptions {
        field_selector: Some("spec.replicas=1".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.list(Kind::Service, &bad).await,
        Err(StoreError::BadSelector(_))
    ));
}
