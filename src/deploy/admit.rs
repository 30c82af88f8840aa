//! Whether a release or rollback may begin, and beginning it.
//!
//! The rules, in the order they are checked:
//! 1. nothing begins while bgd stops;
//! 2. releases never overlap: one in progress refuses the next;
//! 3. the dormant color must have stopped (a drain still running there
//!    refuses it);
//! 4. a release needs an absolute build path;
//! 5. a rollback needs a live color and a target: with `--to ID|LABEL` a
//!    kept release that went live (a switch if it is the standby's), else
//!    the standby (a switch), else the previous good kept release (its
//!    kept copy is staged into the dormant color), else a dormant color
//!    whose build went live once (started from its directory);
//! 6. a canary (or a preview) runs alone: a release or rollback waits for
//!    its promote or abort, and `--canary` needs a live color and TCP
//!    listeners in gate mode; `--preview` needs the same and testers, and
//!    does not go with `--canary`.
//!
//! A release whose dormant color is a standby drains that standby first.
//! While a pause still stops the app, nothing begins (`pause.rs`).

use std::path::PathBuf;

use nix::unistd::Pid;

use super::kept;
use super::{ClientId, ColorPhase, Core, Effect, Kind, Launch, Level, Now, Process};
use super::{Release, ReleasePhase, Shutdown, Trigger};
use crate::color::Color;
use crate::deploy::state::{Build, Kept, State};
use crate::deploy::{Failure, FailureKind, WriteFailed};

impl<P: Process> Core<P> {
    /// The color a release or rollback starts: the one that is not live.
    pub fn dormant(&self) -> Color {
        self.state.live.map_or(Color::Blue, Color::other)
    }

    /// Rules 1 to 3: `Err` says why nothing may begin now.
    pub fn admissible(&self) -> Result<(), Failure> {
        let busy = |m: String| Err(Failure::new(FailureKind::Busy, None, m));
        if self.shutdown != Shutdown::Running {
            return busy("bgd is shutting down; nothing new is started".into());
        }
        if let Some(r) = &self.release {
            if let ReleasePhase::Draining { old_pid, .. } = r.phase {
                return busy(format!(
                    "release {} is live on {}; {}",
                    r.id,
                    r.color,
                    self.still_draining(r.color.other(), old_pid)
                ));
            }
            return busy(format!(
                "{} of release {} is in progress (step {}, {} since {}): releases never overlap, so run this one again when it finishes (`bgctl status` shows progress)",
                r.kind.name(), r.id, r.step(), r.color, crate::rfc3339(r.since)
            ));
        }
        if let Some(c) = &self.canary {
            let (what, share) = match c.percent {
                0 => ("a preview", "the testers alone".to_string()),
                p => ("a canary", format!("{p}% of new connections")),
            };
            return busy(format!(
                "{what} of release {} runs on {} ({share}): promote it (`bgctl promote`) or abort it (`bgctl abort`) first",
                c.release, c.color
            ));
        }
        let color = self.dormant();
        if let ColorPhase::Draining { pid } = self.slot(color).phase {
            return busy(self.still_draining(color, pid));
        }
        self.pause_admits()
    }

    /// Begins a release of `source`: clears the dormant color's record (so
    /// a crash mid-copy never leaves a rollback target that lies) and
    /// commits that before the task starts.
    pub(super) fn begin_release(&mut self, now: Now, source: PathBuf, ask: Ask) {
        let Ask {
            label,
            trigger,
            client,
            canary,
            preview,
            wait_bake,
        } = ask;
        if let Err(f) = self.admissible() {
            return self.refuse(client, f);
        }
        if !source.is_absolute() {
            let m = format!("build path {} must be absolute", source.display());
            return self.refuse(client, Failure::new(FailureKind::BadRequest, None, m));
        }
        if let Err(m) = self.share_possible(canary, preview) {
            return self.refuse(client, Failure::new(FailureKind::BadRequest, None, m));
        }
        // A preview is a canary with no share: the testers alone reach it.
        let canary = if preview { Some(0) } else { canary };
        let color = self.dormant();
        let before = self.state.clone();
        let (evicting, replaced) = self.clear_dormant(now, color);
        let id = self.state.next_release;
        self.state.next_release += 1;
        self.emit(Effect::Commit(self.state.clone()));
        let launch = Launch {
            task: id,
            color,
            source: Some(source.clone()),
            kept: None,
            label: label.clone(),
            release: id,
            expect: match &trigger {
                Trigger::Watch(fp) => Some(fp.clone()),
                Trigger::Client | Trigger::Automatic => None,
            },
        };
        self.release = Some(Release {
            task: id,
            id,
            color,
            label,
            kind: Kind::Release {
                source,
                trigger,
                replaced,
            },
            client,
            canary,
            wait_bake,
            since: now.wall,
            started: now.mono,
            steps: Vec::new(),
            phase: ReleasePhase::Admitting {
                before,
                launch,
                evicting,
            },
        });
    }

