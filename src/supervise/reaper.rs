//! The one place that reaps child processes.
//!
//! bgd is a child subreaper (`PR_SET_CHILD_SUBREAPER`): workers and
//! grandchildren that an app leaves behind are re-parented to bgd rather than
//! to PID 1, which in a container may never reap them. On every SIGCHLD the
//! reaper collects all exited children with `waitpid(-1, WNOHANG)` and hands
//! each status to whoever [`watch`](Reaper::watch)ed that pid; orphans nobody
//! watches are just reaped.
//!
//! Because `waitpid(-1)` takes every child's status, nothing else in bgd may
//! wait for a child: every process is started by [`crate::supervise::spawn`] and
//! watched here. Spawning and watching happen on the runtime's one thread
//! with no `.await` between them, so a status can never arrive unclaimed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

pub use crate::deploy::Exit;

#[derive(Default)]
pub struct Reaper {
    /// pid -> the one party waiting for its exit status.
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

impl Reaper {
    /// Becomes a subreaper and starts reaping. Call before spawning anything.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        // SAFETY: prctl with integer arguments only changes this process's flags.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// The exit status of `pid`, a child just spawned. See the module docs
    /// for why this must be called before the spawner's next `.await`.
    pub fn watch(&self, pid: Pid) -> oneshot::Receiver<Exit> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("reaper lock is never held across a panic")
            .insert(pid.as_raw(), tx);
        rx
    }

    fn reap_all(&self) {
        loop {
            let (pid, exit) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!("waitpid failed: {e}");
                    return;
                }
            };
            let waiter = self
                .waiters
                .lock()
                .expect("reaper lock is never held across a panic")
                .remove(&pid.as_raw());
            match waiter {
                // The receiver may be gone; the status is then of no interest.
                Some(tx) => drop(tx.send(exit)),
                None => tracing::debug!(pid = pid.as_raw(), "reaped orphaned descendant ({exit})"),
            }
        }
    }
}
