//! The daemon's side of a pause (issue 24): the requests, the holder of
//! the sockets, and the pause as status and systemd's STATUS= show it.
//! The decisions are the core's (`deploy/pause.rs`).

use std::path::PathBuf;
use std::time::Duration;

use crate::color::Color;
use crate::deploy::{Input, PauseAsk};
use crate::ops::control::Responder;
use crate::ops::protocol::{Failure, FailureKind, PauseStatus, Reply};

use super::Daemon;

impl Daemon {
    /// `bgctl pause [--max D] [--page DIR]`: a page directory must exist;
    /// with `--max` and no `--page`, `[pause] page` is the page.
    pub(super) fn on_pause_request(
        &mut self,
        max_ms: Option<u64>,
        page: Option<String>,
        reply: Responder,
    ) {
        let page = match page {
            Some(p) => Some(PathBuf::from(p)),
            None if max_ms.is_some() => self.ctx.config.pause.page.clone(),
            None => None,
        };
        if let Some(p) = &page {
            let why = if !p.is_absolute() {
                Some("is not an absolute path")
            } else if !p.is_dir() {
                Some("does not exist or is not a directory")
            } else {
                None
            };
            if let Some(why) = why {
                let m = format!("page directory {} {why}: give the directory of a maintenance build (a build the app's [app] command runs, such as examples/hello/maintenance)", p.display());
                let f = Failure::new(FailureKind::BadRequest, None, m);
                let _ = reply.send(Reply::Error(f));
                return;
            }
        }
        let client = Some(self.client(reply));
        self.feed(Input::Pause(PauseAsk {
            client,
            max: max_ms.map(Duration::from_millis),
            page,
        }));
    }

    /// `bgctl resume`.
    pub(super) fn on_resume_request(&mut self, reply: Responder) {
        let client = Some(self.client(reply));
        self.feed(Input::Resume { client });
    }

    /// `Effect::Hold`: `Some(color)` makes sure the sockets listen (a bgd
    /// started without the old ones binds new, unlistened sockets) and
    /// keeps a copy of each in a holder that outlives bgd; `None` ends it.
    pub(super) fn hold(&self, color: Option<Color>) {
        let root = &self.ctx.config.fixed.root;
        let Some(color) = color else {
            return crate::supervise::hold::end(root);
        };
        if let Err(e) = self.ctx.listeners.ensure_listening(color) {
            tracing::error!("cannot listen on {color}'s sockets for the pause: {e}");
        }
        if let Err(e) = crate::supervise::hold::start(root, self.ctx.listeners.named()) {
            tracing::warn!("cannot start a holder for the sockets ({e}): the waiting connections survive bgd only under systemd's fd store");
        }
    }

    /// The pause as status shows it, with the connections waiting now.
    pub(super) fn pause_status(&self) -> Option<PauseStatus> {
        let now = super::now();
        let v = self.core.paused(now)?;
        let p = v.record;
        let seconds = now
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(p.since_ms)
            / 1000;
        let waiting_on = match v.stage {
            "page" => None,
            _ => Some(p.color),
        };
        Some(PauseStatus {
            since: p.since,
            seconds,
            color: p.color,
            stage: v.stage.into(),
            waiting: waiting_on.map_or(0, |c| self.ctx.listeners.waiting(c)),
            before: p.before,
            max_ms: p.max_ms,
            max_at: v.max_at.map(crate::rfc3339),
            page: p.page,
            page_release: p.page_release,
            warning: v.overdue,
            last_failure: v.failed,
        })
    }

    /// The pause for systemd's STATUS= line, empty if none.
    pub(super) fn pause_line(&self) -> String {
        match self.pause_status() {
            Some(p) if p.stage == "page" => format!(
                "paused since {} ({} s), the maintenance page serves on {}",
                p.since, p.seconds, p.color
            ),
            Some(p) => format!(
                "paused since {} ({} s, {}): {} waiting on {}",
                p.since, p.seconds, p.stage, p.waiting, p.color
            ),
            None => String::new(),
        }
    }
}
