//! Auto-release: notify events on a build directory, coalesced into one
//! "the tree has settled" event per quiet period.
//!
//! notify's callback runs on its own thread; it filters (ignored paths, the
//! marker) and `try_send`s into a small channel. The watcher task resets a
//! timer on every event and, once `settle` passes with no event, computes
//! the tree's [`Fingerprint`] on a blocking thread and sends
//! [`Event::WatchSettled`]. The daemon decides whether to release it.
//!
//! The parent directory is watched too, so that `rm -rf build && make` and
//! `mv build.new build` re-arm the recursive watch on the new tree. When the
//! inotify watch limit is hit, the watcher says which sysctl to raise and
//! falls back to notify's poll watcher instead of missing changes.

use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use globset::GlobSet;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::WatchConfig;
use crate::daemon::Event;

/// How often the poll fallback looks at the tree.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the watcher shows in status; written by the watcher task only.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    /// "inotify", or "poll" after the watch limit was hit.
    pub mode: &'static str,
    pub last_event: Option<SystemTime>,
    /// Counts the checks asked for: the one at start, then one per relevant
    /// change. The tree is settling while the daemon has not yet received
    /// [`Event::WatchSettled`] with this number.
    pub generation: u64,
    /// Changes seen and ignored (`watch.ignore`, or not the marker).
    pub ignored_events: u64,
}

/// What notify's callback tells the watcher task. Flags, not a queue: a
/// burst of 10,000 events sets them once, and none can be dropped.
#[derive(Default)]
struct Signals {
    /// Something relevant changed.
    changed: AtomicBool,
    /// The watched directory itself was created, removed or replaced.
    rearm: AtomicBool,
    /// The inotify watch limit was hit.
    limit: AtomicBool,
    /// Changes seen and ignored.
    ignored: AtomicU64,
    wake: tokio::sync::Notify,
}

/// Starts watching; the first check runs at once, so a tree that differs
/// from the live build is released at start-up.
pub fn spawn(
    cfg: WatchConfig,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<(Arc<Mutex<WatchState>>, tokio::task::JoinHandle<()>)> {
    let parent = cfg.path.parent().unwrap_or(Path::new("/")).to_path_buf();
    if !parent.is_dir() {
        anyhow::bail!(
            "watch.path {}: its parent directory {} does not exist; create it, bgd watches it to see the build directory appear",
            cfg.path.display(),
            parent.display()
        );
    }
    let state = Arc::new(Mutex::new(WatchState {
        mode: "inotify",
        generation: 1,
        ..WatchState::default()
    }));
    let signals = Arc::new(Signals::default());
    let watching = Watching::new(&cfg, signals.clone(), false)?;
    let task = tokio::spawn(run(cfg, watching, signals, state.clone(), events));
    Ok((state, task))
}

async fn run(
    cfg: WatchConfig,
    mut watching: Watching,
    signals: Arc<Signals>,
    state: Arc<Mutex<WatchState>>,
    events: mpsc::UnboundedSender<Event>,
) {
    let set = |f: &dyn Fn(&mut WatchState)| {
        f(&mut state
            .lock()
            .expect("watch state lock is never held across a panic"))
    };
    watching = arm(watching, &cfg).await;
    let mut due = Some(tokio::time::Instant::now());
    loop {
        tokio::select! {
            _ = signals.wake.notified() => {
                set(&|s| s.ignored_events = signals.ignored.load(Ordering::Relaxed));
                if signals.limit.swap(false, Ordering::Relaxed) && !watching.poll {
                    tracing::error!(
                        "inotify watch limit reached while watching {}: raise it with `sysctl fs.inotify.max_user_watches=524288` \
                         (and in /etc/sysctl.d/); meanwhile bgd polls the tree every {POLL_INTERVAL:?}",
                        cfg.path.display()
                    );
                    match Watching::new(&cfg, signals.clone(), true) {
                        Ok(w) => {
                            watching = arm(w, &cfg).await;
                            set(&|s| s.mode = "poll");
                        }
                        Err(e) => tracing::error!("cannot start the poll watcher either: {e}"),
                    }
                    signals.changed.store(true, Ordering::Relaxed);
                }
                if signals.rearm.swap(false, Ordering::Relaxed) {
                    watching = arm(watching, &cfg).await;
                    // A new tree counts as a change, except in marker mode
                    // when it has no marker yet: the build tool touches it last.
                    let has_marker = cfg.marker.as_ref().is_none_or(|m| cfg.path.join(m).exists());
                    if has_marker {
                        signals.changed.store(true, Ordering::Relaxed);
                    }
                }
                if signals.changed.swap(false, Ordering::Relaxed) {
                    due = Some(tokio::time::Instant::now() + cfg.settle);
                    set(&|s| { s.last_event = Some(SystemTime::now()); s.generation += 1; });
                }
            }
            _ = sleep_until(due), if due.is_some() => {
                due = None;
                let c = cfg.clone();
                let fingerprint = tokio::task::spawn_blocking(move || Fingerprint::of_tree(&c.path, &c.ignore, c.marker.as_deref()))
                    .await
                    .ok()
                    .flatten();
                let generation = state.lock().expect("watch state lock is never held across a panic").generation;
                if events.send(Event::WatchSettled { fingerprint, generation }).is_err() {
                    return;
                }
            }
        }
    }
}

/// Arms `w` on a blocking thread: notify walks the whole tree to add its
/// watches (and the poll watcher scans it), which must not stall the loop.
async fn arm(mut w: Watching, cfg: &WatchConfig) -> Watching {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        w.arm(&cfg);
        w
    })
    .await
    .expect("arming the watcher does not panic")
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The notify watcher in use, inotify or poll.
struct Watching {
    watcher: Box<dyn Watcher + Send>,
    signals: Arc<Signals>,
    poll: bool,
}

