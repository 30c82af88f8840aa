//! Pause for database work (issue 24): new connections wait in the kernel
//! while no app process runs, then the next build serves them.
//!
//! - `bgctl pause` records the pause (`state.json`, so it survives bgd).
//!   If the standby kept after the last swap still runs in the dormant
//!   color, it drains first (it would accept the connections meant to
//!   wait). Then new connections are steered to the dormant color's
//!   sockets, where nobody accepts: the kernel completes their handshakes
//!   and queues them. bgd keeps a copy of every socket outside itself
//!   while the pause lasts (`Effect::Hold`), so the queue outlives bgd
//!   too. The live color drains exactly as after a swap (what queued on a
//!   live color that was down, restarting, is relayed to the pause's
//!   queue); the client is answered once nothing runs.
//! - `bgctl release DIR` starts the new build in that color, which inherits
//!   the socket and accepts the waiting connections first; the swap that
//!   makes it live ends the pause (in the same commit). A release that fails
//!   leaves the pause as it was.
//! - `bgctl resume` is a rollback to the build live before, from its kept
//!   copy, into the same color.
//! - Past `--max`, the maintenance page (`--page DIR` or `[pause] page`) is
//!   released into the waiting color. It serves, but the pause goes on: a
//!   later release or resume replaces it by a normal swap. The page never
//!   counts as a build that went live (a rollback never goes to it).
//!   Without a page, past `--max` bgd warns and the clients keep waiting.
//!
//! While the pause holds the connections (no page), the color it
//! steers to is `Paused::color` and the state's `live` still names the
//! color that was live: nothing is restarted, and `dormant()` is the
//! waiting color, so a release or resume goes there.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use nix::unistd::Pid;

use serde::{Deserialize, Serialize};

use super::admit::Ask;
use super::{ClientId, ColorPhase, Core, Effect, Level, Notice, Now, Outcome, Process};
use super::{Release, Trigger};
use crate::color::Color;
use crate::deploy::record::Record;
use crate::deploy::{Failure, FailureKind, Step, WriteFailed};

/// The label of the maintenance page's release (status, history).
pub const PAGE_LABEL: &str = "maintenance page";

/// What `state.json` records of a pause: it survives bgd's restart, and a
/// bgd that starts while one is recorded stays paused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Paused {
    /// The color whose sockets hold the waiting connections (the one that
    /// was dormant when the pause began); the next build starts there.
    pub color: Color,
    /// When the pause began: RFC 3339, UTC.
    pub since: String,
    /// The same moment, in milliseconds since the Unix epoch (for `--max`
    /// across a restart of bgd).
    pub since_ms: u64,
    /// The release that was live before: what `bgctl resume` starts.
    pub before: Option<u64>,
    /// `--max`, in milliseconds.
    pub max_ms: Option<u64>,
    /// The maintenance page build (an absolute path), started past `max_ms`.
    pub page: Option<String>,
    /// The page's release id, once bgd began releasing it.
    pub page_release: Option<u64>,
}

/// `bgctl pause` as asked.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseAsk {
    pub client: Option<ClientId>,
    /// `--max`.
    pub max: Option<Duration>,
    /// `--page DIR` (absolute), else `[pause] page` when `--max` is given.
    pub page: Option<PathBuf>,
}

/// What the core keeps of a pause beside its record (lost with bgd).
#[derive(Debug, Default)]
pub(super) struct PauseRun {
    /// The pause's record is being committed; then this client waits.
    committing: Option<Option<ClientId>>,
    /// The `bgctl pause` client, answered once no app process runs.
    waiter: Option<ClientId>,
    /// When `--max` is reached, until the page starts or bgd warns.
    deadline: Option<Instant>,
    /// `--max` passed with no page: what status and the log warn.
    overdue: Option<String>,
    /// The last release during the pause that failed, and why.
    failed: Option<String>,
    /// The swap being committed ends the pause: its record, for the end.
    ending: Option<Paused>,
    /// The standby a pause drains before it holds connections on its
    /// color's socket.
    evicting: Option<Pid>,
}

/// A pause as status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseView {
    pub record: Paused,
    /// `stopping` (a color still drains), `waiting` (nothing runs; the
    /// connections wait), `releasing` (a build starts in the waiting
    /// color) or `page` (the maintenance page serves).
    pub stage: &'static str,
    /// When `--max` is reached (wall clock), while it is ahead.
    pub max_at: Option<SystemTime>,
    /// `--max` passed with no page to show.
    pub overdue: Option<String>,
    /// The last release during the pause that failed.
    pub failed: Option<String>,
}

