//! A release's way from its task's report to its end: progress, staging,
//! the swap (committed before anything else changes), the old color's
//! drain, success or failure.

use std::time::Instant;

use super::{ColorPhase, Core, Effect, Ended, Failed, Kind, Level, Now, Process, TaskId};
use super::{Drained, Outcome, Release, ReleasePhase, Swapped, Timings};
use crate::color::Color;
use crate::deploy::record::Record;
use crate::deploy::state::{Build, State};
use crate::deploy::Exit;
use crate::deploy::{Failure, Step, WriteFailed};

impl<P: Process> Core<P> {
    fn current(&mut self, task: TaskId) -> Option<&mut Release<P>> {
        self.release.as_mut().filter(|r| r.task == task)
    }

    pub(super) fn on_progress(&mut self, now: Now, task: TaskId, step: Step, message: String) {
        let Some(r) = self.current(task) else { return };
        r.reach(step, now.mono);
        let client = r.client;
        self.log(Level::Info, format!("{step}: {message}"));
        self.progress(client, step, message);
    }

    /// The new build is in the color's directory: record it.
    pub(super) fn on_staged(&mut self, task: TaskId, build: Build) {
        let Some(r) = self.current(task) else { return };
        let ReleasePhase::Preparing { staged } = &mut r.phase else {
            return;
        };
        *staged = true;
        let (color, new) = (r.color, matches!(r.kind, Kind::Release { .. }));
        if new {
            // Its kept copy is in root/releases now, beside the color's.
            self.state.releases.retain(|k| k.release != build.release);
            self.state
                .releases
                .push(crate::deploy::state::Kept::of(&build));
        }
        self.state.set_build(color, Some(build));
        self.save();
    }

    /// A task ended: the release's, a restart's, or one that was aborted.
    pub(super) fn on_prepared(
        &mut self,
        now: Now,
        task: TaskId,
        result: Result<(P, Timings), Failed>,
    ) {
        let ours = |r: &mut Release<P>| {
            r.task == task && matches!(r.phase, ReleasePhase::Preparing { .. })
        };
        if let Some(r) = self.release.take_if(ours) {
            return match result {
                Ok((process, _)) if process.exited().is_some() => {
                    let exit = process.exited().unwrap_or(Exit::Unknown);
                    self.refuse_dead(now, r, process, exit)
                }
                Ok((process, timings)) if self.wants_canary(&r) => {
                    self.start_canary(now, r, process, timings)
                }
                Ok((process, timings)) => self.commit_swap(r, process, timings),
                Err(failed) => self.fail(now, r, failed.failure, failed.exit),
            };
        }
        for color in Color::BOTH {
            if let ColorPhase::Restarting { task: Some(t), .. } = self.slot(color).phase {
                if t == task {
                    return match result {
                        Ok((process, _)) if process.exited().is_some() => {
                            let exit = process.exited().unwrap_or(Exit::Unknown);
                            self.restart_dead(now, color, process, exit)
                        }
                        Ok((process, _)) => self.finish_restart(now, color, process),
                        Err(failed) => self.restart_failed(now, color, failed),
                    };
                }
            }
        }
        // An aborted task's report, already in flight.
        if let Ok((process, _)) = result {
            self.emit(Effect::Discard(process));
        }
    }

    /// The new color is ready: write it down as live before anything else.
    pub(super) fn commit_swap(&mut self, mut r: Release<P>, process: P, timings: Timings) {
        let before = self.state.clone();
        self.state.live = Some(r.color);
        // The maintenance page of a pause never counts as a build that
        // went live; any other swap ends the pause.
        let went_live = self.pause_swap(&r);
        if let Some(mut b) = self.state.build(r.color).cloned().filter(|_| went_live) {
            b.went_live = true;
            if let Some(k) = self.state.kept_mut(b.release) {
                k.went_live = true;
            }
            self.state.set_build(r.color, Some(b));
        }
        r.phase = ReleasePhase::Committing {
            process,
            timings,
            before,
        };
        self.release = Some(r);
        self.emit(Effect::Commit(self.state.clone()));
    }

