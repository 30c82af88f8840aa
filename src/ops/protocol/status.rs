//! `bgctl status`: the whole deployment as one answer.

use serde::{Deserialize, Serialize};

use crate::color::Color;
pub use crate::deploy::auto::AutoRelease;
pub use crate::deploy::Shares;
use crate::deploy::Step;

/// Status of the whole deployment, as `bgctl status --json` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub name: String,
    pub pid: u32,
    /// Differs each time bgd's program starts, a reexec included (the pid
    /// stays): `bgctl reexec` waits for a new one.
    #[serde(default)]
    pub instance: u64,
    pub live: Option<Color>,
    pub release_in_progress: Option<ReleaseProgress>,
    pub blue: ColorStatus,
    pub green: ColorStatus,
    pub last_result: Option<String>,
    /// The app's sockets as bound (a configured port 0 shows the real port).
    pub listen: Vec<ListenStatus>,
    /// `gate` or `shared` (`traffic.mode`).
    #[serde(default)]
    pub mode: String,
    /// How bgd contains the colors' processes: `cgroup PATH`, or the
    /// process-group fallback and why.
    #[serde(default)]
    pub containment: String,
    /// Gate mode: the color new connections go to (`None` before any); the
    /// live color during a canary.
    #[serde(default)]
    pub receiving: Option<Color>,
    /// Each color's share of new connections, in percent.
    #[serde(default)]
    pub traffic: Shares,
    /// The networks in `traffic.testers`: their clients reach a new build
    /// during its preview and its canary.
    #[serde(default)]
    pub testers: u32,
    /// `client` or `connection` (`traffic.canary_by`): how a canary picks
    /// its share.
    #[serde(default)]
    pub canary_by: String,
    /// When the standby drains (RFC 3339, UTC), while one is kept.
    #[serde(default)]
    pub standby_until: Option<String>,
    /// When the live color's bake window ends, while it runs.
    #[serde(default)]
    pub bake_until: Option<String>,
    /// The canary, while one runs.
    #[serde(default)]
    pub canary: Option<CanaryStatus>,
    /// Auto-release, when `[watch]` is configured.
    pub watch: Option<WatchStatus>,
    /// The pause (`bgctl pause`), while one lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseStatus>,
    /// Where `/metrics` is served (`metrics.listen` as bound), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// What is wrong with the app's sockets that bgd cannot put right, read
    /// when status is asked: another process's socket in bgd's group, a
    /// socket an app shut down (issue 25). Empty when all is well.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socket_alerts: Vec<String>,
    /// bgd's own files (`state.json`, `history.json`, `operator.json`, run
    /// records) that it could not read or write whole, each with what bgd
    /// did about it: a sentence each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub own_files: Vec<String>,
}

/// A pause as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PauseStatus {
    /// When it began (RFC 3339, UTC).
    pub since: String,
    /// How long it has lasted, in seconds.
    pub seconds: u64,
    /// The color whose sockets hold the waiting connections; the next
    /// build starts there.
    pub color: Color,
    /// `stopping` (the app still drains), `waiting` (no app process
    /// runs), `releasing` (a build starts in `color`) or `page` (the
    /// maintenance page serves).
    pub stage: String,
    /// Connections waiting in `color`'s accept queues: `tcpi_unacked` of
    /// `TCP_INFO` on bgd's copies (Unix sockets: their queued peers).
    pub waiting: u64,
    /// The release live before it (what `bgctl resume` starts).
    pub before: Option<u64>,
    /// `--max`, in milliseconds, and when it is reached (RFC 3339).
    pub max_ms: Option<u64>,
    pub max_at: Option<String>,
    /// The maintenance page build, and its release once started.
    pub page: Option<String>,
    pub page_release: Option<u64>,
    /// `--max` passed with no page: the warning.
    pub warning: Option<String>,
    /// The last release during the pause that failed (the pause stayed).
    pub last_failure: Option<String>,
}

/// A canary (or a preview) as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryStatus {
    pub color: Color,
    pub release: u64,
    /// Its share of new connections, in percent (0 in a preview).
    pub percent: u8,
    /// A preview: only the testers reach it.
    #[serde(default)]
    pub preview: bool,
    /// With `traffic.steps`: the step it is at (from 1) of `steps`, and
    /// when the next begins (RFC 3339, UTC).
    pub step: Option<u32>,
    pub steps: Option<u32>,
    pub next_step_at: Option<String>,
    pub since: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WatchStatus {
    pub path: String,
    /// `inotify`, or `poll` after the inotify watch limit was hit.
    pub mode: String,
    /// `idle`, `settling` (changes seen, waiting for quiet), `releasing`
    /// (an auto-release runs or waits its turn) or `paused`.
    pub state: String,
    pub last_event: Option<String>,
    /// Changes seen and ignored (`watch.ignore`, or files other than the marker).
    pub ignored_events: u64,
    /// Why the current tree is not released, if it is held back.
    pub holding: Option<String>,
    pub last_release: Option<AutoRelease>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListenStatus {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseProgress {
    /// `release`, `rollback`, `promote` or `abort`.
    #[serde(default)]
    pub kind: String,
    pub id: u64,
    pub color: Color,
    pub step: Step,
    pub label: Option<String>,
    pub since: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ColorStatus {
    /// `live`, `starting`, `preview`, `canary`, `standby`, `draining`,
    /// `restarting`, `stopped` or `empty`.
    pub state: String,
    pub pid: Option<u32>,
    pub release: Option<u64>,
    pub label: Option<String>,
    pub source: Option<String>,
    /// The fingerprint bgd took of the build's source tree when it copied
    /// it (the one in `state.json` and the history): a tool can tell
    /// whether a build it released is the one live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When this color entered its state (RFC 3339, UTC).
    pub since: Option<String>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Why it is not serving, while that matters: for a restarting color,
    /// why its last restart failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Repeated health checks (`health.interval`) failed this many times in
    /// a row, and the last one's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_checks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_failure: Option<String>,
    /// Processes of the color running now (its cgroup, or its process
    /// group and environment).
    #[serde(default)]
    pub processes: u32,
    /// The color's `memory.current` in bytes, where the memory controller
    /// is enabled for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU time the color used, in microseconds (`cpu.stat` usage_usec),
    /// with a cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_usec: Option<u64>,
}
