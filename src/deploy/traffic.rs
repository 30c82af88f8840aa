//! After the swap: the standby, the bake window, canaries, the repeated
//! health checks, and switching back to a warm color without starting one
//! (issue 12).
//!
//! - A swap with `traffic.standby` keeps the old color running as a
//!   [`ColorPhase::Standby`] with no new connections until its time is up,
//!   then drains it. A rollback meanwhile is a switch: one steer back, no
//!   start, and the other color drains.
//! - While the standby runs, a crash of the new color, or
//!   `health.failures` failed checks in a row, switch back to it by itself
//!   ([`Trigger::Automatic`]); `traffic.bake` adds a window at whose end
//!   the release counts as good (`bake_passed`, `--wait-bake`).
//! - A canary (`--canary PERCENT`, or `traffic.steps`) gets a share of new
//!   connections beside the live color; its crash or failed checks abort it
//!   by itself. `promote` raises its share or makes it live (a swap), and
//!   `abort` drains it.
//!
//! Deadlines are `Instant`s in the phases; the daemon wakes the core with
//! [`Input::Due`](super::Input::Due) when asked ([`Effect::WakeAt`]), and the core looks at
//! every deadline then, so a stale wake-up does nothing.

use std::time::{Instant, SystemTime};

use super::{CanaryShare, Notice, Outcome, Release, ReleasePhase, Timings, Trigger};
use super::{Checked, ClientId, ColorPhase, Core, Effect, Kind, Level, Now, Process};
use crate::color::Color;
use crate::deploy::rollout::Rollout;
use crate::deploy::{Failure, FailureKind, Step};

/// Each color's share of new connections, in percent:
/// `{"blue": 90, "green": 10}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shares {
    pub blue: u8,
    pub green: u8,
}

impl Shares {
    pub fn set(&mut self, color: Color, percent: u8) {
        match color {
            Color::Blue => self.blue = percent,
            Color::Green => self.green = percent,
        }
    }
}

/// What the core needs of the config after a swap; replaced by a reload.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `[traffic] standby`, `bake`, `steps`.
    pub rollout: Rollout,
    /// `health.failures`: failed checks in a row that make a color unhealthy.
    pub failures: u32,
    /// Why new connections cannot be split between the colors here (a Unix
    /// listener, or shared mode), so `--canary` is refused; `None` if they can.
    pub no_split: Option<String>,
    /// `keep`: good releases whose copies stay, besides the ones in use.
    pub keep: usize,
    /// `app.drain_delay` and `app.drain_timeout`: how long a drain can
    /// take, for the refusals that wait on one.
    pub drain_delay: std::time::Duration,
    pub drain_timeout: std::time::Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            rollout: Rollout::default(),
            failures: 3,
            no_split: None,
            keep: crate::deploy::kept::DEFAULT_KEEP,
            drain_delay: std::time::Duration::from_secs(30),
            drain_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// A canary: a new build beside the live color, with a share of new
/// connections.
#[derive(Debug, Clone)]
pub struct Canary {
    pub color: Color,
    pub release: u64,
    pub label: Option<String>,
    /// Its share of new connections, 1 to 99; 0 for a preview, which only
    /// the testers reach.
    pub percent: u8,
    /// With `traffic.steps`: the step it is at (0-based) and when that step
    /// ends; `None` for a canary that waits for `promote`.
    pub step: Option<(usize, Instant)>,
    /// A `bgctl release --wait-bake` client, answered once the bake passed.
    pub waiter: Option<ClientId>,
    pub since: SystemTime,
}

/// The bake window of the live color.
#[derive(Debug, Clone)]
pub struct Bake {
    pub color: Color,
    pub release: u64,
    pub until: Instant,
    /// A `bgctl release --wait-bake` client.
    pub waiter: Option<ClientId>,
    /// The first failure seen while bgd could not switch back (the standby
    /// had died, or a release was in progress), and why: the bake then
    /// does not pass.
    pub failed: Option<String>,
}

