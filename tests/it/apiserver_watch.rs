//! List/watch: kube-rs watcher + reflector in sync across 1,000 changes (list-watch and
//! streaming lists), 410 Expired and recovery (history trimmed by count and by bytes),
//! bookmarks, selector transitions, timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver as apiserver_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apiserver_support::*;
use asg_batch_apiserver::ApiServerConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher};
use serde_json::{Value, json};

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad watch line {l:?}: {e}")))
        .collect()
}

async fn server_state(api: &Api<Widget>) -> BTreeMap<String, (i64, String)> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|w| {
            (
                w.metadata.name.clone().unwrap(),
                (w.spec.size, w.metadata.resource_version.clone().unwrap()),
            )
        })
        .collect()
}

fn reader_state(reader: &reflector::Store<Widget>) -> BTreeMap<String, (i64, String)> {
    reader
        .state()
        .iter()
        .map(|w| {
            (
                w.metadata.name.clone().unwrap(),
                (w.spec.size, w.metadata.resource_version.clone().unwrap()),
            )
        })
        .collect()
}

async fn reflector_stays_in_sync(config: watcher::Config) {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    // some objects before the watch starts
    for i in 0..50 {
        api.create(&PostParams::default(), &widget(&format!("pre{i}"), i))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store::<Widget>();
    let inits = Arc::new(AtomicUsize::new(0));
    let inits2 = inits.clone();
    let stream = reflector(writer, watcher(api.clone(), config)).for_each(move |ev| {
        if let Ok(watcher::Event::InitDone) = ev {
            inits2.fetch_add(1, Ordering::SeqCst);
        }
        futures::future::ready(())
    });
    let task = tokio::spawn(stream);
    // 1,000 changes: creates, updates, status updates, deletes
    let mut n = 0;
    for i in 0..250 {
        let name = format!("w{i}");
        create_widget(&api, &name, i).await;
        merge_patch(&api, &name, json!({"spec": {"size": i + 1000}})).await;
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "P"}})),
        )
        .await
        .unwrap();
        n += 3;
        if i % 2 == 0 {
            api.delete(&name, &DeleteParams::default()).await.unwrap();
            n += 1;
        } else {
            merge_patch(&api, &name, json!({"spec": {"size": i + 2000}})).await;
            n += 1;
        }
    }
    assert_eq!(n, 1000);
    let want = server_state(&api).await;
    assert_eq!(want.len(), 50 + 125);
    let len = want.len();
    support::wait_until_async(
        &format!("the reflector in sync with the server's {len} objects"),
        Duration::from_secs(20),
        || reader_state(&reader) == want,
    )
    .await;
    assert!(inits.load(Ordering::SeqCst) >= 1);
    task.abort();
}

#[tokio::test]
async fn watcher_and_reflector_in_sync_across_1000_changes() {
    reflector_stays_in_sync(watcher::Config::default()).await;
}

