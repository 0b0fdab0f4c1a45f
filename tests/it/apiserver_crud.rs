//! CRUD through kube-rs (typed and DynamicObject), status subresource, generation,
//! conflicts, errors as Status, selectors, pagination, built-in kinds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver as apiserver_support;

use apiserver_support::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use serde_json::json;

#[tokio::test]
async fn typed_crud_status_and_generation() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");

    let created = create_widget(&api, "a", 3).await;
    let md = &created.metadata;
    assert!(md.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(md.creation_timestamp.is_some());
    assert_eq!(md.generation, Some(1));
    // schema default applied
    assert_eq!(created.spec.color.as_deref(), Some("blue"));
    let rv1: u64 = md.resource_version.clone().unwrap().parse().unwrap();

    // status is dropped on create (status subresource)
    let mut with_status = widget("b", 1);
    with_status.status = Some(WidgetStatus {
        phase: Some("X".into()),
    });
    let b = api
        .create(&PostParams::default(), &with_status)
        .await
        .unwrap();
    assert_eq!(b.status, None);
    let rv2: u64 = b
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1, "resourceVersion increases");

    // status write changes only status, and not generation
    let st = api
        .patch_status(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}, "spec": {"size": 100}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(st.spec.size, 3, "status writes leave spec alone");
    assert_eq!(st.metadata.generation, Some(1));

    // main-resource write leaves status alone and bumps generation
    let mut cur = api.get("a").await.unwrap();
    cur.spec.size = 4;
    cur.status = Some(WidgetStatus {
        phase: Some("Hacked".into()),
    });
    let up = api
        .replace("a", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(up.spec.size, 4);
    assert_eq!(up.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(up.metadata.generation, Some(2));

    // metadata-only change: no generation bump
    let up2 = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(up2.metadata.generation, Some(2));

    // no-op write: resourceVersion unchanged
    let same = api
        .replace("a", &PostParams::default(), &up2)
        .await
        .unwrap();
    assert_eq!(
        same.metadata.resource_version,
        up2.metadata.resource_version
    );

    // stale resourceVersion -> 409 Conflict
    let err = status_of(
        api.replace("a", &PostParams::default(), &cur)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "Conflict");
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on widgets.example.asgbatch.io \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );

    // create existing -> 409 AlreadyExists
    let err = status_of(
        api.create(&PostParams::default(), &widget("a", 1))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(
        err.message,
        "widgets.example.asgbatch.io \"a\" already exists"
    );

    // get missing -> 404 NotFound
    let err = status_of(api.get("nope").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        err.message,
        "widgets.example.asgbatch.io \"nope\" not found"
    );

    // list
    let list = api.list(&ListParams::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .map(|w| w.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, vec!["a", "b"]);

    // delete (no finalizers) -> gone
    api.delete("b", &DeleteParams::default()).await.unwrap();
    assert!(status_of(api.get("b").await.unwrap_err()).is_not_found());
}

#[tokio::test]
async fn dynamic_object_crud_and_generate_name() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let gvk = GroupVersionKind::gvk("example.asgbatch.io", "v1", "Widget");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let mut obj = DynamicObject::new("", &ar).data(json!({"spec": {"size": 2}}));
    obj.metadata.name = None;
    obj.metadata.generate_name = Some("gen-".into());
    let made = api.create(&PostParams::default(), &obj).await.unwrap();
    let name = made.metadata.name.clone().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert_eq!(made.data["spec"]["size"], 2);
    let got = api.get(&name).await.unwrap();
    assert_eq!(got.metadata.uid, made.metadata.uid);
    let patched = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["size"], 5);
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt(&name).await.unwrap().is_none());
}

