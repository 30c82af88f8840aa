//! Misbehaving apps and faults around a running color. The live color keeps
//! serving (or comes back) and nothing is left behind.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::*;

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The live color is killed: bgd restarts it in place, status shows the
/// restart and the exit, and a client that connects meanwhile is served.
#[test]
fn a_dead_live_color_is_restarted_and_queued_clients_are_served() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let pid = bgd.status()["blue"]["pid"].as_u64().unwrap() as i32;

    // SAFETY: kill(2) on the app's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // Connects while no process accepts: the kernel queues it on bgd's socket.
    let (code, body) = get(&addr, "/").unwrap();
    assert_eq!((code, release_of(&body)), (200, Some(1)), "{body}");
    assert!(
        !body.contains(&format!("pid={pid}")),
        "answered by the dead process? {body}"
    );

    let st = wait_until(
        "status to show the restart",
        Duration::from_secs(10),
        || {
            let st = bgd.status();
            (st["blue"]["state"] == "live").then_some(st)
        },
    );
    assert_eq!(st["blue"]["restarts"], 1, "{st}");
    assert_eq!(st["blue"]["last_exit"], "killed by SIGKILL", "{st}");
    assert_ne!(st["blue"]["pid"], pid, "{st}");
}

/// A request that takes 3 s is in flight when its color is drained: it
/// completes with 200.
#[test]
fn slow_requests_complete_during_a_drain() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let pid = bgd.status()["blue"]["pid"].as_u64().unwrap();
    let open_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let idle = open_fds();
    let slow = std::thread::spawn(move || get(&addr, "/slow?ms=3000"));
    wait_until(
        "the app to accept the slow request",
        Duration::from_secs(10),
        || (open_fds() > idle).then_some(()),
    );
    let began = Instant::now();
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let (code, body) = slow.join().unwrap().unwrap();
    assert_eq!((code, body.as_str()), (200, "slow done\n"));
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the drain waited for the request, not for drain_timeout"
    );
}

