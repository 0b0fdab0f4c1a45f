//! Secrets for the nodes: each node agent may `get` exactly the Secrets that the jobs
//! bound to it reference, and nothing else (as the Node authorizer does for kubelets).
//!
//! Per (namespace, node) with at least one such Secret the controller keeps a Role
//! `asg-batch-secrets-<node>` with one rule, `get` on `secrets` with `resourceNames` =
//! those Secrets, and a RoleBinding of the same name to the user
//! `asg-batch:node:<node>`. [`desired`] (PURE) computes them from the observed jobs and
//! this pass's job writes; [`Book`] applies them around the job writes of a pass:
//! grants that widen are written BEFORE the bindings that need them, so an agent never
//! sees a job whose Secret it cannot read yet, and grants that narrow or go are written
//! AFTER the job writes, only from a pass whose writes all landed. A job whose grant
//! could not be written is not bound in that pass.
//!
//! RBAC lets nobody grant what it does not hold itself: the controller holds `get` on
//! Secrets (never `list` or `watch`, and it reads none) rather than `escalate`/`bind`,
//! which would let it grant anything. A Role with an empty `resourceNames` would grant
//! every Secret of the namespace: such a Role is never written (no names, no Role).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::api::BatchJob;
use crate::api::batch_job::JobPhase;
use crate::api::protocol::node_user;
use crate::scheduler::Seconds;

use super::FIELD_MANAGER;
use super::decide::JobUpdate;
use super::error::ControllerError;

/// Label selecting the Roles and RoleBindings this module keeps.
pub const LABEL_GRANT: &str = "asgbatch.io/grant";
/// Value of [`LABEL_GRANT`].
pub const GRANT_NODE_SECRETS: &str = "node-secrets";
/// Annotation naming the node a grant is for (node names may be longer than a label value).
pub const ANNOTATION_NODE: &str = "asgbatch.io/node";

/// One grant: the Secrets of one namespace one node may read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantKey {
    /// Namespace of the Secrets (and of the Role and RoleBinding).
    pub namespace: String,
    /// BatchNode name.
    pub node: String,
}

/// Every grant: Secret names per (namespace, node); never an empty set.
pub type Grants = BTreeMap<GrantKey, BTreeSet<String>>;

/// Name of the Role and RoleBinding of `node`'s grant (in each namespace).
pub fn object_name(node: &str) -> String {
    format!("asg-batch-secrets-{node}")
}

/// PURE: the grants to hold after this pass's job writes: for every job bound to a node
/// (`status.node` set, phase Starting or Running) as the job will be once `updates`
/// have landed, the Secrets its template's environment reads (the pinned
/// `status.template`, else the job's own template), in its namespace, for that node.
pub fn desired(jobs: &[Arc<BatchJob>], updates: &[JobUpdate]) -> Grants {
    desired_of(jobs.iter().map(|j| &**j), updates)
}

/// PURE: [`desired`] over `jobs` alone: the caller leaves out jobs that are neither
/// bound nor written in this pass (a pass leaves out its settled jobs: with a
/// 50,000-job backlog, the walk over every observed job was 9 % of a pass that parks,
/// `cargo bench --bench controller -- unschedulable` profiled).
pub fn desired_of<'j>(
    jobs: impl IntoIterator<Item = &'j BatchJob>,
    updates: &[JobUpdate],
) -> Grants {
    let updates: BTreeMap<(&str, &str), &JobUpdate> = updates
        .iter()
        .map(|u| ((u.namespace.as_str(), u.name.as_str()), u))
        .collect();
    let mut out = Grants::new();
    for job in jobs {
        let ns = job.metadata.namespace.as_deref().unwrap_or_default();
        let name = job.metadata.name.as_deref().unwrap_or_default();
        let update = updates.get(&(ns, name));
        let status = update
            .and_then(|u| u.status.as_ref())
            .or(job.status.as_ref());
        let Some(status) = status else { continue };
        let bound = matches!(status.phase, Some(JobPhase::Starting | JobPhase::Running));
        let Some(node) = status.node.as_deref().filter(|_| bound) else {
            continue;
        };
        let template = status.template.as_ref().unwrap_or(&job.spec.template);
        let names = template.secret_names();
        if names.is_empty() {
            continue;
        }
        out.entry(GrantKey {
            namespace: ns.to_owned(),
            node: node.to_owned(),
        })
        .or_default()
        .extend(names);
    }
    out
}

