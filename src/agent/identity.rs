//! Who this instance is: from flags, or from the EC2 instance metadata service (IMDSv2:
//! a session token from `PUT /latest/api/token`, then `GET /latest/meta-data/...`).

use std::time::Duration;

/// The instance metadata service's address on EC2.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// The identity of the instance an agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Instance id (`i-...`).
    pub instance_id: String,
    /// Instance type (`c5.xlarge`), when known.
    pub instance_type: Option<String>,
}

/// The metadata service could not tell who we are.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The endpoint URL is not usable.
    #[error("instance metadata endpoint {endpoint:?} is invalid: {message}")]
    BadEndpoint {
        /// The endpoint given.
        endpoint: String,
        /// Why it is invalid.
        message: String,
    },
    /// The service did not answer (not on EC2, IMDS disabled, hop limit too low, ...).
    #[error(
        "cannot read {path} from the instance metadata service at {endpoint} ({message}); \
         not on EC2? pass --instance-id (and --instance-type) instead"
    )]
    Unreachable {
        /// The endpoint asked.
        endpoint: String,
        /// The metadata path.
        path: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The service answered with an empty value.
    #[error("the instance metadata service at {endpoint} returned an empty {path}")]
    Empty {
        /// The endpoint asked.
        endpoint: String,
        /// The metadata path.
        path: &'static str,
    },
}

/// How to reach the metadata service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsOptions {
    /// Base URL, [`IMDS_ENDPOINT`] on EC2.
    pub endpoint: String,
    /// Timeout of one whole lookup (token plus value), short so a misconfigured agent fails fast.
    pub timeout: Duration,
}

impl Default for ImdsOptions {
    fn default() -> Self {
        Self {
            endpoint: IMDS_ENDPOINT.to_string(),
            timeout: Duration::from_secs(3),
        }
    }
}

const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const INSTANCE_TYPE: &str = "/latest/meta-data/instance-type";

/// An IMDSv2 client (token flow, retries, timeouts) for `options`.
pub fn imds_client(options: &ImdsOptions) -> Result<aws_config::imds::Client, IdentityError> {
    let builder = aws_config::imds::Client::builder()
        .endpoint(&options.endpoint)
        .map_err(|e| IdentityError::BadEndpoint {
            endpoint: options.endpoint.clone(),
            message: e.to_string(),
        })?;
    let http = aws_config::provider_config::ProviderConfig::without_region()
        .with_http_client(crate::cloud::aws::https_client());
    Ok(builder
        .configure(&http)
        .max_attempts(2)
        .connect_timeout(options.timeout.min(Duration::from_secs(1)))
        .read_timeout(options.timeout)
        .operation_timeout(options.timeout)
        .build())
}

/// Reads the instance id and type from IMDSv2.
#[tracing::instrument(skip_all, fields(endpoint = %options.endpoint))]
pub async fn from_imds(options: &ImdsOptions) -> Result<Identity, IdentityError> {
    let client = imds_client(options)?;
    let get = async |path: &'static str| -> Result<String, IdentityError> {
        let value = client
            .get(path)
            .await
            .map_err(|e| IdentityError::Unreachable {
                endpoint: options.endpoint.clone(),
                path,
                message: error_chain(&e),
            })?;
        let value = value.as_ref().trim().to_string();
        if value.is_empty() {
            return Err(IdentityError::Empty {
                endpoint: options.endpoint.clone(),
                path,
            });
        }
        Ok(value)
    };
    let instance_id = get(INSTANCE_ID).await?;
    let instance_type = match get(INSTANCE_TYPE).await {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "instance type unknown");
            None
        }
    };
    tracing::info!(%instance_id, ?instance_type, "identity from instance metadata");
    Ok(Identity {
        instance_id,
        instance_type,
    })
}

/// An error and its sources, `: `-separated, without repeats.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The identity from flags when an instance id is given, from IMDSv2 otherwise.
pub async fn resolve(
    instance_id: Option<String>,
    instance_type: Option<String>,
    options: &ImdsOptions,
) -> Result<Identity, IdentityError> {
    match instance_id {
        Some(instance_id) => Ok(Identity {
            instance_id,
            instance_type,
        }),
        None => {
            let mut identity = from_imds(options).await?;
            if instance_type.is_some() {
                identity.instance_type = instance_type;
            }
            Ok(identity)
        }
    }
}
