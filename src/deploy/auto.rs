//! What auto-release decides, apart from any IO: given the watched tree's
//! latest fingerprint and the live build's, release or not. The watcher
//! (watch.rs) produces fingerprints; the daemon acts on [`Decision`]s.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::deploy::{Failure, FailureKind, Step};

/// What the watcher task (watch.rs) reports, for [`Auto`]'s decisions and
/// status; written by the watcher task only.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    /// "inotify", or "poll" after the watch limit was hit.
    pub mode: &'static str,
    pub last_event: Option<SystemTime>,
    /// Counts the checks asked for: the one at start, then one per relevant
    /// change. The tree is settling while the daemon has not yet received
    /// `watch::Settled` with this number (see [`Auto::settled`]).
    pub generation: u64,
    /// Changes seen and ignored (`watch.ignore`, or not the marker).
    pub ignored_events: u64,
}

pub struct Auto {
    pub path: PathBuf,
    /// Written by the watcher task, read for status.
    watcher: Arc<Mutex<WatchState>>,
    pub paused: bool,
    /// The fingerprint of the tree when it last settled; `None` while the
    /// directory does not exist.
    latest: Option<String>,
    /// The watcher's generation that `latest` belongs to.
    settled: u64,
    /// A tree that is not to be released (its release failed, or a rollback
    /// made another build live), and why. Released again once it changes.
    hold: Option<(String, String)>,
    last: Option<AutoRelease>,
}

/// The outcome of the last auto-release.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoRelease {
    pub at: String,
    pub release: u64,
    pub ok: bool,
    pub step: Option<Step>,
    pub message: String,
}

/// What the operator decided about auto-release, which must survive a
/// restart of bgd (`root/operator.json`): the pause, and the tree held
/// back after a failure or a rollback.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Operator {
    pub paused: bool,
    /// The held tree's fingerprint and why it is held.
    pub hold: Option<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    /// Release the tree with this fingerprint.
    Release(String),
}

impl Auto {
    pub fn new(path: PathBuf, watcher: Arc<Mutex<WatchState>>) -> Auto {
        Auto {
            path,
            watcher,
            paused: false,
            latest: None,
            settled: 0,
            hold: None,
            last: None,
        }
    }

    pub fn settled(&mut self, fingerprint: Option<String>, generation: u64) {
        self.latest = fingerprint;
        self.settled = generation;
    }

    /// `live` is the live build's fingerprint; `busy` is true while a release
    /// runs (the daemon asks again when it ends).
    pub fn decide(&self, live: Option<&str>, busy: bool) -> Decision {
        let Some(fp) = &self.latest else {
            return Decision::Nothing;
        };
        let held = self.hold.as_ref().is_some_and(|(h, _)| h == fp);
        // While the watcher has seen changes since `latest`, it is stale:
        // wait for the tree to settle again.
        let settling = self
            .watcher
            .lock()
            .expect("watch state lock is never held across a panic")
            .generation
            != self.settled;
        if self.paused || busy || held || settling || live == Some(fp.as_str()) {
            return Decision::Nothing;
        }
        Decision::Release(fp.clone())
    }

    pub fn succeeded(&mut self, release: u64, message: &str) {
        self.hold = None;
        self.last = Some(AutoRelease {
            at: crate::now_rfc3339(),
            release,
            ok: true,
            step: None,
            message: message.into(),
        });
    }

    /// A failed auto-release of tree `fp` is not retried until the tree
    /// changes, except when it failed because the tree changed while it was
    /// copied: the watcher reports the new tree after the next quiet period.
    pub fn failed(&mut self, fp: &str, release: u64, f: &Failure) {
        if f.kind == FailureKind::Changed {
            // The tree this fingerprint describes is gone; the watcher
            // reports the new one after the next quiet period (or already
            // did, while the copy ran).
            if self.latest.as_deref() == Some(fp) {
                self.latest = None;
            }
        } else {
            self.hold = Some((
                fp.to_string(),
                format!("release {release} of this tree failed; waiting for the tree to change"),
            ));
        }
        self.last = Some(AutoRelease {
            at: crate::now_rfc3339(),
            release,
            ok: false,
            step: f.step,
            message: f.message.clone(),
        });
    }

    /// What must survive a restart of bgd.
    pub fn operator(&self) -> Operator {
        Operator {
            paused: self.paused,
            hold: self.hold.clone(),
        }
    }

    /// Takes back what a previous bgd saved ([`operator`](Self::operator)).
    pub fn restore(&mut self, op: Operator) {
        self.paused = op.paused;
        self.hold = op.hold;
    }

    /// Keeps what a reload must not forget from the `Auto` it replaces: the
    /// pause, the last result, and (for the same directory) what is held.
    pub fn carry_over(&mut self, old: Auto) {
        self.paused = old.paused;
        self.last = old.last;
        if old.path == self.path {
            self.hold = old.hold;
        }
    }

