//! The TOML config file, parsed and validated into a [`Config`].
//!
//! Every error names the file, line and column and says what to change:
//! `bgd.toml:12:9: bad duration "30": write a number with a unit, such as "30s"`.
//! Relative paths resolve against the config file's directory.

pub mod identity;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use globset::GlobSet;
use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::deploy::rollout::{self, Rollout};
use identity::Identity;

/// A validated config; every path in it is absolute.
///
/// A reload (SIGHUP) applies everything but [`fixed`](Config::fixed).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// What only a restart of bgd changes.
    pub fixed: Fixed,
    pub app: AppConfig,
    pub health: HealthConfig,
    /// `[traffic] standby`, `bake` and `steps`.
    pub rollout: Rollout,
    /// Auto-release when this build directory changes.
    pub watch: Option<WatchConfig>,
    /// Directories under `root/shared` symlinked into each color at staging.
    pub shared: Vec<PathBuf>,
    /// `stage = "hardlink"`: link the build's files into the color instead
    /// of copying them (same filesystem, builds that replace files).
    pub hardlink: bool,
    /// `keep`: how many releases that went live keep their copy in
    /// `root/releases`, besides the live one and the standby. Default 5.
    pub keep: usize,
    pub hooks: HooksConfig,
    /// What is allowed but likely a mistake, each already formatted as
    /// `file:line:col: message`, like a [`ConfigError`]. bgd logs them at
    /// start-up and on reload; `bgd --check` prints them.
    pub warnings: Vec<String>,
}

/// The part of the config that bgd keeps from start-up to exit: the
/// sockets it holds, its directory and its control socket. A reload that
/// changes any of it keeps the old values and says so
/// ([`changed_keys`](Fixed::changed_keys)).
#[derive(Debug, Clone)]
pub struct Fixed {
    /// Shown in logs and status.
    pub name: String,
    /// bgd's own directory: `blue/`, `green/`, the `live` symlink, state.
    pub root: PathBuf,
    /// The control socket bgctl talks to.
    pub control: PathBuf,
    /// Mode of the control socket file (0600, or 0660 with a `control_group`).
    pub control_mode: u32,
    /// Members of this group may use the control socket too.
    pub control_group: Option<nix::unistd::Gid>,
    /// `[[listen]]`, in the file's order.
    pub listen: Vec<ListenConfig>,
    /// `traffic.mode`: how new connections reach the colors.
    pub traffic: TrafficMode,
    /// `metrics.listen`: where `GET /metrics` is served; `None`: nowhere.
    pub metrics: Option<SocketAddr>,
}

/// `[traffic] mode`: how new connections reach the colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficMode {
    /// `"gate"` (the default): each color has its own listening socket, and
    /// the kernel steers each new connection to the color that is live, so
    /// a color receives public connections only once it is ready
    /// (issue 11). TCP: one `SO_REUSEPORT` group per address, steered by a
    /// classic BPF program; Unix: one socket file per color, renamed over
    /// the public path at the swap.
    Gate,
    /// `"shared"`: both colors accept from one socket; the new color takes
    /// public connections as soon as it calls `accept()`, before it is
    /// ready. For kernels or setups where the gate cannot be built.
    Shared,
}

impl Fixed {
    /// The keys that differ in `new`, named as in the config file:
    /// `"[[listen]]"`, `"root"`, `"control"` (which covers `control_mode`
    /// and `control_group` too), `"name"`, `"traffic.mode"` and
    /// `"metrics.listen"`, in that order. Empty when
    /// `new` is the same. A `[[listen]]` that only moved in the file (its
    /// `location`) is the same.
    pub fn changed_keys(&self, new: &Fixed) -> Vec<&'static str> {
        let same_listen = self.listen.len() == new.listen.len()
            && self.listen.iter().zip(&new.listen).all(|(a, b)| {
                a.name == b.name
                    && a.address == b.address
                    && a.mode == b.mode
                    && a.backlog == b.backlog
                    && a.nonblocking == b.nonblocking
            });
        let control_changed = self.control != new.control
            || self.control_mode != new.control_mode
            || self.control_group != new.control_group;
        [
            (!same_listen, "[[listen]]"),
            (self.root != new.root, "root"),
            (control_changed, "control"),
            (self.name != new.name, "name"),
            (self.traffic != new.traffic, "traffic.mode"),
            (self.metrics != new.metrics, "metrics.listen"),
        ]
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect()
    }
}

/// `[hooks]`: shell commands run around a release.
#[derive(Debug, Clone, Default)]
pub struct HooksConfig {
    /// Run in order in the staged color's directory before the app starts;
    /// the first that fails (or runs past `timeout`) aborts the release.
    pub prepare: Vec<String>,
    /// Run in order after the swap; a failure is logged, not fatal.
    pub after_live: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Its `LISTEN_FDNAMES` entry.
    pub name: String,
    pub address: ListenAddr,
    /// File mode of a Unix socket (0666 unless set).
    pub mode: u32,
    pub backlog: i32,
    /// `nonblocking = true`: bgd sets `O_NONBLOCK` on the socket when it
    /// binds (or adopts) it, before any app holds it, for servers that
    /// never set it on inherited sockets themselves (nginx). In gate mode
    /// each color's socket gets it; in shared mode the one shared socket.
    pub nonblocking: bool,
    /// `file:line:col` of its address, for errors found when binding.
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Program and arguments. A program with a `/` resolves inside the
    /// color's directory; a bare name is looked up in `PATH`.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stop_signal: Signal,
    /// How long a stopping color may drain before SIGKILL; zero is allowed,
    /// with a warning in [`Config::warnings`].
    pub drain_timeout: Duration,
    /// `app.drain_delay`, gate mode only: after the swap, the longest bgd
    /// waits for the old color's accept queue to empty and its connections
    /// to end on their own (clients close idle keep-alive connections;
    /// servers end one after N requests) before it sends the stop signal.
    /// Many servers drop idle keep-alive connections at their stop signal,
    /// and a client that just sent a request on one sees it reset.
    pub drain_delay: Duration,
    /// Run the app as this user (`app.user`, `app.group`); `None` keeps bgd's.
    pub identity: Option<Identity>,
    /// `app.memory_max`: each color's `memory.max` (bytes, or with a K, M,
    /// G or T suffix as the kernel's memparse takes it), where the memory
    /// controller is available (issue 13).
    pub memory_max: Option<String>,
    /// `app.cpu_weight`: each color's `cpu.weight`, 1 to 10000 (100 is the
    /// kernel's default), where the cpu controller is available.
    pub cpu_weight: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Path for a GET through the color's private probe socket; ready on 2xx.
    pub http: Option<String>,
    /// Wait for `READY=1` on the NOTIFY_SOCKET bgd gives the color.
    pub notify: bool,
    /// A command run in the color's directory until it exits 0.
    pub exec: Option<Vec<String>>,
    /// All checks must pass within it; never zero.
    pub timeout: Duration,
    /// `health.interval`: once a color is ready, check it (http and exec)
    /// again this often while it is live or a canary; zero (the default)
    /// checks only its readiness.
    pub interval: Duration,
    /// `health.failures`: this many failed checks in a row make a color
    /// unhealthy (default 3, at least 1).
    pub failures: u32,
}

