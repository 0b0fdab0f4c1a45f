//! Property tests: the server never panics on input. Random JSON through every patch
//! type and the full write pipeline, random selectors and JSONPaths, and random HTTP
//! requests (methods, paths, queries, content types, bodies) over a real socket, after
//! which the server still answers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;
use support::apiserver as apiserver_support;

use apiserver_support::*;
use asg_batch_apiserver::objects::{Core, WriteOpts};
use asg_batch_apiserver::patch::{self, PatchType};
use asg_batch_apiserver::selectors::{FieldSelector, LabelSelector};
use asg_batch_apiserver::ssa::{self, SchemaCtx, Writer};
use asg_batch_apiserver::store::Store;
use asg_batch_apiserver::table;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z0-9$/.:{}\"~-]{0,10}".prop_map(Value::from),
        prop_oneof![
            Just("replace"),
            Just("delete"),
            Just("merge"),
            Just("add"),
            Just("remove"),
            Just("test"),
            Just("/spec/size"),
            Just("/metadata")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z]{1,6}".boxed(),
                    Just("metadata".to_string()).boxed(),
                    Just("spec".to_string()).boxed(),
                    Just("status".to_string()).boxed(),
                    Just("size".to_string()).boxed(),
                    Just("name".to_string()).boxed(),
                    Just("finalizers".to_string()).boxed(),
                    Just("ownerReferences".to_string()).boxed(),
                    Just("managedFields".to_string()).boxed(),
                    Just("resourceVersion".to_string()).boxed(),
                    Just("$patch".to_string()).boxed(),
                    Just("$retainKeys".to_string()).boxed(),
                    Just("$deleteFromPrimitiveList/finalizers".to_string()).boxed(),
                    Just("op".to_string()).boxed(),
                    Just("path".to_string()).boxed(),
                    Just("value".to_string()).boxed(),
                    Just("from".to_string()).boxed(),
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(Config { cases: 400, ..Config::default() })]

    #[test]
    fn patch_functions_never_panic(target in arb_json(), p in arb_json()) {
        let mut t = target.clone();
        let _ = patch::merge_patch(&mut t, &p);
        let mut t = target.clone();
        let _ = patch::json_patch(&mut t, &p);
        let mut t = target.clone();
        let _ = patch::strategic_merge_patch(&mut t, &p);
    }

    #[test]
    fn field_ownership_never_panics(old in arb_json(), new in arb_json(), force in any::<bool>()) {
        let w = Writer { manager: "m", api_version: "v1", subresource: "", now: "2026-01-01T00:00:00Z" };
        let ctx = SchemaCtx { root: None };
        let mut n = new.clone();
        if n.is_object() {
            ssa::record_update(Some(&old), &mut n, ctx, &w);
        }
        let _ = ssa::apply(Some(&old), &new, ctx, &w, force);
        let fs = ssa::fields_of(&new, ctx, None);
        let enc = ssa::to_fields_v1(&fs);
        prop_assert_eq!(ssa::from_fields_v1(&enc), fs);
    }

    #[test]
    fn selectors_and_paths_never_panic(s in "\\PC{0,40}", obj in arb_json()) {
        if let Ok(sel) = LabelSelector::parse(&s) {
            let _ = sel.matches(&obj);
        }
        if let Ok(sel) = FieldSelector::parse(&s, &["spec.size".to_string()]) {
            let _ = sel.matches(&obj);
        }
        let _ = table::json_path(&obj, &s);
    }
}

#[test]
fn write_pipeline_never_panics() {
    let core = Core::new(Store::in_memory(1000));
    let reg = core.registry();
    let crd_info = reg
        .get("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .unwrap();
    let o = WriteOpts {
        manager: "fuzz".into(),
        manager_explicit: true,
        ..WriteOpts::default()
    };
    core.create(&crd_info, "", widget_crd(), &o).unwrap();
    let info = core
        .registry()
        .get("example.asgbatch.io", "v1", "widgets")
        .unwrap();
    core.create(&info, "default", json!({"apiVersion": "example.asgbatch.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}}), &o).unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 400,
        ..Config::default()
    });
    runner
        .run(
            &(arb_json(), 0..5usize, any::<bool>()),
            |(body, kind, force)| {
                let o = WriteOpts {
                    force: force && kind == 3,
                    ..o.clone()
                };
                let bytes = serde_json::to_vec(&body).unwrap();
                let _ = match kind {
                    0 => core.patch(&info, "default", "w", "", PatchType::Merge, &bytes, &o),
                    1 => core.patch(&info, "default", "w", "status", PatchType::Json, &bytes, &o),
                    2 => core.patch(&info, "default", "w", "", PatchType::Strategic, &bytes, &o),
                    3 => core.patch(&info, "default", "w", "", PatchType::Apply, &bytes, &o),
                    _ => core.update(&info, "default", "w", "", body.clone(), &o),
                };
                let _ = core.create(&info, "default", body, &o);
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn random_http_requests_never_break_the_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(async {
        let s = server().await;
        install_widgets(&s.client()).await;
        s
    });
    let methods = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("PATCH"),
        Just("DELETE"),
        Just("HEAD"),
        Just("OPTIONS")
    ];
    let seg = prop_oneof![
        Just("api"),
        Just("apis"),
        Just("v1"),
        Just("namespaces"),
        Just("default"),
        Just("widgets"),
        Just("example.asgbatch.io"),
        Just("status"),
        Just("w"),
        Just("openapi"),
        Just("v3"),
        Just("watch"),
        Just("configmaps"),
        Just("%zz"),
        Just(".."),
        Just("")
    ];
    let query = prop_oneof![
        Just(""),
        Just("watch=1&timeoutSeconds=1"),
        Just("labelSelector=a%20in%20(b"),
        Just("fieldSelector=x"),
        Just("limit=-5"),
        Just("continue=%00%01"),
        Just("resourceVersion=abc&watch=true&timeoutSeconds=1"),
        Just("dryRun=Some"),
        Just("fieldValidation=Nope"),
        Just("force=true"),
        Just("propagationPolicy=X"),
        Just("sendInitialEvents=true&timeoutSeconds=1&watch=1"),
        Just("fieldManager=a")
    ];
    let ct = prop_oneof![
        Just("application/json"),
        Just("application/yaml"),
        Just("application/merge-patch+json"),
        Just("application/json-patch+json"),
        Just("application/strategic-merge-patch+json"),
        Just("application/apply-patch+yaml"),
        Just("text/plain"),
        Just("")
    ];
    let body = prop_oneof![
        arb_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::vec(any::<u8>(), 0..200),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    runner
        .run(
            &(methods, prop::collection::vec(seg, 0..7), query, ct, body),
            |(m, segs, q, ct, body)| {
                let path = format!("/{}?{q}", segs.join("/"));
                let ct = if ct.is_empty() { None } else { Some(ct) };
                let (code, _, resp) = rt.block_on(http(&s, m, &path, ct, &body));
                prop_assert!(
                    (200..500).contains(&code),
                    "{m} {path} ({ct:?}) -> {code}: {resp}"
                );
                if code >= 400 && m != "HEAD" {
                    let v: Value = serde_json::from_str(&resp).map_err(|e| {
                        TestCaseError::fail(format!("{m} {path}: non-JSON error {e}: {resp}"))
                    })?;
                    prop_assert_eq!(v["kind"].as_str(), Some("Status"));
                }
                Ok(())
            },
        )
        .unwrap();
    let (code, _, _) = rt.block_on(http(&s, "GET", "/version", None, b""));
    assert_eq!(code, 200);
}
