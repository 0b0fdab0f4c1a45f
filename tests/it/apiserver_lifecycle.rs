//! Deletion semantics (finalizers, ownerReference cascades with background, foreground
//! and orphan propagation, namespace termination, CRD removal) and persistence.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver as apiserver_support;

use std::time::Duration;

use apiserver_support::*;
use asg_batch_apiserver::ApiServerConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy, WatchEvent,
    WatchParams,
};
use serde_json::json;

/// How long the embedded server's garbage collection may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn finalizers_hold_deletion() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let mut w = widget("f", 1);
    w.metadata.finalizers = Some(vec!["example.com/cleanup".into()]);
    api.create(&PostParams::default(), &w).await.unwrap();
    api.delete("f", &DeleteParams::default()).await.unwrap();
    let held = api.get("f").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(
        held.metadata.generation,
        Some(2),
        "deletion bumps generation"
    );
    // no new finalizers while deleting
    let err = status_of(
        api.patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/cleanup", "new"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    // spec updates still allowed while terminating
    merge_patch(&api, "f", json!({"spec": {"size": 2}})).await;
    // removing the last finalizer deletes it
    merge_patch(&api, "f", json!({"metadata": {"finalizers": null}})).await;
    assert!(api.get_opt("f").await.unwrap().is_none());
}

/// The resourceVersion of the DELETED event on a watch (both servers use one global
/// counter, so these order deletions across resources).
async fn deleted_at<K: kube::Resource>(
    mut events: futures::stream::BoxStream<'_, kube::Result<WatchEvent<K>>>,
    what: &str,
) -> u64 {
    let wait = async {
        while let Some(event) = events.next().await {
            match event.unwrap() {
                WatchEvent::Deleted(o) => return o,
                WatchEvent::Error(e) => panic!("watching {what}: {e:?}"),
                _ => {}
            }
        }
        panic!("the watch on {what} ended without a deletion")
    };
    let o: K = tokio::time::timeout(TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| panic!("{what} not deleted within {TIMEOUT:?}"));
    let rv = o.meta().resource_version.as_deref().unwrap_or_default();
    rv.parse()
        .unwrap_or_else(|_| panic!("resourceVersion {rv:?} of {what}"))
}

/// Waits (up to [`TIMEOUT`]) until `name` is gone from `api`.
async fn until_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    support::eventually_within(
        what,
        TIMEOUT,
        || async move { api.get_opt(name).await.unwrap().is_none() },
        |gone| *gone,
    )
    .await;
}

fn owned_cm(name: &str, owner: &Widget, block: bool) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "example.asgbatch.io/v1", "kind": "Widget",
            "name": owner.metadata.name, "uid": owner.metadata.uid, "blockOwnerDeletion": block,
        }]},
    }))
    .unwrap()
}

#[tokio::test]
async fn owner_references_cascade() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");

    // background (default)
    let o = create_widget(&api, "bg", 1).await;
    cms.create(&PostParams::default(), &owned_cm("bg-child", &o, false))
        .await
        .unwrap();
    api.delete("bg", &DeleteParams::default()).await.unwrap();
    assert!(
        api.get_opt("bg").await.unwrap().is_none(),
        "owner is gone at once"
    );
    until_gone(&cms, "bg-child", "background cascade").await;

    // foreground: owner stays (with foregroundDeletion) until dependents are gone
    let o = create_widget(&api, "fg", 1).await;
    let mut child = owned_cm("fg-child", &o, true);
    child.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let child = cms.create(&PostParams::default(), &child).await.unwrap();
    // Every change to the owner and the child from here on, in resourceVersion order: the
    // ground truth for "the owner outlives its dependents".
    let since = child.metadata.resource_version.clone().unwrap();
    let owner_events = api
        .watch(&WatchParams::default().fields("metadata.name=fg"), &since)
        .await
        .unwrap()
        .boxed();
    let child_events = cms
        .watch(
            &WatchParams::default().fields("metadata.name=fg-child"),
            &since,
        )
        .await
        .unwrap()
        .boxed();
    api.delete(
        "fg",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Foreground),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    let owner = api.get("fg").await.unwrap();
    assert!(
        owner
            .metadata
            .finalizers
            .unwrap()
            .contains(&"foregroundDeletion".to_string())
    );
    let cms2 = cms.clone();
    support::eventually_within(
        "child marked for deletion",
        TIMEOUT,
        || {
            let cms = cms2.clone();
            async move {
                cms.get("fg-child")
                    .await
                    .unwrap()
                    .metadata
                    .deletion_timestamp
                    .is_some()
            }
        },
        |done| *done,
    )
    .await;
    merge_patch(&cms, "fg-child", json!({"metadata": {"finalizers": null}})).await;
    let child_gone = deleted_at(child_events, "the dependent").await;
    let owner_gone = deleted_at(owner_events, "the foreground owner").await;
    assert!(
        child_gone < owner_gone,
        "the owner was deleted (rv {owner_gone}) before its dependent (rv {child_gone})"
    );

    // orphan: dependents stay, ownerReferences removed
    let o = create_widget(&api, "or", 1).await;
    cms.create(&PostParams::default(), &owned_cm("or-child", &o, false))
        .await
        .unwrap();
    api.delete(
        "or",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..DeleteParams::default()
        },
    )
    .await
    .unwrap();
    until_gone(&api, "or", "orphaning owner removed").await;
    let orphan = cms.get("or-child").await.unwrap();
    assert!(
        orphan
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    assert!(orphan.metadata.deletion_timestamp.is_none());
}

