//! Kept releases on disk: how `bgctl releases` shows them (with their
//! sizes), and taking over a root written before releases were kept. Which
//! copies stay and where a rollback goes are the core's rules
//! (`deploy::kept`).

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::deploy::kept::state_word;
use crate::deploy::state::{Kept, State};
use crate::pipeline::walk;
use crate::store::layout;

/// One release as `bgctl releases` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Listed {
    pub id: u64,
    pub label: Option<String>,
    pub source: String,
    pub fingerprint: Option<String>,
    /// Bytes on disk that this copy adds to the older kept ones (files it
    /// shares with them by hard link are counted once, with the oldest).
    pub size: u64,
    /// When its copy was made, RFC 3339.
    pub made: String,
    /// `live`, `standby`, `kept` or `failed`.
    pub state: String,
    /// Its kept copy no longer matches its manifest: what differs. A
    /// rollback to it is refused, and `fingerprint` is left out (it
    /// describes the build, which this copy no longer is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// `bgctl releases`: every kept or failed release, oldest first, and the
/// space they use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Listing {
    pub releases: Vec<Listed>,
    /// `keep` from the config.
    pub keep: usize,
    /// Bytes the kept copies take together.
    pub kept_bytes: u64,
    /// Bytes the two colors' directories take.
    pub colors_bytes: u64,
    /// Bytes free on the filesystem of the root.
    pub free_bytes: u64,
}

/// The listing of `state`'s releases with their sizes on disk. Blocking:
/// it walks every kept copy.
pub fn listing(root: &Path, state: &State, standby: Option<u64>, keep: usize) -> Listing {
    let live = state.live.and_then(|c| state.build(c)).map(|b| b.release);
    let mut seen = HashSet::new();
    let mut list: Vec<&Kept> = state.releases.iter().collect();
    list.sort_by_key(|k| k.release);
    let releases: Vec<Listed> = list
        .into_iter()
        .map(|k| {
            let damaged = (!k.failed).then(|| damage(root, k.release)).flatten();
            Listed {
                id: k.release,
                label: k.label.clone(),
                source: k.source.clone(),
                fingerprint: k.fingerprint.clone().filter(|_| damaged.is_none()),
                size: disk_usage(&layout::release_dir(root, k.release), &mut seen),
                made: k.made.clone(),
                state: state_word(k, live, standby).into(),
                damaged,
            }
        })
        .collect();
    let kept_bytes = releases.iter().map(|r| r.size).sum();
    let colors_bytes = Color::BOTH
        .iter()
        .map(|c| disk_usage(&layout::color_dir(root, *c), &mut HashSet::new()))
        .sum();
    Listing {
        releases,
        keep,
        kept_bytes,
        colors_bytes,
        free_bytes: crate::pipeline::stage::free_bytes(root).unwrap_or(0),
    }
}

/// What differs between kept release `id`'s copy and its manifest, if
/// anything does.
fn damage(root: &Path, id: u64) -> Option<String> {
    use crate::pipeline::stage::manifest::{check, describe, Check};
    let (dir, manifest) = (
        layout::release_dir(root, id),
        layout::release_manifest(root, id),
    );
    match check(&dir, &manifest) {
        Ok(Check::Differs(found, count)) => Some(describe(&found, count)),
        Ok(_) => None,
        Err(e) => Some(format!("cannot be checked: {e}")),
    }
}

/// Bytes the tree at `dir` takes on disk, counting each inode not in
/// `seen` once (and adding it there). A missing tree takes nothing. The
/// walk is iterative (`walk.rs`), so no depth overflows a stack.
pub fn disk_usage(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(top) = walk::lstat(dir) else {
        return 0;
    };
    let mut bytes = 0;
    let mut count = |m: &walk::Meta| {
        if seen.insert((m.dev, m.ino)) {
            bytes += m.blocks * 512;
        }
    };
    count(&top);
    if top.is_dir() {
        let _ = walk::walk::<std::io::Error>(dir, None, |e| {
            count(e.meta);
            Ok(true)
        });
    }
    bytes
}

/// At start, before any color starts: takes over a root from an older bgd
/// ([`take_over`], saving the state if it changed) and removes copies the
/// state does not name.
pub fn at_start(root: &Path, state: &mut State) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if take_over(root, state)? {
        crate::store::state::save(state, root)
            .with_context(|| format!("cannot write {}", layout::state_file(root).display()))?;
    }
    remove_unnamed(root, state)
        .with_context(|| format!("cannot clean {}", layout::releases_dir(root).display()))
}

/// Takes over a root written before releases were kept (`blue/`, `green/`,
/// `state.json` without `releases`): each color's build that went live is
/// copied into `root/releases/<id>` (the live one first), so that nothing
/// is lost and rollbacks have their target. Also forgets records whose copy
/// is gone. Blocking; run at start, before any color starts.
fn take_over(root: &Path, state: &mut State) -> anyhow::Result<bool> {
    let mut changed = false;
    let order = state
        .live
        .map_or(Color::BOTH.to_vec(), |l| vec![l, l.other()]);
    for color in order {
        let Some(build) = state.build(color).cloned() else {
            continue;
        };
        if !build.went_live || state.kept(build.release).is_some() {
            continue;
        }
        let dir = layout::color_dir(root, color);
        if !dir.is_dir() {
            continue;
        }
        tracing::info!(release = build.release, %color, "keeping the build of {} in {} (taking over a root from an older bgd)", dir.display(), layout::releases_dir(root).display());
        crate::pipeline::stage::keep_copy_of(root, &dir, build.release)?;
        state.releases.push(Kept::of(&build));
        changed = true;
    }
    let before = state.releases.len();
    state
        .releases
        .retain(|k| k.failed || layout::release_dir(root, k.release).is_dir());
    changed |= state.releases.len() != before;
    state.releases.sort_by_key(|k| k.release);
    Ok(changed)
}

/// Removes every copy in `root/releases` that `state` does not name, so
/// that a copy set aside by a bgd that died mid-way does not stay forever.
fn remove_unnamed(root: &Path, state: &State) -> io::Result<()> {
    for e in fs::read_dir(layout::releases_dir(root))
        .into_iter()
        .flatten()
    {
        let e = e?;
        let name = e.file_name();
        if let Some(id) = name.to_str().and_then(layout::kept_release_id) {
            if state.kept(id).is_none_or(|k| k.failed) {
                tracing::info!("removing {}: no release names it", e.path().display());
                crate::pipeline::stage::remove_kept(root, id);
            }
        }
        // A manifest whose copy is gone (bgd died between the two).
        if let Some(id) = name.to_str().and_then(layout::manifest_release_id) {
            if !layout::release_dir(root, id).is_dir() {
                crate::pipeline::stage::remove_tree(&e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