impl Watching {
    fn new(cfg: &WatchConfig, signals: Arc<Signals>, poll: bool) -> anyhow::Result<Watching> {
        let handler = handler(cfg.clone(), signals.clone());
        // Symlinks in a build are never followed, by the copy or the watch.
        let config = notify::Config::default().with_follow_symlinks(false);
        let watcher: Box<dyn Watcher + Send> = if poll {
            Box::new(notify::PollWatcher::new(
                handler,
                config.with_poll_interval(POLL_INTERVAL),
            )?)
        } else {
            Box::new(notify::RecommendedWatcher::new(handler, config)?)
        };
        Ok(Watching {
            watcher,
            signals,
            poll,
        })
    }

    /// Watches the parent (to see the directory come and go) and, if it
    /// exists, the directory itself, recursively.
    fn arm(&mut self, cfg: &WatchConfig) {
        let parent = cfg.path.parent().unwrap_or(Path::new("/"));
        if let Err(e) = self.watcher.watch(parent, RecursiveMode::NonRecursive) {
            self.report(e, parent);
        }
        let _ = self.watcher.unwatch(&cfg.path);
        if cfg.path.is_dir() {
            if let Err(e) = self.watcher.watch(&cfg.path, RecursiveMode::Recursive) {
                self.report(e, &cfg.path);
            }
        }
    }

    fn report(&self, e: notify::Error, path: &Path) {
        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
            self.signals.limit.store(true, Ordering::Relaxed);
            self.signals.wake.notify_one();
        } else {
            tracing::warn!("cannot watch {}: {e}", path.display());
        }
    }
}

/// notify's callback: runs on notify's thread, so it only filters, sets
/// flags and wakes the watcher task.
fn handler(
    cfg: WatchConfig,
    signals: Arc<Signals>,
) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
    move |res| {
        match res {
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                signals.limit.store(true, Ordering::Relaxed)
            }
            Err(e) => {
                tracing::warn!("watch error: {e}");
                signals.changed.store(true, Ordering::Relaxed);
            }
            Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => return,
            Ok(ev) => classify(&cfg, &ev.paths, &signals),
        }
        signals.wake.notify_one();
    }
}

