//! The control protocol shared by `bgd` and `bgctl`.
//!
//! Line-delimited JSON over a Unix stream socket. The client sends one
//! [`Request`] line; bgd answers with zero or more [`Reply::Progress`] lines
//! and ends with exactly one [`Reply::Done`] or [`Reply::Error`], then closes.
//! Every line carries `"v": PROTOCOL_VERSION`; see `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::color::Color;
pub use crate::deploy::failure::{Failure, FailureKind, Step};

pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line bgd reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Stage `dir` (an absolute path) into the dormant color and make it live.
    Release {
        dir: String,
        label: Option<String>,
        /// Once ready, give the new color this share of new connections
        /// (1 to 99 percent) beside the live one, instead of all of them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        canary: Option<u8>,
        /// Answer once the bake window (and the canary steps) passed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        wait_bake: bool,
    },
    /// Make an earlier build live again: kept release `to` (an id or a
    /// label), else the standby (a switch), else the previous good release
    /// (staged from its kept copy).
    Rollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
    /// The kept releases and the space they use.
    Releases,
    /// Raise the canary's share to `percent`, or make it live (`None`).
    Promote {
        #[serde(default)]
        percent: Option<u8>,
    },
    /// Give the canary no more connections and drain it.
    Abort,
    /// Re-execute bgd's binary in place (an upgrade); the app keeps running.
    Reexec,
    Status,
    /// Pause or resume auto-release.
    Watch {
        pause: bool,
    },
    /// The last releases.
    History,
    /// The apps' recent output (`color` or both), then, with `follow`, new
    /// lines as they come until the client goes away.
    Logs {
        color: Option<Color>,
        lines: usize,
        follow: bool,
    },
    /// The lifecycle events kept (the last 256), then, with `follow`, new
    /// ones as they happen until the client goes away.
    Events {
        follow: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Reply {
    Progress {
        step: Step,
        message: String,
    },
    /// One line of an app's output (`bgctl logs`).
    Log(crate::supervise::logs::LogLine),
    /// One lifecycle event (`bgctl events`).
    Lifecycle(Event),
    Done {
        result: serde_json::Value,
    },
    Error(Failure),
}

impl Request {
    /// A request whose answer goes on until the client hangs up.
    pub fn follows(&self) -> bool {
        matches!(
            self,
            Request::Logs { follow: true, .. } | Request::Events { follow: true }
        )
    }
}

impl Reply {
    /// The line that ends an answer: bgd closes the connection after it.
    pub fn is_last(&self) -> bool {
        matches!(self, Reply::Done { .. } | Reply::Error(_))
    }
}

impl FailureKind {
    /// bgctl's exit code for this failure; documented in the README.
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::App => 1,
            FailureKind::Denied => 3,
            FailureKind::Busy => 4,
            FailureKind::BadRequest => 5,
            FailureKind::Stage | FailureKind::Changed => 6,
            FailureKind::Internal => 7,
            FailureKind::RolledBack => 8,
        }
    }
}

/// Decodes one request line, checking the version first so an old or new
/// client gets a clear answer rather than a field error.
pub fn decode_request(line: &[u8]) -> Result<Request, Failure> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| {
        Failure::new(
            FailureKind::BadRequest,
            None,
            format!("request is not valid JSON: {e}"),
        )
    })?;
    match value.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == PROTOCOL_VERSION as u64 => {}
        Some(v) => {
            return Err(Failure::new(
                FailureKind::BadRequest,
                None,
                format!("protocol version {v} is not supported; this bgd speaks version {PROTOCOL_VERSION}: use a bgctl of the same release"),
            ))
        }
        None => {
            return Err(Failure::new(
                FailureKind::BadRequest,
                None,
                format!("request has no protocol version: send {{\"v\":{PROTOCOL_VERSION},\"cmd\":...}}"),
            ))
        }
    }
    let mut obj = value;
    if let Some(map) = obj.as_object_mut() {
        map.remove("v");
    }
    serde_json::from_value(obj)
        .map_err(|e| Failure::new(FailureKind::BadRequest, None, format!("bad request: {e}")))
}

/// One line of JSON, newline included.
pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        body,
    })
    .expect("protocol types serialize infallibly: plain structs with string keys");
    line.push(b'\n');
    line
}

pub fn decode_reply(line: &[u8]) -> Result<Reply, String> {
    let env: Envelope<Reply> =
        serde_json::from_slice(line).map_err(|e| format!("bad reply from bgd: {e}"))?;
    if env.v != PROTOCOL_VERSION {
        return Err(format!(
            "bgd speaks protocol version {}, this bgctl version {PROTOCOL_VERSION}: use a bgctl of the same release",
            env.v
        ));
    }
    Ok(env.body)
}

/// Status of the whole deployment, as `bgctl status --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    /// Where `/metrics` is served (`metrics.listen` as bound), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Each color's share of new connections, in percent:
/// `{"blue": 90, "green": 10}`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Shares {
    pub blue: u8,
    pub green: u8,
}

impl Shares {
    pub fn set(&mut self, color: Color, percent: u8) {
        match color {
            Color::Blue => self.blue = percent,
            Color::Green => self.green = percent,
        }
    }
}

/// A canary as status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CanaryStatus {
    pub color: Color,
    pub release: u64,
    /// Its share of new connections, in percent.
    pub percent: u8,
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

