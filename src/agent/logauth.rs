//! Who may read an attempt's log from the agent, decided as the kubelet decides for a
//! pod's logs (its webhook authentication and authorization): the caller's bearer token
//! goes into a `TokenReview`, and the user it names into a `SubjectAccessReview` for verb
//! `get` on `batchjobs/log` (group `asgbatch.io`) of the job in its namespace. The agent's
//! own identity needs `create` on both (the chart's `asg-batch-node` ClusterRole).

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

/// The API group of the BatchJob resource.
pub const GROUP: &str = "asgbatch.io";
/// The resource and subresource a caller needs `get` on.
pub const RESOURCE: &str = "batchjobs";
/// The subresource a caller needs `get` on.
pub const SUBRESOURCE: &str = "log";

fn deny(code: StatusCode, text: String) -> Response {
    (code, format!("{text}\n")).into_response()
}

/// Checks the caller of a log request for job `job` in `namespace`: `Ok` when allowed,
/// else the answer to give (401 without a valid token, 403 without the permission, 503
/// when the API server cannot say).
#[tracing::instrument(skip(client, headers))]
pub async fn authorize(
    client: &kube::Client,
    headers: &HeaderMap,
    namespace: &str,
    job: &str,
) -> Result<(), Response> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            deny(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: a bearer token is needed".into(),
            )
        })?;
    let unavailable = |what: &str, e: kube::Error| {
        tracing::warn!(error = %e, "{what} failed");
        deny(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the node agent cannot check the caller ({what}): {e}"),
        )
    };
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: None,
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| unavailable("TokenReview", e))?;
    let status = reviewed.status.unwrap_or_default();
    let (Some(true), Some(user)) = (status.authenticated, status.user) else {
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            format!(
                "Unauthorized: the token is not valid{}",
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        ));
    };
    let username = user.username.clone().unwrap_or_default();
    let access = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username,
            groups: user.groups,
            uid: user.uid,
            extra: user.extra,
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.into()),
                resource: Some(RESOURCE.into()),
                subresource: Some(SUBRESOURCE.into()),
                verb: Some("get".into()),
                namespace: Some(namespace.into()),
                name: Some(job.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let decided = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &access)
        .await
        .map_err(|e| unavailable("SubjectAccessReview", e))?;
    let allowed = decided.status.as_ref().is_some_and(|s| s.allowed);
    if !allowed {
        tracing::info!(user = %username, "log request refused");
        return Err(deny(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: user \"{username}\" cannot get resource \"{RESOURCE}/{SUBRESOURCE}\" in API group \"{GROUP}\" in the namespace \"{namespace}\""
            ),
        ));
    }
    Ok(())
}