fn classify(cfg: &WatchConfig, paths: &[PathBuf], signals: &Signals) {
    for p in paths {
        if p == &cfg.path {
            signals.rearm.store(true, Ordering::Relaxed);
            continue;
        }
        let Ok(rel) = p.strip_prefix(&cfg.path) else {
            continue;
        };
        let counts = !cfg.ignore.is_match(rel) && cfg.marker.as_ref().is_none_or(|m| rel == m);
        if counts {
            signals.changed.store(true, Ordering::Relaxed);
        } else {
            signals.ignored.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A cheap summary of a tree: every entry's relative path, type, size,
/// mtime, mode and symlink target, depth first in name order. Two trees
/// with the same fingerprint are taken as the same build.
pub struct Fingerprint {
    hasher: Fnv64,
}

/// FNV-1a, 64 bits: fixed across builds of bgd, unlike std's hasher, so a
/// fingerprint in `state.json` still matches after bgd is upgraded.
struct Fnv64(u64);

impl Hasher for Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Fingerprint {
    pub fn new() -> Fingerprint {
        Fingerprint {
            hasher: Fnv64(0xcbf2_9ce4_8422_2325),
        }
    }

    /// Adds one entry; `rel` is its path inside the tree.
    pub fn add(&mut self, rel: &Path, meta: &std::fs::Metadata, link: Option<&Path>) {
        use std::os::unix::fs::MetadataExt;
        let h = &mut self.hasher;
        h.write(rel.as_os_str().as_encoded_bytes());
        h.write_u8(0);
        h.write_u32(meta.mode());
        h.write_u64(if meta.is_dir() { 0 } else { meta.size() });
        h.write_i64(meta.mtime());
        h.write_i64(meta.mtime_nsec());
        if let Some(l) = link {
            h.write(l.as_os_str().as_encoded_bytes());
        }
        h.write_u8(0xff);
    }

    pub fn finish(&self) -> String {
        format!("{:016x}", self.hasher.finish())
    }

    /// The fingerprint of the tree at `root`, leaving out ignored paths and
    /// the marker; `None` if `root` is not a readable directory.
    pub fn of_tree(root: &Path, ignore: &GlobSet, marker: Option<&Path>) -> Option<String> {
        fn walk(
            dir: &Path,
            root: &Path,
            f: &mut Fingerprint,
            skip: &dyn Fn(&Path) -> bool,
        ) -> std::io::Result<()> {
            let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let rel = path.strip_prefix(root).expect("walk stays under its root");
                let meta = std::fs::symlink_metadata(&path)?;
                if !skip(rel) {
                    let link = meta
                        .file_type()
                        .is_symlink()
                        .then(|| std::fs::read_link(&path))
                        .transpose()?;
                    f.add(rel, &meta, link.as_deref());
                }
                if meta.is_dir() {
                    walk(&path, root, f, skip)?;
                }
            }
            Ok(())
        }
        if !root.is_dir() {
            return None;
        }
        let mut f = Fingerprint::new();
        let skip = |rel: &Path| ignore.is_match(rel) || marker == Some(rel);
        walk(root, root, &mut f, &skip).ok()?;
        Some(f.finish())
    }
}

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_sees_content_changes_but_not_ignored_files_or_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a"), "1").unwrap();
        let ignore = globset::GlobSetBuilder::new()
            .add(globset::Glob::new("*.tmp").unwrap())
            .build()
            .unwrap();
        let marker = Path::new(".release");
        let fp = || Fingerprint::of_tree(root, &ignore, Some(marker)).unwrap();
        let first = fp();
        assert_eq!(fp(), first);
        std::fs::write(root.join("x.tmp"), "junk").unwrap();
        std::fs::write(root.join(".release"), "").unwrap();
        assert_eq!(fp(), first, "ignored files and the marker do not count");
        std::fs::write(root.join("sub/a"), "22").unwrap();
        assert_ne!(fp(), first);
        assert_eq!(
            Fingerprint::of_tree(&root.join("missing"), &ignore, None),
            None
        );
    }
}
