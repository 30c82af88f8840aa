//! A closed-loop HTTP/1.1 load generator that records every request.
//!
//! `loadgen --addr 127.0.0.1:8080 --duration 10 --keepalive 32 --close 32 --out FILE`
//!
//! Runs `--keepalive` clients that reuse one connection (and reconnect when
//! the server answers `Connection: close` or the connection fails) and
//! `--close` clients that open a new connection for every request and send
//! `Connection: close`, each on its own thread, for `--duration` seconds.
//! Every request is written to FILE as one line:
//!
//! `start_ns latency_us code kind`
//!
//! `start_ns` is CLOCK_MONOTONIC (the clock of Python's `time.monotonic()`),
//! `kind` is `k` (keep-alive) or `c` (new connection), and `code` is the HTTP
//! status, or a negative number for a failure without one:
//! -1 connect failed, -2 send failed, -3 the connection closed or reset
//! before a response on a new connection, -4 the same on a reused keep-alive
//! connection, -5 timed out, -6 not the app's answer (bad status line,
//! truncated or unexpected body). A client whose request failed waits
//! `--backoff-ms` (default 10) before its next one, so a server that is down
//! is not hammered by tight loops. A summary goes to stdout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
}

const CLOCK_MONOTONIC: i32 = 1;

fn mono_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { clock_gettime(CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Opts {
    addr: SocketAddr,
    duration: Duration,
    keepalive: usize,
    close: usize,
    out: String,
    timeout: Duration,
    backoff: Duration,
    path: String,
    expect: String,
}

fn usage() -> ! {
    eprintln!("usage: loadgen --addr HOST:PORT --duration SECS --keepalive N --close N --out FILE [--timeout-ms 5000] [--backoff-ms 10] [--path /] [--expect hello]");
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:8080".parse().unwrap(),
        duration: Duration::from_secs(10),
        keepalive: 32,
        close: 32,
        out: String::new(),
        timeout: Duration::from_millis(5000),
        backoff: Duration::from_millis(10),
        path: "/".into(),
        expect: "hello".into(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "--addr" => o.addr = v.parse().unwrap_or_else(|_| usage()),
            "--duration" => {
                o.duration = Duration::from_secs_f64(v.parse().unwrap_or_else(|_| usage()))
            }
            "--keepalive" => o.keepalive = v.parse().unwrap_or_else(|_| usage()),
            "--close" => o.close = v.parse().unwrap_or_else(|_| usage()),
            "--out" => o.out = v,
            "--timeout-ms" => {
                o.timeout = Duration::from_millis(v.parse().unwrap_or_else(|_| usage()))
            }
            "--backoff-ms" => {
                o.backoff = Duration::from_millis(v.parse().unwrap_or_else(|_| usage()))
            }
            "--path" => o.path = v,
            "--expect" => o.expect = v,
            _ => usage(),
        }
        i += 2;
    }
    if o.out.is_empty() {
        usage()
    }
    o
}

/// One request's outcome: an HTTP status, or a negative failure code.
fn exchange(
    conn: &mut Option<TcpStream>,
    o: &Opts,
    keepalive: bool,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> i32 {
    let reused = conn.is_some();
    if conn.is_none() {
        match TcpStream::connect_timeout(&o.addr, o.timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(o.timeout));
                let _ = s.set_write_timeout(Some(o.timeout));
                *conn = Some(s);
            }
            Err(e) => return if is_timeout(&e) { -5 } else { -1 },
        }
    }
    let s = conn.as_mut().unwrap();
    if let Err(e) = s.write_all(req) {
        *conn = None;
        return if is_timeout(&e) {
            -5
        } else if reused {
            -4
        } else {
            -2
        };
    }
    match read_response(s, buf, &o.expect) {
        Ok((code, server_closes)) => {
            if server_closes || !keepalive {
                *conn = None;
            }
            code
        }
        Err(code) => {
            *conn = None;
            if code == -3 && reused {
                -4
            } else {
                code
            }
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Reads one response. Ok((status, server closes the connection)).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, expect: &str) -> Result<(i32, bool), i32> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end;
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Err(if buf.is_empty() { -3 } else { -6 }),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(-5),
            Err(_) => return Err(if buf.is_empty() { -3 } else { -6 }),
        }
        if let Some(p) = find(buf, b"\r\n\r\n") {
            head_end = p + 4;
            break;
        }
        if buf.len() > 64 * 1024 {
            return Err(-6);
        }
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| -6)?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code: i32 = status
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .ok_or(-6)?;
    let mut length: Option<usize> = None;
    let mut closes = status.starts_with("HTTP/1.0");
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            if k == "content-length" {
                length = v.parse().ok();
            } else if k == "connection" {
                closes = v == "close";
            }
        }
    }
    // Read the body: by length, else to EOF.
    let want = length.map(|l| head_end + l);
    loop {
        if let Some(w) = want {
            if buf.len() >= w {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => {
                if want.is_some() {
                    return Err(-6);
                }
                closes = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(-5),
            Err(_) => return Err(-6),
        }
    }
    if (200..300).contains(&code) && !buf[head_end..].starts_with(expect.as_bytes()) {
        return Err(-6);
    }
    Ok((code, closes))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Rec {
    start_ns: u64,
    lat_us: u32,
    code: i32,
}

fn client(o: Arc<Opts>, keepalive: bool, start: Arc<Barrier>) -> Vec<Rec> {
    let req = if keepalive {
        format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", o.path)
    } else {
        format!(
            "GET {} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
            o.path
        )
    };
    let mut recs = Vec::with_capacity(1 << 16);
    let mut conn = None;
    let mut buf = Vec::with_capacity(8192);
    start.wait();
    let deadline = Instant::now() + o.duration;
    while Instant::now() < deadline {
        let t0 = mono_ns();
        let code = exchange(&mut conn, &o, keepalive, req.as_bytes(), &mut buf);
        let t1 = mono_ns();
        recs.push(Rec {
            start_ns: t0,
            lat_us: ((t1 - t0) / 1000).min(u32::MAX as u64) as u32,
            code,
        });
        if !(200..300).contains(&code) {
            std::thread::sleep(o.backoff);
        }
    }
    recs
}

fn main() {
    let o = Arc::new(parse_opts());
    let n = o.keepalive + o.close;
    let start = Arc::new(Barrier::new(n));
    let mut handles = Vec::new();
    for i in 0..n {
        let (o, start) = (o.clone(), start.clone());
        let keepalive = i < o.keepalive;
        handles.push((
            keepalive,
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || client(o, keepalive, start))
                .expect("spawn a client thread"),
        ));
    }
    let t0 = mono_ns();
    let mut out = String::with_capacity(1 << 22);
    let (mut total, mut ok) = (0u64, 0u64);
    let mut failed = std::collections::BTreeMap::<i32, u64>::new();
    for (keepalive, h) in handles {
        let kind = if keepalive { 'k' } else { 'c' };
        for r in h.join().expect("a client thread panicked") {
            total += 1;
            if (200..300).contains(&r.code) {
                ok += 1;
            } else {
                *failed.entry(r.code).or_default() += 1;
            }
            out.push_str(&format!(
                "{} {} {} {}\n",
                r.start_ns, r.lat_us, r.code, kind
            ));
        }
    }
    let secs = (mono_ns() - t0) as f64 / 1e9;
    std::fs::write(&o.out, out).expect("write --out");
    let failed: Vec<String> = failed.iter().map(|(c, n)| format!("\"{c}\":{n}")).collect();
    println!(
        "{{\"requests\":{total},\"ok\":{ok},\"failed\":{{{}}},\"seconds\":{secs:.3}}}",
        failed.join(",")
    );
}
