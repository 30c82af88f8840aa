//! Auto-release from a watched build directory, always under HTTP load
//! with zero failed requests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;
use crate::load::Load;

/// A bgd watching `dir/build`, which holds v1 and was released at start-up.
struct Watched {
    bgd: Bgd,
    build: PathBuf,
    load: Option<Load>,
}

impl Watched {
    fn start(watch: &str) -> Watched {
        let setup = Setup {
            tail: format!("[watch]\npath = \"build\"\n{watch}\n"),
            ..Setup::default()
        };
        let bgd = Bgd::start_after(setup, |dir| drop(example_build(dir, "build", "v1")));
        let build = bgd.dir.path().join("build");
        let mut w = Watched {
            bgd,
            build,
            load: None,
        };
        // The tree exists and nothing is live: it is released at start.
        let st = w.idle();
        assert_eq!(st["watch"]["last_release"]["ok"], true, "{st}");
        let load = Load::start(&w.bgd.addr(), 2, 2);
        wait_until("the load to get going", Duration::from_secs(10), || {
            (load.count() > 20).then_some(())
        });
        w.load = Some(load);
        w
    }

    /// Waits until the watcher has nothing to do and no release runs.
    fn idle(&self) -> Value {
        wait_until("the watcher to be idle", Duration::from_secs(30), || {
            let st = self.bgd.status();
            let quiet = matches!(st["watch"]["state"].as_str(), Some("idle" | "paused"))
                && st["release_in_progress"].is_null();
            quiet.then_some(st)
        })
    }

    /// Waits until idle, then checks that auto-release number `release` is
    /// the last one and that `version` of the example app answers.
    fn expect_released(&self, release: u64, version: &str) -> Value {
        // First the release itself: right after a change the watcher may not
        // have seen it yet, and would look idle.
        wait_until(
            &format!("auto-release {release}"),
            Duration::from_secs(30),
            || {
                let st = self.bgd.status();
                (st["watch"]["last_release"]["release"].as_u64() >= Some(release)).then_some(())
            },
        );
        let st = self.idle();
        assert_eq!(self.last_auto(), release, "{st}");
        let body = serving(self);
        assert!(body.starts_with(&format!("hello from {version}")), "{body}");
        st
    }

    /// The release id of the last auto-release.
    fn last_auto(&self) -> u64 {
        self.bgd.status()["watch"]["last_release"]["release"]
            .as_u64()
            .unwrap()
    }

    /// Stops the load and asserts not one request failed; returns the count.
    fn finish(mut self) -> usize {
        let samples = self.load.take().unwrap().finish_clean();
        samples.len()
    }
}

fn write_version(build: &Path, version: &str) {
    let src = std::fs::read_to_string(build.join("server.py")).unwrap();
    let old = src
        .lines()
        .find(|l| l.starts_with("VERSION = "))
        .unwrap()
        .to_string();
    std::fs::write(
        build.join("server.py"),
        src.replace(&old, &format!("VERSION = \"{version}\"")),
    )
    .unwrap();
}

fn serving(w: &Watched) -> String {
    get(&w.bgd.addr(), "/").unwrap().1
}

#[test]
fn a_slow_writer_gives_one_release_of_the_complete_tree() {
    let w = Watched::start("settle = \"1s\"");
    let before = w.last_auto();
    // 30 files over about 3 s, never pausing as long as `settle`.
    for i in 0..30 {
        std::fs::write(
            w.build.join(format!("asset-{i}.txt")),
            format!("asset {i}\n"),
        )
        .unwrap();
        if i == 15 {
            write_version(&w.build, "v2");
        }
        std::thread::sleep(Duration::from_millis(100)); // the writer's pace: it writes until about 3 s have passed
    }
    let st = w.expect_released(before + 1, "v2");
    let live = w.bgd.root().join(st["live"].as_str().unwrap());
    for i in 0..30 {
        assert!(
            live.join(format!("asset-{i}.txt")).exists(),
            "asset-{i}.txt is missing from the live tree"
        );
    }
    eprintln!("{} requests, 0 failed", w.finish());
}