#[tokio::test]
async fn invalid_objects_are_422_naming_the_field() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.asgbatch.io", "v1", "Widget"),
        "widgets",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let obj = DynamicObject::new("bad", &ar).data(json!({"spec": {"color": "red"}}));
    let err = status_of(api.create(&PostParams::default(), &obj).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message
            .starts_with("Widget.example.asgbatch.io \"bad\" is invalid: "),
        "{}",
        err.message
    );
    assert!(err.message.contains("spec.size"), "{}", err.message);
    let causes = err.details.unwrap().causes;
    assert!(causes.iter().any(|c| c.field == "spec.size"), "{causes:?}");

    // namespaced object in a missing namespace
    let api2: Api<Widget> = Api::namespaced(c.clone(), "missing");
    let err = status_of(
        api2.create(&PostParams::default(), &widget("x", 1))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "namespaces \"missing\" not found");

    // invalid name
    let api3: Api<Widget> = Api::namespaced(c.clone(), "default");
    let err = status_of(
        api3.create(&PostParams::default(), &widget("Bad_Name", 1))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message
            .contains("metadata.name: Invalid value: \"Bad_Name\""),
        "{}",
        err.message
    );

    // dry run stores nothing
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let dry = api3.create(&pp, &widget("dry", 1)).await.unwrap();
    assert_eq!(dry.metadata.name.as_deref(), Some("dry"));
    assert!(api3.get_opt("dry").await.unwrap().is_none());
}

