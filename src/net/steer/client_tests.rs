//! Table tests of the steering program by client (issue 23), without a
//! kernel: the program runs in a small classic-BPF interpreter ([`cbpf`])
//! over synthetic IPv4 and IPv6 SYNs. Then the same programs in the kernel,
//! with clients bound to addresses of 127.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;

use super::cbpf::{self, Syn};
use super::tests::{connect_from, group, landed, socket2_like};
use super::*;

const BLUE: u32 = 0;
const GREEN: u32 = 1;

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|s| Cidr::parse(s).unwrap().0).collect()
}

/// Where the program of `route` sends a SYN from `from` (to port 8080 of
/// the same family), with the kernel's random number `random`.
fn steer(route: &Route, from: &str, random: u32) -> u32 {
    let from: SocketAddr = from.parse().unwrap();
    let to: SocketAddr = match from {
        SocketAddr::V4(_) => "10.9.9.9:8080".parse().unwrap(),
        SocketAddr::V6(_) => "[2001:db8:ffff::9]:8080".parse().unwrap(),
    };
    let mut syn = Syn::new(from, to, 0);
    syn.random = random;
    cbpf::run(&program(route), &syn).unwrap_or_else(|e| panic!("{from}: {e}"))
}

/// Blue live; green a canary of `percent` % (0: a preview) by `by`, with
/// testers and one probe of each family to blue.
fn route(percent: u8, by: CanaryBy) -> Route {
    Route {
        to: BLUE,
        probes: vec![
            ("127.0.0.1:40000".parse().unwrap(), BLUE),
            ("[2001:db8:1::5]:40001".parse().unwrap(), BLUE),
        ],
        split: (percent > 0).then_some((GREEN, percent)),
        split_by: by,
        testers: Some((
            GREEN,
            cidrs(&[
                "127.0.0.77",
                "203.0.113.0/24",
                "198.51.100.128/25",
                "2001:db8:1::/48",
                "2001:db8:2::7",
                "2001:db8:3::/127",
            ]),
        )),
    }
}

#[test]
fn testers_reach_the_new_color_and_nobody_else_does_in_a_preview() {
    let r = route(0, CanaryBy::Client);
    for (from, want) in [
        ("127.0.0.77:5000", GREEN),
        ("127.0.0.78:5000", BLUE),
        ("203.0.113.0:1", GREEN),
        ("203.0.113.255:1", GREEN),
        ("203.0.114.1:1", BLUE),
        ("198.51.100.128:1", GREEN),
        ("198.51.100.127:1", BLUE),
        ("[2001:db8:1::1]:1", GREEN),
        ("[2001:db8:1:ffff:ffff:ffff:ffff:ffff]:1", GREEN),
        ("[2001:db8:2::1]:1", BLUE),
        ("[2001:db8:2::7]:1", GREEN),
        ("[2001:db8:2::6]:1", BLUE),
        ("[2001:db8:3::1]:1", GREEN),
        ("[2001:db8:3::2]:1", BLUE),
        ("[::1]:1", BLUE),
        // The probes go where they say, testers or not.
        ("127.0.0.1:40000", BLUE),
        ("127.0.0.1:40002", BLUE),
        ("[2001:db8:1::5]:40001", BLUE),
        ("[2001:db8:1::5]:40002", GREEN),
    ] {
        for random in [0, u32::MAX] {
            assert_eq!(steer(&r, from, random), want, "{from}");
        }
    }
}

#[test]
fn a_probe_is_found_past_ipv4_options() {
    let r = Route {
        to: BLUE,
        probes: vec![("10.0.0.1:4000".parse().unwrap(), GREEN)],
        ..Route::default()
    };
    let to = "10.9.9.9:80".parse().unwrap();
    for options in [0, 1, 10] {
        let syn = Syn::new("10.0.0.1:4000".parse().unwrap(), to, options);
        assert_eq!(cbpf::run(&program(&r), &syn), Ok(GREEN), "{options}");
        let syn = Syn::new("10.0.0.1:4001".parse().unwrap(), to, options);
        assert_eq!(cbpf::run(&program(&r), &syn), Ok(BLUE), "{options}");
    }
}

