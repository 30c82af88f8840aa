//! Hostile and damaged builds (issue 26): setuid tools of another user,
//! sparse files, very deep trees, a build written while it is copied, a
//! kept copy damaged by hand, a watched path that is a symlink.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const NOBODY: u32 = 65534;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A build made by `nobody` holds `tool`, 4755, and `gtool`, 2755 with
/// nobody's group: no copy bgd makes as root (the kept copy, the color's
/// copy, a rollback's copy) is setuid or setgid for root. Without
/// `app.user` (the color's copy is root's too) and with it.
#[test]
fn a_deploy_users_setuid_tool_never_becomes_roots() {
    if !is_root() {
        eprintln!("skipped: files of another owner need root");
        return;
    }
    for app in ["allow_root = true", "user = \"nobody\""] {
        // No standby: the rollback stages release 1's kept copy.
        let bgd = Bgd::start(Setup {
            app: app.into(),
            tail: NO_STANDBY.into(),
            ..Setup::default()
        });
        let build = example_build(bgd.dir.path(), "b1", "v1");
        for (name, bits) in [("tool", 0o4755), ("gtool", 0o2755)] {
            let tool = build.join(name);
            std::fs::copy("/usr/bin/id", &tool).unwrap();
            std::os::unix::fs::chown(&tool, Some(NOBODY), Some(NOBODY)).unwrap();
            std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(bits)).unwrap();
        }
        // Root's own setuid tool in a root-made build stays root's.
        let own = build.join("own");
        std::fs::copy("/usr/bin/id", &own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o4755)).unwrap();
        bgd.release(&build);
        bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
        let out = bgd.bgctl(&["rollback", "--to", "1"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let root = bgd.root();
        // Release 1's kept copy, and its copy in blue by the rollback.
        for dir in [root.join("releases/1"), root.join("blue")] {
            for name in ["tool", "gtool"] {
                let p = dir.join(name);
                let m = std::fs::metadata(&p).unwrap();
                assert_eq!(
                    m.mode() & 0o6000,
                    0,
                    "{app}: {} is {:o}, owned by {}:{}",
                    p.display(),
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                );
                assert_eq!(m.mode() & 0o777, 0o755, "the rest of the mode stays");
            }
        }
        assert_eq!(
            mode(&root.join("releases/1/own")),
            0o4755,
            "root's own tool"
        );
        let own = std::fs::metadata(root.join("blue/own")).unwrap();
        if own.uid() == 0 {
            assert_eq!(own.mode() & 0o7777, 0o4755, "{app}");
        } else {
            assert_eq!(own.mode() & 0o7777, 0o755, "{app}: handed to nobody");
        }
    }
}

/// Same kind: file capabilities (`security.capability`) of a build are not
/// carried into any copy bgd makes.
#[test]
fn file_capabilities_are_not_copied() {
    if !is_root()
        || std::process::Command::new("setcap")
            .arg("-h")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and setcap");
        return;
    }
    let bgd = Bgd::start(Setup::default());
    let build = example_build(bgd.dir.path(), "b1", "v1");
    std::fs::copy("/usr/bin/id", build.join("tool")).unwrap();
    let set = std::process::Command::new("setcap")
        .args(["cap_net_bind_service,cap_setuid+ep"])
        .arg(build.join("tool"))
        .status()
        .unwrap();
    if !set.success() {
        eprintln!("skipped: this filesystem takes no file capabilities");
        return;
    }
    bgd.release(&build);
    for p in [
        bgd.root().join("releases/1/tool"),
        bgd.root().join("blue/tool"),
    ] {
        let caps = std::process::Command::new("getcap")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            text(&caps.stdout).trim().is_empty(),
            "{}: {}",
            p.display(),
            text(&caps.stdout)
        );
    }
}