impl<P: Process> Core<P> {
    /// The pause, if one is recorded.
    pub fn paused(&self, now: Now) -> Option<PauseView> {
        let p = self.state.pause.as_ref()?;
        let stage = if self.page_live() {
            "page"
        } else if self.release.is_some() {
            "releasing"
        } else if !self.nothing_runs() {
            "stopping"
        } else {
            "waiting"
        };
        Some(PauseView {
            record: p.clone(),
            stage,
            max_at: self.pause.deadline.map(|d| now.wall_at(d)),
            overdue: self.pause.overdue.clone(),
            failed: self.pause.failed.clone(),
        })
    }

    /// The maintenance page is the live color.
    fn page_live(&self) -> bool {
        self.state
            .pause
            .as_ref()
            .is_some_and(|p| self.state.live == Some(p.color))
    }

    /// A pause holds the connections: no page serves them.
    pub(super) fn holding(&self) -> bool {
        self.state.pause.is_some() && !self.page_live()
    }

    /// No process of the app runs (nor is being started or stopped).
    fn nothing_runs(&self) -> bool {
        Color::BOTH
            .iter()
            .all(|c| matches!(self.slot(*c).phase, ColorPhase::Stopped))
    }

    /// Rule of `admissible`: while the pause still stops the app, nothing
    /// else begins.
    pub(super) fn pause_admits(&self) -> Result<(), Failure> {
        if !self.holding() || self.nothing_runs() {
            return Ok(());
        }
        let running = Color::BOTH
            .into_iter()
            .find_map(|c| self.slot(c).pid().map(|pid| format!("{c} (pid {pid})")))
            .unwrap_or_else(|| "the app".into());
        Err(Failure::new(
            FailureKind::Busy,
            None,
            format!("the pause is still stopping {running}: run this again once `bgctl pause` has returned (`bgctl status` shows the pause)"),
        ))
    }

    /// `bgctl pause`: records the pause, then (on `Committed`) drains the
    /// standby if one runs, steers, and stops the live color. `--page`
    /// alone during a pause starts the page now.
    pub(super) fn begin_pause(&mut self, now: Now, ask: PauseAsk) {
        let PauseAsk { client, max, page } = ask;
        let bad = |m: String| Failure::new(FailureKind::BadRequest, None, m);
        if let Some(p) = &self.state.pause {
            if let (Some(page), None) = (&page, max) {
                return self.page_now(now, client, page.clone());
            }
            let m = format!(
                "already paused since {} (new connections wait on {}): end the pause with `bgctl release DIR` or `bgctl resume`; `bgctl pause --page DIR` puts up a maintenance page now",
                p.since, p.color
            );
            return self.refuse(client, bad(m));
        }
        if page.is_some() && max.is_none() {
            let m = "--page DIR is started once the pause has lasted --max, and no pause runs: give both (`bgctl pause --max 30s --page DIR`), or run `bgctl pause --page DIR` during a pause to put the page up at once".into();
            return self.refuse(client, bad(m));
        }
        if let Err(f) = self.admissible() {
            return self.refuse(client, f);
        }
        if let Some(b) = &self.bake {
            let m = format!(
                "release {} on {} is in its bake window: pause once it has passed (`bgctl status` shows when), or roll back first",
                b.release, b.color
            );
            return self.refuse(client, Failure::new(FailureKind::Busy, None, m));
        }
        let Some(live) = self.state.live else {
            let m = "nothing is live, so there is nothing to pause: release a build first".into();
            return self.refuse(client, bad(m));
        };
        let since_ms = now
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.state.pause = Some(Paused {
            color: live.other(),
            since: crate::rfc3339(now.wall),
            since_ms,
            before: self.state.build(live).map(|b| b.release),
            max_ms: max.map(|m| m.as_millis() as u64),
            page: page.map(|p| p.display().to_string()),
            page_release: None,
        });
        self.pause.committing = Some(client);
        self.emit(Effect::Commit(self.state.clone()));
    }

