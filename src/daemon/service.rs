//! bgd's own lifecycle as a service: stop and drain, systemd's watchdog,
//! status line and timeouts, config reload.

use std::sync::Arc;

use crate::config::Config;
use crate::deploy::Shutdown;
use crate::ops::events::Kind;
use crate::ops::systemd;
use crate::Ctx;

use super::{Daemon, TICK};

impl Daemon {
    pub(super) fn on_tick(&mut self) {
        if systemd::watchdog_interval().is_some() {
            systemd::watchdog();
        }
        // Starting the live color or draining can outlast systemd's start
        // or stop timeout; ask for more time while either runs.
        if !self.core.ready_sent() || self.core.shutdown() != Shutdown::Running {
            systemd::extend_timeout(TICK * 3);
        }
    }

    /// Sends STATUS= when what it says has changed.
    pub(super) fn publish_status(&mut self) {
        if !systemd::under_systemd() {
            return;
        }
        let state = self.core.state();
        let live = match state.live {
            Some(c) => {
                let b = state.build(c).cloned();
                let label = b
                    .as_ref()
                    .and_then(|b| b.label.clone())
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default();
                let pid = self
                    .core
                    .live_pid()
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
            .core
            .release()
            .map(|r| format!("; {} of release {}: {}", r.kind.name(), r.id, r.step()))
            .unwrap_or_default();
        let last = self
            .last_result
            .as_ref()
            .map(|r| format!("; last: {r}"))
            .unwrap_or_default();
        let canary = self
            .core
            .canary()
            .map(|c| match c.percent {
                0 => format!(
                    "; preview {} release {} for the testers",
                    c.color, c.release
                ),
                p => format!("; canary {} release {} at {p}%", c.color, c.release),
            })
            .unwrap_or_default();
        let paused = match self.pause_line() {
            p if p.is_empty() => p,
            p => format!("; {p}"),
        };
        let line = format!("{live}{paused}{canary}{busy}{last}");
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
        // Checked as a start of the live color would find its programs.
        let live = self.core.state().live;
        let build = live.map(|c| crate::store::layout::color_dir(&self.ctx.config.fixed.root, c));
        let loaded = Config::load(&file)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                crate::pipeline::runnable::check(&c, build.as_deref().filter(|d| d.is_dir()))?;
                Ok(c)
            });
        match loaded {
            Err(e) => {
                tracing::error!("reload failed, the running config stays: {e}");
                self.last_result = Some(format!("{} reload failed: {e}", crate::now_rfc3339()));
                let message = format!("the running config stays: {e}");
                self.telemetry
                    .publish(Kind::Reloaded { ok: false, message });
            }
            Ok(new) => {
                new.warnings.iter().for_each(|w| tracing::warn!("{w}"));
                self.apply(new)
            }
        }
        if self.core.ready_sent() {
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
        let policy = super::policy_of(&config, &self.ctx.listeners);
        if let Err(e) = self
            .ctx
            .contain
            .limit(config.app.memory_max.as_deref(), config.app.cpu_weight)
        {
            tracing::warn!("{e}");
        }
        self.core.set_policy(policy);
        let r = &config.rollout;
        if let Err(e) = (self.ctx.listeners).set_clients(r.testers.clone(), r.canary_by) {
            tracing::error!("cannot steer by the reloaded traffic.testers: {e}");
        }
        self.telemetry.traffic_policy(r);
        if let Some(c) = self
            .core
            .canary()
            .filter(|c| c.is_preview() && r.testers.is_empty())
        {
            tracing::warn!(
                "the preview of release {} on {} reaches nobody now: the reloaded traffic.testers is empty; `bgctl promote` or `bgctl abort` ends it",
                c.release,
                c.color
            );
        }
        self.ctx = Arc::new(Ctx {
            config,
            listeners: self.ctx.listeners.clone(),
            reaper: self.ctx.reaper.clone(),
            logs: self.ctx.logs.clone(),
            contain: self.ctx.contain.clone(),
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
        let message = format!("the next start of a color uses it{note}");
        self.telemetry.publish(Kind::Reloaded { ok: true, message });
        self.last_result = Some(format!("{} config reloaded{note}", crate::now_rfc3339()));
        self.auto_check();
    }
}
