//! The operator's surface: what people and tools see of bgd.
//!
//! - `protocol` the versioned line-delimited JSON spoken over the control socket
//! - `control`  the control socket: peer check, decode, stream replies
//! - `events`   lifecycle events for `bgctl events`
//! - `metrics`  the Prometheus registry and the `[metrics] listen` endpoint
//! - `systemd`  socket activation, fd store, sd_notify messages
//! - `manpage`  the binaries' man pages

pub(crate) mod control;
pub mod events;
pub mod manpage;
pub mod metrics;
pub mod protocol;
pub mod systemd;