/// The outcome of the last auto-release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AutoRelease {
    pub at: String,
    pub release: u64,
    pub ok: bool,
    pub step: Option<Step>,
    pub message: String,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColorStatus {
    /// `live`, `starting`, `draining`, `restarting`, `stopped` or `empty`.
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

/// One lifecycle event, as `bgctl events --json` prints it and
/// `events` replies carry it (the event hub keeps and broadcasts them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Counts from 1 at bgd's start; a gap means a follower missed events.
    pub seq: u64,
    /// When it was published: RFC 3339, UTC, with milliseconds.
    pub at: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// `release` or `rollback`, as in the history.
pub type ReleaseKind = String;

/// What happened. Serialized with its name in `"type"` (`"release_began"`,
/// `"step"`, ...), next to the fields of that variant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A release or rollback was admitted and begins.
    ReleaseBegan {
        release: u64,
        /// `release` or `rollback`.
        kind: ReleaseKind,
        /// `bgctl` or `watch`.
        trigger: String,
        /// The color being started.
        color: Color,
        label: Option<String>,
    },
    /// The release in progress reached `step`.
    Step { release: u64, step: Step },
    /// The new color passed its health checks (`ms` since the release began).
    Ready { release: u64, color: Color, ms: u64 },
    /// The new color is recorded live and receives new connections.
    Swapped {
        release: u64,
        from: Option<Color>,
        to: Color,
    },
    /// A color stopped after its drain (`forced`: killed at `drain_timeout`).
    Drained {
        color: Color,
        pid: u32,
        forced: bool,
    },
    /// A release ended well: `color` serves release `release`.
    Released {
        release: u64,
        trigger: String,
        color: Color,
        /// From the release's start to the old color's stop.
        ms: u64,
        /// How long each step took, in order.
        steps: Vec<StepTook>,
    },
    /// A release or rollback failed at `step`; the old color stays live.
    Failed {
        release: u64,
        /// `release` or `rollback`.
        kind: ReleaseKind,
        trigger: String,
        color: Color,
        step: Option<Step>,
        message: String,
        ms: u64,
        steps: Vec<StepTook>,
    },
    /// An older build is live again: by `bgctl rollback` (`manual`) or by
    /// bgd itself after a bad bake (`automatic`).
    RolledBack {
        release: u64,
        color: Color,
        kind: RollbackKind,
        ms: u64,
        steps: Vec<StepTook>,
    },
    /// The live color's process died (or its restart failed); bgd starts it
    /// again after `delay_ms`. `restarts` counts them for this build.
    Restarting {
        color: Color,
        restarts: u32,
        delay_ms: u64,
        /// How the process ended, or why the last restart failed.
        reason: String,
    },
    /// The live color serves again after a restart.
    Restarted { color: Color, pid: u32 },
    /// bgd took over a color that was already running (issue 13: a new bgd
    /// adopting the app an old one left serving).
    Adopted { color: Color, pid: u32 },
    /// The config file was read again (SIGHUP); `message` says what applied.
    Reloaded { ok: bool, message: String },
    /// The canary `color` now gets `share` (0..1) of new connections, the
    /// other color the rest.
    CanaryShare { color: Color, share: f64 },
    /// The canary `color` was promoted: it gets every new connection.
    Promoted { release: u64, color: Color },
    /// The canary `color` was stopped; the other color gets every new connection.
    Aborted {
        release: u64,
        color: Color,
        reason: String,
    },
    /// Release `release` on `color` stayed healthy for its bake window.
    BakePassed { release: u64, color: Color },
    /// Release `release` on `color` failed during its bake while bgd could
    /// not switch back (`reason` says what failed and why not); it stays
    /// live.
    BakeFailed {
        release: u64,
        color: Color,
        reason: String,
    },
}

/// How a rollback came about; the `kind` label of `bgd_rollbacks_total`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RollbackKind {
    /// `bgctl rollback`.
    Manual,
    /// bgd rolled back by itself (a failed bake or canary).
    Automatic,
}

impl RollbackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RollbackKind::Manual => "manual",
            RollbackKind::Automatic => "automatic",
        }
    }
}

/// How long one step of a release took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepTook {
    pub step: Step,
    pub ms: u64,
}

impl EventKind {
    /// The name in `"type"`: `release_began`, `step`, ...
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::ReleaseBegan { .. } => "release_began",
            EventKind::Step { .. } => "step",
            EventKind::Ready { .. } => "ready",
            EventKind::Swapped { .. } => "swapped",
            EventKind::Drained { .. } => "drained",
            EventKind::Released { .. } => "released",
            EventKind::Failed { .. } => "failed",
            EventKind::RolledBack { .. } => "rolled_back",
            EventKind::Restarting { .. } => "restarting",
            EventKind::Restarted { .. } => "restarted",
            EventKind::Adopted { .. } => "adopted",
            EventKind::Reloaded { .. } => "reloaded",
            EventKind::CanaryShare { .. } => "canary_share",
            EventKind::Promoted { .. } => "promoted",
            EventKind::Aborted { .. } => "aborted",
            EventKind::BakePassed { .. } => "bake_passed",
            EventKind::BakeFailed { .. } => "bake_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request::Release {
            dir: "/tmp/x".into(),
            label: Some("v2".into()),
            canary: None,
            wait_bake: false,
        };
        let line = encode(&r);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"v\":1,\"cmd\":\"release\",\"dir\":\"/tmp/x\",\"label\":\"v2\"}\n"
        );
        assert_eq!(decode_request(&line).unwrap(), r);
    }

    #[test]
    fn clear_answers_to_bad_requests() {
        let e = decode_request(b"{\"v\":2,\"cmd\":\"status\"}").unwrap_err();
        assert!(
            e.message.contains("version 2 is not supported"),
            "{}",
            e.message
        );
        let e = decode_request(b"{\"cmd\":\"status\"}").unwrap_err();
        assert!(e.message.contains("no protocol version"), "{}", e.message);
        let e = decode_request(b"{\"v\":1,\"cmd\":\"launch\"}").unwrap_err();
        assert!(e.message.contains("unknown variant"), "{}", e.message);
        let e = decode_request(b"{\"v\":1,").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }
}
