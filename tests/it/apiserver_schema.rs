//! The schema engine on this project's own CRDs (`crds/`): every example
//! manifest passes, every fixture under `tests/fixtures/invalid/` is refused
//! with an error on the field its `# expect:` line names (and its `# message:`
//! text), worded as kube-apiserver words it; and the OpenAPI v3 document of the
//! group carries every kind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use std::path::{Path, PathBuf};

use asg_batch_apiserver::schema::{StructuralSchema, invalid_status, openapi_v3_group_version};
use serde_json::Value;

fn root() -> PathBuf {
    std::env::var("ASG_SCHEMA_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    out
}

fn crds() -> Vec<Value> {
    files("crds").iter().flat_map(|p| yaml_docs(p)).collect()
}

/// (kind, compiled schema of its first version)
fn schemas() -> Vec<(String, StructuralSchema)> {
    crds()
        .iter()
        .map(|crd| {
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let compiled =
                StructuralSchema::compile_at(schema, "spec.versions[0].schema.openAPIV3Schema")
                    .unwrap_or_else(|e| {
                        panic!(
                            "{kind}: {:?}",
                            e.iter()
                                .map(asg_batch_apiserver::schema::FieldError::to_string_k8s)
                                .collect::<Vec<_>>()
                        )
                    });
            (kind, compiled)
        })
        .collect()
}

fn schema_for<'a>(all: &'a [(String, StructuralSchema)], kind: &str) -> &'a StructuralSchema {
    all.iter()
        .find(|(k, _)| k == kind)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no CRD for {kind}"))
}

#[test]
fn every_crd_compiles() {
    let all = schemas();
    assert_eq!(
        all.len(),
        5,
        "{:?}",
        all.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
}

#[test]
fn every_example_is_valid() {
    let all = schemas();
    let mut checked = 0;
    for path in files("manifests/examples") {
        for mut obj in yaml_docs(&path) {
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let Some((_, s)) = all.iter().find(|(k, _)| *k == kind) else {
                continue;
            };
            let pruned = s.prune(&mut obj);
            assert!(
                pruned.is_empty(),
                "{}: unknown fields {pruned:?}",
                path.display()
            );
            s.apply_defaults(&mut obj);
            let errs = s.validate(&obj, None);
            assert!(
                errs.is_empty(),
                "{}: {:?}",
                path.display(),
                errs.iter()
                    .map(asg_batch_apiserver::schema::FieldError::to_string_k8s)
                    .collect::<Vec<_>>()
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} examples checked");
}

#[test]
fn every_invalid_fixture_is_refused_naming_its_field() {
    let all = schemas();
    let fixtures = files("tests/fixtures/invalid");
    assert!(!fixtures.is_empty());
    for path in fixtures {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let expect_field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{}: no # expect:", path.display()));
        let expect_message = text
            .lines()
            .find_map(|l| l.strip_prefix("# message:"))
            .map(str::trim);
        for mut obj in yaml_docs(&path) {
            let kind = obj["kind"].as_str().unwrap_or_default().to_string();
            let name = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let s = schema_for(&all, &kind);
            s.prune(&mut obj);
            s.apply_defaults(&mut obj);
            let errs = s.validate(&obj, None);
            let status = invalid_status("asgbatch.io", &kind, &name, &errs);
            let shown: Vec<String> = errs
                .iter()
                .map(asg_batch_apiserver::schema::FieldError::to_string_k8s)
                .collect();
            assert!(
                errs.iter().any(|e| e.field == expect_field
                    || e.field.starts_with(&format!("{expect_field}."))
                    || e.field.starts_with(&format!("{expect_field}["))),
                "{}: expected an error on {expect_field}, got {shown:?}",
                path.display()
            );
            if let Some(m) = expect_message {
                assert!(
                    status["message"].as_str().is_some_and(|s| s.contains(m)),
                    "{}: expected {m:?} in {}",
                    path.display(),
                    status["message"]
                );
            }
            assert_eq!(status["code"], 422);
        }
    }
}

#[test]
fn openapi_document_has_every_kind() {
    let crds = crds();
    let doc = openapi_v3_group_version("asgbatch.io", "v1alpha1", &crds);
    for crd in &crds {
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
        let s = &doc["components"]["schemas"][format!("io.asgbatch.v1alpha1.{kind}")];
        assert_eq!(s["x-kubernetes-group-version-kind"][0]["kind"], kind);
        assert!(
            s["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{kind} has no description"
        );
        assert!(
            doc["components"]["schemas"]
                .get(format!("io.asgbatch.v1alpha1.{kind}List"))
                .is_some()
        );
    }
}
