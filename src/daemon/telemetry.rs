//! Lifecycle events and metrics, read off the core as it decides: what
//! `bgctl events` streams and `/metrics` counts.
//!
//! Every input goes through [`Daemon::handle`]: before the core sees it,
//! [`Telemetry::before`] notes what only the input says (a drain ended);
//! after, [`Telemetry::after`] reads the effects in order (a swap, a
//! release's end, a restart, the core's own [`Effect::Notify`]) and the
//! release in progress (began, each step, ready). Each event is published
//! once, to the event hub and to the metrics. Nothing here changes the
//! deployment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::color::Color;
use crate::deploy::{
    ColorPhase, Core, Drained, Effect, Ended, Input, Notice, ReleasePhase, TaskId,
};
use crate::ops::control::Responder;
use crate::ops::events::{EventHub, Kind, RollbackKind, StepTook};
use crate::ops::metrics::Metrics;
use crate::ops::protocol::{Failure, FailureKind, Reply};
use crate::store::history::StepTime;
use crate::supervise::process::AppProcess;

use super::queries::{stream, Next};
use super::{now, Daemon};

/// The event hub, the metrics (with `[metrics]`), and what the core looked
/// like after the last input.
pub(super) struct Telemetry {
    pub(super) hub: Arc<EventHub>,
    metrics: Option<Arc<Metrics>>,
    /// Where the metrics are served, as bound (a port 0 resolved).
    pub(super) metrics_addr: Option<SocketAddr>,
    /// The release or rollback in progress, as far as it was published.
    followed: Option<Followed>,
    /// The color last made live (for `swapped.from`).
    live: Option<Color>,
    /// A restart was scheduled for this color (blue, green) and has not
    /// brought it back yet.
    restarting: [bool; 2],
}

struct Followed {
    task: TaskId,
    /// Its release id.
    id: u64,
    started: Instant,
    /// Steps of the release already published.
    steps: usize,
    ready: bool,
}

impl Telemetry {
    /// Binds `metrics.listen` (if set) and serves it: a bad or busy address
    /// stops bgd here, at start-up. `live` is the color the state records.
    pub(super) fn start(
        listen: Option<SocketAddr>,
        live: Option<Color>,
        contain: &Arc<crate::supervise::contain::Containment>,
    ) -> anyhow::Result<Telemetry> {
        let (metrics, metrics_addr) = match listen {
            None => (None, None),
            Some(addr) => {
                let listener = crate::ops::metrics::bind(addr)?;
                let bound = listener.local_addr().unwrap_or(addr);
                let metrics = Arc::new(Metrics::new(crate::VERSION));
                metrics.contain_with(contain.clone());
                tokio::spawn(crate::ops::metrics::serve(listener, metrics.clone()));
                tracing::info!("metrics on http://{bound}/metrics");
                (Some(metrics), Some(bound))
            }
        };
        Ok(Telemetry {
            hub: Arc::default(),
            metrics,
            metrics_addr,
            followed: None,
            live,
            restarting: [false; 2],
        })
    }

    /// `[traffic] testers` and `canary_by` as loaded (at start, on reload),
    /// for the metrics.
    pub(super) fn traffic_policy(&self, r: &crate::deploy::rollout::Rollout) {
        if let Some(m) = &self.metrics {
            m.set_traffic_policy(r.testers.len(), r.canary_by.name());
        }
    }

    /// Publishes one event to `bgctl events` and the metrics. The daemon's
    /// way to report what the core does not decide (a reload).
    pub(super) fn publish(&self, kind: Kind) {
        let event = self.hub.publish(kind);
        if let Some(m) = &self.metrics {
            m.observe(&event);
        }
    }

    /// What only the input tells.
    fn before(&mut self, input: &Input<AppProcess>) {
        if let Input::Adopt { color, process } = input {
            self.publish(Kind::Adopted {
                color: *color,
                pid: process.pid.as_raw() as u32,
            });
        }
        if let Input::Drained(Drained {
            color, pid, forced, ..
        }) = input
        {
            self.publish(Kind::Drained {
                color: *color,
                pid: pid.as_raw() as u32,
                forced: forced.is_some(),
            });
        }
    }