/// PURE: the grants to write before the job writes: each desired grant that is not
/// already held in full, widened by what is held (narrowing waits until the bindings
/// that still need a Secret are gone). With nothing known of what is held, every
/// desired grant.
pub fn widen(desired: &Grants, held: Option<&Grants>) -> Grants {
    desired
        .iter()
        .filter_map(|(k, want)| {
            let have = held.and_then(|h| h.get(k));
            match have {
                Some(have) if want.is_subset(have) => None,
                Some(have) => Some((k.clone(), want.union(have).cloned().collect())),
                None => Some((k.clone(), want.clone())),
            }
        })
        .collect()
}

/// PURE: after the job writes: the grants to rewrite with fewer names, and those to
/// remove (held, and wanted no more).
pub fn narrow(desired: &Grants, held: &Grants) -> (Grants, Vec<GrantKey>) {
    let mut rewrite = Grants::new();
    let mut remove = Vec::new();
    for (k, have) in held {
        match desired.get(k) {
            Some(want) if want != have => {
                rewrite.insert(k.clone(), want.clone());
            }
            Some(_) => {}
            None => remove.push(k.clone()),
        }
    }
    (rewrite, remove)
}

fn metadata(key: &GrantKey) -> Value {
    json!({
        "name": object_name(&key.node),
        "namespace": key.namespace,
        "labels": {
            LABEL_GRANT: GRANT_NODE_SECRETS,
            "app.kubernetes.io/managed-by": FIELD_MANAGER,
        },
        "annotations": { ANNOTATION_NODE: key.node },
    })
}

/// The Role of a grant: `get` on exactly `names` (never empty).
pub fn role_body(key: &GrantKey, names: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(key),
        "rules": [{
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get"],
            "resourceNames": names,
        }],
    })
}

/// The RoleBinding of a grant: its Role to the node's user.
pub fn binding_body(key: &GrantKey) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(key),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": object_name(&key.node),
        },
        "subjects": [{
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "User",
            "name": node_user(&key.node),
        }],
    })
}

/// What the controller knows it holds, between passes. Forgotten (and listed again) after
/// every gap in the controller's view, such as a change of leadership.
#[derive(Debug, Default)]
pub struct Book {
    held: Option<Grants>,
    /// The view gap the held grants were listed after.
    listed_after: Option<Seconds>,
}

impl Book {
    /// The grants held as listed from the API server (the Roles labelled
    /// [`LABEL_GRANT`]), listed again when the view had a gap since the last list.
    async fn held(&mut self, client: &kube::Client, gap: Option<Seconds>) -> Option<&Grants> {
        if self.held.is_none() || self.listed_after != gap {
            self.held = list(client).await.ok();
            self.listed_after = gap;
        }
        self.held.as_ref()
    }

    /// Before the job writes: writes the grants that widen. Returns the grants that
    /// could not be written (their bindings must wait) and how many writes failed.
    pub async fn widen(
        &mut self,
        client: &kube::Client,
        desired: &Grants,
        gap: Option<Seconds>,
    ) -> (BTreeSet<GrantKey>, usize) {
        let held = self.held(client, gap).await.cloned();
        let mut failed = BTreeSet::new();
        for (key, names) in widen(desired, held.as_ref()) {
            match write(client, &key, &names).await {
                Ok(()) => {
                    info!(namespace = %key.namespace, node = %key.node, secrets = ?names, "granted Secrets to a node");
                    if let Some(h) = self.held.as_mut() {
                        h.insert(key, names);
                    }
                }
                Err(e) => {
                    warn!(namespace = %key.namespace, node = %key.node, error = %e, "granting Secrets to a node failed; its jobs wait");
                    failed.insert(key);
                }
            }
        }
        let n = failed.len();
        (failed, n)
    }

