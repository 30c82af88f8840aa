//! The daemon: start-up order, the event loop that owns the deployment
//! state, and the shutdown sequence.
//!
//! [`Daemon`] is the one owner of the state: which color is live, what each
//! color runs, the release in progress, each color's restart. Everything
//! else (the control socket, release and restart tasks, drains, exit
//! watchers, the build watcher, signals) talks to it through the closed
//! [`Event`] enum, and each arm of the loop is one call.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

use crate::auto::{Auto, Decision};
use crate::color::Color;
use crate::config::Config;
use crate::listen::Listeners;
use crate::process::AppProcess;
use crate::protocol::{
    ColorStatus, Failure, FailureKind, ReleaseProgress, Reply, Request, Status, Step,
};
use crate::reaper::{Exit, Reaper};
use crate::release::{self, Plan, Timings};
use crate::state::{self, Build, State};
use crate::{control, history, stage, systemd, watch, Ctx};

mod queries;
mod releases;
mod restarts;
mod service;
mod watching;

/// Where a client's replies go. Sending fails silently once the client has
/// gone: a release whose client disconnected still completes.
pub type Responder = UnboundedSender<Reply>;

/// Everything the daemon reacts to.
pub enum Event {
    /// A control request and where to answer it.
    Request(Request, Responder),
    /// A release task reached a step.
    Progress {
        id: u64,
        step: Step,
        message: String,
    },
    /// A release task copied a build into `color`'s directory.
    Staged { id: u64, color: Color, build: Build },
    /// A release or restart task finished: a ready color, or why not.
    Prepared {
        id: u64,
        result: Result<(AppProcess, Timings), Failure>,
    },
    /// A drain task stopped a color.
    Drained { id: u64, color: Color, exit: Exit },
    /// A live color's leader exited on its own; `tail` is its last output.
    Exited {
        color: Color,
        pid: Pid,
        exit: Exit,
        uptime: Duration,
        tail: Vec<String>,
    },
    /// The backoff before restarting a dead live color has passed.
    RestartDue { color: Color },
    /// The watched build directory was quiet for `settle`; its fingerprint
    /// (`None` if it does not exist).
    WatchSettled {
        fingerprint: Option<String>,
        generation: u64,
    },
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP: read the config file again.
    Reload,
    /// Under systemd, every few seconds.
    Tick,
}

/// Runs the daemon until it is stopped. `inherited` holds the sockets
/// systemd passed (socket activation or the fd store), if any.
pub async fn run(config: Config, inherited: Vec<(OwnedFd, String)>) -> anyhow::Result<()> {
    let root = config.fixed.root.clone();
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create root {}", root.display()))?;
    let _lock = lock_root(&root)?;
    state::kill_leftover_groups(&root);
    stage::remove_leftovers(&root).with_context(|| format!("cannot clean {}", root.display()))?;
    let state = State::load(&root)?;
    let listeners = Arc::new(Listeners::adopt_or_bind(&config.fixed.listen, inherited)?);
    listeners.store_in_systemd();
    let reaper = Reaper::start().context("cannot start reaping child processes")?;
    let (tx, rx) = mpsc::unbounded_channel();
    forward_signals(tx.clone())?;
    let access = control::Access {
        group: config.fixed.control_group,
    };
    let control = control::bind(&config.fixed.control, config.fixed.control_mode, access)?;
    let logs = Arc::new(crate::logs::LogHub::default());
    let ctx = Arc::new(Ctx {
        config,
        listeners,
        reaper,
        logs,
    });
    tokio::spawn(control::serve(control, access, tx.clone()));
    if systemd::under_systemd() {
        tokio::spawn(tick(tx.clone()));
    }
    tracing::info!(name = %ctx.config.fixed.name, control = %ctx.config.fixed.control.display(), "bgd is up");

    let mut daemon = Daemon::new(ctx, state, tx);
    daemon.start_watching()?;
    daemon.boot();
    daemon.run(rx).await;

    let ctx = daemon.ctx;
    let _ = std::fs::remove_file(&ctx.config.fixed.control);
    ctx.listeners.remove_unix_paths();
    tracing::info!("bgd stopped");
    Ok(())
}

/// Under systemd: a tick for WATCHDOG=1 (at half `WatchdogSec=`) and for
/// EXTEND_TIMEOUT_USEC while a start or stop runs long. It goes through the
/// event loop, so a wedged loop stops the watchdog pings.
async fn tick(tx: UnboundedSender<Event>) {
    let every = systemd::watchdog_interval().unwrap_or(TICK).min(TICK);
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if tx.send(Event::Tick).is_err() {
            return;
        }
    }
}

/// The longest gap between ticks under systemd.
const TICK: Duration = Duration::from_secs(5);

/// One bgd per root: a second one would fight over the colors.
fn lock_root(root: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = root.join("bgd.lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!("another bgd already runs with root {} ({e}): stop it first, or give this one another root", root.display())
    })
}

fn forward_signals(tx: UnboundedSender<Event>) -> std::io::Result<()> {
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(Event::Stop).is_err() {
                    return;
                }
            }
        });
    }
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(Event::Reload).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// What a release task was started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Release,
    Rollback,
}

/// Who asked for a release.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Trigger {
    Client,
    /// The build watcher, for the tree with this fingerprint.
    Watch(String),
}

