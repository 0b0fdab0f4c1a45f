//! The node agent: runs the jobs bound to its instance. Built so far: the executors that
//! run one attempt as a container (Docker Engine API) or a process and report how it ended.

pub mod executor;
