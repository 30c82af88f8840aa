//! A build that only looks ready never keeps the traffic (issue 25): a
//! daemonizing server is refused at the switch, and a build that dies right
//! after going live hands the traffic back to the standby that the default
//! `traffic.standby` (30 s) keeps warm. Under load, no request the live
//! color could serve fails.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::*;
use crate::load::Load;

/// Python prelude: the main process forks a server that calls setsid()
/// and serves the inherited socket; the main process exits once the
/// server is about to serve (`wait` seconds later).
fn fork_setsid(wait: f64) -> String {
    format!(
        r#"
import os, sys, time
pid = os.fork()
if pid > 0:
    while not os.path.exists("serving"):
        time.sleep(0.001)
    time.sleep({wait})
    os._exit(0)
os.setsid()
os.environ["LISTEN_PID"] = str(os.getpid())
open("serving", "w").close()
"#
    )
}

/// The named case: the main process forks a server that calls setsid()
/// and serves the inherited socket; the main process exits at the moment
/// the server accepts its first connection (bgd's readiness check), so the
/// check passes and the exit races the switch.
const EXITS_AS_IT_ANSWERS: &str = r#"
import os, socket
r, w = os.pipe()
if os.fork() > 0:
    os.close(w)
    os.read(r, 1)
    os._exit(0)
os.setsid()
os.environ["LISTEN_PID"] = str(os.getpid())
_accept = socket.socket.accept
def _first_accept(self):
    conn = _accept(self)
    if w is not None:
        globals()["w"] = os.write(w, b"x") and None
    return conn
socket.socket.accept = _first_accept
"#;

/// Python prelude: the classic double fork of daemon(3): fork, setsid,
/// fork again; the middle process and the main process exit.
const DOUBLE_FORK: &str = r#"
import os, time
if os.fork() > 0:
    while not os.path.exists("serving"):
        time.sleep(0.001)
    os._exit(0)
os.setsid()
if os.fork() > 0:
    os._exit(0)
os.environ["LISTEN_PID"] = str(os.getpid())
open("serving", "w").close()
"#;

/// A build whose `server.py` runs a shell script that starts the real
/// server with `&` and ends: the shell is the main process.
fn shell_ampersand(dir: &std::path::Path, version: &str) -> std::path::PathBuf {
    let build = example_build(dir, "ampersand", version);
    std::fs::rename(build.join("server.py"), build.join("real_server.py")).unwrap();
    std::fs::write(
        build.join("start.sh"),
        format!(
            "#!/bin/sh\n{py} -c 'import os; os.environ[\"LISTEN_PID\"] = str(os.getpid()); exec(open(\"real_server.py\").read())' &\n",
            py = python()
        ),
    )
    .unwrap();
    std::fs::write(
        build.join("server.py"),
        "import os\nos.execv(\"/bin/sh\", [\"sh\", \"start.sh\"])\n",
    )
    .unwrap();
    build
}

/// Three ways to daemonize, under load: each release is refused (exit 1)
/// with the reason, blue keeps serving every request, green is not
/// restarted, and nothing of green is left running.
#[test]
fn a_daemonizing_build_is_refused_and_the_old_color_keeps_serving() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    let dir = bgd.dir.path();
    let builds = [
        wrapped_build(dir, "fork-setsid", "v2", &fork_setsid(0.0)),
        wrapped_build(dir, "double-fork", "v2", DOUBLE_FORK),
        shell_ampersand(dir, "v2"),
    ];
    for build in &builds {
        let name = build.file_name().unwrap().to_string_lossy().to_string();
        let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains("daemonized"), "{name}: {err}");
        let st = bgd.status();
        assert_eq!(
            (&st["live"], &st["receiving"]),
            (&"blue".into(), &"blue".into()),
            "{name}: {st}"
        );
        wait_until(
            &format!("{name}: nothing of green to run"),
            Duration::from_secs(10),
            || {
                app_processes(&bgd.root(), Some("green"))
                    .is_empty()
                    .then_some(())
            },
        );
        let st = bgd.status();
        assert_eq!(st["green"]["restarts"], 0, "{name}: {st}");
        assert_ne!(st["green"]["state"], "live", "{name}: {st}");
    }
    let samples = load.finish_clean();
    let others = samples
        .iter()
        .filter(|s| s.result.as_ref().is_ok_and(|b| release_of(b) != Some(1)))
        .count();
    assert_eq!(
        others,
        0,
        "{others} of {} answers came from a daemonized build",
        samples.len()
    );
}