/// `[watch]` in the config.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The build directory (absolute).
    pub path: PathBuf,
    /// Quiet period after the last change.
    pub settle: Duration,
    /// Release only when this file (relative to `path`) is created or changed.
    pub marker: Option<PathBuf>,
    /// Paths (relative to `path`) whose changes are ignored.
    pub ignore: GlobSet,
    /// `ignore` as written, to tell whether a reload changed it.
    pub ignore_globs: Vec<String>,
}

impl WatchConfig {
    /// Whether `other` watches the same way (a reload then keeps the watcher).
    pub fn same_as(&self, other: &WatchConfig) -> bool {
        self.path == other.path
            && self.settle == other.settle
            && self.marker == other.marker
            && self.ignore_globs == other.ignore_globs
    }
}

/// A config error, already formatted as `file:line:col: message`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Reads, parses and validates `file`. Binds nothing.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        Self::parse(file, &read(file)?)
    }

    /// Parses `text` as if it had been read from `file`.
    ///
    /// The sections are checked in a fixed order, so a config with several
    /// faults always reports the same one first.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let file = absolute(file);
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_col(text, s.start));
            ConfigError(located(&file, at, e.message()))
        })?;
        let src = Source {
            file: &file,
            text,
            dir: file.parent().unwrap_or(Path::new("/")).to_path_buf(),
        };
        check_name(&src, &raw.name)?;
        let root = src.dir.join(&raw.root);
        let control = control_socket(&src, raw.control.as_ref(), &root, raw.name.span())?;
        let listen = listen(&src, &raw.listen)?;
        check_command(&src, &raw.app)?;
        let health = health(&src, raw.health)?;
        let watch = raw.watch.map(|w| watch(&src, w)).transpose()?;
        let shared = shared(&src, raw.shared.as_ref())?;
        let hooks = hooks(&src, raw.hooks)?;
        let control_group = control_group(&src, raw.control_group.as_ref())?;
        let identity = identity(&src, &raw.app)?;
        let hardlink = stage(&src, raw.stage.as_ref(), identity.is_some())?;
        let keep = keep(&src, raw.keep.as_ref())?;
        check_runs_as(&src, &raw.app, identity.as_ref())?;
        let control_mode = match raw.control_mode {
            Some(m) => parse_mode(m.get_ref()).map_err(|e| src.fail(m.span(), e))?,
            None if control_group.is_some() => 0o660,
            None => 0o600,
        };
        let raw_traffic = raw.traffic.unwrap_or_default();
        let traffic = traffic(&src, raw_traffic.mode.as_ref())?;
        let rollout = rollout_policy(&src, &raw_traffic, traffic, &listen, &health)?;
        let fds = fd_names(&listen, traffic, health.http.is_some());
        check_templates(&src, &raw.app, &fds)?;
        let metrics = metrics(&src, raw.metrics)?;
        let mut warnings = Vec::new();
        let app = app(&src, raw.app, identity, &mut warnings);
        Ok(Config {
            file: file.clone(),
            fixed: Fixed {
                name: raw.name.into_inner(),
                root,
                control,
                control_mode,
                control_group,
                listen,
                traffic,
                metrics,
            },
            app,
            health,
            rollout,
            watch,
            shared,
            hardlink,
            keep,
            hooks,
            warnings,
        })
    }
}

/// The text of `file`, or an error naming it.
fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigError(format!(
            "{}: cannot read the config file: {e}",
            file.display()
        ))
    })
}

/// The config being parsed: where errors point and what relative paths
/// resolve against.
struct Source<'a> {
    /// Absolute.
    file: &'a Path,
    text: &'a str,
    /// The file's directory.
    dir: PathBuf,
}

impl Source<'_> {
    /// `file:line:col` of a byte offset in the text.
    fn location(&self, offset: usize) -> String {
        let (line, col) = line_col(self.text, offset);
        format!("{}:{line}:{col}", self.file.display())
    }

    /// `file:line:col: msg`, pointing at `span`.
    fn locate(&self, span: std::ops::Range<usize>, msg: &str) -> String {
        located(self.file, Some(line_col(self.text, span.start)), msg)
    }

    /// An error pointing at `span`.
    fn fail(&self, span: std::ops::Range<usize>, msg: String) -> ConfigError {
        ConfigError(self.locate(span, &msg))
    }

    /// An error about the file as a whole (something missing).
    fn fail_whole(&self, msg: &str) -> ConfigError {
        ConfigError(located(self.file, None, msg))
    }
}

fn check_name(src: &Source, name: &Spanned<String>) -> Result<(), ConfigError> {
    if name.get_ref().trim().is_empty() {
        return Err(src.fail(
            name.span(),
            "name is empty: give the app a name, such as \"hello\"".into(),
        ));
    }
    Ok(())
}

/// `control`, else `root/bgd.sock`; an error without a `control` key points
/// at `name`.
fn control_socket(
    src: &Source,
    control: Option<&Spanned<PathBuf>>,
    root: &Path,
    name_span: std::ops::Range<usize>,
) -> Result<PathBuf, ConfigError> {
    let span = control.map_or(name_span, |c| c.span());
    let path = control
        .map(|c| src.dir.join(c.get_ref()))
        .unwrap_or_else(|| root.join("bgd.sock"));
    check_unix_path(&path).map_err(|m| src.fail(span, format!("control: {m}")))?;
    Ok(path)
}

fn control_group(
    src: &Source,
    group: Option<&Spanned<String>>,
) -> Result<Option<nix::unistd::Gid>, ConfigError> {
    group
        .map(|g| {
            identity::lookup_group(g.get_ref())
                .map_err(|m| src.fail(g.span(), format!("control_group: {m}")))
        })
        .transpose()
}

