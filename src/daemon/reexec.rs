//! `bgctl reexec` and SIGUSR2: bgd replaces its own program in place with
//! the binary now on disk (an upgrade), keeping its pid, so systemd's
//! MAINPID holds and the colors stay its children (issue 13; einhorn and
//! nginx upgrade the same way).
//!
//! Nothing is handed over in memory: the new program starts as bgd does
//! after a crash, and adopts the running colors from their records and
//! relays (`adoption.rs`), which hold the sockets. Before it execs, bgd runs
//! the new binary's `--check` on its config: a binary that cannot start
//! is refused, and the old bgd runs on and says why.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::{Daemon, Event};
use crate::ops::control::Responder;
use crate::ops::protocol::{Done, Failure, FailureKind, Outcome, Reply};
use crate::supervise::spawn;

/// How long the new binary's `--check` may take.
const CHECK: Duration = Duration::from_secs(10);

impl Daemon {
    /// Checks the new binary off the loop, then asks for the exec.
    pub(super) fn reexec(&mut self, reply: Option<Responder>) {
        let refuse = |reply: &Option<Responder>, m: String| {
            tracing::error!("reexec refused: {m}");
            if let Some(r) = reply {
                let _ = r.send(Reply::Error(Failure::new(FailureKind::Busy, None, m)));
            }
        };
        if let Some(r) = self.core.release() {
            let m = format!(
                "{} of release {} is in progress: run reexec again when it finishes",
                r.kind.name(),
                r.id
            );
            return refuse(&reply, m);
        }
        if self.core.canary().is_some() {
            return refuse(
                &reply,
                "a canary runs: promote or abort it first (a reexec keeps only the live color)"
                    .into(),
            );
        }
        let (standby, bake) = self.core.deadlines(super::now());
        if standby.is_some() || bake.is_some() {
            return refuse(&reply, "a standby is kept or a bake runs, and a reexec keeps only the live color: run it once they are over, or after a rollback".into());
        }
        if self.program.exec_pending {
            return refuse(&reply, "a reexec is already under way".into());
        }
        if let Err(m) = self.listen_unchanged() {
            return refuse(&reply, m);
        }
        // From now on requests are refused, so nothing begins that the
        // exec would cut.
        self.program.exec_pending = true;
        let exe = self.program.exe.clone();
        let config = self.ctx.config.file.clone();
        let ctx = self.ctx.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let command = [
                exe.display().to_string(),
                "--check".into(),
                "--config".into(),
                config.display().to_string(),
            ];
            let checked = check(&ctx, &command).await;
            match checked {
                Ok(()) => {
                    tracing::info!(
                        "re-executing {} in place (pid {})",
                        exe.display(),
                        std::process::id()
                    );
                    if let Some(r) = &reply {
                        let message = format!(
                            "bgd re-executes {} in place (pid {}); the app keeps running",
                            exe.display(),
                            std::process::id()
                        );
                        let result = Done::Outcome(Outcome::Reexec { message });
                        let _ = r.send(Reply::Done { result });
                    }
                    // Time for the control task to write that answer.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = events.send(Event::Exec);
                }
                Err(m) => {
                    let m = format!(
                        "the new binary {} failed its check, so bgd runs on as it was: {m}",
                        exe.display()
                    );
                    refuse(&reply, m);
                    let _ = events.send(Event::ExecAbandoned);
                }
            }
        });
    }

    /// The config on disk listens as bgd does: the new program takes the
    /// sockets from the relays, and cannot bind others while they run.
    fn listen_unchanged(&self) -> Result<(), String> {
        let new = crate::config::Config::load(&self.ctx.config.file)
            .map_err(|e| format!("the config does not load: {e}"))?;
        let changed = self.ctx.config.fixed.changed_keys(&new.fixed);
        if changed
            .iter()
            .any(|k| k.starts_with("[[listen]]") || k.starts_with("traffic.mode"))
        {
            return Err(format!("the config changes {}: a reexec keeps the sockets it has; restart bgd to apply that", changed.join(", ")));
        }
        Ok(())
    }

    /// Replaces this process's program; returns only if that failed.
    pub(super) fn exec_now(&mut self) {
        // Something began after all (an automatic rollback): not now.
        let draining = crate::color::Color::BOTH.iter().any(|c| {
            matches!(
                self.core.slot(*c).phase,
                crate::deploy::ColorPhase::Draining { .. }
            )
        });
        if self.core.release().is_some() || self.core.canary().is_some() || draining {
            tracing::error!(
                "reexec abandoned: a release, canary or drain runs; ask again when it is over"
            );
            self.program.exec_pending = false;
            return;
        }
        crate::ops::systemd::reloading();
        let path = CString::new(self.program.exe.as_os_str().as_bytes());
        let args: Result<Vec<CString>, _> = std::env::args_os()
            .map(|a| CString::new(a.as_bytes()))
            .collect();
        let (Ok(path), Ok(args)) = (path, args) else {
            tracing::error!("reexec: a NUL byte in bgd's path or arguments");
            return;
        };
        let e = nix::unistd::execv(&path, &args);
        tracing::error!(
            "reexec of {} failed, bgd runs on as it was: {e:?}",
            self.program.exe.display()
        );
        self.last_result = Some(format!("{} reexec failed: {e:?}", crate::now_rfc3339()));
        if self.core.ready_sent() {
            crate::ops::systemd::ready();
        }
    }
}

/// Runs `command` (the new binary's `--check`) and waits for it: `Err`
/// says how it failed, with its last line of output.
async fn check(ctx: &crate::Ctx, command: &[String]) -> Result<(), String> {
    let dir = std::path::Path::new("/");
    let child = spawn::spawn(&spawn::Spec {
        command,
        cwd: dir,
        env: Vec::new(),
        fds: Vec::new(),
        identity: None,
        cgroup: None,
        die_with_bgd: true,
    })
    .map_err(|e| format!("cannot run it: {e}"))?;
    let exited = ctx.reaper.watch(child.pid);
    let guard = spawn::KillGroupOnDrop(child.pid);
    let mut err = Vec::new();
    let output = crate::supervise::process::read_lines(child.stderr, |l| err.push(l));
    let (status, ()) = tokio::time::timeout(CHECK, async { tokio::join!(exited, output) })
        .await
        .map_err(|_| format!("its check did not finish within {} s", CHECK.as_secs()))?;
    std::mem::forget(guard);
    drop(child.stdout);
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{s}: {}", err.last().map_or("", String::as_str))),
        Err(_) => Err("the reaper stopped".into()),
    }
}
