//! Whether a release or rollback may begin, and beginning it.
//!
//! The rules, in the order they are checked:
//! 1. nothing begins while bgd stops;
//! 2. releases never overlap: one in progress refuses the next;
//! 3. the dormant color must have stopped (a drain still running there
//!    refuses it);
//! 4. a release needs an absolute build path;
//! 5. a rollback needs a live color, and a dormant color whose build went
//!    live once.

use std::path::PathBuf;

use super::{ClientId, ColorPhase, Core, Effect, Kind, Launch, Level, Now, Process};
use super::{Release, ReleasePhase, Shutdown, Trigger};
use crate::color::Color;
use crate::protocol::{Failure, FailureKind};
use crate::state::State;

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
            return busy(format!(
                "{} of release {} is in progress (step {}, {} since {}): releases never overlap, so run this one again when it finishes (`bgctl status` shows progress)",
                r.kind.name(), r.id, r.step(), r.color, crate::rfc3339(r.since)
            ));
        }
        let color = self.dormant();
        if let ColorPhase::Draining { pid } = self.slot(color).phase {
            return busy(format!(
                "{color} (pid {pid}) is still draining: run this again once it has stopped (`bgctl status` shows it)"
            ));
        }
        Ok(())
    }

    /// Begins a release of `source`: clears the dormant color's record (so
    /// a crash mid-copy never leaves a rollback target that lies) and
    /// commits that before the task starts.
    pub(super) fn begin_release(
        &mut self,
        now: Now,
        source: PathBuf,
        label: Option<String>,
        trigger: Trigger,
        client: Option<ClientId>,
    ) {
        if let Err(f) = self.admissible() {
            return self.refuse(client, f);
        }
        if !source.is_absolute() {
            let m = format!("build path {} must be absolute", source.display());
            return self.refuse(client, Failure::new(FailureKind::BadRequest, None, m));
        }
        let color = self.dormant();
        let before = self.state.clone();
        let replaced = self.state.build(color).cloned();
        let id = self.state.next_release;
        self.state.next_release += 1;
        self.state.set_build(color, None);
        self.emit(Effect::Commit(self.state.clone()));
        let launch = Launch {
            task: id,
            color,
            source: Some(source.clone()),
            label: label.clone(),
            release: id,
            expect: match &trigger {
                Trigger::Watch(fp) => Some(fp.clone()),
                Trigger::Client => None,
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
            since: now.wall,
            started: now.mono,
            steps: Vec::new(),
            phase: ReleasePhase::Admitting { before, launch },
        });
    }

    /// The cleared record of release `r` is written (or not): start its
    /// task, or refuse and put the state back.
    pub(super) fn on_admitted(
        &mut self,
        now: Now,
        r: Release<P>,
        (before, launch): (State, Launch),
        result: Result<(), String>,
    ) {
        if let Err(e) = result {
            self.state = before;
            let m = format!("cannot write bgd's state: {e}");
            return self.refuse(r.client, Failure::new(FailureKind::Internal, None, m));
        }
        self.launch(now, launch, r.kind.name());
        self.release = Some(Release {
            phase: ReleasePhase::Preparing { staged: false },
            ..r
        });
    }

    /// Begins a rollback: starts the dormant color from its directory, if
    /// the build there went live once.
    pub(super) fn begin_rollback(&mut self, now: Now, client: Option<ClientId>) {
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
        let build = match self.state.build(color) {
            Some(b) if b.went_live => b.clone(),
            Some(b) => {
                let m = format!("nothing to roll back to: {color} holds release {} which never went live (its release failed); {live} stays live", b.release);
                return self.refuse(client, refuse(m));
            }
            None => {
                let m = format!("nothing to roll back to: {color} holds no build that went live");
                return self.refuse(client, refuse(m));
            }
        };
        let task = self.fresh_task();
        let launch = Launch {
            task,
            color,
            source: None,
            label: build.label.clone(),
            release: build.release,
            expect: None,
        };
        self.launch(now, launch, "rollback");
        self.release = Some(Release {
            task,
            id: build.release,
            color,
            label: build.label,
            kind: Kind::Rollback,
            client,
            since: now.wall,
            started: now.mono,
            steps: Vec::new(),
            phase: ReleasePhase::Preparing { staged: false },
        });
    }

    fn launch(&mut self, now: Now, launch: Launch, what: &str) {
        let (color, release) = (launch.color, launch.release);
        self.log(
            Level::Info,
            format!("{what} of release {release} begins on {color}"),
        );
        self.emit(Effect::Launch(launch));
        self.slot_mut(color).enter(ColorPhase::Starting, now.wall);
    }
}