impl Canary {
    /// A preview: only the testers reach it.
    pub fn is_preview(&self) -> bool {
        self.percent == 0
    }
}

impl<P: Process> Core<P> {
    /// Takes a reloaded config's policy; what runs keeps its deadlines.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// `[traffic]` and `health.failures` as last loaded.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn canary(&self) -> Option<&Canary> {
        self.canary.as_ref()
    }

    /// Each color's share of new connections, in percent (status).
    pub fn shares(&self) -> Shares {
        let mut shares = Shares::default();
        if let Some(live) = self.state.live {
            shares.set(live, 100);
        }
        if let Some(c) = &self.canary {
            shares.set(c.color, c.percent);
            shares.set(c.color.other(), 100 - c.percent);
        }
        shares
    }

    /// When the standby drains, and when the bake ends (status).
    pub fn deadlines(&self, now: Now) -> (Option<SystemTime>, Option<SystemTime>) {
        let standby = Color::BOTH.iter().find_map(|c| match self.slot(*c).phase {
            ColorPhase::Standby { until, .. } => Some(now.wall_at(until)),
            _ => None,
        });
        (standby, self.bake.as_ref().map(|b| now.wall_at(b.until)))
    }

    /// Whether a ready release becomes a canary rather than live: asked
    /// for with `--canary`, or `traffic.steps` with a color live to share.
    /// Never during a pause: the release that ends it (or replaces the
    /// maintenance page) is a plain swap.
    pub(super) fn wants_canary(&self, r: &Release<P>) -> bool {
        matches!(r.kind, Kind::Release { .. })
            && self.state.pause.is_none()
            && (r.canary.is_some()
                || (!self.policy.rollout.steps.is_empty()
                    && matches!(self.slot(r.color.other()).phase, ColorPhase::Live { .. })))
    }

    /// Release `r` is ready: it gets its share beside the live color, and
    /// the release ends there.
    pub(super) fn start_canary(&mut self, now: Now, r: Release<P>, process: P, timings: Timings) {
        let color = r.color;
        if !matches!(self.slot(color.other()).phase, ColorPhase::Live { .. }) {
            self.emit(Effect::Discard(process));
            let m = format!("{} is not serving (it died or is restarting), so it cannot take the rest of a canary's connections; release again once it serves", color.other());
            let f = Failure::new(FailureKind::App, Some(Step::Swap), m);
            return self.fail(now, r, f, None);
        }
        let (percent, step) = match r.canary {
            Some(p) => (p, None),
            None => {
                let first = self.policy.rollout.steps[0];
                (first.percent, Some((0, now.mono + first.hold)))
            }
        };
        self.enter(color, ColorPhase::Canary { process }, now.wall);
        if percent > 0 {
            self.emit(Effect::Split {
                canary: color,
                percent,
            });
        }
        self.emit(Effect::Testers(Some(color)));
        if let Some((_, until)) = step {
            self.emit(Effect::WakeAt(until));
        }
        let waiter = r.client.filter(|_| r.wait_bake);
        self.canary = Some(Canary {
            color,
            release: r.id,
            label: r.label.clone(),
            percent,
            step,
            waiter,
            since: now.wall,
        });
        let msg = self.canary_message(r.id, color, percent, step.is_some());
        self.log(Level::Info, msg.clone());
        let kind = if percent == 0 { "preview" } else { "canary" };
        self.ended_as(now, &r, kind, msg.clone(), None);
        match waiter {
            Some(_) => self.progress(r.client, Step::Swap, msg),
            None => {
                let share = CanaryShare {
                    release: r.id,
                    color,
                    percent,
                    timings: Some(timings),
                    message: msg,
                };
                let outcome = match percent {
                    0 => Outcome::Preview(share),
                    _ => Outcome::Canary(share),
                };
                self.done(r.client, outcome);
            }
        }
    }

    /// `bgctl promote [PERCENT]`.
    pub(super) fn promote(&mut self, now: Now, percent: Option<u8>, client: Option<ClientId>) {
        let Some(c) = &mut self.canary else {
            let m = "no canary runs (nor a preview), so there is nothing to promote: `bgctl release DIR --preview` or `--canary PERCENT` starts one";
            return self.refuse(client, Failure::new(FailureKind::BadRequest, None, m));
        };
        match percent.filter(|p| *p < 100) {
            Some(p) => {
                let from = if c.percent == 0 {
                    " from its preview"
                } else {
                    ""
                };
                c.percent = p;
                c.step = None;
                let (color, release) = (c.color, c.release);
                self.emit(Effect::Split {
                    canary: color,
                    percent: p,
                });
                let msg = format!(
                    "promoted{from}: release {release} on {color} gets {}; `bgctl promote` makes it live",
                    self.who_gets(p)
                );
                self.log(Level::Info, msg.clone());
                self.record(now, release, color, "promote", Trigger::Client, msg.clone());
                let share = CanaryShare {
                    release,
                    color,
                    percent: p,
                    timings: None,
                    message: msg,
                };
                self.done(client, Outcome::Canary(share));
            }
            None => self.promote_fully(now, client, Trigger::Client),
        }
    }

    /// The canary becomes live: a swap, committed first, after which the
    /// old color goes on standby (or drains) and the bake begins.
    fn promote_fully(&mut self, now: Now, client: Option<ClientId>, trigger: Trigger) {
        let Some(c) = self.canary.take() else { return };
        let Some(process) = self.take_running(c.color) else {
            return;
        };
        // The canary's `--wait-bake` client waits on through the bake.
        let (client, wait_bake) = match (client, c.waiter) {
            (Some(cl), Some(w)) => {
                let release = c.release;
                self.done(Some(w), Outcome::PromotedByHand { release });
                (Some(cl), false)
            }
            (None, Some(w)) => (Some(w), true),
            (cl, None) => (cl, false),
        };
        let r = Release {
            task: self.fresh_task(),
            id: c.release,
            color: c.color,
            label: c.label,
            kind: Kind::Promote {
                automatic: trigger == Trigger::Automatic,
            },
            client,
            canary: None,
            wait_bake,
            since: now.wall,
            started: now.mono,
            steps: Vec::new(),
            phase: ReleasePhase::Preparing { staged: true },
        };
        self.log(
            Level::Info,
            format!("promoting release {} on {}: it becomes live", r.id, r.color),
        );
        self.commit_swap(r, process, Timings::default());
    }

    /// `bgctl abort`, or a canary that failed (`automatic` says how): it
    /// gets no new connections, and drains.
    pub(super) fn abort_canary(
        &mut self,
        now: Now,
        client: Option<ClientId>,
        automatic: Option<String>,
    ) {
        let Some(c) = self.canary.take() else {
            let m = "no canary runs (nor a preview), so there is nothing to abort";
            return self.refuse(client, Failure::new(FailureKind::BadRequest, None, m));
        };
        self.emit(Effect::Split {
            canary: c.color,
            percent: 0,
        });
        self.emit(Effect::Testers(None));
        if let Some(w) = c.waiter {
            let m = format!(
                "the canary of release {} was aborted{}; {} serves all new connections",
                c.release,
                automatic
                    .as_ref()
                    .map(|a| format!(": {a}"))
                    .unwrap_or_default(),
                c.color.other()
            );
            let f = Failure::new(FailureKind::RolledBack, Some(Step::Swap), m);
            self.refuse(Some(w), f);
        }
        let task = self.fresh_task();
        let kind = Kind::Abort { automatic };
        let phase = ReleasePhase::Preparing { staged: true };
        let mut r = Release::begun(
            now,
            task,
            (c.release, c.label),
            c.color,
            kind,
            client,
            phase,
        );
        let Some(process) = self.take_running(c.color) else {
            // It died: nothing to drain.
            return self.finish(now, r, Timings::default(), None, None);
        };
        let pid = process.pid();
        self.enter(c.color, ColorPhase::Draining { pid }, now.wall);
        self.emit(Effect::Drain {
            color: c.color,
            process,
        });
        r.phase = ReleasePhase::Draining {
            timings: Timings::default(),
            swapped: now.mono,
            old_pid: pid,
        };
        let (task, other) = (r.task, c.color.other());
        self.release = Some(r);
        let m = format!(
            "{other} gets every new connection; draining the canary {} (pid {pid})",
            c.color
        );
        self.on_progress(now, task, Step::Drain, m);
    }

    /// The previous color is still warm: switch new connections back to it
    /// (committed first), start nothing, and drain the other color.
    /// `automatic` says why bgd does it by itself.
    pub(super) fn switch_back(
        &mut self,
        now: Now,
        client: Option<ClientId>,
        automatic: Option<String>,
    ) {
        let color = self.dormant();
        let Some(process) = self.take_running(color) else {
            return;
        };
        let build = self.state.build(color).cloned();
        if let Some(b) = self.bake.take() {
            let m = format!(
                "release {} was rolled back{}",
                b.release,
                automatic
                    .as_ref()
                    .map(|a| format!(" automatically: {a}"))
                    .unwrap_or_default()
            );
            self.refuse(b.waiter, Failure::new(FailureKind::RolledBack, None, m));
        }
        let kind = Kind::Rollback {
            automatic,
            replaced: None,
        };
        let (id, label) = build.map_or((0, None), |b| (b.release, b.label));
        let task = self.fresh_task();
        let phase = ReleasePhase::Preparing { staged: true };
        let r = Release::begun(now, task, (id, label), color, kind, client, phase);
        self.log(
            Level::Info,
            format!("rollback to release {} on {color}: its standby takes new connections again, nothing is started", r.id),
        );
        self.commit_swap(r, process, Timings::default());
    }

    /// After a swap by release `r` (just made live): keep the old color's
    /// process as the standby, if `traffic.standby` asks for one, and begin
    /// the bake. Returns whether it kept one.
    pub(super) fn keep_standby(&mut self, now: Now, r: &Release<P>) -> bool {
        let old = r.color.other();
        // A pause's maintenance page (a build that never counts as gone
        // live) is never kept to switch back to.
        let keep = matches!(r.kind, Kind::Release { .. } | Kind::Promote { .. })
            && !self.policy.rollout.standby.is_zero()
            && self.state.build(old).is_some_and(|b| b.went_live);
        let Some(process) = keep.then(|| self.take_live(old)).flatten() else {
            return false;
        };
        let Rollout { standby, bake, .. } = self.policy.rollout;
        let until = now.mono + standby;
        self.enter(old, ColorPhase::Standby { process, until }, now.wall);
        self.emit(Effect::WakeAt(until));
        let mut m = format!(
            "{old} is on standby for {}: `bgctl rollback` switches back to it",
            humantime::format_duration(standby)
        );
        if !bake.is_zero() {
            self.bake = Some(Bake {
                color: r.color,
                release: r.id,
                until: now.mono + bake,
                waiter: r.client.filter(|_| r.wait_bake),
                failed: None,
            });
            self.emit(Effect::WakeAt(now.mono + bake));
            m += &format!(
                "; {} bakes for {}: a crash or {} failed health checks in a row switch back by itself",
                r.color,
                humantime::format_duration(bake),
                self.policy.failures
            );
        }
        self.log(Level::Info, m.clone());
        self.progress(r.client, Step::Drain, m);
        true
    }

    /// A swap made another color live: a bake of the one before ends. Its
    /// `--wait-bake` client hears that its release was rolled back (by a
    /// rollback) or superseded (by a newer release).
    pub(super) fn end_bake_of_old(&mut self, new: Color, by: &Kind) {
        if let Some(b) = self.bake.take_if(|b| b.color != new) {
            if matches!(by, Kind::Rollback { .. }) {
                let m = format!("release {} was rolled back during its bake", b.release);
                return self.refuse(b.waiter, Failure::new(FailureKind::RolledBack, None, m));
            }
            let release = b.release;
            self.done(b.waiter, Outcome::Superseded { release });
        }
    }

    /// Whether `client` waits for the bake rather than for the swap.
    pub(super) fn waits_for_bake(&self, client: Option<ClientId>) -> bool {
        client.is_some() && self.bake.as_ref().is_some_and(|b| b.waiter == client)
    }

    /// One repeated health check of `color`.
    pub(super) fn on_checked(&mut self, now: Now, c: Checked) {
        let Checked { color, pid, result } = c;
        let slot = self.slot(color);
        if !slot.phase.checked() || slot.pid() != Some(pid) {
            return;
        }
        let failures = self.policy.failures;
        let health = &mut self.slot_mut(color).health;
        match result {
            Ok(()) => {
                let was = std::mem::take(health);
                if was.failing >= failures {
                    self.log(
                        Level::Info,
                        format!("{color} passes its health checks again"),
                    );
                }
            }
            Err(m) => {
                health.failing += 1;
                health.last = Some(m.clone());
                let n = health.failing;
                let act = n >= failures && !health.acted;
                health.acted |= act;
                if n <= failures {
                    self.log(
                        Level::Warn,
                        format!("health check of {color} failed ({n} of {failures} in a row): {m}"),
                    );
                }
                if act {
                    self.unhealthy(now, color, format!("{n} failed health checks: {m}"));
                }
            }
        }
    }

    /// `color` failed `health.failures` checks in a row, or died: a canary
    /// is aborted, a baking color switched back from; otherwise it is
    /// reported. Returns whether bgd acted.
    pub(super) fn unhealthy(&mut self, now: Now, color: Color, why: String) -> bool {
        if self.canary.as_ref().is_some_and(|c| c.color == color) {
            self.log(
                Level::Error,
                format!("the canary {color} is unhealthy ({why}): aborting it"),
            );
            self.abort_canary(now, None, Some(why));
            return true;
        }
        // Within the standby window (`traffic.standby`, 30 s by default)
        // the previous color still runs: a live color that dies or fails
        // its checks then hands the traffic back. With `traffic.bake` set,
        // its window decides instead: a release that passed it is good.
        let baking = self.bake.as_ref().is_some_and(|b| b.color == color);
        let watched = baking || self.policy.rollout.bake.is_zero();
        let warm = matches!(self.slot(color.other()).phase, ColorPhase::Standby { .. });
        if warm && watched && self.release.is_none() {
            let during = if baking {
                "its bake"
            } else {
                "the standby window"
            };
            self.log(
                Level::Error,
                format!(
                    "{color} failed during {during} ({why}): switching back to {}",
                    color.other()
                ),
            );
            self.switch_back(now, None, Some(why));
            return true;
        }
        let cannot = if warm && watched {
            "a release is in progress, so bgd does not switch back"
        } else if warm {
            "it passed its bake, so bgd does not switch back (`bgctl rollback` does)"
        } else {
            "there is no standby to switch back to"
        };
        let m = format!("{color} is unhealthy ({why}) and {cannot}: it keeps its connections (`bgctl status` shows its checks)");
        self.log(Level::Error, m);
        if let Some(b) = self.bake.as_mut().filter(|b| b.color == color) {
            b.failed.get_or_insert(format!("{why}; {cannot}"));
        }
        false
    }

    /// A moment asked for has come: standbys whose time is up drain, a
    /// bake that ran its time passes, a canary step that ran its time
    /// gives way to the next.
    pub(super) fn on_due(&mut self, now: Now) {
        if let Some(b) = self.bake.take_if(|b| b.until <= now.mono) {
            self.end_bake(b);
        }
        for color in Color::BOTH {
            let due = matches!(self.slot(color).phase, ColorPhase::Standby { until, .. } if until <= now.mono);
            if let (true, Some(process)) = (due, due.then(|| self.take_running(color)).flatten()) {
                let pid = process.pid();
                self.enter(color, ColorPhase::Draining { pid }, now.wall);
                self.log(
                    Level::Info,
                    format!("the standby {color} (pid {pid}) is no longer kept: draining it"),
                );
                self.emit(Effect::Drain { color, process });
            }
        }
        self.next_step(now);
    }

    /// A bake that ran its time: it passed, unless its color failed while
    /// there was no standby to switch back to.
    fn end_bake(&mut self, b: Bake) {
        if let Some(why) = b.failed {
            let m = format!(
                "release {} on {} did not pass its bake ({why}), so it stays live: `bgctl rollback` goes back to the previous release",
                b.release, b.color
            );
            self.log(Level::Error, m.clone());
            self.emit(Effect::Notify(Notice::BakeFailed {
                release: b.release,
                color: b.color,
                reason: why,
            }));
            return self.refuse(b.waiter, Failure::new(FailureKind::App, None, m));
        }
        let (release, color) = (b.release, b.color);
        self.emit(Effect::Notify(Notice::BakePassed { release, color }));
        let outcome = Outcome::BakePassed { release, color };
        self.log(Level::Info, outcome.to_string());
        self.done(b.waiter, outcome);
    }

    fn next_step(&mut self, now: Now) {
        let steps = self.policy.rollout.steps.clone();
        let Some(c) = &mut self.canary else { return };
        let Some((i, _)) = c.step.filter(|(_, until)| *until <= now.mono) else {
            return;
        };
        match steps.get(i + 1) {
            Some(next) => {
                c.step = Some((i + 1, now.mono + next.hold));
                c.percent = next.percent;
                let (color, release, percent) = (c.color, c.release, next.percent);
                self.emit(Effect::Split {
                    canary: color,
                    percent,
                });
                self.emit(Effect::WakeAt(now.mono + next.hold));
                let m = format!(
                    "canary step {} of {}: release {release} on {color} gets {}",
                    i + 2,
                    steps.len(),
                    self.who_gets(percent)
                );
                self.log(Level::Info, m.clone());
                self.record(now, release, color, "promote", Trigger::Automatic, m);
            }
            None => self.promote_fully(now, None, Trigger::Automatic),
        }
    }

    /// A process of a canary or standby exited on its own.
    pub(super) fn lost(&mut self, now: Now, color: Color, what: &str) {
        if what == "canary" {
            let why = self
                .slot(color)
                .last_exit
                .map_or("it exited".into(), |e| format!("it exited ({e})"));
            self.log(
                Level::Error,
                format!("the canary {color} died: aborting it"),
            );
            self.abort_canary(now, None, Some(why));
            // After the split ended: what was queued for it goes to the live color.
            return self.emit(Effect::Rescue(color));
        }
        self.log(
            Level::Warn,
            format!(
                "the standby {color} exited: a rollback will start it again from its directory"
            ),
        );
    }

    /// Records an event that is no release of its own (a share changed).
    fn record(
        &mut self,
        now: Now,
        release: u64,
        color: Color,
        kind: &str,
        trigger: Trigger,
        result: String,
    ) {
        let build = self.state.build(color);
        let record = crate::deploy::record::Record {
            release,
            kind: kind.into(),
            trigger: trigger.name().into(),
            label: build.and_then(|b| b.label.clone()),
            source: build.map(|b| b.source.clone()),
            fingerprint: build.and_then(|b| b.fingerprint.clone()),
            color,
            started: crate::rfc3339(now.wall),
            finished: crate::rfc3339(now.wall),
            ok: true,
            result,
            failed_step: None,
            steps: Vec::new(),
        };
        self.emit(Effect::Ended(Box::new(super::Ended {
            record,
            trigger,
            failure: None,
        })));
    }
}
