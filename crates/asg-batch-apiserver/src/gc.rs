//! The garbage collector: ownerReference cascades (background, foreground, orphan),
//! namespace termination and CRD instance cleanup.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::crd::{CLEANUP_FINALIZER, CRD_KEY};
use super::meta::{finalizers_of, is_deleting, name_of, namespace_of, set_meta, uid_of};
use super::objects::{Core, NS_KEY};
use super::resources::{ResourceInfo, from_crd};
use super::store::{Obj, State};

/// Run the collector until the task is aborted.
pub async fn run(core: Arc<Core>) {
    let mut last_rv = u64::MAX;
    loop {
        tokio::select! {
            _ = core.gc_wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // let a burst of writes settle
        tokio::time::sleep(Duration::from_millis(20)).await;
        let rv = core.store.read(State::rv);
        if rv == last_rv {
            continue;
        }
        if !core
            .store
            .write(|st| Ok(st.take_gc_dirty()))
            .unwrap_or(true)
        {
            last_rv = rv;
            continue;
        }
        // repeat while sweeps make progress (cascades over several levels)
        for _ in 0..16 {
            if !sweep(&core) {
                break;
            }
        }
        last_rv = core.store.read(State::rv);
    }
}

fn remove_finalizer(core: &Core, st: &mut State, info: &ResourceInfo, obj: &Obj, fin: &str) {
    let mut v: Value = (**obj).clone();
    let fins: Vec<String> = finalizers_of(&v).into_iter().filter(|f| f != fin).collect();
    set_meta(&mut v, "finalizers", json!(fins));
    let key = info.storage_key();
    if is_deleting(&v) && fins.is_empty() {
        st.remove(&key, namespace_of(&v), name_of(&v), Some(v.clone()));
    } else {
        st.put(&key, v);
    }
    let _ = core;
}

/// One pass; returns whether anything changed.
pub fn sweep(core: &Core) -> bool {
    let reg = core.registry();
    let result = core.store.write(|st| {
        let rv_before = st.rv();
        let mut crd_removed = false;
        // index: uid -> (key, object)
        let mut by_uid: HashMap<String, (String, Obj)> = HashMap::new();
        let mut all: Vec<(String, Obj)> = vec![];
        for key in st.keys() {
            for o in st.list(&key, None, None) {
                by_uid.insert(uid_of(&o).to_string(), (key.clone(), o.clone()));
                all.push((key.clone(), o));
            }
        }
        let info_of = |key: &str| -> Option<Arc<ResourceInfo>> { reg.by_storage_key(key) };
        // dependents per owner uid
        let mut dependents: HashMap<String, Vec<(String, Obj)>> = HashMap::new();
        for (key, o) in &all {
            for r in o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(u) = r.get("uid").and_then(Value::as_str) {
                    dependents
                        .entry(u.to_string())
                        .or_default()
                        .push((key.clone(), o.clone()));
                }
            }
        }
        let mut handled: HashSet<String> = HashSet::new();
        // 1. dependents whose owners are all gone, or whose owner is deleting in foreground
        //    or orphan mode.
        for (key, o) in &all {
            let refs: Vec<&Value> = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if refs.is_empty() {
                continue;
            }
            let Some(info) = info_of(key) else { continue };
            let owners: Vec<Option<&(String, Obj)>> = refs
                .iter()
                .map(|r| {
                    r.get("uid")
                        .and_then(Value::as_str)
                        .and_then(|u| by_uid.get(u))
                })
                .collect();
            let orphaning: Vec<String> = owners
                .iter()
                .flatten()
                .filter(|(_, ow)| {
                    is_deleting(ow) && finalizers_of(ow).iter().any(|f| f == "orphan")
                })
                .map(|(_, ow)| uid_of(ow).to_string())
                .collect();
            if !orphaning.is_empty() {
                let mut v: Value = (**o).clone();
                let kept: Vec<Value> = refs
                    .iter()
                    .filter(|r| {
                        !r.get("uid")
                            .and_then(Value::as_str)
                            .is_some_and(|u| orphaning.iter().any(|x| x == u))
                    })
                    .map(|r| (*r).clone())
                    .collect();
                if kept.is_empty() {
                    if let Some(md) = super::meta::metadata_mut(&mut v) {
                        md.remove("ownerReferences");
                    }
                } else {
                    set_meta(&mut v, "ownerReferences", json!(kept));
                }
                st.put(key, v);
                handled.insert(uid_of(o).to_string());
                continue;
            }
            let all_gone = owners.iter().all(Option::is_none);
            let foreground = owners.iter().flatten().any(|(_, ow)| {
                is_deleting(ow) && finalizers_of(ow).iter().any(|f| f == "foregroundDeletion")
            });
            if (all_gone || foreground) && !is_deleting(o) {
                let prop = if foreground { Some("Foreground") } else { None };
                let has_deps = dependents.contains_key(uid_of(o));
                core.delete_in(st, &info, o, if has_deps { prop } else { None }, false);
                handled.insert(uid_of(o).to_string());
            }
        }
        // 2. owners waiting on orphan / foreground finalizers
        for (key, o) in &all {
            if !is_deleting(o) || handled.contains(uid_of(o)) {
                continue;
            }
            let Some(info) = info_of(key) else { continue };
            let fins = finalizers_of(o);
            let live_deps = dependents
                .get(uid_of(o))
                .map(|d| {
                    d.iter()
                        .filter(|(k, dep)| st.get(k, namespace_of(dep), name_of(dep)).is_some())
                        .count()
                })
                .unwrap_or(0);
            if fins.iter().any(|f| f == "orphan") && live_deps == 0 {
                remove_finalizer(core, st, &info, o, "orphan");
            } else if fins.iter().any(|f| f == "foregroundDeletion") && live_deps == 0 {
                remove_finalizer(core, st, &info, o, "foregroundDeletion");
            }
        }
        // 3. terminating namespaces: delete content, then the namespace
        for o in st.list(NS_KEY, None, None) {
            if !is_deleting(&o) {
                continue;
            }
            let ns = name_of(&o).to_string();
            let mut remaining = 0;
            for key in st.keys() {
                if key == NS_KEY {
                    continue;
                }
                let Some(info) = info_of(&key) else { continue };
                if !info.namespaced {
                    continue;
                }
                for child in st.list(&key, Some(&ns), None) {
                    remaining += 1;
                    if !is_deleting(&child) {
                        core.delete_in(st, &info, &child, None, false);
                    }
                }
            }
            if remaining == 0 && finalizers_of(&o).is_empty() {
                st.remove(NS_KEY, "", &ns, None);
            }
        }
        // 4. deleting CRDs: delete instances, then drop the cleanup finalizer
        for o in st.list(CRD_KEY, None, None) {
            if !is_deleting(&o) || !finalizers_of(&o).iter().any(|f| f == CLEANUP_FINALIZER) {
                continue;
            }
            let infos = from_crd(&o);
            let Some(info) = infos.into_iter().find(|i| i.storage).map(Arc::new) else {
                continue;
            };
            let items = st.list(&info.storage_key(), None, None);
            for it in &items {
                if !is_deleting(it) {
                    core.delete_in(st, &info, it, None, false);
                }
            }
            if st.list(&info.storage_key(), None, None).is_empty() {
                if let Some(crd_info) = info_of(CRD_KEY) {
                    remove_finalizer(core, st, &crd_info, &o, CLEANUP_FINALIZER);
                    crd_removed = true;
                }
            }
        }
        Ok((st.rv() != rv_before, crd_removed))
    });
    let (changed, crd_removed) = result.unwrap_or((false, false));
    if crd_removed {
        core.refresh_registry();
    }
    changed
}
