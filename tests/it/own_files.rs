//! bgd's own files, torn or unwritable (issue 26): `history.json`,
//! `state.json`, the run records and `operator.json` cut short lose at
//! most their last record, never make bgd kill the app that serves, and
//! are named in status; a full disk fails a release with exit 6.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Cuts `path` to half its length.
fn tear(path: &Path) {
    let whole = std::fs::read(path).unwrap();
    std::fs::write(path, &whole[..whole.len() / 2]).unwrap();
}

fn own_files(st: &Value) -> String {
    st["own_files"].to_string()
}

fn history(bgd: &Bgd) -> Vec<u64> {
    let out = bgd.bgctl(&["history", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["release"].as_u64().unwrap())
        .collect()
}

/// Cut in half, history.json read as "no releases yet", and the next
/// release rewrote it with one record: six gone, with a log line only.
/// Now at most the last record is lost, status says so, and the next
/// release keeps the rest.
#[test]
fn a_torn_history_loses_at_most_its_last_record() {
    let bgd = Bgd::start(Setup::default());
    for v in 1..=7 {
        bgd.release(&example_build(
            bgd.dir.path(),
            &format!("b{v}"),
            &format!("v{v}"),
        ));
    }
    wait_until("seven records", Duration::from_secs(20), || {
        (history(&bgd).len() == 7).then_some(())
    });
    tear(&bgd.root().join("history.json"));
    let read = history(&bgd);
    assert_eq!(read, [1, 2, 3, 4, 5, 6], "all but the last");
    let shown = text(&bgd.bgctl(&["history"]).stdout);
    assert!(!shown.contains("no releases yet"), "{shown}");
    let st = bgd.status();
    assert!(own_files(&st).contains("history.json is damaged"), "{st}");
    bgd.release(&example_build(bgd.dir.path(), "b8", "v8"));
    wait_until("the next record", Duration::from_secs(20), || {
        (history(&bgd) == [1, 2, 3, 4, 5, 6, 8]).then_some(())
    });
    assert!(bgd.root().join("history.json.damaged").exists());
    let plain = text(&bgd.bgctl(&["status"]).stdout);
    assert!(
        plain.contains("warning: ") && plain.contains("history.json"),
        "{plain}"
    );
}

/// A torn state.json made bgd refuse to start. Now it starts from the
/// state before the last write, says so, adopts the app that serves and
/// serves on.
#[test]
fn a_torn_state_starts_from_the_previous_state() {
    let mut bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let addr = bgd.addr();
    let pid = bgd.status()["green"]["pid"].clone();
    bgd.stop(libc::SIGKILL);
    tear(&bgd.root().join("state.json"));
    bgd.respawn_on(&addr);
    let st = bgd.status();
    // The color that served still does: the older state is not followed
    // into stopping it.
    assert_eq!(st["live"], "green", "{st}");
    assert_eq!(st["green"]["pid"], pid, "{st}");
    assert!(
        own_files(&st).contains("state.json could not be read"),
        "{st}"
    );
    assert!(own_files(&st).contains("state.json.prev"), "{st}");
    wait_until("the app to answer", Duration::from_secs(30), || {
        get(&addr, "/").ok().filter(|(c, _)| *c == 200)
    });
    assert!(get(&addr, "/").unwrap().1.starts_with("hello from v2"));
    // Blue was the standby when bgd died: adopted, it drains (a new bgd
    // keeps no standby), and the next release waits for it.
    wait_until("blue to stop", Duration::from_secs(30), || {
        (bgd.status()["blue"]["state"] == "stopped").then_some(())
    });
    bgd.release(&example_build(bgd.dir.path(), "b3", "v3"));
    assert!(get(&addr, "/").unwrap().1.starts_with("hello from v3"));
}

/// A run record it cannot read made a new bgd kill the color that served
/// ("not adopting blue: its record is unreadable"). Now the color is
/// adopted through its relay, the same process serving on; a missing
/// record too (one a full disk kept bgd from writing).
#[test]
fn a_torn_or_missing_run_record_does_not_kill_the_serving_app() {
    let mut bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let pid = bgd.status()["blue"]["pid"].as_u64().unwrap();
    let record: PathBuf = bgd.root().join("run/blue.json");
    for damage in ["torn", "missing"] {
        bgd.stop(libc::SIGKILL);
        match damage {
            "torn" => tear(&record),
            _ => std::fs::remove_file(&record).unwrap(),
        }
        bgd.respawn_on(&addr);
        let st = bgd.status();
        assert_eq!(
            st["blue"]["pid"].as_u64(),
            Some(pid),
            "{damage}: adopted: {st}"
        );
        assert_eq!(st["live"], "blue", "{st}");
        let said = own_files(&st);
        assert!(
            said.contains("run/blue.json") && said.contains("adopted blue"),
            "{damage}: {st}"
        );
        let body = get(&addr, "/").unwrap().1;
        assert!(body.contains(&format!("pid={pid}")), "{body}");
        assert!(record.exists(), "the record is written again");
    }
}

/// operator.json cut short read as "nothing decided": a paused watcher
/// came back unpaused. Now auto-release stays paused, and status says why.
#[test]
fn a_torn_operator_file_keeps_auto_release_paused() {
    let mut bgd = Bgd::start_after(
        Setup {
            tail: "[watch]\npath = \"build\"\nsettle = \"200ms\"\n".into(),
            ..Setup::default()
        },
        |dir| drop(example_build(dir, "build", "v1")),
    );
    wait_until("the first auto-release", Duration::from_secs(30), || {
        (bgd.status()["watch"]["last_release"]["ok"] == true).then_some(())
    });
    let out = bgd.bgctl(&["watch", "resume"]);
    assert!(out.status.success());
    let out = bgd.bgctl(&["watch", "pause"]);
    assert!(out.status.success());
    let addr = bgd.addr();
    bgd.stop(libc::SIGKILL);
    tear(&bgd.root().join("operator.json"));
    bgd.respawn_on(&addr);
    let st = bgd.status();
    assert_eq!(st["watch"]["state"], "paused", "{st}");
    assert!(
        own_files(&st).contains("operator.json could not be read"),
        "{st}"
    );
}

/// Fills the filesystem of `dir` with `dir/filler`.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![1u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&block[..512]).is_ok() {}
    let _ = f.sync_all();
    filler
}