#[test]
fn rm_rf_and_recreate_gives_one_release() {
    let w = Watched::start("settle = \"300ms\"");
    let before = w.last_auto();
    std::fs::remove_dir_all(&w.build).unwrap();
    let parent = w.build.parent().unwrap();
    example_build(parent, "build", "v2");
    w.expect_released(before + 1, "v2");
    // The watch is re-armed on the new directory.
    write_version(&w.build, "v3");
    w.expect_released(before + 2, "v3");
    w.finish();
}

#[test]
fn replacing_the_directory_with_mv_gives_one_release() {
    let w = Watched::start("settle = \"300ms\"");
    let before = w.last_auto();
    let parent = w.build.parent().unwrap().to_path_buf();
    let new = example_build(&parent, "build.new", "v2");
    std::fs::rename(&w.build, parent.join("build.old")).unwrap();
    std::fs::rename(&new, &w.build).unwrap();
    w.expect_released(before + 1, "v2");
    w.finish();
}

#[test]
fn marker_mode_waits_for_the_marker() {
    let w = Watched::start("settle = \"300ms\"\nmarker = \".release\"");
    let before = w.last_auto();
    let ignored = w.bgd.status()["watch"]["ignored_events"].as_u64().unwrap();
    write_version(&w.build, "v2");
    // The watcher saw the change and ignored it: nothing is scheduled.
    let st = wait_until(
        "the change to be seen and ignored",
        Duration::from_secs(10),
        || {
            let st = w.bgd.status();
            (st["watch"]["ignored_events"].as_u64() > Some(ignored)).then_some(st)
        },
    );
    assert_eq!(st["watch"]["state"], "idle", "{st}");
    assert!(st["release_in_progress"].is_null(), "{st}");
    assert!(serving(&w).starts_with("hello from v1"));

    std::fs::write(w.build.join(".release"), "").unwrap();
    w.expect_released(before + 1, "v2");
    w.finish();
}

#[test]
fn a_broken_build_is_not_swapped_and_the_next_good_one_goes_live() {
    let w = Watched::start("settle = \"300ms\"");
    std::fs::write(
        w.build.join("server.py"),
        "import sys\nprint('syntax error ahead', file=sys.stderr)\nsys.exit(3)\n",
    )
    .unwrap();
    let st = wait_until("the broken build to fail", Duration::from_secs(30), || {
        let st = w.bgd.status();
        (st["watch"]["last_release"]["ok"] == false).then_some(st)
    });
    let last = &st["watch"]["last_release"];
    assert_eq!(last["step"], "wait_ready", "{st}");
    assert!(
        last["message"].as_str().unwrap().contains("exit code 3"),
        "{st}"
    );
    let st = w.idle();
    assert!(
        st["watch"]["holding"].as_str().unwrap().contains("failed"),
        "{st}"
    );
    assert!(
        serving(&w).starts_with("hello from v1"),
        "the old color still serves"
    );
    let text = text(&w.bgd.bgctl(&["status"]).stdout);
    assert!(
        text.contains("last auto-release:") && text.contains("failed at wait_ready"),
        "{text}"
    );

    let good = std::fs::read_to_string(repo().join("examples/hello/v1/server.py")).unwrap();
    std::fs::write(
        w.build.join("server.py"),
        good.replace("VERSION = \"v1\"", "VERSION = \"v2\""),
    )
    .unwrap();
    let st = wait_until(
        "the fixed build to go live",
        Duration::from_secs(30),
        || {
            let st = w.bgd.status();
            (st["watch"]["last_release"]["ok"] == true && st["release_in_progress"].is_null())
                .then_some(st)
        },
    );
    assert!(st["watch"]["holding"].is_null(), "{st}");
    assert!(serving(&w).starts_with("hello from v2"));
    w.finish();
}

