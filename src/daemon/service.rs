//! bgd's own lifecycle as a service: stop and drain, systemd's watchdog,
//! status line and timeouts, config reload.

use super::*;

impl Daemon {
    pub(super) fn on_stop(&mut self) {
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
    pub(super) fn drain_all(&mut self) {
        for color in Color::BOTH {
            if let Some(proc) = self.slot(color).process.take() {
                let pid = proc.pid;
                self.slot(color).set(Phase::Draining, Some(pid));
                tracing::info!(%color, pid = pid.as_raw(), "draining");
                self.spawn_drain(None, proc);
            }
        }
    }

    pub(super) fn notify_ready(&mut self) {
        if !self.notified_ready {
            self.notified_ready = true;
            systemd::ready();
        }
    }

    pub(super) fn on_tick(&mut self) {
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
    pub(super) fn publish_status(&mut self) {
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
    pub(super) fn on_reload(&mut self) {
        systemd::reloading();
        let file = self.ctx.config.file.clone();
        match Config::load(&file) {
            Err(e) => {
                tracing::error!("reload failed, the running config stays: {e}");
                self.last_result = Some(format!("{} reload failed: {e}", crate::now_rfc3339()));
            }
            Ok(new) => {
                new.warnings.iter().for_each(|w| tracing::warn!("{w}"));
                self.apply(new)
            }
        }
        if self.notified_ready {
            systemd::ready();
        }
    }

    pub(super) fn apply(&mut self, new: Config) {
        let old = &self.ctx.config;
        let kept = old.fixed.changed_keys(&new.fixed);
        let watch_changed = match (&old.watch, &new.watch) {
            (Some(a), Some(b)) => !a.same_as(b),
            (None, None) => false,
            _ => true,
        };
        let config = Config {
            fixed: old.fixed.clone(),
            ..new
        };
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
}
