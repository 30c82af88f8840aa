//! Glue between the build watcher and releases: `auto.rs` decides, this
//! starts what it decides.

use crate::deploy::auto::{Auto, Decision};
use crate::deploy::{Input, Trigger};
use crate::ops::control::Responder;
use crate::ops::protocol::{Failure, FailureKind, Reply};
use crate::pipeline::watch;
use crate::store::operator;

use super::{sink, Daemon, Event};

impl Daemon {
    /// Starts (or restarts, after a reload) the build watcher of `[watch]`.
    pub(super) fn start_watching(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.watch.task.take() {
            old.abort();
        }
        let old = self.watch.auto.take();
        if let Some(w) = &self.ctx.config.watch {
            let events = sink(&self.events, Event::Watch);
            let (state, task) = watch::spawn(w.clone(), events)?;
            let mut auto = Auto::new(w.path.clone(), state);
            match old {
                Some(old) => auto.carry_over(old),
                None => auto.restore(self.watch.saved.clone()),
            }
            self.watch.auto = Some(auto);
            self.watch.task = Some(task);
        }
        Ok(())
    }

    pub(super) fn on_watch_settled(&mut self, settled: watch::Settled) {
        tracing::debug!(generation = settled.generation, "the watched tree settled");
        if let Some(a) = &mut self.watch.auto {
            a.settled(settled.fingerprint, settled.generation);
        }
        self.auto_check();
    }

    pub(super) fn on_watch_request(&mut self, pause: bool, reply: Responder) {
        let Some(a) = &mut self.watch.auto else {
            let f = Failure::new(
                FailureKind::BadRequest,
                None,
                "auto-release is not configured: add a [watch] section to bgd's config",
            );
            let _ = reply.send(Reply::Error(f));
            return;
        };
        a.paused = pause;
        tracing::info!("auto-release {}", if pause { "paused" } else { "resumed" });
        // Written before the answer, so a restart right after it keeps it.
        self.save_operator_now();
        self.auto_check();
        self.reply_status(reply);
    }

    /// Writes `root/operator.json` when the pause or the hold changed since
    /// it was last written, off the loop, so that they survive a restart.
    fn save_operator(&mut self) {
        let Some(op) = self.watch.auto.as_ref().map(Auto::operator) else {
            return;
        };
        if op == self.watch.saved {
            return;
        }
        self.watch.saved = op.clone();
        let root = self.ctx.config.fixed.root.clone();
        let notes = self.notes.clone();
        tokio::task::spawn_blocking(move || match operator::save(&root, &op) {
            Ok(()) => notes.clear("operator.json write"),
            Err(e) => notes.set(
                "operator.json write",
                format!("{e}; the watch pause or hold would be forgotten if bgd restarted"),
            ),
        });
    }

    /// Like [`save_operator`](Self::save_operator), but waits for the
    /// write (an operator's explicit request).
    fn save_operator_now(&mut self) {
        let Some(op) = self.watch.auto.as_ref().map(Auto::operator) else {
            return;
        };
        match operator::save(&self.ctx.config.fixed.root, &op) {
            Ok(()) => {
                self.watch.saved = op;
                self.notes.clear("operator.json write");
            }
            Err(e) => self.notes.set(
                "operator.json write",
                format!("{e}; the watch pause would be forgotten if bgd restarted"),
            ),
        }
    }

    /// The live build's fingerprint, if it came from a watched tree.
    pub(super) fn live_fingerprint(&self) -> Option<String> {
        let state = self.core.state();
        state
            .live
            .and_then(|c| state.build(c))
            .and_then(|b| b.fingerprint.clone())
    }

    /// Releases the watched tree if the watcher says it settled and it is
    /// neither live already nor held back. Runs when the tree settles, when
    /// a release ends, on reload and when auto-release is resumed.
    pub(super) fn auto_check(&mut self) {
        self.save_operator();
        let live_fp = self.live_fingerprint();
        // A pause waits for the operator's release, not the watcher's.
        let busy =
            self.core.busy() || self.program.exec_pending || self.core.state().pause.is_some();
        let Some(a) = &mut self.watch.auto else {
            return;
        };
        match a.decide(live_fp.as_deref(), busy) {
            Decision::Nothing => {}
            Decision::Release(fp) => {
                let path = a.path.clone();
                tracing::info!("auto-release of {} (tree {fp})", path.display());
                self.feed(Input::Release {
                    source: path,
                    label: Some("auto".into()),
                    trigger: Trigger::Watch(fp),
                    client: None,
                    canary: None,
                    preview: false,
                    wait_bake: false,
                });
            }
        }
    }
}
