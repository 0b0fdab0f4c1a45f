//! Context (stub).
pub struct ControllerConfig;
pub trait FleetProvider {}
pub struct StaticFleets;