    /// What the core just decided, in the order it decided it.
    fn after(&mut self, core: &Core<AppProcess>, effects: &[Effect<AppProcess>]) {
        self.began(core);
        for effect in effects {
            match effect {
                Effect::PointLive(color) => self.swapped(*color),
                Effect::Steer(color) => self.steered(core, *color),
                Effect::RestartAfter { color, delay } => {
                    self.restarting[idx(*color)] = true;
                    let slot = core.slot(*color);
                    let reason = match (slot.phase.reason(), slot.last_exit) {
                        (Some(r), _) => r.to_string(),
                        (None, Some(exit)) => format!("its process ended: {exit}"),
                        (None, None) => "its process ended".into(),
                    };
                    self.publish(Kind::Restarting {
                        color: *color,
                        restarts: slot.restarts,
                        delay_ms: delay.as_millis() as u64,
                        reason,
                    });
                }
                Effect::Ended(ended) if ended.record.kind == "preview" => {
                    self.followed = None;
                    self.publish(Kind::Preview {
                        release: ended.record.release,
                        color: ended.record.color,
                        testers: core.policy().rollout.testers.len() as u32,
                    })
                }
                // A new share of a canary that runs on: its `canary_share`
                // event said it, and it was not promoted to live.
                Effect::Ended(ended)
                    if ended.record.kind == "promote" && core.canary().is_some() =>
                {
                    self.followed = None
                }
                Effect::Ended(ended) => self.ended(ended),
                Effect::Notify(notice) => self.publish(match notice.clone() {
                    Notice::BakePassed { release, color } => Kind::BakePassed { release, color },
                    Notice::BakeFailed {
                        release,
                        color,
                        reason,
                    } => Kind::BakeFailed {
                        release,
                        color,
                        reason,
                    },
                    Notice::Paused { color, max_ms } => Kind::Paused { color, max_ms },
                    Notice::PauseStopped { color } => Kind::PauseStopped { color },
                    Notice::PauseMax { color, page } => Kind::PauseMax { color, page },
                    Notice::PauseEnded { release, color, ms } => {
                        Kind::PauseEnded { release, color, ms }
                    }
                }),
                Effect::Split { canary, percent } => self.publish(Kind::CanaryShare {
                    color: *canary,
                    share: f64::from(*percent) / 100.0,
                    canary_by: core.policy().rollout.canary_by.name().into(),
                    testers: core.policy().rollout.testers.len() as u32,
                }),
                _ => {}
            }
        }
        self.progressed(core);
        if let Some(m) = &self.metrics {
            let group = |c: Color| core.slot(c).pid().map(|p| p.as_raw());
            let paused = core.state().pause.is_some();
            m.track(
                core.state().live,
                paused,
                [group(Color::Blue), group(Color::Green)],
            );
        }
    }

    /// A release or rollback that was not in progress before is now.
    fn began(&mut self, core: &Core<AppProcess>) {
        let Some(r) = core.release() else { return };
        if self.followed.as_ref().is_some_and(|f| f.task == r.task) {
            return;
        }
        self.followed = Some(Followed {
            task: r.task,
            id: r.id,
            started: r.started,
            steps: 0,
            ready: false,
        });
        self.publish(Kind::ReleaseBegan {
            release: r.id,
            kind: r.kind.name().into(),
            trigger: r.kind.trigger().name().into(),
            color: r.color,
            label: r.label.clone(),
        });
    }

    /// New steps of the release in progress, and its readiness.
    fn progressed(&mut self, core: &Core<AppProcess>) {
        let Some(r) = core.release() else { return };
        let Some(f) = self.followed.as_mut().filter(|f| f.task == r.task) else {
            return;
        };
        let new: Vec<_> = r.steps[f.steps.min(r.steps.len())..].to_vec();
        f.steps = r.steps.len();
        let ready = !f.ready && matches!(r.phase, ReleasePhase::Committing { .. });
        if ready {
            f.ready = true;
        }
        let ms = f.started.elapsed().as_millis() as u64;
        for s in new {
            self.publish(Kind::Step {
                release: r.id,
                step: s.step,
            });
        }
        if ready {
            self.publish(Kind::Ready {
                release: r.id,
                color: r.color,
                ms,
            });
        }
    }

