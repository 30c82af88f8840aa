//! Pause for database work (issue 24): new connections wait in the kernel
//! while no app process runs, then the next build serves them. Clients have
//! a 40 s timeout: a request that waits is fine, one that fails is not.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::load::{Load, Sample};

/// The clients' timeout: far beyond any pause here.
const TIMEOUT: Duration = Duration::from_secs(40);

/// bgd serving release 1 (`v1`); its public address.
fn serving(setup: Setup) -> (Bgd, String) {
    let bgd = Bgd::start(setup);
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    (bgd, addr)
}

/// `bgctl ARGS`, asserting exit 0; returns stdout and stderr.
fn ok(bgd: &Bgd, args: &[&str]) -> String {
    let out = bgd.bgctl(args);
    assert!(
        out.status.success(),
        "bgctl {args:?} failed ({}): {}\n{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout) + &text(&out.stderr)
}

/// `bgctl pause`, asserting it returns once no app process runs; the
/// instant it was run.
fn pause(bgd: &Bgd, args: &[&str]) -> Instant {
    let asked = Instant::now();
    let said = ok(bgd, &[&["pause"], args].concat());
    assert!(said.contains("no app process runs"), "{said}");
    assert!(said.contains("[drain] draining"), "progress lines: {said}");
    assert!(
        app_processes(&bgd.root(), None).is_empty(),
        "an app process still runs after `bgctl pause` returned"
    );
    asked
}

/// Waits until the pause's status satisfies `f`; returns it.
fn wait_pause(bgd: &Bgd, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, Duration::from_secs(30), || {
        let p = bgd.status()["paused"].clone();
        (!p.is_null() && f(&p)).then_some(p)
    })
}

/// The failures among `samples`, at most 5 of them shown.
fn failures(samples: &[Sample]) -> Vec<&String> {
    samples
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .collect()
}

/// Lets `load` answer `more` requests more, then stops it.
fn finish_after_more(load: Load, more: usize) -> Vec<Sample> {
    let n = load.count();
    wait_until("more answers", Duration::from_secs(30), || {
        (load.count() >= n + more).then_some(())
    });
    load.finish()
}

/// Under 6 new-connection clients: pause, check that no app process runs,
/// wait 6 s, release v2. No request fails, every request made during the
/// pause is answered by v2, and the longest waited at least 5 s.
#[test]
fn waiting_clients_are_served_by_the_release_that_ends_the_pause() {
    let (bgd, addr) = serving(Setup::default());
    let load = Load::start_with(&addr, 0, 6, TIMEOUT);
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 30).then_some(())
    });
    let paused = pause(&bgd, &[]);
    let p = wait_pause(&bgd, "6 clients waiting for 6 s", |p| {
        p["waiting"] == 6 && p["seconds"].as_u64() >= Some(6) && p["stage"] == "waiting"
    });
    assert_eq!(p["before"], 1, "{p}");
    let status = bgd.status();
    assert_eq!(status["blue"]["state"], "stopped", "{status}");
    assert_eq!(status["receiving"], "green", "{status}");
    let human = ok(&bgd, &["status"]);
    assert!(human.contains("state: paused since"), "{human}");
    assert!(human.contains("6 connections wait on green"), "{human}");

    let b2 = example_build(bgd.dir.path(), "b2", "v2");
    let began = Instant::now();
    ok(&bgd, &["release", b2.to_str().unwrap()]);
    let samples = finish_after_more(load, 30);
    assert_eq!(failures(&samples), Vec::<&String>::new());
    // The requests that waited: made during the pause, answered after the
    // release began.
    let waited: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started > paused && s.started < began && s.started + s.took > began)
        .collect();
    assert!(
        waited.len() >= 6,
        "{} requests after the pause",
        waited.len()
    );
    for s in &waited {
        let body = s.result.as_ref().unwrap();
        assert_eq!(release_of(body), Some(2), "a waiting request got {body:?}");
    }
    let longest = waited.iter().map(|s| s.took).max().unwrap();
    assert!(
        longest >= Duration::from_secs(5),
        "the longest wait was {longest:?}: the requests failed over rather than waited"
    );
    assert!(bgd.status()["paused"].is_null());
    let history = ok(&bgd, &["history"]);
    assert!(history.contains("pause"), "{history}");
    let events = ok(&bgd, &["events"]);
    for e in ["paused", "pause_stopped", "pause_ended"] {
        assert!(events.contains(e), "no {e} event: {events}");
    }
}

