//! The TOML config file, parsed and validated into a [`Config`].
//!
//! Every error names the file, line and column and says what to change:
//! `bgd.toml:12:9: bad duration "30": write a number with a unit, such as "30s"`.
//! Relative paths resolve against the config file's directory.
//!
//! This file is the pipeline: [`Config::parse`] reads the whole file with
//! serde, then checks the top-level keys (here) and each section (in its
//! own file) in a fixed order. A section's file holds its public type, its
//! raw serde table, its checks and its tests: `listen.rs` (`[[listen]]`),
//! `app.rs`, `health.rs`, `traffic.rs`, `watch.rs`, `hooks.rs`,
//! `metrics.rs`, `pause.rs` and `compare.rs` (the table of that name).
//! `parse.rs` holds the helpers they share (durations, file modes,
//! `file:line:col`).

mod app;
mod compare;
mod health;
mod hooks;
pub mod identity;
mod listen;
mod metrics;
mod nul;
mod parse;
mod pause;
pub mod template;
mod traffic;
mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::deploy::rollout::Rollout;
use parse::{absolute, check_unix_path, line_col, located, parse_mode, Spanned};

pub use app::{fd_names, parse_signal, AppConfig, DEFAULT_DRAIN_DELAY};
pub use compare::CompareConfig;
pub use health::{HealthConfig, DEFAULT_ATTEMPT_TIMEOUT};
pub use hooks::HooksConfig;
pub use listen::{ListenAddr, ListenConfig, PROBE_FD_NAME};
pub use parse::parse_duration;
pub use pause::PauseConfig;
pub use traffic::TrafficMode;
pub use watch::WatchConfig;

/// A validated config; every path in it is absolute.
///
/// A reload (SIGHUP) applies everything but [`fixed`](Config::fixed).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// What only a restart of bgd changes.
    pub fixed: Fixed,
    /// `[app]`: what each color runs.
    pub app: AppConfig,
    /// `[health]`: when a color is ready, and whether it stays healthy.
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
    /// `[hooks]`: commands run around a release (none unless set).
    pub hooks: HooksConfig,
    /// `[pause]`: the maintenance page of `bgctl pause --max`.
    pub pause: PauseConfig,
    /// `[compare]`: what `bgctl compare` asks both builds.
    pub compare: CompareConfig,
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
        nul::refuse(&src)?;
        check_name(&src, &raw.name)?;
        let root = src.dir.join(&raw.root);
        let control = control_socket(&src, raw.control.as_ref(), &root, raw.name.span())?;
        let listen = listen::parse(&src, &raw.listen)?;
        app::check_command(&src, &raw.app)?;
        let mut warnings = Vec::new();
        let health = health::parse(&src, raw.health, &mut warnings)?;
        let watch = raw.watch.map(|w| watch::parse(&src, w)).transpose()?;
        let shared = shared(&src, raw.shared.as_ref())?;
        let hooks = hooks::parse(&src, raw.hooks)?;
        let control_group = control_group(&src, raw.control_group.as_ref())?;
        let identity = app::identity(&src, &raw.app)?;
        let hardlink = stage(&src, raw.stage.as_ref(), identity.is_some())?;
        let keep = keep(&src, raw.keep.as_ref())?;
        app::check_runs_as(&src, &raw.app, identity.as_ref())?;
        let control_mode = match raw.control_mode {
            Some(m) => parse_mode(m.get_ref()).map_err(|e| src.fail(m.span(), e))?,
            None if control_group.is_some() => 0o660,
            None => 0o600,
        };
        let raw_traffic = raw.traffic.unwrap_or_default();
        let traffic = traffic::mode(&src, raw_traffic.mode.as_ref())?;
        let modes = (traffic, listen.as_slice());
        let rollout = traffic::rollout_policy(&src, &raw_traffic, modes, &health, &mut warnings)?;
        let compare = compare::parse(&src, raw.compare, &health)?;
        let fds = fd_names(&listen, traffic, health.http.is_some());
        app::check_templates(&src, &raw.app, &fds)?;
        let metrics = metrics::parse(&src, raw.metrics)?;
        let pause = pause::parse(&src, raw.pause)?;
        let app = app::build(&src, raw.app, identity, &mut warnings);
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
            pause,
            compare,
            warnings,
        })
    }

    /// [`fd_names`] of this config: what `{fd:NAME}` templates expand against.
    pub fn fd_names(&self) -> Vec<&str> {
        fd_names(
            &self.fixed.listen,
            self.fixed.traffic,
            self.health.http.is_some(),
        )
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

/// `name`: not blank.
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

/// `control_group`, looked up in the group database.
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

/// The whole file as serde reads it: the top-level keys, and each
/// section's own raw table (defined in the section's file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Spanned<String>,
    root: PathBuf,
    control: Option<Spanned<PathBuf>>,
    control_mode: Option<Spanned<String>>,
    control_group: Option<Spanned<String>>,
    #[serde(default)]
    listen: Vec<listen::RawListen>,
    app: app::RawApp,
    health: health::RawHealth,
    watch: Option<watch::RawWatch>,
    shared: Option<Spanned<Vec<String>>>,
    stage: Option<Spanned<String>>,
    keep: Option<Spanned<i64>>,
    hooks: Option<hooks::RawHooks>,
    traffic: Option<traffic::RawTraffic>,
    metrics: Option<metrics::RawMetrics>,
    pause: Option<pause::RawPause>,
    compare: Option<compare::RawCompare>,
}

