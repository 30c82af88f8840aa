//! Stopping bgd. The first stop signal aborts a release that has not
//! swapped yet, cancels restarts and drains every running color (after a
//! release that has swapped finishes draining the old one). The second
//! kills every color at once.

use super::{ColorPhase, Core, Effect, Level, Now, Process, ReleasePhase, Shutdown};
use crate::color::Color;
use crate::deploy::{Failure, FailureKind};

impl<P: Process> Core<P> {
    pub(super) fn on_stop(&mut self, now: Now) {
        if self.shutdown != Shutdown::Running {
            return self.kill_all();
        }
        self.shutdown = Shutdown::Draining;
        self.log(
            Level::Info,
            "stopping: draining the app (send the signal again to kill it at once)",
        );
        self.emit(Effect::Stopping);
        let stopping = "bgd is shutting down";
        if let Some(b) = self.bake.take() {
            let m = format!("{stopping} during the bake of release {}", b.release);
            self.refuse(b.waiter, Failure::new(FailureKind::Busy, None, m));
        }
        if let Some(c) = self.canary.take() {
            let m = format!("{stopping}: the canary of release {} is drained", c.release);
            self.refuse(c.waiter, Failure::new(FailureKind::Busy, None, m));
        }
        for color in Color::BOTH {
            if let ColorPhase::Restarting { task, .. } = self.slot(color).phase {
                if let Some(task) = task {
                    self.emit(Effect::Abort(task));
                }
                self.enter(color, ColorPhase::Stopped, now.wall);
            }
        }
        if self
            .release
            .as_ref()
            .is_some_and(|r| !matches!(r.phase, ReleasePhase::Draining { .. }))
        {
            self.abort_release(now);
        }
        if self.release.is_none() {
            self.drain_all(now);
        }
    }

    /// A release that has not swapped yet is aborted: staging stops before
    /// it swaps anything in, and its process is killed. The dormant
    /// color's record stays cleared: the copy may have been swapped in
    /// already, and a cleared record never lies.
    fn abort_release(&mut self, now: Now) {
        let Some(r) = self.release.take() else { return };
        let step = r.step();
        self.emit(Effect::Abort(r.task));
        if let ReleasePhase::Committing { process, .. } = r.phase {
            self.emit(Effect::Discard(process));
        }
        // A standby being evicted goes on draining.
        if !matches!(self.slot(r.color).phase, ColorPhase::Draining { .. }) {
            self.enter(r.color, ColorPhase::Stopped, now.wall);
        }
        let m = "bgd is shutting down: the release was aborted and the old color stays recorded as live";
        let failure = Failure::new(FailureKind::Busy, Some(step), m);
        self.refuse(r.client, failure);
    }

    /// Stops every running color with its stop signal and deadline.
    pub(super) fn drain_all(&mut self, now: Now) {
        for color in Color::BOTH {
            let Some(process) = self.take_running(color) else {
                continue;
            };
            let pid = process.pid();
            self.enter(color, ColorPhase::Draining { pid }, now.wall);
            self.log(Level::Info, format!("draining {color} (pid {pid})"));
            self.emit(Effect::Drain { color, process });
        }
    }

    /// The second stop signal: SIGKILL every color that still runs.
    fn kill_all(&mut self) {
        self.shutdown = Shutdown::Killing;
        self.log(Level::Warn, "second stop signal: killing every color now");
        for color in Color::BOTH {
            if let Some(pid) = self.slot(color).pid() {
                self.emit(Effect::Kill { color, pid });
            }
        }
    }
}
