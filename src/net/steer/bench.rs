//! Benchmarks of the steering program by client (issue 23), run by
//! `bench/run --only 12` (`bench/clients.py`), or by hand:
//!
//! ```sh
//! cargo test --release --lib net::steer::bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Each prints a Markdown table; bench/README.md says what the figures
//! mean, bench/RESULTS.md holds them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tests::{group, socket2_like};
use super::*;

/// Repetitions (`BENCH_REPS`, default 7) and seconds each
/// (`BENCH_SECONDS`, default 3).
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 256 IPv4 networks, none of which holds the benchmark's clients
/// (127.0.2.0/24): every connection is tested against all of them.
fn testers() -> Vec<Cidr> {
    (0..256u32)
        .map(|i| Cidr {
            addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i << 8))),
            prefix: 24,
        })
        .collect()
}

/// Today's program during a canary (before issue 23): a 30 % split at
/// random.
fn today() -> Route {
    Route {
        to: 0,
        split: Some((1, 30)),
        split_by: CanaryBy::Connection,
        ..Route::default()
    }
}

/// The new one: 256 tester networks and a 30 % split by client.
fn by_client() -> Route {
    Route {
        to: 0,
        split: Some((1, 30)),
        split_by: CanaryBy::Client,
        testers: Some((1, testers())),
        ..Route::default()
    }
}

/// The same with 256 IPv6 /48s, which the program tests one by one (6
/// instructions each), for clients over IPv6.
fn by_client_v6() -> Route {
    let testers = (0..256u128)
        .map(|i| Cidr {
            addr: IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0000u128 + i) << 80)),
            prefix: 48,
        })
        .collect();
    Route {
        testers: Some((1, testers)),
        ..by_client()
    }
}

/// A reuseport group with `route` attached, and a thread per socket that
/// accepts and closes.
struct Group {
    addr: SocketAddr,
    _listeners: Arc<(TcpListener, TcpListener)>,
}

impl Group {
    fn new(route: &Route, on: IpAddr, stop: &Arc<AtomicBool>) -> Group {
        let g = group(on).expect("a loopback address");
        // Blocking accepts, and a long queue: a full queue drops SYNs,
        // whose retransmission (1 s) would dwarf what is measured.
        for l in [&g.0, &g.1] {
            l.set_nonblocking(false).unwrap();
            nix::sys::socket::listen(l, nix::sys::socket::Backlog::new(4096).unwrap()).unwrap();
        }
        attach(g.0.as_fd(), &program(route)).unwrap();
        let addr = g.0.local_addr().unwrap();
        let g = Arc::new(g);
        for i in 0..2 {
            let (g, stop) = (g.clone(), stop.clone());
            std::thread::spawn(move || {
                let l = if i == 0 { &g.0 } else { &g.1 };
                while !stop.load(Ordering::Relaxed) {
                    let _ = l.accept();
                }
            });
        }
        Group {
            addr,
            _listeners: g,
        }
    }
}

/// Connects from `from` to `to` and closes with a reset (SO_LINGER 0: no
/// TIME_WAIT to run out of ports); returns how long it took.
fn connect_once(from: IpAddr, to: SocketAddr) -> Duration {
    let t0 = Instant::now();
    let b = socket2_like(SocketAddr::new(from, 0));
    let s = b.connect(to).expect("connect");
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on an open socket with a valid linger.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(s);
    t0.elapsed()
}

/// One client thread opens `n` connections to each of groups `a` and `b`,
/// alternating (a, b, b, a, ...), from 127.0.2.1-254 in turn, so that
/// whatever else runs on the machine slows both alike; returns the
/// connections per second of each: one over the median time of its
/// connections (a median, so that the odd connection that waited for a
/// busy core does not count).
fn alternating(a: &Route, b: &Route, v6: bool, n: u32) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let on = match v6 {
        true => IpAddr::V6(Ipv6Addr::LOCALHOST),
        false => IpAddr::from([127, 0, 0, 1]),
    };
    let (ga, gb) = (Group::new(a, on, &stop), Group::new(b, on, &stop));
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..n + 200 {
        let from = match v6 {
            true => on,
            false => IpAddr::from([127, 0, 2, (i % 254 + 1) as u8]),
        };
        let (first, second) = if i % 2 == 0 { (&ga, &gb) } else { (&gb, &ga) };
        let d1 = connect_once(from, first.addr);
        let d2 = connect_once(from, second.addr);
        if i < 200 {
            continue; // warm-up
        }
        let (da, db) = if i % 2 == 0 { (d1, d2) } else { (d2, d1) };
        ta.push(da.as_secs_f64());
        tb.push(db.as_secs_f64());
    }
    stop.store(true, Ordering::Relaxed);
    for g in [&ga, &gb] {
        for _ in 0..2 {
            let _ = std::net::TcpStream::connect_timeout(&g.addr, Duration::from_millis(100));
        }
    }
    (1.0 / median(ta), 1.0 / median(tb))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// New-connection throughput: the program with 256 tester networks and
