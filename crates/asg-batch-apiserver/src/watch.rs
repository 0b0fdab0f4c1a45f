//! Watch: a stream of newline-delimited `{"type": ..., "object": ...}` events.
//!
//! - `resourceVersion` unset or `0`: synthetic ADDED events for the current state, then
//!   changes (kube-apiserver's "Get State and Start at Most Recent" / "Start at Any").
//! - `resourceVersion=N`: every change after N, or one ERROR event with a 410 `Expired`
//!   Status when N is older than the retained history or than the resourceVersion the
//!   resource has been served since (its CRD's creation, or the server's start for
//!   built-ins) — in a 200 response, as kube-apiserver's watch cache does, so clients
//!   relist.
//! - `sendInitialEvents=true`: the current state as ADDED events, then a BOOKMARK
//!   annotated `k8s.io/initial-events-end: "true"` (streaming lists).
//! - `allowWatchBookmarks=true`: periodic BOOKMARK events carrying the latest
//!   resourceVersion. `timeoutSeconds` ends the stream.
//!
//! Selector watches turn a change into (out of) the selection into ADDED (DELETED).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::objects::Core;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Event, EventType, Live, Obj, Packed, watch_line};
use super::table;

/// Interval between BOOKMARK events when bookmarks are allowed.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// Parameters of a watch.
#[derive(Debug, Clone, Default)]
pub struct WatchParams {
    /// `resourceVersion`.
    pub resource_version: Option<String>,
    /// `sendInitialEvents`.
    pub send_initial_events: Option<bool>,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<u64>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Table output (kubectl get -w).
    pub as_table: bool,
    /// `includeObject` for tables.
    pub include_object: String,
    /// PartialObjectMetadata output (metadata-only watches).
    pub as_partial: bool,
}

struct Watcher {
    info: Arc<ResourceInfo>,
    key: String,
    ns: Option<String>,
    p: WatchParams,
    tx: mpsc::Sender<Bytes>,
    last_rv: u64,
    /// [`super::objects::served_prefix`]: a stored object whose JSON starts with it is
    /// already the object as served (see [`Watcher::as_stored`]).
    served_prefix: Vec<u8>,
}

impl Watcher {
    fn selected(&self, o: &Value) -> bool {
        self.p.labels.matches(o) && self.p.fields.matches(o)
    }

    /// Whether the watch has a selector (then it needs each change's previous object).
    fn filters(&self) -> bool {
        !self.p.labels.is_empty() || !self.p.fields.is_empty()
    }

    fn render(&self, o: &Value) -> Value {
        let obj = Core::present(&self.info, o);
        if self.p.as_partial {
            return table::partial_metadata(&obj);
        }
        if self.p.as_table {
            let rv = o
                .pointer("/metadata/resourceVersion")
                .cloned()
                .unwrap_or(json!(""));
            table::table(
                &self.info,
                &[&obj],
                json!({"resourceVersion": rv}),
                &self.p.include_object,
            )
        } else {
            obj
        }
    }

    /// [`Watcher::render`] of an object the caller owns: a plain watch presents it in
    /// place (no copy).
    fn render_owned(&self, mut o: Value) -> Value {
        if self.p.as_partial || self.p.as_table {
            return self.render(&o);
        }
        if let Some(m) = o.as_object_mut() {
            m.insert("apiVersion".into(), json!(self.info.api_version()));
            m.insert("kind".into(), json!(self.info.kind));
        }
        o
    }

    /// The stored JSON `p`, when it is exactly what [`Watcher::render`] would send: a
    /// plain watch (no table, no metadata-only) and an object stored as served
    /// ([`super::objects::served_prefix`]); anything else is rendered. Serialised once
    /// when stored, shared by every watch.
    fn as_stored<'a>(&self, p: &'a Packed) -> Option<&'a [u8]> {
        let plain = !self.p.as_partial && !self.p.as_table;
        (plain && p.bytes().starts_with(&self.served_prefix)).then(|| p.bytes())
    }

    /// Sends an event whose object is already JSON.
    async fn send_raw(&self, kind: &str, object: &[u8]) -> bool {
        self.tx.send(watch_line(kind, object)).await.is_ok()
    }

    async fn send(&self, kind: &str, object: Value) -> bool {
        /// `type` first, as kube-apiserver writes it (and [`watch_line`]): a client that
        /// reads the object by its type need not buffer it (`json!` sorts the keys).
        #[derive(serde::Serialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            object: &'a Value,
        }
        let Ok(mut line) = serde_json::to_vec(&Line {
            kind,
            object: &object,
        }) else {
            return true;
        };
        line.push(b'\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }

    async fn bookmark(&self, rv: u64, initial_end: bool) -> bool {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": md});
        self.send("BOOKMARK", obj).await
    }

    async fn expired(&self, message: String) {
        let status = super::error::ApiError::expired(message).to_status();
        let _ = self.send("ERROR", status).await;
    }

    /// Process one store event, `object` and `prev` giving its object and previous object
    /// parsed (called only for events of this watch), `live` the change as broadcast
    /// (whose line is shared); false when the client is gone.
    async fn event(
        &mut self,
        e: &Event,
        object: &(dyn Fn() -> Obj + Sync),
        prev: &(dyn Fn() -> Option<Obj> + Sync),
        live: Option<&Live>,
    ) -> bool {
        if e.rv <= self.last_rv {
            return true;
        }
        self.last_rv = e.rv;
        if e.key != self.key {
            return true;
        }
        if let Some(ns) = &self.ns {
            if &e.namespace != ns {
                return true;
            }
        }
        // Without a selector every object is selected: neither is parsed here.
        let (now, prev) = if self.filters() {
            (self.selected(&object()), prev())
        } else {
            (true, None)
        };
        let before = match (&e.prev, &prev) {
            (None, _) => None,
            (Some(_), Some(p)) => Some(self.selected(p)),
            (Some(_), None) => Some(true),
        };
        let kind = match (e.kind, before, now) {
            (EventType::Added, _, true) => "ADDED",
            (EventType::Modified, Some(true), true) => "MODIFIED",
            (EventType::Modified, Some(false) | None, true) => "ADDED",
            (EventType::Modified, Some(true), false) => "DELETED",
            (EventType::Deleted, Some(true), _) => "DELETED",
            (EventType::Deleted, None, true) => "DELETED",
            _ => return true,
        };
        // A change out of the selection: kube-apiserver sends the previous object (the
        // one that matched) with the change's resourceVersion.
        let obj = match (kind, e.kind, &prev) {
            ("DELETED", EventType::Modified, Some(prev)) => {
                let mut p = (**prev).clone();
                super::meta::set_meta(&mut p, "resourceVersion", json!(e.rv.to_string()));
                self.render_owned(p)
            }
            _ => {
                if let Some(raw) = self.as_stored(&e.object) {
                    // Most watches send a change as it is: one line for all of them.
                    if let Some(live) = live.filter(|_| kind == e.kind.as_str()) {
                        return self.tx.send(live.line()).await.is_ok();
                    }
                    return self.send_raw(kind, raw).await;
                }
                self.render(&object())
            }
        };
        self.send(kind, obj).await
    }
}

