//! `[health]`: how bgd tells that a color is ready, and (with `interval`)
//! that it stays healthy.

use std::time::Duration;

use serde::Deserialize;

use super::parse::{HumanDuration, Spanned};
use super::{ConfigError, Source};

/// `[health]`: at least one of `http`, `notify` and `exec`; a color is
/// ready when all that are set pass.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// `health.http`: path for a GET through the color's private probe
    /// socket; ready on 2xx.
    pub http: Option<String>,
    /// `health.notify`: wait for `READY=1` on the NOTIFY_SOCKET bgd gives the color.
    pub notify: bool,
    /// `health.exec`: a command run in the color's directory until it exits 0.
    pub exec: Option<Vec<String>>,
    /// Where `health.exec` is written (`file:line:col`), for the errors
    /// of checks that need the running build (`pipeline::runnable`).
    pub exec_at: Option<String>,
    /// `health.timeout`: all checks must pass within it; never zero
    /// (default 30 s).
    pub timeout: Duration,
    /// `health.attempt_timeout`: how long one `health.http` attempt of the
    /// readiness wait may take to connect and get a status line before it
    /// is given up and tried again; never zero (default
    /// [`DEFAULT_ATTEMPT_TIMEOUT`], 2 s). An endpoint slower than this
    /// never passes, however long `health.timeout` is.
    pub attempt_timeout: Duration,
    /// `health.interval`: once a color is ready, check it (http and exec)
    /// again this often while it is live or a canary; zero (the default)
    /// checks only its readiness.
    pub interval: Duration,
    /// `health.failures`: this many failed checks in a row make a color
    /// unhealthy (default 3, at least 1).
    pub failures: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    http: Option<Spanned<String>>,
    #[serde(default)]
    notify: bool,
    exec: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<HumanDuration>>,
    attempt_timeout: Option<Spanned<HumanDuration>>,
    interval: Option<Spanned<HumanDuration>>,
    failures: Option<Spanned<u32>>,
}

/// `health.attempt_timeout` when the config does not say.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// `[health]`: at least one check, each well-formed; what is allowed but
/// likely a mistake goes to `warnings`.
pub(super) fn parse(
    src: &Source,
    h: RawHealth,
    warnings: &mut Vec<String>,
) -> Result<HealthConfig, ConfigError> {
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
    let timeout = h
        .timeout
        .as_ref()
        .map_or(Duration::from_secs(30), |d| d.get_ref().0);
    let attempt_timeout = attempt_timeout(src, h.attempt_timeout.as_ref(), timeout, warnings)?;
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
        exec_at: h.exec.as_ref().map(|e| src.location(e.span().start)),
        exec: h.exec.map(|s| s.into_inner()),
        timeout,
        attempt_timeout,
    })
}

/// `health.attempt_timeout`: more than zero; one longer than
/// `health.timeout` is cut by it (a warning).
fn attempt_timeout(
    src: &Source,
    a: Option<&Spanned<HumanDuration>>,
    timeout: Duration,
    warnings: &mut Vec<String>,
) -> Result<Duration, ConfigError> {
    let Some(a) = a else {
        return Ok(DEFAULT_ATTEMPT_TIMEOUT.min(timeout));
    };
    let d = a.get_ref().0;
    if d.is_zero() {
        return Err(src.fail(a.span(), "health.attempt_timeout must be more than 0s: no attempt could get an answer; give each one time, such as \"5s\"".into()));
    }
    if d > timeout {
        warnings.push(src.locate(
            a.span(),
            &format!(
                "health.attempt_timeout ({}) is longer than health.timeout ({}): an attempt is cut at health.timeout; raise both",
                humantime::format_duration(d),
                humantime::format_duration(timeout)
            ),
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{parse, GOOD};

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
        assert_eq!(c.health.attempt_timeout, Duration::from_millis(1));
    }

    /// 2 s unless said; never zero; longer than `health.timeout` warns.
    #[test]
    fn the_attempt_timeout_is_a_key_of_its_own() {
        let with = |t: &str| parse(&GOOD.replace("\"/healthz\"", &format!("\"/healthz\"\n{t}")));
        assert_eq!(
            with("").unwrap().health.attempt_timeout,
            Duration::from_secs(2)
        );
        let c = with("attempt_timeout = \"5s\"\ntimeout = \"60s\"").unwrap();
        assert_eq!(c.health.attempt_timeout, Duration::from_secs(5));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let e = with("attempt_timeout = \"0s\"").unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/app.toml:16:19: health.attempt_timeout must be more than 0s"),
            "{e}"
        );
        let c = with("attempt_timeout = \"40s\"").unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(
            c.warnings[0].contains("longer than health.timeout (30s)"),
            "{:?}",
            c.warnings
        );
    }
}
