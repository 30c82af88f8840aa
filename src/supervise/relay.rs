//! The relay: a small process of bgd's own, one per running color, that
//! outlives bgd so that the app does not notice bgd's death or upgrade
//! (issue 13; the role containerd-shim and conmon play for containers).
//!
//! It runs as `bgd __bgd_relay` (argv\[1\], checked first thing in `main`,
//! single-threaded until it starts its own threads) and holds:
//! - the read ends of the color's stdout and stderr pipes (fds 3 and 4): it
//!   always reads them, so the app never blocks on a full pipe and never
//!   gets SIGPIPE, whether bgd runs or not;
//! - a copy of every listening socket of the app (fds 5.., named in
//!   `BGD_RELAY_FDNAMES` as in systemd's fd store: `NAME@blue`,
//!   `NAME@green`, or `NAME` in shared mode), so that the sockets, their
//!   accept queues and their steering program survive bgd.
//!
//! bgd connects to its Unix socket (`BGD_RELAY_SOCKET`, in `root/run`).
//! Each connection first gets the sockets (`SCM_RIGHTS`, unix(7)) with a
//! line naming them, then the output lines kept while no bgd was connected
//! (up to [`KEEP`]), then each new line as it comes: `O text` or `E text`,
//! and `o` or `e` once a stream has ended. A new connection replaces the
//! old one. The relay exits when both pipes have ended (every process that
//! held them is gone) and bgd has taken the lines, or [`LINGER`] after the
//! end when no bgd comes for them.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

/// The argv\[1\] that makes `bgd` act as a relay.
pub const RELAY_ARG: &str = "__bgd_relay";

/// Lines kept while no bgd is connected; older ones are dropped (and
/// counted).
pub const KEEP: usize = 2_000;

/// Longest line relayed; the rest of a longer one is cut.
const MAX_LINE: usize = 8 * 1024;

/// The fd of the stdout pipe's read end; stderr's is the next one, the
/// sockets follow.
pub const FIRST_FD: RawFd = 3;

struct Shared {
    client: Option<UnixStream>,
    /// The app's listening sockets and their names; closed once the app
    /// has ended, so that a relay waiting for bgd holds no socket in a
    /// reuseport group that a new bgd binds afresh.
    sockets: Vec<(OwnedFd, String)>,
    /// Frames kept while no client is connected.
    pending: VecDeque<Vec<u8>>,
    dropped: u64,
    ended: u8,
}

impl Shared {
    /// Sends `frame` to bgd, or keeps it until bgd connects.
    fn send(&mut self, frame: Vec<u8>) {
        if let Some(c) = &mut self.client {
            if c.write_all(&frame).is_ok() {
                return;
            }
            self.client = None;
        }
        if self.pending.len() >= KEEP {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back(frame);
    }
}

/// `bgd __bgd_relay`: runs until both pipes end. Returns the exit code.
pub fn main() -> i32 {
    let Some(path) = std::env::var_os("BGD_RELAY_SOCKET").map(PathBuf::from) else {
        eprintln!("bgd: {RELAY_ARG} needs BGD_RELAY_SOCKET");
        return 2;
    };
    let names: Vec<String> = std::env::var("BGD_RELAY_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bgd relay: cannot bind {}: {e}", path.display());
            return 1;
        }
    };
    // Its own socket file: the one to remove at the end, unless a newer
    // relay of the color has put its own there meanwhile.
    let own = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    let sockets = names
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            // SAFETY: bgd passed the sockets at the fds after the pipes, one
            // per name; nothing else in this process owns them.
            let fd = unsafe { OwnedFd::from_raw_fd(FIRST_FD + 2 + i as RawFd) };
            (fd, n)
        })
        .collect();
    let shared = Arc::new(Mutex::new(Shared {
        client: None,
        sockets,
        pending: VecDeque::new(),
        dropped: 0,
        ended: 0,
    }));
    for (fd, tag) in [(FIRST_FD, b'O'), (FIRST_FD + 1, b'E')] {
        // SAFETY: bgd passed the pipes' read ends at these fds; nothing
        // else in this process owns them.
        let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
        let (shared, path) = (shared.clone(), path.clone());
        std::thread::spawn(move || pump(pipe, tag, &shared, &path, own));
    }
    serve(&listener, &shared, &path, own);
    0
}