/// Pause, then resume: the build live before the pause serves again, from
/// its kept copy, and no request fails.
#[test]
fn resume_brings_back_the_previous_build_and_no_request_fails() {
    let (bgd, addr) = serving(Setup::default());
    let load = Load::start_with(&addr, 0, 4, TIMEOUT);
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });
    pause(&bgd, &[]);
    wait_pause(&bgd, "4 clients waiting for 2 s", |p| {
        p["waiting"] == 4 && p["seconds"].as_u64() >= Some(2)
    });
    let said = ok(&bgd, &["resume"]);
    assert!(said.contains("release 1"), "{said}");
    let began = Instant::now();
    let samples = finish_after_more(load, 20);
    assert_eq!(failures(&samples), Vec::<&String>::new());
    for s in samples.iter().filter(|s| s.started > began) {
        assert_eq!(release_of(s.result.as_ref().unwrap()), Some(1));
    }
    let status = bgd.status();
    assert!(status["paused"].is_null(), "{status}");
    assert_eq!(status["live"], "green");
    assert_eq!(status["green"]["release"], 1);
}

/// `pause --max 2s --page DIR`: after 2 s the waiting clients get the
/// maintenance page (the one examples/ ships), new ones too; `resume` then
/// replaces it by a swap. Not one request fails at the TCP level.
#[test]
fn past_max_the_maintenance_page_answers_and_resume_replaces_it() {
    let (bgd, addr) = serving(Setup::default());
    let load = Load::start_with(&addr, 0, 4, TIMEOUT);
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });
    let page = repo().join("examples/hello/maintenance");
    pause(&bgd, &["--max", "2s", "--page", page.to_str().unwrap()]);
    let p = wait_pause(&bgd, "the page to serve", |p| p["stage"] == "page");
    assert!(p["seconds"].as_u64() >= Some(2), "{p}");
    let (code, body) = get(&addr, "/").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Down for maintenance"), "{body}");
    ok(&bgd, &["resume"]);
    let began = Instant::now();
    let samples = finish_after_more(load, 20);
    // A page's 503 is an answer; a reset or a timeout is a failure.
    let tcp: Vec<&String> = failures(&samples)
        .into_iter()
        .filter(|e| !e.starts_with("status: HTTP/1.1 503"))
        .collect();
    assert_eq!(tcp, Vec::<&String>::new());
    let pages = failures(&samples).len();
    assert!(pages >= 4, "only {pages} answers were the page");
    for s in samples.iter().filter(|s| s.started > began) {
        assert_eq!(release_of(s.result.as_ref().unwrap()), Some(1));
    }
    assert!(bgd.status()["paused"].is_null());
    // The page never becomes a rollback target.
    let releases = ok(&bgd, &["releases", "--json"]);
    let listed: Value = serde_json::from_str(&releases).unwrap();
    let page_release = listed["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == "maintenance page");
    if let Some(r) = page_release {
        assert_ne!(r["state"], "good", "{r}");
    }
}

/// More clients than the backlog: the queue holds 8, the kernel drops the
/// other SYNs and the clients retry them. All are answered once the build
/// starts; none is reset.
#[test]
fn clients_beyond_the_backlog_retry_their_syn_and_are_all_answered() {
    let (bgd, addr) = serving(Setup {
        http_extra: "backlog = 8",
        ..Setup::default()
    });
    pause(&bgd, &[]);
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = one_request(&addr, Duration::from_secs(60));
                (answer, started.elapsed())
            })
        })
        .collect();
    let p = wait_pause(&bgd, "a full queue for 3 s", |p| {
        p["waiting"].as_u64() >= Some(8) && p["seconds"].as_u64() >= Some(3)
    });
    // The kernel queues a little past the backlog (its check is `>`), but
    // far from all 24: the rest retry their SYN.
    let queued = p["waiting"].as_u64().unwrap();
    assert!(queued <= 12, "the queue holds about the backlog: {p}");
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let mut longest = Duration::ZERO;
    for c in clients {
        let (answer, took) = c.join().unwrap();
        let body = answer.unwrap_or_else(|e| panic!("a client failed: {e}"));
        assert_eq!(release_of(&body), Some(2), "{body}");
        longest = longest.max(took);
    }
    eprintln!("longest wait beyond the backlog: {longest:?}");
}

