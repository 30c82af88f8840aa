//! Carrying out the core's effects: the only place where its decisions
//! touch files, processes, tasks, clients and systemd.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::mpsc::UnboundedSender;

use super::{sink, Daemon, Event, Task};
use crate::color::Color;
use crate::config::TrafficMode;
use crate::deploy::auto::Auto;
use crate::deploy::state::State;
use crate::deploy::{Drained, Effect, Ended, Failed, Input, Launch, Level, TaskReport, Trigger};
use crate::ops::protocol::Reply;
use crate::ops::protocol::{Failure, FailureKind};
use crate::pipeline::prepare;
use crate::store::history;
use crate::store::state;
use crate::supervise::drain;
use crate::supervise::logs::escape_controls;
use crate::supervise::process::AppProcess;

/// The longest a start of a color waits for the rescue of its queue.
const RESCUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Daemon {
    /// Hands `input` to the core and carries out what it decides, including
    /// what it decides about the outcomes of its own effects (a commit).
    pub(super) fn feed(&mut self, input: Input<AppProcess>) {
        let mut queue = VecDeque::from(self.handle(input));
        while let Some(effect) = queue.pop_front() {
            if let Some(input) = self.carry_out(effect) {
                // What follows from a commit's outcome comes before
                // anything else still queued.
                for e in self.handle(input).into_iter().rev() {
                    queue.push_front(e);
                }
            }
        }
    }

    /// Does one effect; returns what the core must hear about it at once.
    fn carry_out(&mut self, effect: Effect<AppProcess>) -> Option<Input<AppProcess>> {
        match effect {
            Effect::Save(state) => self.save(&state),
            Effect::Commit(state) => return Some(Input::Committed(self.commit(&state))),
            Effect::PointLive(color) => self.point_live(color),
            Effect::Steer(color) => {
                if let Err(e) = self.ctx.listeners.steer(color) {
                    tracing::error!("cannot steer new connections to {color}: {e}");
                }
            }
            Effect::Split { canary, percent } => {
                if let Err(e) = self.ctx.listeners.split(canary, percent) {
                    tracing::error!(
                        "cannot give the canary {canary} {percent}% of new connections: {e}"
                    );
                }
            }
            Effect::Testers(color) => {
                if let Err(e) = self.ctx.listeners.route_testers(color) {
                    tracing::error!("cannot steer the testers' connections: {e}");
                }
            }
            Effect::WakeAt(at) => self.wake_at(at),
            Effect::Monitor { color, pid } => self.monitor(color, pid),
            Effect::Unmonitor(color) => self.unmonitor(color),
            Effect::Rescue(color) => {
                let (ended, watch) = tokio::sync::watch::channel(false);
                let listeners = self.ctx.listeners.clone();
                tokio::spawn(async move {
                    crate::supervise::rescue::rescue(listeners, color).await;
                    let _ = ended.send(true);
                });
                self.rescues.insert(color, watch);
            }
            Effect::Launch(launch) => self.launch(launch),
            Effect::Abort(task) => self.abort(task),
            Effect::Drain { color, process } => self.drain(color, process),
            Effect::Reclaim { color, pid } => {
                let asked = self.drains.get(&pid).is_some_and(|d| d.send(()).is_ok());
                if !asked {
                    let _ = self.events.send(Event::Reclaimed(color, None));
                }
            }
            Effect::Forget(ids) => self.forget(ids),
            // Dropping a process whose group may still run kills the group.
            Effect::Discard(process) => drop(process),
            // Every process of the color, setsid()ed workers too.
            Effect::Kill { color, pid } => self.ctx.contain.signal(color, pid, Signal::SIGKILL),
            Effect::RestartAfter { color, delay } => {
                let events = self.events.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = events.send(Event::RestartDue(color));
                });
            }
            Effect::AfterLive { color, release } => self.run_after_live(color, release),
            Effect::Reply { client, answer } => self.clients.answer(client, Reply::from(answer)),
            Effect::Ended(ended) => self.ended(*ended),
            Effect::Unlisten => self.ctx.listeners.unlisten(),
            Effect::Hold(color) => self.hold(color),
            Effect::Ready => crate::ops::systemd::ready(),
            Effect::Stopping => crate::ops::systemd::stopping(),
            // A message may quote the app (a hook's line, a check's output).
            Effect::Log(level, message) => match (level, escape_controls(&message)) {
                (Level::Info, m) => tracing::info!("{m}"),
                (Level::Warn, m) => tracing::warn!("{m}"),
                (Level::Error, m) => tracing::error!("{m}"),
            },
            // Published by `handle` as the core returned it, in order.
            Effect::Notify(_) => {}
        }
        None
    }

    fn save(&self, state: &State) {
        let root = &self.ctx.config.fixed.root;
        match state::save(state, root) {
            Ok(()) => self.notes.clear("state.json write"),
            Err(e) => {
                let file = crate::store::layout::state_file(root);
                let m = format!("cannot write {}: {e}; a restart of bgd would find the state before this change", file.display());
                tracing::error!("{m}");
                self.notes.set("state.json write", m);
            }
        }
    }

    /// Writes the state for a decision that waits on it; a full disk is
    /// said as such (the client's failure is then a staging one, exit 6).
    fn commit(&self, state: &State) -> Result<(), crate::deploy::WriteFailed> {
        let root = &self.ctx.config.fixed.root;
        let file = crate::store::layout::state_file(root);
        let saved = state::save(state, root).map_err(|e| {
            let full = disk_full(&e);
            let hint = if full {
                ": the disk that holds bgd's root is full; free space there and try again"
            } else {
                ""
            };
            crate::deploy::WriteFailed {
                message: format!("{}: {e}{hint}", file.display()),
                full,
            }
        });
        match &saved {
            Ok(()) => self.notes.clear("state.json write"),
            Err(e) => self
                .notes
                .set("state.json write", format!("cannot write {e}")),
        }
        saved
    }

    fn point_live(&self, color: Color) {
        let root = &self.ctx.config.fixed.root;
        if let Err(e) = state::point_live_symlink(root, color) {
            tracing::error!("cannot repoint {}/live: {e}", root.display());
        }
    }

    fn launch(&mut self, launch: Launch) {
        let task = launch.task;
        let cancel = Arc::new(AtomicBool::new(false));
        let events = sink(&self.events, Event::Task);
        let rescue = self.rescues.get(&launch.color).cloned();
        let color = launch.color;
        let run = prepare::run(self.ctx.clone(), launch, cancel.clone(), events.clone());
        let handle = tokio::spawn(async move {
            if let Some(mut ended) = rescue {
                // A rescue ends after two empty looks at the queue; 5 s is
                // far beyond that.
                let waited = tokio::time::timeout(RESCUE_WAIT, ended.wait_for(|e| *e)).await;
                if waited.is_err() {
                    tracing::warn!(%color, "the rescue of {color}'s queue still runs after {RESCUE_WAIT:?}: starting {color} anyway");
                }
            }
            run.await
        });
        let abort = handle.abort_handle();
        // A task that panics sends no report: say it failed, so the release
        // (or restart) does not wait for it forever.
        tokio::spawn(async move {
            if let Err(e) = handle.await {
                if e.is_panic() {
                    let failure = Failure::new(
                        FailureKind::Internal,
                        None,
                        "bgd's release task failed unexpectedly (a bug: see bgd's log); the old color stays live",
                    );
                    let result = Err(Failed {
                        failure,
                        exit: None,
                    });
                    events(TaskReport::Prepared { task, result });
                }
            }
        });
        self.tasks.insert(task, Task { abort, cancel });
    }

    /// Removes kept copies the state no longer names, off the loop.
    fn forget(&self, ids: Vec<u64>) {
        let root = self.ctx.config.fixed.root.clone();
        tokio::task::spawn_blocking(move || {
            for id in ids {
                crate::pipeline::stage::remove_kept(&root, id);
            }
        });
    }

    fn abort(&mut self, task: u64) {
        if let Some(t) = self.tasks.remove(&task) {
            t.cancel.store(true, Ordering::Relaxed);
            // Dropping the task's process kills its group.
            t.abort.abort();
        }
    }

    /// Stops `proc` (after a quiesce, in gate mode, if it no longer
    /// receives connections), then reports it.
    fn drain(&mut self, color: Color, proc: AppProcess) {
        let ctx = self.ctx.clone();
        let quiet = ctx.config.fixed.traffic == TrafficMode::Gate
            && ctx.listeners.receiving() != Some(color);
        let events = self.events.clone();
        let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<()>();
        self.drains.insert(proc.pid, ask);
        tokio::spawn(async move {
            let app = &ctx.config.app;
            let (sig, delay, deadline) = (app.stop_signal, app.drain_delay, app.drain_timeout);
            let pid = proc.pid;
            if quiet {
                // Until its stop signal it can be taken back (a rollback).
                let listeners = ctx.listeners.clone();
                tokio::select! {
                    left = drain::quiesce(listeners, color, pid.as_raw(), delay) => {
                        if !left.is_empty() {
                            tracing::info!(%color, "after app.drain_delay ({}): {left}; sending {sig}", humantime::format_duration(delay));
                        }
                    }
                    Some(()) = asked.recv() => {
                        let _ = events.send(Event::Reclaimed(color, Some(proc)));
                        return;
                    }
                }
            }
            let _ = events.send(Event::Signalled(color, pid));
            let stopped = {
                let stop = drain::stop(ctx.listeners.clone(), &proc, false, delay, sig, deadline);
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        s = &mut stop => break s,
                        Some(()) = asked.recv() => {
                            let _ = events.send(Event::Reclaimed(color, None));
                        }
                    }
                }
            };
            // Dropped before the event, so its pgid record is gone before
            // the daemon can start this color again.
            drop(proc);
            // What it left queued (it was frozen or wedged, and killed) goes
            // to the live color, or is reset: the next build of this color
            // never finds it (issue 25). Before the event: a start of this
            // color waits for it.
            if quiet && ctx.listeners.accept_queue(color) > 0 {
                crate::supervise::rescue::rescue(ctx.listeners.clone(), color).await;
            }
            let _ = events.send(Event::Drained(Drained {
                color,
                pid,
                exit: stopped.exit,
                forced: stopped.forced,
            }));
        });
    }

    /// `hooks.after_live`, beside everything else: a failure is logged.
    fn run_after_live(&self, color: Color, release: u64) {
        if self.ctx.config.hooks.after_live.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let dir = crate::store::layout::color_dir(&ctx.config.fixed.root, color);
            let env = crate::supervise::process::color_env(&ctx, color, release);
            let hooks = ctx.config.hooks.after_live.clone();
            let log = |line: &str| {
                let line = escape_controls(line);
                tracing::info!(%color, hook = "after_live", "{line}")
            };
            match crate::pipeline::hooks::run(&ctx, "after_live", &hooks, &dir, &env, log).await {
                Ok(()) => tracing::info!(%color, release, "after_live hooks done"),
                Err(f) => {
                    tracing::warn!(%color, release, "{} (not fatal: release {release} stays live)", f.message)
                }
            }
        });
    }

    /// A release or rollback ended: the history (off the loop), the last
    /// result, and auto-release's view of it.
    fn ended(&mut self, ended: Ended) {
        let Ended {
            record,
            trigger,
            failure,
        } = ended;
        self.last_result = Some(match &failure {
            None => format!("{} ok: {}", record.finished, record.result),
            Some(f) => format!(
                "{} {} of release {} failed at {}: {}",
                record.finished,
                record.kind,
                record.release,
                f.step.map_or("request".to_string(), |s| s.to_string()),
                f.message
            ),
        });
        if let Some(a) = &mut self.watch.auto {
            tell_auto(a, &record, &trigger, failure.as_ref());
        }
        self.watch.due = true;
        let _ = self.history.send(record);
    }
}

