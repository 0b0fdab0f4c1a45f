//! The agent's identity from flags or from IMDSv2, against a local metadata stub that
//! insists on the token flow (moto's own metadata endpoint serves a fixed `i-fake`, is
//! routed by host name and has no token endpoint, so a stub is the honest test).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed set-up is a failed test

use crate::support;

use asg_batch::agent::identity::{self, IdentityError, ImdsOptions};
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TOKEN: &str = "tok-123";

/// Serves IMDSv2: a token from PUT /latest/api/token, metadata only with that token.
async fn stub(calls: Arc<AtomicUsize>) -> String {
    let authorised = |headers: &HeaderMap| {
        headers
            .get("x-aws-ec2-metadata-token")
            .is_some_and(|v| v == TOKEN)
    };
    let token = put(|headers: HeaderMap| async move {
        if headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .is_none()
        {
            return (StatusCode::BAD_REQUEST, HeaderMap::new(), String::new());
        }
        let mut h = HeaderMap::new();
        h.insert(
            "x-aws-ec2-metadata-token-ttl-seconds",
            "21600".parse().expect("header"),
        );
        (StatusCode::OK, h, TOKEN.to_string())
    });
    let meta = |value: &'static str| {
        let calls = calls.clone();
        get(move |headers: HeaderMap| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if authorised(&headers) {
                (StatusCode::OK, value.to_string())
            } else {
                (StatusCode::UNAUTHORIZED, String::new())
            }
        })
    };
    let app = Router::new()
        .route("/latest/api/token", token)
        .route("/latest/meta-data/instance-id", meta("i-0123abcd"))
        .route("/latest/meta-data/instance-type", meta("c5.xlarge"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn reads_instance_id_and_type_with_an_imdsv2_token() {
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = stub(calls.clone()).await;
    let options = ImdsOptions {
        endpoint,
        timeout: Duration::from_secs(2),
    };
    let id = identity::from_imds(&options).await.expect("identity");
    assert_eq!(id.instance_id, "i-0123abcd");
    assert_eq!(id.instance_type.as_deref(), Some("c5.xlarge"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let from_flags = identity::resolve(Some("i-flag".into()), None, &options)
        .await
        .expect("flags");
    assert_eq!(from_flags.instance_id, "i-flag");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "flags skip the metadata service"
    );
    let mixed = identity::resolve(None, Some("m5.large".into()), &options)
        .await
        .expect("imds + flag");
    assert_eq!(
        (mixed.instance_id.as_str(), mixed.instance_type.as_deref()),
        ("i-0123abcd", Some("m5.large"))
    );
}

#[tokio::test]
async fn an_unreachable_metadata_service_is_a_clear_error() {
    let port = support::free_port();
    let options = ImdsOptions {
        endpoint: format!("http://127.0.0.1:{port}"),
        timeout: Duration::from_secs(1),
    };
    let err = identity::from_imds(&options)
        .await
        .expect_err("nobody listens");
    eprintln!("{err}");
    assert!(matches!(err, IdentityError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("--instance-id"), "{text}");
    assert!(text.contains(&port.to_string()), "{text}");
    let bad = ImdsOptions {
        endpoint: "not a url".into(),
        timeout: Duration::from_secs(1),
    };
    assert!(matches!(
        identity::from_imds(&bad).await,
        Err(IdentityError::BadEndpoint { .. })
    ));
}
