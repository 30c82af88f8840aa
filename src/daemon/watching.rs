//! Glue between the build watcher and releases: `auto.rs` decides, this
//! starts what it decides.

use super::*;

impl Daemon {
    /// Starts (or restarts, after a reload) the build watcher of `[watch]`.
    pub(super) fn start_watching(&mut self) -> anyhow::Result<()> {
        if let Some(old) = self.watcher.take() {
            old.abort();
        }
        let old = self.auto.take();
        if let Some(w) = &self.ctx.config.watch {
            let (state, task) = watch::spawn(w.clone(), self.events.clone())?;
            let mut auto = Auto::new(w.path.clone(), state);
            if let Some(old) = old {
                auto.carry_over(old);
            }
            self.auto = Some(auto);
            self.watcher = Some(task);
        }
        Ok(())
    }

    pub(super) fn on_watch_settled(&mut self, fingerprint: Option<String>, generation: u64) {
        if let Some(a) = &mut self.auto {
            a.settled(fingerprint, generation);
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

    /// Releases the watched tree if the watcher says it settled and it is
    /// neither live already nor held back.
    pub(super) fn live_fingerprint(&self) -> Option<String> {
        self.state
            .live
            .and_then(|c| self.state.build(c))
            .and_then(|b| b.fingerprint.clone())
    }

    pub(super) fn auto_check(&mut self) {
        let live_fp = self.live_fingerprint();
        let busy = self.release.is_some() || self.stopping > 0;
        let Some(a) = &mut self.auto else { return };
        match a.decide(live_fp.as_deref(), busy) {
            Decision::Nothing => {}
            Decision::Release(fp) => {
                let path = a.path.clone();
                tracing::info!("auto-release of {} (tree {fp})", path.display());
                self.begin(
                    Kind::Release,
                    Some(path),
                    Some("auto".into()),
                    Trigger::Watch(fp),
                    None,
                );
            }
        }
    }
}
