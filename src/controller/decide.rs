//! PURE decisions (stub).