#[tokio::test]
async fn selectors_and_pagination() {
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    for i in 0..25 {
        let mut w = widget(&format!("w{i:02}"), i);
        w.metadata.labels = Some(
            [(
                "parity".to_string(),
                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            )]
            .into_iter()
            .collect(),
        );
        if i % 5 == 0 {
            w.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("five".into(), "yes".into());
        }
        api.create(&PostParams::default(), &w).await.unwrap();
    }
    let count = |sel: &'static str| {
        let api = api.clone();
        async move {
            api.list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(count("parity=even").await, 13);
    assert_eq!(count("parity==odd").await, 12);
    assert_eq!(count("parity!=even").await, 12);
    assert_eq!(count("parity in (even,odd)").await, 25);
    assert_eq!(count("parity notin (even)").await, 12);
    assert_eq!(count("five").await, 5);
    assert_eq!(count("!five").await, 20);
    assert_eq!(count("five,parity=odd").await, 2);
    let by_name = api
        .list(&ListParams::default().fields("metadata.name=w07"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let not_name = api
        .list(&ListParams::default().fields("metadata.name!=w07"))
        .await
        .unwrap();
    assert_eq!(not_name.items.len(), 24);
    let err = status_of(
        api.list(&ListParams::default().fields("spec.size=1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);

    // pages of 10
    let mut seen = vec![];
    let mut lp = ListParams::default().limit(10);
    let mut pages = 0;
    loop {
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|w| w.metadata.name.clone().unwrap()));
        match page.metadata.continue_ {
            Some(t) if !t.is_empty() => {
                assert!(page.metadata.remaining_item_count.unwrap() > 0);
                lp = lp.continue_token(&t);
            }
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 25, "no duplicates across pages");

    // all-namespaces list
    let all: Api<Widget> = Api::all(c.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        25
    );
}

#[tokio::test]
async fn builtin_kinds() {
    let s = server().await;
    let c = s.client();
    let nss: Api<Namespace> = Api::all(c.clone());
    let names: Vec<String> = nss
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()));
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));

    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "team-a");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(cms.get("cfg").await.unwrap().data.unwrap()["a"], "1");

    let secrets: Api<Secret> = Api::namespaced(c.clone(), "team-a");
    let sec: Secret = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}, "type": "Opaque"}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &sec).await.unwrap();
    assert!(secrets.get("s").await.is_ok());

    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})).unwrap();
    let l = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut l2 = l.clone();
    l2.spec.as_mut().unwrap().holder_identity = Some("you".into());
    leases
        .replace("leader", &PostParams::default(), &l2)
        .await
        .unwrap();
    // the old copy is stale now
    let err = status_of(
        leases
            .replace("leader", &PostParams::default(), &l)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);

    let ev_api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), "default");
    let ev: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "Test",
        "action": "Testing", "reportingController": "t", "reportingInstance": "t", "type": "Normal"
    }))
    .unwrap();
    ev_api.create(&PostParams::default(), &ev).await.unwrap();
    let core_ev: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), "default");
    let cev: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "e2"}, "involvedObject": {"kind": "Widget", "name": "a"}, "reason": "Test"
    })).unwrap();
    core_ev.create(&PostParams::default(), &cev).await.unwrap();
    assert_eq!(
        core_ev
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // kubectl describe selects events by the object they are about
    let sel = ListParams::default().fields("involvedObject.name=a,involvedObject.kind=Widget");
    assert_eq!(core_ev.list(&sel).await.unwrap().items.len(), 1);
    let sel = ListParams::default().fields("involvedObject.name=b");
    assert!(core_ev.list(&sel).await.unwrap().items.is_empty());

    // protected namespaces
    let err = status_of(
        nss.delete("default", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);
}

#[tokio::test]
async fn http_errors_are_status_objects() {
    let s = server().await;
    install_widgets(&s.client()).await;
    let base = "/apis/example.asgbatch.io/v1/namespaces/default/widgets";
    // malformed JSON -> 400
    let (code, _, body) = http(&s, "POST", base, Some("application/json"), b"{not json").await;
    assert_eq!(code, 400, "{body}");
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (st["kind"].as_str(), st["reason"].as_str()),
        (Some("Status"), Some("BadRequest"))
    );
    // malformed YAML -> 400
    let (code, _, _) = http(&s, "POST", base, Some("application/yaml"), b"a: [b").await;
    assert_eq!(code, 400);
    // unsupported content type -> 415
    let (code, _, body) = http(&s, "POST", base, Some("text/plain"), b"x").await;
    assert_eq!(code, 415, "{body}");
    assert!(body.contains("UnsupportedMediaType"));
    let (code, _, _) = http(
        &s,
        "PATCH",
        &format!("{base}/a"),
        Some("application/xml"),
        b"x",
    )
    .await;
    assert_eq!(code, 415);
    // too large -> 413
    let big = vec![b' '; 3 * 1024 * 1024 + 10];
    let (code, _, body) = http(&s, "POST", base, Some("application/json"), &big).await;
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("RequestEntityTooLarge"));
    // unknown group/resource -> 404 Status
    let (code, _, body) = http(&s, "GET", "/apis/nope.io/v1/things", None, b"").await;
    assert_eq!(code, 404);
    assert!(body.contains("\"kind\":\"Status\""));
    // method not allowed -> 405
    let (code, _, body) = http(
        &s,
        "POST",
        &format!("{base}/a"),
        Some("application/json"),
        b"{}",
    )
    .await;
    assert_eq!(code, 405, "{body}");
    // YAML create works
    let yaml = b"apiVersion: example.asgbatch.io/v1\nkind: Widget\nmetadata:\n  name: y\nspec:\n  size: 1\n";
    let (code, _, body) = http(&s, "POST", base, Some("application/yaml"), yaml).await;
    assert_eq!(code, 201, "{body}");
    // unknown fields: Strict -> 400, default (Warn) -> Warning header
    let obj = br#"{"apiVersion":"example.asgbatch.io/v1","kind":"Widget","metadata":{"name":"u"},"spec":{"size":1,"zzz":2}}"#;
    let (code, _, body) = http(
        &s,
        "POST",
        &format!("{base}?fieldValidation=Strict"),
        Some("application/json"),
        obj,
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        body.contains("strict decoding error: unknown field \\\"spec.zzz\\\""),
        "{body}"
    );
    let (code, head, body) = http(&s, "POST", base, Some("application/json"), obj).await;
    assert_eq!(code, 201);
    assert!(
        head.contains("299 - \"unknown field \\\"spec.zzz\\\"\""),
        "{head}"
    );
    assert!(!body.contains("zzz"), "pruned: {body}");
}

