//! Traffic by client (issue 23), under load from keep-alive and
//! new-connection clients: not one request fails. Clients bind source
//! addresses of 127.0.0.0/8 (every one is local on Linux); the load comes
//! from 127.0.0.1, which is no tester.
//!
//! - a preview reaches the testers alone (a tester on 20 of 20
//!   connections, 40 other addresses on none), then a share, then everyone;
//! - a canary by client keeps each of 200 addresses on one build, gives
//!   15-45 % of them the new one at 30 %, and moves none back at 60 %;
//! - `bgctl compare` marks a path the new build answers 500 and exits 9;
//! - bad input is refused with the fix named, and changes nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::load::Load;

/// Testers 127.0.0.77 and 127.0.9.0/24; checked every 500 ms; a standby.
fn setup(traffic: &str) -> Setup {
    Setup {
        health: "http = \"/healthz\"\ntimeout = \"20s\"\ninterval = \"500ms\"".into(),
        tail: format!(
            "[traffic]\nstandby = \"1m\"\ntesters = [\"127.0.0.77\", \"127.0.9.0/24\"]\n{traffic}\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
        ),
        ..Setup::default()
    }
}

/// One GET over a new connection from `from` (any port); (status, body).
fn get_from(from: [u8; 4], addr: &str, path: &str) -> (u16, String) {
    let to: SocketAddr = addr.parse().unwrap();
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by socket(2) and nobody else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let local = nix::sys::socket::SockaddrIn::new(from[0], from[1], from[2], from[3], 0);
    nix::sys::socket::bind(fd.as_raw_fd(), &local).unwrap();
    let SocketAddr::V4(to) = to else {
        panic!("{addr} is no IPv4 address")
    };
    nix::sys::socket::connect(fd.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(to))
        .unwrap_or_else(|e| panic!("connect from {from:?} to {addr}: {e}"));
    let mut s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The release that answers `n` new connections from `from`, each.
fn releases_from(from: [u8; 4], addr: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let (code, body) = get_from(from, addr, "/");
            assert_eq!(code, 200, "{from:?}: {body}");
            release_of(&body).unwrap()
        })
        .collect()
}

fn ok(out: &std::process::Output, what: &str, bgd: &Bgd) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        text(&out.stderr),
        text(&out.stdout),
        bgd.log()
    );
}

