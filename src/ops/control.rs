//! The control socket: accept, check the peer, decode one request, stream
//! the replies back.
//!
//! Each connection is its own task, so a slow or stalled client never
//! blocks the daemon's event loop or other clients. A client that goes away
//! mid-release only stops receiving progress: the release itself goes on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use nix::unistd::Gid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::{self, UnboundedSender};

use crate::config::identity;
use crate::net::listen::remove_stale_unix_socket;
use crate::ops::protocol::{self, Failure, FailureKind, Reply, Request, MAX_REQUEST_BYTES};
use crate::Sink;

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client's replies go. Sending fails silently once the client has
/// gone: a release whose client disconnected still completes.
pub type Responder = UnboundedSender<Reply>;

/// One decoded request and where to answer it.
#[derive(Debug)]
pub struct Command {
    pub request: Request,
    pub reply: Responder,
}

/// Who may use the control socket, besides root and bgd's own user.
#[derive(Clone, Copy)]
pub struct Access {
    pub group: Option<Gid>,
}

pub fn bind(path: &Path, mode: u32, access: Access) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    remove_stale_unix_socket(path).with_context(|| format!("control socket {}", path.display()))?;
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot bind the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))?;
    if let Some(gid) = access.group {
        std::os::unix::fs::lchown(path, None, Some(gid.as_raw()))
            .with_context(|| format!("cannot give {} to control_group {gid}", path.display()))?;
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, access: Access, commands: Sink<Command>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, access, commands.clone()));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Root, bgd's own user and members of `control_group` may send requests.
async fn allowed(access: Access, uid: u32, gid: u32) -> bool {
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return true;
    }
    let Some(group) = access.group else {
        return false;
    };
    // Group membership reads /etc/group: off the event loop's thread.
    tokio::task::spawn_blocking(move || identity::uid_in_group(uid, gid, group))
        .await
        .unwrap_or(false)
}

async fn handle(stream: UnixStream, access: Access, commands: Sink<Command>) {
    let (read, mut write) = stream.into_split();
    let refusal = match write.as_ref().peer_cred() {
        Ok(cred) if allowed(access, cred.uid(), cred.gid()).await => None,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "refused a control connection from a user that may not control bgd"
            );
            Some(format!(
                "permission denied: uid {} may not control this bgd; run bgctl as root, as bgd's own user, or as a member of its control_group",
                cred.uid()
            ))
        }
        Err(e) => Some(format!("cannot check who is connecting: {e}")),
    };
    if let Some(message) = refusal {
        let f = Failure::new(FailureKind::Denied, None, message);
        let _ = write.write_all(&protocol::encode(&Reply::Error(f))).await;
        return;
    }
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Err(_) => Err(Failure::new(
            FailureKind::BadRequest,
            None,
            format!("no request line within {REQUEST_TIMEOUT:?}"),
        )),
        Ok(Err(e)) => Err(Failure::new(
            FailureKind::BadRequest,
            None,
            format!("cannot read the request: {e}"),
        )),
        Ok(Ok(0)) => return,
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => Err(Failure::new(
            FailureKind::BadRequest,
            None,
            format!("request line longer than {MAX_REQUEST_BYTES} bytes"),
        )),
        Ok(Ok(_)) => protocol::decode_request(&line),
    };
    let request = match request {
        Ok(r) => r,
        Err(f) => {
            tracing::debug!("bad control request: {}", f.message);
            let _ = write.write_all(&protocol::encode(&Reply::Error(f))).await;
            return;
        }
    };
    // A follower may wait long between lines: watch for it to hang up, or
    // its connection would stay open until the next line.
    let follow = request.follows();
    let (tx, mut rx) = mpsc::unbounded_channel();
    if !commands(Command { request, reply: tx }) {
        return;
    }
    let mut probe = [0u8; 64];
    loop {
        let reply = tokio::select! {
            reply = rx.recv() => reply,
            n = reader.read(&mut probe), if follow => match n {
                Ok(0) | Err(_) => return, // hung up
                Ok(_) => continue,        // stray input is ignored
            },
        };
        let Some(reply) = reply else { return };
        let last = reply.is_last();
        if write.write_all(&protocol::encode(&reply)).await.is_err() {
            return; // the client left; the daemon carries on
        }
        if last {
            return;
        }
    }
}
