//! Readiness: is the color that was just started ready to take traffic?
//!
//! Each check reaches the new color alone: an HTTP GET through the address
//! clients use, routed to the new color by its source (gate mode; see
//! `Listeners::route_probe`) or through the color's private probe socket
//! (shared mode, where both colors accept from the public socket),
//! `READY=1` on a NOTIFY_SOCKET only it was given, or a command run in its
//! directory.
//! The color is ready when every configured check has passed; the caller
//! bounds the whole wait with `health.timeout`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UnixStream};

use crate::color::Color;
use crate::net::listen::ProbeTarget;
use crate::supervise::process::AppProcess;
use crate::supervise::spawn;
use crate::Ctx;

/// What the last readiness check saw while the color was not ready yet.
/// The caller's failure message says it, and its kind decides the advice
/// (`prepare::not_ready`): raise `health.timeout` for an app that never
/// answered, `health.attempt_timeout` for one whose answers were cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NotReady {
    /// No check has run to its end yet.
    #[default]
    Nothing,
    /// `GET path` answered, but not 2xx.
    Answered { path: String, code: u16 },
    /// `GET path` failed to connect or read: `refused` when the
    /// connection was refused (nothing accepts).
    Failed {
        path: String,
        error: String,
        refused: bool,
    },
    /// `GET path` got no answer within `limit`, the value of the config
    /// key `key` (`health.attempt_timeout`, or `health.timeout` for a
    /// probe that waits behind the clients' queue).
    Cut {
        path: String,
        limit: Duration,
        key: &'static str,
    },
    /// No `READY=1` on the color's NOTIFY_SOCKET yet.
    NoNotify,
    /// `health.exec` ran and failed: its status and last line.
    Exec(String),
}

impl NotReady {
    /// The app never answered a check: it may still be starting.
    pub fn unanswered(&self) -> bool {
        match self {
            NotReady::Nothing | NotReady::Cut { .. } | NotReady::NoNotify => true,
            NotReady::Failed { refused, .. } => *refused,
            NotReady::Answered { .. } | NotReady::Exec(_) => false,
        }
    }
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Nothing => Ok(()),
            NotReady::Answered { path, code } => write!(f, "GET {path} answered {code}"),
            NotReady::Failed { path, error, .. } => write!(f, "GET {path} failed: {error}"),
            NotReady::Cut { path, limit, key } => write!(
                f,
                "GET {path} got no answer within {key} ({})",
                humantime::format_duration(*limit)
            ),
            NotReady::NoNotify => f.write_str("no READY=1 on NOTIFY_SOCKET yet"),
            NotReady::Exec(why) => f.write_str(why),
        }
    }
}

/// Waits until every configured check passes. Fails early when a check
/// cannot pass; the caller races this against the app's exit and a timeout,
/// and reports `last`, the most recent reason a check did not pass yet.
pub async fn wait_ready(
    ctx: &Ctx,
    app: &AppProcess,
    dir: &Path,
    release: u64,
    last: &Mutex<NotReady>,
) -> anyhow::Result<()> {
    let h = &ctx.config.health;
    if let Some(path) = &h.http {
        match (ctx.listeners.probe_target(app.color), app.probe_addr) {
            (Some(target), _) => wait_http(ctx, &target, app.color, path, last).await,
            (None, Some(addr)) => {
                wait_http(ctx, &ProbeTarget::Own(addr), app.color, path, last).await
            }
            (None, None) => bail!("health.http: bgd has no way to reach {}", app.color),
        }
    }
    if let Some(n) = &app.notify {
        note(last, NotReady::NoNotify);
        n.wait_ready().await?;
    }
    if let Some(cmd) = &h.exec {
        wait_exec(ctx, cmd, dir, app, release, last).await?;
    }
    Ok(())
}

fn note(last: &Mutex<NotReady>, what: NotReady) {
    tracing::debug!("not ready: {what}");
    *last.lock().expect("never held across a panic") = what;
}

