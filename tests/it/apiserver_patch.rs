//! Patch types through kube-rs: merge, JSON (with `test`), strategic merge on
//! built-ins, server-side apply with managedFields, conflicts, force, field removal.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver as apiserver_support;

use apiserver_support::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn merge_and_json_patch() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let w = create_widget(&api, "p", 1).await;

    let m = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2, "tags": ["a"]}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (m.spec.size, m.spec.tags.clone()),
        (2, Some(vec!["a".to_string()]))
    );
    // null deletes in a merge patch
    let m = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tags": null}})),
        )
        .await
        .unwrap();
    assert_eq!(m.spec.tags, None);

    // JSON patch with a passing test
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/size", "value": 2},
        {"op": "replace", "path": "/spec/size", "value": 3}
    ]))
    .unwrap();
    let j = api
        .patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(j.spec.size, 3);
    // failing test -> 422 and no change
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/size", "value": 99},
        {"op": "replace", "path": "/spec/size", "value": 4}
    ]))
    .unwrap();
    let err = status_of(
        api.patch("p", &PatchParams::default(), &Patch::<()>::Json(jp))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert_eq!(api.get("p").await.unwrap().spec.size, 3);

    // patch carrying a stale resourceVersion -> 409
    let stale = w.metadata.resource_version.clone().unwrap();
    let err = status_of(
        api.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"resourceVersion": stale}, "spec": {"size": 9}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

    // patch producing an invalid object -> 422
    let err = status_of(
        api.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "x"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    // patch on a missing object -> 404
    let err = status_of(
        api.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
}

#[tokio::test]
async fn strategic_merge_on_configmap() {
    let s = server().await;
    let c = s.client();
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "c", "labels": {"a": "1", "b": "2"},
        "finalizers": ["x.io/one"]}, "data": {"k": "v", "k2": "v2"}}),
    )
    .unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let p = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"a": null, "c": "3"}, "finalizers": ["x.io/two"]}, "data": {"k": "new"}})),
        )
        .await
        .unwrap();
    let labels = p.metadata.labels.unwrap();
    assert_eq!(labels.get("a"), None);
    assert_eq!(labels["c"], "3");
    assert_eq!(
        p.metadata.finalizers.unwrap(),
        vec!["x.io/one", "x.io/two"],
        "finalizers merge as a set"
    );
    let data = p.data.unwrap();
    assert_eq!((data["k"].as_str(), data["k2"].as_str()), ("new", "v2"));
    // $patch: replace on data
    let p = api
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"$patch": "replace", "only": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.data.unwrap().len(), 1);
    // strategic merge patch on a custom resource is 415, as in kube-apiserver
    install_widgets(&c).await;
    let wapi: Api<Widget> = Api::namespaced(c.clone(), "default");
    create_widget(&wapi, "w", 1).await;
    let err = status_of(
        wapi.patch(
            "w",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"size": 2}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 415);
}

#[tokio::test]
async fn server_side_apply_ownership_conflicts_and_removal() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let apply = |manager: &'static str, force: bool, body: serde_json::Value| {
        let api = api.clone();
        async move {
            let mut pp = PatchParams::apply(manager);
            pp.force = force;
            api.patch("s", &pp, &Patch::Apply(body)).await
        }
    };
    let base = |spec: serde_json::Value| json!({"apiVersion": "example.asgbatch.io/v1", "kind": "Widget", "metadata": {"name": "s"}, "spec": spec});
    // apply creates
    let w = apply("alice", false, base(json!({"size": 1, "tags": ["x"]})))
        .await
        .unwrap();
    assert_eq!(w.spec.size, 1);
    let mf = w.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("alice"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let fields = serde_json::to_value(mf[0].fields_v1.as_ref().unwrap()).unwrap();
    assert_eq!(fields["f:spec"]["f:size"], json!({}));
    assert_eq!(
        fields["f:spec"]["f:tags"]["v:\"x\""],
        json!({}),
        "tags is a set list: {fields}"
    );

    // bob applies a different size: conflict naming alice and the field
    let err = status_of(
        apply("bob", false, base(json!({"size": 2})))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.size"
    );
    // bob applies the same value: shared ownership, no conflict
    apply("bob", false, base(json!({"size": 1}))).await.unwrap();
    // bob forces a new value: alice loses spec.size
    let w = apply("bob", true, base(json!({"size": 5}))).await.unwrap();
    assert_eq!(w.spec.size, 5);
    let alice = w
        .metadata
        .managed_fields
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.manager.as_deref() == Some("alice"))
        .unwrap();
    let af = serde_json::to_value(alice.fields_v1.as_ref().unwrap()).unwrap();
    assert!(af["f:spec"].get("f:size").is_none(), "{af}");

    // an Update manager also conflicts with an apply
    api.patch(
        "s",
        &PatchParams {
            field_manager: Some("carol".into()),
            ..PatchParams::default()
        },
        &Patch::Merge(json!({"spec": {"color": "red"}})),
    )
    .await
    .unwrap();
    let err = status_of(
        apply(
            "alice",
            false,
            base(json!({"tags": ["x"], "color": "green"})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert!(
        err.message
            .contains("conflict with \"carol\" using example.asgbatch.io/v1"),
        "{}",
        err.message
    );

    // alice stops applying tags: they are removed (nobody else owns them)
    let w = apply("alice", false, base(json!({}))).await.unwrap();
    assert_eq!(
        w.spec.tags, None,
        "fields a manager stops applying are removed"
    );
    assert_eq!(w.spec.size, 5, "fields owned by others stay");
    assert_eq!(w.spec.color.as_deref(), Some("red"));

    // apply to /status
    let st = api
        .patch_status(
            "s",
            &PatchParams::apply("agent"),
            &Patch::Apply(json!({"apiVersion": "example.asgbatch.io/v1", "kind": "Widget", "metadata": {"name": "s"}, "status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().phase.as_deref(), Some("Running"));
    let agent = st
        .metadata
        .managed_fields
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.manager.as_deref() == Some("agent"))
        .unwrap();
    assert_eq!(agent.subresource.as_deref(), Some("status"));

    // a resourceVersion in the applied configuration is a precondition
    let stale = json!({"apiVersion": "example.asgbatch.io/v1", "kind": "Widget",
        "metadata": {"name": "s", "resourceVersion": "1"}, "spec": {"size": 5}});
    let err = status_of(apply("bob", false, stale).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));

    // apply without fieldManager is refused
    let (code, _, body) = http(
        &s,
        "PATCH",
        "/apis/example.asgbatch.io/v1/namespaces/default/widgets/s",
        Some("application/apply-patch+yaml"),
        b"apiVersion: example.asgbatch.io/v1\nkind: Widget\nmetadata:\n  name: s\n",
    )
    .await;
    assert_eq!(code, 422, "{body}");
}
