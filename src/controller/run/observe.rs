//! Observing: the reflector stores (objects that do not deserialise are reported and
//! left out) and the fleets (described each pass; shapes looked up once).

use super::*;

/// A store of objects that may have failed to deserialise: one bad object never breaks
/// a watch; it is reported on itself and left out of the pass.
pub(super) type Guarded<K> = Store<Checked<K>>;

/// An object as a reflector store keeps it: the typed object behind its own `Arc`, so a
/// pass takes it without copying it (a copy of every job per pass doubled the
/// controller's memory), or why it did not deserialise (as [`DeserializeGuard`](kube::core::DeserializeGuard) reports
/// it: the error and the object's metadata).
#[derive(Debug, Clone)]
pub struct Checked<K>(pub(super) Result<Arc<K>, kube::core::error_boundary::InvalidObject>);

impl<K> Checked<K> {
    /// The typed object, or why it did not deserialise.
    pub fn object(&self) -> Result<&K, &kube::core::error_boundary::InvalidObject> {
        self.0.as_deref()
    }
}

impl<'de, K> serde::Deserialize<'de> for Checked<K>
where
    K: serde::de::DeserializeOwned + kube::Resource,
{
    /// Through [`raw_json`](crate::api::raw_json): `K` straight from the object's text;
    /// only when that fails is the text read again, for its metadata.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::api::raw_json::deserialize(d)
    }
}

impl<K> crate::api::raw_json::FromJson for Checked<K>
where
    K: serde::de::DeserializeOwned + kube::Resource,
{
    fn from_text(text: &str) -> Result<Self, serde_json::Error> {
        checked(serde_json::from_str::<K>(text), || {
            serde_json::from_str::<kube::core::PartialObjectMeta<K>>(text)
        })
    }
    fn from_value(value: &serde_json::Value) -> Result<Self, serde_json::Error> {
        checked(K::deserialize(value), || {
            <kube::core::PartialObjectMeta<K> as serde::Deserialize>::deserialize(value)
        })
    }
}

/// The decoded object, or its metadata (read by `meta`) and why it did not decode; an
/// error only when not even the metadata can be read.
fn checked<K>(
    decoded: Result<K, serde_json::Error>,
    meta: impl FnOnce() -> Result<kube::core::PartialObjectMeta<K>, serde_json::Error>,
) -> Result<Checked<K>, serde_json::Error> {
    match decoded {
        Ok(k) => Ok(Checked(Ok(Arc::new(k)))),
        Err(error) => Ok(Checked(Err(kube::core::error_boundary::InvalidObject {
            error: error.to_string(),
            metadata: meta()?.metadata,
        }))),
    }
}

impl<K: kube::Resource + Clone> kube::Resource for Checked<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &Self::DynamicType) -> std::borrow::Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &kube::api::ObjectMeta {
        self.0.as_ref().map_or_else(|e| &e.metadata, |k| k.meta())
    }
    fn meta_mut(&mut self) -> &mut kube::api::ObjectMeta {
        // Only the watch stream's `modify` writes, before the store shares the object: no
        // copy is made.
        match &mut self.0 {
            Ok(k) => Arc::make_mut(k).meta_mut(),
            Err(e) => &mut e.metadata,
        }
    }
}

/// What a kind keeps in the controller's store: fields the controller never reads are
/// dropped as they arrive.
pub(super) trait Trim {
    /// Drop what the controller does not read.
    fn trim(&mut self) {}
}

impl Trim for ComputeEnvironment {}
impl Trim for JobQueue {}
impl Trim for JobDefinition {}
impl Trim for BatchNode {}
impl Trim for BatchJob {
    /// The agents' log tails (up to a few KiB per attempt) are for users; the controller
    /// never reads them (its own attempt entries carry none). The lists are cut to their
    /// length: decoded from JSON text they grow by doubling (an attempt's list of one
    /// holds room for four: 10,000 finished jobs held 10–17 MiB more than decoded from
    /// a value tree, whose lists come with their length).
    fn trim(&mut self) {
        if let Some(st) = self.status.as_mut() {
            for a in &mut st.attempts {
                a.log_tail = None;
            }
            st.attempts.shrink_to_fit();
            st.conditions.shrink_to_fit();
        }
        self.spec.depends_on.shrink_to_fit();
    }
}