    /// The outcome of the last commit: admitting a release, or its swap.
    pub(super) fn on_committed(&mut self, now: Now, result: Result<(), WriteFailed>) {
        if self.pause_committed(now, &result) {
            return;
        }
        let Some(mut r) = self.release.take() else {
            return;
        };
        match std::mem::replace(&mut r.phase, ReleasePhase::Preparing { staged: true }) {
            ReleasePhase::Admitting {
                before,
                launch,
                evicting,
            } => self.on_admitted(now, r, (before, launch, evicting), result),
            ReleasePhase::Committing {
                process,
                timings,
                before,
            } => match result {
                Ok(()) => match process.exited() {
                    Some(exit) => self.undo_dead_swap(now, r, process, before, exit),
                    None => self.on_swapped(now, r, process, timings),
                },
                Err(e) => self.swap_failed(now, r, process, before, e),
            },
            phase => {
                r.phase = phase;
                self.release = Some(r);
            }
        }
    }

    /// The swap could not be written: the old color stays live, the new
    /// one drains. Its build is in place, so its record stays.
    fn swap_failed(&mut self, now: Now, r: Release<P>, process: P, before: State, e: WriteFailed) {
        self.state = before;
        self.pause_swap_failed();
        let (color, pid) = (r.color, process.pid());
        self.enter(color, ColorPhase::Draining { pid }, now.wall);
        self.emit(Effect::Drain { color, process });
        self.unswap_side_effects(now, &r);
        let m = format!("cannot record the new live color: {e}; the old color stays live");
        let f = Failure::new(e.kind(), Some(Step::Swap), m);
        // The new build is in the color's directory: `fail` must keep its
        // record, not put back the one this release replaced.
        let r = Release {
            phase: ReleasePhase::Preparing { staged: true },
            ..r
        };
        self.fail(now, r, f, None);
    }

    /// The swap is written: the new color is live.
    fn on_swapped(&mut self, now: Now, r: Release<P>, process: P, timings: Timings) {
        let (id, new) = (r.id, r.color);
        self.emit(Effect::PointLive(new));
        self.emit(Effect::Steer(new));
        self.end_bake_of_old(new, &r.kind);
        let slot = self.slot_mut(new);
        slot.restarts = 0;
        slot.streak = 0;
        self.enter(new, ColorPhase::Live { process }, now.wall);
        self.ready();
        self.emit(Effect::AfterLive {
            color: new,
            release: id,
        });
        self.log(Level::Info, format!("release {id}: {new} is live"));
        self.pause_ended(now, &r);
        self.retire(now, r, timings);
    }

    /// After the swap: keep the old color as the standby, or drain it, or
    /// end at once if it ran nothing.
    fn retire(&mut self, now: Now, mut r: Release<P>, timings: Timings) {
        if self.keep_standby(now, &r) {
            return self.finish(now, r, timings, None, None);
        }
        let old = r.color.other();
        if let Some(process) = self.take_live(old) {
            let pid = process.pid();
            self.enter(old, ColorPhase::Draining { pid }, now.wall);
            r.phase = ReleasePhase::Draining {
                timings,
                swapped: now.mono,
                old_pid: pid,
            };
            let (task, new) = (r.task, r.color);
            self.release = Some(r);
            let message = format!("{new} is live; draining {old} (pid {pid})");
            self.on_progress(now, task, Step::Drain, message);
            return self.emit(Effect::Drain {
                color: old,
                process,
            });
        }
        // The old color was dead and restarting (that restart is moot), or
        // nothing ran there (the first release), or it crashed and bgd
        // switched away from it: what the kernel queued for it in that
        // instant goes to the live color.
        if let ColorPhase::Restarting {
            task: Some(task), ..
        } = self.enter(old, ColorPhase::Stopped, now.wall)
        {
            self.emit(Effect::Abort(task));
        }
        if matches!(
            r.kind,
            Kind::Rollback {
                automatic: Some(_),
                ..
            }
        ) {
            self.emit(Effect::Rescue(old));
        }
        self.finish(now, r, timings, None, None);
    }

