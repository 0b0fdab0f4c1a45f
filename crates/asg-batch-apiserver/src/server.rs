//! HTTP front: routing of Kubernetes API paths, content negotiation, body limits,
//! request logging. One catch-all axum handler parses the path itself, because API
//! paths are resource-dependent (`/apis/{g}/{v}/namespaces/{ns}/{plural}/{name}/status`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tracing::Instrument;

use super::discovery;
use super::error::{ApiError, ApiResult};
use super::objects::{Core, DeleteOpts, FieldValidation, ListQuery, Outcome, WriteOpts};
use super::openapi;
use super::patch::PatchType;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::table;
use super::watch::{self, WatchParams};

/// Largest accepted request body (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared handler state.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The core.
    pub core: Arc<Core>,
    /// `host:port` the server listens on (for `/api`).
    pub addr: String,
    /// Bearer tokens, when configured ([`super::admission::Tokens`]).
    pub tokens: Option<Arc<super::admission::Tokens>>,
}

/// The router: everything goes to [`handle`].
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> Option<bool> {
        self.get(k).map(|v| v == "true" || v == "1" || v.is_empty())
    }
}

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes_response(code, Body::from(bytes), warnings)
}

fn bytes_response(code: u16, body: Body, warnings: &[String]) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for w in warnings {
        let v = format!("299 - {}", Value::String(w.clone()));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status(), &[])
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The catch-all handler: logs, dispatches, renders errors as Status.
pub async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The query tells a list from a watch (and a relist from its resourceVersion).
    let query = req.uri().query().unwrap_or_default().to_string();
    let span = tracing::info_span!("request", %method, %path);
    let resp = async {
        match dispatch(&state, req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }
    .instrument(span.clone())
    .await;
    let _e = span.enter();
    tracing::info!(
        status = resp.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        %query,
        "{method} {path}"
    );
    resp
}

async fn read_body(req: Request) -> ApiResult<Bytes> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > MAX_BODY {
            return Err(ApiError::too_large());
        }
    }
    axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| ApiError::too_large())
}

fn parse_object(ct: &str, body: &[u8], kind: &str) -> ApiResult<Value> {
    let mt = ct.split(';').next().unwrap_or("").trim();
    match mt {
        "application/vnd.kubernetes.protobuf" => super::protobuf::decode_object(body, kind),
        "" | "application/json" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}"))
        }),
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error converting YAML to JSON: {e}"))),
        other => Err(ApiError::unsupported_media_type(
            other,
            &[
                "application/json",
                "application/yaml",
                "application/vnd.kubernetes.protobuf",
            ],
        )),
    }
}

fn check_accept(accept: &str) -> ApiResult<()> {
    if accept.is_empty()
        || accept.contains("json")
        || accept.contains("*/*")
        || accept.contains("yaml")
    {
        Ok(())
    } else {
        Err(ApiError::not_acceptable())
    }
}

/// 422 on `CreateOptions`/`UpdateOptions`/`PatchOptions`/`ListOptions`
/// (`meta.k8s.io`), as kube-apiserver validates request options.
fn options_invalid(kind: &str, reason: &str, field: &str, message: String) -> ApiError {
    ApiError::invalid(
        "meta.k8s.io",
        kind,
        "",
        vec![super::error::Cause::new(reason, field, message)],
    )
}

fn write_opts(
    q: &Query,
    headers: &HeaderMap,
    is_apply: bool,
    options_kind: &str,
) -> ApiResult<WriteOpts> {
    let dry_run = match q.get("dryRun") {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(options_invalid(
                options_kind,
                "FieldValueNotSupported",
                "dryRun",
                format!("Unsupported value: [{other:?}]: supported values: \"All\""),
            ));
        }
    };
    let field_validation = match q.get("fieldValidation") {
        None | Some("") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Warn") => FieldValidation::Warn,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            )));
        }
    };
    let explicit = q.get("fieldManager").filter(|m| !m.is_empty());
    let manager = match explicit {
        Some(m) => m.to_string(),
        None => {
            let ua = header_str(headers, header::USER_AGENT);
            let prefix = ua.split('/').next().unwrap_or("").trim();
            if prefix.is_empty() {
                "unknown".to_string()
            } else {
                prefix.to_string()
            }
        }
    };
    if manager.len() > 128 {
        return Err(ApiError::bad_request(
            "fieldManager: Too long: may not be more than 128 bytes",
        ));
    }
    let force = q.flag("force").unwrap_or(false);
    if force && !is_apply {
        return Err(ApiError::bad_request(
            "force: Forbidden: may not be specified for non-apply patch",
        ));
    }
    Ok(WriteOpts {
        dry_run,
        manager,
        manager_explicit: explicit.is_some(),
        field_validation,
        force,
        user: None,
    })
}