/// `[[listen]]`: at least one, with unique names and addresses.
fn listen(src: &Source, raw: &[RawListen]) -> Result<Vec<ListenConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(src.fail_whole(
            "no [[listen]] socket: add at least one, such as [[listen]] name = \"http\" address = \"127.0.0.1:8080\"",
        ));
    }
    let mut listen = Vec::new();
    for l in raw {
        let entry = listen_entry(src, l, &listen)?;
        listen.push(entry);
    }
    Ok(listen)
}

/// One `[[listen]]` table; `before` are the tables above it.
fn listen_entry(
    src: &Source,
    l: &RawListen,
    before: &[ListenConfig],
) -> Result<ListenConfig, ConfigError> {
    let name = l.name.get_ref();
    if !valid_fd_name(name) {
        return Err(src.fail(l.name.span(), format!(
            "listen name {name:?} is not a valid LISTEN_FDNAMES entry: use 1 to 255 characters of letters, digits, '-', '_' or '.'"
        )));
    }
    if name == PROBE_FD_NAME {
        return Err(src.fail(l.name.span(), format!(
            "listen name {PROBE_FD_NAME:?} is reserved for bgd's private health-probe socket: pick another name"
        )));
    }
    if before.iter().any(|x| &x.name == name) {
        return Err(src.fail(
            l.name.span(),
            format!("listen name {name:?} is used twice: names must be unique"),
        ));
    }
    let address =
        parse_address(l.address.get_ref(), &src.dir).map_err(|m| src.fail(l.address.span(), m))?;
    if let ListenAddr::Unix(p) = &address {
        check_unix_path(p).map_err(|m| src.fail(l.address.span(), m))?;
    }
    if before.iter().any(|x| x.address == address) {
        return Err(src.fail(
            l.address.span(),
            format!("address {address} is listed twice"),
        ));
    }
    let mode = match &l.mode {
        Some(m) => parse_mode(m.get_ref()).map_err(|e| src.fail(m.span(), e))?,
        None => 0o666,
    };
    Ok(ListenConfig {
        location: src.location(l.address.span().start),
        name: name.clone(),
        address,
        mode,
        nonblocking: l.nonblocking,
        backlog: l
            .backlog
            .unwrap_or(libc::SOMAXCONN as u32)
            .min(i32::MAX as u32) as i32,
    })
}

/// `app.command` and `app.env`; the rest of `[app]` is checked later.
fn check_command(src: &Source, app: &RawApp) -> Result<(), ConfigError> {
    let command = app.command.get_ref();
    if command.is_empty() || command[0].get_ref().is_empty() {
        return Err(src.fail(
            app.command.span(),
            "app.command is empty: name the program to run, such as [\"./server\"]".into(),
        ));
    }
    for key in app.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(src.fail(
                app.command.span(),
                format!("app.env key {key:?} is not a valid variable name"),
            ));
        }
    }
    Ok(())
}

/// The names of the app's sockets in fd order (the first is fd 3): the
/// `[[listen]]` entries, then, in shared mode with `health.http`, bgd's
/// private probe socket.
pub fn fd_names(listen: &[ListenConfig], traffic: TrafficMode, http_check: bool) -> Vec<&str> {
    let mut names: Vec<&str> = listen.iter().map(|l| l.name.as_str()).collect();
    if traffic == TrafficMode::Shared && http_check {
        names.push(PROBE_FD_NAME);
    }
    names
}

impl Config {
    /// [`fd_names`] of this config: what `{fd:NAME}` templates expand against.
    pub fn fd_names(&self) -> Vec<&str> {
        fd_names(
            &self.fixed.listen,
            self.fixed.traffic,
            self.health.http.is_some(),
        )
    }
}

/// `{fd:NAME}` templates in `app.command` arguments and `app.env` values:
/// well-formed, and naming one of `fds` ([`crate::config::template`]).
fn check_templates(src: &Source, app: &RawApp, fds: &[&str]) -> Result<(), ConfigError> {
    let values = app
        .command
        .get_ref()
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("app.command[{i}]"), a))
        .chain(app.env.iter().map(|(k, v)| (format!("app.env.{k}"), v)));
    for (key, value) in values {
        if let Err(e) = crate::config::template::expand(value.get_ref(), fds) {
            let at = value_offset(src.text, value.span(), value.get_ref(), e.offset);
            return Err(src.fail(at..at, format!("{key}: {}", e.message)));
        }
    }
    Ok(())
}

/// The offset in the file of byte `offset` of a string value at `span`:
/// exact for a string written without escapes, else the value's start.
fn value_offset(text: &str, span: std::ops::Range<usize>, value: &str, offset: usize) -> usize {
    let written = text.get(span.clone()).unwrap_or_default();
    let plain =
        written.len() == value.len() + 2 && written.get(1..written.len() - 1) == Some(value);
    if plain {
        span.start + 1 + offset
    } else {
        span.start
    }
}

/// `app.user` and `app.group`, looked up.
fn identity(src: &Source, app: &RawApp) -> Result<Option<Identity>, ConfigError> {
    let Some(u) = &app.user else {
        return match &app.group {
            Some(g) => Err(src.fail(
                g.span(),
                "app.group needs app.user: name the user the app runs as".into(),
            )),
            None => Ok(None),
        };
    };
    let group = app.group.as_ref().map(|g| g.get_ref().as_str());
    identity::resolve(u.get_ref(), group)
        .map(Some)
        .map_err(|m| {
            // Name the key that is wrong: the group, or the user.
            match &app.group {
                Some(g) if m.starts_with("group ") => src.fail(g.span(), format!("app.group: {m}")),
                _ => src.fail(u.span(), format!("app.user: {m}")),
            }
        })
}

/// Refuses an app that would run as root without `app.allow_root`, and an
/// `app.user` that bgd, not being root, cannot switch to.
fn check_runs_as(
    src: &Source,
    app: &RawApp,
    identity: Option<&Identity>,
) -> Result<(), ConfigError> {
    let bgd_is_root = nix::unistd::geteuid().is_root();
    let runs_as_root = identity.map_or(bgd_is_root, |i| i.uid.is_root());
    if runs_as_root && !app.allow_root {
        let span = app.user.as_ref().map_or(app.command.span(), |u| u.span());
        return Err(src.fail(span, "the app would run as root: set app.user to an unprivileged user (such as \"www-data\"), or app.allow_root = true if it must be root".into()));
    }
    if identity.is_some() && !bgd_is_root {
        let span = app
            .user
            .as_ref()
            .expect("identity comes from app.user")
            .span();
        return Err(src.fail(span, "app.user needs bgd to run as root, which it does not: remove app.user or start bgd as root".into()));
    }
    Ok(())
}