#[tokio::test]
async fn streaming_list_watcher_in_sync() {
    reflector_stays_in_sync(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test]
async fn raw_watch_semantics() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let a = create_widget(&api, "a", 1).await;
    let rv_a: u64 = a
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    merge_patch(&api, "a", json!({"spec": {"size": 2}})).await;
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let base = "/apis/example.asgbatch.io/v1/namespaces/default/widgets";

    // from a resourceVersion: the changes after it, in order, then timeout closes the stream
    let start = Instant::now();
    let (code, _, body) = http(
        &s,
        "GET",
        &format!("{base}?watch=1&resourceVersion={rv_a}&timeoutSeconds=1"),
        None,
        b"",
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "timeoutSeconds ends the watch"
    );
    let evs = lines(&body);
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["MODIFIED", "DELETED"]);
    assert_eq!(evs[0]["object"]["spec"]["size"], 2);
    let rvs: Vec<u64> = evs
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(rvs[0] > rv_a && rvs[1] > rvs[0]);

    // streaming list: initial ADDED events then the initial-events-end bookmark
    create_widget(&api, "b", 1).await;
    create_widget(&api, "c", 1).await;
    let (_, _, body) = http(
        &s,
        "GET",
        &format!("{base}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"),
        None,
        b"",
    )
    .await;
    let evs = lines(&body);
    assert_eq!(evs.len(), 3, "{body}");
    // Each line names its type before its object, as kube-apiserver writes them (a client
    // that decodes the object by its type need not buffer it), the bookmark included.
    assert!(
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| l.starts_with("{\"type\":")),
        "{body}"
    );
    assert_eq!(
        (evs[0]["type"].as_str(), evs[1]["type"].as_str()),
        (Some("ADDED"), Some("ADDED"))
    );
    assert_eq!(evs[2]["type"], "BOOKMARK");
    assert_eq!(
        evs[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // periodic bookmarks carry the latest resourceVersion
    let cur: u64 = api
        .get("c")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    let (_, _, body) = http(
        &s,
        "GET",
        &format!("{base}?watch=1&resourceVersion={cur}&allowWatchBookmarks=true&timeoutSeconds=7"),
        None,
        b"",
    )
    .await;
    let evs = lines(&body);
    assert!(
        evs.iter().any(|e| e["type"] == "BOOKMARK"
            && e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= cur),
        "{body}"
    );
}

#[tokio::test]
async fn selector_watch_turns_label_changes_into_added_and_deleted() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let w = create_widget(&api, "x", 1).await;
    let rv = w.metadata.resource_version.clone().unwrap();
    merge_patch(&api, "x", json!({"metadata": {"labels": {"sel": "yes"}}})).await;
    merge_patch(&api, "x", json!({"spec": {"size": 2}})).await;
    merge_patch(&api, "x", json!({"metadata": {"labels": {"sel": "no"}}})).await;
    merge_patch(&api, "x", json!({"spec": {"size": 3}})).await;
    let (_, _, body) = http(
        &s,
        "GET",
        &format!("/apis/example.asgbatch.io/v1/namespaces/default/widgets?watch=1&resourceVersion={rv}&labelSelector=sel%3Dyes&timeoutSeconds=1"),
        None,
        b"",
    )
    .await;
    let types: Vec<String> = lines(&body)
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, vec!["ADDED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn too_old_resource_version_is_410_and_watcher_recovers() {
    let s = server_with(ApiServerConfig {
        history_limit: 16,
        ..ApiServerConfig::default()
    })
    .await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let first = create_widget(&api, "old", 1).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for i in 0..40 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm{i}")}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let rv = first.metadata.resource_version.unwrap();
    let (code, _, body) = http(
        &s,
        "GET",
        &format!(
            "/apis/example.asgbatch.io/v1/namespaces/default/widgets?watch=1&resourceVersion={rv}"
        ),
        None,
        b"",
    )
    .await;
    assert_eq!(code, 200);
    let evs = lines(&body);
    assert_eq!(evs.len(), 1, "{body}");
    assert_eq!(evs[0]["type"], "ERROR");
    assert_eq!(evs[0]["object"]["code"], 410);
    assert_eq!(evs[0]["object"]["reason"], "Expired");

    // a kube-rs watcher whose resourceVersion expires relists and stays correct
    let (reader, writer) = reflector::store::<Widget>();
    let inits = Arc::new(AtomicUsize::new(0));
    let inits2 = inits.clone();
    let task = tokio::spawn(
        reflector(
            writer,
            watcher(api.clone(), watcher::Config::default().timeout(1)),
        )
        .for_each(move |ev| {
            if let Ok(watcher::Event::Init) = ev {
                inits2.fetch_add(1, Ordering::SeqCst);
            }
            futures::future::ready(())
        }),
    );
    let seen = inits.clone();
    support::eventually_within(
        "the watcher's first list",
        Duration::from_secs(15),
        || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) }
        },
        |n| *n >= 1,
    )
    .await;
    // churn other resources so the watcher's resourceVersion falls out of the history
    for i in 0..40 {
        cms.patch(
            &format!("cm{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "1"}})),
        )
        .await
        .unwrap();
    }
    // the watch reconnects (timeout 1 s) with its now-expired resourceVersion: 410, relist
    let seen = inits.clone();
    support::eventually_within(
        "a relist after the resourceVersion expired",
        Duration::from_secs(15),
        || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) }
        },
        |n| *n >= 2,
    )
    .await;
    create_widget(&api, "new", 2).await;
    support::wait_until_async(
        "the relisted watcher sees the new widget",
        Duration::from_secs(15),
        || reader.state().len() == 2,
    )
    .await;
    task.abort();
}