/// A 1 GiB sparse file holding 20 KiB fits a 64 MiB root (it was refused
/// with "needs 2147.5 MB"), and each copy of it stays sparse, the
/// rollback's too.
#[test]
fn a_sparse_file_is_copied_sparse_and_sized_by_its_data() {
    let mnt = tempfile::tempdir().unwrap();
    let root = mnt.path().join("root");
    let Some(_unmount) = tmpfs(&root, "64m") else {
        return;
    };
    let bgd = Bgd::start(Setup {
        root: Some(root.clone()),
        ..Setup::default()
    });
    let build = example_build(bgd.dir.path(), "b1", "v1");
    sparse(&build.join("data.bin"), 1 << 30);
    bgd.release(&build);
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let out = bgd.bgctl(&["rollback", "--to", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for p in ["releases/1/data.bin", "blue/data.bin"] {
        assert_sparse(&root.join(p), 1 << 30);
    }
}

/// Same kind, on the disk the tests run on (no tmpfs): a 200 MiB sparse
/// file was written out as 2 x 200 MiB.
#[test]
fn a_sparse_file_is_not_filled_in() {
    let bgd = Bgd::start(Setup::default());
    let build = example_build(bgd.dir.path(), "b1", "v1");
    sparse(&build.join("data.bin"), 200 << 20);
    bgd.release(&build);
    for p in ["releases/1/data.bin", "blue/data.bin"] {
        assert_sparse(&bgd.root().join(p), 200 << 20);
    }
    let mb = |m: &Value| m.as_u64().unwrap() as f64 / 1e6;
    let listing = bgd.bgctl(&["releases", "--json"]);
    let listing: Value = serde_json::from_slice(&listing.stdout).unwrap();
    assert!(mb(&listing["kept_bytes"]) < 5.0, "{listing}");
}

/// `len` bytes with 20 KiB of data at the start, the middle and the end.
fn sparse(path: &Path, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    for at in [0, len / 2, len - (4 << 10)] {
        f.write_all_at(&[9u8; 4 << 10], at).unwrap();
    }
    f.write_all_at(&[1u8; 8 << 10], 4 << 10).unwrap();
    f.sync_all().unwrap();
}

fn assert_sparse(p: &Path, len: u64) {
    use std::os::unix::fs::FileExt;
    let m = std::fs::metadata(p).unwrap();
    assert_eq!(m.len(), len, "{}", p.display());
    assert!(
        m.blocks() * 512 < 1 << 20,
        "{} takes {} bytes on disk",
        p.display(),
        m.blocks() * 512
    );
    let f = std::fs::File::open(p).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, len / 2).unwrap();
    assert_eq!(b, [9; 4]);
    f.read_exact_at(&mut b, len / 4).unwrap();
    assert_eq!(b, [0; 4]);
}

/// Removes its directories with `rm -rf` when dropped (after the `Bgd`
/// declared after it, whose temp dir's own removal gives up on a tree
/// 1,900 deep: std's `remove_dir_all` holds a descriptor per level, more
/// than an ordinary user's 1,024).
struct RemoveDeep(Vec<PathBuf>);

impl Drop for RemoveDeep {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = Command::new("rm").arg("-rf").arg(dir).status();
        }
    }
}