/// GETs `path` until it answers 2xx: through the address clients use (gate
/// mode), or through the color's private probe socket (shared mode). The
/// first request may wait in the color's queue until the app accepts: no
/// polling while the app boots. Non-2xx answers, resets and attempts with
/// no answer within `health.attempt_timeout` are retried with a short
/// backoff; `last` says what the last one saw, naming that key when it is
/// the limit an attempt hit.
///
/// A color that new public connections were steered to already (a
/// release into the color a pause holds connections on, or a restart of
/// the live color while bgd runs; not the live color's first start when
/// bgd starts, which nothing was steered to yet) shares its accept queue
/// with the clients: the probe waits behind every one of them, so an
/// attempt there is bounded by `health.timeout` alone.
async fn wait_http(ctx: &Ctx, via: &ProbeTarget, color: Color, path: &str, last: &Mutex<NotReady>) {
    let mut backoff = Duration::from_millis(10);
    let (limit, key) = match ctx.listeners.steered() == Some(color) {
        true => (ctx.config.health.timeout, "health.timeout"),
        false => (ctx.config.health.attempt_timeout, "health.attempt_timeout"),
    };
    loop {
        let attempt = tokio::time::timeout(limit, probe_once(ctx, via, color, path));
        match attempt.await {
            Ok(Ok(code)) if (200..300).contains(&code) => return,
            Ok(Ok(code)) => note(
                last,
                NotReady::Answered {
                    path: path.into(),
                    code,
                },
            ),
            Ok(Err(e)) => note(
                last,
                NotReady::Failed {
                    path: path.into(),
                    refused: e.kind() == std::io::ErrorKind::ConnectionRefused,
                    error: e.to_string(),
                },
            ),
            Err(_) => note(
                last,
                NotReady::Cut {
                    path: path.into(),
                    limit,
                    key,
                },
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// One `GET` over a new connection to `color`; returns the status code.
async fn probe_once(
    ctx: &Ctx,
    via: &ProbeTarget,
    color: Color,
    path: &str,
) -> std::io::Result<u16> {
    match via {
        ProbeTarget::Tcp { to, from } => {
            let socket = if from.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(*from, 0))?;
            // Only this connection (by its exact source) goes to `color`.
            ctx.listeners.route_probe(socket.local_addr()?, color)?;
            let s = socket.connect(*to).await?;
            s.set_nodelay(true)?;
            http_get(s, &to.to_string(), path).await
        }
        ProbeTarget::Unix(p) => http_get(UnixStream::connect(p).await?, "localhost", path).await,
        ProbeTarget::Own(addr) => {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            http_get(s, &addr.to_string(), path).await
        }
    }
}

/// `GET path` on `s`; returns the status code.
async fn http_get<S>(mut s: S, host: &str, path: &str) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bgd-probe\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    // Only the status line matters: "HTTP/1.1 200 OK".
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a status line",
            ));
        }
        n += r;
    }
    let line = std::str::from_utf8(&buf[..n]).unwrap_or("");
    line.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {:?}", &line[..line.len().min(40)]),
            )
        })
}