/// Every key serde accepts in `section`, in the order the raw struct
/// declares them, taken from serde itself rather than a hand list: a
/// config with an unknown key in that section is refused (every raw table
/// is `deny_unknown_fields`), and serde's error lists what it expected.
/// `section` is `""` for the top level, `"listen"` for `[[listen]]`, else
/// the table's name (`"app"`, `"health"`, `"traffic"`, `"watch"`,
/// `"hooks"`, `"metrics"`, `"compare"`). Panics for a section serde does not know.
#[cfg(test)]
pub(crate) fn keys_of(section: &str) -> Vec<String> {
    const UNKNOWN: &str = "keys_of_no_such_key";
    let text = match section {
        "" => format!("{UNKNOWN} = 1\n"),
        "listen" => format!("[[listen]]\n{UNKNOWN} = 1\n"),
        table => format!("[{table}]\n{UNKNOWN} = 1\n"),
    };
    let e = match Config::parse(Path::new("/keys_of.toml"), &text) {
        Ok(_) => panic!("[{section}] accepted the key {UNKNOWN}"),
        Err(e) => e.to_string(),
    };
    // serde: "unknown field `x`, expected `a`", "... expected `a` or `b`",
    // "... expected one of `a`, `b`, `c`", or "... there are no fields".
    let (_, expected) = e
        .split_once(&format!("unknown field `{UNKNOWN}`"))
        .unwrap_or_else(|| panic!("[{section}] is not a section serde knows: {e}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::*;

    /// A config that parses, for the tests of every section.
    pub(super) const GOOD: &str = r#"
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

    /// `text` parsed as `/etc/bgd/app.toml`; an error as its message.
    pub(super) fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/bgd/app.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn keep_is_five_unless_said_and_never_negative() {
        assert_eq!(parse(GOOD).unwrap().keep, DEFAULT_KEEP);
        assert_eq!(parse(&format!("keep = 2\n{GOOD}")).unwrap().keep, 2);
        let e = parse(&format!("keep = -1\n{GOOD}")).unwrap_err();
        assert!(e.contains("app.toml:1:8: keep = -1: write how many"), "{e}");
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

    /// [`keys_of`] reads serde's own list for each section: never empty,
    /// and naming keys every config writer knows.
    #[test]
    fn keys_of_lists_what_serde_accepts_in_each_section() {
        let known: [(&str, &[&str]); 10] = [
            ("", &["name", "root", "control", "keep", "app", "listen"]),
            (
                "listen",
                &["name", "address", "mode", "backlog", "nonblocking"],
            ),
            (
                "app",
                &["command", "user", "env", "drain_timeout", "cpu_weight"],
            ),
            ("health", &["http", "notify", "exec", "timeout", "failures"]),
            (
                "traffic",
                &["mode", "standby", "bake", "steps", "testers", "canary_by"],
            ),
            ("watch", &["path", "settle", "marker", "ignore"]),
            ("hooks", &["prepare", "after_live", "timeout"]),
            ("metrics", &["listen"]),
            ("pause", &["page"]),
            ("compare", &["paths"]),
        ];
        for (section, names) in known {
            let keys = keys_of(section);
            assert!(!keys.is_empty(), "[{section}]");
            for name in names {
                assert!(
                    keys.iter().any(|k| k == name),
                    "[{section}] {name}: {keys:?}"
                );
            }
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), keys.len(), "[{section}] {keys:?}");
        }
        assert_eq!(keys_of("metrics"), ["listen"]);
    }

    /// docs/config.md names every key the code accepts, each under its
    /// section's heading (`## Top level`, `## [[listen]]`, `## [app]`, ...),
    /// in a table row that starts with the key in backticks; and it names
    /// no key the code does not accept. The keys come from serde itself
    /// ([`keys_of`]), so a new key fails here until it is documented.
    #[test]
    fn docs_config_md_names_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md");
        let text = std::fs::read_to_string(path).expect("docs/config.md");
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                sections.push((h.trim().to_string(), Vec::new()));
            } else if let (Some(rest), Some((_, keys))) =
                (line.strip_prefix("| `"), sections.last_mut())
            {
                if let Some((key, _)) = rest.split_once('`') {
                    keys.push(key.to_string());
                }
            }
        }
        let documented = |heading: &str| {
            sections
                .iter()
                .find(|(h, _)| h == heading)
                .map(|(_, k)| k.clone())
        };
        let top = documented("Top level").expect("docs/config.md has no `## Top level`");
        let mut problems = Vec::new();
        let mut tables = Vec::new();
        for key in keys_of("") {
            let heading = [format!("[{key}]"), format!("[[{key}]]")]
                .into_iter()
                .find(|h| documented(h).is_some());
            match heading {
                Some(h) => tables.push((key, h)),
                None if top.contains(&key) => {}
                None => problems.push(format!("`{key}` (top level)")),
            }
        }
        let mut expected: Vec<String> = vec!["Top level".into()];
        for (table, heading) in &tables {
            let docs = documented(heading).unwrap_or_default();
            for key in keys_of(table) {
                if !docs.contains(&key) {
                    problems.push(format!("`{key}` under `## {heading}`"));
                }
            }
            for key in docs.iter().filter(|k| !keys_of(table).contains(k)) {
                problems.push(format!(
                    "`{key}` under `## {heading}` is no key of the code"
                ));
            }
            expected.push(heading.clone());
        }
        for (h, _) in &sections {
            if !expected.contains(h) {
                problems.push(format!("`## {h}` is no section of the code"));
            }
        }
        assert!(
            problems.is_empty(),
            "docs/config.md must name every config key the code accepts, and only those: {}",
            problems.join(", ")
        );
    }
}
