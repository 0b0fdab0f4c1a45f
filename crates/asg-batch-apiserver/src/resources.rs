//! The resource registry: which group/version/resource triples are served, built-in
//! and from CustomResourceDefinitions.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::validation::CompiledSchema;

/// One additional printer column of a CRD version.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type: string, integer, number, boolean, date.
    pub type_: String,
    /// Optional format.
    pub format: String,
    /// Description.
    pub description: String,
    /// Priority (0 = shown by default).
    pub priority: i64,
    /// JSONPath (simple) into the object.
    pub json_path: String,
}

/// A served resource at one group/version.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    /// API group, `""` for core.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// List kind.
    pub list_kind: String,
    /// Plural resource name.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short_names: Vec<String>,
    /// Categories (e.g. `all`, `asgbatch`).
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource.
    pub status_subresource: bool,
    /// Printer columns (CRDs).
    pub printer_columns: Vec<PrinterColumn>,
    /// Compiled structural schema (CRDs only).
    pub schema: Option<Arc<CompiledSchema>>,
    /// Raw openAPIV3Schema (CRDs only), used for list types in server-side apply.
    pub raw_schema: Option<Arc<Value>>,
    /// True for custom resources (served from a CRD).
    pub custom: bool,
    /// Whether this is the CRD's storage version (used for the preferred version).
    pub storage: bool,
    /// Field selector fields besides `metadata.name` / `metadata.namespace`.
    pub selectable_fields: Vec<String>,
}

impl ResourceInfo {
    /// `group/version` or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// Storage key shared by all versions of a resource: `group/plural`.
    pub fn storage_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }
    /// Whether objects of this kind carry `metadata.generation`.
    pub fn has_generation(&self) -> bool {
        self.custom || self.group == "apiextensions.k8s.io"
    }
    /// Verbs served.
    pub fn verbs(&self) -> Vec<&'static str> {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        list_kind: format!("{kind}List"),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(std::string::ToString::to_string).collect(),
        categories: vec![],
        status_subresource: status,
        printer_columns: vec![],
        schema: None,
        raw_schema: None,
        custom: false,
        storage: true,
        selectable_fields: builtin_selectable(group, plural),
    }
}

/// Field selectors kube-apiserver supports on the built-in kinds served here.
fn builtin_selectable(group: &str, plural: &str) -> Vec<String> {
    let f: &[&str] = match (group, plural) {
        ("", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("events.k8s.io", "events") => &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        _ => &[],
    };
    f.iter().map(std::string::ToString::to_string).collect()
}

/// The built-in resources this server serves.
pub fn builtins() -> Vec<ResourceInfo> {
    vec![
        builtin("", "v1", "Namespace", "namespaces", false, &["ns"], true),
        builtin("", "v1", "ConfigMap", "configmaps", true, &["cm"], false),
        builtin("", "v1", "Secret", "secrets", true, &[], false),
        builtin("", "v1", "Event", "events", true, &["ev"], false),
        // Stored as written, with no controller behind them (no Pods are ever made): so
        // that `helm install charts/asg-batch` and `kubectl apply -f manifests/install.yaml`
        // work against this server too.
        builtin(
            "",
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            &["sa"],
            false,
        ),
        builtin("", "v1", "Service", "services", true, &["svc"], true),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            true,
            &["deploy"],
            true,
        ),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
            &["pdb"],
            true,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "Role",
            "roles",
            true,
            &[],
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
            &[],
            false,
        ),
        // Stored; enforced on the requests of authenticated users by `admission`.
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicy",
            "validatingadmissionpolicies",
            false,
            &[],
            true,
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingAdmissionPolicyBinding",
            "validatingadmissionpolicybindings",
            false,
            &[],
            false,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            true,
            &["ev"],
            false,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "Lease",
            "leases",
            true,
            &[],
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
            &["crd", "crds"],
            true,
        ),
    ]
}

/// All served resources, indexed by (group, version, plural).
#[derive(Debug, Default, Clone)]
pub struct Registry {
    by_gvr: BTreeMap<(String, String, String), Arc<ResourceInfo>>,
}