/// The app writes into its own directory all the time; that is not the
/// watched one, so nothing is released. Restarting bgd on an unchanged tree
/// releases nothing either.
#[test]
fn no_release_loop_and_no_release_of_an_unchanged_tree() {
    const WRITER: &str = r#"
import threading, time
def scribble():
    n = 0
    while True:
        n += 1
        open("app.log", "a").write(f"line {n}\n")
        time.sleep(0.05)
threading.Thread(target=scribble, daemon=True).start()
"#;
    let setup = Setup {
        tail: "[watch]\npath = \"build\"\nsettle = \"200ms\"\n".into(),
        ..Setup::default()
    };
    let mut bgd = Bgd::start_after(setup, |dir| {
        wrapped_build(dir, "build", "v1", WRITER);
    });
    let w = |bgd: &Bgd| {
        wait_until("the watcher to be idle", Duration::from_secs(30), || {
            let st = bgd.status();
            (st["watch"]["state"] == "idle"
                && st["release_in_progress"].is_null()
                && st["live"] == "blue")
                .then_some(st)
        })
    };
    let st = w(&bgd);
    let first = st["watch"]["last_release"]["release"].as_u64().unwrap();
    let log = bgd.root().join("blue/app.log");
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let grown = size(&log) + 200;
    wait_until("the app to write a lot", Duration::from_secs(20), || {
        (size(&log) > grown).then_some(())
    });
    let st = w(&bgd);
    assert_eq!(
        st["watch"]["last_event"],
        Value::Null,
        "the app's writes reached the watcher: {st}"
    );
    assert_eq!(st["watch"]["last_release"]["release"], first, "{st}");

    let addr = bgd.addr();
    bgd.stop(libc::SIGTERM);
    bgd.respawn_on(&addr);
    let st = w(&bgd);
    assert_eq!(
        st["watch"]["last_release"],
        Value::Null,
        "an unchanged tree was released again: {st}"
    );
    assert_eq!(st["blue"]["release"], first, "{st}");
}