/// The collector now sweeps only after changes it may act on (issue 13: not after every
/// status write of an array's children; `store::tests` checks which writes wake it):
/// what it must still do is done — a dependent updated while its owner lives is kept, a
/// dependent created with a gone owner, or repointed to one, is collected.
#[tokio::test]
async fn dependents_of_a_gone_owner_are_collected_when_created_or_repointed() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let live = create_widget(&api, "live", 1).await;
    let gone = create_widget(&api, "gone", 1).await;
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    cms.create(&PostParams::default(), &owned_cm("kept", &live, false))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &owned_cm("repointed", &live, false))
        .await
        .unwrap();
    for i in 0..5 {
        cms.patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    // A dependent created with a gone owner is collected.
    cms.create(&PostParams::default(), &owned_cm("orphan", &gone, false))
        .await
        .unwrap();
    until_gone(
        &cms,
        "orphan",
        "a dependent created with a gone owner collected",
    )
    .await;
    // Then one repointed to the gone owner is collected too.
    cms.patch(
        "repointed",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"ownerReferences": [{
            "apiVersion": "example.asgbatch.io/v1", "kind": "Widget",
            "name": "gone", "uid": gone.metadata.uid,
        }]}})),
    )
    .await
    .unwrap();
    until_gone(
        &cms,
        "repointed",
        "a dependent repointed to a gone owner collected",
    )
    .await;
    // Both were collected by sweeps that came after the updates of "kept": it is still
    // there, with its last update.
    let kept = cms.get("kept").await.unwrap();
    assert_eq!(kept.data.unwrap()["n"], "4");
}

#[tokio::test]
async fn namespace_and_crd_deletion_remove_contents() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "tmp"}})).unwrap(),
    )
    .await
    .unwrap();
    let api: Api<Widget> = Api::namespaced(c.clone(), "tmp");
    create_widget(&api, "in-ns", 1).await;
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    // terminating namespaces refuse new content
    let err = status_of(
        api.create(&PostParams::default(), &widget("late", 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);
    until_gone(&nss, "tmp", "namespace removed").await;
    let all: Api<Widget> = Api::all(c.clone());
    assert!(
        all.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // deleting the CRD removes its objects and stops serving the resource
    let dflt: Api<Widget> = Api::namespaced(c.clone(), "default");
    create_widget(&dflt, "w", 1).await;
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let crd = crds.get("widgets.example.asgbatch.io").await.unwrap();
    let conds = crd.status.unwrap().conditions.unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    );
    crds.delete("widgets.example.asgbatch.io", &DeleteParams::default())
        .await
        .unwrap();
    let crds2 = crds.clone();
    support::eventually_within(
        "CRD removed",
        TIMEOUT,
        || {
            let crds = crds2.clone();
            async move {
                crds.get_opt("widgets.example.asgbatch.io")
                    .await
                    .unwrap()
                    .is_none()
            }
        },
        |done| *done,
    )
    .await;
    let err = status_of(dflt.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(err.code, 404);
    // re-creating it serves an empty resource
    install_widgets(&c).await;
    assert!(
        dflt.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn persistence_across_restart() {
    let data = tempfile::tempdir().unwrap();
    let cfg = ApiServerConfig {
        data_dir: Some(data.path().to_path_buf()),
        ..ApiServerConfig::default()
    };
    let (uid, rv) = {
        let s = server_with(cfg.clone()).await;
        let c = s.client();
        install_widgets(&c).await;
        let api: Api<Widget> = Api::namespaced(c.clone(), "default");
        let w = create_widget(&api, "keep", 7).await;
        api.patch_status(
            "keep",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Done"}})),
        )
        .await
        .unwrap();
        create_widget(&api, "drop", 1).await;
        api.delete("drop", &DeleteParams::default()).await.unwrap();
        let rv: u64 = api
            .get("keep")
            .await
            .unwrap()
            .metadata
            .resource_version
            .unwrap()
            .parse()
            .unwrap();
        s.server.shutdown().await;
        (w.metadata.uid.unwrap(), rv)
    };
    let s = server_with(cfg).await;
    let c = s.client();
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let w = api.get("keep").await.unwrap();
    assert_eq!(w.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(w.spec.size, 7);
    assert_eq!(w.status.unwrap().phase.as_deref(), Some("Done"));
    assert!(api.get_opt("drop").await.unwrap().is_none());
    // the counter survived: new writes get larger resourceVersions
    let n = create_widget(&api, "next", 1).await;
    let nrv: u64 = n.metadata.resource_version.unwrap().parse().unwrap();
    assert!(nrv > rv + 1, "{nrv} > {rv}");
    // a watch from before the restart gets 410 Expired
    let (_, _, body) = http(
        &s,
        "GET",
        &format!(
            "/apis/example.asgbatch.io/v1/namespaces/default/widgets?watch=1&resourceVersion={}",
            rv - 1
        ),
        None,
        b"",
    )
    .await;
    assert!(
        body.contains("\"type\":\"ERROR\"") && body.contains("\"code\":410"),
        "{body}"
    );
}
