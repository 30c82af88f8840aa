//! Restarting the live color when it dies (or when bgd starts), with a
//! bounded backoff, beside any release.

use super::*;

impl Daemon {
    /// A live color's leader exited without being asked to.
    pub(super) fn on_exited(
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

    pub(super) fn schedule_restart(&mut self, color: Color) {
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

    pub(super) fn on_restart_due(&mut self, color: Color) {
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
    pub(super) fn start_restart(&mut self, color: Color) {
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

    pub(super) fn finish_restart(&mut self, color: Color, app: AppProcess) {
        if self.state.live != Some(color) || self.stopping > 0 {
            return self.spawn_drain(None, app);
        }
        tracing::info!(%color, pid = app.pid.as_raw(), "{color} is serving again");
        self.make_live(app);
    }

    pub(super) fn restart_failed(&mut self, color: Color, failure: Failure) {
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
    pub(super) fn backoff_doubles_and_is_bounded() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
