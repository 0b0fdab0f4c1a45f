//! JobDefinition: a reusable job template.

use super::common::{JobTemplate, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A reusable job template: what to run, what it needs, how to retry and when to give up.
/// BatchJobs reference it with `definitionRef` and may override any part inline.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "asgbatch.io",
    doc = "A reusable batch job template: what to run, resources, retries and timeout.",
    version = "v1alpha1",
    kind = "JobDefinition",
    shortname = "jd",
    category = "asgbatch",
    namespaced,
    status = "JobDefinitionStatus",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.container.image"),
    printcolumn(name = "CPU", type_ = "string", json_path = ".spec.resources.cpu"),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".spec.resources.memory"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.container) != has(self.process)").message("exactly one of container or process must be set"))]
pub struct JobDefinitionSpec {
    /// What to run, its resources, retries and timeout.
    #[serde(flatten)]
    pub template: JobTemplate,
    /// Default values for the `Ref::name` placeholders of the command and args; a job's
    /// own `parameters` override them (AWS Batch's job definition `parameters`). A
    /// placeholder's name runs to the first character that is not a letter, digit or
    /// underscore; a placeholder naming no parameter stays as written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 100))]
    pub parameters: BTreeMap<String, String>,
}

/// Status of a job definition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDefinitionStatus {
    /// Generation of the spec last seen by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Durations of the recent successful attempts of jobs pinned to this definition
    /// (written by the controller, in batches): what a job of it without
    /// `expectedDurationSeconds` is planned with. Kept here, they outlive the jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durations: Option<DurationHistory>,
}

/// A JobDefinition's recent successful attempt durations and their robust summary.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DurationHistory {
    /// Seconds each of the last successful attempts ran, oldest first (at most 20).
    #[serde(default)]
    #[schemars(extend("maxItems" = 20))]
    pub samples: Vec<u64>,
    /// Median of the samples (the lower one for an even count), seconds: the estimate.
    pub median_seconds: u64,
    /// 90th percentile of the samples (nearest rank), seconds.
    pub p90_seconds: u64,
    /// When the newest sample's attempt stopped: attempts that stopped later are not in
    /// the samples yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
}
