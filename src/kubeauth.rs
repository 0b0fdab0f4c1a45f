//! Authenticating to the Kubernetes API without a static secret.
//!
//! **EKS.** An EKS API server accepts a bearer token made from the caller's own AWS
//! credentials, the one `aws eks get-token` prints: `k8s-aws-v1.` followed by the
//! base64url (no padding) of a presigned STS `GetCallerIdentity` URL on the regional
//! endpoint, valid for `X-Amz-Expires=60` seconds of clock skew and 15 minutes in all, whose
//! signature covers the header `x-k8s-aws-id: <cluster name>` (so a token for one cluster
//! is useless on another). EKS sends that request to STS, learns the role and session from
//! the answer, and maps them through its access entries to a Kubernetes user: on an
//! instance profile the session name is the instance id, so every instance is its own
//! user. [`eks_token`] builds the token (SigV4 by the `aws-sigv4` crate, no hand-written
//! signing); `asg-batch eks-token` prints it as an `ExecCredential` for a kubeconfig's
//! `exec:` entry, and `asg-batch agent --eks-cluster-name` builds that entry itself.
//! kube-rs runs the command again when the announced `expirationTimestamp` is less than
//! 60 s away, so the token is replaced before its 15 minutes run out ([`expiration_for`]).
//!
//! **Other clusters.** A kubeconfig (`KUBECONFIG`), or a token file
//! (`--kube-token-file`, kube-rs's `tokenFile`), which kube-rs re-reads at least once a
//! minute, so a rotated token is picked up without a restart.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use base64::Engine as _;

/// Prefix of an EKS bearer token.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The header naming the cluster, covered by the signature.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// `X-Amz-Expires` of the presigned URL (what `aws eks get-token` uses; EKS adds its own
/// 15-minute limit counted from `X-Amz-Date`).
pub const PRESIGN_EXPIRES: Duration = Duration::from_secs(60);
/// How long EKS accepts a token after it was signed.
pub const TOKEN_VALIDITY: Duration = Duration::from_secs(15 * 60);
/// The lifetime announced in the `ExecCredential` (as `aws eks get-token`: one minute
/// short of [`TOKEN_VALIDITY`]).
pub const ANNOUNCED_LIFETIME: Duration = Duration::from_secs(14 * 60);
/// How long before the announced expiry a client fetches a new credential (kube-rs
/// re-runs an exec plugin when the expiry is less than 60 s away).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// `apiVersion` of the `ExecCredential` printed by `asg-batch eks-token`.
pub const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1beta1";

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeAuthError {
    /// No region was given and the default chain has none.
    #[error("no AWS region: pass --region (or set AWS_REGION)")]
    NoRegion,
    /// No credentials from the default chain.
    #[error("no AWS credentials (instance profile, environment, profile): {0}")]
    Credentials(String),
    /// The cluster name is empty or not a header value.
    #[error("--cluster-name {0:?}: not a valid cluster name")]
    ClusterName(String),
    /// Signing failed.
    #[error("signing the STS request: {0}")]
    Signing(String),
    /// A token that is not `k8s-aws-v1.` + base64url of a URL.
    #[error("not an EKS token: {0}")]
    NotAToken(String),
}

