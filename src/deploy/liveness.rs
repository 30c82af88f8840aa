//! A color whose main process has exited is never made live (issue 25).
//!
//! A daemonizing server (nginx without `daemon off;`, `gunicorn --daemon`,
//! a script that ends in `&`) forks a server that takes the inherited
//! socket and lets its main process exit. The orphan answers the readiness
//! check, so readiness alone would make such a color live, and its main
//! process's exit would then look like a crash of the live color. So the
//! core looks at the main process at each step of the switch, not only when
//! its exit event arrives (that event can still be on its way):
//! - when the task reports the color ready (`Prepared(Ok)`): a release or
//!   rollback is refused, a restart counts as failed;
//! - when the swap has been written (`Committed(Ok)`): nothing was steered
//!   yet, so the swap is undone (the state is written back) and the release
//!   refused; the old color never stopped receiving.

use super::{ColorPhase, Core, Effect, Exit, Failed, Kind, Level, Now, Process};
use super::{Release, ReleasePhase, Shutdown};
use crate::color::Color;
use crate::deploy::state::State;
use crate::deploy::{Failure, FailureKind, Step};

/// Why a color whose main process exited is not made live. `strays` is
/// how many other processes of the color still ran, when known.
pub fn daemonized(color: Color, pid: i32, exit: Exit, strays: Option<usize>) -> String {
    let others = match strays {
        Some(0) => "; nothing else of it ran".to_string(),
        Some(n) => format!(" while {n} other process(es) of {color} ran on: the app daemonized"),
        None => ": if it forked a server that runs on, the app daemonized".to_string(),
    };
    let exit = match exit {
        // The exit event was not handled yet: it is a zombie or gone.
        Exit::Unknown => String::new(),
        e => format!(" ({e})"),
    };
    format!(
        "{color}'s main process (pid {pid}) exited{exit} by the time it would have been made live{others}. \
         bgd supervises the process it starts, so it must stay in the foreground: nginx needs `daemon off;`, \
         gunicorn no --daemon, and a shell script must `exec` the server rather than start it with `&`"
    )
}

impl<P: Process> Core<P> {
    /// A release's or rollback's color was reported ready but its main
    /// process has exited: refused, and what is left of it killed.
    pub(super) fn refuse_dead(&mut self, now: Now, r: Release<P>, process: P, exit: Exit) {
        let m = daemonized(r.color, process.pid().as_raw(), exit, None);
        self.emit(Effect::Discard(process));
        let f = Failure::new(FailureKind::App, Some(Step::WaitReady), m);
        self.fail(now, r, f, Some(exit));
    }

    /// A restart's color was reported ready but its main process has
    /// exited: the restart failed (and backs off), whatever still runs of
    /// it is killed.
    pub(super) fn restart_dead(&mut self, now: Now, color: Color, process: P, exit: Exit) {
        let m = daemonized(color, process.pid().as_raw(), exit, None);
        self.emit(Effect::Discard(process));
        let failed = Failed {
            failure: Failure::new(FailureKind::App, Some(Step::WaitReady), m),
            exit: Some(exit),
        };
        self.restart_failed(now, color, failed);
    }

    /// The swap to `r`'s color is written, but its process exited in the
    /// meantime: nothing was steered to it yet, so the state goes back to
    /// `before` (written again) and the release is refused.
    pub(super) fn undo_dead_swap(
        &mut self,
        now: Now,
        r: Release<P>,
        process: P,
        before: State,
        exit: Exit,
    ) {
        let m = daemonized(r.color, process.pid().as_raw(), exit, None);
        self.log(
            Level::Error,
            format!("{m}; writing back the state that names the old color live"),
        );
        self.state = before;
        self.save();
        self.emit(Effect::Discard(process));
        self.unswap_side_effects(now, &r);
        // A release that would have ended a pause did not: it holds on.
        self.pause_swap_failed();
        let f = Failure::new(FailureKind::App, Some(Step::Swap), m);
        let r = Release {
            phase: ReleasePhase::Preparing { staged: true },
            ..r
        };
        self.fail(now, r, f, Some(exit));
    }

    /// What a swap that did not take leaves to put right besides the
    /// state: a promoted canary gets no more connections, and a color
    /// bgd switched away from because it crashed starts again (it is still
    /// the live one).
    pub(super) fn unswap_side_effects(&mut self, now: Now, r: &Release<P>) {
        let color = r.color;
        if matches!(r.kind, Kind::Promote { .. }) {
            // The canary drains: it gets no more connections, nor do the
            // testers.
            self.emit(Effect::Split {
                canary: color,
                percent: 0,
            });
            self.emit(Effect::Testers(None));
        }
        let old = color.other();
        if matches!(
            r.kind,
            Kind::Rollback {
                automatic: Some(_),
                ..
            }
        ) && self.state.live == Some(old)
            && matches!(self.slot(old).phase, ColorPhase::Stopped)
            && self.shutdown == Shutdown::Running
        {
            self.enter(
                old,
                ColorPhase::Restarting {
                    task: None,
                    failed: None,
                },
                now.wall,
            );
            self.schedule_restart(old);
        }
    }
}