    /// Makes the dormant `color` ready to be staged into: a standby there
    /// drains first (returns its pid), and its record is cleared (returns
    /// it), so that a crash mid-copy never leaves a record that lies. The
    /// caller commits the state.
    fn clear_dormant(&mut self, now: Now, color: Color) -> (Option<Pid>, Option<Build>) {
        let evicting = self.take_running(color).map(|process| {
            let pid = process.pid();
            self.enter(color, ColorPhase::Draining { pid }, now.wall);
            self.emit(Effect::Drain { color, process });
            pid
        });
        let replaced = self.state.build(color).cloned();
        self.state.set_build(color, None);
        (evicting, replaced)
    }

    /// Whether a canary of `percent` % can run now; `Err` says why not.
    pub(super) fn canary_possible(&self, percent: u8) -> Result<(), String> {
        if let Some(p) = &self.state.pause {
            return Err(format!("paused since {}: a canary shares new connections with a live build, and during a pause none serves (at most the maintenance page); release without --canary to end the pause", p.since));
        }
        if !(1..=99).contains(&percent) {
            return Err(format!("--canary {percent}: a canary's share is 1 to 99 percent; release without --canary to give the new build every connection"));
        }
        if let Some(why) = &self.policy.no_split {
            return Err(format!(
                "--canary needs new connections split between the colors, and {why}"
            ));
        }
        match self.state.live {
            Some(live) if matches!(self.slot(live).phase, ColorPhase::Live { .. }) => Ok(()),
            Some(live) => Err(format!("{live} is live but not serving (it is restarting): a canary needs it to take the rest of the connections; try again once it serves")),
            None => Err("nothing is live yet, so there is nothing for a canary to share with: release without --canary first".into()),
        }
    }

    /// The cleared record of release `r` is written (or not): start its
    /// task, or refuse and put the state back.
    pub(super) fn on_admitted(
        &mut self,
        now: Now,
        mut r: Release<P>,
        (before, launch, evicting): (State, Launch, Option<Pid>),
        result: Result<(), WriteFailed>,
    ) {
        if let Err(e) = result {
            self.state = before;
            let m = format!("cannot write bgd's state: {e}");
            return self.refuse(r.client, Failure::new(e.kind(), None, m));
        }
        if let Some(pid) = evicting {
            let (task, color) = (r.task, r.color);
            r.phase = ReleasePhase::Evicting { pid, launch };
            self.release = Some(r);
            let m = format!(
                "draining the standby {color} (pid {pid}) first: the new build starts there"
            );
            return self.on_progress(now, task, crate::deploy::Step::Validate, m);
        }
        self.launch(now, launch, r.kind.name());
        self.release = Some(Release {
            phase: ReleasePhase::Preparing { staged: false },
            ..r
        });
    }

    /// The standby evicted by the release in progress has drained: its
    /// task starts now. Returns whether `pid` was that standby.
    pub(super) fn evicted(&mut self, now: Now, pid: Pid) -> bool {
        let waits = |r: &mut Release<P>| matches!(r.phase, ReleasePhase::Evicting { pid: p, .. } if p == pid);
        let Some(mut r) = self.release.take_if(waits) else {
            return false;
        };
        if let ReleasePhase::Evicting { launch, .. } =
            std::mem::replace(&mut r.phase, ReleasePhase::Preparing { staged: false })
        {
            self.launch(now, launch, r.kind.name());
        }
        self.release = Some(r);
        true
    }

