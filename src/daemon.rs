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
    let root = config.root.clone();
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create root {}", root.display()))?;
    let _lock = lock_root(&root)?;
    state::kill_leftover_groups(&root);
    stage::remove_leftovers(&root).with_context(|| format!("cannot clean {}", root.display()))?;
    let state = State::load(&root)?;
    let listeners = Arc::new(Listeners::adopt_or_bind(&config.listen, inherited)?);
    listeners.store_in_systemd();
    let reaper = Reaper::start().context("cannot start reaping child processes")?;
    let (tx, rx) = mpsc::unbounded_channel();
    forward_signals(tx.clone())?;
    let access = control::Access {
        group: config.control_group,
    };
    let control = control::bind(&config.control, config.control_mode, access)?;
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
    tracing::info!(name = %ctx.config.name, control = %ctx.config.control.display(), "bgd is up");

    let mut daemon = Daemon::new(ctx, state, tx);
    daemon.start_watching()?;
    daemon.boot();
    daemon.run(rx).await;

    let ctx = daemon.ctx;
    let _ = std::fs::remove_file(&ctx.config.control);
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

    /// Starts (or restarts, after a reload) the build watcher of `[watch]`.
    fn start_watching(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.watcher.take() {
            old.abort();
        }
        let old = self.auto.take();
        if let Some(w) = &self.ctx.config.watch {
            let (state, task) = watch::spawn(w.clone(), self.events.clone())?;
            let mut auto = Auto::new(w.path.clone(), state);
            if let Some(old) = old {
                auto.carry_over(old);
            }
            self.auto = Some(auto);
            self.watcher = Some(task);
        }
        Ok(())
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

    fn reply_history(&self, reply: Responder) {
        let root = self.ctx.config.root.clone();
        tokio::spawn(async move {
            let records = tokio::task::spawn_blocking(move || history::load(&root))
                .await
                .unwrap_or_default();
            let result = serde_json::to_value(records).expect("records serialize infallibly");
            let _ = reply.send(Reply::Done { result });
        });
    }

    /// The last `lines` lines of output, then (with `follow`) new ones until
    /// the client goes away. Runs beside the loop.
    fn stream_logs(&self, color: Option<Color>, lines: usize, follow: bool, reply: Responder) {
        let (recent, mut live) = self.ctx.logs.tail(color, lines);
        tokio::spawn(async move {
            for l in recent {
                if reply.send(Reply::Log(l)).is_err() {
                    return;
                }
            }
            if !follow {
                let _ = reply.send(Reply::Done {
                    result: serde_json::Value::Null,
                });
                return;
            }
            loop {
                let next = tokio::select! {
                    l = live.recv() => l,
                    _ = reply.closed() => return,
                };
                let line = match next {
                    Ok(l) => l,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        crate::logs::LogLine {
                            at: crate::now_rfc3339(),
                            color: color.unwrap_or(Color::Blue),
                            pid: 0,
                            stream: "bgd".into(),
                            line: format!("[{n} lines skipped: this client read too slowly]"),
                        }
                    }
                    Err(_) => return,
                };
                if color.is_some_and(|c| c != line.color) {
                    continue;
                }
                if reply.send(Reply::Log(line)).is_err() {
                    return;
                }
            }
        });
    }

    fn reply_status(&self, reply: Responder) {
        let status = serde_json::to_value(self.status()).expect("status serializes infallibly");
        let _ = reply.send(Reply::Done { result: status });
    }

    /// Starts a release or rollback, or refuses it.
    fn begin(
        &mut self,
        kind: Kind,
        source: Option<PathBuf>,
        label: Option<String>,
        trigger: Trigger,
        client: Option<Responder>,
    ) {
        let refuse = |kind: FailureKind, msg: String| {
            if let Some(c) = &client {
                let _ = c.send(Reply::Error(Failure::new(kind, None, msg)));
            }
        };
        if self.stopping > 0 {
            return refuse(
                FailureKind::Busy,
                "bgd is shutting down; nothing new is started".into(),
            );
        }
        if let Some(r) = &self.release {
            return refuse(
                FailureKind::Busy,
                format!(
                    "{} of release {} is in progress (step {}, {} since {}): releases never overlap, so run this one again when it finishes (`bgctl status` shows progress)",
                    kind_name(r.kind), r.release, r.step, r.color, crate::rfc3339(r.since)
                ),
            );
        }
        let color = self.state.live.map_or(Color::Blue, Color::other);
        let mut replaced = None;
        let (source, release) = match kind {
            Kind::Rollback => {
                let Some(live) = self.state.live else {
                    return refuse(FailureKind::BadRequest, "nothing is live, so there is nothing to roll back from: use `bgctl release DIR`".into());
                };
                match self.state.build(color) {
                    Some(b) if b.went_live => (None, b.release),
                    Some(b) => {
                        return refuse(FailureKind::BadRequest, format!(
                            "nothing to roll back to: {color} holds release {} which never went live (its release failed); {live} stays live", b.release
                        ))
                    }
                    None => return refuse(FailureKind::BadRequest, format!("nothing to roll back to: {color} holds no build that went live")),
                }
            }
            Kind::Release => {
                let src = source.expect("a release always has a source");
                if !src.is_absolute() {
                    return refuse(
                        FailureKind::BadRequest,
                        format!("build path {} must be absolute", src.display()),
                    );
                }
                // The dormant color's directory is about to be replaced: until
                // the new build is staged it records no build, so a crash
                // mid-copy can never leave a rollback target that lies. If
                // the release fails before anything is swapped in, `fail`
                // puts the record back.
                let saved = self.state.clone();
                replaced = self.state.build(color).cloned();
                let id = self.state.next_release;
                self.state.next_release += 1;
                self.state.set_build(color, None);
                if let Err(e) = self.state.save(&self.ctx.config.root) {
                    self.state = saved;
                    return refuse(
                        FailureKind::Internal,
                        format!("cannot write bgd's state: {e}"),
                    );
                }
                (Some(src), id)
            }
        };
        let label = match kind {
            Kind::Rollback => self.state.build(color).and_then(|b| b.label.clone()),
            Kind::Release => label,
        };
        let id = if kind == Kind::Rollback {
            fresh_id()
        } else {
            release
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let expect = match &trigger {
            Trigger::Watch(fp) => Some(fp.clone()),
            Trigger::Client => None,
        };
        let plan = Plan {
            id,
            color,
            source,
            label: label.clone(),
            release,
            expect,
            cancel: cancel.clone(),
        };
        tracing::info!(release, %color, "{} begins", kind_name(kind));
        let task = tokio::spawn(release::run(
            self.ctx.clone(),
            plan.clone(),
            self.events.clone(),
        ));
        self.slot(color).set(Phase::Starting, None);
        self.release = Some(InProgress {
            id,
            release,
            kind,
            trigger,
            color,
            label,
            step: if plan.source.is_some() {
                Step::Validate
            } else {
                Step::Start
            },
            since: SystemTime::now(),
            started: Instant::now(),
            client,
            timings: Timings::default(),
            swapped_at: None,
            steps: Vec::new(),
            source: plan.source.clone(),
            replaced,
            staged: false,
            cancel,
            task,
        });
    }

    fn current(&mut self, id: u64) -> Option<&mut InProgress> {
        self.release.as_mut().filter(|r| r.id == id)
    }

    fn on_progress(&mut self, id: u64, step: Step, message: String) {
        let Some(r) = self.current(id) else { return };
        if r.steps.last().is_none_or(|t| t.step != step) {
            r.steps.push(history::StepTime {
                step,
                at_ms: r.started.elapsed().as_millis() as u64,
            });
        }
        r.step = step;
        tracing::info!("{step}: {message}");
        if let Some(c) = &r.client {
            let _ = c.send(Reply::Progress { step, message });
        }
    }

    fn on_staged(&mut self, id: u64, color: Color, build: Build) {
        let Some(r) = self.current(id) else { return };
        r.staged = true;
        self.state.set_build(color, Some(build));
        if let Err(e) = self.state.save(&self.ctx.config.root) {
            tracing::error!("cannot write bgd's state after staging: {e}");
        }
    }

    fn on_prepared(&mut self, id: u64, result: Result<(AppProcess, Timings), Failure>) {
        if let Some(r) = self.current(id) {
            return match result {
                Ok((app, timings)) => {
                    r.timings = timings;
                    self.swap(app)
                }
                Err(failure) => self.fail(failure),
            };
        }
        for color in Color::BOTH {
            if self
                .slot(color)
                .restart
                .as_ref()
                .is_some_and(|(rid, _)| *rid == id)
            {
                self.slot(color).restart = None;
                return match result {
                    Ok((app, _)) => self.finish_restart(color, app),
                    Err(failure) => self.restart_failed(color, failure),
                };
            }
        }
        // A task aborted at shutdown or by a swap: dropping its process kills it.
    }

    /// The new color is ready: record it as live, then drain the old one.
    fn swap(&mut self, app: AppProcess) {
        let r = self
            .release
            .as_mut()
            .expect("swap runs for the release in progress");
        let (id, release, new) = (r.id, r.release, r.color);
        r.step = Step::Swap;
        let root = self.ctx.config.root.clone();
        let saved = self.state.clone();
        self.state.live = Some(new);
        if let Some(mut b) = self.state.build(new).cloned() {
            b.went_live = true;
            self.state.set_build(new, Some(b));
        }
        if let Err(e) = self.state.save(&root) {
            self.state = saved;
            let f = Failure::new(
                FailureKind::Internal,
                Some(Step::Swap),
                format!(
                    "cannot record the new live color in {}: {e}; the old color stays live",
                    State::path(&root).display()
                ),
            );
            self.spawn_drain(None, app);
            return self.fail(f);
        }
        if let Err(e) = state::point_live_symlink(&root, new) {
            tracing::error!("cannot repoint {}/live: {e}", root.display());
        }
        let old = new.other();
        // The old color may have been dead and restarting: that restart is moot.
        self.slot(old).abort_restart();
        let slot = self.slot(new);
        slot.restarts = 0;
        slot.streak = 0;
        self.make_live(app);
        self.run_after_live(new, release);
        let r = self.release.as_mut().expect("still in progress");
        r.swapped_at = Some(Instant::now());
        tracing::info!(release, "{new} is live");

        match self.slot(old).process.take() {
            Some(proc) => {
                let pid = proc.pid;
                self.slot(old).set(Phase::Draining, Some(pid));
                self.on_progress(
                    id,
                    Step::Drain,
                    format!("{new} is live; draining {old} (pid {pid})"),
                );
                self.spawn_drain(Some(id), proc);
            }
            None => {
                self.slot(old).set(Phase::Stopped, None);
                self.finish_release(old, None);
            }
        }
    }

    /// `hooks.after_live`, beside everything else: a failure is logged.
    fn run_after_live(&self, color: Color, release: u64) {
        if self.ctx.config.hooks.after_live.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let dir = stage::color_dir(&ctx.config.root, color);
            let env = crate::process::color_env(&ctx, color, release);
            let hooks = ctx.config.hooks.after_live.clone();
            let log = |line: &str| tracing::info!(%color, hook = "after_live", "{line}");
            match crate::hooks::run(&ctx, "after_live", &hooks, &dir, &env, log).await {
                Ok(()) => tracing::info!(%color, release, "after_live hooks done"),
                Err(f) => {
                    tracing::warn!(%color, release, "{} (not fatal: release {release} stays live)", f.message)
                }
            }
        });
    }

    fn make_live(&mut self, app: AppProcess) {
        let (color, pid) = (app.color, app.pid);
        let exit = app.wait_exit_with_tail();
        let events = self.events.clone();
        tokio::spawn(async move {
            let (exit, uptime, tail) = exit.await;
            let _ = events.send(Event::Exited {
                color,
                pid,
                exit,
                uptime,
                tail,
            });
        });
        if let Some(stale) = self.slot(color).process.take() {
            // Never drop a running color: stop it gracefully.
            self.spawn_drain(None, stale);
        }
        let slot = self.slot(color);
        slot.set(Phase::Live, Some(pid));
        slot.process = Some(app);
        self.notify_ready();
    }

    /// Stops `proc` with its stop signal and deadline; `id` is the release
    /// waiting for it, if any.
    fn spawn_drain(&mut self, id: Option<u64>, proc: AppProcess) {
        let (sig, deadline) = (
            self.ctx.config.app.stop_signal,
            self.ctx.config.app.drain_timeout,
        );
        let events = self.events.clone();
        self.drains += 1;
        tokio::spawn(async move {
            let color = proc.color;
            let exit = proc.stop(sig, deadline).await;
            // Dropped before the event, so its pgid record is gone before the
            // daemon can start this color again.
            drop(proc);
            let _ = events.send(Event::Drained {
                id: id.unwrap_or(0),
                color,
                exit,
            });
        });
    }

    fn on_drained(&mut self, id: u64, color: Color, exit: Exit) {
        self.drains -= 1;
        tracing::info!(%color, "stopped ({exit})");
        let slot = self.slot(color);
        if slot.phase == Phase::Draining {
            slot.set(Phase::Stopped, None);
            slot.last_exit = Some(exit);
        }
        if self.current(id).is_some() {
            self.finish_release(color, Some(exit));
        }
    }

    fn finish_release(&mut self, old: Color, drained: Option<Exit>) {
        let r = self
            .release
            .take()
            .expect("finishing the release in progress");
        let total = r.started.elapsed();
        let drain_ms = r.swapped_at.map_or(0, |t| t.elapsed().as_millis() as u64);
        let build = self.state.build(r.color).cloned();
        let msg = match r.kind {
            Kind::Rollback => format!("rolled back to release {} on {}", r.release, r.color),
            Kind::Release => format!("release {} is live on {}", r.release, r.color),
        } + &format!(" ({} ms)", total.as_millis());
        tracing::info!("{msg}");
        self.record(&r, true, &msg, None);
        self.last_result = Some(format!("{} ok: {msg}", crate::now_rfc3339()));
        if let Some(a) = &mut self.auto {
            match (&r.trigger, r.kind) {
                (Trigger::Watch(_), _) => a.succeeded(r.release, &msg),
                // A rollback must stick: the watched tree is held back until it changes.
                (Trigger::Client, Kind::Rollback) => {
                    a.hold_current("a rollback made an older build live")
                }
                (Trigger::Client, Kind::Release) => {}
            }
        }
        if let Some(c) = r.client {
            let _ = c.send(Reply::Done {
                result: serde_json::json!({
                    "release": r.release,
                    "label": build.as_ref().and_then(|b| b.label.clone()),
                    "color": r.color,
                    "previous": old,
                    "previous_exit": drained.map(|e| e.to_string()),
                    "ms": {
                        "total": total.as_millis() as u64,
                        "stage": r.timings.stage_ms,
                        "start": r.timings.start_ms,
                        "ready": r.timings.ready_ms,
                        "drain": drain_ms,
                    }
                }),
            });
        }
        self.after_release();
    }

    fn fail(&mut self, failure: Failure) {
        let r = self
            .release
            .take()
            .expect("failing the release in progress");
        let step = failure
            .step
            .map_or("request".to_string(), |s| s.to_string());
        tracing::error!(release = r.release, color = %r.color, "{} failed at {step}: {}", kind_name(r.kind), failure.message);
        for line in &failure.log_tail {
            tracing::error!(color = %r.color, "  | {line}");
        }
        self.last_result = Some(format!(
            "{} {} of release {} failed at {step}: {}",
            crate::now_rfc3339(),
            kind_name(r.kind),
            r.release,
            failure.message
        ));
        self.record(&r, false, &failure.message, failure.step);
        self.restore_unstaged(&r);
        self.slot(r.color).set(Phase::Stopped, None);
        if let Some(live) = self.state.live {
            tracing::info!(%live, "{live} stays live");
        }
        if let (Some(a), Trigger::Watch(fp)) = (&mut self.auto, &r.trigger) {
            a.failed(fp, r.release, &failure);
        }
        if let Some(c) = r.client {
            let _ = c.send(Reply::Error(failure));
        }
        if self.state.live.is_none() {
            // No color has been live: nobody will accept, so refuse clients
            // rather than let them wait in the queue.
            self.ctx.listeners.unlisten();
        }
        self.after_release();
    }

    /// Appends the finished release `r` to the history, off the loop.
    fn record(&self, r: &InProgress, ok: bool, result: &str, failed_step: Option<Step>) {
        let build = self.state.build(r.color);
        let record = history::Record {
            release: r.release,
            kind: kind_name(r.kind).into(),
            trigger: match r.trigger {
                Trigger::Client => "bgctl".into(),
                Trigger::Watch(_) => "watch".into(),
            },
            label: r.label.clone(),
            source: r
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .or_else(|| build.map(|b| b.source.clone())),
            fingerprint: build
                .filter(|b| b.release == r.release)
                .and_then(|b| b.fingerprint.clone()),
            color: r.color,
            started: crate::rfc3339(r.since),
            finished: crate::now_rfc3339(),
            ok,
            result: result.into(),
            failed_step,
            steps: r.steps.clone(),
        };
        let root = self.ctx.config.root.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = history::append(&root, record) {
                tracing::warn!("cannot write the release history: {e}");
            }
        });
    }

    /// A release that ends before its build was swapped in leaves the
    /// color's directory as it was: put back the record of what it holds.
    fn restore_unstaged(&mut self, r: &InProgress) {
        if r.kind == Kind::Release && !r.staged && r.replaced.is_some() {
            self.state.set_build(r.color, r.replaced.clone());
            if let Err(e) = self.state.save(&self.ctx.config.root) {
                tracing::error!("cannot write bgd's state: {e}");
            }
        }
    }

    fn after_release(&mut self) {
        if self.stopping > 0 {
            return self.drain_all();
        }
        self.auto_check();
    }

    /// A live color's leader exited without being asked to.
    fn on_exited(
        &mut self,
        color: Color,
        pid: Pid,
        exit: Exit,
        uptime: Duration,
        tail: Vec<String>,
    ) {
        let slot = self.slot(color);
        if slot.phase != Phase::Live || slot.pid != Some(pid) {
            return; // a drain or stop already handles it
        }
        drop(slot.process.take()); // kills what is left of its group
        slot.last_exit = Some(exit);
        tracing::error!(%color, pid = pid.as_raw(), "the live color died ({exit}) after {uptime:.1?}; last output:");
        for line in tail.iter().rev().take(10).rev() {
            tracing::error!(%color, "  | {line}");
        }
        if self.stopping > 0 {
            return self.slot(color).set(Phase::Stopped, None);
        }
        let slot = self.slot(color);
        slot.set(Phase::Restarting, None);
        slot.restarts += 1;
        // A color that ran long enough restarts at once; one that dies young
        // waits 0.1 s, then longer each time.
        slot.streak = if uptime >= HEALTHY_UPTIME {
            0
        } else {
            slot.streak.max(1)
        };
        self.schedule_restart(color);
    }

    fn schedule_restart(&mut self, color: Color) {
        let slot = self.slot(color);
        let delay = backoff(slot.streak);
        slot.streak += 1;
        tracing::info!(%color, "restarting in {delay:?}");
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RestartDue { color });
        });
    }

    fn on_restart_due(&mut self, color: Color) {
        let slot = self.slot(color);
        if slot.phase == Phase::Restarting
            && slot.restart.is_none()
            && self.stopping == 0
            && self.state.live == Some(color)
        {
            self.start_restart(color);
        }
    }

    /// Starts the live color again from its directory (no copy). Runs beside
    /// a release: the release starts the other color.
    fn start_restart(&mut self, color: Color) {
        let Some(build) = self.state.build(color).cloned() else {
            tracing::error!(%color, "state says {color} is live but records no build for it: release again");
            self.state.live = None;
            self.slot(color).set(Phase::Stopped, None);
            self.notify_ready();
            return;
        };
        let id = fresh_id();
        let plan = Plan {
            id,
            color,
            source: None,
            label: build.label,
            release: build.release,
            expect: None,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let task = tokio::spawn(release::run(self.ctx.clone(), plan, self.events.clone()));
        self.slot(color).restart = Some((id, task));
    }

    fn finish_restart(&mut self, color: Color, app: AppProcess) {
        if self.state.live != Some(color) || self.stopping > 0 {
            return self.spawn_drain(None, app);
        }
        tracing::info!(%color, pid = app.pid.as_raw(), "{color} is serving again");
        self.make_live(app);
    }

    fn restart_failed(&mut self, color: Color, failure: Failure) {
        tracing::error!(%color, "restart failed: {}", failure.message);
        for line in failure.log_tail.iter().rev().take(10).rev() {
            tracing::error!(%color, "  | {line}");
        }
        self.notify_ready();
        if self.state.live != Some(color) || self.stopping > 0 {
            return;
        }
        self.slot(color).restarts += 1;
        self.schedule_restart(color);
    }

    fn on_watch_settled(&mut self, fingerprint: Option<String>, generation: u64) {
        if let Some(a) = &mut self.auto {
            a.settled(fingerprint, generation);
        }
        self.auto_check();
    }

    fn on_watch_request(&mut self, pause: bool, reply: Responder) {
        let Some(a) = &mut self.auto else {
            let f = Failure::new(
                FailureKind::BadRequest,
                None,
                "auto-release is not configured: add a [watch] section to bgd's config",
            );
            let _ = reply.send(Reply::Error(f));
            return;
        };
        a.paused = pause;
        tracing::info!("auto-release {}", if pause { "paused" } else { "resumed" });
        self.auto_check();
        self.reply_status(reply);
    }

    /// Releases the watched tree if the watcher says it settled and it is
    /// neither live already nor held back.
    fn live_fingerprint(&self) -> Option<String> {
        self.state
            .live
            .and_then(|c| self.state.build(c))
            .and_then(|b| b.fingerprint.clone())
    }

    fn auto_check(&mut self) {
        let live_fp = self.live_fingerprint();
        let busy = self.release.is_some() || self.stopping > 0;
        let Some(a) = &mut self.auto else { return };
        match a.decide(live_fp.as_deref(), busy) {
            Decision::Nothing => {}
            Decision::Release(fp) => {
                let path = a.path.clone();
                tracing::info!("auto-release of {} (tree {fp})", path.display());
                self.begin(
                    Kind::Release,
                    Some(path),
                    Some("auto".into()),
                    Trigger::Watch(fp),
                    None,
                );
            }
        }
    }

    fn on_stop(&mut self) {
        self.stopping += 1;
        if self.stopping > 1 {
            tracing::warn!("second stop signal: killing every color now");
            for color in Color::BOTH {
                if let Some(pid) = self.slot(color).pid {
                    let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                }
            }
            return;
        }
        tracing::info!("stopping: draining the app (send the signal again to kill it at once)");
        systemd::stopping();
        for color in Color::BOTH {
            self.slot(color).abort_restart();
        }
        if self
            .release
            .as_ref()
            .is_some_and(|r| r.swapped_at.is_none())
        {
            // Not yet live: abort. Staging stops before it swaps anything in,
            // and dropping the task's process kills its group.
            let r = self.release.take().expect("checked above");
            r.cancel.store(true, Ordering::Relaxed);
            r.task.abort();
            // The record of the dormant color stays cleared: the copy may
            // have been swapped in already, and a cleared record never lies.
            self.slot(r.color).set(Phase::Stopped, None);
            if let Some(c) = r.client {
                let _ = c.send(Reply::Error(Failure::new(
                    FailureKind::Busy,
                    Some(r.step),
                    "bgd is shutting down: the release was aborted and the old color stays recorded as live",
                )));
            }
        }
        if self.release.is_none() {
            self.drain_all();
        }
    }

    /// Stops every running color with its stop signal and deadline.
    fn drain_all(&mut self) {
        for color in Color::BOTH {
            if let Some(proc) = self.slot(color).process.take() {
                let pid = proc.pid;
                self.slot(color).set(Phase::Draining, Some(pid));
                tracing::info!(%color, pid = pid.as_raw(), "draining");
                self.spawn_drain(None, proc);
            }
        }
    }

    fn notify_ready(&mut self) {
        if !self.notified_ready {
            self.notified_ready = true;
            systemd::ready();
        }
    }

    fn on_tick(&mut self) {
        if systemd::watchdog_interval().is_some() {
            systemd::watchdog();
        }
        // Starting the live color or draining can outlast systemd's start
        // or stop timeout; ask for more time while either runs.
        if !self.notified_ready || self.stopping > 0 {
            systemd::extend_timeout(TICK * 3);
        }
    }

    /// Sends STATUS= when what it says has changed.
    fn publish_status(&mut self) {
        if !systemd::under_systemd() {
            return;
        }
        let live = match self.state.live {
            Some(c) => {
                let b = self.state.build(c).cloned();
                let label = b
                    .as_ref()
                    .and_then(|b| b.label.clone())
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default();
                let pid = self
                    .slot(c)
                    .pid
                    .map(|p| format!(" pid {p}"))
                    .unwrap_or_else(|| " not running".into());
                format!(
                    "live {c} release {}{label}{pid}",
                    b.map_or(0, |b| b.release)
                )
            }
            None => "nothing live".into(),
        };
        let busy = self
            .release
            .as_ref()
            .map(|r| {
                format!(
                    "; {} of release {}: {}",
                    kind_name(r.kind),
                    r.release,
                    r.step
                )
            })
            .unwrap_or_default();
        let last = self
            .last_result
            .as_ref()
            .map(|r| format!("; last: {r}"))
            .unwrap_or_default();
        let line = format!("{live}{busy}{last}");
        if line != self.status_line {
            systemd::status(&line);
            self.status_line = line;
        }
    }

    /// SIGHUP: applies what can change without a restart (the app's command,
    /// env, stop signal and drain, health, watch), keeps the rest and says so.
    fn on_reload(&mut self) {
        systemd::reloading();
        let file = self.ctx.config.file.clone();
        match Config::load(&file) {
            Err(e) => {
                tracing::error!("reload failed, the running config stays: {e}");
                self.last_result = Some(format!("{} reload failed: {e}", crate::now_rfc3339()));
            }
            Ok(new) => self.apply(new),
        }
        if self.notified_ready {
            systemd::ready();
        }
    }

    fn apply(&mut self, new: Config) {
        let old = &self.ctx.config;
        let same_listen = old.listen.len() == new.listen.len()
            && old.listen.iter().zip(&new.listen).all(|(a, b)| {
                a.name == b.name
                    && a.address == b.address
                    && a.mode == b.mode
                    && a.backlog == b.backlog
            });
        let control_changed = old.control != new.control
            || old.control_mode != new.control_mode
            || old.control_group != new.control_group;
        let kept: Vec<&str> = [
            (!same_listen, "[[listen]]"),
            (old.root != new.root, "root"),
            (control_changed, "control"),
            (old.name != new.name, "name"),
        ]
        .into_iter()
        .filter_map(|(changed, what)| changed.then_some(what))
        .collect();
        let watch_changed = match (&old.watch, &new.watch) {
            (Some(a), Some(b)) => !a.same_as(b),
            (None, None) => false,
            _ => true,
        };
        let mut config = new;
        config.listen = old.listen.clone();
        config.root = old.root.clone();
        config.control = old.control.clone();
        config.control_mode = old.control_mode;
        config.control_group = old.control_group;
        config.name = old.name.clone();
        self.ctx = Arc::new(Ctx {
            config,
            listeners: self.ctx.listeners.clone(),
            reaper: self.ctx.reaper.clone(),
            logs: self.ctx.logs.clone(),
        });
        if watch_changed {
            if let Err(e) = self.start_watching() {
                tracing::error!("cannot watch with the new [watch]: {e:#}");
            }
        }
        let note = if kept.is_empty() {
            String::new()
        } else {
            format!(
                "; changes to {} need a restart of bgd and were not applied",
                kept.join(", ")
            )
        };
        tracing::info!("config reloaded: the next start of a color uses it{note}");
        self.last_result = Some(format!("{} config reloaded{note}", crate::now_rfc3339()));
        self.auto_check();
    }

    fn status(&self) -> Status {
        let color_status = |c: Color, slot: &Slot| {
            let build = self.state.build(c);
            let state = match slot.phase {
                Phase::Stopped if build.is_none() => "empty",
                Phase::Stopped => "stopped",
                Phase::Starting => "starting",
                Phase::Live => "live",
                Phase::Draining => "draining",
                Phase::Restarting => "restarting",
            };
            ColorStatus {
                state: state.into(),
                pid: slot.pid.map(|p| p.as_raw() as u32),
                release: build.map(|b| b.release),
                label: build.and_then(|b| b.label.clone()),
                source: build.map(|b| b.source.clone()),
                since: Some(crate::rfc3339(slot.since)),
                restarts: slot.restarts,
                last_exit: slot.last_exit.map(|e| e.to_string()),
            }
        };
        Status {
            name: self.ctx.config.name.clone(),
            pid: std::process::id(),
            live: self.state.live,
            release_in_progress: self.release.as_ref().map(|r| ReleaseProgress {
                id: r.release,
                color: r.color,
                step: r.step,
                label: r.label.clone(),
                since: crate::rfc3339(r.since),
            }),
            blue: color_status(Color::Blue, &self.blue),
            green: color_status(Color::Green, &self.green),
            last_result: self.last_result.clone(),
            listen: self.ctx.listeners.addresses(),
            watch: self.auto.as_ref().map(|a| {
                let running = self
                    .release
                    .as_ref()
                    .is_some_and(|r| matches!(r.trigger, Trigger::Watch(_)));
                let due = matches!(
                    a.decide(self.live_fingerprint().as_deref(), false),
                    Decision::Release(_)
                );
                a.status(running || due)
            }),
        }
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

/// The delay before restart number `streak + 1` of a color that keeps
/// dying young: 0.1 s, 0.2 s, 0.4 s ... up to 30 s. A color that had run
/// for [`HEALTHY_UPTIME`] starts over at streak 0, which restarts at once.
fn backoff(streak: u32) -> Duration {
    if streak == 0 {
        return Duration::ZERO;
    }
    (Duration::from_millis(100) * 2u32.saturating_pow(streak.min(16) - 1)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