/// `[app]`, already checked; what is allowed but likely a mistake goes to
/// `warnings`.
fn app(
    src: &Source,
    raw: RawApp,
    identity: Option<Identity>,
    warnings: &mut Vec<String>,
) -> AppConfig {
    let drain_timeout = match raw.drain_timeout {
        Some(d) => {
            if d.get_ref().0.is_zero() {
                warnings.push(src.locate(
                    d.span(),
                    "app.drain_timeout is 0s: in-flight requests are cut at once when a color stops; give them time to finish, such as \"30s\"",
                ));
            }
            d.into_inner().0
        }
        None => Duration::from_secs(30),
    };
    AppConfig {
        command: raw
            .command
            .into_inner()
            .into_iter()
            .map(|a| a.into_inner())
            .collect(),
        env: raw
            .env
            .into_iter()
            .map(|(k, v)| (k, v.into_inner()))
            .collect(),
        stop_signal: raw.stop_signal.map(|s| s.0).unwrap_or(Signal::SIGTERM),
        drain_timeout,
        drain_delay: raw.drain_delay.map_or(DEFAULT_DRAIN_DELAY, |d| d.0),
        identity,
        memory_max: raw.memory_max.map(|m| m.0),
        cpu_weight: raw.cpu_weight.map(|w| w.0),
    }
}

/// `app.drain_delay` when the config does not say.
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::from_secs(5);

/// `traffic.mode`.
fn traffic(src: &Source, mode: Option<&Spanned<String>>) -> Result<TrafficMode, ConfigError> {
    match mode {
        None => Ok(TrafficMode::Gate),
        Some(m) => match m.get_ref().as_str() {
            "gate" => Ok(TrafficMode::Gate),
            "shared" => Ok(TrafficMode::Shared),
            other => Err(src.fail(
                m.span(),
                format!("traffic.mode {other:?} is not known: write \"gate\" (each color its own socket, steered by the kernel) or \"shared\" (one socket for both colors)"),
            )),
        },
    }
}

/// `[traffic] standby`, `bake` and `steps`, checked against the mode, the
/// listeners and the health checks they rely on.
fn rollout_policy(
    src: &Source,
    t: &RawTraffic,
    mode: TrafficMode,
    listen: &[ListenConfig],
    health: &HealthConfig,
) -> Result<Rollout, ConfigError> {
    let duration =
        |d: &Option<Spanned<HumanDuration>>| d.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0);
    let steps = match &t.steps {
        Some(s) => rollout::parse_steps(s.get_ref())
            .map_err(|(i, e)| src.fail(s.span(), format!("traffic.steps[{i}]: {e}")))?,
        None => Vec::new(),
    };
    let r = Rollout {
        standby: duration(&t.standby),
        bake: duration(&t.bake),
        steps,
    };
    // The first key that needs what is missing is the one named.
    let used = [
        (
            "traffic.standby",
            &t.standby.as_ref().map(|d| d.span()),
            !r.standby.is_zero(),
        ),
        (
            "traffic.bake",
            &t.bake.as_ref().map(|d| d.span()),
            !r.bake.is_zero(),
        ),
        (
            "traffic.steps",
            &t.steps.as_ref().map(|s| s.span()),
            !r.steps.is_empty(),
        ),
    ];
    for (key, span, set) in used {
        let (Some(span), true) = (span, set) else {
            continue;
        };
        if mode == TrafficMode::Shared {
            return Err(src.fail(span.clone(), format!("{key} needs traffic.mode = \"gate\": in shared mode both colors accept from one socket, so a color cannot be kept without connections or given a share of them")));
        }
        if key == "traffic.steps" {
            if let Some(l) = listen
                .iter()
                .find(|l| !matches!(l.address, ListenAddr::Tcp(_)))
            {
                return Err(src.fail(span.clone(), format!("traffic.steps splits new TCP connections in the kernel, and [[listen]] {:?} is a Unix socket, which cannot be split: remove traffic.steps, or the Unix listener", l.name)));
            }
        }
        if key != "traffic.standby" && health.interval.is_zero() {
            return Err(src.fail(span.clone(), format!("{key} watches the new color's health checks every health.interval, which is off: set health.interval, such as \"5s\"")));
        }
    }
    if r.bake > r.standby {
        let span = t.bake.as_ref().map(|d| d.span()).unwrap_or_default();
        return Err(src.fail(span, format!(
            "traffic.bake ({}) is longer than traffic.standby ({}): the standby would be gone before the bake ends, with nothing to roll back to; make standby at least as long, such as standby = \"{}\"",
            humantime::format_duration(r.bake), humantime::format_duration(r.standby), humantime::format_duration(r.bake.max(Duration::from_secs(600)))
        )));
    }
    Ok(r)
}

/// `[metrics]`: `listen` must be an IP address and a port (bound at start-up).
fn metrics(src: &Source, m: Option<RawMetrics>) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(listen) = m.and_then(|m| m.listen) else {
        return Ok(None);
    };
    listen.get_ref().parse::<SocketAddr>().map(Some).map_err(|_| {
        src.fail(
            listen.span(),
            format!(
                "metrics.listen {:?} is not an IP address and port: write one such as \"127.0.0.1:9187\" (or remove [metrics])",
                listen.get_ref()
            ),
        )
    })
}

