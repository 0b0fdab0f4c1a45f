//! Publishing Events (`events.k8s.io/v1`) without keeping them.
//!
//! kube's `Recorder` keeps every Event it published for six minutes (the whole Event and
//! its key) and scans that cache on every publish: with thousands of
//! jobs finishing within minutes it was the controller's largest heap item (44 MiB of a
//! 128 MiB peak in a 5,000-job `dev` run, measured with heaptrack) and a scan per Event.
//! This recorder keeps, per repeated Event, only what a repeat needs: the Event's name,
//! its count and when it was last seen; expired entries leave from the front of an
//! insertion-ordered queue, and at most [`MAX_SERIES`] are kept (beyond that the oldest is
//! forgotten and a later repeat starts a new Event).
//!
//! A repeat is the same type, reason, action, note, regarding and related object within
//! [`SERIES_TTL`]: it becomes a series on the first Event (`series.count`,
//! `series.lastObservedTime`), as client-go's and kube's recorders do. Unlike kube's, the
//! note is part of the key, so an Event saying something new is published as such rather
//! than counted under an older note. A repeat of an Event that is gone (deleted, or
//! expired by the API server's event TTL) starts a new Event.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as ApiEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// How long a published Event can still become a series.
pub const SERIES_TTL: SignedDuration = SignedDuration::from_mins(6);

/// At most this many Events are remembered for series.
pub const MAX_SERIES: usize = 4096;

/// Publishes Events for the controller; see the module documentation.
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    series: Mutex<Series>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

/// A published Event that a repeat would extend.
#[derive(Debug, Clone)]
struct Published {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// The remembered Events, and their keys in the order they were published.
#[derive(Debug, Default)]
struct Series {
    by_key: HashMap<String, Published>,
    order: VecDeque<(Timestamp, String)>,
}

impl Series {
    /// Forgets what expired, and the oldest beyond the bound.
    fn expire(&mut self, now: Timestamp) {
        while let Some((at, key)) = self.order.front() {
            let expired = *at + SERIES_TTL <= now;
            if !expired && self.order.len() <= MAX_SERIES {
                break;
            }
            // A key re-published later has a newer entry in `order`; remove the map's entry
            // only when it is this one.
            if self.by_key.get(key).is_some_and(|p| p.last == *at) {
                self.by_key.remove(key);
            }
            self.order.pop_front();
        }
    }