    /// Begins a rollback (rule 5): to kept release `to`, else to the
    /// standby, else to the previous good release.
    pub(super) fn begin_rollback(
        &mut self,
        now: Now,
        client: Option<ClientId>,
        to: Option<String>,
    ) {
        if to.is_none() && self.reclaim(client) {
            return;
        }
        if let Err(f) = self.admissible() {
            return self.refuse(client, f);
        }
        let refuse = |m: String| Failure::new(FailureKind::BadRequest, None, m);
        let color = self.dormant();
        let Some(live) = self.state.live else {
            let m =
                "nothing is live, so there is nothing to roll back from: use `bgctl release DIR`";
            return self.refuse(client, refuse(m.into()));
        };
        let live_id = self.state.build(live).map(|b| b.release);
        let standby = matches!(self.slot(color).phase, ColorPhase::Standby { .. });
        let standby_id = standby
            .then(|| self.state.build(color).map(|b| b.release))
            .flatten();
        let target = match &to {
            Some(to) => match kept::find(&self.state.releases, to) {
                Ok(k) => k.clone(),
                Err(m) => return self.refuse(client, refuse(m)),
            },
            None if standby => return self.switch_back(now, client, None),
            // What was live before: the dormant color's build, if it went
            // live (a failed release replaced it otherwise), from its kept
            // copy; else the newest good release before the live one.
            None => match self
                .state
                .build(color)
                .filter(|b| b.went_live)
                .and_then(|b| {
                    self.state
                        .releases
                        .iter()
                        .find(|k| k.release == b.release && kept::is_good(k))
                }) {
                Some(k) => k.clone(),
                None => match kept::previous(&self.state.releases, live_id) {
                    Some(k) => k.clone(),
                    None => return self.rollback_in_place(now, client),
                },
            },
        };
        let id = target.release;
        if Some(id) == live_id {
            let m = format!(
                "release {id} is already live on {live}; {}",
                kept::kept_list(&self.state.releases)
            );
            return self.refuse(client, refuse(m));
        }
        if Some(id) == standby_id {
            return self.switch_back(now, client, None);
        }
        if !kept::is_good(&target) {
            let m = format!("release {id} never went live (its release failed), so bgd does not roll back to it; {}", kept::kept_list(&self.state.releases));
            return self.refuse(client, refuse(m));
        }
        self.rollback_to_kept(now, client, target);
    }

    /// Stages a copy of kept release `k` into the dormant color (draining
    /// a standby there first), then start, wait_ready, swap, drain.
    pub(super) fn rollback_to_kept(&mut self, now: Now, client: Option<ClientId>, k: Kept) {
        let color = self.dormant();
        let before = self.state.clone();
        let (evicting, replaced) = self.clear_dormant(now, color);
        self.emit(Effect::Commit(self.state.clone()));
        let task = self.fresh_task();
        let launch = Launch {
            task,
            color,
            source: None,
            kept: Some(k.build(String::new())),
            label: k.label.clone(),
            release: k.release,
            expect: None,
        };
        let kind = Kind::Rollback {
            automatic: None,
            replaced,
        };
        let phase = ReleasePhase::Admitting {
            before,
            launch,
            evicting,
        };
        self.release = Some(Release::begun(
            now,
            task,
            (k.release, k.label),
            color,
            kind,
            client,
            phase,
        ));
    }

    /// No kept release to go to: starts the dormant color from its
    /// directory, if the build there went live once (a root whose kept
    /// copies are gone).
    fn rollback_in_place(&mut self, now: Now, client: Option<ClientId>) {
        let refuse = |m: String| Failure::new(FailureKind::BadRequest, None, m);
        let color = self.dormant();
        let live = self.state.live.unwrap_or(color.other());
        let kept = kept::kept_list(&self.state.releases);
        let build = match self.state.build(color) {
            Some(b) if b.went_live => b.clone(),
            Some(b) => {
                let m = format!("nothing to roll back to: {color} holds release {} which never went live (its release failed), and {kept}; {live} stays live", b.release);
                return self.refuse(client, refuse(m));
            }
            None => {
                let m = format!(
                    "nothing to roll back to: {color} holds no build that went live, and {kept}"
                );
                return self.refuse(client, refuse(m));
            }
        };
        let task = self.fresh_task();
        let launch = Launch {
            task,
            color,
            source: None,
            kept: None,
            label: build.label.clone(),
            release: build.release,
            expect: None,
        };
        self.launch(now, launch, "rollback");
        let kind = Kind::Rollback {
            automatic: None,
            replaced: None,
        };
        let phase = ReleasePhase::Preparing { staged: false };
        self.release = Some(Release::begun(
            now,
            task,
            (build.release, build.label),
            color,
            kind,
            client,
            phase,
        ));
    }
}

/// A release as asked for (see [`Input::Release`](super::Input::Release)).
pub(super) struct Ask {
    pub label: Option<String>,
    pub trigger: Trigger,
    pub client: Option<ClientId>,
    pub canary: Option<u8>,
    pub preview: bool,
    pub wait_bake: bool,
}

impl<P: Process> Core<P> {
    fn launch(&mut self, now: Now, launch: Launch, what: &str) {
        let (color, release) = (launch.color, launch.release);
        self.log(
            Level::Info,
            format!("{what} of release {release} begins on {color}"),
        );
        self.emit(Effect::Launch(launch));
        self.enter(color, ColorPhase::Starting, now.wall);
    }
}