/// A bearer token for an EKS cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct EksToken {
    /// `k8s-aws-v1.…`
    pub token: String,
    /// When it was signed (`X-Amz-Date`).
    pub signed_at: SystemTime,
    /// The expiry to announce to clients ([`expiration_for`]).
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for EksToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EksToken")
            .field("token", &"** REDACTED **")
            .field("signed_at", &self.signed_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The regional STS endpoint of `region` (`aws eks get-token` uses the regional one; EKS
/// accepts only STS hosts).
pub fn sts_endpoint(region: &str) -> String {
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://sts.{region}.{domain}/")
}

/// The expiry to announce for a token signed at `signed_at`: [`ANNOUNCED_LIFETIME`] later,
/// so a client refreshing [`REFRESH_MARGIN`] before it never sends a token EKS refuses.
pub fn expiration_for(signed_at: SystemTime) -> SystemTime {
    signed_at + ANNOUNCED_LIFETIME
}

/// Whether a client holding a credential announced to expire at `expires_at` fetches a new
/// one at `now` (the rule kube-rs applies to exec credentials).
pub fn refresh_due(expires_at: SystemTime, now: SystemTime) -> bool {
    now + REFRESH_MARGIN >= expires_at
}

/// The presigned STS `GetCallerIdentity` URL for `cluster`, signed with `credentials` in
/// `region` at `now` (pure: same inputs, same URL).
pub fn presigned_url(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    now: SystemTime,
) -> Result<String, KubeAuthError> {
    use aws_sigv4::http_request::{
        SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
    };
    if cluster.is_empty() || http::HeaderValue::from_str(cluster).is_err() {
        return Err(KubeAuthError::ClusterName(cluster.to_owned()));
    }
    let url = format!(
        "{}?Action=GetCallerIdentity&Version=2011-06-15",
        sts_endpoint(region)
    );
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(PRESIGN_EXPIRES);
    let identity = credentials.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| KubeAuthError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "GET",
        &url,
        std::iter::once((CLUSTER_ID_HEADER, cluster)),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| KubeAuthError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|e| KubeAuthError::Signing(e.to_string()))?
        .into_parts();
    let mut request = http::Request::builder()
        .method("GET")
        .uri(&url)
        .body(())
        .map_err(|e| KubeAuthError::Signing(e.to_string()))?;
    instructions.apply_to_request_http1x(&mut request);
    // The signature last, as botocore (so `aws eks get-token`) writes it: the same token
    // for the same credentials and time, not only an equivalent one.
    let signed = request.uri().to_string();
    let (base, query) = signed.split_once('?').unwrap_or((signed.as_str(), ""));
    let (signature, mut rest): (Vec<&str>, Vec<&str>) = query
        .split('&')
        .partition(|kv| kv.starts_with("X-Amz-Signature="));
    rest.extend(signature);
    Ok(format!("{base}?{}", rest.join("&")))
}

/// The EKS bearer token for `cluster` (see the module documentation).
pub fn eks_token(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    now: SystemTime,
) -> Result<EksToken, KubeAuthError> {
    let url = presigned_url(credentials, region, cluster, now)?;
    Ok(EksToken {
        token: format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url)
        ),
        signed_at: now,
        expires_at: expiration_for(now),
    })
}

/// The presigned URL inside an EKS token (what EKS sends to STS).
pub fn decode_token(token: &str) -> Result<String, KubeAuthError> {
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or_else(|| KubeAuthError::NotAToken(format!("no {TOKEN_PREFIX} prefix")))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| KubeAuthError::NotAToken(format!("base64url: {e}")))?;
    String::from_utf8(bytes).map_err(|e| KubeAuthError::NotAToken(format!("UTF-8: {e}")))
}

/// The `ExecCredential` (client.authentication.k8s.io/v1beta1) a kubeconfig `exec:` plugin
/// prints for `token`.
pub fn exec_credential(token: &EksToken) -> serde_json::Value {
    let expires = jiff::Timestamp::try_from(token.expires_at)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    serde_json::json!({
        "kind": "ExecCredential",
        "apiVersion": EXEC_API_VERSION,
        "spec": {},
        "status": {
            "expirationTimestamp": expires,
            "token": token.token,
        },
    })
}

/// Flags of `asg-batch eks-token`.
#[derive(Debug, Clone, clap::Args)]
pub struct EksTokenArgs {
    /// The EKS cluster's name (signed into the token as `x-k8s-aws-id`).
    #[arg(long)]
    pub cluster_name: String,
    /// Region of the cluster (default: the AWS default chain's: `AWS_REGION`, the
    /// profile, the instance metadata).
    #[arg(long)]
    pub region: Option<String>,
}

/// Loads credentials and region from the AWS default chain (on an instance: its instance
/// profile) and makes a token for `args.cluster_name` now.
pub async fn eks_token_from_env(args: &EksTokenArgs) -> Result<EksToken, KubeAuthError> {
    use aws_credential_types::provider::ProvideCredentials as _;
    let mut loader = crate::cloud::aws::config_loader();
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let config = loader.load().await;
    let region = config
        .region()
        .map(|r| r.as_ref().to_owned())
        .ok_or(KubeAuthError::NoRegion)?;
    let provider = config
        .credentials_provider()
        .ok_or_else(|| KubeAuthError::Credentials("no credentials provider".into()))?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| KubeAuthError::Credentials(e.to_string()))?;
    eks_token(&credentials, &region, &args.cluster_name, SystemTime::now())
}

/// `asg-batch eks-token`: prints the `ExecCredential` JSON on stdout.
pub async fn eks_token_main(args: EksTokenArgs) -> Result<(), KubeAuthError> {
    let token = eks_token_from_env(&args).await?;
    println!("{}", exec_credential(&token));
    Ok(())
}

/// How `asg-batch agent` authenticates to the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAuth {
    /// `KUBECONFIG`, `~/.kube/config` or the in-cluster configuration.
    Default,
    /// An EKS token made from the instance's AWS credentials, refreshed by running
    /// `<this binary> eks-token` whenever the last one is about to expire.
    Eks {
        /// Cluster name.
        cluster_name: String,
        /// Its region (default: the AWS default chain's).
        region: Option<String>,
    },
    /// A bearer token read from a file, re-read at least once a minute.
    TokenFile(std::path::PathBuf),
}