    /// The outcome of committing a pause's record; `false` if no pause
    /// was being committed.
    pub(super) fn pause_committed(&mut self, now: Now, result: &Result<(), WriteFailed>) -> bool {
        let Some(client) = self.pause.committing.take() else {
            return false;
        };
        if let Err(e) = result {
            self.state.pause = None;
            let m = format!("cannot record the pause in bgd's state: {e}; nothing changed");
            self.refuse(client, Failure::new(e.kind(), None, m));
            return true;
        }
        let Some(p) = self.state.pause.clone() else {
            return true;
        };
        let color = p.color;
        self.pause.waiter = client;
        self.pause.deadline = p.max_ms.map(|ms| now.mono + Duration::from_millis(ms));
        if let Some(at) = self.pause.deadline {
            self.emit(Effect::WakeAt(at));
        }
        // The standby kept after the last swap runs in the color whose
        // socket will hold the connections: it drains first, and only then
        // is anything steered there (it would accept them, and its drain
        // could shut the socket down under them).
        if let Some(process) = self.take_running(color) {
            let pid = process.pid();
            self.pause_evict(now, color, process);
            let m = format!("draining the standby {color} (pid {pid}) first: new connections wait on its socket once it has stopped");
            self.progress(client, Step::Drain, m);
            return true;
        }
        self.hold_and_stop(now, color, p.max_ms);
        true
    }

    /// The color whose sockets hold (or will hold) the waiting
    /// connections, during a pause.
    pub(super) fn pause_color(&self) -> Option<Color> {
        self.state.pause.as_ref().map(|p| p.color)
    }

    /// Drains `process`, which runs in the pause's color, before anything
    /// is steered there: it would accept the connections meant to wait,
    /// and its drain could shut the socket down under them.
    /// [`pause_evicted`](Self::pause_evicted) goes on once it has stopped.
    pub(super) fn pause_evict(&mut self, now: Now, color: Color, process: P) {
        let pid = process.pid();
        self.enter(color, ColorPhase::Draining { pid }, now.wall);
        self.emit(Effect::Drain { color, process });
        self.pause.evicting = Some(pid);
    }

    /// The standby a pause drained first has stopped (`pid`): now the
    /// connections wait on its color's socket and the live color stops.
    /// Returns whether `pid` was that standby.
    pub(super) fn pause_evicted(&mut self, now: Now, pid: Pid) -> bool {
        if self.pause.evicting != Some(pid) {
            return false;
        }
        self.pause.evicting = None;
        if let Some(p) = self.state.pause.clone() {
            self.hold_and_stop(now, p.color, p.max_ms);
        }
        true
    }

    /// New connections wait on `color`'s sockets from now on, and every
    /// process of the app stops.
    fn hold_and_stop(&mut self, now: Now, color: Color, max_ms: Option<u64>) {
        self.emit(Effect::Hold(Some(color)));
        self.emit(Effect::Steer(color));
        let m = format!("new connections now wait on {color}'s socket, where nobody accepts (the kernel queues them)");
        self.log(Level::Info, format!("paused: {m}"));
        let client = self.pause.waiter;
        self.progress(client, Step::Drain, m);
        self.emit(Effect::Notify(Notice::Paused { color, max_ms }));
        for c in Color::BOTH {
            self.stop_for_pause(now, c);
        }
    }

    /// Stops whatever runs in `color` for the pause: a running process
    /// drains as the old color after a swap; a pending restart is dropped.
    fn stop_for_pause(&mut self, now: Now, color: Color) {
        if let Some(process) = self.take_running(color) {
            let pid = process.pid();
            self.enter(color, ColorPhase::Draining { pid }, now.wall);
            self.emit(Effect::Drain { color, process });
            let m = format!("draining {color} (pid {pid}): its queue and connections first, then its stop signal, then SIGKILL at drain_timeout");
            let client = self.pause.waiter;
            self.progress(client, Step::Drain, m);
            return;
        }
        if let ColorPhase::Restarting { task, .. } = self.slot(color).phase {
            if let Some(task) = task {
                self.emit(Effect::Abort(task));
            }
            self.enter(color, ColorPhase::Stopped, now.wall);
            // What queued on its socket while it was down would wait there
            // for its next build: relayed instead to where the public
            // address now leads, the pause's queue (steered just before).
            self.emit(Effect::Rescue(color));
        }
    }