/// By client, the hash alone decides (whatever the random number), and it
/// is [`client_point`] below the share; an IPv6 client is its /64.
#[test]
fn a_canary_by_client_follows_the_hash_of_the_address() {
    let r = route(30, CanaryBy::Client);
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..2000 {
        let v4 = IpAddr::V4(Ipv4Addr::from(next() as u32));
        let v6 = IpAddr::V6(Ipv6Addr::from(
            (u128::from(next()) << 64) | u128::from(next()),
        ));
        for ip in [v4, v6] {
            if r.testers.as_ref().unwrap().1.iter().any(|c| c.contains(ip)) {
                continue;
            }
            let want = if client_point(ip) < threshold(30) {
                GREEN
            } else {
                BLUE
            };
            let from = SocketAddr::new(ip, 1234).to_string();
            assert_eq!(steer(&r, &from, 0), want, "{ip}");
            assert_eq!(steer(&r, &from, u32::MAX), want, "{ip}");
        }
        // Another address in the same /64: the same build.
        let IpAddr::V6(a) = v6 else { unreachable!() };
        let twin = IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ u128::from(next())));
        assert_eq!(
            steer(&r, &SocketAddr::new(v6, 1).to_string(), 0),
            steer(&r, &SocketAddr::new(twin, 1).to_string(), 0),
            "{v6} and {twin}"
        );
    }
}

/// Per connection, the random number alone decides; testers still come
/// first.
#[test]
fn a_canary_by_connection_follows_the_random_number() {
    let r = route(30, CanaryBy::Connection);
    for from in ["10.1.2.3:1", "[2001:db8:9::1]:1"] {
        assert_eq!(steer(&r, from, threshold(30) - 1), GREEN, "{from}");
        assert_eq!(steer(&r, from, threshold(30)), BLUE, "{from}");
    }
    assert_eq!(steer(&r, "127.0.0.77:1", u32::MAX), GREEN);
    // Without testers it is today's program: 4 instructions.
    let plain = Route {
        testers: None,
        probes: vec![],
        ..r
    };
    assert_eq!(program(&plain).len(), 4);
}

/// Raising the share only adds clients: none that had the canary at 30 %
/// goes back at 60 %, and 0 and 100 are no split.
#[test]
fn raising_the_share_moves_nobody_back() {
    let (at30, at60) = (route(30, CanaryBy::Client), route(60, CanaryBy::Client));
    let mut moved = 0;
    for i in 0..5000u32 {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7)), 1).to_string();
        let (a, b) = (steer(&at30, &from, 0), steer(&at60, &from, 0));
        assert!(!(a == GREEN && b == BLUE), "{from} went back");
        moved += usize::from(a != b);
    }
    assert!(
        (1000..2000).contains(&moved),
        "{moved} of 5000 joined at 60%"
    );
    for percent in [0, 100] {
        let r = Route {
            testers: None,
            ..route(percent, CanaryBy::Client)
        };
        assert_eq!(steer(&r, "10.0.0.1:1", 0), BLUE, "{percent}");
    }
}

/// Consecutive addresses in one /24 land at 30 % ± 10 points, and so do
/// random ones and consecutive /64s; the figures are in bench/RESULTS.md.
#[test]
fn the_hash_spreads_neighbouring_addresses() {
    let t = threshold(30);
    let share = |ips: &mut dyn Iterator<Item = IpAddr>| {
        let (mut n, mut below) = (0, 0);
        for ip in ips {
            n += 1;
            below += usize::from(client_point(ip) < t);
        }
        100.0 * below as f64 / n as f64
    };
    for base in [0x7f00_0200u32, 0x0a00_0000, 0xc0a8_0100, 0xcb00_7100] {
        let s = share(&mut (0..256).map(|i| IpAddr::V4(Ipv4Addr::from(base + i))));
        assert!((20.0..=40.0).contains(&s), "{base:#x}/24: {s}%");
        let s = share(&mut (0..200).map(|i| IpAddr::V4(Ipv4Addr::from(base + i))));
        assert!((20.0..=40.0).contains(&s), "{base:#x} x200: {s}%");
    }
    let s = share(
        &mut (0..256u128)
            .map(|i| IpAddr::V6(Ipv6Addr::from((0x2001_0db8_0000_0000u128 + i) << 64))),
    );
    assert!((20.0..=40.0).contains(&s), "consecutive /64s: {s}%");
}