    /// After the job writes of a pass whose writes all landed: narrows and removes the
    /// grants no bound job needs any more. Returns how many writes failed.
    pub async fn narrow(&mut self, client: &kube::Client, desired: &Grants) -> usize {
        let Some(held) = self.held.clone() else {
            return 0;
        };
        let (rewrite, remove) = narrow(desired, &held);
        let mut failures = 0;
        for (key, names) in rewrite {
            match write(client, &key, &names).await {
                Ok(()) => {
                    debug!(namespace = %key.namespace, node = %key.node, secrets = ?names, "narrowed a node's Secrets");
                    if let Some(h) = self.held.as_mut() {
                        h.insert(key, names);
                    }
                }
                Err(e) => {
                    failures += 1;
                    warn!(namespace = %key.namespace, node = %key.node, error = %e, "narrowing a node's Secrets failed");
                }
            }
        }
        for key in remove {
            match revoke(client, &key).await {
                Ok(()) => {
                    info!(namespace = %key.namespace, node = %key.node, "revoked a node's Secrets");
                    if let Some(h) = self.held.as_mut() {
                        h.remove(&key);
                    }
                }
                Err(e) => {
                    failures += 1;
                    warn!(namespace = %key.namespace, node = %key.node, error = %e, "revoking a node's Secrets failed");
                }
            }
        }
        failures
    }
}

fn ssa() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// The Role first: a RoleBinding to a Role the server does not know is refused.
async fn write(
    client: &kube::Client,
    key: &GrantKey,
    names: &BTreeSet<String>,
) -> Result<(), ControllerError> {
    if names.is_empty() {
        // Would grant every Secret of the namespace.
        return Ok(());
    }
    let name = object_name(&key.node);
    let roles: Api<Role> = Api::namespaced(client.clone(), &key.namespace);
    roles
        .patch(&name, &ssa(), &Patch::Apply(role_body(key, names)))
        .await?;
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &key.namespace);
    bindings
        .patch(&name, &ssa(), &Patch::Apply(binding_body(key)))
        .await?;
    Ok(())
}

/// The RoleBinding first, then the Role; either already gone is fine.
async fn revoke(client: &kube::Client, key: &GrantKey) -> Result<(), ControllerError> {
    let name = object_name(&key.node);
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &key.namespace);
    match bindings.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let roles: Api<Role> = Api::namespaced(client.clone(), &key.namespace);
    match roles.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// The grants held: every Role labelled [`LABEL_GRANT`], in every namespace.
