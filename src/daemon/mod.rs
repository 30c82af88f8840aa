//! The daemon: start-up order, the event loop, and the IO that carries out
//! the deployment core's decisions.
//!
//! The loop owns the `Core` (`deploy`) (every decision, no IO) and everything the
//! core must not touch: the tasks, the clients waiting for an answer, the
//! build watcher, systemd. Each subsystem (the control socket, release
//! tasks, the build watcher, drains, exit watchers, signals) sends into one
//! channel, wrapped in the closed `Event` enum; each arm of the loop is
//! one call. Events that change the deployment become a core `Input`, and
//! the `Effect`s that come back are carried out in order (`effects.rs`).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;

use crate::color::Color;
use crate::config::Config;
use crate::deploy::auto::Auto;
use crate::deploy::state::State;
use crate::deploy::TaskReport;
use crate::deploy::{Checked, ClientId, Core, Drained, Exited, Input, Now, Process, TaskId};
use crate::net::listen::Listeners;
use crate::ops::control::{self, Command, Responder};
use crate::ops::protocol::{Reply, Request};
use crate::ops::systemd;
use crate::pipeline::{stage, watch};
use crate::store::layout;
use crate::supervise::process::AppProcess;
use crate::supervise::reaper::Reaper;
use crate::{Ctx, Sink};

mod effects;
mod monitor;
mod pausing;
mod queries;
mod recover;
mod reexec;
mod service;
mod status;
mod telemetry;
mod watching;

/// Everything the daemon reacts to.
pub(crate) enum Event {
    /// A client's request, from the control socket.
    Control(Command),
    /// A release, rollback or restart task's report.
    Task(TaskReport<AppProcess>),
    /// The watched build directory was quiet for `settle`.
    Watch(watch::Settled),
    /// A drain stopped a color's process.
    Drained(Drained),
    /// A drain sent its stop signal to a color's process.
    Signalled(Color, Pid),
    /// A drain's answer to a reclaim: the process, handed back before its
    /// stop signal, or `None`.
    Reclaimed(Color, Option<AppProcess>),
    /// A color's main process exited.
    Exited(Exited),
    /// The backoff before restarting a dead live color has passed.
    RestartDue(Color),
    /// A deadline the core asked to be woken for has come.
    Due,
    /// One repeated health check.
    Checked(Checked),
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP: read the config file again.
    Reload,
    /// Under systemd, every few seconds.
    Tick,
    /// SIGUSR2: re-execute bgd's binary in place.
    Reexec,
    /// The new binary failed its check: requests are taken again.
    ExecAbandoned,
    /// Exec the new binary now.
    Exec,
}