/// `depth` nested directories `d` below `top`, with a file at the bottom,
/// made level by level with `mkdirat`/`openat` (no path grows long).
fn deep(top: &Path, depth: usize) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(top).unwrap();
    let c = |s: &[u8]| CString::new(s).unwrap();
    // SAFETY: open(2)/mkdirat(2)/openat(2)/close(2) on fds this function
    // owns and NUL-terminated names.
    unsafe {
        let mut fd = libc::open(c(top.as_os_str().as_bytes()).as_ptr(), libc::O_DIRECTORY);
        assert!(fd >= 0);
        for _ in 0..depth {
            assert_eq!(libc::mkdirat(fd, c(b"d").as_ptr(), 0o755), 0);
            let next = libc::openat(fd, c(b"d").as_ptr(), libc::O_DIRECTORY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
        let f = libc::openat(
            fd,
            c(b"bottom").as_ptr(),
            libc::O_CREAT | libc::O_WRONLY,
            0o644,
        );
        assert!(f >= 0);
        libc::close(f);
        libc::close(fd);
    }
}

/// A build 1,900 directories deep made bgd abort with a stack overflow
/// (exit 134): it is released, kept, and removed once pruned. One
/// deeper than 2,000 levels is refused by name before anything is copied.
#[test]
fn a_very_deep_build_is_released_and_a_deeper_one_refused() {
    let mut cleanup = RemoveDeep(Vec::new());
    let bgd = Bgd::start(Setup {
        top: "keep = 0".into(),
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    cleanup.0.push(bgd.dir.path().to_path_buf());
    let build = example_build(bgd.dir.path(), "b1", "v1");
    deep(&build.join("x"), 1_900);
    bgd.release(&build);
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    bgd.release(&example_build(bgd.dir.path(), "b3", "v3"));
    assert_eq!(get(&bgd.addr(), "/").unwrap().0, 200);
    assert_eq!(bgd.status()["live"], "blue");

    let too = example_build(bgd.dir.path(), "b4", "v4");
    deep(&too.join("x"), 2_010);
    let out = bgd.bgctl(&["release", too.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("more than 2000 directories deep"), "{err}");
    assert!(!err.contains('\n') || err.lines().count() == 1, "{err}");
    assert!(bgd.status()["pid"].as_u64().is_some(), "bgd still answers");
    // The deep tree went away with the color that held it (keep = 0).
    wait_until("release 1's copies to go", Duration::from_secs(30), || {
        (!bgd.root().join("releases/1").exists()).then_some(())
    });
}

/// Same kind: a watched tree 1,900 deep killed bgd in 2 or 3 of 3 starts
/// (the fingerprint recursed); now it is watched, fingerprinted and
/// auto-released.
#[test]
fn a_very_deep_watched_tree_is_released() {
    let setup = Setup {
        tail: "[watch]\npath = \"build\"\nsettle = \"300ms\"\n".into(),
        ..Setup::default()
    };
    let mut cleanup = RemoveDeep(Vec::new());
    let bgd = Bgd::start_after(setup, |dir| {
        let b = example_build(dir, "build", "v1");
        deep(&b.join("x"), 1_900);
    });
    cleanup.0.push(bgd.dir.path().to_path_buf());
    let st = wait_until("the deep tree's release", Duration::from_secs(60), || {
        let st = bgd.status();
        (st["watch"]["last_release"]["ok"] == true).then_some(st)
    });
    assert_eq!(st["live"], "blue", "{st}");
    assert!(bgd.root().join("blue/x/d/d/d").is_dir());
}

/// The writer: 600 files rewritten over and over while `bgctl
/// release` copies them. It exited 0 with 507 old and 93 new files; now
/// the release is refused (exit 6) and says how to build safely.
#[test]
fn a_build_written_while_it_is_copied_is_refused_with_the_fix() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let build = example_build(bgd.dir.path(), "b2", "v2");
    let files: Vec<PathBuf> = (0..600).map(|i| build.join(format!("f{i:03}"))).collect();
    for f in &files {
        std::fs::write(f, vec![b'o'; 16 << 10]).unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, files) = (stop.clone(), files.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                for f in &files {
                    std::fs::write(f, format!("new {round}").repeat(1000)).unwrap();
                }
            }
        })
    };
    let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("changed while it was copied"), "{err}");
    assert!(err.contains("rename it into place"), "{err}");
    let st = bgd.status();
    assert_eq!(st["live"], "blue", "{st}");
    assert!(get(&bgd.addr(), "/")
        .unwrap()
        .1
        .starts_with("hello from v1"));
    assert!(
        !bgd.root().join("releases/2").exists(),
        "no kept copy of it"
    );
}

/// Same kind: a file the config ignores (`watch.ignore`), a log written
/// all the time, does not make the copy fail; what it held is copied.
#[test]
fn an_ignored_file_written_during_the_copy_does_not_refuse_the_build() {
    let bgd = Bgd::start(Setup {
        tail: "[watch]\npath = \"elsewhere\"\nignore = [\"*.log\"]\n".into(),
        ..Setup::default()
    });
    let build = example_build(bgd.dir.path(), "b1", "v1");
    for i in 0..300 {
        std::fs::write(build.join(format!("f{i:03}")), vec![b'x'; 16 << 10]).unwrap();
    }
    let log = build.join("app.log");
    std::fs::write(&log, "").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, log) = (stop.clone(), log.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"a line of log\n").unwrap();
            }
        })
    };
    let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// `rm releases/2/app.css`, then `rollback --to v2`: it exited 0 and status
