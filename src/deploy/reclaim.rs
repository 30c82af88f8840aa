//! Rollback while the old color drains (issue 25).
//!
//! A drain first waits for the old color's connections to end (the quiesce,
//! up to `drain_delay`) and only then sends its stop signal. Until that
//! signal the old color is as good as a standby: it runs its build and gets
//! no new connections. So `bgctl rollback` then takes it back from the drain
//! ([`Effect::Reclaim`]) and switches to it at once, starting nothing;
//! a release whose old color drains ends there. Once the signal is sent
//! ([`Input::Signalled`](super::Input::Signalled)) it is going away: a
//! rollback or release is refused, saying how long the drain can still
//! take (a long-lived connection, a WebSocket say, can hold it until
//! `drain_timeout`).

use std::time::Duration;

use nix::unistd::Pid;

use super::{ClientId, ColorPhase, Core, Effect, Level, Now, Process, ReleasePhase, Shutdown};
use crate::color::Color;
use crate::deploy::{Failure, FailureKind, Step};

/// A rollback waiting for the drain of `color`'s process `pid` to hand it
/// back.
#[derive(Debug)]
pub(super) struct Reclaiming {
    color: Color,
    pid: Pid,
    client: Option<ClientId>,
}

impl<P: Process> Core<P> {
    /// A plain `bgctl rollback` while the dormant color drains and has not
    /// been sent its stop signal: asks for it back and returns `true` (the
    /// rollback goes on in [`on_reclaimed`](Self::on_reclaimed)).
    pub(super) fn reclaim(&mut self, client: Option<ClientId>) -> bool {
        let color = self.dormant();
        let ColorPhase::Draining { pid } = self.slot(color).phase else {
            return false;
        };
        let release_drains_it = match &self.release {
            None => true,
            Some(r) => matches!(r.phase, ReleasePhase::Draining { old_pid, .. } if old_pid == pid),
        };
        let went_live = self.state.build(color).is_some_and(|b| b.went_live);
        // A pause drains the standby before it holds connections: taking
        // it back would strand the pause (and a rollback during a pause is
        // refused anyway, with `bgctl resume` named).
        if self.shutdown != Shutdown::Running
            || self.state.pause.is_some()
            || self.canary.is_some()
            || self.reclaiming.is_some()
            || self.state.live != Some(color.other())
            || !release_drains_it
            || !went_live
            || self.signalled.iter().any(|(p, _)| *p == pid)
        {
            return false;
        }
        self.reclaiming = Some(Reclaiming { color, pid, client });
        self.emit(Effect::Reclaim { color, pid });
        let m = format!("{color} (pid {pid}) drains but has not been sent its stop signal: taking it back to switch to it");
        self.log(Level::Info, m.clone());
        self.progress(client, Step::Swap, m);
        true
    }

    /// The drain answered: the process back (it becomes the standby, and
    /// the rollback switches to it), or `None` (it was signalled first).
    pub(super) fn on_reclaimed(&mut self, now: Now, color: Color, process: Option<P>) {
        let asked = self.reclaiming.take_if(|r| r.color == color);
        let Some(process) = process else {
            if let Some(r) = asked {
                let f = Failure::new(FailureKind::Busy, None, self.still_draining(r.color, r.pid));
                self.refuse(r.client, f);
            }
            return;
        };
        let pid = process.pid();
        let draining =
            matches!(self.slot(color).phase, ColorPhase::Draining { pid: p } if p == pid);
        let Some(r) = asked.filter(|r| r.pid == pid && draining) else {
            // Nobody waits for it any more: it drains after all.
            self.enter(color, ColorPhase::Draining { pid }, now.wall);
            return self.emit(Effect::Drain { color, process });
        };
        // The release whose old color this was ends here, as with a standby.
        let drained_by = |rel: &mut super::Release<P>| matches!(rel.phase, ReleasePhase::Draining { old_pid, .. } if old_pid == pid);
        if let Some(rel) = self.release.take_if(drained_by) {
            if let ReleasePhase::Draining {
                timings, swapped, ..
            } = rel.phase
            {
                self.finish(now, rel, timings, Some(swapped), None);
            }
        }
        let until = now.mono + self.policy.rollout.standby;
        self.enter(color, ColorPhase::Standby { process, until }, now.wall);
        self.log(
            Level::Info,
            format!("{color} (pid {pid}) was taken back before its stop signal: switching to it"),
        );
        self.begin_rollback(now, r.client, None);
    }

    /// A drain sent its stop signal to `pid`.
    pub(super) fn on_signalled(&mut self, now: Now, color: Color, pid: Pid) {
        if matches!(self.slot(color).phase, ColorPhase::Draining { pid: p } if p == pid) {
            let until = now.wall + self.policy.drain_timeout;
            self.signalled.retain(|(p, _)| *p != pid);
            self.signalled.push((pid, until));
        }
    }

    /// `pid` has stopped: its signal no longer matters.
    pub(super) fn forget_signal(&mut self, pid: Pid) {
        self.signalled.retain(|(p, _)| *p != pid);
    }

    /// Why nothing new can begin while `color` (pid `pid`) drains, and for
    /// how long at most. Without a clock: the deadline was set when it was
    /// signalled, and is said as `drain_timeout` from then.
    pub(super) fn still_draining(&self, color: Color, pid: Pid) -> String {
        let fmt = |d: Duration| {
            humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
        };
        let (delay, timeout) = (self.policy.drain_delay, self.policy.drain_timeout);
        match self.signalled.iter().find(|(p, _)| *p == pid) {
            Some((_, until)) => format!(
                "{color} (pid {pid}) is draining: it got its stop signal and is gone by {} at the latest (drain_timeout {}; an open long-lived connection, such as a WebSocket, can hold it until then). Run this again once it has stopped (`bgctl status` shows it)",
                crate::rfc3339(*until),
                fmt(timeout)
            ),
            None => format!(
                "{color} (pid {pid}) is draining: connections are still open on it, so it has not been sent its stop signal yet (it gets it when they end, or after drain_delay {}; then up to drain_timeout {}). `bgctl rollback` switches back to it at once; a release can begin once it has stopped",
                fmt(delay),
                fmt(timeout)
            ),
        }
    }
}