/// The reflector stores of the five kinds.
#[derive(Clone)]
pub(super) struct Stores {
    pub(super) compute_environments: Guarded<ComputeEnvironment>,
    pub(super) queues: Guarded<JobQueue>,
    pub(super) definitions: Guarded<JobDefinition>,
    pub(super) jobs: Arc<JobStore>,
    pub(super) nodes: Guarded<BatchNode>,
}

/// An object that failed to deserialise, and why.
pub(super) struct Invalid {
    reference: ObjectReference,
    error: String,
}

/// The objects of `store` that deserialised; the others go to `invalid`.
pub(super) fn valid<K>(store: &Guarded<K>, invalid: &mut Vec<Invalid>) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    let mut out = Vec::new();
    for g in store.state() {
        match &g.0 {
            Ok(k) => out.push(k.clone()),
            Err(e) => invalid.push(Invalid::of::<K>(e)),
        }
    }
    out
}

impl Invalid {
    /// An object of kind `K` that failed to deserialise.
    fn of<K: kube::Resource<DynamicType = ()>>(
        e: &kube::core::error_boundary::InvalidObject,
    ) -> Self {
        Invalid {
            reference: ObjectReference {
                api_version: Some(K::api_version(&()).into_owned()),
                kind: Some(K::kind(&()).into_owned()),
                name: e.metadata.name.clone(),
                namespace: e.metadata.namespace.clone(),
                uid: e.metadata.uid.clone(),
                resource_version: e.metadata.resource_version.clone(),
                ..ObjectReference::default()
            },
            error: e.error.clone(),
        }
    }
}

/// The controller's BatchJobs, fed by their watch: a [`JobIndex`] (the jobs a pass
/// looks at, and the parked ones its memory carries: a pass does not walk those;
/// issue 13, "Backlog") and the objects that do not deserialise.
pub(super) struct JobStore {
    state: std::sync::Mutex<JobsState>,
    ready: watch::Sender<bool>,
}

#[derive(Default)]
struct JobsState {
    index: JobIndex,
    /// By `namespace/name`.
    invalid: BTreeMap<String, kube::core::error_boundary::InvalidObject>,
    /// Objects listed since the watch (re)started, until the list is complete.
    relist: Option<Vec<Checked<BatchJob>>>,
}