/// Runs the daemon until it is stopped. `inherited` holds the sockets
/// systemd passed (socket activation or the fd store), if any.
pub async fn run(config: Config, inherited: Vec<(OwnedFd, String)>) -> anyhow::Result<()> {
    let root = config.fixed.root.clone();
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create root {}", root.display()))?;
    let _lock = lock_root(&root)?;
    let contain = Arc::new(crate::supervise::contain::Containment::setup(&root));
    contain.remove_stale_steps();
    let Left {
        mut state,
        found,
        inherited,
        notes,
    } = take_over(&root, &contain, inherited)?;
    if let Err(e) = contain.limit(config.app.memory_max.as_deref(), config.app.cpu_weight) {
        tracing::warn!("{e}");
    }
    stage::remove_leftovers(&root).with_context(|| format!("cannot clean {}", root.display()))?;
    if state.pause.is_none() {
        crate::supervise::hold::end(&root);
    }
    crate::pipeline::releases::at_start(&root, &mut state)?;
    let fixed = &config.fixed;
    let listeners = Arc::new(Listeners::adopt_or_bind(
        &fixed.listen,
        fixed.traffic,
        inherited,
        Some(layout::group_order(&root)),
    )?);
    listeners.store_in_systemd();
    listeners
        .set_clients(config.rollout.testers.clone(), config.rollout.canary_by)
        .context("cannot steer by client address")?;
    let reaper = Reaper::start().context("cannot start reaping child processes")?;
    let (tx, rx) = mpsc::unbounded_channel();
    forward_signals(tx.clone())?;
    let access = control::Access {
        group: config.fixed.control_group,
    };
    let control = control::bind(&config.fixed.control, config.fixed.control_mode, access)?;
    let telemetry = telemetry::Telemetry::start(config.fixed.metrics, state.live, &contain)?;
    telemetry.traffic_policy(&config.rollout);
    let logs = Arc::new(crate::supervise::logs::LogHub::default());
    let ctx = Arc::new(Ctx {
        config,
        listeners,
        reaper,
        logs,
        contain,
    });
    tokio::spawn(control::serve(control, access, sink(&tx, Event::Control)));
    tokio::spawn(guard_sockets(
        ctx.listeners.clone(),
        ctx.config.fixed.root.clone(),
    ));
    if systemd::under_systemd() {
        tokio::spawn(tick(tx.clone()));
    }
    tracing::info!(name = %ctx.config.fixed.name, control = %ctx.config.fixed.control.display(), containment = %ctx.contain.describe(), "bgd is up");

    let mut daemon = Daemon::new(ctx, state, tx, telemetry, notes);
    daemon.start_watching()?;
    for f in found {
        let color = f.color;
        let process = AppProcess::adopt(&daemon.ctx, f);
        daemon.watch_exit(&process);
        daemon.feed(Input::Adopt { color, process });
    }
    daemon.feed(Input::Boot);
    daemon.run(rx).await;

    let ctx = daemon.ctx;
    let _ = std::fs::remove_file(&ctx.config.fixed.control);
    ctx.listeners.remove_unix_paths();
    ctx.contain.remove_tree();
    tracing::info!("bgd stopped");
    Ok(())
}

/// What a previous bgd left behind, taken over at start-up, before any
/// socket is bound.
struct Left {
    state: State,
    /// The colors still running, to adopt.
    found: Vec<crate::supervise::adoption::Found>,
    /// The sockets: systemd's, else a relay's, else a pause's holder's.
    inherited: Vec<(OwnedFd, String)>,
    /// bgd's own files it could not read or write whole, for status.
    notes: crate::store::files::Notes,
}

/// Reads the state (before anything is killed: a bgd that cannot tell
/// which color is live stops here, with the app still serving), adopts or
/// kills what a previous bgd left running, and takes the sockets it held.
fn take_over(
    root: &Path,
    contain: &crate::supervise::contain::Containment,
    inherited: Vec<(OwnedFd, String)>,
) -> anyhow::Result<Left> {
    let notes = crate::store::files::Notes::default();
    let (mut state, damaged) = crate::store::state::load(root)?;
    let (found, held) = crate::supervise::adoption::find(root, contain, &state, &notes);
    if let Some(note) = damaged {
        notes.set("state.json", note);
        let pointed = crate::store::state::pointed_live(root);
        let running: Vec<_> = found.iter().map(|f| (f.color, f.record.release)).collect();
        if recover::trust_what_runs(&mut state, &running, pointed, &notes) {
            crate::store::state::save(&state, root)
                .with_context(|| format!("cannot write {}", layout::state_file(root).display()))?;
        }
    }
    // A pause's holder keeps the sockets (and the connections waiting on
    // them) when no color runs: the same sockets, so taken before binding.
    let holder = crate::supervise::hold::take(root);
    let inherited = match (inherited.is_empty(), held.is_empty()) {
        (false, _) => inherited,
        (true, false) => held,
        (true, true) => holder,
    };
    Ok(Left {
        state,
        found,
        inherited,
        notes,
    })
}

/// A [`Sink`] for a subsystem whose messages the daemon wraps with `wrap`.
fn sink<M: 'static>(tx: &UnboundedSender<Event>, wrap: fn(M) -> Event) -> Sink<M> {
    let tx = tx.clone();
    Arc::new(move |m| tx.send(wrap(m)).is_ok())
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

