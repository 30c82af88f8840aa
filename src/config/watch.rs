//! `[watch]`: release on its own when a build directory changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobSet;
use serde::Deserialize;

use super::parse::{HumanDuration, Spanned};
use super::{ConfigError, Source};

/// `[watch]` in the config: bgd releases on its own when `path` changes.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The build directory (absolute).
    pub path: PathBuf,
    /// `watch.settle`: quiet period after the last change before the
    /// release starts (default 1 s).
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

/// `[watch]` as serde reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    path: PathBuf,
    settle: Option<HumanDuration>,
    marker: Option<Spanned<String>>,
    ignore: Option<Spanned<Vec<String>>>,
}

/// `[watch]`: the globs compiled, the marker inside the watched tree.
pub(super) fn parse(src: &Source, w: RawWatch) -> Result<WatchConfig, ConfigError> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::tests::{parse, GOOD};

    /// `path` resolves against the config file's directory, `settle` is 1 s
    /// unless set, and the marker stays inside the watched tree.
    #[test]
    fn watch_resolves_its_path_and_keeps_the_marker_inside() {
        let with = |keys: &str| parse(&format!("{GOOD}\n[watch]\npath = \"build\"\n{keys}\n"));
        let w = with("").unwrap().watch.unwrap();
        assert_eq!(w.path, Path::new("/etc/bgd/build"));
        assert_eq!(w.settle, Duration::from_secs(1));
        assert!(w.marker.is_none() && w.ignore_globs.is_empty());
        let m = with("marker = \".release\"\nignore = [\"*.tmp\"]")
            .unwrap()
            .watch
            .unwrap();
        assert_eq!(m.marker.as_deref(), Some(Path::new(".release")));
        assert!(m.ignore.is_match("a.tmp"));
        assert!(!w.same_as(&m) && m.same_as(&m.clone()));
        let e = with("marker = \"../x\"").unwrap_err();
        assert!(
            e.contains("watch.marker \"../x\" must be a path inside watch.path"),
            "{e}"
        );
        let e = with("ignore = [\"a[\"]").unwrap_err();
        assert!(e.contains("watch.ignore: bad glob \"a[\""), "{e}");
    }
}
