//! `bgctl compare` (issue 23): the same GETs to the live build and to the
//! one beside it, through the public address, each steered to its color
//! by its exact source address as bgd's health checks are
//! ([`Listeners::route_compare`](crate::net::listen::Listeners)). The
//! core decides what to compare and how the answers read
//! (`deploy::compare`); this sends the requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, UnixStream};

use crate::color::Color;
use crate::deploy::compare::{self, Comparison, Sample, Side, ROUNDS};
use crate::net::listen::ProbeTarget;
use crate::Ctx;

/// The largest answer read; a longer one is cut there (and still compared).
const MAX_ANSWER: u64 = 16 << 20;

/// One compare at a time: each request adds a route to the steering
/// program, which has room for a few.
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Holds the one compare's turn; released on drop.
pub struct Turn(());

impl Turn {
    /// The turn, unless another compare runs.
    pub fn take() -> Option<Turn> {
        RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then_some(Turn(()))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

/// Asks each path [`ROUNDS`] times of each build, alternating, and reports.
/// Each request is bounded by `health.timeout`.
pub async fn run(ctx: &Ctx, (live, other): (Side, Side), paths: Vec<String>) -> Comparison {
    let mut reports = Vec::new();
    for path in paths {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            a.push(ask(ctx, live.color, &path).await);
            b.push(ask(ctx, other.color, &path).await);
        }
        reports.push(compare::report(path, &a, &b));
    }
    Comparison {
        live,
        other,
        requests: ROUNDS,
        paths: reports,
    }
}

/// One `GET path` of `color`, timed from the connection's start to the end
/// of the answer.
async fn ask(ctx: &Ctx, color: Color, path: &str) -> Sample {
    let started = Instant::now();
    let limit = ctx.config.health.timeout;
    let answer = match tokio::time::timeout(limit, get(ctx, color, path)).await {
        Ok(Ok(raw)) => compare::parse_response(&raw),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within health.timeout ({})",
            humantime::format_duration(limit)
        )),
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match answer {
        Ok((code, body)) => Sample {
            status: Ok(code),
            bytes: body.len() as u64,
            digest: compare::digest(&body),
            ms,
        },
        Err(e) => Sample {
            status: Err(e),
            bytes: 0,
            digest: 0,
            ms,
        },
    }
}

/// The whole answer to `GET path` from `color`, through the public address.
async fn get(ctx: &Ctx, color: Color, path: &str) -> std::io::Result<Vec<u8>> {
    match ctx.listeners.probe_target(color) {
        Some(ProbeTarget::Tcp { to, from }) => {
            let socket = if from.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(from, 0))?;
            let route = ctx.listeners.route_compare(socket.local_addr()?, color)?;
            let s = socket.connect(to).await;
            // The kernel chose the socket at the handshake: the route has
            // done its work (and a failed connect closed the socket).
            drop(route);
            let s = s?;
            s.set_nodelay(true)?;
            exchange(s, &to.to_string(), path).await
        }
        Some(ProbeTarget::Unix(p)) => {
            exchange(UnixStream::connect(p).await?, "localhost", path).await
        }
        _ => Err(std::io::Error::other(format!(
            "bgd has no way to reach {color} alone here (shared mode)"
        ))),
    }
}

/// Sends `GET path` with `Connection: close` and reads until the server
/// closes.
async fn exchange<S>(mut s: S, host: &str, path: &str) -> std::io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bgctl-compare\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut s).take(MAX_ANSWER).read_to_end(&mut raw).await?;
    Ok(raw)
}
