//! Bringing the live color back: at boot, and when its process dies on its
//! own. A color that ran for [`HEALTHY_UPTIME`] restarts at once; one that
//! dies young waits [`backoff`], longer each time. Restarts run beside a
//! release: the release starts the other color.

use super::{backoff, ColorPhase, Core, Effect, Failed, Launch, Level, Now, Process, Shutdown};
use super::{Exited, HEALTHY_UPTIME};
use crate::color::Color;

impl<P: Process> Core<P> {
    /// A color a previous bgd left running: the live one serves on, any
    /// other drains (a standby or canary is not kept across bgd's restart).
    /// During a pause, what runs in the waiting color drains before the
    /// pause holds connections there, and the live color waits for
    /// [`boot`](Self::boot) to decide (see [`boot_paused`](Self::boot_paused)).
    pub(super) fn adopt(&mut self, now: Now, color: Color, process: P) {
        let pid = process.pid();
        if self.state.live == Some(color) && self.shutdown == Shutdown::Running {
            if !self.holding() {
                self.log(
                    Level::Info,
                    format!("adopted the live color {color} (pid {pid}): it serves on"),
                );
                self.emit(Effect::Steer(color));
            }
            self.enter(color, ColorPhase::Live { process }, now.wall);
        } else if self.holding() && self.pause_color() == Some(color) {
            self.log(
                Level::Info,
                format!("adopted {color} (pid {pid}) in the color where the pause holds connections: draining it first"),
            );
            self.pause_evict(now, color, process);
        } else {
            self.log(
                Level::Info,
                format!("adopted {color} (pid {pid}), which is not the live color: draining it"),
            );
            self.enter(color, ColorPhase::Draining { pid }, now.wall);
            self.emit(Effect::Drain { color, process });
        }
    }

    /// bgd started: bring up the color the state says was live.
    pub(super) fn boot(&mut self, now: Now) {
        if self.boot_paused(now) {
            return;
        }
        if let Some(live) = self
            .state
            .live
            .filter(|c| matches!(self.slot(*c).phase, ColorPhase::Live { .. }))
        {
            self.log(Level::Info, format!("{live} was adopted: nothing to start"));
            return self.ready();
        }
        match self.state.live {
            Some(color) => {
                self.log(
                    Level::Info,
                    format!("starting the live color {color} from its directory"),
                );
                self.start_restart(now, color, None);
            }
            None => {
                self.log(Level::Info, "no color is live yet: waiting for a release");
                self.ready();
            }
        }
    }

    /// A process exited without being asked to. Only the live color's
    /// process matters; the others are owned by a drain or a task.
    pub(super) fn on_exited(&mut self, now: Now, e: Exited) {
        let Exited {
            color,
            pid,
            exit,
            uptime,
            tail,
            strays,
        } = e;
        let phase = &self.slot(color).phase;
        if phase.process().is_none_or(|p| p.pid() != pid) {
            return;
        }
        let what = phase.name(true);
        let Some(process) = self.take_running(color) else {
            return;
        };
        let slot = self.slot_mut(color);
        slot.since = now.wall;
        slot.last_exit = Some(exit);
        // What is left of its group goes with it.
        self.emit(Effect::Discard(process));
        self.log(
            Level::Error,
            format!("the {what} color died ({exit}) after {uptime:.1?} ({color}, pid {pid}); last output:"),
        );
        self.log_tail(Level::Error, color, &tail, 10);
        if strays > 0 {
            self.log(
                Level::Error,
                format!("{strays} other processes of {color} still ran when its main process exited: they are stopped with it. Did the app daemonize? It must stay in the foreground (bgd supervises the process it started)"),
            );
        }
        if what != "live" {
            return self.lost(now, color, what);
        }
        if self.shutdown != Shutdown::Running {
            return;
        }
        let why = match strays {
            0 => format!("it exited ({exit})"),
            n => format!("it exited ({exit}) while {n} other process(es) of {color} ran on: the app daemonized"),
        };
        if self.unhealthy(now, color, why) {
            // Switching back to the standby (the rescue of what was queued
            // for this color follows the recorded switch, in `retire`).
            return;
        }
        let slot = self.slot_mut(color);
        slot.restarts += 1;
        slot.streak = if uptime >= HEALTHY_UPTIME {
            0
        } else {
            slot.streak.max(1)
        };
        slot.enter(
            ColorPhase::Restarting {
                task: None,
                failed: None,
            },
            now.wall,
        );
        self.schedule_restart(color);
    }

    pub(super) fn schedule_restart(&mut self, color: Color) {
        let slot = self.slot_mut(color);
        let delay = backoff(slot.streak);
        slot.streak += 1;
        self.log(Level::Info, format!("restarting {color} in {delay:?}"));
        self.emit(Effect::RestartAfter { color, delay });
    }

    pub(super) fn on_restart_due(&mut self, now: Now, color: Color) {
        let ColorPhase::Restarting { task: None, failed } = &self.slot(color).phase else {
            return;
        };
        if self.shutdown == Shutdown::Running && self.state.live == Some(color) {
            let failed = failed.clone();
            self.start_restart(now, color, failed);
        }
    }

    /// Starts the live color again from its directory (no copy).
    fn start_restart(&mut self, now: Now, color: Color, failed: Option<String>) {
        let Some(build) = self.state.build(color).cloned() else {
            self.log(
                Level::Error,
                format!("state says {color} is live but records no build for it: release again"),
            );
            self.state.live = None;
            self.enter(color, ColorPhase::Stopped, now.wall);
            return self.ready();
        };
        let task = self.fresh_task();
        self.emit(Effect::Launch(Launch {
            task,
            color,
            source: None,
            kept: None,
            label: build.label,
            release: build.release,
            expect: None,
        }));
        let phase = ColorPhase::Restarting {
            task: Some(task),
            failed,
        };
        self.enter(color, phase, now.wall);
    }

    pub(super) fn finish_restart(&mut self, now: Now, color: Color, process: P) {
        if self.state.live != Some(color) || self.shutdown != Shutdown::Running {
            let pid = process.pid();
            self.enter(color, ColorPhase::Draining { pid }, now.wall);
            return self.emit(Effect::Drain { color, process });
        }
        let pid = process.pid();
        self.log(Level::Info, format!("{color} (pid {pid}) is serving again"));
        self.emit(Effect::Steer(color));
        // A steer ends any split and the testers' route: a canary (or a
        // preview) beside it gets its share and its testers back.
        if let Some(c) = &self.canary {
            let (canary, percent) = (c.color, c.percent);
            if percent > 0 {
                self.emit(Effect::Split { canary, percent });
            }
            self.emit(Effect::Testers(Some(canary)));
        }
        self.enter(color, ColorPhase::Live { process }, now.wall);
        self.ready();
    }

    pub(super) fn restart_failed(&mut self, now: Now, color: Color, failed: Failed) {
        let message = failed.failure.message;
        self.log(
            Level::Error,
            format!("restart of {color} failed: {message}"),
        );
        self.log_tail(Level::Error, color, &failed.failure.log_tail, 10);
        self.ready();
        let slot = self.slot_mut(color);
        if failed.exit.is_some() {
            slot.last_exit = failed.exit;
        }
        if self.state.live != Some(color) || self.shutdown != Shutdown::Running {
            self.enter(color, ColorPhase::Stopped, now.wall);
            return;
        }
        let slot = self.slot_mut(color);
        slot.restarts += 1;
        let phase = ColorPhase::Restarting {
            task: None,
            failed: Some(message),
        };
        slot.enter(phase, now.wall);
        self.schedule_restart(color);
    }
}
