//! A release's way from its task's report to its end: progress, staging,
//! the swap (committed before anything else changes), the old color's
//! drain, success or failure.

use std::time::Instant;

use nix::unistd::Pid;

use super::{ColorPhase, Core, Effect, Ended, Failed, Kind, Level, Now, Process, TaskId};
use super::{Release, ReleasePhase, Timings};
use crate::color::Color;
use crate::history::Record;
use crate::protocol::{Failure, FailureKind, Reply, Step};
use crate::reaper::Exit;
use crate::state::Build;

impl<P: Process> Core<P> {
    fn current(&mut self, task: TaskId) -> Option<&mut Release<P>> {
        self.release.as_mut().filter(|r| r.task == task)
    }

    pub(super) fn on_progress(&mut self, now: Now, task: TaskId, step: Step, message: String) {
        let Some(r) = self.current(task) else { return };
        r.reach(step, now.mono);
        let client = r.client;
        self.log(Level::Info, format!("{step}: {message}"));
        self.reply(client, Reply::Progress { step, message });
    }

    /// The new build is in the color's directory: record it.
    pub(super) fn on_staged(&mut self, task: TaskId, build: Build) {
        let Some(r) = self.current(task) else { return };
        let ReleasePhase::Preparing { staged } = &mut r.phase else {
            return;
        };
        *staged = true;
        let color = r.color;
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
        if self
            .current(task)
            .is_some_and(|r| matches!(r.phase, ReleasePhase::Preparing { .. }))
        {
            return match result {
                Ok((process, timings)) => self.commit_swap(now, process, timings),
                Err(failed) => self.fail(now, failed.failure, failed.exit),
            };
        }
        for color in Color::BOTH {
            if let ColorPhase::Restarting { task: Some(t), .. } = self.slot(color).phase {
                if t == task {
                    return match result {
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
    fn commit_swap(&mut self, now: Now, process: P, timings: Timings) {
        let r = self.release.as_mut().expect("checked by on_prepared");
        r.reach(Step::Swap, now.mono);
        let new = r.color;
        let before = self.state.clone();
        self.state.live = Some(new);
        if let Some(mut b) = self.state.build(new).cloned() {
            b.went_live = true;
            self.state.set_build(new, Some(b));
        }
        r.phase = ReleasePhase::Committing {
            process,
            timings,
            before,
        };
        self.emit(Effect::Commit(self.state.clone()));
    }

    /// The outcome of the last commit: admitting a release, or its swap.
    pub(super) fn on_committed(&mut self, now: Now, result: Result<(), String>) {
        match self.release.as_ref().map(|r| &r.phase) {
            Some(ReleasePhase::Admitting { .. }) => self.on_admitted(now, result),
            Some(ReleasePhase::Committing { .. }) => self.on_swapped(now, result),
            _ => {}
        }
    }

    fn on_swapped(&mut self, now: Now, result: Result<(), String>) {
        let mut r = self.release.take().expect("checked by on_committed");
        let ReleasePhase::Committing {
            process,
            timings,
            before,
        } = std::mem::replace(&mut r.phase, ReleasePhase::Preparing { staged: true })
        else {
            unreachable!("checked by on_committed")
        };
        let new = r.color;
        if let Err(e) = result {
            self.state = before;
            let pid = process.pid();
            self.slot_mut(new)
                .enter(ColorPhase::Draining { pid }, now.wall);
            self.emit(Effect::Drain {
                color: new,
                process,
            });
            self.release = Some(r);
            let m = format!("cannot record the new live color: {e}; the old color stays live");
            let f = Failure::new(FailureKind::Internal, Some(Step::Swap), m);
            return self.fail(now, f, None);
        }
        self.emit(Effect::PointLive(new));
        let (id, old) = (r.id, new.other());
        let slot = self.slot_mut(new);
        slot.restarts = 0;
        slot.streak = 0;
        slot.enter(ColorPhase::Live { process }, now.wall);
        self.ready();
        self.emit(Effect::AfterLive {
            color: new,
            release: id,
        });
        self.log(Level::Info, format!("release {id}: {new} is live"));
        self.release = Some(r);
        self.retire(now, old, timings);
    }

    /// After the swap: drain the old color, or end at once if it ran nothing.
    fn retire(&mut self, now: Now, old: Color, timings: Timings) {
        if let Some(process) = self.take_live(old) {
            let pid = process.pid();
            self.slot_mut(old)
                .enter(ColorPhase::Draining { pid }, now.wall);
            let r = self.release.as_mut().expect("retire runs for the release");
            r.phase = ReleasePhase::Draining {
                timings,
                swapped: now.mono,
                old_pid: pid,
            };
            let (task, new) = (r.task, r.color);
            let message = format!("{new} is live; draining {old} (pid {pid})");
            self.on_progress(now, task, Step::Drain, message);
            self.emit(Effect::Drain {
                color: old,
                process,
            });
            return;
        }
        // The old color was dead and restarting (that restart is moot), or
        // nothing ran there (the first release).
        if let ColorPhase::Restarting {
            task: Some(task), ..
        } = self.slot_mut(old).enter(ColorPhase::Stopped, now.wall)
        {
            self.emit(Effect::Abort(task));
        }
        self.finish(now, old, timings, None, None);
    }

    pub(super) fn on_drained(&mut self, now: Now, color: Color, pid: Pid, exit: Exit) {
        self.log(Level::Info, format!("{color} stopped ({exit})"));
        let slot = self.slot_mut(color);
        if matches!(slot.phase, ColorPhase::Draining { pid: p } if p == pid) {
            slot.enter(ColorPhase::Stopped, now.wall);
            slot.last_exit = Some(exit);
        }
        let Some(r) = &self.release else { return };
        if let ReleasePhase::Draining {
            timings,
            swapped,
            old_pid,
        } = r.phase
        {
            if old_pid == pid && r.color == color.other() {
                self.finish(now, color, timings, Some(swapped), Some(exit));
            }
        }
    }

    /// The release succeeded: the old color `old` has stopped.
    fn finish(
        &mut self,
        now: Now,
        old: Color,
        timings: Timings,
        swapped: Option<Instant>,
        drained: Option<Exit>,
    ) {
        let r = self
            .release
            .take()
            .expect("finishing the release in progress");
        let total = now.mono.saturating_duration_since(r.started).as_millis() as u64;
        let drain_ms = swapped.map_or(0, |t| {
            now.mono.saturating_duration_since(t).as_millis() as u64
        });
        let msg = match r.kind {
            Kind::Rollback => format!("rolled back to release {} on {}", r.id, r.color),
            Kind::Release { .. } => format!("release {} is live on {}", r.id, r.color),
        } + &format!(" ({total} ms)");
        self.log(Level::Info, msg.clone());
        let result = serde_json::json!({
            "release": r.id,
            "label": self.state.build(r.color).and_then(|b| b.label.clone()),
            "color": r.color,
            "previous": old,
            "previous_exit": drained.map(|e| e.to_string()),
            "ms": {
                "total": total,
                "stage": timings.stage_ms,
                "start": timings.start_ms,
                "ready": timings.ready_ms,
                "drain": drain_ms,
            }
        });
        self.ended(now, &r, msg, None);
        self.reply(r.client, Reply::Done { result });
        self.after_release(now);
    }

    /// The release failed before its swap took: the old color stays live.
    /// `exit` is how the process it started ended, if it started one.
    pub(super) fn fail(&mut self, now: Now, failure: Failure, exit: Option<Exit>) {
        let r = self
            .release
            .take()
            .expect("failing the release in progress");
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
        if let (
            Kind::Release {
                replaced: Some(b), ..
            },
            ReleasePhase::Preparing { staged: false },
        ) = (&r.kind, &r.phase)
        {
            // Nothing was swapped into the color's directory: it still
            // holds what the record said before this release cleared it.
            self.state.set_build(r.color, Some(b.clone()));
            self.save();
        }
        let slot = self.slot_mut(r.color);
        if matches!(slot.phase, ColorPhase::Starting) {
            slot.enter(ColorPhase::Stopped, now.wall);
            slot.last_exit = exit;
        }
        if let Some(live) = self.state.live {
            self.log(Level::Info, format!("{live} stays live"));
        }
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
        let build = self.state.build(r.color);
        let source = match &r.kind {
            Kind::Release { source, .. } => Some(source.display().to_string()),
            Kind::Rollback => build.map(|b| b.source.clone()),
        };
        let record = Record {
            release: r.id,
            kind: r.kind.name().into(),
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

    fn after_release(&mut self, now: Now) {
        if self.shutdown != super::Shutdown::Running {
            self.drain_all(now);
        }
    }
}
