//! Supervision: every process bgd starts, what contains it, and what
//! survives bgd's own death.
//!
//! - `process`  one running color: its processes, exit, output, graceful stop
//! - `spawn`    building a child: fds 3.., LISTEN_*, process group; the only `pre_exec`
//! - `reaper`   the only place that waits for children (bgd is a subreaper)
//! - `contain`  each color's cgroup (or the process-group fallback)
//! - `relay`    the relay process that keeps a color's output and sockets across bgd's death
//! - `hold`     the holder that keeps the sockets (and a pause's waiting connections) across bgd's death
//! - `adoption` run records, and taking over the colors a previous bgd left running
//! - `rescue`   relaying connections queued for a dead color to the live one
//! - `drain`    stopping a color that no longer gets connections
//! - `logs`     the apps' recent output for `bgctl logs`, and its live feed
//! - `notify`   the per-color NOTIFY_SOCKET a color's app is given (`health.notify`)

pub mod adoption;
pub(crate) mod contain;
pub(crate) mod drain;
pub mod hold;
pub mod logs;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod reaper;
pub mod relay;
pub(crate) mod rescue;
pub mod spawn;