fn list_query(q: &Query, info: &ResourceInfo) -> ApiResult<ListQuery> {
    // (Watches: a streaming list sends NotOlderThan without a resourceVersion.)
    if q.get("resourceVersionMatch").is_some_and(|m| !m.is_empty())
        && q.get("resourceVersion").unwrap_or("").is_empty()
        && !q.flag("watch").unwrap_or(false)
    {
        return Err(options_invalid(
            "ListOptions",
            "FieldValueForbidden",
            "resourceVersionMatch",
            "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                .into(),
        ));
    }
    Ok(ListQuery {
        labels: LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(
            q.get("fieldSelector").unwrap_or(""),
            &info.selectable_fields,
        )?,
        limit: match q.get("limit") {
            None | Some("") => None,
            Some(l) => Some(
                usize::try_from(
                    l.parse::<i64>()
                        .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
                        .max(0),
                )
                .unwrap_or(usize::MAX),
            ),
        },
        cont: q.get("continue").map(str::to_string),
        exact: match (q.get("resourceVersion"), q.get("resourceVersionMatch")) {
            (Some(rv), Some("Exact")) => {
                Some(rv.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {rv}"))
                })?)
            }
            _ => None,
        },
    })
}

fn watch_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn dispatch(state: &AppState, req: Request) -> ApiResult<Response> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query());
    let headers = req.headers().clone();
    let accept = header_str(&headers, header::ACCEPT).to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // OpenAPI v2 is not served (clients fall back to v3); say so before negotiating,
    // since clients ask for it in protobuf only.
    if segs.first() == Some(&"openapi") && segs.get(1) == Some(&"v2") {
        return Err(ApiError::path_not_found());
    }
    check_accept(&accept)?;
    let user = match &state.tokens {
        Some(t) => Some(
            t.authenticate(
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            )?,
        ),
        None => None,
    };
    let core = &state.core;
    let reg = core.registry();
    let get_only = |v: Value| -> ApiResult<Response> {
        if method == Method::GET || method == Method::HEAD {
            Ok(json_response(200, &v, &[]))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match segs.as_slice() {
        [] => {
            return get_only(
                json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v3", "/readyz", "/version"]}),
            );
        }
        ["version"] => return get_only(discovery::version()),
        ["healthz" | "livez" | "readyz"] => {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Ok(r);
        }
        ["api" | "apis"] => {
            let core_group = segs[0] == "api";
            if let Some(mt) = discovery::aggregated_media_type(&accept) {
                if method != Method::GET {
                    return Err(ApiError::method_not_allowed());
                }
                let body = discovery::aggregated(&reg, core_group, mt);
                let mut r = json_response(200, &body, &[]);
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(mt));
                return Ok(r);
            }
            return get_only(if core_group {
                discovery::core_versions(&state.addr)
            } else {
                discovery::group_list(&reg)
            });
        }
        ["openapi", "v3"] => return get_only(openapi::index(&reg, &core.crds())),
        ["openapi", "v3", "api", v] => {
            if reg.resources_of("", v).is_empty() {
                return Err(ApiError::path_not_found());
            }
            return get_only(openapi::group_version(&reg, "", v, &core.crds()));
        }
        ["openapi", "v3", "apis", g, v] => {
            if reg.resources_of(g, v).is_empty() {
                return Err(ApiError::path_not_found());
            }
            return get_only(openapi::document(&reg, g, v, &core.crds()));
        }
        ["apis", g] => {
            return match discovery::group(&reg, g) {
                Some(v) => get_only(v),
                None => Err(ApiError::path_not_found()),
            };
        }
        ["api", "v1", rest @ ..] => {
            return resource_request(state, req, &q, &headers, &accept, user, "", "v1", rest).await;
        }
        ["apis", g, v, rest @ ..] => {
            let (g, v) = (g.to_string(), v.to_string());
            return resource_request(state, req, &q, &headers, &accept, user, &g, &v, rest).await;
        }
        _ => {}
    }
    Err(ApiError::path_not_found())
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    state: &AppState,
    req: Request,
    q: &Query,
    headers: &HeaderMap,
    accept: &str,
    user: Option<Arc<super::admission::UserInfo>>,
    group: &str,
    version: &str,
    rest: &[&str],
) -> ApiResult<Response> {
    let core = state.core.clone();
    let reg = core.registry();
    let method = req.method().clone();
    if rest.is_empty() {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed());
        }
        return discovery::resource_list(&reg, group, version)
            .map(|v| json_response(200, &v, &[]))
            .ok_or_else(ApiError::path_not_found);
    }
    let mut rest: Vec<&str> = rest.to_vec();
    let mut legacy_watch = false;
    if rest.first() == Some(&"watch") {
        legacy_watch = true;
        rest.remove(0);
    }
    let mut ns: Option<String> = None;
    if rest.len() >= 3 && rest[0] == "namespaces" {
        if let Some(i) = reg.get(group, version, rest[2]) {
            if i.namespaced {
                ns = Some(rest[1].to_string());
                rest.drain(..2);
            }
        }
    }
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, ""),
        [p, n] => (*p, Some(*n), ""),
        [p, n, s] => (*p, Some(*n), *s),
        _ => return Err(ApiError::path_not_found()),
    };
    let info = reg
        .get(group, version, plural)
        .ok_or_else(ApiError::path_not_found)?;
    if !info.namespaced && ns.is_some() {
        return Err(ApiError::path_not_found());
    }
    if !(sub.is_empty() || sub == "status" && info.status_subresource) {
        return Err(ApiError::path_not_found());
    }
    let is_watch = legacy_watch || q.flag("watch").unwrap_or(false);
    let wants_table = table::wants_table(accept);
    let wants_partial = !wants_table && table::wants_partial_metadata(accept);
    let include = q.get("includeObject").unwrap_or("Metadata").to_string();
    match (method.clone(), name) {
        (Method::GET, None) => {
            if info.namespaced && ns.is_none() && name.is_none() {
                // cluster-wide list of a namespaced resource: fine
            }
            let lq = list_query(q, &info)?;
            if is_watch {
                let p = WatchParams {
                    resource_version: q.get("resourceVersion").map(str::to_string),
                    send_initial_events: q.flag("sendInitialEvents"),
                    bookmarks: q.flag("allowWatchBookmarks").unwrap_or(false),
                    timeout: q.get("timeoutSeconds").and_then(|t| t.parse().ok()),
                    labels: lq.labels,
                    fields: lq.fields,
                    as_table: wants_table,
                    include_object: include,
                    as_partial: wants_partial,
                };
                let rx = watch::start(core.clone(), info.clone(), ns, p);
                return Ok(watch_response(rx));
            }
            let raw = !wants_table && !wants_partial;
            let (items, meta) = core.list(&info, ns.as_deref(), &lq, raw)?;
            if !raw {
                let items: Vec<Value> = items.into_iter().map(body_value).collect();
                if wants_table {
                    let refs: Vec<&Value> = items.iter().collect();
                    return Ok(json_response(
                        200,
                        &table::table(&info, &refs, meta, &include),
                        &[],
                    ));
                }
                let items: Vec<Value> = items.iter().map(table::partial_metadata).collect();
                let body = json!({
                    "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta, "items": items,
                });
                return Ok(json_response(200, &body, &[]));
            }
            // Custom resources are listed as unstructured lists, whose metadata always
            // has `continue` (empty on the last page).
            let mut meta = meta;
            if info.custom && meta.get("continue").is_none() {
                meta["continue"] = json!("");
            }
            Ok(bytes_response(
                200,
                Body::from(list_body(
                    &info.list_kind,
                    &info.api_version(),
                    &meta,
                    &items,
                )),
                &[],
            ))
        }
        (Method::GET, Some(n)) => {
            if is_watch {
                return Err(ApiError::method_not_allowed());
            }
            let obj = core.get(&info, ns.as_deref().unwrap_or(""), n)?;
            if wants_table {
                let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))});
                return Ok(json_response(
                    200,
                    &table::table(&info, &[&obj], meta, &include),
                    &[],
                ));
            }
            if wants_partial {
                return Ok(json_response(200, &table::partial_metadata(&obj), &[]));
            }
            Ok(json_response(200, &obj, &[]))
        }
        (Method::POST, None) => {
            if info.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let ct = header_str(headers, header::CONTENT_TYPE).to_string();
            let mut o = write_opts(q, headers, false, "CreateOptions")?;
            o.user = user.clone();
            let body = read_body(req).await?;
            let obj = parse_object(&ct, &body, &info.kind)?;
            let out = core.create(&info, ns.as_deref().unwrap_or(""), obj, &o)?;
            Ok(outcome(out))
        }
        (Method::PUT, Some(n)) => {
            let ct = header_str(headers, header::CONTENT_TYPE).to_string();
            let mut o = write_opts(q, headers, false, "UpdateOptions")?;
            o.user = user.clone();
            let body = read_body(req).await?;
            let obj = parse_object(&ct, &body, &info.kind)?;
            let out = core.update(&info, ns.as_deref().unwrap_or(""), n, sub, obj, &o)?;
            Ok(outcome(out))
        }
        (Method::PATCH, Some(n)) => {
            let ct = header_str(headers, header::CONTENT_TYPE).to_string();
            let pt = PatchType::from_content_type(&ct)
                .ok_or_else(|| ApiError::unsupported_media_type(&ct, PatchType::ACCEPTED))?;
            let mut o = write_opts(q, headers, pt == PatchType::Apply, "PatchOptions")?;
            o.user = user.clone();
            let body = read_body(req).await?;
            let out = core.patch(&info, ns.as_deref().unwrap_or(""), n, sub, pt, &body, &o)?;
            Ok(outcome(out))
        }
        (Method::DELETE, name) => {
            if !sub.is_empty() {
                return Err(ApiError::method_not_allowed());
            }
            let ct = header_str(headers, header::CONTENT_TYPE).to_string();
            let body = read_body(req).await?;
            let d = delete_opts(q, &ct, &body)?;
            match name {
                Some(n) => Ok(outcome(core.delete(
                    &info,
                    ns.as_deref().unwrap_or(""),
                    n,
                    &d,
                )?)),
                None => {
                    let lq = list_query(q, &info)?;
                    let v = core.delete_collection(&info, ns.as_deref(), &lq, &d)?;
                    Ok(json_response(200, &v, &[]))
                }
            }
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn outcome(o: Outcome) -> Response {
    match o.body {
        super::objects::Body::Json(v) => json_response(o.code, &v, &o.warnings),
        super::objects::Body::Stored(p) => {
            bytes_response(o.code, Body::from(p.into_bytes()), &o.warnings)
        }
    }
}

/// A stored or built object as a JSON value.
fn body_value(b: super::objects::Body) -> Value {
    match b {
        super::objects::Body::Json(v) => v,
        super::objects::Body::Stored(p) => (*p.unpack()).clone(),
    }
}

/// A list's JSON, its items written as they are (stored objects unparsed).
fn list_body(
    kind: &str,
    api_version: &str,
    meta: &Value,
    items: &[super::objects::Body],
) -> Vec<u8> {
    let size: usize = items
        .iter()
        .map(|i| match i {
            super::objects::Body::Stored(p) => p.len() + 1,
            super::objects::Body::Json(_) => 1024,
        })
        .sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(b"{\"kind\":");
    extend_json(&mut out, &Value::String(kind.to_string()));
    out.extend_from_slice(b",\"apiVersion\":");
    extend_json(&mut out, &Value::String(api_version.to_string()));
    out.extend_from_slice(b",\"metadata\":");
    extend_json(&mut out, meta);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match item {
            super::objects::Body::Stored(p) => out.extend_from_slice(p.bytes()),
            super::objects::Body::Json(v) => extend_json(&mut out, v),
        }
    }
    out.extend_from_slice(b"]}");
    out
}