    fn swapped(&mut self, to: Color) {
        let from = self.live.filter(|c| *c != to);
        self.live = Some(to);
        self.restarting = [false; 2];
        // The release may have ended in the same decision (nothing to drain).
        let release = self.followed.as_ref().map_or(0, |f| f.id);
        self.publish(Kind::Swapped { release, from, to });
    }

    /// New connections go to `color` alone; after a restart it serves again.
    fn steered(&mut self, core: &Core<AppProcess>, color: Color) {
        if let Some(m) = &self.metrics {
            m.set_traffic_share(color, 1.0);
        }
        if std::mem::take(&mut self.restarting[idx(color)]) {
            if let ColorPhase::Live { .. } = core.slot(color).phase {
                let pid = core.slot(color).pid().map_or(0, |p| p.as_raw() as u32);
                self.publish(Kind::Restarted { color, pid });
            }
        }
    }

    /// A release or rollback ended: its last steps, then how it ended.
    fn ended(&mut self, ended: &Ended) {
        let r = &ended.record;
        if r.kind == "pause" {
            // Its history record; its event is `pause_ended` (a Notice).
            return;
        }
        // Releases never overlap: the one followed is the one that ended.
        let followed = self.followed.take();
        let (published, started) = match &followed {
            Some(f) => (f.steps, Some(f.started)),
            None => (r.steps.len(), None),
        };
        for s in r.steps.iter().skip(published) {
            self.publish(Kind::Step {
                release: r.release,
                step: s.step,
            });
        }
        let ms = started.map_or_else(
            || r.steps.last().map_or(0, |s| s.at_ms),
            |t| t.elapsed().as_millis() as u64,
        );
        let steps = step_durations(&r.steps, ms);
        let kind = match &ended.failure {
            Some(f) => Kind::Failed {
                release: r.release,
                kind: r.kind.clone(),
                trigger: r.trigger.clone(),
                color: r.color,
                step: f.step,
                message: f.message.clone(),
                ms,
                steps,
            },
            None if r.kind == "promote" => Kind::Promoted {
                release: r.release,
                color: r.color,
            },
            None if r.kind == "abort" => Kind::Aborted {
                release: r.release,
                color: r.color,
                reason: r.result.clone(),
            },
            None if r.kind == "rollback" => Kind::RolledBack {
                release: r.release,
                color: r.color,
                // A rollback a client asked for is manual; one that bgd
                // started itself (a failed bake) has another trigger.
                kind: match r.trigger.as_str() {
                    "bgctl" => RollbackKind::Manual,
                    _ => RollbackKind::Automatic,
                },
                ms,
                steps,
            },
            None => Kind::Released {
                release: r.release,
                trigger: r.trigger.clone(),
                color: r.color,
                ms,
                steps,
            },
        };
        self.publish(kind);
    }
}

fn idx(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

/// How long each step took: until the next one began, the last until `end_ms`.
fn step_durations(steps: &[StepTime], end_ms: u64) -> Vec<StepTook> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let until = steps.get(i + 1).map_or(end_ms, |n| n.at_ms);
            StepTook {
                step: s.step,
                ms: until.saturating_sub(s.at_ms),
            }
        })
        .collect()
}

impl Daemon {
    /// Hands `input` to the core, publishing the events its decision makes.
    pub(super) fn handle(&mut self, input: Input<AppProcess>) -> Vec<Effect<AppProcess>> {
        self.telemetry.before(&input);
        let effects = self.core.handle(now(), input);
        self.telemetry.after(&self.core, &effects);
        effects
    }

    /// `bgctl events`: the events kept, then (with `follow`) new ones until
    /// the client goes away. Runs beside the loop.
    pub(super) fn stream_events(&self, follow: bool, reply: Responder) {
        let (recent, live) = self.telemetry.hub.recent();
        let mut last = 0;
        stream(recent, live, follow, reply, move |next| match next {
            // Kept and broadcast both: already sent.
            Ok(e) if e.seq <= last => Next::Skip,
            Ok(e) => {
                last = e.seq;
                Next::Send(Reply::Lifecycle(e))
            }
            Err(n) => Next::End(Reply::Error(Failure::new(
                FailureKind::Busy,
                None,
                format!(
                    "this client read too slowly and missed {n} events: run bgctl events -f again"
                ),
            ))),
        });
    }
}