/// An object's key: `namespace/name`.
fn key_of(o: &Checked<BatchJob>) -> String {
    let m = kube::Resource::meta(o);
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

impl JobsState {
    fn put(&mut self, o: Checked<BatchJob>) {
        let key = key_of(&o);
        match o.0 {
            Ok(job) => {
                self.invalid.remove(&key);
                self.index.upsert(key, job);
            }
            Err(e) => {
                self.index.remove(&key);
                self.invalid.insert(key, e);
            }
        }
    }
}

impl JobStore {
    fn new() -> Self {
        Self {
            state: std::sync::Mutex::default(),
            ready: watch::Sender::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JobsState> {
        // A panic while holding it leaves whole entries (each change is one call).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes in one watch event.
    fn apply(&self, event: watcher::Event<Checked<BatchJob>>) {
        let mut st = self.state();
        match event {
            watcher::Event::Apply(o) => st.put(o),
            watcher::Event::Delete(o) => {
                let key = key_of(&o);
                st.index.remove(&key);
                st.invalid.remove(&key);
            }
            watcher::Event::Init => st.relist = Some(Vec::new()),
            watcher::Event::InitApply(o) => st.relist.get_or_insert_with(Vec::new).push(o),
            watcher::Event::InitDone => {
                let listed = st.relist.take().unwrap_or_default();
                let mut valid = Vec::with_capacity(listed.len());
                st.invalid.clear();
                for o in listed {
                    let key = key_of(&o);
                    match o.0 {
                        Ok(job) => valid.push((key, job)),
                        Err(e) => {
                            st.invalid.insert(key, e);
                        }
                    }
                }
                st.index.replace_all(valid);
                drop(st);
                self.ready.send_replace(true);
            }
        }
    }

    /// Waits for the first complete list.
    pub(super) async fn wait_until_ready(&self) -> Result<(), watch::error::RecvError> {
        self.ready.subscribe().wait_for(|r| *r).await.map(|_| ())
    }

    /// The objects that do not deserialise, into `invalid`.
    pub(super) fn invalid(&self, invalid: &mut Vec<Invalid>) {
        invalid.extend(self.state().invalid.values().map(Invalid::of::<BatchJob>));
    }

    /// The jobs a pass looks at, and the carried ones released since the last pass.
    pub(super) fn for_pass(&self) -> (Vec<Arc<BatchJob>>, Vec<Arc<BatchJob>>) {
        let st = self.state();
        (st.index.active(), st.index.released())
    }

    /// After a pass that was handed `released` released jobs.
    pub(super) fn after_pass(&self, released: usize, changes: &CarryChanges) {
        self.state().index.after_pass(released, changes);
    }
}

/// Watches the BatchJobs into a [`JobStore`]; the stream yields `()` per event.
pub(super) fn watch_jobs(
    client: &kube::Client,
) -> (
    Arc<JobStore>,
    BoxStream<'static, Result<(), watcher::Error>>,
) {
    let store = Arc::new(JobStore::new());
    let fed = store.clone();
    let stream = trimmed::<BatchJob>(client)
        .default_backoff()
        .map_ok(move |event| fed.apply(event))
        .boxed();
    (store, stream)
}

/// Logs and reports (a Warning Event, once per resourceVersion) objects that failed
/// to deserialise.
pub(super) async fn report_invalid(ctx: &Context, invalid: Vec<Invalid>) {
    for i in invalid {
        let key = format!(
            "{}/{}",
            i.reference.uid.as_deref().unwrap_or_default(),
            i.reference.resource_version.as_deref().unwrap_or_default()
        );
        if !ctx.reported_invalid.lock().await.insert(key) {
            continue;
        }
        warn!(
            kind = i.reference.kind.as_deref().unwrap_or_default(),
            name = i.reference.name.as_deref().unwrap_or_default(),
            namespace = i.reference.namespace.as_deref().unwrap_or_default(),
            error = i.error,
            "object does not deserialise; left out"
        );
        let ev = Event {
            type_: EventType::Warning,
            reason: reasons::INVALID_OBJECT.into(),
            note: Some(truncate(
                &format!("ignored by the controller: {}", i.error),
                1000,
            )),
            action: reasons::INVALID_OBJECT.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &i.reference).await {
            debug!(error = %err, "publishing an Event failed");
        }
    }
}

impl Stores {
    pub(super) async fn ready(&self) -> Result<(), ControllerError> {
        let e = |k| move |_| ControllerError::StoreNotReady(k);
        self.compute_environments
            .wait_until_ready()
            .await
            .map_err(e("ComputeEnvironment"))?;
        self.queues
            .wait_until_ready()
            .await
            .map_err(e("JobQueue"))?;
        self.definitions
            .wait_until_ready()
            .await
            .map_err(e("JobDefinition"))?;
        self.jobs
            .wait_until_ready()
            .await
            .map_err(|_| ControllerError::StoreNotReady("BatchJob"))?;
        self.nodes
            .wait_until_ready()
            .await
            .map_err(e("BatchNode"))?;
        Ok(())
    }
}

/// The annotation in which client-side `kubectl apply` keeps the applied manifest.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A kind the controller watches.
pub(super) trait Watched:
    kube::Resource<DynamicType = (), Scope: Send + Sync>
    + Trim
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = (), Scope: Send + Sync>
        + Trim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Watches one kind into a store; the stream yields `()` per change.
pub(super) fn watch<K: Watched>(
    client: &kube::Client,
) -> (Guarded<K>, BoxStream<'static, Result<(), watcher::Error>>) {
    let (store, writer) = reflector::store::<Checked<K>>();
    let stream = reflector::reflector(writer, trimmed::<K>(client))
        .default_backoff()
        .touched_objects()
        .map_ok(|_| ())
        .boxed();
    (store, stream)
}

/// The watch events of one kind, with what the controller never reads dropped.
fn trimmed<K: Watched>(
    client: &kube::Client,
) -> impl futures::Stream<Item = Result<watcher::Event<Checked<K>>, watcher::Error>> + Send + 'static
{
    let api: Api<Checked<K>> = Api::all(client.clone());
    // managedFields are never read by the controller: not kept (a large part of every
    // stored object, one entry per field manager); nor what `Trim` drops. The
    // controller's writes are server-side applies of its own fields and merge patches,
    // so what its copies lack is never written back.
    watcher(api, watcher::Config::default()).modify(|o| {
        let meta = kube::Resource::meta_mut(o);
        meta.managed_fields = None;
        // `kubectl apply`'s copy of the whole manifest: never read here either.
        if let Some(a) = meta.annotations.as_mut() {
            a.remove(LAST_APPLIED);
        }
        if let Ok(k) = &mut o.0 {
            Arc::make_mut(k).trim();
        }
    })
}

pub(super) async fn with_timeout<T>(
    ctx: &Context,
    operation: &'static str,
    f: impl Future<Output = Result<T, CloudError>>,
) -> Result<T, CloudError> {
    let limit = ctx.config.fleet_call_limit();
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(CloudError::Transport {
            operation,
            message: format!("no answer within {limit:?}"),
        }),
    }
}

/// Observe the fleets: describe every `aws` environment's group at once (so one slow
/// group does not hold up the others, and the whole step stays within one fleet
/// timeout, itself below the lease duration), look up shapes.
pub(super) async fn observe_fleets(
    ctx: &Context,
    ces: &[Arc<ComputeEnvironment>],
    observed: &mut Observed,
) -> BTreeMap<String, Arc<dyn Fleet>> {
    let mut handles = BTreeMap::new();
    for ce in ces {
        let Some(name) = ce.metadata.name.as_deref() else {
            continue;
        };
        if let Some(fleet) = ctx.fleets.fleet(ce).await {
            handles.insert(name.to_owned(), (fleet, ce.spec.instance_shape.is_none()));
        }
    }
    let described = futures::future::join_all(handles.iter().map(
        |(name, (fleet, needs_shape))| async move {
            let state = with_timeout(ctx, "DescribeAutoScalingGroups", fleet.describe()).await;
            ctx.metrics.fleet_call(
                name,
                "describe",
                state.as_ref().map_or_else(CloudError::label, |_| "ok"),
            );
            let shape = match (&state, needs_shape) {
                (Ok(s), true) => Some(match s.instance_type.as_deref() {
                    Some(t) => shape(ctx, fleet.as_ref(), t)
                        .await
                        .map_err(|e| FleetProblem::from_cloud(&e)),
                    None => Err(FleetProblem::other(
                        "the Auto Scaling Group reports no instance type: set spec.instanceShape",
                    )),
                }),
                _ => None,
            };
            (name.clone(), state, shape)
        },
    ))
    .await;
    for (name, state, shape) in described {
        match state {
            Ok(state) => {
                match shape {
                    Some(Ok(r)) => {
                        observed.shapes.insert(name.clone(), r);
                    }
                    Some(Err(e)) => {
                        observed.fleet_errors.insert(name.clone(), e);
                    }
                    None => {}
                }
                if ctx.describe_errors.lock().await.remove(&name).is_some() {
                    info!(compute_environment = name, "describe fleet works again");
                }
                observed.fleets.insert(name, state);
            }
            Err(e) => {
                // Logged at warn when it starts or changes, not on every pass.
                let message = e.to_string();
                let mut last = ctx.describe_errors.lock().await;
                if last.get(&name) != Some(&message) {
                    warn!(compute_environment = name, error = %e, "describe fleet failed");
                    last.insert(name.clone(), message.clone());
                } else {
                    debug!(compute_environment = name, error = %e, "describe fleet still failing");
                }
                observed
                    .fleet_errors
                    .insert(name, FleetProblem::from_cloud(&e));
            }
        }
    }
    handles.into_iter().map(|(k, (f, _))| (k, f)).collect()
}

pub(super) async fn shape(
    ctx: &Context,
    fleet: &dyn Fleet,
    instance_type: &str,
) -> Result<Resources, CloudError> {
    if let Some(r) = ctx.shapes.lock().await.get(instance_type) {
        return Ok(*r);
    }
    let info = with_timeout(
        ctx,
        "DescribeInstanceTypes",
        fleet.instance_type_info(instance_type),
    )
    .await?;
    let r = Resources::new(info.cpu_millis, info.memory_bytes, info.gpus);
    ctx.shapes.lock().await.insert(instance_type.to_owned(), r);
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use kube::core::WatchEvent;

    const JOB: &str = r#"{"apiVersion":"asgbatch.io/v1alpha1","kind":"BatchJob",
        "metadata":{"name":"fine","namespace":"default","uid":"u1","resourceVersion":"7"},
        "spec":{"queue":"q","process":{"command":["true"]},"resources":{"cpu":"1","memory":"1Gi"}},
        "status":{"phase":"Runnable"}}"#;
    const GARBLED: &str = r#"{"apiVersion":"asgbatch.io/v1alpha1","kind":"BatchJob",
        "metadata":{"name":"garbled","namespace":"default","uid":"u2","resourceVersion":"8"},
        "spec":{"queue":5,"resources":"lots"}}"#;

    fn event(object: &str) -> Checked<BatchJob> {
        let line = format!(r#"{{"type":"MODIFIED","object":{object}}}"#);
        match serde_json::from_str::<WatchEvent<Checked<BatchJob>>>(&line).expect("decodes") {
            WatchEvent::Modified(c) => c,
            other => panic!("not a modification: {other:?}"),
        }
    }

    #[test]
    fn a_watch_event_decodes_into_the_typed_object() {
        let c = event(JOB);
        let job = c.0.as_ref().expect("a valid job");
        assert_eq!(job.spec.queue, "q");
        assert_eq!(
            job.status.as_ref().and_then(|s| s.phase),
            Some(crate::api::batch_job::JobPhase::Runnable)
        );
        assert_eq!(
            kube::Resource::meta(&c).resource_version.as_deref(),
            Some("7")
        );
    }

    #[test]
    fn a_kept_job_holds_no_room_beyond_its_lists_and_no_log_tail() {
        let finished = r#"{"apiVersion":"asgbatch.io/v1alpha1","kind":"BatchJob",
            "metadata":{"name":"done","namespace":"default","uid":"u3","resourceVersion":"9"},
            "spec":{"queue":"q","process":{"command":["true"]},"dependsOn":[{"jobName":"a"}]},
            "status":{"phase":"Succeeded","attempts":[{"attempt":1,"exitCode":0,"logTail":"ok"}],
                "conditions":[{"type":"Scheduled","status":"True","reason":"Bound",
                    "message":"","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
        // As decoded (a clone would size its lists to their length).
        let decoded = event(finished).0.expect("a valid job");
        let mut job = Arc::try_unwrap(decoded).expect("the only reference");
        job.trim();
        let st = job.status.as_ref().expect("status");
        assert_eq!(st.attempts[0].log_tail, None);
        assert_eq!(
            (st.attempts.capacity(), st.conditions.capacity()),
            (st.attempts.len(), st.conditions.len())
        );
        assert_eq!(job.spec.depends_on.capacity(), job.spec.depends_on.len());
    }

    #[test]
    fn an_object_that_does_not_deserialise_keeps_its_metadata_and_says_why() {
        let c = event(GARBLED);
        let e = c.0.as_ref().expect_err("garbled");
        assert_eq!(e.metadata.name.as_deref(), Some("garbled"));
        assert_eq!(e.metadata.uid.as_deref(), Some("u2"));
        assert!(e.error.contains("invalid type"), "{}", e.error);
        // What the pass reports about it: the object and the error.
        let store = {
            let (store, mut writer) = reflector::store::<Checked<BatchJob>>();
            writer.apply_watcher_event(&watcher::Event::Apply(c.clone()));
            writer.apply_watcher_event(&watcher::Event::Apply(event(JOB)));
            store
        };
        let mut invalid = Vec::new();
        let valid = valid(&store, &mut invalid);
        assert_eq!(valid.len(), 1);
        assert_eq!(invalid.len(), 1);
        assert_eq!(invalid[0].reference.name.as_deref(), Some("garbled"));
        assert_eq!(invalid[0].error, e.error);
    }

    #[test]
    fn the_job_store_follows_its_watch_and_keeps_objects_that_do_not_deserialise_apart() {
        let store = JobStore::new();
        let invalid = |store: &JobStore| {
            let mut out = Vec::new();
            store.invalid(&mut out);
            out.into_iter()
                .filter_map(|i| i.reference.name)
                .collect::<Vec<_>>()
        };
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitApply(event(JOB)));
        store.apply(watcher::Event::InitApply(event(GARBLED)));
        // Nothing is served before the list is complete.
        assert!(!*store.ready.borrow());
        assert!(store.for_pass().0.is_empty());
        store.apply(watcher::Event::InitDone);
        assert!(*store.ready.borrow());
        let (jobs, released) = store.for_pass();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].metadata.name.as_deref(), Some("fine"));
        assert!(released.is_empty());
        assert_eq!(invalid(&store), ["garbled"]);
        // A job that stops deserialising leaves the jobs and is reported.
        let broken = JOB.replace(r#""queue":"q""#, r#""queue":7"#);
        store.apply(watcher::Event::Apply(event(&broken)));
        assert!(store.for_pass().0.is_empty());
        assert_eq!(invalid(&store), ["fine", "garbled"]);
        // Fixed again, then deleted.
        store.apply(watcher::Event::Apply(event(JOB)));
        assert_eq!(store.for_pass().0.len(), 1);
        assert_eq!(invalid(&store), ["garbled"]);
        store.apply(watcher::Event::Delete(event(JOB)));
        assert!(store.for_pass().0.is_empty());
        // A re-list without the garbled object forgets it.
        store.apply(watcher::Event::Init);
        store.apply(watcher::Event::InitDone);
        assert!(invalid(&store).is_empty());
    }

    #[test]
    fn a_list_decodes_each_item_on_its_own() {
        let list = format!(
            r#"{{"apiVersion":"v1","kind":"List","metadata":{{"resourceVersion":"9"}},"items":[{JOB},{GARBLED}]}}"#
        );
        let l: kube::core::ObjectList<Checked<BatchJob>> =
            serde_json::from_str(&list).expect("a list with one bad item still decodes");
        let ok: Vec<bool> = l.items.iter().map(|c| c.0.is_ok()).collect();
        assert_eq!(ok, [true, false]);
    }

    #[test]
    fn an_event_listing_its_object_before_its_type_decodes_the_same() {
        for object in [JOB, GARBLED] {
            let line = format!(r#"{{"object":{object},"type":"MODIFIED"}}"#);
            let late = match serde_json::from_str::<WatchEvent<Checked<BatchJob>>>(&line)
                .expect("decodes")
            {
                WatchEvent::Modified(c) => c,
                other => panic!("not a modification: {other:?}"),
            };
            let early = event(object);
            let json = |c: &Checked<BatchJob>| {
                serde_json::to_value(c.object().map_err(|e| (&e.error, &e.metadata)).ok())
                    .expect("serialises")
            };
            assert_eq!(json(&late), json(&early));
            assert_eq!(late.0.is_ok(), early.0.is_ok());
            assert_eq!(kube::Resource::meta(&late), kube::Resource::meta(&early));
        }
    }

    #[test]
    fn text_that_is_no_object_is_an_error() {
        let r = serde_json::from_str::<WatchEvent<Checked<BatchJob>>>(
            r#"{"type":"MODIFIED","object":[1,2]}"#,
        );
        assert!(r.is_err());
    }
}