/// What the config counts for the testers is what the program spends.
#[test]
fn the_testers_cost_what_the_config_counts() {
    let bare = Route {
        testers: Some((GREEN, vec![])),
        ..route(30, CanaryBy::Client)
    };
    let base = program(&bare).len();
    // The route's two probes, one IPv4 (9) and one IPv6 (14), and the
    // rest: the dispatch (6), the loads (2 + 8), the hash and split (5 + 8).
    assert_eq!(base, 9 + 14 + 29);
    let runs: Vec<String> = (0..600)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let runs: Vec<&str> = runs.iter().map(String::as_str).collect();
    for list in [
        &["0.0.0.0/0"][..],
        &["10.0.0.0/8"],
        &[
            "10.0.0.1",
            "10.0.0.2",
            "10.0.0.0/8",
            "192.168.0.0/16",
            "11.0.0.0/8",
        ],
        &[
            "::/0",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "2001:db8::/64",
            "::1",
            "2001:db8::/127",
        ],
        &runs,
    ] {
        let list = cidrs(list);
        let with = Route {
            testers: Some((GREEN, list.clone())),
            ..bare.clone()
        };
        assert_eq!(
            program(&with).len() - base,
            crate::deploy::clients::instructions(&list),
            "{list:?}"
        );
    }
}

/// A run of more compares than a jump reaches is chained: each network of
/// 600 /24s, the first, the 250th, the 251st and the last, is a tester.
#[test]
fn a_long_run_of_networks_is_chained() {
    let list: Vec<String> = (0..600)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let r = Route {
        to: BLUE,
        testers: Some((
            GREEN,
            cidrs(&list.iter().map(String::as_str).collect::<Vec<_>>()),
        )),
        ..Route::default()
    };
    for i in [0, 1, 249, 250, 251, 499, 500, 599] {
        let from = format!("10.{}.{}.9:1", i / 256, i % 256);
        assert_eq!(steer(&r, &from, 0), GREEN, "{from}");
    }
    for from in ["10.2.88.1:1", "10.3.0.1:1", "11.0.0.1:1"] {
        assert_eq!(steer(&r, from, 0), BLUE, "{from}");
    }
}

/// Testers up to the budget: networks of `kind` 0 (IPv4 /24s), or a mix
/// of IPv4 /24s, IPv6 /128s and /127s (`kind` 1).
fn full_list(kind: u32) -> Vec<Cidr> {
    let mut list = Vec::new();
    let mut i = 0u32;
    loop {
        let c = match (kind, i % 3) {
            (0, _) | (1, 0) => format!("10.{}.{}.0/24", i / 256 % 256, i % 256),
            (_, 1) => format!("2001:db8:{:x}::1", i),
            _ => format!("2001:db8:{:x}::/127", i),
        };
        list.push(Cidr::parse(&c).unwrap().0);
        if crate::deploy::clients::check_fits(&list).is_err() {
            list.pop();
            return list;
        }
        i += 1;
    }
}

/// A full testers list, 8 IPv6 probes and the client hash fit in 4,096
/// instructions, pass the kernel's checks in the interpreter, and the
/// kernel takes them; so does the same list with a random split.
#[test]
fn the_largest_program_fits_and_the_kernel_takes_it() {
    let probes: Vec<(SocketAddr, u32)> = (0..8)
        .map(|i| {
            (
                SocketAddr::new("2001:db8:ffff::1".parse().unwrap(), 5000 + i),
                BLUE,
            )
        })
        .collect();
    let g = group(IpAddr::from([127, 0, 0, 1])).expect("127.0.0.1");
    for (kind, by) in [
        (0, CanaryBy::Client),
        (1, CanaryBy::Client),
        (1, CanaryBy::Connection),
    ] {
        let list = full_list(kind);
        let r = Route {
            to: BLUE,
            probes: probes.clone(),
            split: Some((GREEN, 30)),
            split_by: by,
            testers: Some((GREEN, list.clone())),
        };
        let p = program(&r);
        assert!(p.len() <= 4096, "{} instructions", p.len());
        assert!(p.len() > 3900, "{} instructions: not full", p.len());
        cbpf::check(&p).unwrap();
        attach(g.0.as_fd(), &p).unwrap_or_else(|e| panic!("{} instructions: {e}", p.len()));
        // The last testers of each family, past thousands of
        // instructions, still match.
        for last in [
            list.iter().rfind(|c| c.addr.is_ipv4()),
            list.iter().rfind(|c| c.addr.is_ipv6()),
        ]
        .into_iter()
        .flatten()
        {
            let from = SocketAddr::new(last.addr, 9).to_string();
            assert_eq!(steer(&r, &from, u32::MAX), GREEN, "{last}");
        }
        eprintln!("{} testers ({kind}): {} instructions", list.len(), p.len());
    }
}