    /// After every input: answers the pause's client once nothing runs,
    /// and acts on `--max` once it has passed.
    pub(super) fn pause_tick(&mut self, now: Now) {
        if !self.holding() || !self.nothing_runs() || self.release.is_some() {
            return;
        }
        if let Some(client) = self.pause.waiter.take() {
            let color = self.state.pause.as_ref().map_or(Color::Blue, |p| p.color);
            let message = format!("paused: no app process runs, and new connections wait on {color}'s socket. Do the database work, then `bgctl release DIR` (or `bgctl resume`) starts a build there that serves them");
            self.log(Level::Info, message.clone());
            self.emit(Effect::Notify(Notice::PauseStopped { color }));
            self.done(Some(client), Outcome::Paused { color, message });
        }
        if self.pause.deadline.is_some_and(|d| d <= now.mono) && self.shutdown_running() {
            self.pause.deadline = None;
            self.past_max(now);
        }
    }

    fn shutdown_running(&self) -> bool {
        self.shutdown == super::Shutdown::Running
    }

    /// The pause has lasted `--max`: the page starts, or bgd warns.
    fn past_max(&mut self, now: Now) {
        let Some(p) = self.state.pause.clone() else {
            return;
        };
        let max = humantime::format_duration(Duration::from_millis(p.max_ms.unwrap_or(0)));
        match (&p.page, p.page_release) {
            (Some(page), None) => {
                self.log(
                    Level::Warn,
                    format!("the pause has lasted --max {max}: starting the maintenance page {page} in {}", p.color),
                );
                self.emit(Effect::Notify(Notice::PauseMax {
                    color: p.color,
                    page: true,
                }));
                self.release_page(now, PathBuf::from(page), None);
            }
            _ => {
                let m = format!("the pause has lasted --max {max} and no maintenance page is configured (`--page DIR` or [pause] page): clients keep waiting on {}", p.color);
                self.log(Level::Warn, m.clone());
                self.emit(Effect::Notify(Notice::PauseMax {
                    color: p.color,
                    page: false,
                }));
                self.pause.overdue = Some(m);
            }
        }
    }

    /// `bgctl pause --page DIR` during a pause: the page starts now.
    fn page_now(&mut self, now: Now, client: Option<ClientId>, page: PathBuf) {
        if let Err(f) = self.admissible() {
            return self.refuse(client, f);
        }
        if self.page_live() {
            let m = "the maintenance page already serves: `bgctl release DIR` replaces it (by a swap), or `bgctl resume`".to_string();
            return self.refuse(client, Failure::new(FailureKind::BadRequest, None, m));
        }
        if let Some(p) = &mut self.state.pause {
            p.page = Some(page.display().to_string());
        }
        self.release_page(now, page, client);
    }

    /// Releases the maintenance page into the waiting color; its release
    /// id is recorded with the pause, so its swap does not end the pause.
    fn release_page(&mut self, now: Now, page: PathBuf, client: Option<ClientId>) {
        self.pause.deadline = None;
        self.pause.overdue = None;
        if let Some(p) = &mut self.state.pause {
            p.page_release = Some(self.state.next_release);
        }
        let ask = Ask {
            label: Some(PAGE_LABEL.into()),
            trigger: Trigger::Automatic,
            client,
            canary: None,
            wait_bake: false,
            preview: false,
        };
        self.begin_release(now, page, ask);
    }

    /// `bgctl resume`: the build live before the pause, from its kept
    /// copy, into the color the connections wait on (or, with the page
    /// up, into the other: a normal swap).
    pub(super) fn resume(&mut self, now: Now, client: Option<ClientId>) {
        let bad = |m: String| Failure::new(FailureKind::BadRequest, None, m);
        let Some(p) = self.state.pause.clone() else {
            let m = "not paused: `bgctl resume` ends a pause begun by `bgctl pause` (to go back to an earlier build, use `bgctl rollback`)".into();
            return self.refuse(client, bad(m));
        };
        if let Err(f) = self.admissible() {
            return self.refuse(client, f);
        }
        let kept = p.before.and_then(|id| {
            self.state
                .kept(id)
                .filter(|k| super::kept::is_good(k))
                .cloned()
        });
        match (p.before, kept) {
            (_, Some(k)) => self.rollback_to_kept(now, client, k),
            (Some(id), None) => {
                let m = format!("release {id}, live before the pause, has no kept copy to start from: end the pause with `bgctl release DIR`");
                self.refuse(client, bad(m))
            }
            (None, None) => {
                let m =
                    "no build was live before the pause: end it with `bgctl release DIR`".into();
                self.refuse(client, bad(m))
            }
        }
    }

    /// Called as a swap of `r` is committed: whether its build counts as
    /// one that went live (the page does not). A swap of anything but the
    /// page ends the pause, in the same commit.
    pub(super) fn pause_swap(&mut self, r: &Release<P>) -> bool {
        let Some(p) = &self.state.pause else {
            return true;
        };
        if p.page_release == Some(r.id) {
            return false;
        }
        self.pause.ending = self.state.pause.take();
        true
    }