impl Registry {
    /// A registry of the built-ins plus the given CRD-derived resources.
    pub fn new(custom: Vec<ResourceInfo>) -> Self {
        let mut r = Registry::default();
        for info in builtins().into_iter().chain(custom) {
            r.by_gvr.insert(
                (
                    info.group.clone(),
                    info.version.clone(),
                    info.plural.clone(),
                ),
                Arc::new(info),
            );
        }
        r
    }

    /// Look up a resource.
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.by_gvr
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// Every served resource.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceInfo>> {
        self.by_gvr.values()
    }

    /// Served versions of a group, preferred (storage) version first.
    pub fn group_versions(&self, group: &str) -> Vec<String> {
        let mut versions: Vec<(bool, String)> = vec![];
        for info in self.by_gvr.values().filter(|i| i.group == group) {
            if !versions.iter().any(|(_, v)| v == &info.version) {
                versions.push((info.storage, info.version.clone()));
            } else if info.storage {
                for (s, v) in &mut versions {
                    if v == &info.version {
                        *s = true;
                    }
                }
            }
        }
        versions.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| version_order(&a.1, &b.1)));
        versions.into_iter().map(|(_, v)| v).collect()
    }

    /// All group names (excluding the core group), sorted with built-ins first.
    pub fn groups(&self) -> Vec<String> {
        let mut gs: Vec<String> = vec![];
        for info in self.by_gvr.values() {
            if !info.group.is_empty() && !gs.contains(&info.group) {
                gs.push(info.group.clone());
            }
        }
        gs
    }

    /// Resources of one group/version.
    pub fn resources_of(&self, group: &str, version: &str) -> Vec<Arc<ResourceInfo>> {
        self.by_gvr
            .values()
            .filter(|i| i.group == group && i.version == version)
            .cloned()
            .collect()
    }

    /// Find the resource info with the given storage key (any version, storage preferred).
    pub fn by_storage_key(&self, key: &str) -> Option<Arc<ResourceInfo>> {
        let mut found: Option<Arc<ResourceInfo>> = None;
        for info in self.by_gvr.values() {
            if info.storage_key() == key {
                if info.storage {
                    return Some(info.clone());
                }
                found = Some(info.clone());
            }
        }
        found
    }
}

/// Kubernetes version priority: GA > beta > alpha, higher numbers first.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn parse(v: &str) -> (u8, u32, u32) {
        let rest = v.strip_prefix('v').unwrap_or(v);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major = digits.parse().unwrap_or(0);
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            (3, major, 0)
        } else if let Some(n) = tail.strip_prefix("beta") {
            (2, major, n.parse().unwrap_or(0))
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (1, major, n.parse().unwrap_or(0))
        } else {
            (0, major, 0)
        }
    }
    parse(b).cmp(&parse(a))
}

/// Derive the served resources of a CRD object. Returns an empty list for a CRD that is
/// malformed (validation refuses those before they are stored).
pub fn from_crd(crd: &Value) -> Vec<ResourceInfo> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return vec![];
    }
    let singular = names["singular"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let list_kind = names["listKind"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{kind}List"));
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = vec![];
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"].as_bool() == Some(false) {
            continue;
        }
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        let raw = v.pointer("/schema/openAPIV3Schema").cloned();
        let schema = raw
            .as_ref()
            .and_then(|s| CompiledSchema::compile(s).ok())
            .map(Arc::new);
        let printer_columns = v["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c["name"].as_str().unwrap_or_default().to_string(),
                        type_: c["type"].as_str().unwrap_or("string").to_string(),
                        format: c["format"].as_str().unwrap_or_default().to_string(),
                        description: c["description"].as_str().unwrap_or_default().to_string(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceInfo {
            group: group.clone(),
            version: version.to_string(),
            kind: kind.clone(),
            list_kind: list_kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: strs(&names["shortNames"]),
            categories: strs(&names["categories"]),
            status_subresource: v.pointer("/subresources/status").is_some(),
            printer_columns,
            schema,
            raw_schema: raw.map(Arc::new),
            custom: true,
            storage: v["storage"].as_bool().unwrap_or(false),
            selectable_fields: v["selectableFields"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f["jsonPath"].as_str())
                        .map(|p| p.trim_start_matches('.').to_string())
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}
