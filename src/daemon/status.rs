//! `bgctl status`: the core's phases, the watcher, the sockets and the
//! colors' containment, rendered as the protocol's [`Status`]. Read only.

use crate::color::Color;
use crate::config::TrafficMode;
use crate::deploy::auto::{Auto, Decision};
use crate::deploy::{Core, Now, Process, Trigger};
use crate::ops::control::Responder;
use crate::ops::protocol::{
    CanaryStatus, ColorStatus, Done, ListenStatus, ReleaseProgress, Reply, Status, WatchStatus,
};

use super::Daemon;

impl Daemon {
    pub(super) fn reply_status(&self, reply: Responder) {
        let result = Done::Status(Box::new(self.status()));
        let _ = reply.send(Reply::Done { result });
    }

    pub(super) fn status(&self) -> Status {
        let core = &self.core;
        let now = super::now();
        let (standby, bake) = core.deadlines(now);
        Status {
            name: self.ctx.config.fixed.name.clone(),
            pid: std::process::id(),
            instance: self.program.instance,
            live: core.state().live,
            release_in_progress: progress(core),
            blue: self.color_status(Color::Blue),
            green: self.color_status(Color::Green),
            containment: self.ctx.contain.describe(),
            last_result: self.last_result.clone(),
            listen: (self.ctx.listeners.addresses().into_iter())
                .map(|(name, address)| ListenStatus { name, address })
                .collect(),
            mode: match self.ctx.config.fixed.traffic {
                TrafficMode::Gate => "gate".into(),
                TrafficMode::Shared => "shared".into(),
            },
            receiving: self.ctx.listeners.receiving(),
            traffic: core.shares(),
            testers: core.policy().rollout.testers.len() as u32,
            canary_by: core.policy().rollout.canary_by.name().into(),
            standby_until: standby.map(crate::rfc3339),
            bake_until: bake.map(crate::rfc3339),
            canary: canary_status(core, now),
            watch: self.watch.auto.as_ref().map(|a| self.watch_status(a)),
            metrics: self.telemetry.metrics_addr.map(|a| a.to_string()),
            paused: self.pause_status(),
            socket_alerts: self.ctx.listeners.alerts(),
            own_files: self.notes.all(),
        }
    }

    /// A color as the core sees it, with its processes, memory and CPU.
    fn color_status(&self, color: Color) -> ColorStatus {
        let slot = self.core.slot(color);
        let build = self.core.state().build(color);
        let failing = slot.health.failing;
        let usage = self.ctx.contain.usage(color, slot.pid());
        ColorStatus {
            failing_checks: (failing > 0).then_some(failing),
            last_check_failure: slot.health.last.clone(),
            state: match self.core.canary() {
                Some(c) if c.color == color && c.is_preview() => "preview".into(),
                _ => slot.phase.name(build.is_some()).into(),
            },
            pid: slot.pid().map(|p| p.as_raw() as u32),
            release: build.map(|b| b.release),
            label: build.and_then(|b| b.label.clone()),
            source: build.map(|b| b.source.clone()),
            fingerprint: build.and_then(|b| b.fingerprint.clone()),
            since: Some(crate::rfc3339(slot.since)),
            restarts: slot.restarts,
            processes: usage.processes,
            memory_bytes: usage.memory_bytes,
            cpu_usec: usage.cpu_usec,
            last_exit: slot.last_exit.map(|e| e.to_string()),
            reason: slot.phase.reason().map(str::to_string),
        }
    }

    /// Auto-release as status shows it.
    fn watch_status(&self, a: &Auto) -> WatchStatus {
        let running = self
            .core
            .release()
            .is_some_and(|r| matches!(r.kind.trigger(), Trigger::Watch(_)));
        let due = matches!(
            a.decide(self.live_fingerprint().as_deref(), false),
            Decision::Release(_)
        );
        let w = a.watcher();
        WatchStatus {
            path: a.path.display().to_string(),
            mode: w.mode.to_string(),
            state: a.state_word(running || due).into(),
            last_event: w.last_event.map(crate::rfc3339),
            ignored_events: w.ignored_events,
            holding: a.holding().map(str::to_string),
            last_release: a.last().cloned(),
        }
    }
}

/// The release in progress as status shows it.
fn progress<P: Process>(core: &Core<P>) -> Option<ReleaseProgress> {
    core.release().map(|r| ReleaseProgress {
        kind: r.kind.name().into(),
        id: r.id,
        color: r.color,
        step: r.step(),
        label: r.label.clone(),
        since: crate::rfc3339(r.since),
    })
}

/// The canary (or preview) as status shows it.
fn canary_status<P: Process>(core: &Core<P>, now: Now) -> Option<CanaryStatus> {
    let steps = core.policy().rollout.steps.len() as u32;
    core.canary().map(|c| CanaryStatus {
        color: c.color,
        release: c.release,
        percent: c.percent,
        preview: c.is_preview(),
        step: c.step.map(|(i, _)| i as u32 + 1),
        steps: c.step.map(|_| steps),
        next_step_at: c.step.map(|(_, at)| crate::rfc3339(now.wall_at(at))),
        since: crate::rfc3339(c.since),
    })
}
