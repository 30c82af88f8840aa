//! bgd's root directory: where each file and directory bgd keeps lives.
//!
//! ```text
//! root/
//!   blue/  green/           the build each color runs from
//!   live -> blue|green      symlink to the live color's directory
//!   state.json              what survives a restart (see `state`)
//!   history.json            the last releases (see `history`)
//!   bgd.lock                held (flock) by the one bgd running on this root
//!   shared/                 `shared` entries, the same for both colors
//!   run/<color>.pgid        the process group of a running color
//!   run/<color>.notify      the color's NOTIFY_SOCKET (`health.notify`)
//!   releases/<id>/          the kept copy of release <id>, never run from
//!   releases/<id>.manifest  what releases/<id> held when it was made
//!   releases/.new-<id>/     release <id>'s kept copy being made
//!   releases/.trash-<id>/   a kept copy set aside to be removed
//!   operator.json           what the operator decided (watch pause, holds)
//!   .staging-<id>/          a build being copied for release <id>
//!   .trash-<id>/            a color's previous build, waiting to be removed
//! ```
//!
//! Only paths are built here; nothing is read or written.

use std::path::{Path, PathBuf};

use crate::color::Color;

/// The directory `color` runs from: `root/blue` or `root/green`. It holds
/// the build last staged for that color, swapped in whole.
pub fn color_dir(root: &Path, color: Color) -> PathBuf {
    root.join(color.as_str())
}

/// `root/live`: a symlink to the live color's directory (relative, `blue`
/// or `green`), for tools that want the live build without asking bgd.
pub fn live_link(root: &Path) -> PathBuf {
    root.join("live")
}

/// `root/.live.tmp`: the new `live` symlink, made here and renamed over
/// [`live_link`] so the switch is atomic.
pub fn live_link_tmp(root: &Path) -> PathBuf {
    root.join(".live.tmp")
}

/// `root/state.json`: the live color, the build each color holds and the
/// next release id; replaced whole on every change.
pub fn state_file(root: &Path) -> PathBuf {
    root.join("state.json")
}

/// `root/history.json`: the records of the last releases and rollbacks.
pub fn history_file(root: &Path) -> PathBuf {
    root.join("history.json")
}

/// `root/bgd.lock`: locked by the bgd that runs on this root, so that a
/// second one refuses to start. Its content is empty.
pub fn lock_file(root: &Path) -> PathBuf {
    root.join("bgd.lock")
}

/// The name of the directory for `shared` entries, relative to the root.
pub const SHARED: &str = "shared";

/// `root/shared`: the `shared` entries of the builds; each color's build
/// holds relative symlinks into it, so the data survives releases.
pub fn shared_dir(root: &Path) -> PathBuf {
    root.join(SHARED)
}

/// `root/run`: per-color runtime records ([`run_record`]), the relays'
/// sockets ([`relay_socket`]) and [`notify_socket`].
pub fn run_dir(root: &Path) -> PathBuf {
    root.join("run")
}

/// `root/run/<color>.json`: the running color's main process (pid, start
/// time, release), so that a bgd started after a crash or a reexec can
/// adopt it (`adoption.rs`).
pub fn run_record(root: &Path, color: Color) -> PathBuf {
    run_dir(root).join(format!("{color}.json"))
}

/// `root/run/<color>.relay`: the Unix socket of the color's relay
/// (`relay.rs`), which holds its output pipes and the listening sockets.
pub fn relay_socket(root: &Path, color: Color) -> PathBuf {
    run_dir(root).join(format!("{color}.relay"))
}

/// `root/run/hold.sock`: the Unix socket of a pause's holder (`hold.rs`),
/// which keeps a copy of every listening socket while a pause lasts.
pub fn hold_socket(root: &Path) -> PathBuf {
    run_dir(root).join("hold.sock")
}

/// `root/run/group.json`: the order of each TCP entry's sockets in its
/// `SO_REUSEPORT` group, for a bgd that takes the sockets back.
pub fn group_order(root: &Path) -> PathBuf {
    run_dir(root).join("group.json")
}