    pub(super) fn on_drained(&mut self, now: Now, d: Drained) {
        let Drained {
            color,
            pid,
            exit,
            forced,
        } = d;
        self.log(Level::Info, format!("{color} stopped ({exit})"));
        self.forget_signal(pid);
        let forced = forced.map(|d| {
            let m = format!(
                "{color} was killed after drain_timeout ({}): requests still in flight were cut",
                humantime::format_duration(d)
            );
            self.log(Level::Warn, m.clone());
            m
        });
        let slot = self.slot_mut(color);
        if matches!(slot.phase, ColorPhase::Draining { pid: p } if p == pid) {
            slot.enter(ColorPhase::Stopped, now.wall);
            slot.last_exit = Some(exit);
        }
        if self.evicted(now, pid) || self.pause_evicted(now, pid) {
            return;
        }
        let drained_by = |r: &mut Release<P>| matches!(r.phase, ReleasePhase::Draining { old_pid, .. } if old_pid == pid);
        if let Some(r) = self.release.take_if(drained_by) {
            if let ReleasePhase::Draining {
                timings, swapped, ..
            } = r.phase
            {
                let drained = DrainEnd { exit, forced };
                self.finish(now, r, timings, Some(swapped), Some(drained));
            }
        }
    }

    /// Release `r` succeeded: its old color has stopped.
    pub(super) fn finish(
        &mut self,
        now: Now,
        r: Release<P>,
        timings: Timings,
        swapped: Option<Instant>,
        drained: Option<DrainEnd>,
    ) {
        let total = now.mono.saturating_duration_since(r.started).as_millis() as u64;
        let drain_ms = swapped.map_or(0, |t| {
            now.mono.saturating_duration_since(t).as_millis() as u64
        });
        let forced = drained.as_ref().and_then(|d| d.forced.clone());
        let (id, color) = (r.id, r.color);
        let msg = match &r.kind {
            Kind::Rollback {
                automatic: None, ..
            } => format!("rolled back to release {id} on {color}"),
            Kind::Rollback {
                automatic: Some(why),
                ..
            } => {
                format!("rolled back automatically: {why}; release {id} on {color} serves again")
            }
            Kind::Release { .. } => format!("release {id} is live on {color}"),
            Kind::Promote { .. } => format!("promoted: release {id} is live on {color}"),
            Kind::Abort { automatic: None } => {
                format!("aborted the canary of release {id} on {color}")
            }
            Kind::Abort {
                automatic: Some(why),
            } => {
                format!("aborted the canary of release {id} on {color} automatically: {why}")
            }
        } + &format!(" ({total} ms)")
            + &forced
                .as_ref()
                .map(|f| format!("; {f}"))
                .unwrap_or_default();
        self.log(Level::Info, msg.clone());
        let swapped = Box::new(Swapped {
            release: r.id,
            label: self.state.build(r.color).and_then(|b| b.label.clone()),
            color: r.color,
            previous_exit: drained.map(|d| d.exit),
            forced_drain: forced,
            timings,
            total_ms: total,
            drain_ms,
            message: msg.clone(),
        });
        let outcome = match &r.kind {
            Kind::Release { .. } => Outcome::Released(swapped),
            Kind::Rollback { .. } => Outcome::RolledBack(swapped),
            Kind::Promote { .. } => Outcome::Promoted(swapped),
            Kind::Abort { .. } => Outcome::Aborted(swapped),
        };
        self.ended(now, &r, msg.clone(), None);
        self.prune_releases(self.state.clone());
        if self.waits_for_bake(r.client) {
            self.progress(r.client, Step::Swap, msg);
        } else {
            self.done(r.client, outcome);
        }
        self.after_release(now);
    }

    /// Release `r` failed before its swap took: the old color stays live.
    /// `exit` is how the process it started ended, if it started one.
    pub(super) fn fail(&mut self, now: Now, r: Release<P>, failure: Failure, exit: Option<Exit>) {
        let step = failure
            .step
            .map_or("request".to_string(), |s| s.to_string());
        let what = r.kind.name();
        self.log(
            Level::Error,
            format!(
                "{what} of release {} on {} failed at {step}: {}",
                r.id, r.color, failure.message
            ),
        );
        self.log_tail(Level::Error, r.color, &failure.log_tail, usize::MAX);
        self.ended(now, &r, failure.message.clone(), Some(failure.clone()));
        let before = self.state.clone();
        if let (Some(b), ReleasePhase::Preparing { staged: false }) = (r.kind.replaced(), &r.phase)
        {
            // Nothing was swapped into the color's directory: it still
            // holds what the record said before this release cleared it.
            self.state.set_build(r.color, Some(b.clone()));
        }
        if let Kind::Release { source, .. } = &r.kind {
            self.remember_failed(now, &r, source.display().to_string());
        }
        self.prune_releases(before);
        let slot = self.slot_mut(r.color);
        if matches!(slot.phase, ColorPhase::Starting) {
            slot.enter(ColorPhase::Stopped, now.wall);
            if exit.is_some() {
                slot.last_exit = exit;
            }
        }
        if let Some(live) = self.state.live.filter(|_| !self.holding()) {
            self.log(Level::Info, format!("{live} stays live"));
        }
        let failure = self.pause_failed(failure);
        self.refuse(r.client, failure);
        if self.state.live.is_none() {
            // No color has been live: nobody will accept, so refuse
            // clients rather than let them wait in the queue.
            self.emit(Effect::Unlisten);
        }
        self.after_release(now);
    }