/// The text of `/metrics`.
fn metrics(bgd: &Bgd) -> String {
    let addr = bgd.status()["metrics"].as_str().unwrap().to_string();
    let (code, body) = get(&addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

fn events(bgd: &Bgd) -> Vec<Value> {
    let out = bgd.bgctl(&["events", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn last_history(bgd: &Bgd, kind: &str) -> Value {
    wait_until(&format!("a {kind} record"), Duration::from_secs(5), || {
        let out = bgd.bgctl(&["history", "--json"]);
        let mut records: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        records.pop().filter(|r| r["kind"] == kind)
    })
}

/// `release --preview`: bgctl exits 0 once the testers reach the new build;
/// a tester gets it on 20 of 20 connections, 40 other addresses on none;
/// status, events, history and metrics say so. Then `promote 10` keeps the
/// testers on it, and `promote` gives it everyone.
#[test]
fn a_preview_reaches_the_testers_alone_then_a_share_then_everyone() {
    let bgd = Bgd::start(setup(""));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    let b2 = example_build(bgd.dir.path(), "b2", "v2");
    let out = bgd.bgctl(&["release", b2.to_str().unwrap(), "--preview"]);
    ok(&out, "release --preview", &bgd);
    assert!(
        text(&out.stdout).starts_with("preview: release 2 on green gets the testers (2 networks in traffic.testers); everyone else stays on blue"),
        "{}",
        text(&out.stdout)
    );
    let st = bgd.status();
    assert_eq!(
        (st["live"].as_str(), st["green"]["state"].as_str()),
        (Some("blue"), Some("preview")),
        "{st}"
    );
    assert_eq!(st["canary"]["preview"], true, "{st}");
    assert_eq!(
        (st["testers"].as_u64(), st["canary_by"].as_str()),
        (Some(2), Some("client"))
    );
    assert_eq!(st["traffic"], serde_json::json!({"blue": 100, "green": 0}));

    let tester = releases_from([127, 0, 0, 77], &addr, 20);
    assert_eq!(tester, [2; 20], "the tester on the new build every time");
    assert_eq!(releases_from([127, 0, 9, 200], &addr, 5), [2; 5], "the /24");
    for i in 1..=40 {
        let got = releases_from([127, 0, 1, i], &addr, 3);
        assert_eq!(got, [1; 3], "127.0.1.{i} reached the preview");
    }
    let text_status = text(&bgd.bgctl(&["status"]).stdout);
    assert!(text_status.contains("green preview"), "{text_status}");
    assert!(
        text_status.contains("traffic.testers: 2 networks; canary_by = \"client\""),
        "{text_status}"
    );

    let preview = events(&bgd)
        .into_iter()
        .find(|e| e["type"] == "preview")
        .expect("a preview event");
    assert_eq!(
        (preview["release"].as_u64(), preview["testers"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(last_history(&bgd, "preview")["release"], 2);
    let m = metrics(&bgd);
    for line in [
        "bgd_preview{color=\"green\"} 1",
        "bgd_preview{color=\"blue\"} 0",
        "bgd_traffic_testers 2",
        "bgd_traffic_canary_by{by=\"client\"} 1",
        "bgd_traffic_canary_by{by=\"connection\"} 0",
    ] {
        assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
    }

    let out = bgd.bgctl(&["promote", "10"]);
    ok(&out, "promote 10", &bgd);
    assert!(text(&out.stdout)
        .starts_with("promoted from its preview: release 2 on green gets 10% of clients"));
    let st = bgd.status();
    assert_eq!(
        (
            st["canary"]["percent"].as_u64(),
            st["canary"]["preview"].as_bool()
        ),
        (Some(10), Some(false))
    );
    assert_eq!(st["green"]["state"], "canary");
    assert_eq!(
        releases_from([127, 0, 0, 77], &addr, 10),
        [2; 10],
        "testers stay on it"
    );
    let canary_share = events(&bgd)
        .into_iter()
        .rfind(|e| e["type"] == "canary_share")
        .expect("a canary_share event");
    assert_eq!(
        (
            canary_share["canary_by"].as_str(),
            canary_share["testers"].as_u64()
        ),
        (Some("client"), Some(2))
    );
    assert!(metrics(&bgd)
        .lines()
        .any(|l| l == "bgd_preview{color=\"green\"} 0"));

    ok(&bgd.bgctl(&["promote"]), "promote", &bgd);
    assert_eq!(bgd.status()["live"], "green");
    for i in 1..=10 {
        assert_eq!(
            releases_from([127, 0, 1, i], &addr, 2),
            [2; 2],
            "127.0.1.{i}"
        );
    }
    load.finish_clean();
}

/// A 30 % canary by client (the default): each of 200 addresses is answered
/// by one build on all of its connections, 15-45 % of them by the new one;
/// at 60 % no address that was on the new build goes back.
#[test]
fn a_canary_by_client_keeps_each_client_on_one_build() {
    let bgd = Bgd::start(setup(""));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    let b2 = example_build(bgd.dir.path(), "b2", "v2");
    ok(
        &bgd.bgctl(&["release", b2.to_str().unwrap(), "--canary", "30"]),
        "release --canary 30",
        &bgd,
    );
    let clients: Vec<[u8; 4]> = (1..=200).map(|i| [127, 0, 2, i as u8]).collect();
    let on_new = |n: usize| -> Vec<bool> {
        clients
            .iter()
            .map(|c| {
                let got = releases_from(*c, &addr, n);
                assert!(
                    got.iter().all(|r| *r == got[0]),
                    "{c:?} was answered by both builds: {got:?}"
                );
                got[0] == 2
            })
            .collect()
    };
    let at30 = on_new(4);
    let n30 = at30.iter().filter(|b| **b).count();
    assert!(
        (30..=90).contains(&n30),
        "{n30} of 200 addresses on the 30% canary"
    );
    ok(&bgd.bgctl(&["promote", "60"]), "promote 60", &bgd);
    let at60 = on_new(2);
    let back: Vec<_> = (0..200)
        .filter(|i| at30[*i] && !at60[*i])
        .map(|i| clients[i])
        .collect();
    assert!(back.is_empty(), "back on the old build at 60%: {back:?}");
    let n60 = at60.iter().filter(|b| **b).count();
    assert!(n60 > n30, "{n60} at 60% after {n30} at 30%");
    eprintln!("clients on the new build: {n30} of 200 at 30%, {n60} at 60%");
    load.finish_clean();
}

/// A v2 whose `/items` answers 500 (v1: 200): `bgctl compare` marks that
/// path's status as differing and exits 9; a path both answer alike exits 0.
#[test]
fn compare_marks_a_path_the_new_build_fails_and_exits_9() {
    let items = |dir: &std::path::Path, name: &str, version: &str, code: u16| {
        let build = example_build(dir, name, version);
        let server = build.join("server.py");
        let src = std::fs::read_to_string(&server).unwrap().replace(
            "        elif path == \"/slow\":",
            &format!("        elif path == \"/items\":\n            self.reply({code}, \"items of {version}\\n\")\n        elif path == \"/slow\":"),
        );
        std::fs::write(&server, src).unwrap();
        build
    };
    let bgd = Bgd::start(setup(""));
    bgd.release(&items(bgd.dir.path(), "b1", "v1", 200));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    let b2 = items(bgd.dir.path(), "b2", "v2", 500);
    ok(
        &bgd.bgctl(&["release", b2.to_str().unwrap(), "--preview"]),
        "preview",
        &bgd,
    );

    let out = bgd.bgctl(&["compare", "/", "/items"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(9), "{shown}\n{}", text(&out.stderr));
    assert!(
        shown.starts_with(
            "live blue (release 1) beside preview green (release 2): 5 requests per path to each"
        ),
        "{shown}"
    );
    let row = |p: &str| {
        shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(p))
            .unwrap_or_else(|| panic!("no row for {p}:\n{shown}"))
            .to_string()
    };
    assert!(row("/items").ends_with("status, body"), "{shown}");
    assert!(row("/items").contains(" 500 "), "{shown}");
    assert!(!row("/").contains("status"), "{shown}");

    let out = bgd.bgctl(&["compare", "--json", "/items"]);
    assert_eq!(out.status.code(), Some(9));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &c["paths"][0];
    assert_eq!(
        (
            p["live"]["statuses"].clone(),
            p["other"]["statuses"].clone()
        ),
        (serde_json::json!([200]), serde_json::json!([500]))
    );
    assert_eq!(c["other"]["role"], "preview");

    // health.http's path, by default: both answer 200.
    let out = bgd.bgctl(&["compare"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("/healthz"),
        "{}",
        text(&out.stdout)
    );
    // The repeated checks ran beside the compares; bgd still routes all
    // else as before.
    assert_eq!(releases_from([127, 0, 1, 1], &addr, 5), [1; 5]);
    assert_eq!(releases_from([127, 0, 0, 77], &addr, 5), [2; 5]);
    load.finish_clean();
}

/// Each bad input gets a message that names the fix, and changes nothing.
#[test]
fn bad_input_is_refused_with_the_fix() {
    let bgd = Bgd::start(Setup {
        health: "http = \"/healthz\"\ntimeout = \"20s\"".into(),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let b2 = example_build(bgd.dir.path(), "b2", "v2");
    let b2 = b2.to_str().unwrap();
    for (args, code, says) in [
        (&["release", b2, "--preview"][..], 5, "traffic.testers is empty: list the testers' addresses"),
        (&["release", b2, "--preview", "--canary", "10"], 2, "--preview and --canary do not go together"),
        (&["compare"], 5, "nothing runs beside the live blue, so there is nothing to compare: `bgctl release DIR --preview`"),
        (&["compare", "api/items"], 2, "compare path \"api/items\" is not absolute: start it with '/', such as \"/api/items\""),
        (&["promote"], 5, "nothing to promote"),
        (&["promote", "20"], 5, "nothing to promote"),
        (&["abort"], 5, "nothing to abort"),
    ] {
        let out = bgd.bgctl(args);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
    }
    let st = bgd.status();
    assert_eq!(
        (st["live"].as_str(), st["blue"]["release"].as_u64()),
        (Some("blue"), Some(1)),
        "{st}"
    );
    assert!(st["green"]["pid"].is_null(), "{st}");
    assert!(st["canary"].is_null(), "{st}");
}

/// `bgd --check` on `[traffic] testers`, `canary_by` and `[compare] paths`:
/// errors name the place and the fix, a network with host bits is a
/// warning, and a list too long for the kernel's program names the limit.
#[test]
fn check_refuses_testers_it_cannot_steer() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bgd.toml");
    let check = |listen: &str, traffic: &str| {
        std::fs::write(
            &config,
            format!("name = \"x\"\nroot = \"r\"\n[[listen]]\nname = \"http\"\naddress = \"{listen}\"\n[app]\ncommand = [\"./s\"]\nallow_root = true\n[health]\nhttp = \"/\"\n{traffic}\n"),
        )
        .unwrap();
        let mut c = Command::new(BGD);
        c.arg("--config").arg(&config).arg("--check");
        let out = run_with_deadline(c, Duration::from_secs(30));
        assert!(
            !dir.path().join("r").exists(),
            "--check must not create anything"
        );
        (out.status.code(), text(&out.stderr))
    };
    let file = config.display();
    let many: Vec<String> = (0..4000)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let too_many = format!("[traffic]\ntesters = [{}]", many.join(", "));
    for (listen, traffic, says) in [
        ("127.0.0.1:0", "[traffic]\ntesters = [\"10.0.0.0/33\"]", format!("bgd: {file}:12:12: traffic.testers[0]: \"10.0.0.0/33\": an IPv4 prefix is at most 32 bits, not 33")),
        ("127.0.0.1:0", "[traffic]\ntesters = [\"2001:db8::/129\"]", "an IPv6 prefix is at most 128 bits, not 129".into()),
        ("127.0.0.1:0", "[traffic]\ntesters = [\"10.0.0.1\", \"tester\"]", "traffic.testers[1]: \"tester\" is not an address or network: write an IPv4 or IPv6 address".into()),
        ("127.0.0.1:0", too_many.as_str(), "traffic.testers is too long: its 4000 networks take 4034 instructions of the kernel's steering program, which has room for 3900 (a classic BPF program holds at most 4096".into()),
        ("127.0.0.1:0", "[traffic]\nmode = \"shared\"\ntesters = [\"10.0.0.1\"]", "traffic.testers needs traffic.mode = \"gate\": in shared mode both colors accept from one socket".into()),
        ("unix:app.sock", "[traffic]\ncanary_by = \"client\"", "traffic.canary_by = \"client\" steers new TCP connections in the kernel, and [[listen]] \"http\" is a Unix socket".into()),
        ("127.0.0.1:0", "[traffic]\ncanary_by = \"random\"", "traffic.canary_by \"random\" is not known: write \"client\"".into()),
        ("127.0.0.1:0", "[compare]\npaths = [\"items\"]", "compare.paths[0]: compare path \"items\" is not absolute".into()),
    ] {
        let (code, err) = check(listen, traffic);
        assert_eq!(code, Some(2), "{traffic}: {err}");
        assert!(err.contains(&says), "{traffic}:\nwant {says}\ngot {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    let (code, err) = check("127.0.0.1:0", "[traffic]\ntesters = [\"10.1.2.3/16\"]");
    assert_eq!(code, Some(0), "{err}");
    let want = format!("warning: {file}:12:12: traffic.testers[0]: \"10.1.2.3/16\" has bits set past its /16 prefix, so it means 10.1.0.0/16");
    assert!(err.starts_with(&want), "want {want}\ngot {err}");
}