/// showed v2's fingerprint for the damaged tree. Now the rollback is
/// refused naming the file (exit 5), nothing changes, and `bgctl
/// releases` marks the copy damaged, without its fingerprint.
#[test]
fn a_damaged_kept_copy_is_refused_naming_what_differs() {
    // No standby: a rollback to v2 would switch to its running process.
    let bgd = Bgd::start(Setup {
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    for v in ["v1", "v2", "v3"] {
        let b = example_build(bgd.dir.path(), v, v);
        std::fs::write(b.join("app.css"), format!("/* {v} */ body {{}}")).unwrap();
        let out = bgd.bgctl(&["release", b.to_str().unwrap(), "--label", v]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    std::fs::remove_file(bgd.root().join("releases/2/app.css")).unwrap();
    let out = bgd.bgctl(&["rollback", "--to", "v2"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("release 2") && err.contains("app.css is missing"),
        "{err}"
    );
    let st = bgd.status();
    assert_eq!(st["live"], "blue", "{st}");
    assert_eq!(st["blue"]["release"], 3, "{st}");
    assert!(
        st["last_result"].as_str().unwrap().contains("is damaged"),
        "{st}"
    );
    assert!(get(&bgd.addr(), "/")
        .unwrap()
        .1
        .starts_with("hello from v3"));
    let listing = bgd.bgctl(&["releases", "--json"]);
    let listing: Value = serde_json::from_slice(&listing.stdout).unwrap();
    let two = &listing["releases"][1];
    assert_eq!(two["id"], 2, "{listing}");
    assert!(two["fingerprint"].is_null(), "{two}");
    assert!(
        two["damaged"]
            .as_str()
            .unwrap()
            .contains("app.css is missing"),
        "{two}"
    );
    let shown = text(&bgd.bgctl(&["releases"]).stdout);
    assert!(shown.contains("damaged: app.css is missing"), "{shown}");

    // A plain rollback picks the same target (the previous good release),
    // and is refused the same way.
    let out = bgd.bgctl(&["rollback"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("app.css is missing"), "{err}");
    // Same kind: a file changed in place in a kept copy (same name, other
    // size) is refused too.
    std::fs::write(
        bgd.root().join("releases/1/server.py"),
        "print('tampered')\n",
    )
    .unwrap();
    let out = bgd.bgctl(&["rollback", "--to", "v1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("server.py changed size"), "{err}");
    assert!(get(&bgd.addr(), "/")
        .unwrap()
        .1
        .starts_with("hello from v3"));
}

/// `[watch] path = "current"`, a symlink to `releases/A` (capistrano's
/// layout): an edit inside the target was never released (status: idle).
/// Now it is, and so is a repointed symlink.
#[test]
fn a_watched_symlink_releases_edits_in_its_target_and_a_repoint() {
    let setup = Setup {
        tail: "[watch]\npath = \"app/current\"\nsettle = \"300ms\"\n".into(),
        ..Setup::default()
    };
    let bgd = Bgd::start_after(setup, |dir| {
        std::fs::create_dir_all(dir.join("app/releases")).unwrap();
        example_build(&dir.join("app/releases"), "A", "vA");
        example_build(&dir.join("app/releases"), "B", "vB");
        std::os::unix::fs::symlink("releases/A", dir.join("app/current")).unwrap();
    });
    let serving = |v: &str| {
        wait_until(
            &format!("{v} to be served"),
            Duration::from_secs(60),
            || {
                get(&bgd.addr(), "/")
                    .ok()
                    .filter(|(_, b)| b.starts_with(&format!("hello from {v}")))
            },
        )
    };
    serving("vA");
    let app = bgd.dir.path().join("app");
    let server = app.join("releases/A/server.py");
    let src = std::fs::read_to_string(&server).unwrap();
    std::fs::write(&server, src.replace("\"vA\"", "\"vA2\"")).unwrap();
    serving("vA2");
    // Repointed the way deploy tools do it: a new link renamed over it.
    std::os::unix::fs::symlink("releases/B", app.join("current.new")).unwrap();
    std::fs::rename(app.join("current.new"), app.join("current")).unwrap();
    serving("vB");
    // Same kind: `ln -sfn` (an unlink, then a new link), and an edit in
    // the new target.
    let ln = std::process::Command::new("ln")
        .args(["-sfn", "releases/A"])
        .arg(app.join("current"))
        .status()
        .unwrap();
    assert!(ln.success());
    serving("vA2");
    let server = app.join("releases/A/server.py");
    let src = std::fs::read_to_string(&server).unwrap();
    std::fs::write(&server, src.replace("\"vA2\"", "\"vA3\"")).unwrap();
    serving("vA3");
    let st = bgd.status();
    assert_eq!(st["watch"]["last_release"]["ok"], true, "{st}");
}