    fn remember(&mut self, key: String, published: Published) {
        self.order.push_back((published.last, key.clone()));
        self.by_key.insert(key, published);
    }
}

fn key(ev: &Event, regarding: &ObjectReference) -> String {
    let r = |o: &ObjectReference| {
        format!(
            "{}/{}/{}/{}/{}",
            o.api_version.as_deref().unwrap_or_default(),
            o.kind.as_deref().unwrap_or_default(),
            o.namespace.as_deref().unwrap_or_default(),
            o.name.as_deref().unwrap_or_default(),
            o.uid.as_deref().unwrap_or_default(),
        )
    };
    format!(
        "{:?}\0{}\0{}\0{}\0{}\0{}",
        ev.type_,
        ev.reason,
        ev.action,
        ev.note.as_deref().unwrap_or_default(),
        r(regarding),
        ev.secondary.as_ref().map(r).unwrap_or_default(),
    )
}

impl Recorder {
    /// A recorder publishing as `reporter`.
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            series: Mutex::default(),
        }
    }

    fn api(&self, namespace: &str) -> Api<ApiEvent> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Publishes `ev` about `regarding` (in its namespace; `default` for cluster-scoped
    /// objects): a new Event, or a series on the same Event published within
    /// [`SERIES_TTL`].
    ///
    /// # Errors
    /// The API server's refusal.
    pub async fn publish(&self, ev: &Event, regarding: &ObjectReference) -> kube::Result<()> {
        let now = Timestamp::now();
        let key = key(ev, regarding);
        let earlier = {
            let mut series = self
                .series
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            series.expire(now);
            series.by_key.get(&key).cloned()
        };
        let repeated = match earlier {
            Some(p) => {
                let count = p.count + 1;
                let patch = serde_json::json!({
                    "series": EventSeries { count, last_observed_time: MicroTime(now) },
                });
                match self
                    .api(&p.namespace)
                    .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => Some(Published {
                        count,
                        last: now,
                        ..p
                    }),
                    // The Event is gone (deleted, or expired by the API server's event
                    // TTL): the repeat starts a new one.
                    Err(kube::Error::Api(e)) if e.code == 404 => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let published = match repeated {
            Some(p) => p,
            None => {
                let event = self.generate(ev, regarding, now);
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let created = self
                    .api(&namespace)
                    .create(&PostParams::default(), &event)
                    .await?;
                Published {
                    namespace,
                    name: created.metadata.name.unwrap_or_default(),
                    count: 1,
                    last: now,
                }
            }
        };
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remember(key, published);
        Ok(())
    }

    fn generate(&self, ev: &Event, regarding: &ObjectReference, now: Timestamp) -> ApiEvent {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        ApiEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(namespace),
                name: Some(format!(
                    "{}.{:x}",
                    regarding
                        .name
                        .as_deref()
                        .unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..ApiEvent::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "Retrying" Event saying `note`.
    fn ev(note: &str) -> Event {
        Event {
            type_: EventType::Warning,
            reason: "Retrying".into(),
            note: Some(note.into()),
            action: "Retry".into(),
            secondary: None,
        }
    }

    fn published(name: &str, at: Timestamp) -> Published {
        Published {
            namespace: "default".into(),
            name: name.into(),
            count: 1,
            last: at,
        }
    }

    #[test]
    fn expired_events_are_forgotten_and_live_ones_kept() {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut s = Series::default();
        s.remember("a".into(), published("a", t0));
        s.remember(
            "b".into(),
            published("b", t0 + SignedDuration::from_mins(3)),
        );
        s.expire(t0 + SignedDuration::from_mins(7));
        assert!(!s.by_key.contains_key("a"), "a expired");
        assert!(s.by_key.contains_key("b"), "b is 4 minutes old");
        assert_eq!(s.order.len(), 1);
    }

    #[test]
    fn a_repeat_keeps_its_series_past_the_first_entry_expiring() {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut s = Series::default();
        s.remember("a".into(), published("a", t0));
        let mut again = published("a", t0 + SignedDuration::from_mins(5));
        again.count = 2;
        s.remember("a".into(), again);
        // The first entry of `a` in the order expires; the repeat does not.
        s.expire(t0 + SignedDuration::from_mins(7));
        assert_eq!(s.by_key.get("a").map(|p| p.count), Some(2));
        s.expire(t0 + SignedDuration::from_mins(12));
        assert!(s.by_key.is_empty());
        assert!(s.order.is_empty());
    }

    #[test]
    fn at_most_max_series_events_are_kept() {
        let t0 = Timestamp::UNIX_EPOCH;
        let mut s = Series::default();
        for i in 0..MAX_SERIES + 10 {
            s.remember(format!("k{i}"), published("x", t0));
            s.expire(t0);
        }
        assert_eq!(s.by_key.len(), MAX_SERIES);
        assert!(!s.by_key.contains_key("k0"), "the oldest went first");
        assert!(s.by_key.contains_key(&format!("k{}", MAX_SERIES + 9)));
    }

    #[test]
    fn a_different_note_is_a_different_event() {
        let r = ObjectReference {
            kind: Some("BatchJob".into()),
            name: Some("j".into()),
            ..ObjectReference::default()
        };
        assert_ne!(key(&ev("attempt 1"), &r), key(&ev("attempt 2"), &r));
        assert_eq!(key(&ev("attempt 1"), &r), key(&ev("attempt 1"), &r));
    }

    /// Through a real (embedded) API server: a repeat is a series on the first Event, and
    /// a new note is a new Event.
    #[tokio::test]
    async fn a_repeat_is_a_series_and_a_new_note_a_new_event() {
        let server = asg_batch_apiserver::start(asg_batch_apiserver::ApiServerConfig::default())
            .await
            .expect("server");
        let client = server.client().expect("client");
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "test".into(),
                instance: None,
            },
        );
        let regarding = ObjectReference {
            api_version: Some("asgbatch.io/v1alpha1".into()),
            kind: Some("BatchJob".into()),
            name: Some("j".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        };
        for note in ["attempt 1 failed", "attempt 1 failed", "attempt 2 failed"] {
            recorder
                .publish(&ev(note), &regarding)
                .await
                .expect("publish");
        }
        let events: Api<ApiEvent> = Api::namespaced(client, "default");
        let mut listed: Vec<(Option<String>, Option<i32>)> = events
            .list(&kube::api::ListParams::default())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|e| (e.note, e.series.map(|s| s.count)))
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec![
                (Some("attempt 1 failed".into()), Some(2)),
                (Some("attempt 2 failed".into()), None),
            ]
        );
    }
}