fn extend_json(out: &mut Vec<u8>, v: &Value) {
    // Writing a `Value` into a Vec cannot fail (its keys are strings).
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn delete_opts(q: &Query, ct: &str, body: &[u8]) -> ApiResult<DeleteOpts> {
    let mut d = DeleteOpts {
        propagation: q.get("propagationPolicy").map(str::to_string),
        dry_run: q.get("dryRun") == Some("All"),
        ..DeleteOpts::default()
    };
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = if ct.starts_with("application/vnd.kubernetes.protobuf") {
            super::protobuf::decode_object(body, "DeleteOptions")?
        } else {
            serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
        };
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            d.propagation = Some(p.to_string());
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            d.propagation = Some("Orphan".into());
        }
        if let Some(u) = v.pointer("/preconditions/uid").and_then(Value::as_str) {
            d.uid = Some(u.to_string());
        }
        if let Some(r) = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            d.resource_version = Some(r.to_string());
        }
        if v.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"))
        {
            d.dry_run = true;
        }
    }
    if let Some(p) = &d.propagation {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::invalid(
                "",
                "DeleteOptions",
                "",
                vec![super::error::Cause::new(
                    "FieldValueNotSupported",
                    "propagationPolicy",
                    format!(
                        "Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                )],
            ));
        }
    }
    Ok(d)
}
