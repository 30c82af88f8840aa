//! The operator's surface: what people and tools see of bgd.
//!
//! - `protocol` the versioned line-delimited JSON spoken over the control socket
//! - `control`  the control socket: peer check, decode, stream replies
//! - `compare`  `bgctl compare`: the same requests to the live build and the one beside it
//! - `events`   lifecycle events for `bgctl events`
//! - `exit`     bgctl's exit codes, the one table
//! - `metrics`  the Prometheus registry and the `[metrics] listen` endpoint
//! - `systemd`  the sd_notify messages bgd sends as a service
//! - `manpage`  the binaries' man pages

pub(crate) mod compare;
pub(crate) mod control;
pub mod events;
pub mod exit;
pub mod manpage;
pub mod metrics;
pub mod protocol;
pub mod systemd;