/// Daemonizing builds whose main process exits as the readiness check
/// passes (the named case: at the moment its server answers bgd's check),
/// or 0.3 s after its server serves. Where the exit comes before the swap
/// is written, the release is refused (the check at the moment of the
/// switch); where it comes after, it is a crash within the standby window:
/// bgd switches back to blue by itself and says the app daemonized. Either
/// way blue serves again, green is not restarted and nothing of it runs on.
#[test]
fn a_build_that_daemonizes_at_the_switch_never_keeps_the_traffic() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    let dir = bgd.dir.path();
    let builds = [
        wrapped_build(dir, "exits-as-it-answers", "v2", EXITS_AS_IT_ANSWERS),
        wrapped_build(dir, "fork-setsid-late", "v2", &fork_setsid(0.3)),
    ];
    let mut refused = 0;
    for build in &builds {
        let name = build.file_name().unwrap().to_string_lossy().to_string();
        let rollbacks = |h: &str| h.matches("rolled back automatically").count();
        let before = rollbacks(&text(&bgd.bgctl(&["history", "--json"]).stdout));
        let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
        let err = text(&out.stderr);
        if out.status.success() {
            wait_until(
                &format!("{name}: the automatic switch back, saying why"),
                Duration::from_secs(20),
                || {
                    let h = text(&bgd.bgctl(&["history", "--json"]).stdout);
                    (rollbacks(&h) > before && h.contains("daemonized")).then_some(())
                },
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{name}: {err}");
            assert!(err.contains("daemonized"), "{name}: {err}");
            refused += 1;
        }
        wait_until(
            &format!("{name}: blue live again"),
            Duration::from_secs(20),
            || {
                let st = bgd.status();
                (st["live"] == "blue" && st["receiving"] == "blue").then_some(())
            },
        );
        wait_until(
            &format!("{name}: nothing of green to run"),
            Duration::from_secs(10),
            || {
                app_processes(&bgd.root(), Some("green"))
                    .is_empty()
                    .then_some(())
            },
        );
        assert_eq!(bgd.status()["green"]["restarts"], 0, "{name}");
    }
    eprintln!(
        "{refused} of {} refused at the switch, the others switched away from",
        builds.len()
    );
    let samples = load.finish();
    let failed: Vec<_> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .collect();
    assert!(
        failed.len() <= 16,
        "{} of {} failed (at most the 8 clients' requests in flight on a killed orphan, per build); first: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
}

/// Crashes `after` seconds after it starts (it is ready well before).
fn crashes_after(after: f64) -> String {
    format!("import os, threading\nthreading.Timer({after}, lambda: os._exit(7)).start()\n")
}

/// Answers 500 to /healthz from `after` seconds after it starts.
fn sick_after(dir: &std::path::Path, name: &str, after: f64) -> std::path::PathBuf {
    let build = example_build(dir, name, "v2");
    std::fs::write(build.join("unhealthy-after"), after.to_string()).unwrap();
    build
}

/// A new build that goes live and then dies (or fails its checks) within
/// the default standby window: bgd switches back to the standby by
/// itself, with or without `health.interval`, and the dead build is not
/// restarted in a loop. Requests fail only on connections the dying build
/// had accepted; none after the switch back.
#[test]
fn a_build_that_dies_right_after_going_live_hands_the_traffic_back() {
    for (health, case) in [
        ("", "crash, no health.interval"),
        (
            "interval = \"1s\"\nfailures = 2\n",
            "crash, with health.interval",
        ),
        ("interval = \"1s\"\nfailures = 2\n", "failed checks"),
    ] {
        let bgd = Bgd::start(Setup {
            health: format!("http = \"/healthz\"\ntimeout = \"20s\"\n{health}"),
            ..Setup::default()
        });
        bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
        let addr = bgd.addr();
        let load = Load::start(&addr, 4, 4);
        let bad = if case == "failed checks" {
            sick_after(bgd.dir.path(), "sick", 1.5)
        } else {
            wrapped_build(bgd.dir.path(), "dies", "v2", &crashes_after(1.5))
        };
        let out = bgd.bgctl(&["release", bad.to_str().unwrap()]);
        assert!(out.status.success(), "{case}: {}", text(&out.stderr));
        assert_eq!(bgd.status()["blue"]["state"], "standby", "{case}");
        let st = wait_until(
            &format!("{case}: the switch back"),
            Duration::from_secs(20),
            || {
                let st = bgd.status();
                (st["live"] == "blue" && st["receiving"] == "blue").then_some(st)
            },
        );
        let switched = std::time::Instant::now();
        assert_eq!(st["blue"]["state"], "live", "{case}: {st}");
        wait_until(
            &format!("{case}: the automatic rollback in the history"),
            Duration::from_secs(20),
            || {
                let h = text(&bgd.bgctl(&["history", "--json"]).stdout);
                h.contains("rolled back automatically").then_some(())
            },
        );
        // No restart loop of the dead build (a loop never settles at
        // `stopped`), and the standby is what serves.
        let st = wait_until(
            &format!("{case}: green to stay stopped"),
            Duration::from_secs(20),
            || {
                let st = bgd.status();
                (st["green"]["state"] == "stopped").then_some(st)
            },
        );
        assert_eq!(st["green"]["restarts"], 0, "{case}: {st}");
        assert_eq!(st["live"], "blue", "{case}: {st}");
        let samples = load.finish();
        let late: Vec<_> = samples
            .iter()
            .filter(|s| s.started > switched)
            .filter(|s| !s.result.as_ref().is_ok_and(|b| release_of(b) == Some(1)))
            .collect();
        assert!(
            late.is_empty(),
            "{case}: {} requests after the switch back failed or went elsewhere: {:?}",
            late.len(),
            late.first().map(|s| &s.result)
        );
        let failed = samples.iter().filter(|s| s.result.is_err()).count();
        assert!(failed <= 8, "{case}: {failed} of {} failed (at most the 8 clients' requests in flight on the dying build)", samples.len());
        if case == "failed checks" {
            assert_eq!(
                failed, 0,
                "{case}: a sick build that still serves costs no request"
            );
        }
    }
}

/// The example app, logging every request it serves.
const LOGS_REQUESTS: &str = "import os\nos.environ[\"HELLO_DEBUG\"] = \"1\"\n";

/// `kill -STOP` of the live app. Clients that connect meanwhile wait in
/// its queue; the repeated checks report it frozen (status and log). A
/// release then makes blue live; the frozen green is killed at
/// drain_timeout, and its queue never reaches a later build: a client that
/// still waits is served by the live color, one that gave up is reset and
/// its request is executed by no one. Two cases: no standby (the operator
/// releases), and the default standby (bgd switches back by itself once the
/// checks fail).
#[test]
fn a_frozen_live_app_is_reported_and_its_queue_is_never_replayed() {
    for standby in [false, true] {
        let bgd = Bgd::start(Setup {
            health: "http = \"/healthz\"\ntimeout = \"3s\"\ninterval = \"1s\"\nfailures = 2".into(),
            drain_timeout: "2s",
            tail: if standby {
                String::new()
            } else {
                NO_STANDBY.into()
            },
            ..Setup::default()
        });
        let dir = bgd.dir.path().to_path_buf();
        bgd.release(&wrapped_build(&dir, "b1", "v1", LOGS_REQUESTS));
        bgd.release(&wrapped_build(&dir, "b2", "v2", LOGS_REQUESTS));
        let addr = bgd.addr();
        let green = bgd.status()["green"]["pid"].as_i64().unwrap() as i32;
        // SAFETY: kill(2) of the app bgd started for this test.
        unsafe { libc::kill(green, libc::SIGSTOP) };
        let gave_up: Vec<_> = (0..4)
            .map(|i| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    get_within(&addr, &format!("/gaveup{i}"), Duration::from_secs(1))
                })
            })
            .collect();
        for g in gave_up {
            assert!(
                g.join().unwrap().is_err(),
                "{standby}: a frozen app answered"
            );
        }
        let waiting = {
            let addr = addr.clone();
            std::thread::spawn(move || get_within(&addr, "/", Duration::from_secs(60)))
        };
        let expect = if standby {
            // The checks fail: bgd switches back to blue by itself.
            wait_until("the switch back", Duration::from_secs(30), || {
                (bgd.status()["live"] == "blue").then_some(())
            });
            1
        } else {
            let st = wait_until(
                "the checks to report green frozen",
                Duration::from_secs(30),
                || {
                    let st = bgd.status();
                    let frozen = st["green"]["last_check_failure"]
                        .as_str()
                        .is_some_and(|m| m.contains("is stopped (SIGSTOP"));
                    (frozen && st["green"]["failing_checks"].as_u64() >= Some(2)).then_some(st)
                },
            );
            assert!(st["green"]["failing_checks"].as_u64() >= Some(2), "{st}");
            assert!(bgd.log().contains("is stopped (SIGSTOP"), "{}", bgd.log());
            bgd.release(&wrapped_build(&dir, "b3", "v3", LOGS_REQUESTS));
            3
        };
        let (code, body) = waiting
            .join()
            .unwrap()
            .expect("the waiting client is served");
        assert_eq!(
            (code, release_of(&body)),
            (200, Some(expect)),
            "{standby}: {body}"
        );
        wait_until("green to stop", Duration::from_secs(20), || {
            (bgd.status()["green"]["state"] == "stopped").then_some(())
        });
        // The next build of green finds nothing queued: no request that a
        // client gave up on is executed by anyone.
        bgd.release(&wrapped_build(&dir, "b4", "v4", LOGS_REQUESTS));
        // A request made now queues behind anything left on green's
        // socket: once the app has logged it, a replayed one would be
        // logged too.
        get(&addr, "/after-b4").unwrap();
        let logs = wait_until(
            &format!("{standby}: b4's log of /after-b4"),
            Duration::from_secs(20),
            || {
                let logs = text(&bgd.bgctl(&["logs", "-n", "2000"]).stdout);
                logs.contains("/after-b4").then_some(logs)
            },
        );
        assert!(
            !logs.contains("/gaveup"),
            "{standby}: a request given up was executed:\n{logs}"
        );
        assert!(
            bgd.log().contains("reset, their requests not executed"),
            "{standby}: {}",
            bgd.log()
        );
    }
}

