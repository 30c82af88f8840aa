//! Auto-release: notify events on a build directory, coalesced into one
//! "the tree has settled" event per quiet period.
//!
//! notify's callback runs on its own thread; it filters (ignored paths, the
//! marker) and `try_send`s into a small channel. The watcher task resets a
//! timer on every event and, once `settle` passes with no event, computes
//! the tree's [`Fingerprint`] on a blocking thread and sends
//! [`Settled`]. The daemon decides whether to release it.
//!
//! The parent directory is watched too, so that `rm -rf build && make` and
//! `mv build.new build` re-arm the recursive watch on the new tree. A
//! watched path that is a symlink (capistrano's `current`, pointing at
//! `releases/A`) is followed: the directory it points at is watched, and
//! repointing the link (a new link renamed over it, or `ln -sfn`) re-arms
//! the watch on the new target. Symlinks inside the tree are not
//! followed. When the
//! inotify watch limit is hit, the watcher says which sysctl to raise and
//! falls back to notify's poll watcher instead of missing changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};

use crate::config::WatchConfig;
use crate::deploy::auto::WatchState;
use crate::pipeline::fingerprint::Fingerprint;
use crate::Sink;

/// How often the poll fallback looks at the tree.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The directory watched recursively: `watch.path`, or where it points
    /// when it is a symlink. Events name paths below it.
    target: Mutex<PathBuf>,
    wake: tokio::sync::Notify,
}

/// The watched tree was quiet for `settle`: the daemon decides whether to
/// release it.
#[derive(Debug)]
pub struct Settled {
    /// The tree's fingerprint; `None` if it does not exist.
    pub fingerprint: Option<String>,
    /// The [`WatchState::generation`] this fingerprint belongs to.
    pub generation: u64,
}

/// Starts watching; the first check runs at once, so a tree that differs
/// from the live build is released at start-up.
pub fn spawn(
    cfg: WatchConfig,
    events: Sink<Settled>,
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
    events: Sink<Settled>,
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
                if !events(Settled { fingerprint, generation }) {
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

    /// Watches the parent (to see the directory, or the symlink, come and
    /// go) and, if it exists, the directory itself (or the one the symlink
    /// points at), recursively.
    fn arm(&mut self, cfg: &WatchConfig) {
        let parent = cfg.path.parent().unwrap_or(Path::new("/"));
        if let Err(e) = self.watcher.watch(parent, RecursiveMode::NonRecursive) {
            self.report(e, parent);
        }
        // The lock is not held across notify's calls: its callback, which
        // takes it, may be running on notify's thread meanwhile.
        let target = resolve(&cfg.path);
        let old = std::mem::replace(
            &mut *self
                .signals
                .target
                .lock()
                .expect("never held across a panic"),
            target.clone(),
        );
        let _ = self.watcher.unwatch(&old);
        if target.is_dir() {
            if let Err(e) = self.watcher.watch(&target, RecursiveMode::Recursive) {
                self.report(e, &target);
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

/// Where `path` leads: itself, or the directory it points at when it is a
/// symlink (a chain of them, resolved), made absolute.
fn resolve(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

fn classify(cfg: &WatchConfig, paths: &[PathBuf], signals: &Signals) {
    let target = signals
        .target
        .lock()
        .expect("never held across a panic")
        .clone();
    for p in paths {
        if p == &cfg.path || p == &target {
            signals.rearm.store(true, Ordering::Relaxed);
            continue;
        }
        let Ok(rel) = p
            .strip_prefix(&target)
            .or_else(|_| p.strip_prefix(&cfg.path))
        else {
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
