//! The garbage collector: ownerReference cascades (background, foreground, orphan),
//! namespace termination and CRD instance cleanup.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::crd::{CLEANUP_FINALIZER, CRD_KEY};
use super::meta::{finalizers_of, is_deleting, name_of, namespace_of, set_meta};
use super::objects::{Core, NS_KEY};
use super::resources::{ResourceInfo, from_crd};
use super::store::{GcMeta, Obj, State, Stored};

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

/// One pass; returns whether anything changed. Objects are parsed only where the
/// collector acts on them; it finds them from their [`GcMeta`].
pub fn sweep(core: &Core) -> bool {
    let reg = core.registry();
    let result = core.store.write(|st| {
        let rv_before = st.rv();
        let mut crd_removed = false;
        let mut all: Vec<(String, Stored)> = vec![];
        for key in st.keys() {
            for o in st.stored(&key, None, None) {
                all.push((key.clone(), o));
            }
        }
        // index: uid -> (key, object)
        let by_uid: HashMap<&str, &(String, Stored)> =
            all.iter().map(|e| (e.1.gc.uid.as_str(), e)).collect();
        let info_of = |key: &str| -> Option<Arc<ResourceInfo>> { reg.by_storage_key(key) };
        // dependents per owner uid
        let mut dependents: HashMap<&str, Vec<&(String, Stored)>> = HashMap::new();
        for e in &all {
            for u in &e.1.gc.owners {
                dependents.entry(u.as_str()).or_default().push(e);
            }
        }
        let mut handled: HashSet<String> = HashSet::new();
        // 1. dependents whose owners are all gone, or whose owner is deleting in foreground
        //    or orphan mode.
        for (key, o) in &all {
            let m: &GcMeta = &o.gc;
            if m.owners.is_empty() {
                continue;
            }
            let Some(info) = info_of(key) else { continue };
            let owners: Vec<Option<&GcMeta>> = m
                .owners
                .iter()
                .map(|u| by_uid.get(u.as_str()).map(|e| &*e.1.gc))
                .collect();
            let orphaning: Vec<&str> = owners
                .iter()
                .flatten()
                .filter(|ow| ow.deleting && ow.has_finalizer("orphan"))
                .map(|ow| ow.uid.as_str())
                .collect();
            if !orphaning.is_empty() {
                let mut v: Value = (*o.object.unpack()).clone();
                let kept: Vec<Value> = v
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|r| {
                        !r.get("uid")
                            .and_then(Value::as_str)
                            .is_some_and(|u| orphaning.contains(&u))
                    })
                    .cloned()
                    .collect();
                if kept.is_empty() {
                    if let Some(md) = super::meta::metadata_mut(&mut v) {
                        md.remove("ownerReferences");
                    }
                } else {
                    set_meta(&mut v, "ownerReferences", json!(kept));
                }
                st.put(key, v);
                handled.insert(m.uid.clone());
                continue;
            }
            let all_gone = owners.iter().all(Option::is_none);
            let foreground = owners
                .iter()
                .flatten()
                .any(|ow| ow.deleting && ow.has_finalizer("foregroundDeletion"));
            if (all_gone || foreground) && !m.deleting {
                let prop = if foreground { Some("Foreground") } else { None };
                let has_deps = dependents.contains_key(m.uid.as_str());
                let obj = o.object.unpack();
                core.delete_in(st, &info, &obj, if has_deps { prop } else { None }, false);
                handled.insert(m.uid.clone());
            }
        }
        // 2. owners waiting on orphan / foreground finalizers
        for (key, o) in &all {
            let m: &GcMeta = &o.gc;
            if !m.deleting || handled.contains(&m.uid) {
                continue;
            }
            let Some(info) = info_of(key) else { continue };
            let live_deps = dependents
                .get(m.uid.as_str())
                .map(|d| {
                    d.iter()
                        .filter(|(k, dep)| st.contains(k, &dep.gc.namespace, &dep.gc.name))
                        .count()
                })
                .unwrap_or(0);
            if m.has_finalizer("orphan") && live_deps == 0 {
                remove_finalizer(core, st, &info, &o.object.unpack(), "orphan");
            } else if m.has_finalizer("foregroundDeletion") && live_deps == 0 {
                remove_finalizer(core, st, &info, &o.object.unpack(), "foregroundDeletion");
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
