//! Events off the pass's critical path: a pass hands its Events to one publisher task
//! and goes on (the next pass sees the agents' reports sooner); the task publishes them in
//! order, a few at a time, so they compete little with the bindings of the next pass.
//!
//! The queue is bounded: when the API server falls so far behind that [`QUEUED_EVENTS`]
//! Events wait, further ones are dropped and counted
//! (`asg_batch_controller_events_dropped_total`), as client-go's broadcaster does. Events
//! are informational; every decision is in the objects' status.

use futures::StreamExt;
use kube::runtime::events::Event;

use crate::controller::recorder::Recorder;
use tokio::sync::mpsc;

use super::*;

/// Events waiting to be published before new ones are dropped.
pub(super) const QUEUED_EVENTS: usize = 8192;

/// Events published at once by the publisher task.
const EVENTS_IN_FLIGHT: usize = 4;

/// One Event about one object.
pub(super) type Outgoing = (Event, ObjectReference);

/// The sending side, held in [`Context::events`].
pub(super) type EventQueue = mpsc::Sender<Outgoing>;

/// Starts the publisher task; it ends when every sender is dropped.
pub(super) fn start(recorder: Arc<Recorder>, metrics: Arc<Metrics>) -> (EventQueue, AbortOnDrop) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUED_EVENTS);
    let task = tokio::spawn(async move {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .for_each_concurrent(EVENTS_IN_FLIGHT, |(ev, regarding)| {
                let (recorder, metrics) = (&recorder, &metrics);
                async move { publish_one(recorder, metrics, &ev, &regarding).await }
            })
            .await;
    });
    (tx, AbortOnDrop(task))
}

/// Publishes one Event now, counting the outcome as an API write.
async fn publish_one(
    recorder: &Recorder,
    metrics: &Metrics,
    ev: &Event,
    regarding: &ObjectReference,
) {
    let outcome = match recorder.publish(ev, regarding).await {
        Ok(()) => "ok",
        Err(err) => {
            debug!(error = %err, reason = %ev.reason, "publishing an Event failed");
            "error"
        }
    };
    metrics.write("event", outcome);
}

/// Publishes `events`: through the publisher task when the controller runs one, else
/// (unit tests of `apply`) here, one after another.
pub(super) async fn publish(ctx: &Context, events: Vec<Outgoing>) {
    let Some(queue) = ctx.events.get() else {
        for (ev, regarding) in events {
            publish_one(&ctx.recorder, &ctx.metrics, &ev, &regarding).await;
        }
        return;
    };
    let mut dropped = 0_u64;
    for e in events {
        if queue.try_send(e).is_err() {
            dropped += 1;
        }
    }
    if dropped > 0 {
        ctx.metrics.events_dropped.inc_by(dropped);
        warn!(
            dropped,
            queued = QUEUED_EVENTS,
            "the API server is behind on Events: some were dropped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::events::EventType;

    fn event(name: &str) -> Outgoing {
        (
            Event {
                type_: EventType::Normal,
                reason: "Bound".into(),
                note: Some(format!("bound {name}")),
                action: "Bound".into(),
                secondary: None,
            },
            ObjectReference {
                api_version: Some("asgbatch.io/v1alpha1".into()),
                kind: Some("BatchJob".into()),
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectReference::default()
            },
        )
    }

    /// A pass hands its Events over without waiting for the API server; when the queue
    /// is full the rest are dropped and counted, and the queued ones are still published.
    #[tokio::test]
    async fn a_full_event_queue_drops_and_counts_instead_of_holding_the_pass() {
        let (server, client, ctx) = super::super::apply::tests::server_and_context().await;
        let (tx, mut rx) = mpsc::channel::<Outgoing>(2);
        ctx.events.set(tx).expect("a fresh context");
        publish(&ctx, (0..5).map(|i| event(&format!("j{i}"))).collect()).await;
        assert_eq!(ctx.metrics.events_dropped.get(), 3);
        // The publisher task takes up what was queued, and ends once its queue is closed
        // and every queued Event is published.
        let (queue, mut task) = start(ctx.recorder.clone(), ctx.metrics.clone());
        while let Ok(e) = rx.try_recv() {
            queue.send(e).await.expect("publisher running");
        }
        drop(queue);
        (&mut task.0).await.expect("the publisher task ends");
        assert_eq!(
            super::super::apply::tests::event_notes(&client).await,
            ["bound j0", "bound j1"]
        );
        server.shutdown().await;
    }
}