    /// Records the end of `r` for the history, auto-release and status.
    fn ended(&mut self, now: Now, r: &Release<P>, result: String, failure: Option<Failure>) {
        self.ended_as(now, r, r.kind.name(), result, failure)
    }

    /// Like [`ended`](Self::ended), recorded as `kind` (a release that
    /// became a canary is recorded as `canary`).
    pub(super) fn ended_as(
        &mut self,
        now: Now,
        r: &Release<P>,
        kind: &str,
        result: String,
        failure: Option<Failure>,
    ) {
        let build = self.state.build(r.color);
        let source = match &r.kind {
            Kind::Release { source, .. } => Some(source.display().to_string()),
            _ => build.map(|b| b.source.clone()),
        };
        let record = Record {
            release: r.id,
            kind: kind.into(),
            trigger: r.kind.trigger().name().into(),
            label: r.label.clone(),
            source,
            fingerprint: build
                .filter(|b| b.release == r.id)
                .and_then(|b| b.fingerprint.clone()),
            color: r.color,
            started: crate::rfc3339(r.since),
            finished: crate::rfc3339(now.wall),
            ok: failure.is_none(),
            result,
            failed_step: failure.as_ref().and_then(|f| f.step),
            steps: r.steps.clone(),
        };
        let trigger = r.kind.trigger();
        self.emit(Effect::Ended(Box::new(Ended {
            record,
            trigger,
            failure,
        })));
    }

    /// Release `r` failed: its record says so (its kept copy, if it was
    /// made, goes with the next prune); it never replaced a kept good build.
    fn remember_failed(&mut self, now: Now, r: &Release<P>, source: String) {
        match self.state.kept_mut(r.id) {
            Some(k) => k.failed = true,
            None => self.state.releases.push(crate::deploy::state::Kept {
                release: r.id,
                label: r.label.clone(),
                source,
                fingerprint: None,
                made: crate::rfc3339(now.wall),
                went_live: false,
                failed: true,
            }),
        }
    }

    /// Keeps the newest `keep` good releases plus those in use (a color
    /// that runs or is being started, the release in progress) and what a
    /// plain rollback goes to (the dormant color's build, if it went live),
    /// saves the state if it differs from `before`, and removes the other
    /// copies.
    pub(super) fn prune_releases(&mut self, before: State) {
        let mut protect: Vec<u64> = self.release.iter().map(|r| r.id).collect();
        protect.extend(self.pause_protects());
        let mut prefer = None;
        for c in Color::BOTH {
            let in_use =
                !matches!(self.slot(c).phase, ColorPhase::Stopped) || self.state.live == Some(c);
            match self.state.build(c) {
                Some(b) if in_use => protect.push(b.release),
                Some(b) if b.went_live => prefer = Some(b.release),
                _ => {}
            }
        }
        let keep = self.policy.keep;
        let gone = super::kept::prune(&mut self.state.releases, keep, &protect, prefer);
        if self.state != before {
            self.save();
        }
        if !gone.is_empty() {
            self.emit(Effect::Forget(gone));
        }
    }

    fn after_release(&mut self, now: Now) {
        if self.shutdown != super::Shutdown::Running {
            self.drain_all(now);
        }
    }
}

/// How the old color's drain ended.
pub(super) struct DrainEnd {
    exit: Exit,
    /// What to say when it was killed at the drain deadline.
    forced: Option<String>,
}