/// Every [`GUARD_EVERY`]: the app's sockets and the steering program are
/// put right, and other processes in bgd's socket groups reported
/// (`net/listen/guard.rs`), on the loop's thread.
async fn guard_sockets(listeners: Arc<Listeners>, root: PathBuf) {
    let mut interval = tokio::time::interval(GUARD_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewals = listeners.renewals();
    loop {
        interval.tick().await;
        // On the loop's own thread: a look is a netlink query and a few
        // socket options (well under a millisecond), and a thread of the
        // blocking pool for it cost more wake-ups than the look itself.
        listeners.guard();
        // A pause's holder keeps the sockets it was given: after a renewal
        // it would hand a later bgd the dead one.
        let now = listeners.renewals();
        if now != renewals {
            renewals = now;
            if let Err(e) = crate::supervise::hold::renew(&root, listeners.named()) {
                tracing::warn!("cannot give the pause's holder the renewed sockets: {e}");
            }
        }
    }
}

/// How often the sockets' groups are looked at.
const GUARD_EVERY: Duration = Duration::from_secs(2);

/// The longest gap between ticks under systemd.
const TICK: Duration = Duration::from_secs(5);

/// One bgd per root: a second one would fight over the colors.
fn lock_root(root: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let path = layout::lock_file(root);
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!("another bgd already runs with root {} ({e}): stop it first, or give this one another root", root.display())
    })
}