/// `[health]`: at least one check, each well-formed.
fn health(src: &Source, h: RawHealth) -> Result<HealthConfig, ConfigError> {
    if h.http.is_none() && !h.notify && h.exec.is_none() {
        return Err(src.fail_whole(
            "[health] checks nothing: set http = \"/healthz\", notify = true or exec = [\"./check\"], so a release knows when the new color is ready",
        ));
    }
    if let Some(p) = &h.http {
        if !p.get_ref().starts_with('/') || p.get_ref().chars().any(|c| c.is_whitespace()) {
            return Err(src.fail(
                p.span(),
                format!(
                    "health.http {:?} must be a path starting with '/', such as \"/healthz\"",
                    p.get_ref()
                ),
            ));
        }
    }
    if let Some(e) = &h.exec {
        if e.get_ref().is_empty() || e.get_ref()[0].is_empty() {
            return Err(src.fail(
                e.span(),
                "health.exec is empty: name the check command, such as [\"./check\"]".into(),
            ));
        }
    }
    if let Some(t) = h.timeout.as_ref().filter(|t| t.get_ref().0.is_zero()) {
        return Err(src.fail(
            t.span(),
            "health.timeout must be more than 0s: no release could pass its checks; give the app time to become ready, such as \"30s\"".into(),
        ));
    }
    let interval = h
        .interval
        .as_ref()
        .map_or(Duration::ZERO, |d| d.get_ref().0);
    if let (Some(i), false) = (&h.interval, interval.is_zero()) {
        if h.http.is_none() && h.exec.is_none() {
            return Err(src.fail(i.span(), "health.interval repeats health.http or health.exec, and neither is set (READY=1 comes once): set one of them, or remove health.interval".into()));
        }
    }
    let failures = match &h.failures {
        Some(f) if *f.get_ref() == 0 => {
            return Err(src.fail(f.span(), "health.failures must be at least 1: it is how many failed checks in a row make a color unhealthy, such as 3".into()))
        }
        Some(f) => *f.get_ref(),
        None => 3,
    };
    Ok(HealthConfig {
        interval,
        failures,
        http: h.http.map(|s| s.into_inner()),
        notify: h.notify,
        exec: h.exec.map(|s| s.into_inner()),
        timeout: h
            .timeout
            .map_or(Duration::from_secs(30), |d| d.into_inner().0),
    })
}

/// `[watch]`: the globs compiled, the marker inside the watched tree.
fn watch(src: &Source, w: RawWatch) -> Result<WatchConfig, ConfigError> {
    let mut ignore = globset::GlobSetBuilder::new();
    let (globs, span) = w
        .ignore
        .map_or((vec![], 0..0), |i| (i.get_ref().clone(), i.span()));
    for g in &globs {
        let glob = globset::Glob::new(g)
            .map_err(|e| src.fail(span.clone(), format!("watch.ignore: bad glob {g:?}: {e}")))?;
        ignore.add(glob);
    }
    let ignore = ignore
        .build()
        .map_err(|e| src.fail(span.clone(), format!("watch.ignore: {e}")))?;
    if let Some(m) = &w.marker {
        let p = Path::new(m.get_ref());
        if m.get_ref().is_empty()
            || p.is_absolute()
            || p.components().any(|c| c == std::path::Component::ParentDir)
        {
            return Err(src.fail(
                m.span(),
                format!(
                    "watch.marker {:?} must be a path inside watch.path, such as \".release\"",
                    m.get_ref()
                ),
            ));
        }
    }
    Ok(WatchConfig {
        path: src.dir.join(w.path),
        settle: w.settle.map(|d| d.0).unwrap_or(Duration::from_secs(1)),
        marker: w.marker.map(|m| PathBuf::from(m.into_inner())),
        ignore,
        ignore_globs: globs,
    })
}

/// `shared`: plain relative paths, none inside another.
fn shared(src: &Source, list: Option<&Spanned<Vec<String>>>) -> Result<Vec<PathBuf>, ConfigError> {
    let mut shared: Vec<PathBuf> = Vec::new();
    let Some(list) = list else {
        return Ok(shared);
    };
    for name in list.get_ref() {
        let p = Path::new(name);
        let plain = !name.is_empty()
            && p.is_relative()
            && p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(src.fail(list.span(), format!("shared entry {name:?} must be a relative path inside the build, such as \"data\" or \"public/uploads\"")));
        }
        if shared
            .iter()
            .any(|s| s == p || s.starts_with(p) || p.starts_with(s))
        {
            return Err(src.fail(
                list.span(),
                format!("shared entry {name:?} overlaps another entry: list each directory once"),
            ));
        }
        shared.push(p.to_path_buf());
    }
    Ok(shared)
}

/// `[hooks]`: no empty command.
fn hooks(src: &Source, h: Option<RawHooks>) -> Result<HooksConfig, ConfigError> {
    let h = h.unwrap_or_default();
    if h.prepare
        .iter()
        .chain(&h.after_live)
        .any(|c| c.trim().is_empty())
    {
        return Err(src.fail_whole("[hooks] has an empty command: remove it or write the command"));
    }
    Ok(HooksConfig {
        prepare: h.prepare,
        after_live: h.after_live,
        timeout: h.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(300)),
    })
}

/// `stage`: whether to hardlink (`"hardlink"`) or copy (`"copy"`, the default).
fn stage(
    src: &Source,
    stage: Option<&Spanned<String>>,
    has_user: bool,
) -> Result<bool, ConfigError> {
    match stage {
        None => Ok(false),
        Some(m) if m.get_ref() == "copy" => Ok(false),
        Some(m) if m.get_ref() == "hardlink" => {
            if has_user {
                return Err(src.fail(m.span(), "stage = \"hardlink\" cannot go with app.user: handing the files to the app's user would change the build's own files too; use stage = \"copy\"".into()));
            }
            Ok(true)
        }
        Some(m) => Err(src.fail(
            m.span(),
            format!(
                "stage {:?} is not a staging method: use \"copy\" (the default) or \"hardlink\"",
                m.get_ref()
            ),
        )),
    }
}

/// How many good releases [`Config::keep`] keeps when the config does not say.
pub use crate::deploy::kept::DEFAULT_KEEP;

/// `keep`: 0 to 1000 releases that went live, besides the live one and the
/// standby.
fn keep(src: &Source, keep: Option<&Spanned<i64>>) -> Result<usize, ConfigError> {
    match keep {
        None => Ok(DEFAULT_KEEP),
        Some(k) => usize::try_from(*k.get_ref())
            .ok()
            .filter(|n| *n <= 1000)
            .ok_or_else(|| {
                src.fail(
                    k.span(),
                    format!("keep = {}: write how many releases that went live to keep besides the live one and the standby, 0 to 1000 (default {DEFAULT_KEEP})", k.get_ref()),
                )
            }),
    }
}

/// Only where `file`'s bgd listens for bgctl (`control`, else `root/bgd.sock`),
/// without the checks that concern running the app: bgctl may run as
/// another user than bgd.
pub fn control_path(file: &Path) -> Result<PathBuf, ConfigError> {
    #[derive(Deserialize)]
    struct Control {
        root: PathBuf,
        control: Option<PathBuf>,
    }
    let text = read(file)?;
    let file = absolute(file);
    let c: Control = toml::from_str(&text).map_err(|e| {
        let at = e.span().map(|s| line_col(&text, s.start));
        ConfigError(located(&file, at, e.message()))
    })?;
    let dir = file.parent().unwrap_or(Path::new("/"));
    Ok(c.control
        .map(|p| dir.join(p))
        .unwrap_or_else(|| dir.join(c.root).join("bgd.sock")))
}

