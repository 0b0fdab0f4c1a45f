//! The embedded Kubernetes API server used by `asg-batch dev` and the tests.
pub mod schema;