/// Keep-alive clients of the old color at the pause: their requests in
/// flight finish, and their next request waits on a new connection.
#[test]
fn keep_alive_clients_finish_in_flight_and_their_next_request_waits() {
    let (bgd, addr) = serving(Setup::default());
    let load = Load::start_with(&addr, 4, 0, TIMEOUT);
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 40).then_some(())
    });
    let paused = pause(&bgd, &[]);
    wait_pause(&bgd, "the 4 clients' next requests waiting", |p| {
        p["waiting"] == 4 && p["seconds"].as_u64() >= Some(2)
    });
    let began = Instant::now();
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let samples = finish_after_more(load, 40);
    assert_eq!(failures(&samples), Vec::<&String>::new());
    let waited = samples
        .iter()
        .filter(|s| s.started > paused && s.started < began && s.started + s.took > began)
        .count();
    assert!(waited >= 4, "{waited} requests waited");
}

/// bgd SIGKILLed during a pause, then started again: still paused (the
/// holder kept the sockets and their queue), and the clients that waited
/// across the restart are served after the release.
#[test]
fn a_pause_survives_the_death_of_bgd() {
    let (mut bgd, addr) = serving(Setup::default());
    let load = Load::start_with(&addr, 0, 4, Duration::from_secs(60));
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });
    let paused = pause(&bgd, &[]);
    wait_pause(&bgd, "4 clients waiting", |p| p["waiting"] == 4);
    bgd.stop(libc::SIGKILL);
    assert!(
        !relays(&bgd.root()).is_empty(),
        "no holder keeps the sockets while bgd is away"
    );
    bgd.respawn_on(&addr);
    let p = wait_pause(&bgd, "the restarted bgd to be paused", |_| true);
    assert_eq!(p["waiting"], 4, "the waiting connections survived: {p}");
    assert!(app_processes(&bgd.root(), None).is_empty());
    let began = Instant::now();
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let samples = finish_after_more(load, 20);
    assert_eq!(failures(&samples), Vec::<&String>::new());
    let waited: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started > paused && s.started < began && s.started + s.took > began)
        .collect();
    assert!(waited.len() >= 4, "{} waited", waited.len());
    for s in waited {
        assert_eq!(release_of(s.result.as_ref().unwrap()), Some(2));
    }
    assert!(bgd.status()["paused"].is_null());
}

/// Each bad input gets an error that names the fix, and changes nothing.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let (bgd, _addr) = serving(Setup::default());
    let refused = |args: &[&str], code: i32, says: &str| {
        let out = bgd.bgctl(args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "bgctl {args:?}: {err}");
        assert!(err.contains(says), "bgctl {args:?}: {err}");
        assert!(bgd.status()["paused"].is_null(), "bgctl {args:?} paused");
    };
    refused(&["resume"], 5, "not paused");
    refused(&["pause", "--page", "/tmp"], 5, "give both");
    refused(&["pause", "--max", "5"], 2, "has no unit");
    let missing = bgd.dir.path().join("no-such-page");
    refused(
        &["pause", "--max", "5s", "--page", missing.to_str().unwrap()],
        5,
        "does not exist",
    );
    // During a release.
    let slow = wrapped_build(bgd.dir.path(), "slow", "v2", "import time; time.sleep(3)");
    let release = bgd.release_in_background(&slow);
    bgd.wait_step("wait_ready");
    refused(&["pause"], 4, "in progress");
    assert!(release.join().unwrap().status.success());
    // While paused.
    pause(&bgd, &[]);
    let out = bgd.bgctl(&["pause"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out.stderr).contains("already paused"));
    assert!(text(&out.stderr).contains("bgctl resume"));
    ok(&bgd, &["resume"]);
}

/// Pauses, starts `client` (one request) and waits until it waits in a
/// queue; returns its thread.
fn one_waiting(
    bgd: &Bgd,
    client: impl FnOnce() -> Result<String, String> + Send + 'static,
) -> std::thread::JoinHandle<Result<String, String>> {
    pause(bgd, &[]);
    let waiting = std::thread::spawn(client);
    wait_pause(bgd, "a client waiting", |p| p["waiting"] == 1);
    waiting
}

/// Releases a build of the example as `version` and asserts that the
/// waiting client's request is answered by it.
fn release_serves(
    bgd: &Bgd,
    waiting: std::thread::JoinHandle<Result<String, String>>,
    version: &str,
    release: u64,
) {
    bgd.release(&example_build(bgd.dir.path(), version, version));
    let body = waiting
        .join()
        .unwrap()
        .expect("the waiting client is answered");
    assert_eq!(release_of(&body), Some(release), "{body}");
}

