//! The NOTIFY_SOCKET bgd binds for one color when `health.notify` is set:
//! the app sends `READY=1` on it (the sd_notify protocol) when it is ready.
//! Each color gets its own socket, so a message can only come from the
//! color just started.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use tokio::net::UnixDatagram;

use crate::config::identity::Identity;

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

    /// Where the socket is bound, for the app's `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads datagrams until one says `READY=1`; fails on `ERRNO=`. Logs
    /// `STATUS=` messages.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Binds a socket in a fresh directory, sends `messages` to it as one
    /// datagram each, and returns what `wait_ready` said.
    fn wait_for(messages: &[&str]) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/blue.notify");
        let result = rt.block_on(async {
            let n = NotifySocket::bind(&path, None).unwrap();
            assert_eq!(n.path(), path);
            let app = std::os::unix::net::UnixDatagram::unbound().unwrap();
            for m in messages {
                app.send_to(m.as_bytes(), n.path()).unwrap();
            }
            n.wait_ready().await
        });
        assert!(!path.exists(), "dropping the socket removes its file");
        result
    }

    #[test]
    fn ready_after_status_lines() {
        wait_for(&["STATUS=loading", "STATUS=warming\nREADY=1"]).unwrap();
    }

    #[test]
    fn errno_fails_the_wait() {
        let e = wait_for(&["ERRNO=5"]).unwrap_err().to_string();
        assert!(e.contains("ERRNO=5"), "{e}");
    }
}