#[test]
fn pause_and_resume() {
    let w = Watched::start("settle = \"200ms\"");
    let before = w.last_auto();
    let out = w.bgd.bgctl(&["watch", "pause"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    write_version(&w.build, "v2");
    let st = wait_until("the change to be seen", Duration::from_secs(10), || {
        let st = w.bgd.status();
        (!st["watch"]["last_event"].is_null()).then_some(st)
    });
    assert_eq!(st["watch"]["state"], "paused");
    let st = w.idle();
    assert_eq!(st["watch"]["state"], "paused");
    assert!(serving(&w).starts_with("hello from v1"));
    assert!(w.bgd.bgctl(&["watch", "resume"]).status.success());
    wait_until(
        "the paused change to go live",
        Duration::from_secs(30),
        || {
            (w.bgd.status()["watch"]["last_release"]["release"].as_u64() == Some(before + 1))
                .then_some(())
        },
    );
    w.idle();
    assert!(serving(&w).starts_with("hello from v2"));
    w.finish();
}

/// A client release and the watcher never interleave: a tree that settles
/// during a client's release is released once, after it; a client asking
/// during an auto-release is refused with exit 4.
#[test]
fn client_and_watcher_releases_take_turns() {
    const SLOW_START: &str = "import time\ntime.sleep(1.5)\n";
    let w = Watched::start("settle = \"200ms\"");
    let before = w.last_auto();
    let slow = wrapped_build(w.bgd.dir.path(), "slow", "v1", SLOW_START);
    let client = w.bgd.release_in_background(&slow);
    w.bgd.wait_step("wait_ready");
    // The new tree starts slowly too, so the auto-release runs long enough
    // for a client to be refused during it.
    let v2 = std::fs::read_to_string(w.build.join("server.py"))
        .unwrap()
        .replace("VERSION = \"v1\"", "VERSION = \"v2\"");
    std::fs::write(w.build.join("real_server.py"), v2).unwrap();
    let wrapper = std::fs::read_to_string(slow.join("server.py")).unwrap();
    std::fs::write(w.build.join("server.py"), wrapper).unwrap();
    wait_until(
        "the tree to settle during the release",
        Duration::from_secs(20),
        || (w.bgd.status()["watch"]["state"] == "releasing").then_some(()),
    );
    let out = client.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The auto-release follows; a client asking meanwhile is refused.
    let refused = wait_until("the auto-release to run", Duration::from_secs(20), || {
        let out = w.bgd.bgctl(&["release", slow.to_str().unwrap()]);
        (out.status.code() == Some(4)).then_some(out)
    });
    assert!(
        text(&refused.stderr).contains("is in progress"),
        "{}",
        text(&refused.stderr)
    );
    let st = w.idle();
    assert_eq!(
        st["watch"]["last_release"]["release"].as_u64(),
        Some(before + 2),
        "one auto-release after the client's: {st}"
    );
    assert!(serving(&w).starts_with("hello from v2"));
    w.finish();
}

/// A reload that changes `[watch]` keeps the pause.
#[test]
fn a_reload_keeps_the_pause() {
    let w = Watched::start("settle = \"200ms\"");
    assert!(w.bgd.bgctl(&["watch", "pause"]).status.success());
    let config = std::fs::read_to_string(&w.bgd.config)
        .unwrap()
        .replace("settle = \"200ms\"", "settle = \"300ms\"");
    std::fs::write(&w.bgd.config, config).unwrap();
    let pid = w.bgd.status()["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on bgd's pid.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until("the reload", Duration::from_secs(10), || {
        w.bgd.status()["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("config reloaded"))
            .then_some(())
    });
    assert_eq!(w.bgd.status()["watch"]["state"], "paused");
    w.finish();
}

/// In marker mode a re-created tree without its marker is not released,
/// however long it stays quiet; the marker releases it.
#[test]
fn marker_mode_ignores_a_new_tree_until_its_marker() {
    let w = Watched::start("settle = \"200ms\"\nmarker = \".release\"");
    let before = w.last_auto();
    let ignored = w.bgd.status()["watch"]["ignored_events"].as_u64().unwrap();
    std::fs::remove_dir_all(&w.build).unwrap();
    let parent = w.build.parent().unwrap();
    example_build(parent, "build", "v2");
    std::fs::write(w.build.join("half-written.txt"), "x").unwrap();
    let st = wait_until(
        "the new tree's files to be seen and ignored",
        Duration::from_secs(10),
        || {
            let st = w.bgd.status();
            (st["watch"]["ignored_events"].as_u64() > Some(ignored)).then_some(st)
        },
    );
    assert_eq!(st["watch"]["state"], "idle", "{st}");
    assert_eq!(w.last_auto(), before);
    std::fs::write(w.build.join(".release"), "").unwrap();
    w.expect_released(before + 1, "v2");
    w.finish();
}

/// A file written while the tree is copied discards that copy; the tree is
/// staged again once quiet, and released once: no retry loop.
#[test]
fn a_change_during_the_copy_is_staged_again_once_quiet() {
    let w = Watched::start("settle = \"300ms\"");
    let before = w.last_auto();
    // Enough files that the copy takes a while.
    let assets = w.build.join("assets");
    std::fs::create_dir(&assets).unwrap();
    for i in 0..4000 {
        std::fs::write(assets.join(format!("{i}.txt")), "x").unwrap();
    }
    w.bgd.wait_step("stage");
    std::fs::write(w.build.join("late.txt"), "late").unwrap();
    wait_until("the late file to go live", Duration::from_secs(60), || {
        let st = w.bgd.status();
        let live = w.bgd.root().join(st["live"].as_str()?);
        live.join("late.txt").exists().then_some(())
    });
    let st = w.idle();
    let live = w.bgd.root().join(st["live"].as_str().unwrap());
    assert!(
        live.join("late.txt").exists(),
        "the late file went live: {st}"
    );
    let history: Value =
        serde_json::from_slice(&w.bgd.bgctl(&["history", "--json"]).stdout).unwrap();
    let after: Vec<&Value> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["release"].as_u64() > Some(before))
        .collect();
    let changed = after
        .iter()
        .filter(|r| {
            r["result"]
                .as_str()
                .is_some_and(|m| m.contains("changed while it was copied"))
        })
        .count();
    assert!(changed <= 1, "staged again and again: {after:?}");
    assert_eq!(
        after.iter().filter(|r| r["ok"] == true).count(),
        1,
        "{after:?}"
    );
    w.finish();
}