/// A long-lived connection (as a WebSocket is) open on v1: one request,
/// kept open. Returns the stream.
fn long_lived(addr: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET / HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let (mut got, mut buf) = (String::new(), [0u8; 4096]);
    while !got.contains("release=1") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {got}");
        got += &String::from_utf8_lossy(&buf[..n]);
    }
    s
}

/// The named case: a long-lived connection keeps v1 (blue) draining after
/// a release (no standby, drain_delay 30 s). Before its stop signal, blue
/// is as good as a standby: `bgctl rollback` switches back to it at once
/// (no start), the release that made green live ends, and not one request
/// fails. Then the case found beside it: once blue got its stop signal (a
/// slow request holds its drain), a rollback and a release are refused
/// (exit 4) saying by when the drain ends at the latest.
#[test]
fn a_rollback_while_the_old_color_drains() {
    let bgd = Bgd::start(Setup {
        drain_delay: "30s",
        drain_timeout: "30s",
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    let dir = bgd.dir.path().to_path_buf();
    bgd.release(&example_build(&dir, "b1", "v1"));
    let addr = bgd.addr();
    let _ws = long_lived(&addr);
    let blue = bgd.status()["blue"]["pid"].as_u64();
    let load = Load::start(&addr, 0, 4);
    let release = bgd.release_in_background(&example_build(&dir, "b2", "v2"));
    wait_until("blue to drain", Duration::from_secs(20), || {
        let st = bgd.status();
        (st["blue"]["state"] == "draining" && st["live"] == "green").then_some(())
    });
    let began = std::time::Instant::now();
    let out = bgd.bgctl(&["rollback"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the rollback waited for the drain"
    );
    let st = bgd.status();
    assert_eq!(
        (&st["live"], &st["blue"]["state"]),
        (&"blue".into(), &"live".into()),
        "{st}"
    );
    assert_eq!(
        st["blue"]["pid"].as_u64(),
        blue,
        "a process was started: {st}"
    );
    let out = release.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, body) = get(&addr, "/").unwrap();
    assert_eq!((code, release_of(&body)), (200, Some(1)));
    load.finish_clean();
    drop(_ws);

    // Once signalled: refused, with by when.
    let bgd = Bgd::start(Setup {
        drain_delay: "1s",
        drain_timeout: "30s",
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    bgd.release(&example_build(&dir, "c1", "v1"));
    let addr = bgd.addr();
    // Connected and sent before the release begins: the kernel has queued
    // it on blue's socket, so blue's drain waits for it.
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /slow?ms=8000 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let slow = std::thread::spawn(move || {
        let mut answer = String::new();
        conn.read_to_string(&mut answer).map(|_| answer)
    });
    let release = bgd.release_in_background(&example_build(&dir, "c2", "v2"));
    wait_until("blue's stop signal", Duration::from_secs(20), || {
        bgd.log().contains("sending SIGTERM").then_some(())
    });
    wait_until("the core to know it", Duration::from_secs(5), || {
        let out = bgd.bgctl(&["rollback"]);
        let err = text(&out.stderr);
        (out.status.code() == Some(4) && err.contains("got its stop signal")).then_some(err)
    });
    let out = bgd.bgctl(&["rollback"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("at the latest") && err.contains("drain_timeout 30s"),
        "{err}"
    );
    let out = bgd.bgctl(&["release", example_build(&dir, "c3", "v3").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("got its stop signal"),
        "{}",
        text(&out.stderr)
    );
    let answer = slow.join().unwrap().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "the slow request finished during the drain: {answer:?}"
    );
    assert!(release.join().unwrap().status.success());
}