/// The extra named fd bgd passes to each color for health probes.
pub const PROBE_FD_NAME: &str = "probe";

type Spanned<T> = toml::Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    root: PathBuf,
    control: Option<Spanned<PathBuf>>,
    control_mode: Option<Spanned<String>>,
    control_group: Option<Spanned<String>>,
    #[serde(default)]
    listen: Vec<RawListen>,
    app: RawApp,
    health: RawHealth,
    watch: Option<RawWatch>,
    shared: Option<Spanned<Vec<String>>>,
    stage: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
    hooks: Option<RawHooks>,
    traffic: Option<RawTraffic>,
    metrics: Option<RawMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    mode: Option<Spanned<String>>,
    standby: Option<Spanned<HumanDuration>>,
    bake: Option<Spanned<HumanDuration>>,
    steps: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    #[serde(default)]
    prepare: Vec<String>,
    #[serde(default)]
    after_live: Vec<String>,
    timeout: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    path: PathBuf,
    settle: Option<HumanDuration>,
    marker: Option<Spanned<String>>,
    ignore: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    name: Spanned<String>,
    address: Spanned<String>,
    mode: Option<Spanned<String>>,
    backlog: Option<u32>,
    #[serde(default)]
    nonblocking: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    command: Spanned<Vec<Spanned<String>>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    #[serde(default)]
    allow_root: bool,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    stop_signal: Option<SignalName>,
    drain_timeout: Option<Spanned<HumanDuration>>,
    drain_delay: Option<HumanDuration>,
    memory_max: Option<MemorySize>,
    cpu_weight: Option<CpuWeight>,
}

/// `app.memory_max`: "512M", "2G", or a number of bytes.
struct MemorySize(String);

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let t = s.trim();
        let digits = t.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
        let suffixes = t.len() - digits.len();
        if digits.is_empty()
            || suffixes > 1
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.parse::<u64>().map_or(true, |n| n == 0)
        {
            return Err(serde::de::Error::custom(format!(
                "app.memory_max {s:?} is not a size: write bytes with an optional K, M, G or T, such as \"512M\""
            )));
        }
        Ok(MemorySize(t.to_string()))
    }
}

/// `app.cpu_weight`: 1 to 10000.
struct CpuWeight(u32);

impl<'de> Deserialize<'de> for CpuWeight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = u32::deserialize(d)?;
        if !(1..=10_000).contains(&w) {
            return Err(serde::de::Error::custom(format!(
                "app.cpu_weight {w} is out of range: write 1 to 10000 (100 is the default share)"
            )));
        }
        Ok(CpuWeight(w))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    http: Option<Spanned<String>>,
    #[serde(default)]
    notify: bool,
    exec: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<HumanDuration>>,
    interval: Option<Spanned<HumanDuration>>,
    failures: Option<Spanned<u32>>,
}

/// A duration written with a unit: "30s", "500ms", "2m".
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("bad duration {s:?} ({e}): write a number with a unit, such as \"30s\", \"500ms\" or \"2m\"")
    })
}

/// A signal name: "SIGTERM", "TERM" or "term".
struct SignalName(Signal);

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_signal(&s)
            .map(SignalName)
            .map_err(serde::de::Error::custom)
    }
}

pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match Signal::from_str(&full) {
        Ok(Signal::SIGKILL | Signal::SIGSTOP) => Err(format!(
            "stop_signal {s:?} cannot be caught, so the app could not drain: use the app's graceful-stop signal, such as \"SIGTERM\""
        )),
        Ok(sig) => Ok(sig),
        Err(_) => Err(format!(
            "unknown signal {s:?}: use a name such as \"SIGTERM\", \"SIGINT\", \"SIGQUIT\" or \"SIGUSR1\""
        )),
    }
}

fn parse_address(s: &str, dir: &Path) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: address has no path: write \"unix:/run/app.sock\"".into());
        }
        return Ok(ListenAddr::Unix(dir.join(path)));
    }
    s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
        format!("bad address {s:?}: write \"host:port\" with an IP address (\"127.0.0.1:8080\"), \"[::1]:8080\" or \"unix:/path/to.sock\"")
    })
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            format!("bad file mode {s:?}: write it in octal, such as \"0600\" or \"0660\"")
        })
}

/// `sun_path` holds 108 bytes including the terminating NUL.
fn check_unix_path(p: &Path) -> Result<(), String> {
    let len = p.as_os_str().len();
    if len >= 108 {
        return Err(format!(
            "Unix socket path {} is {len} bytes; the limit is 107: use a shorter path",
            p.display()
        ));
    }
    Ok(())
}