/// A release that fails during the pause leaves it in place, and bgctl
/// and status say so; the next one ends it.
#[test]
fn a_failed_release_leaves_the_pause_in_place() {
    let (bgd, addr) = serving(Setup::default());
    let waiting = one_waiting(&bgd, move || one_request(&addr, TIMEOUT));
    let bad = wrapped_build(bgd.dir.path(), "bad", "v2", "import sys; sys.exit(3)");
    let out = bgd.bgctl(&["release", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("still paused since"), "{err}");
    let p = wait_pause(&bgd, "the pause to stay", |_| true);
    assert!(p["last_failure"].as_str().unwrap().contains("still paused"));
    assert_eq!(p["stage"], "waiting");
    release_serves(&bgd, waiting, "v3", 3);
}

/// Shared mode: the one socket's queue simply waits.
#[test]
fn a_pause_in_shared_mode_holds_the_shared_queue() {
    let (bgd, addr) = serving(Setup {
        tail: "[traffic]\nmode = \"shared\"\n".into(),
        ..Setup::default()
    });
    let waiting = one_waiting(&bgd, move || one_request(&addr, TIMEOUT));
    release_serves(&bgd, waiting, "v2", 2);
}

/// A Unix listener: the public path is pointed at the waiting color's
/// socket.
#[test]
fn a_pause_holds_unix_clients_on_the_waiting_colors_socket() {
    let (bgd, _addr) = serving(Setup {
        extra_listen: "[[listen]]\nname = \"unix\"\naddress = \"unix:app.sock\"\n".into(),
        ..Setup::default()
    });
    let public = bgd.dir.path().join("app.sock");
    let waiting = one_waiting(&bgd, move || unix_request(&public));
    release_serves(&bgd, waiting, "v2", 2);
}

/// One GET / over a new TCP connection, with `timeout` to connect
/// (SYN retries included) and to read; the body, or why it failed.
fn one_request(addr: &str, timeout: Duration) -> Result<String, String> {
    let to: std::net::SocketAddr = addr.parse().unwrap();
    let mut s =
        std::net::TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    exchange(&mut s)
}

fn unix_request(path: &std::path::Path) -> Result<String, String> {
    let mut s =
        std::os::unix::net::UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    exchange(&mut s)
}

/// Sends one GET / and reads the answer to its end; a 200's body.
fn exchange(s: &mut (impl Read + Write)) -> Result<String, String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    match resp.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("bad answer: {resp:?}")),
    }
}

/// A pause right after a release, while the previous build still runs as
/// the standby (30 s by default) in the color whose socket will hold the
/// connections: bgd drains the standby first, then holds the connections
/// there and stops the live color. Under 4 new-connection clients no
/// request fails, none made after `pause` was asked for reaches the
/// standby's build, and every request made after `pause` returned is
/// answered by the release that ends the pause.
#[test]
fn a_pause_within_the_standby_window_drains_the_standby_first() {
    let (bgd, addr) = serving(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    assert_eq!(bgd.status()["blue"]["state"], "standby");
    let load = Load::start_with(&addr, 0, 4, TIMEOUT);
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });
    let asked = Instant::now();
    let said = ok(&bgd, &["pause"]);
    assert!(said.contains("draining the standby blue"), "{said}");
    let paused = Instant::now();
    assert!(app_processes(&bgd.root(), None).is_empty());
    wait_pause(&bgd, "clients waiting on blue", |p| {
        p["color"] == "blue" && p["waiting"].as_u64() >= Some(1)
    });
    ok(
        &bgd,
        &[
            "release",
            example_build(bgd.dir.path(), "b3", "v3").to_str().unwrap(),
        ],
    );
    let samples = finish_after_more(load, 20);
    assert_eq!(failures(&samples), Vec::<&String>::new());
    for s in samples.iter().filter(|s| s.started > paused) {
        let body = s.result.as_ref().unwrap();
        assert_eq!(release_of(body), Some(3), "{body:?}");
    }
    // Until the standby had stopped, new connections went to the live
    // color (release 2): none made after the pause was asked for reached
    // the standby's build, release 1.
    let standby: Vec<&String> = samples
        .iter()
        .filter(|s| s.started > asked)
        .filter_map(|s| s.result.as_ref().ok())
        .filter(|b| release_of(b) == Some(1))
        .collect();
    assert_eq!(standby, Vec::<&String>::new());
}
