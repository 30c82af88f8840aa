//! Answers that change nothing: history, releases, logs (status is
//! `status.rs`).

use crate::color::Color;
use crate::ops::control::Responder;
use crate::ops::protocol::{Done, Reply};
use crate::store::history;
use tokio::sync::broadcast;

use super::Daemon;

impl Daemon {
    pub(super) fn reply_history(&self, reply: Responder) {
        let root = self.ctx.config.fixed.root.clone();
        let notes = self.notes.clone();
        tokio::spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || history::load(&root))
                .await
                .unwrap_or_default();
            if let Some(note) = loaded.note {
                notes.set("history.json", note);
            }
            let records = loaded.records;
            let _ = reply.send(Reply::Done {
                result: Done::History(records),
            });
        });
    }

    /// `bgctl releases`: the kept releases with their sizes, measured off
    /// the loop.
    pub(super) fn reply_releases(&self, reply: Responder) {
        let root = self.ctx.config.fixed.root.clone();
        let state = self.core.state().clone();
        let keep = self.ctx.config.keep;
        let standby = self.core.standby_release();
        tokio::spawn(async move {
            let listing = tokio::task::spawn_blocking(move || {
                crate::pipeline::releases::listing(&root, &state, standby, keep)
            })
            .await;
            let reply_to = match listing {
                Ok(l) => Reply::Done {
                    result: Done::Releases(l),
                },
                Err(e) => Reply::Error(crate::ops::protocol::Failure::new(
                    crate::ops::protocol::FailureKind::Internal,
                    None,
                    format!("cannot list the releases: {e}"),
                )),
            };
            let _ = reply.send(reply_to);
        });
    }

    /// The last `lines` lines of output, then (with `follow`) new ones until
    /// the client goes away. Runs beside the loop.
    pub(super) fn stream_logs(
        &self,
        color: Option<Color>,
        lines: usize,
        follow: bool,
        reply: Responder,
    ) {
        let (recent, live) = self.ctx.logs.tail(color, lines);
        stream(recent, live, follow, reply, move |next| match next {
            Ok(line) if color.is_some_and(|c| c != line.color) => Next::Skip,
            Ok(line) => Next::Send(Reply::Log(line)),
            Err(n) => Next::Send(Reply::Log(crate::supervise::logs::LogLine {
                at: crate::now_rfc3339(),
                color: color.unwrap_or(Color::Blue),
                pid: 0,
                stream: "bgd".into(),
                line: format!("[{n} lines skipped: this client read too slowly]"),
            })),
        });
    }
}

/// What a follower sends for one item of a feed.
pub(super) enum Next {
    Send(Reply),
    Skip,
    /// Send this and end the answer.
    End(Reply),
}

/// Sends `recent`, then (with `follow`) what `live` brings, each as `pick`
/// says (`Err(n)`: the client fell `n` items behind), until the client goes
/// away. Without `follow`, a null `done` ends the answer. Runs beside the loop.
pub(super) fn stream<T: Clone + Send + 'static>(
    recent: Vec<T>,
    mut live: broadcast::Receiver<T>,
    follow: bool,
    reply: Responder,
    mut pick: impl FnMut(Result<T, u64>) -> Next + Send + 'static,
) {
    tokio::spawn(async move {
        for item in recent {
            if let Next::Send(r) = pick(Ok(item)) {
                if reply.send(r).is_err() {
                    return;
                }
            }
        }
        if !follow {
            let _ = reply.send(Reply::Done {
                result: Done::Nothing,
            });
            return;
        }
        loop {
            let next = tokio::select! {
                item = live.recv() => item,
                _ = reply.closed() => return,
            };
            let item = match next {
                Ok(item) => Ok(item),
                Err(broadcast::error::RecvError::Lagged(n)) => Err(n),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match pick(item) {
                Next::Send(r) => {
                    if reply.send(r).is_err() {
                        return;
                    }
                }
                Next::Skip => {}
                Next::End(r) => {
                    let _ = reply.send(r);
                    return;
                }
            }
        }
    });
}

impl Daemon {
    /// `bgctl compare`: the same GETs to the live build and to the one
    /// beside it, off the loop; refused with nothing to compare, bad paths,
    /// or a compare under way.
    pub(super) fn compare(&self, asked: Vec<String>, reply: Responder) {
        use crate::ops::protocol::{Failure, FailureKind};
        let refuse = |kind, m: String| {
            let _ = reply.send(Reply::Error(Failure::new(kind, None, m)));
        };
        let sides = match self.core.compare_sides() {
            Ok(s) => s,
            Err(f) => return drop(reply.send(Reply::Error(f))),
        };
        let paths = match crate::deploy::compare::paths(asked, &self.ctx.config.compare.paths) {
            Ok(p) => p,
            Err(m) => return refuse(FailureKind::BadRequest, m),
        };
        let Some(turn) = crate::ops::compare::Turn::take() else {
            let m = "another `bgctl compare` runs: try again when it has answered".to_string();
            return refuse(FailureKind::Busy, m);
        };
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let c = crate::ops::compare::run(&ctx, sides, paths).await;
            drop(turn);
            let _ = reply.send(Reply::Done {
                result: Done::Compare(Box::new(c)),
            });
        });
    }
}