/// Ready, then dead a second after the swap. By default (a 30 s standby)
/// bgd switches back to the standby by itself (`liveness.rs` tests that
/// under load). Without a standby (`standby = "0s"`, or once its window
/// ended) it is a dead live color: restarted again and again with backoff;
/// status counts the restarts.
#[test]
fn a_flapping_new_color_is_restarted_and_shown() {
    const FLAPS: &str = r#"
import os, threading
threading.Timer(1.0, lambda: os._exit(7)).start()
"#;
    let bgd = Bgd::start(Setup {
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let flappy = wrapped_build(bgd.dir.path(), "flappy", "v1", FLAPS);
    bgd.release(&flappy);
    let st = wait_until("two restarts", Duration::from_secs(30), || {
        let st = bgd.status();
        (st["green"]["restarts"].as_u64() >= Some(2)).then_some(st)
    });
    assert_eq!(st["live"], "green");
    assert_eq!(st["green"]["last_exit"], "exit code 7", "{st}");
    assert!(
        bgd.log().contains("the live color died (exit code 7)"),
        "{}",
        bgd.log()
    );
}

#[test]
fn odd_build_paths_symlinks_and_special_files() {
    let bgd = Bgd::start(Setup::default());
    // A name with spaces, a newline and non-ASCII characters.
    let odd = example_build(bgd.dir.path(), "build v1\nnew line ünï", "v1");
    // A symlink pointing out of the build is copied as a symlink, not followed.
    std::os::unix::fs::symlink("/etc/hostname", odd.join("outside")).unwrap();
    std::os::unix::fs::symlink("server.py", odd.join("inside")).unwrap();
    bgd.release(&odd);
    let blue = bgd.root().join("blue");
    assert_eq!(
        std::fs::read_link(blue.join("outside")).unwrap(),
        std::path::Path::new("/etc/hostname")
    );
    assert_eq!(
        std::fs::read_link(blue.join("inside")).unwrap(),
        std::path::Path::new("server.py")
    );
    assert_eq!(bgd.status()["blue"]["source"], odd.display().to_string());

    // A FIFO is refused, by name, and nothing is left of the attempt.
    let fifo_build = example_build(bgd.dir.path(), "with-fifo", "v2");
    nix::unistd::mkfifo(
        &fifo_build.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let out = bgd.bgctl(&["release", fifo_build.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("pipe is a FIFO") && err.contains("only files, directories and symlinks"),
        "{err}"
    );
    assert_no_staging(&bgd);
    assert_eq!(release_of(&get(&bgd.addr(), "/").unwrap().1), Some(1));
}

fn assert_no_staging(bgd: &Bgd) {
    let left: Vec<_> = std::fs::read_dir(bgd.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".staging"))
        .collect();
    assert!(left.is_empty(), "staging leftovers: {left:?}");
}

/// An entry bgd's user cannot read fails the release at stage, by name.
/// Root reads everything, so as root bgd runs as `nobody` for this test.
#[test]
fn unreadable_entries_fail_staging_by_name() {
    let bgd = Bgd::start(Setup {
        uid: is_root().then_some(65534),
        ..Setup::default()
    });
    let build = example_build(bgd.dir.path(), "b1", "v1");
    let secret = build.join("secret.key");
    std::fs::write(&secret, "x").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("failed at step stage") && err.contains("secret.key: Permission denied"),
        "{err}"
    );
    assert_no_staging(&bgd);
    assert_eq!(bgd.status()["blue"]["state"], "empty");
}

/// A build larger than the filesystem's free space is refused before
/// staging (the estimate), with no staging directory left and both colors
/// as they were. Needs root to mount a small tmpfs as bgd's root.
#[test]
fn disk_full_during_staging_loses_nothing() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let root = mnt.path().join("root");
    let Some(_unmount) = tmpfs(&root, "1m") else {
        return;
    };

    let bgd = Bgd::start(Setup {
        root: Some(root.clone()),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let big = example_build(bgd.dir.path(), "big", "v2");
    std::fs::write(big.join("blob"), vec![7u8; 2 << 20]).unwrap();
    let out = bgd.bgctl(&["release", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not enough space for this build"),
        "{}",
        text(&out.stderr)
    );
    assert_no_staging(&bgd);
    assert!(root.join("blue/server.py").exists());
    let st = bgd.status();
    assert_eq!(st["live"], "blue");
    assert_eq!(st["green"]["state"], "empty", "{st}");
    assert_eq!(release_of(&get(&bgd.addr(), "/").unwrap().1), Some(1));
}

/// bgd is SIGKILLed while the new color waits to be ready. Started again,
/// it finds consistent state, kills what the old one left, removes the
/// leftovers and serves the live color again.
#[test]
fn sigkill_mid_release_then_restart() {
    const SLOW_WITH_WORKER: &str = r#"
import os, time
if os.fork() == 0:
    open("worker.pid", "w").write(str(os.getpid()))
    time.sleep(3600)
time.sleep(3600)
"#;
    let mut bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let state_before = std::fs::read_to_string(bgd.root().join("state.json")).unwrap();

    let slow = script_build(bgd.dir.path(), "slow", SLOW_WITH_WORKER);
    let client = bgd.release_in_background(&slow);
    bgd.wait_step("wait_ready");
    let worker = wait_until("the worker's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(bgd.root().join("green/worker.pid"))
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    });
    let blue_pid = bgd.status()["blue"]["pid"].as_u64().unwrap() as i32;
    bgd.stop(libc::SIGKILL);
    assert!(!client.join().unwrap().status.success());
    // The apps outlive bgd (issue 13): the live one serves on.
    assert!(running(blue_pid), "the live color died with bgd");

    bgd.respawn_on(&addr);
    // The new bgd adopts blue, and drains the half-started green with
    // its worker.
    wait_until(
        "the leftover worker to be stopped",
        Duration::from_secs(20),
        || (!running(worker)).then_some(()),
    );
    assert_eq!(bgd.status()["blue"]["pid"].as_u64(), Some(blue_pid as u64));
    let body = wait_until("blue to serve again", Duration::from_secs(20), || {
        get(&addr, "/").ok().map(|r| r.1)
    });
    assert_eq!(release_of(&body), Some(1), "{body}");
    // The state is the one from before the release or the staged one, never torn.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bgd.root().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["live"], "blue", "{state}\nbefore: {state_before}");
    assert_no_staging(&bgd);
}

/// The app runs as `app.user`, with that user's groups, from a directory it
/// can read. Needs root.
#[test]
fn the_app_runs_as_app_user() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    const WHOAMI: &str = r#"
import json, os, sys
json.dump({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}, open("who.json", "w"))
"#;
    let bgd = Bgd::start(Setup {
        app: "user = \"nobody\"".into(),
        ..Setup::default()
    });
    let build = wrapped_build(bgd.dir.path(), "who", "v1", WHOAMI);
    // Only root may read the build: bgd's copy must be readable by nobody.
    std::fs::set_permissions(
        build.join("real_server.py"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    bgd.release(&build);
    let who: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bgd.root().join("blue/who.json")).unwrap())
            .unwrap();
    assert_eq!(who["uid"], 65534, "{who}");
    assert_eq!(who["euid"], 65534, "{who}");
    assert_eq!(who["gid"], 65534, "{who}");
    assert_eq!(who["groups"], serde_json::json!([65534]), "{who}");
    assert_eq!(get(&bgd.addr(), "/").unwrap().0, 200);
}

/// With `control_mode = "0666"` anyone can connect, so the peer check is
/// what refuses a stranger: it is answered and logged with uid and pid.
#[test]
fn the_control_socket_refuses_other_users() {
    if !is_root() {
        eprintln!("skipped: connecting as another user needs root");
        return;
    }
    let bgd = Bgd::start(Setup {
        top: "control_mode = \"0666\"".into(),
        ..Setup::default()
    });
    let out = run_with_deadline(
        {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BGCTL,
                "--socket",
            ])
            .arg(bgd.socket())
            .arg("status");
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permission denied: uid 65534 may not control this bgd"),
        "{}",
        text(&out.stderr)
    );
    let log = bgd.log();
    assert!(
        log.contains("refused a control connection")
            && log.contains("uid=65534")
            && log.contains("pid="),
        "{log}"
    );
    // The default mode keeps others out at the file system already.
    let bgd = Bgd::start(Setup::default());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(bgd.socket()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

/// Bad clients are answered or dropped, and none of them blocks the others.
#[test]
fn abuse_of_the_control_socket() {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::UnixStream;
    let bgd = Bgd::start(Setup::default());
    let ask = |line: &[u8]| {
        let mut s = UnixStream::connect(bgd.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(line);
        let mut reply = String::new();
        let _ = BufReader::new(s).read_line(&mut reply);
        reply
    };
    for (line, want) in [
        (&b"not json\n"[..], "not valid JSON"),
        (
            b"{\"v\":1,\"cmd\":\"explode\"}\n",
            "unknown variant `explode`",
        ),
        (
            b"{\"v\":9,\"cmd\":\"status\"}\n",
            "protocol version 9 is not supported",
        ),
        (
            b"{\"v\":1,\"cmd\":\"release\",\"dir\":\"relative\"}\n",
            "must be absolute",
        ),
    ] {
        let reply = ask(line);
        assert!(
            reply.contains("\"event\":\"error\"") && reply.contains(want),
            "{reply}"
        );
    }

    // A client that sends half a line and stalls does not hold up others.
    let mut stalled = UnixStream::connect(bgd.socket()).unwrap();
    stalled.write_all(b"{\"v\":1,\"cmd\":").unwrap();
    assert!(ask(b"{\"v\":1,\"cmd\":\"status\"}\n").contains("\"event\":\"done\""));

    // A 10 MB line is cut off with an answer.
    let big = UnixStream::connect(bgd.socket()).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = big.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&vec![b'x'; 10 << 20]));
    let mut reply = String::new();
    BufReader::new(&big).read_line(&mut reply).unwrap();
    assert!(reply.contains("longer than 65536 bytes"), "{reply}");
    drop(big);
    let _ = sender.join();

    // 100 clients at once.
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let mut s = UnixStream::connect(bgd.socket()).unwrap();
            s.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
            s
        })
        .collect();
    for s in clients {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        assert!(reply.contains("\"event\":\"done\""), "{reply}");
    }

    // The stalled client is dropped after the request timeout.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = String::new();
    let _ = stalled.read_to_string(&mut rest);
    assert!(rest.contains("no request line within"), "{rest}");
}

