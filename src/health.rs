//! Readiness: is the color that was just started ready to take traffic?
//!
//! Both colors accept on the same sockets, so a probe of the public address
//! could be answered by the old color. Each check therefore reaches the new
//! color alone: an HTTP GET through its private probe socket, `READY=1` on a
//! NOTIFY_SOCKET only it was given, or a command run in its directory.
//! The color is ready when every configured check has passed; the caller
//! bounds the whole wait with `health.timeout`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

use crate::identity::Identity;
use crate::process::AppProcess;
use crate::spawn;
use crate::Ctx;

/// Waits until every configured check passes. Fails early when a check
/// cannot pass; the caller races this against the app's exit and a timeout.
pub async fn wait_ready(
    ctx: &Ctx,
    app: &AppProcess,
    dir: &Path,
    release: u64,
) -> anyhow::Result<()> {
    let h = &ctx.config.health;
    if let (Some(path), Some(addr)) = (&h.http, app.probe_addr) {
        wait_http(addr, path).await?;
    }
    if let Some(n) = &app.notify {
        n.wait_ready().await?;
    }
    if let Some(cmd) = &h.exec {
        wait_exec(ctx, cmd, dir, app, release).await?;
    }
    Ok(())
}

/// GETs `path` until it answers 2xx. The probe socket listens from before the
/// app starts, so the first request simply waits in its queue until the app
/// accepts: no polling while the app boots. Non-2xx answers and resets are
/// retried with a short backoff.
async fn wait_http(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let last = match http_get_status(addr, path).await {
            Ok(code) if (200..300).contains(&code) => return Ok(()),
            Ok(code) => format!("GET {path} answered {code}"),
            Err(e) => format!("GET {path} failed: {e}"),
        };
        tracing::debug!("probe: {last}; retrying in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// One `GET` over a new connection; returns the status code.
pub async fn http_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bgd-probe\r\nConnection: close\r\n\r\n"
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

/// Runs the check command until it exits 0.
async fn wait_exec(
    ctx: &Ctx,
    cmd: &[String],
    dir: &Path,
    app: &AppProcess,
    release: u64,
) -> anyhow::Result<()> {
    let env = vec![
        ("BG_COLOR".to_string(), app.color.to_string()),
        ("BG_RELEASE".to_string(), release.to_string()),
        ("BG_ROOT".to_string(), ctx.config.root.display().to_string()),
    ];
    let mut backoff = Duration::from_millis(20);
    loop {
        let check = spawn::spawn(&spawn::Spec {
            command: cmd,
            cwd: dir,
            env: env.clone(),
            fds: vec![],
            identity: ctx.config.app.identity.as_ref(),
        })
        .with_context(|| format!("cannot run health.exec {:?} in {}", cmd[0], dir.display()))?;
        let exited = ctx.reaper.watch(check.pid);
        // The check's output is not interesting until it fails for good;
        // the pipes are closed so a chatty check cannot block on them.
        drop((check.stdout, check.stderr));
        let status = exited.await.context("the reaper stopped")?;
        if status.success() {
            return Ok(());
        }
        tracing::debug!(
            "health.exec {:?}: {status}; retrying in {backoff:?}",
            cmd[0]
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// A NOTIFY_SOCKET that only one color's processes are given.
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds the socket; with an `identity`, the app's user owns it so its
    /// processes may send to it.
    pub fn bind(path: &Path, identity: Option<&Identity>) -> anyhow::Result<NotifySocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)
            .with_context(|| format!("cannot bind NOTIFY_SOCKET {}", path.display()))?;
        if let Some(id) = identity {
            std::os::unix::fs::lchown(path, Some(id.uid.as_raw()), Some(id.gid.as_raw()))
                .with_context(|| format!("cannot hand {} to user {}", path.display(), id.user))?;
        }
        Ok(NotifySocket {
            sock,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads datagrams until one says `READY=1`.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self
                .sock
                .recv(&mut buf)
                .await
                .context("reading NOTIFY_SOCKET")?;
            let msg = String::from_utf8_lossy(&buf[..n]);
            for line in msg.lines() {
                if line == "READY=1" {
                    return Ok(());
                }
                if let Some(s) = line.strip_prefix("STATUS=") {
                    tracing::info!("app status: {s}");
                }
                if let Some(s) = line.strip_prefix("ERRNO=") {
                    bail!("the app reported ERRNO={s} on NOTIFY_SOCKET");
                }
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
