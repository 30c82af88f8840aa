//! Glue between the build watcher and releases: `auto.rs` decides, this
//! starts what it decides.

use crate::auto::{Auto, Decision};
use crate::control::Responder;
use crate::deploy::{Input, Trigger};
use crate::protocol::{Failure, FailureKind, Reply};
use crate::watch;

use super::{sink, Daemon, Event};

impl Daemon {
    /// Starts (or restarts, after a reload) the build watcher of `[watch]`.
    pub(super) fn start_watching(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.watcher.take() {
            old.abort();
        }
        let old = self.auto.take();
        if let Some(w) = &self.ctx.config.watch {
            let events = sink(&self.events, Event::Watch);
            let (state, task) = watch::spawn(w.clone(), events)?;
            let mut auto = Auto::new(w.path.clone(), state);
            if let Some(old) = old {
                auto.carry_over(old);
            }
            self.auto = Some(auto);
            self.watcher = Some(task);
        }
        Ok(())
    }

    pub(super) fn on_watch_settled(&mut self, settled: watch::Settled) {
        if let Some(a) = &mut self.auto {
            a.settled(settled.fingerprint, settled.generation);
        }
        self.auto_check();
    }

    pub(super) fn on_watch_request(&mut self, pause: bool, reply: Responder) {
        let Some(a) = &mut self.auto else {
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
        self.auto_check();
        self.reply_status(reply);
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
        let live_fp = self.live_fingerprint();
        let busy = self.core.busy();
        let Some(a) = &mut self.auto else { return };
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
                    wait_bake: false,
                });
            }
        }
    }
}
