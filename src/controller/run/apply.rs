//! Applying a pass's decisions: child creation, BatchJob label + status writes, node
//! status, fleet calls (terminations first), environment and queue status, Events.

use super::*;
use std::collections::BTreeSet;

use kube::api::{Preconditions, PropagationPolicy};

use crate::controller::decide::JobDeletion;

pub(super) fn cloud_error(ce: &str, e: CloudError) -> ControllerError {
    ControllerError::Fleet {
        compute_environment: ce.to_owned(),
        source: e,
    }
}

pub(super) fn status_body(
    kind: &str,
    status: impl serde::Serialize,
    resource_version: Option<&str>,
) -> serde_json::Value {
    let mut body = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "status": status,
    });
    if let Some(rv) = resource_version {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    body
}

pub(super) fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies the decisions; one failed write never stops the others.
/// Fleet calls are made only when every API write of the pass landed (or was refused
/// as stale) and this replica still leads: a pass whose writes fail has a gap in its view,
/// and its fleet decisions are dropped.
pub(super) async fn apply(
    ctx: &Context,
    d: Decisions,
    fleets: &BTreeMap<String, Arc<dyn Fleet>>,
    memory: &mut PassMemory,
    leading: &watch::Receiver<bool>,
    now: Seconds,
) -> Summary {
    let client = &ctx.client;
    let mut s = Summary::default();
    let metrics = &ctx.metrics;
    let record = |r: Result<(), ControllerError>, what: &str, s: &mut Summary| match r {
        Ok(()) => metrics.write(what, "ok"),
        Err(e) if e.is_conflict() => {
            s.conflicts += 1;
            metrics.write(what, "conflict");
            debug!(what, "conflict: decided again on the next pass");
        }
        Err(e) => {
            s.failures += 1;
            metrics.write(what, "error");
            warn!(what, error = %e, "write failed");
        }
    };

    // Children concurrently, as the job writes: creating them is not the bottleneck of a
    // large array.
    let creates: Vec<_> = d
        .children
        .iter()
        .map(|c| async move {
            let ns = c.job.metadata.namespace.clone().unwrap_or_default();
            let api: Api<BatchJob> = Api::namespaced(client.clone(), &ns);
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match api.create(&pp, &c.job).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Created by an earlier pass, or a foreign job holds the name.
                    foreign_child(ctx, &api, &c.job).await
                }
                Err(e) => Err(e.into()),
            }
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(creates)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        s.children += 1;
        record(r, "create array child", &mut s);
    }

    // Secrets for the nodes: a grant widens before the bindings that need it; a job whose
    // grant could not be written is not bound in this pass.
    let (ungranted, grant_failures) = ctx
        .grants
        .lock()
        .await
        .widen(client, &d.grants, memory.last_gap())
        .await;
    for _ in 0..grant_failures {
        s.failures += 1;
        metrics.write("node secrets grant", "error");
    }
    let held_back = |u: &JobUpdate| {
        u.binds.as_ref().is_some_and(|node| {
            ungranted.contains(&super::super::grants::GrantKey {
                namespace: u.namespace.clone(),
                node: node.clone(),
            })
        })
    };
    // Finished jobs past their TTL, each guarded by its uid (a job created again under the
    // same name is not touched): array children and plain jobs, then array parents.
    for parents in [false, true] {
        let deletes: Vec<_> = d
            .delete_jobs
            .iter()
            .filter(|x| x.array_parent == parents)
            .map(|x| delete_job(client, x))
            .collect();
        let results: Vec<_> = futures::stream::iter(deletes)
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            record(r, "delete job", &mut s);
        }
    }

    // Futures collected first: a closure inside the stream would make this future
    // not `Send` for every lifetime (rust-lang/rust#102211).
    let writes: Vec<_> = d
        .jobs
        .iter()
        .filter(|u| !held_back(u))
        .map(|u| async move {
            let r = write_job(client, u).await;
            ((u.namespace.as_str(), u.name.as_str()), r)
        })
        .collect();
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    // Jobs whose write did not land: their Events would describe what did not happen.
    let mut unwritten: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (job, r) in results {
        s.jobs += 1;
        if r.is_err() {
            unwritten.insert(job);
        }
        record(r, "job", &mut s);
    }
    for c in &d.cancel_children {
        let r = cancel_child(client, c).await;
        record(r, "cancel array child", &mut s);
    }
    // A binding held back for its grant did not happen either: no Event for it.
    for u in d.jobs.iter().filter(|u| held_back(u)) {
        unwritten.insert((u.namespace.as_str(), u.name.as_str()));
    }

    // ... and narrows or goes only once the job writes of a whole pass have landed.
    if s.failures == 0 && s.conflicts == 0 {
        let failures = ctx.grants.lock().await.narrow(client, &d.grants).await;
        for _ in 0..failures {
            s.failures += 1;
            metrics.write("node secrets grant", "error");
        }
    }

    let nodes: Api<BatchNode> = Api::all(client.clone());
    let writes: Vec<_> = d.nodes.iter().map(|u| write_node(&nodes, u)).collect();
    let results: Vec<_> = futures::stream::iter(writes)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        s.nodes += 1;
        record(r, "node status", &mut s);
    }
    for name in &d.delete_nodes {
        info!(
            node = name,
            "deleting the BatchNode of an instance that left its fleet"
        );
        match nodes.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => warn!(node = name, error = %e, "delete BatchNode failed"),
        }
    }

    // Fleet calls: fences and terminations first, then desired capacity; only from a
    // pass whose writes all landed, and only while leading.
    let mut failed: BTreeMap<String, FleetProblem> = BTreeMap::new();
    let mut succeeded: Vec<String> = Vec::new();
    let fleet_calls: &[FleetAction] = if s.failures > 0 {
        memory.view_gap(now);
        if !d.fleet.is_empty() {
            warn!(
                failures = s.failures,
                skipped = d.fleet.len(),
                "API writes failed in this pass: its fleet calls are dropped and the view has a gap"
            );
        }
        &[]
    } else if !*leading.borrow() {
        warn!(
            skipped = d.fleet.len(),
            "leadership lost during the pass: fleet calls dropped"
        );
        &[]
    } else {
        &d.fleet
    };
    for a in fleet_calls {
        let (ce, result) = match a {
            FleetAction::Fence {
                compute_environment,
                node,
                instance_id,
            }
            | FleetAction::Terminate {
                compute_environment,
                node,
                instance_id,
            } => {
                let Some(f) = fleets.get(compute_environment) else {
                    continue;
                };
                let fence = matches!(a, FleetAction::Fence { .. });
                if fence {
                    warn!(
                        compute_environment,
                        node, instance_id, "fencing the instance of a lost node"
                    );
                } else {
                    info!(
                        compute_environment,
                        node, instance_id, "terminating instance"
                    );
                }
                let r = with_timeout(
                    ctx,
                    "TerminateInstanceInAutoScalingGroup",
                    f.terminate(instance_id),
                )
                .await;
                // An instance already gone is what was asked. The node itself goes once the
                // instance has left the fleet and its agent is quiet
                // (`Decisions::delete_nodes`).
                let r = match r {
                    Ok(()) | Err(CloudError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                };
                if fence && r.is_ok() {
                    memory.fenced_at(node, now);
                }
                (compute_environment, r)
            }
            FleetAction::SetDesired {
                compute_environment,
                desired,
                from,
            } => {
                let Some(f) = fleets.get(compute_environment) else {
                    continue;
                };
                info!(
                    compute_environment,
                    from, desired, "setting desired capacity"
                );
                (
                    compute_environment,
                    with_timeout(ctx, "SetDesiredCapacity", f.set_desired(*desired)).await,
                )
            }
        };
        s.fleet += 1;
        let call = match a {
            FleetAction::Fence { .. } => "fence",
            FleetAction::Terminate { .. } => "terminate",
            FleetAction::SetDesired { .. } => "set_desired",
        };
        metrics.fleet_call(
            ce,
            call,
            result.as_ref().map_or_else(CloudError::label, |()| "ok"),
        );
        match result {
            Ok(()) => succeeded.push(ce.clone()),
            Err(e) => {
                let problem = FleetProblem::from_cloud(&e);
                let err = cloud_error(ce, e);
                warn!(error = %err, "fleet call failed");
                failed.insert(
                    ce.clone(),
                    FleetProblem {
                        message: err.to_string(),
                        ..problem
                    },
                );
            }
        }
    }
    for ce in succeeded {
        memory.fleet_errors.remove(&ce);
    }
    memory.fleet_errors.extend(failed.clone());

    let ces: Api<ComputeEnvironment> = Api::all(client.clone());
    for u in &d.compute_environments {
        let body = status_body("ComputeEnvironment", &u.status, None);
        let r = ces
            .patch_status(&u.name, &ssa(), &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(ControllerError::from);
        record(r, "compute environment status", &mut s);
    }
    let queues: Api<JobQueue> = Api::all(client.clone());
    for u in &d.queues {
        let body = status_body("JobQueue", &u.status, None);
        let r = queues
            .patch_status(&u.name, &ssa(), &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(ControllerError::from);
        record(r, "queue status", &mut s);
    }

    for u in &d.definitions {
        let defs: Api<JobDefinition> = Api::namespaced(client.clone(), &u.namespace);
        let body = status_body(
            "JobDefinition",
            serde_json::json!({ "durations": &u.durations }),
            None,
        );
        let r = defs
            .patch_status(&u.name, &ssa(), &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(ControllerError::from);
        record(r, "job definition status", &mut s);
    }

    // Events go to the publisher task: the pass does not wait for them.
    let outgoing: Vec<_> = d
        .events
        .iter()
        .filter(|e| {
            let about_job = e.regarding.kind.as_deref() == Some("BatchJob");
            !(about_job
                && unwritten.contains(&(
                    e.regarding.namespace.as_deref().unwrap_or_default(),
                    e.regarding.name.as_deref().unwrap_or_default(),
                )))
        })
        .map(|e| {
            let ev = Event {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason.into(),
                note: Some(truncate(&e.note, 1000)),
                action: e.reason.into(),
                secondary: None,
            };
            (ev, e.regarding.clone())
        })
        .collect();
    super::events::publish(ctx, outgoing).await;
    for (ce, problem) in &failed {
        debug!(
            compute_environment = ce,
            msg = problem.message,
            reason = problem.reason,
            "fleet error recorded"
        );
    }
    s
}

/// After a 409 creating array child `child`: fine when the existing job is this array's
/// child (an earlier pass made it); otherwise a Warning Event on the parent says which
/// job is in the way (the parent cannot finish without that child), and an error.
async fn foreign_child(
    ctx: &Context,
    api: &Api<BatchJob>,
    child: &BatchJob,
) -> Result<(), ControllerError> {
    let name = child.metadata.name.clone().unwrap_or_default();
    let Some(owner) = child
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
    else {
        return Ok(());
    };
    let existing = api.get_opt(&name).await?;
    let ours = existing.as_ref().is_none_or(|e| {
        e.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner.uid)
    });
    if ours {
        return Ok(());
    }
    let message = format!(
        "array child {name} cannot be created: a BatchJob of that name exists and does not \
         belong to this array; delete or rename it"
    );
    let parent = ObjectReference {
        api_version: Some(owner.api_version.clone()),
        kind: Some(owner.kind.clone()),
        name: Some(owner.name.clone()),
        namespace: child.metadata.namespace.clone(),
        uid: Some(owner.uid.clone()),
        ..ObjectReference::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: "ChildNameTaken".into(),
        note: Some(message.clone()),
        action: "CreateChild".into(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&ev, &parent).await {
        debug!(error = %err, "publishing an Event failed");
    }
    Err(ControllerError::Blocked(message))
}

/// Label (only to remove a legacy one; with the observed resourceVersion as
/// precondition), then status (with the resourceVersion the label patch returned, or the
/// observed one): every write is guarded by the resourceVersion the decision was made on.
pub(super) async fn write_job(client: &kube::Client, u: &JobUpdate) -> Result<(), ControllerError> {
    let api: Api<BatchJob> = Api::namespaced(client.clone(), &u.namespace);
    let mut rv = u.resource_version.clone();
    if let Some(label) = &u.label {
        let value = match label {
            LabelChange::Set(n) => json!(n),
            LabelChange::Remove => serde_json::Value::Null,
        };
        let patch = json!({"metadata": {
            "resourceVersion": rv,
            "labels": { LABEL_NODE: value },
        }});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let out = api.patch(&u.name, &pp, &Patch::Merge(&patch)).await?;
        rv = out.metadata.resource_version;
    }
    if let Some(status) = &u.status {
        let body = status_body("BatchJob", status, rv.as_deref());
        api.patch_status(&u.name, &ssa(), &Patch::Apply(&body))
            .await?;
    }
    Ok(())
}

/// Marks a running array child of a cancelled parent cancelled (`spec.cancel`, a merge
/// patch: the field is immutable once set, so a concurrent request is not overwritten).
async fn cancel_child(client: &kube::Client, c: &CancelChild) -> Result<(), ControllerError> {
    let api: Api<BatchJob> = Api::namespaced(client.clone(), &c.namespace);
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    info!(namespace = %c.namespace, name = %c.name, "cancelling an array child of a cancelled parent");
    api.patch(
        &c.name,
        &pp,
        &Patch::Merge(&json!({"spec": {"cancel": c.cancel}})),
    )
    .await?;
    Ok(())
}

/// Deletes a finished job past its TTL, if it is still the one decided on (uid
/// precondition); a job already gone is what was asked.
async fn delete_job(client: &kube::Client, x: &JobDeletion) -> Result<(), ControllerError> {
    let api: Api<BatchJob> = Api::namespaced(client.clone(), &x.namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: x.uid.clone(),
            resource_version: None,
        }),
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    match api.delete(&x.name, &dp).await {
        Ok(_) => {
            debug!(namespace = %x.namespace, job = %x.name, "deleted a finished job past its ttlSecondsAfterFinished");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The controller-owned status of one node.
pub(super) async fn write_node(
    nodes: &Api<BatchNode>,
    u: &NodeUpdate,
) -> Result<(), ControllerError> {
    let body = status_body("BatchNode", &u.status, None);
    nodes
        .patch_status(&u.name, &ssa(), &Patch::Apply(&body))
        .await
        .map(|_| ())
        .map_err(ControllerError::from)
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::api::batch_job::{BatchJobStatus, JobPhase};
    use crate::controller::StaticFleets;
    use crate::controller::decide::{JobUpdate, NewChild, Note};
    use asg_batch_apiserver::{ApiServerConfig, start};
    use k8s_openapi::api::events::v1::Event as ApiEvent;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    fn regarding(job: &BatchJob) -> ObjectReference {
        ObjectReference {
            api_version: Some("asgbatch.io/v1alpha1".into()),
            kind: Some("BatchJob".into()),
            name: job.metadata.name.clone(),
            namespace: job.metadata.namespace.clone(),
            uid: job.metadata.uid.clone(),
            ..ObjectReference::default()
        }
    }

    /// The notes of the Events in `default`, sorted.
    pub(in super::super) async fn event_notes(client: &kube::Client) -> Vec<String> {
        let events: Api<ApiEvent> = Api::namespaced(client.clone(), "default");
        let mut notes: Vec<String> = events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter_map(|e| e.note)
            .collect();
        notes.sort();
        notes
    }

    /// An in-process API server with the CRDs, a client, and a controller context on it.
    pub(in super::super) async fn server_and_context()
    -> (asg_batch_apiserver::RunningApiServer, kube::Client, Context) {
        let server = start(ApiServerConfig::default()).await.expect("server");
        let client = server.client().expect("client");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crate::api::crds::all() {
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("crd");
        }
        let ctx = Context::new(
            client.clone(),
            crate::controller::ControllerConfig::default(),
            Arc::new(StaticFleets::default()),
            Arc::new(crate::controller::metrics::Metrics::new(
                &mut prometheus_client::registry::Registry::default(),
            )),
        );
        (server, client, ctx)
    }

    /// A decision made on a stale copy of a job is refused (409) and its Event is not
    /// published; the Event of a write that landed is. The binding is one status write
    /// (no label): its resourceVersion precondition alone guards it.
    #[tokio::test]
    async fn events_of_writes_that_did_not_land_are_not_published() {
        let (server, client, ctx) = server_and_context().await;
        let jobs: Api<BatchJob> = Api::namespaced(client.clone(), "default");
        let make = |name: &str| -> BatchJob {
            serde_json::from_value(json!({
                "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"queue": "q", "process": {"command": ["true"]}}
            }))
            .expect("job")
        };
        let fresh = jobs
            .create(&PostParams::default(), &make("fresh"))
            .await
            .expect("create");
        let stale = jobs
            .create(&PostParams::default(), &make("stale"))
            .await
            .expect("create");
        // Someone else changes "stale" after the controller read it.
        let mut changed = stale.clone();
        changed.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
        jobs.replace("stale", &PostParams::default(), &changed)
            .await
            .expect("replace");

        let update = |j: &BatchJob| JobUpdate {
            namespace: "default".into(),
            name: j.metadata.name.clone().unwrap_or_default(),
            resource_version: j.metadata.resource_version.clone(),
            label: None,
            binds: Some("n1".into()),
            status: Some(BatchJobStatus {
                phase: Some(JobPhase::Starting),
                node: Some("n1".into()),
                ..BatchJobStatus::default()
            }),
        };
        let note = |j: &BatchJob| Note {
            regarding: regarding(j),
            warning: false,
            reason: reasons::BOUND,
            note: format!("bound {}", j.metadata.name.clone().unwrap_or_default()),
        };
        let d = Decisions {
            jobs: vec![update(&fresh), update(&stale)],
            events: vec![note(&fresh), note(&stale)],
            ..Decisions::default()
        };
        let (_leading_tx, leading) = watch::channel(true);
        let summary = apply(
            &ctx,
            d,
            &BTreeMap::new(),
            &mut PassMemory::default(),
            &leading,
            0,
        )
        .await;
        assert_eq!(summary.conflicts, 1, "the stale write is refused");
        let phase = |j: BatchJob| j.status.and_then(|s| s.phase);
        assert_eq!(
            phase(jobs.get("fresh").await.expect("get")),
            Some(JobPhase::Starting)
        );
        assert_eq!(phase(jobs.get("stale").await.expect("get")), None);
        assert_eq!(event_notes(&client).await, ["bound fresh"]);
        server.shutdown().await;
    }

    /// An array child whose name a foreign job holds is reported on the parent; one an
    /// earlier pass created is fine.
    #[tokio::test]
    async fn a_foreign_job_holding_an_array_childs_name_is_reported() {
        let (server, client, ctx) = server_and_context().await;
        let jobs: Api<BatchJob> = Api::namespaced(client.clone(), "default");
        let job = |v: serde_json::Value| -> BatchJob { serde_json::from_value(v).expect("job") };
        let parent = jobs
            .create(
                &PostParams::default(),
                &job(json!({
                    "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                    "metadata": {"name": "arr", "namespace": "default"},
                    "spec": {"queue": "q", "process": {"command": ["true"]},
                             "arrayProperties": {"size": 2}}
                })),
            )
            .await
            .expect("parent");
        // Someone's own job is called arr-1; arr-0 was made by an earlier pass.
        jobs.create(
            &PostParams::default(),
            &job(json!({
                "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
                "metadata": {"name": "arr-1", "namespace": "default"},
                "spec": {"queue": "q", "process": {"command": ["true"]}}
            })),
        )
        .await
        .expect("foreign job");
        let child = |i| NewChild {
            job: crate::controller::decide::new_child(&parent, i),
        };
        jobs.create(&PostParams::default(), &child(0).job)
            .await
            .expect("earlier pass");
        let d = Decisions {
            children: vec![child(0), child(1)],
            ..Decisions::default()
        };
        let (_leading_tx, leading) = watch::channel(true);
        let summary = apply(
            &ctx,
            d,
            &BTreeMap::new(),
            &mut PassMemory::default(),
            &leading,
            0,
        )
        .await;
        assert_eq!(summary.failures, 1, "only the foreign name is a failure");
        let events: Api<ApiEvent> = Api::namespaced(client.clone(), "default");
        let warnings: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .map(|e| {
                (
                    e.regarding.and_then(|r| r.name).unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].0, "arr");
        assert!(
            warnings[0]
                .1
                .contains("array child arr-1 cannot be created"),
            "{warnings:?}"
        );
        server.shutdown().await;
    }
}