/// Runs the check command until it exits 0. Its output is kept for the
/// failure report; a check still running when the wait ends is killed.
async fn wait_exec(
    ctx: &Ctx,
    cmd: &[String],
    dir: &Path,
    app: &AppProcess,
    release: u64,
    last: &Mutex<NotReady>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(20);
    loop {
        match exec_once(ctx, cmd, dir, app.color, release).await {
            Ok(()) => return Ok(()),
            Err(ExecFailed::Failed(why)) => note(last, NotReady::Exec(why)),
            Err(ExecFailed::CannotRun(e)) => return Err(e),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Why one run of `health.exec` did not pass.
#[derive(Debug, thiserror::Error)]
enum ExecFailed {
    /// It ran and failed: its exit status and last line of output. The
    /// readiness wait tries again.
    #[error("{0}")]
    Failed(String),
    /// bgd could not run it at all: waiting longer will not help.
    #[error("{0:#}")]
    CannotRun(anyhow::Error),
}

/// Runs the check command once in `dir`.
async fn exec_once(
    ctx: &Ctx,
    cmd: &[String],
    dir: &Path,
    color: Color,
    release: u64,
) -> Result<(), ExecFailed> {
    let cannot = ExecFailed::CannotRun;
    let mut env = crate::supervise::process::color_env(ctx, color, release);
    // Everything the check starts, in the background too, ends with it.
    let step = ctx.contain.step();
    env.push(step.env());
    let check = spawn::spawn(&spawn::Spec {
        command: cmd,
        cwd: dir,
        env,
        fds: vec![],
        identity: ctx.config.app.identity.as_ref(),
        cgroup: step.join_fd(),
        die_with_bgd: true,
    })
    .with_context(|| format!("cannot run health.exec {:?} in {}", cmd[0], dir.display()))
    .map_err(cannot)?;
    let exited = ctx.reaper.watch(check.pid);
    let guard = spawn::KillGroupOnDrop(check.pid);
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers =
        [check.stdout, check.stderr].map(|fd| tokio::spawn(keep_tail(fd, output.clone())));
    let status = exited.await.context("the reaper stopped").map_err(cannot)?;
    std::mem::forget(guard);
    // Output still in the pipes arrives at once; a background process
    // that keeps them open is not waited for.
    for r in readers {
        let abort = r.abort_handle();
        if tokio::time::timeout(Duration::from_millis(100), r)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    drop(step);
    if status.success() {
        return Ok(());
    }
    let out = String::from_utf8_lossy(&output.lock().expect("never held across a panic"))
        .trim()
        .to_string();
    let out = out
        .lines()
        .last()
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    Err(ExecFailed::Failed(format!(
        "health.exec {:?}: {status}{out}",
        cmd[0]
    )))
}

/// One repeated check of a color that already serves (`health.interval`):
/// `health.http` once (through the public address, routed to `color`, or
/// through `own`, its probe socket in shared mode), then `health.exec`
/// once, each bounded by `health.timeout`. `Err` says what failed.
pub async fn check_once(
    ctx: &Ctx,
    color: Color,
    own: Option<SocketAddr>,
    release: u64,
) -> Result<(), String> {
    let h = &ctx.config.health;
    if let Some(path) = &h.http {
        let via = match (ctx.listeners.probe_target(color), own) {
            (Some(t), _) => t,
            (None, Some(addr)) => ProbeTarget::Own(addr),
            (None, None) => return Err(format!("health.http: bgd has no way to reach {color}")),
        };
        let attempt = tokio::time::timeout(h.timeout, probe_once(ctx, &via, color, path)).await;
        if let ProbeTarget::Tcp { .. } = via {
            ctx.listeners.clear_probe(color);
        }
        match attempt {
            Ok(Ok(code)) if (200..300).contains(&code) => {}
            Ok(Ok(code)) => return Err(format!("GET {path} answered {code}")),
            Ok(Err(e)) => return Err(format!("GET {path} failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "GET {path} got no answer within health.timeout ({})",
                    humantime::format_duration(h.timeout)
                ))
            }
        }
    }
    if let Some(cmd) = &h.exec {
        let dir = crate::store::layout::color_dir(&ctx.config.fixed.root, color);
        let run = exec_once(ctx, cmd, &dir, color, release);
        match tokio::time::timeout(h.timeout, run).await {
            Ok(result) => result.map_err(|e| e.to_string())?,
            Err(_) => {
                return Err(format!(
                    "health.exec {:?} did not finish within health.timeout ({})",
                    cmd[0],
                    humantime::format_duration(h.timeout)
                ))
            }
        }
    }
    Ok(())
}

/// Reads `fd` to its end, keeping the last 2 KiB in `out`.
async fn keep_tail(fd: std::os::fd::OwnedFd, out: Arc<Mutex<Vec<u8>>>) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        let mut o = out.lock().expect("never held across a panic");
        o.extend_from_slice(&buf[..n]);
        let excess = o.len().saturating_sub(2048);
        o.drain(..excess);
    }
}