/// Start a watch; returns the receiving end of the response body.
pub fn start(
    core: Arc<Core>,
    info: Arc<ResourceInfo>,
    ns: Option<String>,
    p: WatchParams,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(1024);
    let key = info.storage_key();
    let served_prefix = super::objects::served_prefix(&info);
    let mut w = Watcher {
        info,
        key,
        ns,
        p,
        tx,
        last_rv: 0,
        served_prefix,
    };
    tokio::spawn(async move {
        let rv_param = w.p.resource_version.clone().unwrap_or_default();
        let initial = w.p.send_initial_events == Some(true)
            || (w.p.send_initial_events.is_none() && (rv_param.is_empty() || rv_param == "0"));
        let mut rx: broadcast::Receiver<Arc<Live>>;
        if initial || rv_param.is_empty() {
            let (objs, rv, sub) = core.store.snapshot_and_watch(&w.key, w.ns.as_deref());
            rx = sub;
            w.last_rv = rv;
            if initial {
                // Parsed one at a time: the whole list parsed at once would be ten
                // times its JSON.
                for packed in objs {
                    // Without a selector, an object stored as served is sent unparsed.
                    if !w.filters() {
                        if let Some(raw) = w.as_stored(&packed) {
                            if !w.send_raw("ADDED", raw).await {
                                return;
                            }
                            continue;
                        }
                    }
                    let o = packed.unpack();
                    if !w.selected(&o) {
                        continue;
                    }
                    let obj = match w.as_stored(&packed) {
                        Some(raw) => {
                            if !w.send_raw("ADDED", raw).await {
                                return;
                            }
                            continue;
                        }
                        None => w.render(&o),
                    };
                    if !w.send("ADDED", obj).await {
                        return;
                    }
                }
                if w.p.send_initial_events == Some(true) && !w.bookmark(rv, true).await {
                    return;
                }
            }
        } else {
            let Ok(from) = rv_param.parse::<u64>() else {
                w.expired(format!("invalid resource version: {rv_param}"))
                    .await;
                return;
            };
            let since = core.served_since(&w.key);
            if from < since {
                w.expired(format!("too old resource version: {from} ({since})"))
                    .await;
                return;
            }
            match core.store.watch_from(from) {
                Ok((events, sub)) => {
                    rx = sub;
                    w.last_rv = from;
                    for e in events {
                        let object = || e.object.unpack();
                        let prev = || e.prev.as_ref().map(Packed::unpack);
                        if !w.event(&e, &object, &prev, None).await {
                            return;
                        }
                    }
                }
                Err(oldest) => {
                    w.expired(format!("too old resource version: {from} ({oldest})"))
                        .await;
                    return;
                }
            }
        }
        let mut stop = core.shutdown.subscribe();
        let timeout = tokio::time::sleep(Duration::from_secs(w.p.timeout.unwrap_or(1800)));
        tokio::pin!(timeout);
        let mut tick = tokio::time::interval(BOOKMARK_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(live) => {
                        let object = || live.object.clone();
                        let prev = || live.prev();
                        if !w.event(&live.event, &object, &prev, Some(&live)).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        w.expired(format!("too old resource version: {} (watcher fell behind)", w.last_rv)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if w.p.bookmarks && !w.p.as_table => {
                    let rv = w.last_rv.max(core.store.read(super::store::State::rv));
                    // Only advance past events this watcher has seen: every event up to
                    // the store's rv was already delivered through `rx` or is queued.
                    if rx.is_empty() {
                        w.last_rv = rv;
                    }
                    if !w.bookmark(w.last_rv, false).await {
                        return;
                    }
                }
                _ = &mut timeout => return,
                _ = stop.changed() => return,
                _ = w.tx.closed() => return,
            }
        }
    });
    rx
}