/// A client that disconnects mid-release does not stop it.
#[test]
fn a_release_outlives_its_client() {
    const SLOW_START: &str = r#"
import sys, time
time.sleep(2)
"#;
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let slow = wrapped_build(bgd.dir.path(), "slow", "v1", SLOW_START);
    let mut client = std::process::Command::new(BGCTL)
        .arg("--socket")
        .arg(bgd.socket())
        .arg("release")
        .arg(&slow)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    bgd.wait_step("wait_ready");
    client.kill().unwrap();
    client.wait().unwrap();
    wait_until(
        "release 2 to go live anyway and blue to become the standby",
        Duration::from_secs(30),
        || {
            let st = bgd.status();
            (st["live"] == "green" && st["blue"]["state"] == "standby").then_some(())
        },
    );
    assert_eq!(release_of(&get(&bgd.addr(), "/").unwrap().1), Some(2));
    assert!(
        bgd.log().contains("release 2 is live on green"),
        "{}",
        bgd.log()
    );
}

/// The live color dies while a release starts the other one. The release
/// swaps; the dead color's pending restart is dropped, so exactly one
/// color is live and the next release targets the stopped one.
#[test]
fn the_live_color_dying_during_a_release_leaves_one_live_color() {
    const SLOW_START: &str = r#"
import time
time.sleep(1.5)
"#;
    // Without a standby: with one, a restart of blue that comes up before
    // green is ready would be kept warm instead of stopped.
    let bgd = Bgd::start(Setup {
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let blue_pid = bgd.status()["blue"]["pid"].as_u64().unwrap() as i32;
    let slow = wrapped_build(bgd.dir.path(), "slow", "v1", SLOW_START);
    let client = bgd.release_in_background(&slow);
    bgd.wait_step("wait_ready");
    // SAFETY: kill(2) on the live app's pid.
    unsafe { libc::kill(blue_pid, libc::SIGKILL) };
    assert!(client.join().unwrap().status.success());
    let st = wait_until("blue to settle", Duration::from_secs(10), || {
        let st = bgd.status();
        (st["blue"]["state"] != "restarting" && st["blue"]["state"] != "draining").then_some(st)
    });
    assert_eq!(st["live"], "green", "{st}");
    assert_eq!(st["green"]["state"], "live", "{st}");
    assert_eq!(st["blue"]["state"], "stopped", "{st}");
    assert_eq!(st["blue"]["pid"], serde_json::Value::Null, "{st}");
    bgd.release(&example_build(bgd.dir.path(), "b3", "v1"));
    let st = bgd.status();
    assert_eq!(
        (st["live"].as_str(), st["green"]["state"].as_str()),
        (Some("blue"), Some("stopped")),
        "{st}"
    );
}

/// A build reached through a symlink (`current -> builds/v1`) gives a color
/// directory with the build's own mode, not the symlink's 0777.
#[test]
fn a_symlinked_build_keeps_its_directory_mode() {
    use std::os::unix::fs::PermissionsExt;
    let bgd = Bgd::start(Setup::default());
    let build = example_build(bgd.dir.path(), "v1", "v1");
    std::fs::set_permissions(&build, std::fs::Permissions::from_mode(0o750)).unwrap();
    let link = bgd.dir.path().join("current");
    std::os::unix::fs::symlink(&build, &link).unwrap();
    bgd.release(&link);
    let mode = std::fs::metadata(bgd.root().join("blue"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o750);
}

/// A health.exec check may print; one that hangs is killed when the wait
/// ends, and the failure names the check's last words.
#[test]
fn health_exec_checks_print_and_hanging_ones_are_killed() {
    let bgd = Bgd::start(Setup {
        health: "exec = [\"/bin/sh\", \"./check\"]\ntimeout = \"20s\"".into(),
        ..Setup::default()
    });
    let good = example_build(bgd.dir.path(), "good", "v1");
    // Output after a pause: with the pipes closed early this died of SIGPIPE.
    std::fs::write(
        good.join("check"),
        "sleep 0.2; echo checking; sleep 0.2; echo still checking; exit 0\n",
    )
    .unwrap();
    bgd.release(&good);

    let bgd = Bgd::start(Setup {
        health: "exec = [\"/bin/sh\", \"./check\"]\ntimeout = \"1s\"".into(),
        ..Setup::default()
    });
    let hangs = example_build(bgd.dir.path(), "hangs", "v1");
    std::fs::write(
        hangs.join("check"),
        "echo $$ > check.pid; echo not yet; exec sleep 100\n",
    )
    .unwrap();
    let out = bgd.bgctl(&["release", hangs.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let pid: i32 = std::fs::read_to_string(bgd.root().join("blue/check.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        "the hanging check to be killed",
        Duration::from_secs(10),
        || (!exists(pid)).then_some(()),
    );

    let fails = example_build(bgd.dir.path(), "fails", "v1");
    std::fs::write(
        fails.join("check"),
        "echo database unreachable >&2; exit 2\n",
    )
    .unwrap();
    let out = bgd.bgctl(&["release", fails.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("last check: health.exec \"/bin/sh\": exit code 2: database unreachable"),
        "{err}"
    );
}

/// The live color's directory is removed and its process dies: every
/// restart fails, and status says why, in JSON and in words.
#[test]
fn status_says_why_the_live_color_cannot_restart() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let pid = bgd.status()["blue"]["pid"].as_u64().unwrap() as i32;
    std::fs::remove_dir_all(bgd.root().join("blue")).unwrap();
    // SAFETY: kill(2) on the app's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    let st = wait_until("a failed restart", Duration::from_secs(10), || {
        let st = bgd.status();
        st["blue"]["reason"].as_str().is_some().then_some(st)
    });
    assert_eq!(st["blue"]["state"], "restarting", "{st}");
    let reason = st["blue"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not exist: nothing to start for blue"),
        "{st}"
    );
    let out = bgd.bgctl(&["status"]);
    let shown = text(&out.stdout);
    assert!(shown.contains("nothing to start for blue"), "{shown}");
}
