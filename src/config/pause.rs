//! `[pause]`: what `bgctl pause --max` puts up once a pause lasts that long.

use std::path::PathBuf;

use serde::Deserialize;

use super::parse::Spanned;
use super::{ConfigError, Source};

/// `[pause]` in the config.
#[derive(Debug, Clone, Default)]
pub struct PauseConfig {
    /// `pause.page`: the maintenance page build (absolute), released into
    /// the waiting color once a pause has lasted `--max` (when `bgctl
    /// pause` names no `--page`). It runs under the app's `[app]` command.
    pub page: Option<PathBuf>,
}

/// `[pause]` as serde reads it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPause {
    page: Option<Spanned<PathBuf>>,
}

/// `[pause]`: `page` resolves against the config's directory and must be
/// a directory.
pub(super) fn parse(src: &Source, p: Option<RawPause>) -> Result<PauseConfig, ConfigError> {
    let Some(page) = p.and_then(|p| p.page) else {
        return Ok(PauseConfig::default());
    };
    let path = src.dir.join(page.get_ref());
    if !path.is_dir() {
        return Err(src.fail(
            page.span(),
            format!(
                "pause.page {} is not a directory: give the directory of a maintenance build that the [app] command runs (examples/hello/maintenance is one), or remove the key",
                path.display()
            ),
        ));
    }
    Ok(PauseConfig { page: Some(path) })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str = "name = \"hello\"\nroot = \"/tmp/bgd-hello\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n[app]\ncommand = [\"./server\"]\nallow_root = true\n[health]\nhttp = \"/healthz\"\n";

    fn parse(dir: &Path, text: &str) -> Result<Config, String> {
        Config::parse(&dir.join("bgd.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_page_resolves_against_the_config_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("maintenance")).unwrap();
        let c = parse(
            dir.path(),
            &format!("{BASE}[pause]\npage = \"maintenance\"\n"),
        )
        .unwrap();
        assert_eq!(c.pause.page, Some(dir.path().join("maintenance")));
        assert_eq!(parse(dir.path(), BASE).unwrap().pause.page, None);
        let e = parse(dir.path(), &format!("{BASE}[pause]\npage = \"nope\"\n")).unwrap_err();
        assert!(e.contains("bgd.toml:12:8: pause.page"), "{e}");
        assert!(e.contains("is not a directory"), "{e}");
    }
}
