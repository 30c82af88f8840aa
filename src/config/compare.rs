//! `[compare]`: what `bgctl compare` asks the live build and the one beside
//! it (issue 23).

use serde::Deserialize;

use super::health::HealthConfig;
use super::parse::Spanned;
use super::{ConfigError, Source};
use crate::deploy::compare::{check_path, MAX_PATHS};

/// `[compare]`, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompareConfig {
    /// `compare.paths`: the paths `bgctl compare` asks when it is given
    /// none; by default `health.http`'s path (none without it).
    pub paths: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCompare {
    paths: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[compare] paths`: absolute paths, at most [`MAX_PATHS`]; without the
/// key, `health.http`.
pub(super) fn parse(
    src: &Source,
    c: Option<RawCompare>,
    health: &HealthConfig,
) -> Result<CompareConfig, ConfigError> {
    let Some(list) = c.and_then(|c| c.paths) else {
        return Ok(CompareConfig {
            paths: health.http.iter().cloned().collect(),
        });
    };
    if list.get_ref().is_empty() {
        return Err(src.fail(list.span(), "compare.paths is empty: list the paths `bgctl compare` asks both builds, such as [\"/\", \"/api/items?limit=5\"], or remove the key to ask health.http's".into()));
    }
    if list.get_ref().len() > MAX_PATHS {
        return Err(src.fail(
            list.span(),
            format!(
                "compare.paths has {} paths: list at most {MAX_PATHS}",
                list.get_ref().len()
            ),
        ));
    }
    let mut paths = Vec::new();
    for (i, p) in list.get_ref().iter().enumerate() {
        check_path(p.get_ref())
            .map_err(|e| src.fail(p.span(), format!("compare.paths[{i}]: {e}")))?;
        paths.push(p.get_ref().clone());
    }
    Ok(CompareConfig { paths })
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, GOOD};

    #[test]
    fn compare_asks_the_health_path_unless_told() {
        assert_eq!(parse(GOOD).unwrap().compare.paths, ["/healthz"]);
        let c = parse(&format!(
            "{GOOD}\n[compare]\npaths = [\"/\", \"/api/items?limit=5\"]\n"
        ))
        .unwrap();
        assert_eq!(c.compare.paths, ["/", "/api/items?limit=5"]);
        let exec = GOOD.replace("http = \"/healthz\"", "exec = [\"./check\"]");
        assert!(parse(&exec).unwrap().compare.paths.is_empty());
    }

    #[test]
    fn compare_paths_must_be_absolute() {
        for (paths, says) in [
            ("[\"/\", \"api/items\"]", "app.toml:18:15: compare.paths[1]: compare path \"api/items\" is not absolute: start it with '/'"),
            ("[]", "app.toml:18:9: compare.paths is empty"),
            ("[\"/a b\"]", "has a blank"),
        ] {
            let e = parse(&format!("{GOOD}\n[compare]\npaths = {paths}\n")).unwrap_err();
            assert!(e.contains(says), "{paths}: {e}");
        }
    }
}
