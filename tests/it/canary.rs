//! Warm standby, canaries and the bake window (issue 12), under load from
//! keep-alive and new-connection clients: not one request fails.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::load::Load;

/// Checked every 300 ms once ready; 3 failures in a row are unhealthy.
fn setup(traffic: &str) -> Setup {
    Setup {
        health: "http = \"/healthz\"\ntimeout = \"20s\"\ninterval = \"300ms\"\nfailures = 3".into(),
        tail: format!("[traffic]\n{traffic}\n"),
        ..Setup::default()
    }
}

/// The example app, answering 500 to /healthz from `after_s` seconds after
/// it started (its `unhealthy-after` file).
fn sickens_build(
    dir: &std::path::Path,
    name: &str,
    version: &str,
    after_s: f64,
) -> std::path::PathBuf {
    let build = example_build(dir, name, version);
    std::fs::write(build.join("unhealthy-after"), after_s.to_string()).unwrap();
    build
}

/// The release that answers `n` requests, each on a new connection.
fn answers(addr: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let (code, body) = get(addr, "/").unwrap();
            assert_eq!(code, 200, "{body}");
            release_of(&body).unwrap()
        })
        .collect()
}

fn history(bgd: &Bgd) -> Vec<Value> {
    let out = bgd.bgctl(&["history", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The last history record once it is of `kind` (records are written off
/// bgd's loop, just after the event).
fn last_record(bgd: &Bgd, kind: &str) -> Value {
    wait_until(&format!("a {kind} record"), Duration::from_secs(5), || {
        history(bgd).pop().filter(|r| r["kind"] == kind)
    })
}

fn pid(st: &Value, color: &str) -> i64 {
    st[color]["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no {color} pid: {st}"))
}

/// With a standby, a rollback is a switch: no process is started, and
/// every new connection after bgctl returns reaches the previous build.
#[test]
fn a_rollback_to_the_warm_standby_starts_nothing() {
    let bgd = Bgd::start(setup("standby = \"10m\""));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let st = bgd.status();
    assert_eq!(st["blue"]["state"], "standby", "{st}");
    assert_eq!(
        st["traffic"],
        serde_json::json!({"blue": 0, "green": 100}),
        "{st}"
    );
    assert!(st["standby_until"].is_string(), "{st}");
    let standby = pid(&st, "blue");
    let out = bgd.bgctl(&["rollback"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), bgd.log());
    assert!(
        answers(&addr, 50).iter().all(|r| *r == 1),
        "an answer from release 2"
    );
    let st = bgd.status();
    assert_eq!(
        pid(&st, "blue"),
        standby,
        "the standby's process serves: nothing started"
    );
    assert_eq!(st["live"], "blue");
    assert_eq!(
        bgd.log().matches("rollback of release").count(),
        0,
        "no start: {}",
        bgd.log()
    );
    load.finish_clean();
}

/// A 20 % canary split per connection (`canary_by = "connection"`) gets
/// 20 % ± 5 % of 1,000 new connections from one address; promote gives
/// it all of them; a second canary's abort gives it none and stops it.
#[test]
fn a_canary_gets_its_share_then_promote_or_abort() {
    let bgd = Bgd::start(setup("standby = \"0s\"\ncanary_by = \"connection\""));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    let b2 = example_build(bgd.dir.path(), "b2", "v2");
    let out = bgd.bgctl(&["release", b2.to_str().unwrap(), "--canary", "20"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), bgd.log());
    let st = bgd.status();
    assert_eq!(
        st["traffic"],
        serde_json::json!({"blue": 80, "green": 20}),
        "{st}"
    );
    assert_eq!(st["green"]["state"], "canary", "{st}");
    assert_eq!(st["canary"]["percent"], 20, "{st}");
    let to_canary = answers(&addr, 1000).iter().filter(|r| **r == 2).count();
    assert!(
        (150..=250).contains(&to_canary),
        "{to_canary} of 1000 reached the 20% canary"
    );
    let out = bgd.bgctl(&["promote"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(answers(&addr, 50).iter().all(|r| *r == 2));
    assert_eq!(
        bgd.status()["traffic"],
        serde_json::json!({"blue": 0, "green": 100})
    );

    let b3 = example_build(bgd.dir.path(), "b3", "v3");
    let out = bgd.bgctl(&["release", b3.to_str().unwrap(), "--canary", "20"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let canary = pid(&bgd.status(), "blue");
    let refused = bgd.bgctl(&["release", b3.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(4), "one canary at a time");
    assert!(
        text(&refused.stderr).contains("bgctl abort"),
        "{}",
        text(&refused.stderr)
    );
    let out = bgd.bgctl(&["abort"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!exists(canary as i32), "the aborted canary still runs");
    assert!(answers(&addr, 50).iter().all(|r| *r == 2));
    let st = bgd.status();
    assert_eq!(
        st["traffic"],
        serde_json::json!({"blue": 0, "green": 100}),
        "{st}"
    );
    last_record(&bgd, "abort");
    let kinds: Vec<String> = history(&bgd)
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.ends_with(&[
            "canary".into(),
            "promote".into(),
            "canary".into(),
            "abort".into()
        ]),
        "{kinds:?}"
    );
    load.finish_clean();
}

/// A build that passes readiness and turns unhealthy 3 s later is rolled
/// back by itself within interval × failures + 1 s, and `--wait-bake` says
/// so with exit code 8.
#[test]
fn a_build_that_turns_unhealthy_is_rolled_back_by_the_bake() {
    let bgd = Bgd::start(setup("standby = \"1m\"\nbake = \"30s\""));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    let sick = sickens_build(bgd.dir.path(), "sick", "v2", 3.0);
    let started = Instant::now();
    let out = bgd.bgctl(&["release", sick.to_str().unwrap(), "--wait-bake"]);
    let took = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}\n{}",
        text(&out.stderr),
        bgd.log()
    );
    assert!(
        text(&out.stderr).contains(
            "rolled back automatically: 3 failed health checks: GET /healthz answered 500"
        ),
        "{}",
        text(&out.stderr)
    );
    // It turned sick 3 s after its start, which was before `started`.
    assert!(
        took < Duration::from_millis(3000 + 3 * 300 + 1000),
        "rolled back after {took:?}"
    );
    assert_eq!(bgd.status()["live"], "blue");
    assert!(answers(&addr, 50).iter().all(|r| *r == 1));
    let last = last_record(&bgd, "rollback");
    assert_eq!(last["trigger"], "automatic", "{last}");
    assert!(
        last["result"]
            .as_str()
            .unwrap()
            .starts_with("rolled back automatically: 3 failed health checks"),
        "{last}"
    );
    load.finish_clean();
}

/// `traffic.steps` advance on their own and end live; a step that turns
/// unhealthy stops there, and the main color takes every connection back.
#[test]
fn steps_advance_by_themselves_and_stop_at_an_unhealthy_one() {
    let bgd = Bgd::start(setup("standby = \"1m\"\nsteps = [\"10%:1s\", \"50%:1s\"]"));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    assert_eq!(bgd.status()["canary"]["percent"], 10);
    wait_until("the second step", Duration::from_secs(5), || {
        (bgd.status()["canary"]["percent"] == 50).then_some(())
    });
    wait_until("the promotion", Duration::from_secs(5), || {
        (bgd.status()["live"] == "green").then_some(())
    });
    assert!(answers(&addr, 50).iter().all(|r| *r == 2));

    // The standby (blue, release 1) is drained before the next build starts.
    let sick = sickens_build(bgd.dir.path(), "sick", "v3", 0.5);
    bgd.release(&sick);
    wait_until("the automatic abort", Duration::from_secs(10), || {
        bgd.status()["canary"].is_null().then_some(())
    });
    let st = bgd.status();
    assert_eq!(
        st["traffic"],
        serde_json::json!({"blue": 0, "green": 100}),
        "{st}"
    );
    let last = last_record(&bgd, "abort");
    assert_eq!(last["trigger"], "automatic", "{last}");
    load.finish_clean();
}

/// A canary that exits on its own (here: it stops serving and exits 1, as
/// an app that gives up does) is aborted by itself: the main color takes
/// its share back, and what the kernel had queued for the canary in the
/// moment before bgd saw the exit is relayed to the main color: not one
/// request fails.
#[test]
fn a_canary_that_exits_is_aborted_by_itself_and_loses_nothing() {
    let crash = "import atexit, os, signal, threading\n\
        atexit.register(lambda: os._exit(1))\n\
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()";
    let (bgd, load) = canary_dies(crash);
    load.finish_clean();
    drop(bgd);
}

/// A canary that crashes hard (SIGKILL-like: `os._exit` mid-request) loses
/// only the requests it was serving, as any crash does; no request waits
/// in its queue.
#[test]
fn a_canary_that_crashes_loses_only_its_requests_in_flight() {
    let crash = "import os, threading\nthreading.Timer(1.0, lambda: os._exit(1)).start()";
    let (bgd, load) = canary_dies(crash);
    let samples = load.finish();
    let failed: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .collect();
    // 18 clients: at most one request each was in flight in the canary.
    assert!(failed.len() <= 18, "{} failed: {failed:?}", failed.len());
    let hung: Vec<_> = failed
        .iter()
        .filter(|e| e.contains("unavailable") || e.contains("timed out"))
        .collect();
    assert!(
        hung.is_empty(),
        "requests waited for the dead canary: {hung:?}\n{}",
        bgd.log()
    );
}

/// Runs a 50% canary of a build with `prelude` under load (2 keep-alive,
/// 16 new-connection clients) and waits until bgd has aborted it by itself.
fn canary_dies(prelude: &str) -> (Bgd, Load) {
    // Per connection: the load comes from one address, which a split by
    // client would put wholly on one side.
    let bgd = Bgd::start(setup("standby = \"0s\"\ncanary_by = \"connection\""));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 2, 16);
    let b2 = wrapped_build(bgd.dir.path(), "b2", "v2", prelude);
    let out = bgd.bgctl(&["release", b2.to_str().unwrap(), "--canary", "50"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until("the automatic abort", Duration::from_secs(10), || {
        bgd.status()["canary"].is_null().then_some(())
    });
    assert_eq!(
        bgd.status()["traffic"],
        serde_json::json!({"blue": 100, "green": 0})
    );
    assert!(answers(&addr, 50).iter().all(|r| *r == 1));
    let last = last_record(&bgd, "abort");
    assert_eq!(last["trigger"], "automatic", "{last}");
    assert!(
        last["result"]
            .as_str()
            .unwrap()
            .contains("it exited (exit code 1)"),
        "{last}"
    );
    (bgd, load)
}

/// Bad input gets a message that names the fix, and changes nothing.
#[test]
fn canary_commands_refuse_bad_input() {
    let bgd = Bgd::start(setup("standby = \"0s\""));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let b2 = example_build(bgd.dir.path(), "b2", "v2");
    let b2 = b2.to_str().unwrap();
    for (args, code, says) in [
        (&["release", b2, "--canary", "0"][..], 2, "from 1 to 99"),
        (&["release", b2, "--canary", "101"], 2, "from 1 to 99"),
        (
            &["release", b2, "--canary", "abc"],
            2,
            "not a whole percent",
        ),
        (&["promote"], 5, "no canary runs"),
        (&["abort"], 5, "nothing to abort"),
        (&["promote", "0"], 2, "from 1 to 100"),
    ] {
        let out = bgd.bgctl(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let st = bgd.status();
    assert_eq!(
        (st["live"].as_str(), st["blue"]["release"].as_u64()),
        (Some("blue"), Some(1)),
        "{st}"
    );
    assert!(st["green"]["pid"].is_null(), "{st}");
}