/// the client hash, side by side with today's (a random split), and
/// today's beside itself (the method's noise). The ratio is taken per
/// repetition.
#[test]
#[ignore = "a benchmark: bench/run --only 12"]
fn new_connection_throughput() {
    let (reps, n) = (
        knob("BENCH_REPS", 7),
        knob("BENCH_CONNECTIONS", 20_000) as u32,
    );
    let new_len = program(&by_client()).len();
    let v6_len = program(&by_client_v6()).len();
    let old_len = program(&today()).len();
    let mut rows = Vec::new();
    for (name, other, v6) in [
        (
            format!("IPv4: 256 tester /24s + client hash ({new_len} instructions)"),
            by_client(),
            false,
        ),
        (
            format!("IPv6: 256 tester /48s + client hash ({v6_len} instructions)"),
            by_client_v6(),
            true,
        ),
        (
            format!("IPv4: today's beside itself ({old_len} instructions)"),
            today(),
            false,
        ),
    ] {
        let (mut news, mut olds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 0..reps {
            let (new, old) = alternating(&other, &today(), v6, n);
            eprintln!(
                "  {name}, rep {}: {new:.0}/s beside today's {old:.0}/s",
                rep + 1
            );
            news.push(new);
            olds.push(old);
            ratios.push(new / old);
        }
        let (lo, hi) = range(&ratios);
        rows.push(format!(
            "| {name} | {:.0} | {:.0} | {:.3} [{lo:.3}-{hi:.3}] |",
            median(news),
            median(olds),
            median(ratios.clone())
        ));
    }
    println!("\n| program | new connections/s | today's program beside it, /s | ratio |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!(
        "\n{reps} repetitions of {n} connections to each program, alternating from one client thread (connect from 127.0.2.N, or ::1, close with a reset), one accepting thread per socket; median [smallest-largest]."
    );
}

/// How evenly the client hash spreads addresses: the share of each set of
/// addresses that a canary of 10, 30 and 50 % gets.
#[test]
#[ignore = "a benchmark: bench/run --only 12"]
fn hash_spread() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let random4: Vec<IpAddr> = (0..100_000)
        .map(|_| IpAddr::V4(Ipv4Addr::from(next() as u32)))
        .collect();
    let random6: Vec<IpAddr> = (0..100_000)
        .map(|_| {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(next()) << 64) | u128::from(next()),
            ))
        })
        .collect();
    let sets: Vec<(String, Vec<IpAddr>)> = vec![
        (
            "256 consecutive addresses, 127.0.2.0/24".into(),
            (0..256u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(0x7f00_0200 + i)))
                .collect(),
        ),
        (
            "200 consecutive addresses, 127.0.2.1-200 (the integration test)".into(),
            (1..=200u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(0x7f00_0200 + i)))
                .collect(),
        ),
        (
            "65,536 consecutive addresses, 10.1.0.0/16".into(),
            (0..65_536u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)))
                .collect(),
        ),
        (
            "256 addresses .1 of consecutive /24s, 10.0.0-255.1".into(),
            (0..256u32)
                .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0001 + (i << 8))))
                .collect(),
        ),
        ("100,000 random IPv4 addresses".into(), random4),
        (
            "256 consecutive /64s, 2001:db8:0:0-ff::/64".into(),
            (0..256u128)
                .map(|i| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0000_0000u128 + i) << 64)))
                .collect(),
        ),
        ("100,000 random IPv6 /64s".into(), random6),
    ];
    println!("\n| addresses | 10 % canary | 30 % canary | 50 % canary |");
    println!("|---|---|---|---|");
    for (name, ips) in sets {
        let share = |p: u8| {
            let below = ips
                .iter()
                .filter(|ip| client_point(**ip) < threshold(p))
                .count();
            format!("{:.1} %", 100.0 * below as f64 / ips.len() as f64)
        };
        println!("| {name} | {} | {} | {} |", share(10), share(30), share(50));
    }
}
