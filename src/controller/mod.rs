//! The controller: maps the custom resources into a [`crate::scheduler::Snapshot`], runs
//! the scheduler, and applies its decisions (bindings, phases, retries, capacity,
//! scale-in). Who writes which field: `PROTOCOL.md` beside this file.