/// Serves each bgd that connects: the sockets, the lines kept meanwhile,
/// then each new line (sent by the pumps). Exits the relay once a bgd has
/// taken everything after both pipes ended.
fn serve(
    listener: &UnixListener,
    shared: &Mutex<Shared>,
    path: &std::path::Path,
    own: Option<u64>,
) {
    // Which app this relay is for: bgd checks it, so a relay of an earlier
    // process of the color, still draining its pipes, is never taken.
    let app = std::env::var("BGD_RELAY_APP").unwrap_or_default();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        // A bgd that stops reading (stopped, wedged) must not stall the
        // pipes: a write that cannot finish in 1 s drops the connection,
        // and lines are kept until the next one.
        let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(1)));
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        if hand_over(&conn, &app, &s.sockets).is_err() {
            continue;
        }
        if s.dropped > 0 {
            let note = format!(
                "E [bgd relay: {} lines dropped while bgd was away]\n",
                s.dropped
            );
            let _ = conn.write_all(note.as_bytes());
            s.dropped = 0;
        }
        let pending: Vec<Vec<u8>> = s.pending.drain(..).collect();
        if pending.iter().all(|f| conn.write_all(f).is_ok()) {
            if s.ended == 2 {
                // Everything, the ends included, is with bgd now.
                finish(path, own);
            }
            s.client = Some(conn);
        }
    }
}

/// The sockets and the line that names them (after the app's pid), in one
/// message.
pub(crate) fn hand_over(
    conn: &UnixStream,
    app: &str,
    sockets: &[(OwnedFd, String)],
) -> io::Result<()> {
    let names: Vec<&str> = sockets.iter().map(|(_, n)| n.as_str()).collect();
    let header = format!("{app} {}\n", names.join(":"));
    let fds: Vec<RawFd> = sockets.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    let iov = [IoSlice::new(header.as_bytes())];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)?;
    Ok(())
}

/// Reads one pipe to its end, sending each line to bgd as `tag text`.
fn pump(pipe: OwnedFd, tag: u8, shared: &Mutex<Shared>, path: &std::path::Path, own: Option<u64>) {
    let mut reader = BufReader::new(std::fs::File::from(pipe));
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            // Cut: skip the rest of this line.
            let mut rest = Vec::new();
            let _ = reader.read_until(b'\n', &mut rest);
            line.push(b'\n');
        }
        let mut frame = Vec::with_capacity(line.len() + 2);
        frame.extend_from_slice(&[tag, b' ']);
        frame.extend_from_slice(&line);
        shared.lock().unwrap_or_else(|e| e.into_inner()).send(frame);
    }
    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
    s.send(vec![tag.to_ascii_lowercase(), b'\n']);
    s.ended += 1;
    if s.ended < 2 {
        return;
    }
    s.sockets.clear();
    if s.client.is_some() {
        finish(path, own);
    }
    // The app is gone before bgd connected (an app that fails at once
    // exits within milliseconds): its last lines are what the failure
    // report needs, so wait for bgd to take them, up to LINGER.
    drop(s);
    std::thread::sleep(LINGER);
    // Under the lock: a bgd that came late may be taking the lines now.
    let _s = shared.lock().unwrap_or_else(|e| e.into_inner());
    finish(path, own);
}

/// How long a relay whose app has ended waits for a bgd to take the lines
/// no bgd has read yet; as long as bgd waits for a new relay to answer.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Exits the relay, removing its socket file unless a newer relay of the
/// color has put its own there (`own` is the inode this relay bound).
fn finish(path: &std::path::Path, own: Option<u64>) -> ! {
    let ino = std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    if ino.is_some() && ino == own {
        let _ = std::fs::remove_file(path);
    }
    std::process::exit(0);
}

// ---------------------------------------------------------------- bgd's side

/// Starts the relay of `color`: it takes the read ends of the app's output
/// pipes and a copy of every listening socket (`sockets`, named as in the
/// fd store), and listens on `path`. bgd's own copies of the pipes can be
/// dropped once this returns.
pub(crate) fn start(
    path: &std::path::Path,
    app: i32,
    (stdout, stderr): (&OwnedFd, &OwnedFd),
    sockets: Vec<(String, RawFd)>,
) -> io::Result<()> {
    let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
    let mut fds = vec![
        ("stdout".to_string(), stdout.as_raw_fd()),
        ("stderr".to_string(), stderr.as_raw_fd()),
    ];
    let env = vec![
        ("BGD_RELAY_SOCKET".to_string(), path.display().to_string()),
        ("BGD_RELAY_FDNAMES".to_string(), names.join(":")),
        ("BGD_RELAY_APP".to_string(), app.to_string()),
    ];
    fds.extend(sockets.iter().cloned());
    let command = ["/proc/self/exe".to_string(), RELAY_ARG.to_string()];
    let relay = crate::supervise::spawn::spawn(&crate::supervise::spawn::Spec {
        command: &command,
        cwd: path.parent().unwrap_or(std::path::Path::new("/")),
        env,
        fds,
        identity: None,
        cgroup: None,
        die_with_bgd: false,
    })?;
    // It says nothing on its own output; bgd's reaper reaps it.
    drop((relay.stdout, relay.stderr));
    Ok(())
}

/// Receives the sockets a relay hands over on `conn`: their fds, named,
/// and whatever bytes came after the naming line.
/// Listening sockets with their fd-store names.
pub(crate) type Named = Vec<(OwnedFd, String)>;

