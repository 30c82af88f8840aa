//! The flip client: opens a new connection at a fixed pace and records which
//! release answers each one, to time when new connections move to a new color.
//!
//! `flipclient --addr 127.0.0.1:8080 --pace-us 100 --duration 60 --out FILE`
//!
//! One thread opens a connection every `--pace-us` microseconds (on an
//! absolute schedule; when it falls behind it goes on at once, without a
//! burst), sends `GET / HTTP/1.1` with `Connection: close` and hands the
//! connection to one of `--readers` threads, which read the answer to its end.
//! It stops after `--duration` seconds, or as soon as its stdin reaches end of
//! file (the benchmark closes the pipe when its releases are done).
//! Every connection is one line of FILE:
//!
//! `connect_start_ns connect_end_ns answer_ns code release`
//!
//! The times are CLOCK_REALTIME, the clock of bgd's log timestamps and of
//! Python's `time.time_ns()`, in ns since the epoch: before `connect()`, after
//! it returned (the handshake is done, so the connection sits in a listening
//! socket's queue: the kernel has chosen the color), and when the answer was
//! read to its end. `code` is the HTTP status, or -1 connect failed, -2 send
//! failed, -3 closed or reset before an answer, -5 timeout (2 s), -6 an answer
//! that is not HTTP. `release` is the word after `release=` in the body (the
//! app prints its `BG_RELEASE`), or `-`. A summary goes to stdout.
//!
//! Each connection is closed with `SO_LINGER` 0 once its answer is read (a
//! reset, after the app's own close): so it leaves no socket in TIME_WAIT,
//! which at 10,000 connections a second would fill the kernel's TCP table,
//! and bgd's quiesce reads that table.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

#[repr(C)]
struct Linger {
    l_onoff: i32,
    l_linger: i32,
}

extern "C" {
    fn clock_gettime(clk: i32, ts: *mut Timespec) -> i32;
    fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, val: *const Linger, len: u32) -> i32;
}

const SOL_SOCKET: i32 = 1;
const SO_LINGER: i32 = 13;

/// Closing `s` will reset the connection instead of leaving it in TIME_WAIT.
fn linger_zero(s: &TcpStream) {
    let l = Linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a valid `struct linger` of the given size.
    unsafe {
        setsockopt(
            s.as_raw_fd(),
            SOL_SOCKET,
            SO_LINGER,
            &l,
            std::mem::size_of::<Linger>() as u32,
        )
    };
}

const CLOCK_REALTIME: i32 = 0;
const PR_SET_TIMERSLACK: i32 = 29;

fn real_ns() -> u64 {
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_REALTIME always exists.
    unsafe { clock_gettime(CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Opts {
    addr: SocketAddr,
    pace: Duration,
    duration: Duration,
    readers: usize,
    out: String,
}

fn usage() -> ! {
    eprintln!("usage: flipclient --addr HOST:PORT --out FILE [--pace-us 100] [--duration 60] [--readers 4]");
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        addr: "127.0.0.1:8080".parse().unwrap(),
        pace: Duration::from_micros(100),
        duration: Duration::from_secs(60),
        readers: 4,
        out: String::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "--addr" => o.addr = v.parse().unwrap_or_else(|_| usage()),
            "--pace-us" => o.pace = Duration::from_micros(v.parse().unwrap_or_else(|_| usage())),
            "--duration" => {
                o.duration = Duration::from_secs_f64(v.parse().unwrap_or_else(|_| usage()))
            }
            "--readers" => o.readers = v.parse().unwrap_or_else(|_| usage()),
            "--out" => o.out = v,
            _ => usage(),
        }
        i += 2;
    }
    if o.out.is_empty() || o.readers == 0 {
        usage()
    }
    o
}

struct Rec {
    cs: u64,
    ce: u64,
    ans: u64,
    code: i32,
    release: String,
}

/// Reads one answer to its end (the app closes the connection).
fn answer(mut s: TcpStream) -> (i32, String) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    linger_zero(&s);
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (-5, "-".into())
            }
            Err(_) => break,
        }
        if buf.len() > 64 * 1024 {
            break;
        }
    }
    if buf.is_empty() {
        return (-3, "-".into());
    }
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .unwrap_or(-6);
    let release = text
        .split("release=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("-")
        .to_string();
    (code, release)
}

fn main() {
    let o = parse_opts();
    // A precise pace without spinning: nanosleep wakes within a few us
    // instead of the default 50 us timer slack.
    // SAFETY: prctl(PR_SET_TIMERSLACK, 1) only changes this thread's slack.
    unsafe { prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let (tx, rx) = mpsc::channel::<(TcpStream, u64, u64)>();
    let rx = Arc::new(Mutex::new(rx));
    let mut readers = Vec::new();
    for _ in 0..o.readers {
        let rx = rx.clone();
        readers.push(std::thread::spawn(move || {
            let mut recs = Vec::new();
            loop {
                let next = rx.lock().unwrap().recv();
                let Ok((s, cs, ce)) = next else { break };
                let (code, release) = answer(s);
                recs.push(Rec {
                    cs,
                    ce,
                    ans: real_ns(),
                    code,
                    release,
                });
            }
            recs
        }));
    }
    let req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
    let mut failed = Vec::new();
    let t_end = Instant::now() + o.duration;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < t_end {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        next += o.pace;
        let now = Instant::now();
        if next < now {
            next = now; // behind: go on at once, no burst
        }
        let cs = real_ns();
        match TcpStream::connect_timeout(&o.addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                let ce = real_ns();
                if s.write_all(req).is_err() {
                    failed.push(Rec {
                        cs,
                        ce,
                        ans: ce,
                        code: -2,
                        release: "-".into(),
                    });
                    continue;
                }
                if tx.send((s, cs, ce)).is_err() {
                    break;
                }
            }
            Err(e) => {
                let code = if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                    -5
                } else {
                    -1
                };
                let t = real_ns();
                failed.push(Rec {
                    cs,
                    ce: t,
                    ans: t,
                    code,
                    release: "-".into(),
                });
            }
        }
    }
    drop(tx);
    let mut recs = failed;
    for r in readers {
        recs.extend(r.join().expect("a reader thread panicked"));
    }
    recs.sort_by_key(|r| r.cs);
    let mut out = String::with_capacity(recs.len() * 64);
    let mut ok = 0;
    for r in &recs {
        ok += (200..300).contains(&r.code) as usize;
        out.push_str(&format!("{} {} {} {} {}\n", r.cs, r.ce, r.ans, r.code, r.release));
    }
    std::fs::write(&o.out, out).expect("write --out");
    println!("{{\"connections\":{},\"ok\":{ok}}}", recs.len());
}
