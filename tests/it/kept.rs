//! Kept releases (issue 14): rollback to any kept release, `keep`, the
//! app's writes never reaching a kept copy, disk space, taking over an
//! older root, a build that holds the root, the watch pause across a
//! restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Releases `version` of the example app with `label`; panics if it fails.
fn release(bgd: &Bgd, version: &str, label: &str) {
    let b = example_build(bgd.dir.path(), version, version);
    let out = bgd.bgctl(&["release", b.to_str().unwrap(), "--label", label]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// What the live color answers on `/`.
fn serving(bgd: &Bgd) -> String {
    get(&bgd.addr(), "/").unwrap().1
}

fn releases(bgd: &Bgd) -> Value {
    let out = bgd.bgctl(&["releases", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The names in `root/releases` that are whole kept copies, sorted.
fn kept_dirs(root: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(root.join("releases"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The user's story: v1 and v2 go live, v3 fails its health check, and
/// `bgctl rollback` brings back v1 (the good build before the live one),
/// although the failed release was staged over v1's color.
#[test]
fn rollback_after_a_failed_release_brings_back_the_previous_good_build() {
    let bgd = Bgd::start(Setup {
        health: "http = \"/healthz\"\ntimeout = \"3s\"".into(),
        ..Setup::default()
    });
    release(&bgd, "v1", "v1");
    release(&bgd, "v2", "v2");
    let broken = script_build(bgd.dir.path(), "v3", "import sys\nsys.exit(3)\n");
    let out = bgd.bgctl(&["release", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(serving(&bgd).starts_with("hello from v2"));

    let out = bgd.bgctl(&["rollback"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body = serving(&bgd);
    assert!(body.starts_with("hello from v1"), "{body}");
    assert_eq!(release_of(&body), Some(1), "{body}");
    let list = releases(&bgd);
    let states: Vec<(u64, &str)> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [(1, "live"), (2, "kept"), (3, "failed")], "{list}");
    let history = text(&bgd.bgctl(&["history"]).stdout);
    assert!(history.contains("rolled back to release 1"), "{history}");
}

/// `rollback --to LABEL` goes three releases back; an unknown name is
/// refused with the list of kept releases.
#[test]
fn rollback_to_a_label_three_releases_back() {
    let bgd = Bgd::start(Setup::default());
    for v in ["v1", "v2", "v3", "v4"] {
        release(&bgd, v, &format!("tag-{v}"));
    }
    let out = bgd.bgctl(&["rollback", "--to", "tag-v9"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("\"tag-v9\"")
            && err.contains("kept: 4 (tag-v4), 3 (tag-v3), 2 (tag-v2), 1 (tag-v1)"),
        "{err}"
    );
    assert!(serving(&bgd).starts_with("hello from v4"));

    let out = bgd.bgctl(&["rollback", "--to", "tag-v1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body = serving(&bgd);
    assert!(body.starts_with("hello from v1"), "{body}");
    assert_eq!(release_of(&body), Some(1), "{body}");
    let out = bgd.bgctl(&["rollback", "--to", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(serving(&bgd).starts_with("hello from v3"));
}

/// With `keep = 2`, five releases leave the live one and two more kept
/// copies in root, and `bgctl releases` lists the same.
#[test]
fn keep_bounds_the_build_trees_in_root() {
    let bgd = Bgd::start(Setup {
        top: "keep = 2".into(),
        ..Setup::default()
    });
    for v in ["v1", "v2", "v3", "v4", "v5"] {
        release(&bgd, v, v);
    }
    let root = bgd.root();
    // `keep` good releases besides those in use: 5 is live and 4 is the
    // standby (traffic.standby), so 2 and 3 stay too.
    wait_until("old kept copies to go", Duration::from_secs(20), || {
        (kept_dirs(&root) == [2, 3, 4, 5]).then_some(())
    });
    let hidden: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with(".staging")
                || e.file_name().to_string_lossy().starts_with(".trash")
        })
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    let list = releases(&bgd);
    let ids: Vec<u64> = list["releases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [2, 3, 4, 5], "{list}");
    assert_eq!(list["releases"][3]["state"], "live", "{list}");
    assert!(list["releases"][0]["size"].as_u64().unwrap() > 0, "{list}");
    let text_list = text(&bgd.bgctl(&["releases"]).stdout);
    assert!(
        text_list.contains("keep = 2") && text_list.contains(" free"),
        "{text_list}"
    );
}

/// The app writes into its own files (truncates one, appends to another,
/// creates a third) when it starts; the kept copy stays as released, and a
/// rollback to it brings back the files as they were built.
#[test]
fn the_running_apps_writes_do_not_change_a_kept_copy() {
    const WRITER: &str = "open('data.txt', 'w').write('written by the app')\n\
        open('real_server.py', 'a').write('\\n# appended by the app\\n')\n\
        open('new.txt', 'w').write('new')\n";
    let bgd = Bgd::start(Setup::default());
    let b1 = wrapped_build(bgd.dir.path(), "b1", "v1", WRITER);
    std::fs::write(b1.join("data.txt"), "pristine").unwrap();
    let server = std::fs::read_to_string(b1.join("real_server.py")).unwrap();
    let out = bgd.bgctl(&["release", b1.to_str().unwrap(), "--label", "writer"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = bgd.root();
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(root.join("blue/data.txt")), "written by the app");
    let kept = root.join("releases/1");
    let unchanged = |when: &str| {
        assert_eq!(read(kept.join("data.txt")), "pristine", "{when}");
        assert_eq!(read(kept.join("real_server.py")), server, "{when}");
        assert!(!kept.join("new.txt").exists(), "{when}");
    };
    unchanged("while release 1 runs");
    release(&bgd, "v2", "v2");
    unchanged("after release 2");
    let out = bgd.bgctl(&["rollback", "--to", "writer"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(serving(&bgd).starts_with("hello from v1"));
    // The rolled-back app wrote into its fresh copy again, not the kept one.
    assert_eq!(read(root.join("blue/data.txt")), "written by the app");
    assert_eq!(
        read(root.join("blue/real_server.py"))
            .matches("appended by the app")
            .count(),
        1
    );
    unchanged("after the rollback");
}

/// A build that fits once but not as a kept copy plus the color's copy is
/// refused at `validate`, before anything is copied: the filesystem holds
/// what it held.
#[test]
fn a_release_that_does_not_fit_is_refused_before_staging() {
    let mnt = tempfile::tempdir().unwrap();
    let root = mnt.path().join("root");
    let Some(_unmount) = tmpfs(&root, "2m") else {
        return;
    };
    let bgd = Bgd::start(Setup {
        root: Some(root.clone()),
        ..Setup::default()
    });
    release(&bgd, "v1", "v1");
    let big = example_build(bgd.dir.path(), "big", "v2");
    std::fs::write(big.join("blob"), vec![7u8; 1200 << 10]).unwrap();
    let out = bgd.bgctl(&["release", big.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("failed at step validate: not enough space for this build")
            && err.contains("nothing was copied"),
        "{err}"
    );
    assert!(!err.contains("copying"), "nothing was copied: {err}");
    assert_eq!(kept_dirs(&root), [1]);
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(serving(&bgd).starts_with("hello from v1"));
}

/// A root written by the bgd before kept releases (`blue/`, `green/`,
/// `state.json` without `releases`) is taken over: the live build serves
/// and is kept, the other good one too, and a rollback reaches it.
#[test]
fn todays_root_layout_is_upgraded_with_the_live_build_kept() {
    let bgd = Bgd::start_after(Setup::default(), |dir| {
        let root = dir.join("root");
        for (color, version) in [("blue", "v1"), ("green", "v2")] {
            let b = example_build(dir, &format!("src-{version}"), version);
            std::fs::create_dir_all(root.join(color)).unwrap();
            std::fs::copy(b.join("server.py"), root.join(color).join("server.py")).unwrap();
        }
        let build = |release: u64, label: &str| {
            serde_json::json!({"release": release, "label": label, "source": "/old/build",
                "staged_at": "2026-11-01T10:00:00Z", "went_live": true, "fingerprint": null})
        };
        let state = serde_json::json!({"version": 1, "live": "green", "next_release": 3,
            "blue": build(1, "old-v1"), "green": build(2, "old-v2")});
        std::fs::write(root.join("state.json"), state.to_string()).unwrap();
        std::os::unix::fs::symlink("green", root.join("live")).unwrap();
    });
    wait_until("the live build to serve", Duration::from_secs(20), || {
        get(&bgd.addr(), "/").ok().filter(|(c, _)| *c == 200)
    });
    assert!(serving(&bgd).starts_with("hello from v2"));
    assert_eq!(kept_dirs(&bgd.root()), [1, 2]);
    let list = releases(&bgd);
    assert_eq!(list["releases"][1]["state"], "live", "{list}");
    assert_eq!(list["releases"][1]["label"], "old-v2", "{list}");
    assert_eq!(list["releases"][0]["state"], "kept", "{list}");
    let out = bgd.bgctl(&["rollback", "--to", "old-v1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(serving(&bgd).starts_with("hello from v1"));
    let out = bgd.bgctl(&["rollback", "--to", "old-v2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(serving(&bgd).starts_with("hello from v2"));
}

/// The shipped example's own layout: the build directory holds the config
/// and `root = "state"`. Releasing it is refused at once with one short
/// line, and nothing is copied.
#[test]
fn a_release_of_a_directory_that_contains_root_is_refused_before_anything_is_copied() {
    let holder = tempfile::tempdir().unwrap();
    let app = holder.path().join("app");
    let bgd = Bgd::start(Setup {
        root: Some(app.join("state")),
        ..Setup::default()
    });
    std::fs::write(app.join("server.py"), "print('hi')\n").unwrap();
    let out = bgd.bgctl(&["release", app.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("contains bgd's root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.len() < 400, "{err}");
    let entries: Vec<String> = std::fs::read_dir(app.join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(entries.iter().all(|e| !e.starts_with('.')), "{entries:?}");
    assert!(kept_dirs(&app.join("state")).is_empty());
}

/// `bgctl watch pause`, then a change, then a restart of bgd: the new bgd
/// is paused too and does not release the changed tree at start; resume
/// releases it.
#[test]
fn a_paused_watcher_stays_paused_across_a_restart() {
    let setup = Setup {
        tail: "[watch]\npath = \"build\"\nsettle = \"200ms\"\n".into(),
        ..Setup::default()
    };
    let mut bgd = Bgd::start_after(setup, |dir| drop(example_build(dir, "build", "v1")));
    wait_until("v1 to be auto-released", Duration::from_secs(30), || {
        get(&bgd.addr(), "/")
            .ok()
            .filter(|(_, b)| b.starts_with("hello from v1"))
    });
    let out = bgd.bgctl(&["watch", "pause"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    drop(example_build(bgd.dir.path(), "build", "v2"));
    assert_eq!(bgd.stop(libc::SIGTERM), Some(0));
    let seen = bgd.log().matches("the watched tree settled").count();
    bgd.spawn(|_| {});
    wait_until(
        "the restarted watcher to settle",
        Duration::from_secs(30),
        || (bgd.log().matches("the watched tree settled").count() > seen).then_some(()),
    );
    let st = bgd.status();
    assert_eq!(st["watch"]["state"], "paused", "{st}");
    assert!(st["release_in_progress"].is_null(), "{st}");
    assert!(serving(&bgd).starts_with("hello from v1"));
    assert!(bgd.bgctl(&["watch", "resume"]).status.success());
    wait_until(
        "the held change to go live",
        Duration::from_secs(30),
        || {
            get(&bgd.addr(), "/")
                .ok()
                .filter(|(_, b)| b.starts_with("hello from v2"))
        },
    );
}