fn forward_signals(tx: UnboundedSender<Event>) -> std::io::Result<()> {
    let stop: fn() -> Event = || Event::Stop;
    let reload: fn() -> Event = || Event::Reload;
    let reexec: fn() -> Event = || Event::Reexec;
    for (kind, event) in [
        (SignalKind::terminate(), stop),
        (SignalKind::interrupt(), stop),
        (SignalKind::hangup(), reload),
        (SignalKind::user_defined2(), reexec),
    ] {
        let mut s = signal(kind)?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(event()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

impl Process for AppProcess {
    fn pid(&self) -> Pid {
        self.pid
    }

    /// Its recorded exit, or, if its exit event has not been handled yet,
    /// what /proc says at this moment (a zombie or no process: exited).
    fn exited(&self) -> Option<crate::deploy::Exit> {
        self.exit_status().or_else(|| {
            (!crate::supervise::process::leader_runs(self.pid))
                .then_some(crate::deploy::Exit::Unknown)
        })
    }
}

/// A running release, rollback or restart task.
struct Task {
    /// Aborting it drops its process, which kills the process's group.
    abort: tokio::task::AbortHandle,
    /// Set to stop staging before it swaps anything into place.
    cancel: Arc<AtomicBool>,
}

struct Daemon {
    /// Replaced whole by a reload; tasks keep the one they started with.
    ctx: Arc<Ctx>,
    core: Core<AppProcess>,
    /// Every subsystem's way into the loop; held here so it never closes.
    events: UnboundedSender<Event>,
    /// Clients waiting for a release, rollback, promotion or abort.
    clients: Clients,
    tasks: HashMap<TaskId, Task>,
    /// The last rescue of each color's accept queue, `true` once it has
    /// ended: a new process of that color starts only then, or the two
    /// would take turns accepting (and bgd would relay the new process's
    /// connections). A watch, so a launch that is aborted while it waits
    /// takes nothing away from the next one.
    rescues: HashMap<Color, tokio::sync::watch::Receiver<bool>>,
    /// Each running drain, by the pid it stops: a message asks it to hand
    /// the process back if it has not sent its stop signal (`Effect::Reclaim`).
    drains: HashMap<Pid, tokio::sync::mpsc::UnboundedSender<()>>,
    /// bgd's own program, for `bgctl reexec`.
    program: Program,
    /// The history's writer, which keeps the records' order.
    history: UnboundedSender<crate::deploy::Record>,
    /// The repeated health checks under way, by color.
    monitors: HashMap<Color, tokio::task::AbortHandle>,
    /// Auto-release, when `[watch]` is configured.
    watch: Watching,
    /// The outcome of the last release, rollback or reload, for status.
    last_result: Option<String>,
    /// The last STATUS= line sent to systemd.
    status_line: String,
    /// Lifecycle events (`bgctl events`) and the metrics.
    telemetry: telemetry::Telemetry,
    /// bgd's own files it could not read or write whole (status).
    notes: crate::store::files::Notes,
}

/// The clients that wait for the outcome of what they asked.
#[derive(Default)]
struct Clients {
    /// Each one's connection; dropped after its last reply, which closes it.
    waiting: HashMap<ClientId, Responder>,
    next: ClientId,
}

impl Clients {
    /// Keeps `reply` until the core sends this client its last answer.
    fn add(&mut self, reply: Responder) -> ClientId {
        self.next += 1;
        self.waiting.insert(self.next, reply);
        self.next
    }

    /// Sends `reply` to `client`; its last reply closes its connection.
    fn answer(&mut self, client: ClientId, reply: Reply) {
        let responder = if reply.is_last() {
            self.waiting.remove(&client)
        } else {
            self.waiting.get(&client).cloned()
        };
        if let Some(r) = responder {
            // A client that went away just misses the answer.
            let _ = r.send(reply);
        }
    }
}

/// bgd's own program, which `bgctl reexec` replaces in place.
struct Program {
    /// bgd's binary as it was started: a reexec runs what is at this path
    /// now.
    exe: std::path::PathBuf,
    /// This start of the program (status `instance`).
    instance: u64,
    /// A reexec was decided: requests are refused until it happens.
    exec_pending: bool,
}

/// Auto-release of the watched build directory (`[watch]`).
#[derive(Default)]
struct Watching {
    /// Its decisions; `None` without `[watch]`.
    auto: Option<Auto>,
    /// The build watcher's task, replaced when a reload changes `[watch]`.
    task: Option<JoinHandle<()>>,
    /// A release ended: auto-release may have a tree to release now.
    due: bool,
    /// The operator's decisions as last written to `root/operator.json`.
    saved: crate::deploy::auto::Operator,
}

impl Daemon {
    fn new(
        ctx: Arc<Ctx>,
        state: State,
        events: UnboundedSender<Event>,
        telemetry: telemetry::Telemetry,
        notes: crate::store::files::Notes,
    ) -> Daemon {
        let root = ctx.config.fixed.root.clone();
        let (operator, damaged) = crate::store::operator::load(&root);
        if let Some(note) = damaged {
            notes.set("operator.json", note);
        }
        if let Some(note) = crate::store::history::load(&root).note {
            notes.set("history.json", note);
        }
        Daemon {
            core: Core::new(state, policy(&ctx), now()),
            history: effects::history_writer(root.clone(), notes.clone()),
            program: Program {
                exe: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
                instance: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                exec_pending: false,
            },
            ctx,
            monitors: HashMap::new(),
            events,
            clients: Clients::default(),
            tasks: HashMap::new(),
            rescues: HashMap::new(),
            drains: HashMap::new(),
            watch: Watching {
                saved: operator,
                ..Watching::default()
            },
            last_result: None,
            status_line: String::new(),
            telemetry,
            notes,
        }
    }

    async fn run(&mut self, mut rx: UnboundedReceiver<Event>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Control(cmd) => self.on_command(cmd),
                Event::Task(report) => self.on_task_report(report),
                Event::Watch(settled) => self.on_watch_settled(settled),
                Event::Drained(d) => self.on_drained(d),
                Event::Signalled(color, pid) => self.feed(Input::Signalled { color, pid }),
                Event::Reclaimed(color, process) => self.on_reclaimed(color, process),
                Event::Exited(e) => self.feed(Input::Exited(e)),
                Event::RestartDue(color) => self.feed(Input::RestartDue { color }),
                Event::Due => self.feed(Input::Due),
                Event::Checked(c) => self.feed(Input::Checked(c)),
                Event::Stop => self.feed(Input::Stop),
                Event::Reload => self.on_reload(),
                Event::Tick => self.on_tick(),
                Event::Reexec => self.reexec(None),
                Event::ExecAbandoned => self.program.exec_pending = false,
                Event::Exec => self.exec_now(),
            }
            if std::mem::take(&mut self.watch.due) {
                self.auto_check();
            }
            self.publish_status();
            if self.core.finished() {
                return;
            }
        }
    }

    fn on_command(&mut self, Command { request, reply }: Command) {
        if self.program.exec_pending && request != Request::Status {
            let m = "bgd is re-executing itself: try again in a moment";
            let f = crate::ops::protocol::Failure::new(
                crate::ops::protocol::FailureKind::Busy,
                None,
                m,
            );
            let _ = reply.send(crate::ops::protocol::Reply::Error(f));
            return;
        }
        match request {
            Request::Status => self.reply_status(reply),
            Request::Release {
                dir,
                label,
                canary,
                preview,
                wait_bake,
            } => {
                let client = Some(self.client(reply));
                self.feed(Input::Release {
                    source: dir.into(),
                    label,
                    trigger: crate::deploy::Trigger::Client,
                    client,
                    canary,
                    preview,
                    wait_bake,
                })
            }
            Request::Compare { paths } => self.compare(paths, reply),
            Request::Rollback { to } => {
                let client = Some(self.client(reply));
                self.feed(Input::Rollback { client, to })
            }
            Request::Releases => self.reply_releases(reply),
            Request::Pause { max_ms, page } => self.on_pause_request(max_ms, page, reply),
            Request::Resume => self.on_resume_request(reply),
            Request::Promote { percent } => {
                let client = Some(self.client(reply));
                self.feed(Input::Promote { percent, client })
            }
            Request::Abort => {
                let client = Some(self.client(reply));
                self.feed(Input::Abort { client })
            }
            Request::Reexec => self.reexec(Some(reply)),
            Request::Watch { pause } => self.on_watch_request(pause, reply),
            Request::History => self.reply_history(reply),
            Request::Logs {
                color,
                lines,
                follow,
            } => self.stream_logs(color, lines, follow, reply),
            Request::Events { follow } => self.stream_events(follow, reply),
        }
    }

    /// A drain handed its process back (or could not): to the core.
    fn on_reclaimed(&mut self, color: Color, process: Option<AppProcess>) {
        if let Some(p) = &process {
            self.drains.remove(&p.pid);
        }
        self.feed(Input::Reclaimed { color, process });
    }

    fn on_drained(&mut self, d: Drained) {
        self.drains.remove(&d.pid);
        self.feed(Input::Drained(d));
        // An app may unlink its socket path when it stops.
        for m in self.ctx.listeners.keep_public_paths() {
            tracing::warn!("{m}");
        }
    }

    /// Keeps `reply` until the core sends this client its last answer.
    fn client(&mut self, reply: Responder) -> ClientId {
        self.clients.add(reply)
    }

    /// A task's report goes to the core as it came; a ready color's exit
    /// is watched from then on.
    fn on_task_report(&mut self, report: TaskReport<AppProcess>) {
        if let TaskReport::Prepared { task, result } = &report {
            self.tasks.remove(task);
            if let Ok((app, _)) = result {
                self.watch_exit(app);
            }
        }
        self.feed(Input::Task(report));
    }

    /// Reports the exit of `app`'s leader as [`Event::Exited`]; the core
    /// ignores it unless `app` is then the live color's process.
    fn watch_exit(&self, app: &AppProcess) {
        let (color, pid) = (app.color, app.pid);
        let exit = app.wait_exit_with_tail();
        let events = self.events.clone();
        let contain = self.ctx.contain.clone();
        tokio::spawn(async move {
            let (exit, uptime, tail) = exit.await;
            let strays = contain
                .members(color, pid)
                .into_iter()
                .filter(|p| *p != pid)
                .count();
            let _ = events.send(Event::Exited(Exited {
                color,
                pid,
                exit,
                uptime,
                tail,
                strays,
            }));
        });
    }
}

/// What the core needs of the config: `[traffic]`, `health.failures`,
/// and whether the listeners can be split for a canary.
fn policy(ctx: &Ctx) -> crate::deploy::Policy {
    policy_of(&ctx.config, &ctx.listeners)
}

fn policy_of(config: &Config, listeners: &Listeners) -> crate::deploy::Policy {
    crate::deploy::Policy {
        rollout: config.rollout.clone(),
        failures: config.health.failures,
        no_split: listeners.no_split(),
        keep: config.keep,
        drain_delay: config.app.drain_delay,
        drain_timeout: config.app.drain_timeout,
    }
}

/// The moment an input is handled.
fn now() -> Now {
    Now {
        mono: Instant::now(),
        wall: SystemTime::now(),
    }
}