/// The kubeconfig `asg-batch agent` uses for `server` (with the CA bundle at `ca_file` for
/// an `https` server), authenticating as `auth` says; `exe` is the `asg-batch` binary the
/// EKS plugin runs. The same document a user would write (`exec:` or `tokenFile:`), so
/// kube-rs loads and refreshes it as any other. `None` for [`KubeAuth::Default`].
pub fn kubeconfig(
    auth: &KubeAuth,
    server: &str,
    ca_file: Option<&std::path::Path>,
    exe: &std::path::Path,
) -> Result<Option<kube::config::Kubeconfig>, String> {
    let user = match auth {
        KubeAuth::Default => return Ok(None),
        KubeAuth::TokenFile(path) => serde_json::json!({ "tokenFile": path.display().to_string() }),
        KubeAuth::Eks {
            cluster_name,
            region,
        } => {
            let mut args = vec!["eks-token", "--cluster-name", cluster_name.as_str()];
            if let Some(r) = region {
                args.extend(["--region", r.as_str()]);
            }
            serde_json::json!({ "exec": {
                "apiVersion": EXEC_API_VERSION,
                "command": exe.display().to_string(),
                "args": args,
                "interactiveMode": "Never",
            }})
        }
    };
    let parsed: Result<http::Uri, _> = server.parse();
    match parsed {
        Ok(u) if u.scheme().is_some() && u.host().is_some() => {}
        Ok(_) => return Err(format!("--kube-server {server:?}: not an http(s) URL")),
        Err(e) => return Err(format!("--kube-server {server:?}: {e}")),
    }
    let mut cluster = serde_json::json!({ "server": server });
    if let Some(ca) = ca_file {
        if !ca.is_file() {
            return Err(format!("--kube-ca-file {}: no such file", ca.display()));
        }
        cluster["certificate-authority"] = ca.display().to_string().into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "cluster", "cluster": cluster }],
        "users": [{ "name": "agent", "user": user }],
        "contexts": [{ "name": "agent", "context": { "cluster": "cluster", "user": "agent" } }],
        "current-context": "agent",
    });
    serde_json::from_value(doc)
        .map(Some)
        .map_err(|e| format!("kubeconfig: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn creds(session: Option<&str>) -> Credentials {
        Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session.map(String::from),
            None,
            "test",
        )
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Query parameters of a URL, decoded.
    fn query(url: &str) -> Vec<(String, String)> {
        let q = url.split_once('?').expect("query").1;
        form_urlencoded_pairs(q)
    }

    fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
        q.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("k=v");
                (percent_decode(k), percent_decode(v))
            })
            .collect()
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex"));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn the_token_is_a_presigned_get_caller_identity_url_signing_the_cluster_header() {
        // 2026-11-30T09:00:00Z
        let now = at(1_796_029_200);
        let t = eks_token(&creds(Some("SESSION+/=")), "eu-west-1", "prod", now).expect("token");
        assert!(t.token.starts_with("k8s-aws-v1."), "{}", t.token);
        assert!(!t.token.contains('='), "no padding");
        assert!(
            !t.token.contains('+') && !t.token.contains('/'),
            "base64url"
        );
        let url = decode_token(&t.token).expect("decodes");
        assert!(
            url.starts_with("https://sts.eu-west-1.amazonaws.com/?"),
            "{url}"
        );
        let q = query(&url);
        let get = |k: &str| {
            q.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} missing in {url}"))
        };
        assert_eq!(get("Action"), "GetCallerIdentity");
        assert_eq!(get("Version"), "2011-06-15");
        assert_eq!(get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
        assert_eq!(
            get("X-Amz-Credential"),
            "AKIDEXAMPLE/20261130/eu-west-1/sts/aws4_request"
        );
        assert_eq!(get("X-Amz-Date"), "20261130T090000Z");
        assert_eq!(get("X-Amz-Expires"), "60");
        assert_eq!(get("X-Amz-SignedHeaders"), "host;x-k8s-aws-id");
        assert_eq!(get("X-Amz-Security-Token"), "SESSION+/=");
        let sig = get("X-Amz-Signature");
        assert_eq!(sig.len(), 64);
        assert!(sig.bytes().all(|c| c.is_ascii_hexdigit()));
        // The cluster is signed: another cluster, another signature; same inputs, same token.
        let other = eks_token(&creds(Some("SESSION+/=")), "eu-west-1", "staging", now).unwrap();
        assert_ne!(other.token, t.token);
        assert_eq!(
            eks_token(&creds(Some("SESSION+/=")), "eu-west-1", "prod", now).unwrap(),
            t
        );
        // Without a session token (an IAM user's keys) there is no token parameter.
        let plain = decode_token(
            &eks_token(&creds(None), "us-east-1", "c", now)
                .unwrap()
                .token,
        )
        .unwrap();
        assert!(!plain.contains("X-Amz-Security-Token"), "{plain}");
        assert!(plain.starts_with("https://sts.us-east-1.amazonaws.com/?"));
        assert!(sts_endpoint("cn-north-1").ends_with(".amazonaws.com.cn/"));
    }

    #[test]
    fn bad_cluster_names_and_tokens_are_refused() {
        for bad in ["", "a\nb"] {
            let e = eks_token(&creds(None), "us-east-1", bad, at(0)).expect_err(bad);
            assert!(e.to_string().contains("--cluster-name"), "{e}");
        }
        assert!(decode_token("Bearer x").is_err());
        assert!(decode_token("k8s-aws-v1.!!!").is_err());
    }

    #[test]
    fn the_exec_credential_announces_fourteen_minutes() {
        let t = eks_token(&creds(None), "us-east-1", "c", at(1_796_029_200)).unwrap();
        let v = exec_credential(&t);
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1beta1");
        assert_eq!(v["status"]["token"], t.token.as_str());
        assert_eq!(v["status"]["expirationTimestamp"], "2026-11-30T09:14:00Z");
    }

    #[test]
    fn the_token_is_refreshed_before_eks_stops_accepting_it() {
        let signed = at(1_000_000);
        let expires = expiration_for(signed);
        // Fresh: no refresh. A minute before the announced expiry: refresh.
        assert!(!refresh_due(expires, signed));
        assert!(!refresh_due(expires, signed + Duration::from_secs(12 * 60)));
        assert!(!refresh_due(
            expires,
            expires - REFRESH_MARGIN - Duration::from_secs(1)
        ));
        assert!(refresh_due(expires, expires - REFRESH_MARGIN));
        assert!(refresh_due(expires, expires + Duration::from_secs(3600)));
        // The refresh happens while EKS still accepts the old token, with room to spare.
        let refresh_at = expires - REFRESH_MARGIN;
        assert!(refresh_at + Duration::from_secs(60) < signed + TOKEN_VALIDITY);
        assert!(refresh_at > signed + Duration::from_secs(10 * 60));
    }

    #[test]
    fn kubeconfig_for_each_way_of_authenticating() {
        let exe = std::path::Path::new("/usr/local/bin/asg-batch");
        let server = "https://ABC.gr7.eu-west-1.eks.amazonaws.com";
        let c = kubeconfig(
            &KubeAuth::Eks {
                cluster_name: "prod".into(),
                region: Some("eu-west-1".into()),
            },
            server,
            None,
            exe,
        )
        .unwrap()
        .expect("a kubeconfig");
        let user = c.auth_infos[0].auth_info.clone().expect("user");
        let exec = user.exec.expect("exec");
        assert_eq!(exec.command.as_deref(), Some("/usr/local/bin/asg-batch"));
        assert_eq!(
            exec.args.unwrap(),
            [
                "eks-token",
                "--cluster-name",
                "prod",
                "--region",
                "eu-west-1"
            ]
        );
        assert_eq!(exec.api_version.as_deref(), Some(EXEC_API_VERSION));
        assert_eq!(c.current_context.as_deref(), Some("agent"));
        let cluster = c.clusters[0].cluster.clone().expect("cluster");
        assert_eq!(cluster.server.as_deref(), Some(server));
        let c = kubeconfig(
            &KubeAuth::TokenFile("/run/asg-batch/token".into()),
            "http://127.0.0.1:6443",
            None,
            exe,
        )
        .unwrap()
        .expect("a kubeconfig");
        let user = c.auth_infos[0].auth_info.clone().expect("user");
        assert_eq!(user.token_file.as_deref(), Some("/run/asg-batch/token"));
        assert!(
            kubeconfig(&KubeAuth::Default, "", None, exe)
                .unwrap()
                .is_none()
        );
        let file = KubeAuth::TokenFile("/t".into());
        let e = kubeconfig(&file, "not a url", None, exe).unwrap_err();
        assert!(e.contains("--kube-server"), "{e}");
        let e = kubeconfig(
            &file,
            "https://x",
            Some(std::path::Path::new("/nonexistent/ca.crt")),
            exe,
        )
        .unwrap_err();
        assert!(e.contains("--kube-ca-file /nonexistent/ca.crt"), "{e}");
    }
}