/// With the disk full, a release exited 7 ("internal") where the docs say
/// 6: its state could not be written. Every path a full disk takes now
/// exits 6: the release whose state cannot be written, one that does not
/// fit, a rollback whose copy fills the disk; the app serves on, and status
/// names the file bgd could not write until it can again.
#[test]
fn a_full_disk_fails_a_release_with_exit_6() {
    let mnt = tempfile::tempdir().unwrap();
    let root = mnt.path().join("root");
    let Some(_unmount) = tmpfs(&root, "8m") else {
        return;
    };
    let bgd = Bgd::start(Setup {
        root: Some(root.clone()),
        ..Setup::default()
    });
    // No state.json yet: the first release cannot write one.
    let filler = fill(&root);
    let b1 = example_build(bgd.dir.path(), "b1", "v1");
    let out = bgd.bgctl(&["release", b1.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("No space left on device") && err.contains("is full"),
        "{err}"
    );
    let st = bgd.status();
    assert!(
        own_files(&st).contains("cannot write") && own_files(&st).contains("state.json"),
        "{st}"
    );
    std::fs::remove_file(filler).unwrap();
    bgd.release(&b1);
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    assert!(
        bgd.status()["own_files"].is_null(),
        "a good write clears the note"
    );

    let filler = fill(&root);
    let big = example_build(bgd.dir.path(), "b3", "v3");
    for args in [
        vec!["release", big.to_str().unwrap()],
        vec!["rollback", "--to", "1"],
    ] {
        let out = bgd.bgctl(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {err}");
        assert!(err.contains("space"), "{args:?}: {err}");
        assert!(get(&bgd.addr(), "/")
            .unwrap()
            .1
            .starts_with("hello from v2"));
    }
    std::fs::remove_file(filler).unwrap();
    bgd.release(&big);
    assert!(get(&bgd.addr(), "/")
        .unwrap()
        .1
        .starts_with("hello from v3"));
}
