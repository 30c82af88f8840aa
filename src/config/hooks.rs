//! `[hooks]`: shell commands run before a release's app starts and after
//! its swap.

use std::time::Duration;

use serde::Deserialize;

use super::parse::HumanDuration;
use super::{ConfigError, Source};

/// `[hooks]`: shell commands run around a release.
#[derive(Debug, Clone, Default)]
pub struct HooksConfig {
    /// Run in order in the staged color's directory before the app starts;
    /// the first that fails (or runs past `timeout`) aborts the release.
    pub prepare: Vec<String>,
    /// Run in order after the swap; a failure is logged, not fatal.
    pub after_live: Vec<String>,
    /// `hooks.timeout`: how long each command may run before it is killed
    /// (default 300 s; enforced in `pipeline::hooks`).
    pub timeout: Duration,
}

/// `[hooks]` as serde reads it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    #[serde(default)]
    prepare: Vec<String>,
    #[serde(default)]
    after_live: Vec<String>,
    timeout: Option<HumanDuration>,
}

/// `[hooks]`: no empty command.
pub(super) fn parse(src: &Source, h: Option<RawHooks>) -> Result<HooksConfig, ConfigError> {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{parse, GOOD};

    /// No hooks and 5 minutes each unless said; a blank command is refused
    /// for the section as a whole.
    #[test]
    fn hooks_default_to_none_and_refuse_a_blank_command() {
        let c = parse(GOOD).unwrap();
        assert!(c.hooks.prepare.is_empty() && c.hooks.after_live.is_empty());
        assert_eq!(c.hooks.timeout, Duration::from_secs(300));
        let h = parse(&format!(
            "{GOOD}\n[hooks]\nprepare = [\"make\"]\ntimeout = \"1m\"\n"
        ))
        .unwrap();
        assert_eq!(h.hooks.prepare, ["make"]);
        assert_eq!(h.hooks.timeout, Duration::from_secs(60));
        let e = parse(&format!("{GOOD}\n[hooks]\nafter_live = [\" \"]\n")).unwrap_err();
        assert_eq!(
            e,
            "/etc/bgd/app.toml: [hooks] has an empty command: remove it or write the command"
        );
    }
}
