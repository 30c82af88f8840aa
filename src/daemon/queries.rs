//! Answers that change nothing: status, history, logs.

use super::*;

impl Daemon {
    pub(super) fn reply_history(&self, reply: Responder) {
        let root = self.ctx.config.fixed.root.clone();
        tokio::spawn(async move {
            let records = tokio::task::spawn_blocking(move || history::load(&root))
                .await
                .unwrap_or_default();
            let result = serde_json::to_value(records).expect("records serialize infallibly");
            let _ = reply.send(Reply::Done { result });
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
        let (recent, mut live) = self.ctx.logs.tail(color, lines);
        tokio::spawn(async move {
            for l in recent {
                if reply.send(Reply::Log(l)).is_err() {
                    return;
                }
            }
            if !follow {
                let _ = reply.send(Reply::Done {
                    result: serde_json::Value::Null,
                });
                return;
            }
            loop {
                let next = tokio::select! {
                    l = live.recv() => l,
                    _ = reply.closed() => return,
                };
                let line = match next {
                    Ok(l) => l,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        crate::logs::LogLine {
                            at: crate::now_rfc3339(),
                            color: color.unwrap_or(Color::Blue),
                            pid: 0,
                            stream: "bgd".into(),
                            line: format!("[{n} lines skipped: this client read too slowly]"),
                        }
                    }
                    Err(_) => return,
                };
                if color.is_some_and(|c| c != line.color) {
                    continue;
                }
                if reply.send(Reply::Log(line)).is_err() {
                    return;
                }
            }
        });
    }

    pub(super) fn reply_status(&self, reply: Responder) {
        let status = serde_json::to_value(self.status()).expect("status serializes infallibly");
        let _ = reply.send(Reply::Done { result: status });
    }

    pub(super) fn status(&self) -> Status {
        let color_status = |c: Color, slot: &Slot| {
            let build = self.state.build(c);
            let state = match slot.phase {
                Phase::Stopped if build.is_none() => "empty",
                Phase::Stopped => "stopped",
                Phase::Starting => "starting",
                Phase::Live => "live",
                Phase::Draining => "draining",
                Phase::Restarting => "restarting",
            };
            ColorStatus {
                state: state.into(),
                pid: slot.pid.map(|p| p.as_raw() as u32),
                release: build.map(|b| b.release),
                label: build.and_then(|b| b.label.clone()),
                source: build.map(|b| b.source.clone()),
                since: Some(crate::rfc3339(slot.since)),
                restarts: slot.restarts,
                last_exit: slot.last_exit.map(|e| e.to_string()),
            }
        };
        Status {
            name: self.ctx.config.fixed.name.clone(),
            pid: std::process::id(),
            live: self.state.live,
            release_in_progress: self.release.as_ref().map(|r| ReleaseProgress {
                id: r.release,
                color: r.color,
                step: r.step,
                label: r.label.clone(),
                since: crate::rfc3339(r.since),
            }),
            blue: color_status(Color::Blue, &self.blue),
            green: color_status(Color::Green, &self.green),
            last_result: self.last_result.clone(),
            listen: self.ctx.listeners.addresses(),
            watch: self.auto.as_ref().map(|a| {
                let running = self
                    .release
                    .as_ref()
                    .is_some_and(|r| matches!(r.trigger, Trigger::Watch(_)));
                let due = matches!(
                    a.decide(self.live_fingerprint().as_deref(), false),
                    Decision::Release(_)
                );
                a.status(running || due)
            }),
        }
    }
}