#[tokio::test]
async fn typed_batchjob_with_the_project_crds() {
    use asg_batch::api::{BatchJob, JobPhase, crds};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let s = server().await;
    let c = s.client();
    let crd_api: Api<CustomResourceDefinition> = Api::all(c.clone());
    for crd in crds::all() {
        crd_api.create(&PostParams::default(), &crd).await.unwrap();
    }
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("manifests/examples/hello-local.yaml"),
    )
    .unwrap();
    let bj: BatchJob = serde_yaml::from_str(&text).unwrap();
    let api: Api<BatchJob> = Api::namespaced(c.clone(), "default");
    let made = api.create(&PostParams::default(), &bj).await.unwrap();
    assert_eq!(made.spec.queue, "adhoc");
    let st = api
        .patch_status(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Runnable"}})),
        )
        .await
        .unwrap();
    assert!(matches!(st.status.unwrap().phase, Some(JobPhase::Runnable)));
    // the CRD's CEL rules and schema apply: an unknown phase is refused
    let err = status_of(
        api.patch_status(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Dancing"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("status.phase"), "{}", err.message);
    let mut cur = api.get("hello").await.unwrap();
    cur.spec.template.timeout_seconds = Some(30);
    let up = api
        .replace("hello", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(up.spec.template.timeout_seconds, Some(30));
    assert_eq!(up.metadata.generation, Some(2));
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    api.delete("hello", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("hello").await.unwrap().is_none());
}

#[tokio::test]
async fn kube_runtime_recorder_publishes_events() {
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    use kube::{Resource, ResourceExt};
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let api: Api<Widget> = Api::namespaced(c.clone(), "default");
    let w = create_widget(&api, "ev", 1).await;
    let recorder = Recorder::new(
        c.clone(),
        Reporter {
            controller: "asg-batch-test".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "Scheduled".into(),
        note: Some("bound to node-1".into()),
        action: "Bind".into(),
        secondary: None,
    };
    let reference = w.object_ref(&());
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.clone(), "default");
    let list = events
        .list(&ListParams::default().fields(&format!("regarding.name={}", w.name_any())))
        .await
        .unwrap();
    assert_eq!(
        list.items.len(),
        1,
        "the repeat is a series on the same Event"
    );
    let e = &list.items[0];
    assert_eq!(e.reason.as_deref(), Some("Scheduled"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(2));
}

#[tokio::test]
async fn crd_updates_take_effect_at_once() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let s = server().await;
    let c = s.client();
    install_widgets(&c).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.asgbatch.io", "v1", "Widget"),
        "widgets",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(c.clone(), "default", &ar);
    let obj = DynamicObject::new("x", &ar).data(json!({"spec": {"size": 1, "weight": 5}}));
    let made = api.create(&PostParams::default(), &obj).await.unwrap();
    assert!(
        made.data["spec"].get("weight").is_none(),
        "unknown field pruned"
    );
    // add spec.weight to the schema: the next write keeps it
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let patch = json!([{"op": "add",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/weight",
        "value": {"type": "integer", "maximum": 10}}]);
    let jp: json_patch::Patch = serde_json::from_value(patch).unwrap();
    crds.patch(
        "widgets.example.asgbatch.io",
        &PatchParams::default(),
        &Patch::<()>::Json(jp),
    )
    .await
    .unwrap();
    let up = api
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"weight": 5}})),
        )
        .await
        .unwrap();
    assert_eq!(up.data["spec"]["weight"], 5);
    let err = status_of(
        api.patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"weight": 11}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("spec.weight"), "{}", err.message);
}

#[tokio::test]
async fn written_kubeconfig_works_for_kube_client() {
    let s = server().await;
    let path = s.kubeconfig();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(cfg.default_namespace, "default");
    let client = kube::Client::try_from(cfg).unwrap();
    let v = client.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "35"));
    let nss: Api<Namespace> = Api::all(client);
    assert!(nss.get("kube-system").await.is_ok());
}
