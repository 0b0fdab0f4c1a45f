//! Every example manifest deserialises into the Rust types and passes the CRD schema and
//! CEL rules; every invalid fixture is rejected with a message naming its field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use asg_batch::api::{BatchJob, BatchNode, ComputeEnvironment, JobDefinition, JobQueue};
use serde_json::Value;
use support::manifests::{SchemaSet, read_documents, yaml_files};

fn deserialise_typed(doc: &Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap_or_default();
    let r = match kind {
        "ComputeEnvironment" => serde_json::from_value::<ComputeEnvironment>(doc.clone()).map(drop),
        "JobQueue" => serde_json::from_value::<JobQueue>(doc.clone()).map(drop),
        "JobDefinition" => serde_json::from_value::<JobDefinition>(doc.clone()).map(drop),
        "BatchJob" => serde_json::from_value::<BatchJob>(doc.clone()).map(drop),
        "BatchNode" => serde_json::from_value::<BatchNode>(doc.clone()).map(drop),
        other => return Err(format!("unexpected kind {other:?}")),
    };
    r.map_err(|e| e.to_string())
}

#[test]
fn examples_are_valid() {
    let schemas = SchemaSet::from_code();
    let dir = support::repo_root().join("manifests/examples");
    let files = yaml_files(&dir);
    assert!(files.len() >= 5, "examples missing in {}", dir.display());
    let mut kinds = std::collections::BTreeSet::new();
    for file in files {
        for doc in read_documents(&file) {
            let name = format!("{} {}", file.display(), doc["metadata"]["name"]);
            deserialise_typed(&doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            let errors = schemas.validate(&doc);
            assert!(errors.is_empty(), "{name}: {errors:#?}");
            kinds.insert(doc["kind"].as_str().unwrap_or_default().to_string());
        }
    }
    for kind in [
        "ComputeEnvironment",
        "JobQueue",
        "JobDefinition",
        "BatchJob",
    ] {
        assert!(kinds.contains(kind), "no example of {kind}");
    }
}

#[test]
fn examples_show_the_advertised_features() {
    let dir = support::repo_root().join("manifests/examples");
    let docs: Vec<Value> = yaml_files(&dir)
        .iter()
        .flat_map(|f| read_documents(f))
        .collect();
    let jobs: Vec<BatchJob> = docs
        .iter()
        .filter(|d| d["kind"] == "BatchJob")
        .map(|d| serde_json::from_value(d.clone()).expect("BatchJob"))
        .collect();
    assert!(jobs.iter().any(|j| {
        j.spec
            .template
            .retry_strategy
            .as_ref()
            .is_some_and(|r| r.evaluate_on_exit.iter().any(|e| e.on_exit_code.is_some()))
    }));
    assert!(
        jobs.iter()
            .any(|j| j.spec.template.timeout_seconds.is_some())
    );
    assert!(jobs.iter().any(|j| j.spec.array_properties.is_some()));
    // A chain: some job depends on a job that itself depends on another.
    let depends = |name: &str| {
        jobs.iter()
            .find(|j| j.metadata.name.as_deref() == Some(name))
            .map(|j| &j.spec.depends_on)
    };
    assert!(jobs.iter().any(|j| {
        j.spec
            .depends_on
            .iter()
            .any(|d| depends(&d.job_name).is_some_and(|dd| !dd.is_empty()))
    }));
    let ces: Vec<ComputeEnvironment> = docs
        .iter()
        .filter(|d| d["kind"] == "ComputeEnvironment")
        .map(|d| serde_json::from_value(d.clone()).expect("ComputeEnvironment"))
        .collect();
    assert!(ces.iter().any(|c| c.spec.aws.is_some()));
    assert!(ces.iter().any(|c| c.spec.local.is_some()));
}

/// Each fixture starts with `# expect: FIELD` (and optionally `# message: TEXT`).
#[test]
fn invalid_fixtures_are_rejected_naming_the_field() {
    let schemas = SchemaSet::from_code();
    let files = yaml_files(&support::repo_root().join("tests/fixtures/invalid"));
    assert!(files.len() >= 8, "invalid fixtures missing");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read fixture");
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .map(str::trim)
                .map(String::from)
        };
        let field =
            header("expect").unwrap_or_else(|| panic!("{}: no `# expect:` line", file.display()));
        let docs = read_documents(&file);
        assert_eq!(
            docs.len(),
            1,
            "{}: one document per fixture",
            file.display()
        );
        let errors = schemas.validate(&docs[0]);
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{field}:")) || e.starts_with(&format!("{field}["))),
            "{}: expected an error on {field}, got {errors:#?}",
            file.display()
        );
        if let Some(message) = header("message") {
            assert!(
                errors.iter().any(|e| e.contains(&message)),
                "{}: no error mentions {message:?}: {errors:#?}",
                file.display()
            );
        }
    }
}