/// The release or rollback in progress; releases never overlap. It lasts
/// until the old color has drained.
struct InProgress {
    /// Matches this task's events; for a release also its release id.
    id: u64,
    /// The release id of the build being started.
    release: u64,
    kind: Kind,
    trigger: Trigger,
    color: Color,
    label: Option<String>,
    step: Step,
    since: SystemTime,
    started: Instant,
    client: Option<Responder>,
    timings: Timings,
    swapped_at: Option<Instant>,
    /// Each step and when it began, for the history.
    steps: Vec<history::StepTime>,
    /// The dormant color's build record before this release cleared it.
    replaced: Option<Build>,
    /// The new build was swapped into the color's directory.
    staged: bool,
    source: Option<PathBuf>,
    /// Set to abort: staging stops before it swaps anything into place.
    cancel: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Stopped,
    Starting,
    Live,
    Draining,
    /// Live, but its process died (or bgd just started): a restart is
    /// scheduled or running.
    Restarting,
}

/// One color as the daemon sees it.
struct Slot {
    /// The running process while the color is live.
    process: Option<AppProcess>,
    phase: Phase,
    /// The pid shown in status; also set while a release or drain owns the process.
    pid: Option<Pid>,
    since: SystemTime,
    /// Restarts of the build this color holds.
    restarts: u32,
    /// Restarts since the color last ran long enough to count as healthy.
    streak: u32,
    last_exit: Option<Exit>,
    /// The restart task running for this color: (task id, handle).
    restart: Option<(u64, JoinHandle<()>)>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            process: None,
            phase: Phase::Stopped,
            pid: None,
            since: SystemTime::now(),
            restarts: 0,
            streak: 0,
            last_exit: None,
            restart: None,
        }
    }

    fn set(&mut self, phase: Phase, pid: Option<Pid>) {
        self.phase = phase;
        self.pid = pid;
        self.since = SystemTime::now();
    }

    fn abort_restart(&mut self) {
        if let Some((_, task)) = self.restart.take() {
            // Dropping the task's process kills its group.
            task.abort();
        }
    }
}

/// A color that has run this long before dying is restarted without delay.
const HEALTHY_UPTIME: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Daemon {
    ctx: Arc<Ctx>,
    state: State,
    blue: Slot,
    green: Slot,
    release: Option<InProgress>,
    auto: Option<Auto>,
    events: UnboundedSender<Event>,
    last_result: Option<String>,
    /// 0 while running; 1 after the first stop signal (drain); 2 after the second (kill).
    stopping: u8,
    /// Drains still running; the daemon exits when this is 0 and it is stopping.
    drains: usize,
    /// Sent READY=1 to systemd already.
    notified_ready: bool,
    /// The build watcher's task, replaced when a reload changes `[watch]`.
    watcher: Option<JoinHandle<()>>,
    /// The last STATUS= line sent to systemd.
    status_line: String,
}

impl Daemon {
    fn new(ctx: Arc<Ctx>, state: State, events: UnboundedSender<Event>) -> Daemon {
        Daemon {
            ctx,
            state,
            blue: Slot::new(),
            green: Slot::new(),
            release: None,
            auto: None,
            events,
            last_result: None,
            stopping: 0,
            drains: 0,
            notified_ready: false,
            watcher: None,
            status_line: String::new(),
        }
    }

    fn slot(&mut self, c: Color) -> &mut Slot {
        match c {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }

    /// Starts the color the state says was live, from its directory.
    fn boot(&mut self) {
        match self.state.live {
            Some(color) => {
                tracing::info!(%color, "starting the live color from its directory");
                self.slot(color).set(Phase::Restarting, None);
                self.start_restart(color);
            }
            None => {
                tracing::info!("no color is live yet: waiting for a release");
                self.notify_ready();
            }
        }
    }

    async fn run(&mut self, mut rx: UnboundedReceiver<Event>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Request(req, reply) => self.on_request(req, reply),
                Event::Progress { id, step, message } => self.on_progress(id, step, message),
                Event::Staged { id, color, build } => self.on_staged(id, color, build),
                Event::Prepared { id, result } => self.on_prepared(id, result),
                Event::Drained { id, color, exit } => self.on_drained(id, color, exit),
                Event::Exited {
                    color,
                    pid,
                    exit,
                    uptime,
                    tail,
                } => self.on_exited(color, pid, exit, uptime, tail),
                Event::RestartDue { color } => self.on_restart_due(color),
                Event::WatchSettled {
                    fingerprint,
                    generation,
                } => self.on_watch_settled(fingerprint, generation),
                Event::Stop => self.on_stop(),
                Event::Reload => self.on_reload(),
                Event::Tick => self.on_tick(),
            }
            self.publish_status();
            let restarting = self.blue.restart.is_some() || self.green.restart.is_some();
            if self.stopping > 0 && self.drains == 0 && self.release.is_none() && !restarting {
                return;
            }
        }
    }

    fn on_request(&mut self, req: Request, reply: Responder) {
        match req {
            Request::Status => self.reply_status(reply),
            Request::Release { dir, label } => self.begin(
                Kind::Release,
                Some(PathBuf::from(dir)),
                label,
                Trigger::Client,
                Some(reply),
            ),
            Request::Rollback => {
                self.begin(Kind::Rollback, None, None, Trigger::Client, Some(reply))
            }
            Request::Watch { pause } => self.on_watch_request(pause, reply),
            Request::History => self.reply_history(reply),
            Request::Logs {
                color,
                lines,
                follow,
            } => self.stream_logs(color, lines, follow, reply),
        }
    }

    fn current(&mut self, id: u64) -> Option<&mut InProgress> {
        self.release.as_mut().filter(|r| r.id == id)
    }
}

/// An id for a task that stages nothing (rollback, restart), so that events
/// of an older task are never mistaken for its own. Ids above the release
/// range; they only match events in memory and are never stored.
fn fresh_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 62);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Release => "release",
        Kind::Rollback => "rollback",
    }
}