/// Writes history records in the order they come, off the loop (each is
/// a read-modify-write of the file, with fsync).
/// Whether `e` says the disk (or the quota) is full.
fn disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            format!("{:?}", e.kind()).as_str(),
            "StorageFull" | "QuotaExceeded"
        )
}

/// What cannot be written or read back is noted for status.
pub(super) fn history_writer(
    root: std::path::PathBuf,
    notes: crate::store::files::Notes,
) -> UnboundedSender<history::Record> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<history::Record>();
    tokio::spawn(async move {
        while let Some(record) = rx.recv().await {
            let (root, release) = (root.clone(), record.release);
            let written = tokio::task::spawn_blocking(move || history::append(&root, record)).await;
            let Ok((written, damaged)) = written else {
                continue;
            };
            if let Some(note) = damaged {
                notes.set("history.json", note);
            }
            match written {
                Ok(()) => notes.clear("history.json write"),
                Err(e) => notes.set(
                    "history.json write",
                    format!("cannot write the release history: {e}; the record of release {release} is not in `bgctl history`"),
                ),
            }
        }
    });
    tx
}

/// What auto-release learns from a release's end: its own release's
/// outcome, or that a client's rollback must stick.
fn tell_auto(
    a: &mut Auto,
    record: &history::Record,
    trigger: &Trigger,
    failure: Option<&crate::ops::protocol::Failure>,
) {
    let rollback = record.kind == "rollback";
    match (trigger, failure) {
        (Trigger::Watch(_), None) => a.succeeded(record.release, &record.result),
        (Trigger::Watch(fp), Some(f)) => a.failed(fp, record.release, f),
        // A rollback must stick: the watched tree is held back until it changes.
        (Trigger::Client, None) if rollback => {
            a.hold_current("a rollback made an older build live")
        }
        (Trigger::Automatic, None) if rollback || record.kind == "abort" => {
            a.hold_current("bgd rolled it back automatically")
        }
        (Trigger::Client | Trigger::Automatic, _) => {}
    }
}
