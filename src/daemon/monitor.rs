//! The repeated health checks of the colors that get new connections
//! (`health.interval`): one task per color, started and stopped by the
//! core's `Monitor` and `Unmonitor` effects, each check reported to the
//! loop. With `health.interval` off there is no task and no wake-up.

use std::time::Duration;

use nix::unistd::Pid;

use super::{Daemon, Event};
use crate::color::Color;
use crate::deploy::Checked;

impl Daemon {
    /// Checks `color`'s process `pid` every `health.interval` from now on.
    pub(super) fn monitor(&mut self, color: Color, pid: Pid) {
        self.unmonitor(color);
        let every = self.ctx.config.health.interval;
        if every.is_zero() {
            return;
        }
        let slot = self.core.slot(color);
        let own = slot.phase.process().and_then(|p| p.probe_addr);
        let release = self.core.state().build(color).map_or(0, |b| b.release);
        let (ctx, events) = (self.ctx.clone(), self.events.clone());
        let task = tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + every;
            loop {
                tokio::time::sleep_until(next).await;
                let result = crate::pipeline::health::check_once(&ctx, color, own, release)
                    .await
                    .map_err(|e| e + &frozen(pid));
                if events
                    .send(Event::Checked(Checked { color, pid, result }))
                    .is_err()
                {
                    return;
                }
                // A slow check does not make the next one come sooner.
                next = (next + every).max(tokio::time::Instant::now() + every / 2);
            }
        });
        self.monitors.insert(color, task.abort_handle());
    }

    pub(super) fn unmonitor(&mut self, color: Color) {
        if let Some(t) = self.monitors.remove(&color) {
            t.abort();
        }
    }

    /// Sends [`Event::Due`] at `at`.
    pub(super) fn wake_at(&self, at: std::time::Instant) {
        let events = self.events.clone();
        let delay = at.saturating_duration_since(std::time::Instant::now());
        tokio::spawn(async move {
            // A millisecond late, so that the deadline has surely passed.
            tokio::time::sleep(delay + Duration::from_millis(1)).await;
            let _ = events.send(Event::Due);
        });
    }
}

/// Why a color does not answer when its main process is stopped (SIGSTOP,
/// or a debugger): said with each failed check, so status and the log
/// report a frozen app as such. Empty otherwise.
fn frozen(pid: Pid) -> String {
    if !crate::supervise::process::stopped(pid) {
        return String::new();
    }
    format!("; its main process (pid {pid}) is stopped (SIGSTOP or a debugger) and answers nothing: `kill -CONT {pid}` resumes it")
}