    /// Holds the current tree back, for `reason`, until it changes.
    pub fn hold_current(&mut self, reason: &str) {
        if let Some(fp) = &self.latest {
            self.hold = Some((
                fp.clone(),
                format!("{reason}; waiting for the tree to change"),
            ));
        }
    }

    /// What status shows of auto-release: `paused`, `settling` (changes
    /// seen, waiting for quiet), `releasing` (`releasing`: an auto-release
    /// runs, or one is due once the current release ends) or `idle`.
    pub fn state_word(&self, releasing: bool) -> &'static str {
        let settling = self.watcher().generation != self.settled;
        if self.paused {
            "paused"
        } else if settling {
            "settling"
        } else if releasing {
            "releasing"
        } else {
            "idle"
        }
    }

    /// What the watcher task last reported.
    pub fn watcher(&self) -> WatchState {
        self.watcher
            .lock()
            .expect("watch state lock is never held across a panic")
            .clone()
    }

    /// Why the current tree is not released, if it is held back.
    pub fn holding(&self) -> Option<&str> {
        self.hold
            .as_ref()
            .filter(|(h, _)| self.latest.as_ref() == Some(h))
            .map(|(_, why)| why.as_str())
    }

    /// The outcome of the last auto-release.
    pub fn last(&self) -> Option<&AutoRelease> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto() -> Auto {
        Auto::new(PathBuf::from("/b"), Arc::default())
    }

    /// The watcher saw change number `generation` and the tree settled as `fp`.
    fn settle(a: &mut Auto, fp: &str, generation: u64) {
        a.watcher.lock().unwrap().generation = generation;
        a.settled(Some(fp.into()), generation);
    }

    #[test]
    fn releases_a_settled_tree_that_is_not_live() {
        let mut a = auto();
        assert_eq!(
            a.decide(None, false),
            Decision::Nothing,
            "nothing settled yet"
        );
        settle(&mut a, "t1", 1);
        assert_eq!(a.decide(None, false), Decision::Release("t1".into()));
        assert_eq!(
            a.decide(Some("t1"), false),
            Decision::Nothing,
            "already live"
        );
        assert_eq!(
            a.decide(Some("t0"), true),
            Decision::Nothing,
            "busy: asked again later"
        );
        a.watcher.lock().unwrap().generation = 2;
        assert_eq!(
            a.decide(Some("t0"), false),
            Decision::Nothing,
            "changes since: still settling"
        );
        settle(&mut a, "t2", 2);
        a.paused = true;
        assert_eq!(a.decide(Some("t0"), false), Decision::Nothing);
    }

    #[test]
    fn a_failed_tree_waits_for_a_change_but_a_changed_one_does_not() {
        let mut a = auto();
        settle(&mut a, "bad", 1);
        a.failed("bad", 3, &Failure::new(FailureKind::App, None, "boom"));
        assert_eq!(a.decide(Some("good"), false), Decision::Nothing);
        assert!(a.holding().unwrap().contains("release 3"));
        settle(&mut a, "fixed", 2);
        assert_eq!(
            a.decide(Some("good"), false),
            Decision::Release("fixed".into())
        );

        a.failed(
            "fixed",
            4,
            &Failure::new(FailureKind::Changed, None, "changed"),
        );
        assert_eq!(
            a.decide(Some("good"), false),
            Decision::Nothing,
            "not again before the tree settles"
        );
        settle(&mut a, "newer", 3);
        a.failed(
            "fixed",
            5,
            &Failure::new(FailureKind::Changed, None, "changed"),
        );
        assert_eq!(
            a.decide(Some("good"), false),
            Decision::Release("newer".into()),
            "what settled during the copy is kept"
        );
        settle(&mut a, "fixed-2", 4);
        assert_eq!(
            a.decide(Some("good"), false),
            Decision::Release("fixed-2".into())
        );
    }

    #[test]
    fn the_pause_and_the_hold_come_back_after_a_restart() {
        let mut a = auto();
        settle(&mut a, "new", 1);
        a.hold_current("a rollback made an older build live");
        a.paused = true;
        // What `store::operator` writes and reads back.
        let mut b = auto();
        b.restore(a.operator());
        settle(&mut b, "new", 1);
        assert_eq!(b.decide(Some("old"), false), Decision::Nothing);
        b.paused = false;
        assert_eq!(
            b.decide(Some("old"), false),
            Decision::Nothing,
            "still held"
        );
        assert!(b.holding().unwrap().contains("rollback"));
    }

    #[test]
    fn a_rollback_holds_the_current_tree() {
        let mut a = auto();
        settle(&mut a, "new", 1);
        a.hold_current("a rollback made an older build live");
        assert_eq!(a.decide(Some("old"), false), Decision::Nothing);
        settle(&mut a, "newer", 2);
        assert_eq!(
            a.decide(Some("old"), false),
            Decision::Release("newer".into())
        );
    }
}
