//! `[app]`: the program each color runs, its environment, the user it runs
//! as, how it stops, and its cgroup limits; and `{fd:NAME}` templates in
//! its arguments and environment.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

use super::identity::{self, Identity};
use super::listen::{ListenConfig, PROBE_FD_NAME};
use super::parse::{HumanDuration, Spanned};
use super::traffic::TrafficMode;
use super::{ConfigError, Source};

/// `[app]`, checked: what bgd starts in each color and how it stops it.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `app.command`: program and arguments. A program with a `/`
    /// resolves inside the color's directory; a bare name is looked up in
    /// `PATH`.
    pub command: Vec<String>,
    /// Where `app.command` is written (`file:line:col`), for the errors of
    /// checks that need the running build (`pipeline::runnable`).
    pub command_at: String,
    /// `app.env`: variables added to the app's environment, as written
    /// (`{fd:NAME}` templates are expanded at spawn).
    pub env: BTreeMap<String, String>,
    /// `app.stop_signal`: what asks the app to drain and exit (default
    /// SIGTERM; never SIGKILL or SIGSTOP).
    pub stop_signal: Signal,
    /// `app.drain_timeout`: how long a stopping color may drain before
    /// SIGKILL (default 30 s); zero is allowed, with a warning in
    /// [`Config::warnings`](super::Config::warnings).
    pub drain_timeout: Duration,
    /// `app.drain_delay`, gate mode only: after the swap, the longest bgd
    /// waits for the old color's accept queue to empty and its connections
    /// to end on their own (clients close idle keep-alive connections;
    /// servers end one after N requests) before it sends the stop signal.
    /// Many servers drop idle keep-alive connections at their stop signal,
    /// and a client that just sent a request on one sees it reset.
    /// Default [`DEFAULT_DRAIN_DELAY`] (5 s).
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

/// `[app]` as serde reads it, with the spans its errors point at.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
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

/// A stop signal by name, in any case, with or without `SIG`: "SIGTERM",
/// "TERM" or "term". SIGKILL and SIGSTOP are refused: the app could not
/// drain.
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

/// `app.command` and `app.env`; the rest of `[app]` is checked later.
pub(super) fn check_command(src: &Source, app: &RawApp) -> Result<(), ConfigError> {
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

/// `{fd:NAME}` templates in `app.command` arguments and `app.env` values:
/// well-formed, and naming one of `fds` ([`crate::config::template`]).
pub(super) fn check_templates(src: &Source, app: &RawApp, fds: &[&str]) -> Result<(), ConfigError> {
    let values = app
        .command
        .get_ref()
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("app.command[{i}]"), a))
        .chain(app.env.iter().map(|(k, v)| (format!("app.env.{k}"), v)));
    for (key, value) in values {
        if let Err(e) = super::template::expand(value.get_ref(), fds) {
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
pub(super) fn identity(src: &Source, app: &RawApp) -> Result<Option<Identity>, ConfigError> {
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
pub(super) fn check_runs_as(
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
pub(super) fn build(
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
        command_at: src.location(raw.command.span().start),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::Signal;

    use super::parse_signal;
    use crate::config::tests::{parse, GOOD};

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

    #[test]
    fn signal_names_in_any_case() {
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("SIGQUIT").unwrap(), Signal::SIGQUIT);
    }
}