fn valid_fd_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `file:line:col: msg`, always one line: control characters that came
/// from the config (a path or name with a newline) are escaped.
fn located(file: &Path, at: Option<(usize, usize)>, msg: &str) -> String {
    let msg: String = msg
        .trim_end()
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    match at {
        Some((l, c)) => format!("{}:{l}:{c}: {msg}", file.display()),
        None => format!("{}: {msg}", file.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "hello"
root = "state"

[[listen]]
name = "http"
address = "127.0.0.1:8080"

[app]
command = ["./server"]
drain_timeout = "5s"
allow_root = true

[health]
http = "/healthz"
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/bgd/app.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn keep_is_five_unless_said_and_never_negative() {
        assert_eq!(parse(GOOD).unwrap().keep, DEFAULT_KEEP);
        assert_eq!(parse(&format!("keep = 2\n{GOOD}")).unwrap().keep, 2);
        let e = parse(&format!("keep = -1\n{GOOD}")).unwrap_err();
        assert!(e.contains("app.toml:1:8: keep = -1: write how many"), "{e}");
    }

    /// `[traffic] standby/bake/steps` and `health.interval/failures`
    /// (issue 12): what each needs, and what it says when it is missing.
    #[test]
    fn the_rollout_keys_say_what_they_need() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.rollout, Rollout::default());
        assert_eq!((c.health.interval, c.health.failures), (Duration::ZERO, 3));
        let with =
            |health: &str, traffic: &str| parse(&format!("{GOOD}{health}\n[traffic]\n{traffic}\n"));
        let ok = with(
            "interval = \"5s\"\nfailures = 2",
            "standby = \"10m\"\nbake = \"2m\"\nsteps = [\"10%:1m\", \"50%:30s\"]",
        )
        .unwrap();
        assert_eq!(ok.rollout.standby, Duration::from_secs(600));
        assert_eq!(ok.rollout.bake, Duration::from_secs(120));
        assert_eq!(ok.rollout.steps.len(), 2);
        assert_eq!(
            (ok.health.interval, ok.health.failures),
            (Duration::from_secs(5), 2)
        );
        for (health, traffic, says) in [
            ("interval = \"5s\"", "standby = \"1m\"\nbake = \"2m\"", "traffic.bake (2m) is longer than traffic.standby (1m)"),
            ("interval = \"5s\"", "bake = \"2m\"", "longer than traffic.standby (0s)"),
            ("", "standby = \"10m\"\nbake = \"2m\"", "traffic.bake watches the new color's health checks every health.interval, which is off"),
            ("interval = \"5s\"", "steps = [\"50%:1m\", \"10%:1m\"]", "traffic.steps[1]: canary steps must increase"),
            ("interval = \"5s\"", "steps = [\"half\"]", "traffic.steps[0]: bad canary step \"half\""),
            ("interval = \"5s\"", "mode = \"shared\"\nstandby = \"1m\"", "traffic.standby needs traffic.mode = \"gate\""),
            ("failures = 0", "", "health.failures must be at least 1"),
        ] {
            let e = with(health, traffic).unwrap_err();
            assert!(e.contains(says), "{health} {traffic}: {e}");
            assert!(e.starts_with("/etc/bgd/app.toml:"), "{e}");
        }
        let notify = GOOD.replace("http = \"/healthz\"", "notify = true\ninterval = \"5s\"");
        let e = parse(&notify).unwrap_err();
        assert!(
            e.contains("health.interval repeats health.http or health.exec"),
            "{e}"
        );
        let unix = GOOD.replace("127.0.0.1:8080", "unix:app.sock");
        let e = parse(&format!(
            "{unix}interval = \"5s\"\n[traffic]\nstandby = \"10m\"\nsteps = [\"10%:1m\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("is a Unix socket, which cannot be split"), "{e}");
    }

    #[test]
    fn good_config_resolves_paths_and_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.fixed.root, Path::new("/etc/bgd/state"));
        assert_eq!(c.fixed.control, Path::new("/etc/bgd/state/bgd.sock"));
        assert_eq!(c.app.stop_signal, Signal::SIGTERM);
        assert_eq!(c.app.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.health.timeout, Duration::from_secs(30));
        assert_eq!(c.fixed.control_mode, 0o600);
    }

    #[test]
    fn a_reload_names_the_fixed_keys_it_changes() {
        let old = parse(GOOD).unwrap().fixed;
        let changed = |edits: &[(&str, &str)]| {
            let text = edits
                .iter()
                .fold(GOOD.to_string(), |t, (from, to)| t.replace(from, to));
            old.changed_keys(&parse(&text).unwrap().fixed)
        };
        assert!(changed(&[("5s", "6s")]).is_empty(), "[app] is not fixed");
        // Moved in the file, not changed.
        assert!(changed(&[("[[listen]]", "\n\n[[listen]]")]).is_empty());
        // The default control socket is in root.
        assert_eq!(changed(&[("\"state\"", "\"s2\"")]), ["root", "control"]);
        assert_eq!(
            changed(&[("\nroot", "\ncontrol = \"c.sock\"\nroot")]),
            ["control"]
        );
        assert_eq!(
            changed(&[("\nroot", "\ncontrol_mode = \"0660\"\nroot")]),
            ["control"]
        );
        assert_eq!(changed(&[(":8080", ":8081")]), ["[[listen]]"]);
        assert_eq!(
            changed(&[("8080\"", "8080\"\nbacklog = 8")]),
            ["[[listen]]"]
        );
        assert_eq!(
            changed(&[("\"hello\"", "\"other\""), ("\"http\"", "\"web\"")]),
            ["[[listen]]", "name"]
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        let bad = GOOD.replace("drain_timeout = \"5s\"", "drain_timeout = \"5\"");
        let e = parse(&bad).unwrap_err();
        assert!(e.starts_with("/etc/bgd/app.toml:11:17: "), "{e}");
        assert!(e.contains("such as \"30s\""), "{e}");

        let e = parse(&GOOD.replace("[app]", "[app]\ncomand = 1")).unwrap_err();
        assert!(e.starts_with("/etc/bgd/app.toml:10:1: "), "{e}");
        assert!(e.contains("unknown field `comand`"), "{e}");
    }

    #[test]
    fn rejects_what_cannot_work() {
        for (from, to, want) in [
            ("127.0.0.1:8080", "localhost", "bad address"),
            ("[\"./server\"]", "[]", "app.command is empty"),
            ("http = \"/healthz\"", "", "checks nothing"),
            (
                "http = \"/healthz\"",
                "http = \"healthz\"",
                "starting with '/'",
            ),
            (
                "drain_timeout = \"5s\"",
                "stop_signal = \"SIGKILL\"",
                "cannot be caught",
            ),
            (
                "drain_timeout = \"5s\"",
                "stop_signal = \"SIGFOO\"",
                "unknown signal",
            ),
            ("name = \"http\"", "name = \"probe\"", "reserved"),
            ("name = \"http\"", "name = \"a:b\"", "LISTEN_FDNAMES"),
        ] {
            let e = parse(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
    }

    /// Every release would fail before the app could answer.
    #[test]
    fn a_zero_health_timeout_is_refused() {
        let e = parse(&GOOD.replace("\"/healthz\"", "\"/healthz\"\ntimeout = \"0s\"")).unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/app.toml:16:11: health.timeout must be more than 0s"),
            "{e}"
        );
        assert!(e.contains("such as \"30s\""), "{e}");
        let c = parse(&GOOD.replace("\"/healthz\"", "\"/healthz\"\ntimeout = \"1ms\"")).unwrap();
        assert_eq!(c.health.timeout, Duration::from_millis(1));
    }

    /// The gate unless the config says "shared"; anything else is refused
    /// with what to write. `drain_delay` defaults to 5 s.
    #[test]
    fn traffic_mode_is_the_gate_unless_shared() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.fixed.traffic, TrafficMode::Gate);
        assert_eq!(c.app.drain_delay, DEFAULT_DRAIN_DELAY);
        let shared = parse(&format!("{GOOD}\n[traffic]\nmode = \"shared\"\n")).unwrap();
        assert_eq!(shared.fixed.traffic, TrafficMode::Shared);
        assert_eq!(c.fixed.changed_keys(&shared.fixed), ["traffic.mode"]);
        let e = parse(&format!("{GOOD}\n[traffic]\nmode = \"proxy\"\n")).unwrap_err();
        assert!(e.contains("traffic.mode \"proxy\" is not known"), "{e}");
        assert!(e.contains("write \"gate\""), "{e}");
        let d = parse(&GOOD.replace(
            "drain_timeout = \"5s\"",
            "drain_timeout = \"5s\"\ndrain_delay = \"250ms\"",
        ))
        .unwrap();
        assert_eq!(d.app.drain_delay, Duration::from_millis(250));
    }

    /// Accepted, since an app may have nothing to drain, but said.
    #[test]
    fn a_zero_drain_timeout_warns() {
        assert!(parse(GOOD).unwrap().warnings.is_empty());
        let c = parse(&GOOD.replace("\"5s\"", "\"0s\"")).unwrap();
        assert_eq!(c.app.drain_timeout, Duration::ZERO);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let w = &c.warnings[0];
        assert!(
            w.starts_with("/etc/bgd/app.toml:11:17: app.drain_timeout is 0s"),
            "{w}"
        );
        assert!(
            w.contains("in-flight requests") && w.contains("such as \"30s\""),
            "{w}"
        );
    }

    #[test]
    fn the_app_runs_as_root_only_when_allowed() {
        let e = parse(&GOOD.replace("allow_root = true", "")).err();
        if nix::unistd::geteuid().is_root() {
            assert!(e.unwrap().contains("the app would run as root"));
            let e = parse(&GOOD.replace("allow_root = true", "user = \"root\"")).unwrap_err();
            assert!(e.contains("the app would run as root"), "{e}");
            let c = parse(&GOOD.replace("allow_root = true", "user = \"nobody\"")).unwrap();
            assert_ne!(c.app.identity.unwrap().uid.as_raw(), 0);
        } else {
            assert!(e.is_none(), "{e:?}");
            let e = parse(&GOOD.replace("allow_root = true", "user = \"nobody\"")).unwrap_err();
            assert!(e.contains("app.user needs bgd to run as root"), "{e}");
        }
    }

    /// Inputs the fuzzer found (fuzz/regressions/config_parse): every error
    /// names the file and stays on one line.
    #[test]
    fn fuzz_regressions_give_one_line_errors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/config_parse");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
            if let Err(e) = Config::parse(Path::new("/fuzz/bgd.toml"), &text) {
                let e = e.to_string();
                assert!(
                    e.starts_with("/fuzz/bgd.toml") && !e.contains(['\n', '\r']),
                    "{}: {e:?}",
                    path.display()
                );
            }
            n += 1;
        }
        assert!(n >= 8, "regression inputs missing from {}", dir.display());
    }

    /// `{fd:NAME}` is checked against the `[[listen]]` names (and, in
    /// shared mode with an http check, `probe`), pointing at the brace.
    #[test]
    fn fd_templates_are_checked_with_line_and_column() {
        let with = |command: &str, tail: &str| {
            parse(&format!(
                "{}{tail}",
                GOOD.replace("[\"./server\"]", command)
            ))
        };
        let c = with(r#"["./server", "--fd", "{fd:http}", "{{x}}"]"#, "").unwrap();
        assert_eq!(c.app.command[2], "{fd:http}", "expanded only at spawn");
        assert_eq!(c.fd_names(), ["http"]);
        let e = with(r#"["./server", "--bind=fd://{fd:web}"]"#, "").unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/app.toml:10:37: app.command[1]: {fd:web}: no [[listen]] entry is named \"web\""),
            "{e}"
        );
        let e = with(r#"["./server", "${PORT}"]"#, "").unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/app.toml:10:26: app.command[1]: unknown template {PORT}"),
            "{e}"
        );
        assert!(e.contains("{{ for a literal brace"), "{e}");
        // An escape in the TOML string: the error points at the value.
        let e = with(r#"["./server", "\t{fd:x"]"#, "").unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/app.toml:10:24: app.command[1]: an unclosed"),
            "{e}"
        );
        let env = GOOD.replace(
            "allow_root = true",
            "allow_root = true\nenv = { NGINX = \"{fd:http};{fd:probe};\" }",
        );
        let e = parse(&env).unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/app.toml:13:28: app.env.NGINX: {fd:probe}: no [[listen]]"),
            "{e}"
        );
        let shared = parse(&format!("{env}\n[traffic]\nmode = \"shared\"\n")).unwrap();
        assert_eq!(shared.fd_names(), ["http", "probe"]);
        assert_eq!(shared.app.env["NGINX"], "{fd:http};{fd:probe};");
    }

    /// `nonblocking` is off unless set, and a change of it is a change of
    /// `[[listen]]`, which a reload keeps.
    #[test]
    fn listen_nonblocking_is_off_unless_set() {
        let c = parse(GOOD).unwrap();
        assert!(!c.fixed.listen[0].nonblocking);
        let n = parse(&GOOD.replace("8080\"", "8080\"\nnonblocking = true")).unwrap();
        assert!(n.fixed.listen[0].nonblocking);
        assert_eq!(c.fixed.changed_keys(&n.fixed), ["[[listen]]"]);
        let e = parse(&GOOD.replace("8080\"", "8080\"\nnonblocking = \"yes\"")).unwrap_err();
        assert!(e.starts_with("/etc/bgd/app.toml:8:15: "), "{e}");
    }

    #[test]
    fn signal_names_in_any_case() {
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGQUIT").unwrap(), Signal::SIGQUIT);
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    const BASE: &str = "name = \"hello\"\nroot = \"/tmp/bgd-hello\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n[app]\ncommand = [\"./server\"]\nallow_root = true\n[health]\nhttp = \"/healthz\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/bgd/hello.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn metrics_are_off_unless_listen_is_set() {
        assert_eq!(parse(BASE).unwrap().fixed.metrics, None);
        let on = parse(&format!("{BASE}[metrics]\nlisten = \"127.0.0.1:9187\"\n")).unwrap();
        assert_eq!(on.fixed.metrics, Some("127.0.0.1:9187".parse().unwrap()));
    }

    #[test]
    fn a_bad_metrics_address_names_the_key_and_its_place() {
        let e = parse(&format!("{BASE}[metrics]\nlisten = \"localhost:9187\"\n")).unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/hello.toml:12:10: metrics.listen \"localhost:9187\""),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[metrics]\nlisten = \"127.0.0.1:9187\"\nport = 1\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
    }
}