    /// The swap was not written: the pause goes on.
    pub(super) fn pause_swap_failed(&mut self) {
        self.pause.ending = None;
    }

    /// The swap of `r` is written: if it ended the pause, say so.
    pub(super) fn pause_ended(&mut self, now: Now, r: &Release<P>) {
        let Some(p) = self.pause.ending.take() else {
            return;
        };
        self.pause = PauseRun::default();
        let ms = now
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(p.since_ms);
        let took = humantime::format_duration(Duration::from_secs(ms / 1000));
        let result = format!(
            "paused for {took}; release {} on {} serves the connections that waited",
            r.id, r.color
        );
        self.log(Level::Info, format!("the pause ended: {result}"));
        self.emit(Effect::Hold(None));
        self.emit(Effect::Notify(Notice::PauseEnded {
            release: r.id,
            color: r.color,
            ms,
        }));
        let record = Record {
            release: r.id,
            kind: "pause".into(),
            trigger: Trigger::Client.name().into(),
            label: None,
            source: None,
            fingerprint: None,
            color: p.color,
            started: p.since.clone(),
            finished: crate::rfc3339(now.wall),
            ok: true,
            result,
            failed_step: None,
            steps: Vec::new(),
        };
        self.emit(Effect::Ended(Box::new(super::Ended {
            record,
            trigger: Trigger::Client,
            failure: None,
        })));
    }

    /// A release during the pause failed: the pause stays, and its
    /// failure says so. Returns the failure to send.
    pub(super) fn pause_failed(&mut self, mut failure: Failure) -> Failure {
        if let Some(p) = &self.state.pause {
            let what = if self.page_live() {
                "the maintenance page serves on"
            } else {
                "new connections keep waiting"
            };
            failure.message = format!(
                "{}; still paused since {}: {what} on {} (run `bgctl release DIR` again, or `bgctl resume`)",
                failure.message,
                p.since,
                self.state.live.filter(|_| self.page_live()).unwrap_or(p.color)
            );
            self.pause.failed = Some(failure.message.clone());
        }
        failure
    }

    /// bgd started while a pause is recorded: nothing starts, new
    /// connections go on waiting where they waited, `--max` counts from
    /// the pause's start. `false` if the page serves (a normal boot).
    ///
    /// If the previous bgd died before the pause held anything (its
    /// standby, or a release into the waiting color, still ran there),
    /// that process drains first, as [`pause_committed`](Self::pause_committed)
    /// does, and an adopted live color serves until then. Else the pause
    /// holds at once and whatever else was adopted drains.
    pub(super) fn boot_paused(&mut self, now: Now) -> bool {
        let Some(p) = self.state.pause.clone() else {
            return false;
        };
        if self.page_live() {
            return false;
        }
        let color = p.color;
        if let Some(pid) = self.pause.evicting {
            if let Some(live) = self
                .state
                .live
                .filter(|l| self.slot(*l).phase.process().is_some())
            {
                self.emit(Effect::Steer(live));
            }
            self.log(
                Level::Warn,
                format!("paused since {} (recorded), but {color} (pid {pid}) still ran: it drains first, then new connections wait on {color} until `bgctl release DIR` or `bgctl resume`", p.since),
            );
        } else {
            self.emit(Effect::Hold(Some(color)));
            self.emit(Effect::Steer(color));
            for c in Color::BOTH {
                self.stop_for_pause(now, c);
            }
            self.log(
                Level::Warn,
                format!("paused since {} (recorded): nothing starts; new connections wait on {color} until `bgctl release DIR` or `bgctl resume`", p.since),
            );
        }
        if let (Some(max), None) = (p.max_ms, p.page_release) {
            let since = std::time::UNIX_EPOCH + Duration::from_millis(p.since_ms);
            let left = (since + Duration::from_millis(max))
                .duration_since(now.wall)
                .unwrap_or_default();
            self.pause.deadline = Some(now.mono + left);
            self.emit(Effect::WakeAt(now.mono + left));
        }
        self.ready();
        true
    }

    /// A release's kept records to keep during a pause: the one `resume`
    /// starts.
    pub(super) fn pause_protects(&self) -> Option<u64> {
        self.state.pause.as_ref().and_then(|p| p.before)
    }
}