/// What a relay hands over: its app's pid, the named sockets, and the
/// bytes that came after the naming line.
type HandOver = (i32, Named, Vec<u8>);

fn receive(conn: RawFd) -> io::Result<HandOver> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    let mut buf = vec![0u8; 8192];
    let mut space = nix::cmsg_space!([RawFd; 128]);
    let (n, fds) = {
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(conn, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(r) = c {
                // SAFETY: the kernel just installed these fds for us.
                fds.extend(r.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    buf.truncate(n);
    let end = buf
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| io::Error::other("the relay's first message names no sockets"))?;
    let header = String::from_utf8_lossy(&buf[..end]).to_string();
    let (app, names) = header.split_once(' ').unwrap_or(("", &header));
    let app: i32 = app.parse().unwrap_or(0);
    let names: Vec<String> = names
        .split(':')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() != fds.len() {
        return Err(io::Error::other(format!(
            "the relay sent {} sockets for {} names",
            fds.len(),
            names.len()
        )));
    }
    Ok((
        app,
        fds.into_iter().zip(names).collect(),
        buf[end + 1..].to_vec(),
    ))
}

/// Connects to the relay at `path` (waiting up to 5 s for it to listen),
/// for a color just started: its sockets are bgd's own, so only the
/// connection and the first bytes of output are kept.
pub(crate) async fn connect(
    path: &std::path::Path,
    app: i32,
) -> io::Result<(tokio::net::UnixStream, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut wait = std::time::Duration::from_millis(1);
    loop {
        let attempt = async {
            let conn = tokio::net::UnixStream::connect(path).await?;
            loop {
                conn.readable().await?;
                match conn.try_io(tokio::io::Interest::READABLE, || receive(conn.as_raw_fd())) {
                    Ok((of, _sockets, rest)) => return Ok((of, conn, rest)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        match attempt.await {
            // The relay of this app, not one of an earlier process of the
            // color that still drains its pipes under the same path.
            Ok((of, conn, rest)) if of == app => return Ok((conn, rest)),
            Ok(_) | Err(_) if tokio::time::Instant::now() > deadline => {
                return Err(io::Error::other(format!(
                    "no relay for pid {app} answers at {}",
                    path.display()
                )))
            }
            _ => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Connects to the relay at `path` left by a previous bgd, at start-up
/// (blocking, bounded by a 2 s timeout): the connection, the sockets, and
/// the first bytes of output.
pub(crate) fn reconnect(
    path: &std::path::Path,
    app: i32,
) -> io::Result<(UnixStream, Named, Vec<u8>)> {
    let (conn, of, fds, rest) = reconnect_any(path)?;
    if of != app {
        return Err(io::Error::other(format!(
            "the relay there is pid {of}'s, not pid {app}'s"
        )));
    }
    Ok((conn, fds, rest))
}

/// [`reconnect`] to whichever app the relay serves: the connection, the
/// app's pid (as the relay knows it), the sockets and the first bytes of
/// output. For a color whose run record is gone or unreadable.
pub(crate) fn reconnect_any(
    path: &std::path::Path,
) -> io::Result<(UnixStream, i32, Named, Vec<u8>)> {
    let conn = UnixStream::connect(path)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    let (of, fds, rest) = receive(conn.as_raw_fd())?;
    conn.set_read_timeout(None)?;
    Ok((conn, of, fds, rest))
}

/// One frame from a relay.
pub(crate) enum Frame {
    /// A line of the app's stdout (`stdout` true) or stderr.
    Line { stdout: bool, text: String },
    /// One of the two streams ended.
    End,
}

/// Reads frames from a relay connection (after `rest`, the bytes already
/// read) until it closes; then both streams count as ended.
pub(crate) async fn read_frames(
    conn: tokio::net::UnixStream,
    rest: Vec<u8>,
    mut on_frame: impl FnMut(Frame),
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let reader = AsyncReadExt::chain(std::io::Cursor::new(rest), conn);
    let mut reader = tokio::io::BufReader::new(reader);
    let mut line = Vec::new();
    let mut ended = [false; 2];
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let (tag, text) = (body.first().copied(), body.get(2..).unwrap_or(&[]));
        let text = String::from_utf8_lossy(text)
            .trim_end_matches('\r')
            .to_string();
        match tag {
            Some(b'O') => on_frame(Frame::Line { stdout: true, text }),
            Some(b'E') => on_frame(Frame::Line {
                stdout: false,
                text,
            }),
            Some(b'o') => {
                ended[0] = true;
                on_frame(Frame::End)
            }
            Some(b'e') => {
                ended[1] = true;
                on_frame(Frame::End)
            }
            _ => {}
        }
    }
    for done in ended {
        if !done {
            on_frame(Frame::End);
        }
    }
}