/// `root/run/hold.json`: the holder's pid and start time.
pub fn hold_record(root: &Path) -> PathBuf {
    run_dir(root).join("hold.json")
}

/// `root/run/<color>.notify`: the datagram socket given to the color as
/// NOTIFY_SOCKET, on which it reports `READY=1`.
pub fn notify_socket(root: &Path, color: Color) -> PathBuf {
    run_dir(root).join(format!("{color}.notify"))
}

/// The name of the directory of kept releases, relative to the root.
pub const RELEASES: &str = "releases";

/// `root/releases`: one pristine copy per kept release (see `stage`): a
/// color is staged from it and never runs in it.
pub fn releases_dir(root: &Path) -> PathBuf {
    root.join(RELEASES)
}

/// `root/releases/<id>`: release `id`'s kept copy.
pub fn release_dir(root: &Path, id: u64) -> PathBuf {
    releases_dir(root).join(id.to_string())
}

/// `root/releases/<id>.manifest`: every entry of release `id`'s kept copy
/// as it was made, checked before the copy goes live again.
pub fn release_manifest(root: &Path, id: u64) -> PathBuf {
    releases_dir(root).join(format!("{id}{MANIFEST_SUFFIX}"))
}

/// The release id an entry of [`releases_dir`] names, if it is a
/// [`release_manifest`].
pub fn manifest_release_id(name: &str) -> Option<u64> {
    name.strip_suffix(MANIFEST_SUFFIX)?.parse().ok()
}

const MANIFEST_SUFFIX: &str = ".manifest";

/// `root/releases/.new-<id>`: release `id`'s kept copy while it is made;
/// renamed to [`release_dir`] once it is whole and on disk.
pub fn release_new_dir(root: &Path, id: u64) -> PathBuf {
    releases_dir(root).join(format!("{NEW_PREFIX}{id}"))
}

/// `root/releases/.trash-<id>`: a kept copy that is no longer kept, set
/// aside (one rename) to be removed off the release's path.
pub fn release_trash_dir(root: &Path, id: u64) -> PathBuf {
    releases_dir(root).join(format!("{TRASH_PREFIX}{id}"))
}

/// The release id an entry of [`releases_dir`] names, if it is a whole
/// kept copy (not one being made or removed).
pub fn kept_release_id(name: &str) -> Option<u64> {
    name.parse().ok()
}

/// `root/operator.json`: what the operator decided and bgd must not
/// forget when it restarts: auto-release paused, trees held back.
pub fn operator_file(root: &Path) -> PathBuf {
    root.join("operator.json")
}

const NEW_PREFIX: &str = ".new-";
const STAGING_PREFIX: &str = ".staging-";
const TRASH_PREFIX: &str = ".trash-";

/// `root/.staging-<id>`: where release `id`'s build is copied before it is
/// swapped into its color's place (then it holds the previous contents).
pub fn staging_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("{STAGING_PREFIX}{id}"))
}

/// `root/.trash-<id>`: a color's contents from before release `id`, set
/// aside to be removed off the release's path.
pub fn trash_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("{TRASH_PREFIX}{id}"))
}

/// Whether `name`, an entry of the root, is a [`staging_dir`] or a
/// [`trash_dir`]: left behind by a bgd that died, and safe to remove at start.
pub fn is_leftover(name: &str) -> bool {
    name.starts_with(STAGING_PREFIX) || name.starts_with(TRASH_PREFIX)
}