async fn list(client: &kube::Client) -> Result<Grants, ControllerError> {
    let roles: Api<Role> = Api::all(client.clone());
    let selector = format!("{LABEL_GRANT}={GRANT_NODE_SECRETS}");
    let listed = roles
        .list(&ListParams::default().labels(&selector))
        .await
        .inspect_err(|e| warn!(error = %e, "listing the Secrets granted to nodes failed"))?;
    let mut out = Grants::new();
    for role in listed {
        let (Some(namespace), Some(node)) = (
            role.metadata.namespace.clone(),
            role.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_NODE))
                .cloned(),
        ) else {
            continue;
        };
        let names: BTreeSet<String> = role
            .rules
            .iter()
            .flatten()
            .flat_map(|r| r.resource_names.iter().flatten().cloned())
            .collect();
        out.insert(GrantKey { namespace, node }, names);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::batch_job::BatchJobStatus;

    fn job(
        ns: &str,
        name: &str,
        secrets: &[&str],
        status: Option<(JobPhase, &str)>,
    ) -> Arc<BatchJob> {
        let env: Vec<Value> = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"name": format!("V{i}"), "secretKeyRef": {"name": s, "key": "k"}}))
            .collect();
        let mut j: BatchJob = serde_json::from_value(json!({
            "apiVersion": "asgbatch.io/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"queue": "q", "process": {"command": ["true"], "env": env}},
        }))
        .expect("job");
        j.status = status.map(|(phase, node)| BatchJobStatus {
            phase: Some(phase),
            node: Some(node.into()),
            template: Some(j.spec.template.clone()),
            ..BatchJobStatus::default()
        });
        Arc::new(j)
    }

    fn key(ns: &str, node: &str) -> GrantKey {
        GrantKey {
            namespace: ns.into(),
            node: node.into(),
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(std::string::ToString::to_string).collect()
    }

    #[test]
    fn bound_jobs_grant_their_secrets_to_their_node_per_namespace() {
        let jobs = vec![
            job("a", "j1", &["db", "api"], Some((JobPhase::Running, "n1"))),
            job("a", "j2", &["db", "s3"], Some((JobPhase::Starting, "n1"))),
            job("a", "j3", &["other"], Some((JobPhase::Running, "n2"))),
            job("b", "j4", &["db"], Some((JobPhase::Running, "n1"))),
            // Not bound: queued, ended, or bound without Secrets.
            job("a", "j5", &["queued"], None),
            job("a", "j6", &["ended"], Some((JobPhase::Succeeded, "n1"))),
            job("a", "j7", &[], Some((JobPhase::Running, "n1"))),
        ];
        let got = desired(&jobs, &[]);
        let want: Grants = [
            (key("a", "n1"), set(&["api", "db", "s3"])),
            (key("a", "n2"), set(&["other"])),
            (key("b", "n1"), set(&["db"])),
        ]
        .into();
        assert_eq!(got, want);
    }

    #[test]
    fn this_passs_bindings_and_endings_count() {
        let queued = job("a", "new", &["db"], None);
        let running = job("a", "old", &["api"], Some((JobPhase::Running, "n1")));
        let bind = JobUpdate {
            namespace: "a".into(),
            name: "new".into(),
            resource_version: None,
            label: None,
            binds: Some("n2".into()),
            status: Some(BatchJobStatus {
                phase: Some(JobPhase::Starting),
                node: Some("n2".into()),
                template: Some(queued.spec.template.clone()),
                ..BatchJobStatus::default()
            }),
        };
        let end = JobUpdate {
            namespace: "a".into(),
            name: "old".into(),
            resource_version: None,
            label: None,
            binds: None,
            status: Some(BatchJobStatus {
                phase: Some(JobPhase::Succeeded),
                ..BatchJobStatus::default()
            }),
        };
        let got = desired(&[queued, running], &[bind, end]);
        assert_eq!(got, [(key("a", "n2"), set(&["db"]))].into());
    }

    #[test]
    fn grants_widen_before_and_narrow_after_the_job_writes() {
        let held: Grants = [
            (key("a", "n1"), set(&["db", "api"])),
            (key("a", "n2"), set(&["x"])),
            (key("a", "n3"), set(&["y"])),
        ]
        .into();
        let want: Grants = [
            (key("a", "n1"), set(&["db"])),
            (key("a", "n2"), set(&["x", "z"])),
            (key("a", "n4"), set(&["w"])),
        ]
        .into();
        // Before: n2 widens (keeping x), n4 is new; n1's narrowing waits.
        assert_eq!(
            widen(&want, Some(&held)),
            [
                (key("a", "n2"), set(&["x", "z"])),
                (key("a", "n4"), set(&["w"]))
            ]
            .into()
        );
        // Unknown holdings: everything wanted is written.
        assert_eq!(widen(&want, None), want);
        // After: n1 narrows, n3 goes.
        let written = widen(&want, Some(&held));
        let held_after: Grants = held.into_iter().chain(written).collect();
        let (rewrite, remove) = narrow(&want, &held_after);
        assert_eq!(rewrite, [(key("a", "n1"), set(&["db"]))].into());
        assert_eq!(remove, vec![key("a", "n3")]);
    }

    #[test]
    fn a_role_names_its_secrets_and_binds_the_nodes_user() {
        let k = key("team", "i-0abc");
        let role = role_body(&k, &set(&["db"]));
        assert_eq!(role["metadata"]["name"], "asg-batch-secrets-i-0abc");
        assert_eq!(role["rules"][0]["resourceNames"], json!(["db"]));
        assert_eq!(role["rules"][0]["verbs"], json!(["get"]));
        let binding = binding_body(&k);
        assert_eq!(binding["subjects"][0]["name"], "asg-batch:node:i-0abc");
        assert_eq!(binding["roleRef"]["name"], "asg-batch-secrets-i-0abc");
    }
}