/// In the kernel: the tester and the client hash with clients bound to
/// addresses of 127.0.0.0/8 (every one is local on Linux).
#[test]
fn the_kernel_steers_testers_and_clients_by_address() {
    let g = group(IpAddr::from([127, 0, 0, 1])).expect("127.0.0.1");
    let addr = g.0.local_addr().unwrap();
    let mut r = Route {
        to: BLUE,
        split: Some((GREEN, 30)),
        testers: Some((GREEN, cidrs(&["127.0.0.77", "127.0.9.0/24"]))),
        ..Route::default()
    };
    attach(g.0.as_fd(), &program(&r)).unwrap();
    let from = |ip: [u8; 4]| SocketAddr::new(IpAddr::from(ip), 0);
    for _ in 0..5 {
        assert_eq!(landed(&g, &connect_from(from([127, 0, 0, 77]), addr)), 1);
        assert_eq!(landed(&g, &connect_from(from([127, 0, 9, 200]), addr)), 1);
    }
    let mut canary = Vec::new();
    for i in 1..=100u8 {
        let ip = [127, 0, 2, i];
        let sides: Vec<usize> = (0..3)
            .map(|_| landed(&g, &connect_from(from(ip), addr)))
            .collect();
        assert!(sides.iter().all(|s| *s == sides[0]), "{ip:?}: {sides:?}");
        let want = client_point(IpAddr::from(ip)) < threshold(30);
        assert_eq!(sides[0] == 1, want, "{ip:?}");
        canary.push(sides[0] == 1);
    }
    let n = canary.iter().filter(|c| **c).count();
    assert!((15..=45).contains(&n), "{n} of 100 on the 30% canary");
    // A probe's exact source still reaches its color.
    let probe = socket2_like(from([127, 0, 0, 77]));
    r.probes = vec![(probe.local(), BLUE)];
    attach(g.0.as_fd(), &program(&r)).unwrap();
    assert_eq!(landed(&g, &probe.connect(addr).unwrap()), 0);
}

/// IPv6 in the kernel, where ::1 exists: a tester /128 and the rest by hash.
#[test]
fn the_kernel_steers_an_ipv6_tester() {
    let Some(g) = group(IpAddr::V6(Ipv6Addr::LOCALHOST)) else {
        eprintln!("skipped: no ::1 on this machine");
        return;
    };
    let addr = g.0.local_addr().unwrap();
    let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let mut r = Route {
        to: BLUE,
        split: Some((GREEN, 50)),
        testers: Some((GREEN, cidrs(&["::1"]))),
        ..Route::default()
    };
    attach(g.0.as_fd(), &program(&r)).unwrap();
    for _ in 0..5 {
        assert_eq!(landed(&g, &connect_from(SocketAddr::new(ip, 0), addr)), 1);
    }
    // Not a tester: the hash of ::/64 decides, the same for every connection.
    r.testers = Some((GREEN, cidrs(&["2001:db8::/32"])));
    attach(g.0.as_fd(), &program(&r)).unwrap();
    let want = usize::from(client_point(ip) < threshold(50));
    for _ in 0..5 {
        assert_eq!(
            landed(&g, &connect_from(SocketAddr::new(ip, 0), addr)),
            want
        );
    }
}