/// The history is bounded by bytes too (a few large changes trim it long before its
/// count bound): a resourceVersion from before the trimmed events is 410 Gone, and a
/// kube-rs reflector that held it relists and ends equal to the server.
#[tokio::test]
async fn history_over_its_byte_bound_expires_old_versions_and_a_reflector_resumes() {
    let s = server_with(ApiServerConfig {
        history_bytes: 64 << 10,
        ..ApiServerConfig::default()
    })
    .await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let first = create_widget(&api, "a", 1).await;
    let (reader, writer) = reflector::store::<Widget>();
    let inits = Arc::new(AtomicUsize::new(0));
    let inits2 = inits.clone();
    let task = tokio::spawn(
        reflector(
            writer,
            watcher(api.clone(), watcher::Config::default().timeout(1)),
        )
        .for_each(move |ev| {
            if let Ok(watcher::Event::Init) = ev {
                inits2.fetch_add(1, Ordering::SeqCst);
            }
            futures::future::ready(())
        }),
    );
    let seen = inits.clone();
    support::eventually_within(
        "the reflector's first list",
        Duration::from_secs(15),
        || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) }
        },
        |n| *n >= 1,
    )
    .await;
    // 20 changes of 8 KiB each: 160 KiB of history, well under 10,000 events.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let big = "x".repeat(8 << 10);
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "big"}, "data": {"v": "0"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    for i in 0..20 {
        cms.patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": format!("{i}{big}")}})),
        )
        .await
        .unwrap();
    }
    let rv = first.metadata.resource_version.unwrap();
    let (code, _, body) = http(
        &s,
        "GET",
        &format!(
            "/apis/example.asgbatch.io/v1/namespaces/default/widgets?watch=1&resourceVersion={rv}"
        ),
        None,
        b"",
    )
    .await;
    assert_eq!(code, 200);
    let evs = lines(&body);
    assert_eq!(evs.len(), 1, "{body}");
    assert_eq!(evs[0]["object"]["code"], 410, "{body}");
    // The reflector reconnects (timeout 1 s) from a trimmed resourceVersion: it relists.
    let seen = inits.clone();
    support::eventually_within(
        "a relist after the resourceVersion was trimmed",
        Duration::from_secs(15),
        || {
            let seen = seen.clone();
            async move { seen.load(Ordering::SeqCst) }
        },
        |n| *n >= 2,
    )
    .await;
    merge_patch(&api, "a", json!({"spec": {"size": 7}})).await;
    create_widget(&api, "b", 2).await;
    let want = server_state(&api).await;
    assert_eq!(want.len(), 2);
    support::wait_until_async(
        "the reflector equals the server after resuming",
        Duration::from_secs(15),
        || reader_state(&reader) == want,
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn metadata_only_get_list_and_watch() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    create_widget(&api, "m", 1).await;
    let meta = api.get_metadata("m").await.unwrap();
    assert_eq!(meta.metadata.name.as_deref(), Some("m"));
    assert_eq!(
        meta.types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let (_, head, body) = {
        let req = "GET /apis/example.asgbatch.io/v1/namespaces/default/widgets?watch=1&timeoutSeconds=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAccept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1\r\n\r\n";
        raw(&s, req.as_bytes()).await
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("\"kind\":\"PartialObjectMetadata\""),
        "{body}"
    );
    assert!(!body.contains("\"spec\""), "{body}");
    // a metadata-only watcher (kube-rs `Api<PartialObjectMeta<K>>`) sees the object
    let meta_api: Api<kube::core::PartialObjectMeta<Widget>> =
        Api::namespaced(c.clone(), "default");
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(
        reflector(writer, watcher(meta_api, watcher::Config::default()))
            .for_each(|_| futures::future::ready(())),
    );
    support::wait_until_async(
        "the metadata watcher sees the object",
        Duration::from_secs(10),
        || reader.state().len() == 1,
    )
    .await;
    task.abort();
}
