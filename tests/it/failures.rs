//! Releases that must be refused, and drains that need SIGKILL. In each,
//! the old color keeps serving and no process of the failed color is left.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Forks a worker that writes its pid next to the leader's, then never
/// answers the probe (the leader sleeps without accepting).
const NEVER_READY: &str = r#"
import os, time
if os.fork() == 0:
    open("worker.pid", "w").write(str(os.getpid()))
    time.sleep(3600)
open("leader.pid", "w").write(str(os.getpid()))
time.sleep(3600)
"#;

const EXITS_AT_ONCE: &str = r#"
import sys
print("boom: cannot open database", file=sys.stderr)
sys.exit(3)
"#;

fn read_pid(dir: &Path, name: &str) -> i32 {
    let path = dir.join(name);
    wait_until(
        &format!("{}", path.display()),
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        },
    )
}

fn assert_serves_release(addr: &str, id: u64) {
    let (code, body) = get(addr, "/").unwrap();
    assert_eq!((code, release_of(&body)), (200, Some(id)), "{body}");
}

#[test]
fn never_ready_is_refused_at_the_timeout_and_its_group_killed() {
    let bgd = Bgd::start(Setup {
        health: "http = \"/healthz\"\ntimeout = \"1s\"".into(),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
    let addr = bgd.addr();
    let bgd_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", bgd.status()["pid"]))
            .unwrap()
            .count()
    };
    let fds_before = bgd_fds();

    let out = bgd.bgctl(&[
        "release",
        script_build(bgd.dir.path(), "stuck", NEVER_READY)
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("failed at step wait_ready")
            && err.contains("not ready within health.timeout (1s)"),
        "{err}"
    );

    let green = bgd.root().join("green");
    for pid in [
        read_pid(&green, "leader.pid"),
        read_pid(&green, "worker.pid"),
    ] {
        wait_until(
            &format!("pid {pid} to be gone"),
            Duration::from_secs(10),
            || (!exists(pid)).then_some(()),
        );
    }
    assert_serves_release(&addr, 1);
    assert_eq!(bgd_fds(), fds_before, "bgd leaked file descriptors");
    let st = bgd.status();
    assert_eq!(st["live"], "blue");
    assert_eq!(st["green"]["state"], "stopped");
    assert!(
        st["last_result"]
            .as_str()
            .unwrap()
            .contains("failed at wait_ready"),
        "{st}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(bgd.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn exit_during_readiness_fails_at_once_with_the_apps_last_words() {
    let bgd = Bgd::start(Setup {
        health: "http = \"/healthz\"\ntimeout = \"120s\"".into(),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
    let addr = bgd.addr();

    let began = Instant::now();
    let out = bgd.bgctl(&[
        "release",
        script_build(bgd.dir.path(), "crash", EXITS_AT_ONCE)
            .to_str()
            .unwrap(),
    ]);
    // Well before health.timeout (120 s): the exit is noticed, not waited out.
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "took {:?}",
        began.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("exited during the readiness wait (exit code 3)"),
        "{err}"
    );
    assert!(
        err.contains("| boom: cannot open database"),
        "the app's last output is shown: {err}"
    );
    assert_serves_release(&addr, 1);
    assert_eq!(bgd.status()["live"], "blue");
}

/// An app that fails within a millisecond of its start (a shell script,
/// no interpreter to load) is gone before bgd has met its relay: the relay
/// keeps its last words until bgd takes them.
#[test]
fn an_app_that_dies_at_once_still_has_its_last_words_shown() {
    let bgd = Bgd::start(Setup {
        command: "[\"/bin/sh\", \"start\"]".into(),
        ..Setup::default()
    });
    let good = example_build(bgd.dir.path(), "good", "v1");
    std::fs::write(good.join("start"), format!("exec {} server.py\n", python())).unwrap();
    bgd.release(&good);
    let crash = bgd.dir.path().join("crash");
    std::fs::create_dir_all(&crash).unwrap();
    std::fs::write(
        crash.join("start"),
        "echo 'boom: no such table' >&2\nexit 3\n",
    )
    .unwrap();
    for _ in 0..3 {
        let out = bgd.bgctl(&["release", crash.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(err.contains("| boom: no such table"), "{err}");
    }
    assert_eq!(bgd.status()["live"], "blue");
}

/// The old color ignores its stop signal and has forked a worker that does
/// too: at drain_timeout the whole group gets SIGKILL, and both are reaped.
#[test]
fn forced_drain_kills_forked_grandchildren() {
    const STUBBORN: &str = r#"
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    if os.fork() == 0:
        open("grandchild.pid", "w").write(str(os.getpid()))
        time.sleep(3600)
    os._exit(0)  # the grandchild is orphaned: re-parented to bgd, the subreaper
open("leader.pid", "w").write(str(os.getpid()))
os.execv(sys.executable, [sys.executable, "real_server.py"])
"#;
    let bgd = Bgd::start(Setup {
        drain_timeout: "1s",
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    let stubborn = script_build(bgd.dir.path(), "stubborn", STUBBORN);
    let server = std::fs::read_to_string(repo().join("examples/hello/v1/server.py")).unwrap();
    // The server's own SIGTERM handler would drain; make it ignore SIGTERM too.
    std::fs::write(
        stubborn.join("real_server.py"),
        server.replace(
            "signal.signal(signal.SIGTERM",
            "(lambda *a: None)(signal.SIGTERM",
        ),
    )
    .unwrap();
    bgd.release(&stubborn);
    let blue = bgd.root().join("blue");
    let (leader, grandchild) = (
        read_pid(&blue, "leader.pid"),
        read_pid(&blue, "grandchild.pid"),
    );

    let began = Instant::now();
    bgd.release(&example_build(bgd.dir.path(), "next", "v2"));
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "the drain waited for drain_timeout"
    );
    for pid in [leader, grandchild] {
        assert!(
            !exists(pid),
            "pid {pid} of the drained color is still there (zombie or alive)"
        );
    }
    assert!(
        bgd.log().contains("sending SIGKILL to its process group"),
        "{}",
        bgd.log()
    );
    assert_serves_release(&bgd.addr(), 2);
}

#[test]
fn bad_build_paths_are_refused_before_anything_is_touched() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
    let file = bgd.dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    for (path, want) in [
        (bgd.dir.path().join("missing"), "does not exist"),
        (file, "is not a directory"),
    ] {
        let out = bgd.bgctl(&["release", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(want), "{}", text(&out.stderr));
    }
    assert_eq!(
        bgd.status()["green"]["state"],
        "empty",
        "the dormant color was not touched"
    );
    assert_serves_release(&bgd.addr(), 1);
}

/// A release asked for while another runs is refused at once (exit 4) and
/// names the one in progress; the first completes.
#[test]
fn a_second_release_during_one_is_refused() {
    const SLOW_START: &str = "import time\ntime.sleep(3)";
    let bgd = Bgd::start(Setup::default());
    let slow = wrapped_build(bgd.dir.path(), "slow", "v1", SLOW_START);
    let first = bgd.release_in_background(&slow);
    bgd.wait_step("wait_ready");
    let out = bgd.bgctl(&[
        "release",
        example_build(bgd.dir.path(), "other", "v2")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("release 1 is in progress (step wait_ready"),
        "{}",
        text(&out.stderr)
    );
    let first = first.join().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_serves_release(&bgd.addr(), 1);
}

/// A release refused before anything was copied (a typo in the path)
/// leaves the rollback target as it was.
#[test]
fn a_refused_release_keeps_the_rollback_target() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let out = bgd.bgctl(&["release", bgd.dir.path().join("typo").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(
        bgd.status()["blue"]["release"],
        1,
        "blue still holds release 1"
    );
    let out = bgd.bgctl(&["rollback"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_serves_release(&bgd.addr(), 1);
}

/// After a failed release, status shows how the failed start ended, not
/// the exit of an earlier process of that color.
#[test]
fn status_shows_the_exit_of_the_failed_start() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    // Blue is the standby (traffic.standby); the next release into blue
    // drains it first, then starts the build that fails.
    assert_eq!(bgd.status()["blue"]["state"], "standby");

    let crash = script_build(bgd.dir.path(), "crash", EXITS_AT_ONCE);
    let out = bgd.bgctl(&["release", crash.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let st = bgd.status();
    assert_eq!(st["blue"]["state"], "stopped", "{st}");
    assert_eq!(st["blue"]["last_exit"], "exit code 3", "{st}");
    assert_eq!(st["live"], "green", "{st}");
}
