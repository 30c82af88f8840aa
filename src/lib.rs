//! bgd: a single-host blue-green process supervisor.
//!
//! `bgd` holds an app's listening sockets for its whole life and runs the app
//! from one of two directories, blue and green. `bgctl release DIR` stages a
//! build into the dormant color, starts it on the same sockets, waits until
//! it is ready, swaps which color is live and drains the old one.
//!
//! Code map (read top-down from `daemon/mod.rs`; ARCHITECTURE.md has the
//! state machine and the invariants). Only what the binaries and the fuzz
//! targets use is `pub`.
//!
//! - [`config`]       TOML file -> validated [`config::Config`], errors as file:line:col
//! - [`protocol`]     the versioned line-delimited JSON spoken over the control socket
//! - [`daemon`]       start-up order, the event loop, carrying out the core's effects
//! - `deploy`         the deployment core: (state, input) -> effects, no IO
//! - `prepare`        a task that brings a color up: stage, prepare hooks, start, wait until ready
//! - `process`        one running color: its process group, exit, output, graceful stop
//! - [`spawn`]        building a child: fds 3.., LISTEN_*, process group; the only `pre_exec`
//! - `reaper`         the only place that waits for children (bgd is a subreaper)
//! - [`history`]      the last 50 releases, in root/history.json
//! - [`logs`]         the apps' recent output for `bgctl logs`, and its live feed
//! - [`events`]       lifecycle events (release began, step, swapped, failed, ...) for `bgctl events`
//! - [`metrics`]      the Prometheus registry and the `[metrics] listen` endpoint
//! - `listen`         binding and holding the app's listening sockets
//! - `hooks`          `[hooks]` prepare and after_live commands
//! - `health`         readiness checks that reach the new color alone
//! - `notify`         the per-color NOTIFY_SOCKET for `health.notify`
//! - `stage`          keeping a build and copying it into a color directory atomically
//! - `releases`       kept releases: which stay, rollback targets, listing, taking over an old root
//! - `state`          what survives a restart: live color, builds, the `live` symlink
//! - [`systemd`]      socket activation, fd store, sd_notify messages
//! - `watch`          auto-release: notify events coalesced into settled-tree events
//! - `fingerprint`    a cheap summary of a build tree, to tell two builds apart
//! - `walk`           iterative walks of a tree that never follow a symlink out of it
//! - `runnable`       whether a config's programs resolve and may run (`--check`, reload)
//! - `control`        the control socket: peer check, decode, stream replies
//! - `identity`       the user and groups the app runs as
//! - `layout`         bgd's root directory: the path of everything bgd keeps there
//! - `unix_peers`     a Unix listener's queued and open connections, from /proc/net/unix
//! - `auto`           auto-release decisions (no IO): release the settled tree or not
//! - [`color`]        blue and green
//! - [`manpage`]      the binaries' man pages: clap's sections plus exit codes, files, ...

pub mod color;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod net;
pub mod ops;
pub mod pipeline;
pub mod store;
pub mod supervise;

/// What `bgd --version` and `bgctl --version` print after the name: the
/// package version and the commit it was built from (`build.rs` finds it;
/// `unknown` when built from a tarball without git or `BGD_COMMIT`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BGD_COMMIT"),
    ")"
);

use std::sync::Arc;
use std::time::SystemTime;

/// Where a subsystem (a control connection, a release task, the build
/// watcher) sends its messages of type `M`. The daemon wraps each into its
/// own event; the subsystem never names the daemon, so no module imports
/// the daemon. Returns `false` once the daemon has gone.
pub(crate) type Sink<M> = Arc<dyn Fn(M) -> bool + Send + Sync>;

/// What every part of a running daemon shares. Built once at start-up.
/// A reload builds a new one with the new config and the same sockets and
/// reaper; tasks already running keep the config they started with.
pub(crate) struct Ctx {
    pub(crate) config: config::Config,
    pub(crate) listeners: Arc<net::listen::Listeners>,
    pub(crate) reaper: Arc<supervise::reaper::Reaper>,
    pub(crate) logs: Arc<supervise::logs::LogHub>,
    /// How the processes of a color are found and signalled.
    pub(crate) contain: Arc<supervise::contain::Containment>,
}

/// `t` as RFC 3339 in UTC, to the second.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}