/// Whether `name`, an entry of [`releases_dir`], is a kept copy being made
/// or removed: left behind by a bgd that died, and safe to remove at start.
pub fn is_release_leftover(name: &str) -> bool {
    name.starts_with(NEW_PREFIX) || name.starts_with(TRASH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/srv/app";

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn color_directories_are_named_after_the_color() {
        let root = Path::new(ROOT);
        assert_eq!(color_dir(root, Color::Blue), p("/srv/app/blue"));
        assert_eq!(color_dir(root, Color::Green), p("/srv/app/green"));
    }

    #[test]
    fn the_live_symlink_is_replaced_from_a_sibling() {
        let root = Path::new(ROOT);
        assert_eq!(live_link(root), p("/srv/app/live"));
        // A rename replaces the link atomically only within one directory.
        assert_eq!(live_link_tmp(root).parent(), live_link(root).parent());
        assert_ne!(live_link_tmp(root), live_link(root));
    }

    #[test]
    fn files_at_the_top_of_the_root() {
        let root = Path::new(ROOT);
        assert_eq!(state_file(root), p("/srv/app/state.json"));
        assert_eq!(history_file(root), p("/srv/app/history.json"));
        assert_eq!(lock_file(root), p("/srv/app/bgd.lock"));
        assert_eq!(shared_dir(root), p("/srv/app/shared"));
        assert_eq!(shared_dir(root), root.join(SHARED));
    }

    #[test]
    fn per_color_runtime_files_live_in_run() {
        let root = Path::new(ROOT);
        assert_eq!(run_record(root, Color::Blue), p("/srv/app/run/blue.json"));
        assert_eq!(
            relay_socket(root, Color::Green),
            p("/srv/app/run/green.relay")
        );
        assert_eq!(
            notify_socket(root, Color::Green),
            p("/srv/app/run/green.notify")
        );
        for c in Color::BOTH {
            assert_eq!(run_record(root, c).parent(), Some(run_dir(root).as_path()));
            assert_eq!(
                notify_socket(root, c).parent(),
                Some(run_dir(root).as_path())
            );
        }
        assert_ne!(
            notify_socket(root, Color::Blue),
            notify_socket(root, Color::Green)
        );
    }

    #[test]
    fn staging_and_trash_are_hidden_per_release_and_count_as_leftovers() {
        let root = Path::new(ROOT);
        assert_eq!(staging_dir(root, 7), p("/srv/app/.staging-7"));
        assert_eq!(trash_dir(root, 7), p("/srv/app/.trash-7"));
        assert_ne!(staging_dir(root, 7), staging_dir(root, 8));
        for dir in [staging_dir(root, 7), trash_dir(root, 12)] {
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(is_leftover(name), "{name}");
        }
    }

    #[test]
    fn kept_releases_live_in_releases_by_id() {
        let root = Path::new(ROOT);
        assert_eq!(release_dir(root, 7), p("/srv/app/releases/7"));
        assert_eq!(release_new_dir(root, 7), p("/srv/app/releases/.new-7"));
        assert_eq!(release_trash_dir(root, 7), p("/srv/app/releases/.trash-7"));
        assert_eq!(kept_release_id("7"), Some(7));
        assert_eq!(release_manifest(root, 7), p("/srv/app/releases/7.manifest"));
        assert_eq!(manifest_release_id("7.manifest"), Some(7));
        assert_eq!(kept_release_id("7.manifest"), None);
        assert!(!is_release_leftover("7.manifest"));
        for dir in [release_new_dir(root, 7), release_trash_dir(root, 7)] {
            let name = dir.file_name().unwrap().to_str().unwrap();
            assert!(is_release_leftover(name), "{name}");
            assert_eq!(kept_release_id(name), None, "{name}");
        }
        assert!(!is_release_leftover("7"));
        assert!(!is_leftover(RELEASES));
        assert_eq!(operator_file(root), p("/srv/app/operator.json"));
    }

    #[test]
    fn nothing_a_color_needs_is_a_leftover() {
        let root = Path::new(ROOT);
        let kept = [
            color_dir(root, Color::Blue),
            color_dir(root, Color::Green),
            live_link(root),
            state_file(root),
            history_file(root),
            lock_file(root),
            shared_dir(root),
            run_dir(root),
        ];
        for path in kept {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(!is_leftover(name), "{name}");
        }
    }
}
