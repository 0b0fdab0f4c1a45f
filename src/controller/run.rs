//! Run (stub).
pub async fn run() {}
