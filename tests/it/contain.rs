//! Containment (issue 13): every process of a color, however it forked,
//! `setsid()`ed or daemonized, is found, stopped and killed with it. Each
//! test runs with cgroups (when this machine has a writable cgroup v2, as
//! CI as root does) and with the process-group fallback (`BGD_NO_CGROUP`).

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::load::Load;

/// A build that daemonizes: fork, setsid, fork again; the grandchild
/// writes its pid to PIDFILE and serves fd 3 after 1 s. The main process
/// exits once the pid is written (else bgd could kill the grandchild
/// before it exists, and the test would have no pid to look for).
const DAEMONIZES: &str = r#"
import os, socket, time
if os.fork() > 0:
    while not os.path.exists("PIDFILE"):
        time.sleep(0.005)
    os._exit(0)
os.setsid()
if os.fork() > 0:
    os._exit(0)
open("PIDFILE.new", "w").write(str(os.getpid()))
os.rename("PIDFILE.new", "PIDFILE")
time.sleep(1)
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
    c.close()
"#;

/// The example app plus a worker that leaves the process group and ignores
/// SIGTERM; its pid goes to `worker.pid`.
const STUCK_WORKER: &str = r#"
import os, signal, time
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    open("worker.pid", "w").write(str(os.getpid()))
    while True:
        time.sleep(1)
"#;

fn modes() -> [(&'static str, Vec<(String, String)>); 2] {
    [
        ("cgroup", Vec::new()),
        ("fallback", vec![("BGD_NO_CGROUP".into(), "1".into())]),
    ]
}

fn read_pid(path: &std::path::Path) -> i32 {
    wait_until(
        &format!("{}", path.display()),
        Duration::from_secs(10),
        || std::fs::read_to_string(path).ok()?.trim().parse().ok(),
    )
}

/// A daemonizing build is refused, and its escaped grandchild is gone
/// within 1 s of the refusal.
#[test]
fn a_daemonizing_build_is_refused_and_its_grandchild_killed() {
    for (mode, env) in modes() {
        let bgd = Bgd::start(Setup {
            bgd_env: env,
            ..Setup::default()
        });
        bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
        // Outside the build: a failed release's copy does not stay.
        let pidfile = bgd.dir.path().join("daemon.pid");
        let code = DAEMONIZES.replace("PIDFILE", pidfile.to_str().unwrap());
        let bad = script_build(bgd.dir.path(), "daemon", &code);
        let out = bgd.bgctl(&["release", bad.to_str().unwrap()]);
        let refused = Instant::now();
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", text(&out.stderr));
        let pid = read_pid(&pidfile);
        wait_until(
            &format!("{mode}: the grandchild {pid} to be gone"),
            Duration::from_secs(5),
            || (!exists(pid)).then_some(()),
        );
        assert!(
            refused.elapsed() < Duration::from_secs(1),
            "{mode}: the grandchild lived {:?} after the refusal",
            refused.elapsed()
        );
        let (code, body) = get(&bgd.addr(), "/").unwrap();
        assert!(code == 200 && body.contains("release=1"), "{mode}: {body}");
    }
}

/// A live build that daemonizes after it is ready never multiplies: each
/// time its main process exits, what it left behind is stopped with it
/// before the color starts again, and the log says what happened.
#[test]
fn a_live_build_that_daemonizes_never_multiplies() {
    let later = "import os, threading, time\n\
        def daemonize():\n    if os.fork() == 0:\n        os.setsid()\n        time.sleep(3600)\n    os._exit(0)\n\
        threading.Timer(0.5, daemonize).start()";
    for (mode, env) in modes() {
        let bgd = Bgd::start(Setup {
            bgd_env: env,
            ..Setup::default()
        });
        bgd.release(&wrapped_build(bgd.dir.path(), "b1", "v1", later));
        let end = Instant::now() + Duration::from_secs(4);
        let mut most = 0;
        while Instant::now() < end {
            most = most.max(app_processes(&bgd.root(), None).len());
            std::thread::sleep(Duration::from_millis(20)); // sampling, not waiting
        }
        assert!(most <= 2, "{mode}: {most} processes of the app at once");
        let log = bgd.log();
        assert!(log.contains("Did the app daemonize?"), "{mode}: {log}");
        assert!(
            bgd.status()["blue"]["restarts"].as_u64().unwrap() >= 2,
            "{mode}"
        );
    }
}

/// A worker that `setsid()`s and ignores SIGTERM is killed at the drain
/// deadline, under load, and after bgd's stop no process of either color
/// is left.
#[test]
fn a_stuck_setsid_worker_is_killed_at_the_drain_deadline() {
    for (mode, env) in modes() {
        let mut bgd = Bgd::start(Setup {
            drain_timeout: "2s",
            bgd_env: env,
            tail: NO_STANDBY.into(),
            ..Setup::default()
        });
        bgd.release(&wrapped_build(bgd.dir.path(), "b1", "v1", STUCK_WORKER));
        let worker = read_pid(&bgd.root().join("blue/worker.pid"));
        let st = bgd.status();
        assert!(
            st["blue"]["processes"].as_u64().unwrap() >= 2,
            "{mode}: {st}"
        );
        let load = Load::start(&bgd.addr(), 2, 2);
        let out = bgd.release(&wrapped_build(bgd.dir.path(), "b2", "v2", STUCK_WORKER));
        assert!(
            text(&out.stderr).contains("killed after drain_timeout"),
            "{mode}: {}",
            text(&out.stderr)
        );
        assert!(
            !exists(worker),
            "{mode}: the stuck worker {worker} survived the drain"
        );
        load.finish_clean();
        let green_worker = read_pid(&bgd.root().join("green/worker.pid"));
        assert!(exists(green_worker));
        assert_eq!(bgd.stop(libc::SIGTERM), Some(0), "{mode}");
        let left = app_processes(&bgd.root(), None);
        assert!(left.is_empty(), "{mode}: left after bgd stopped: {left:?}");
    }
}

/// Status says how colors are contained and counts each color's processes.
#[test]
fn status_shows_the_containment_and_the_processes() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let st = bgd.status();
    let c = st["containment"].as_str().unwrap();
    let cgroup_here = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(" - cgroup2 ")
        && nix::unistd::geteuid().is_root();
    if cgroup_here {
        assert!(c.starts_with("cgroup /sys/fs/cgroup"), "{c}");
        assert!(st["blue"]["cpu_usec"].is_u64(), "{st}");
    } else {
        assert!(c.starts_with("process group"), "{c}");
    }
    assert_eq!(st["blue"]["processes"], 1, "{st}");
    assert_eq!(st["green"]["processes"], 0, "{st}");
}

/// Pids of running processes whose command line has the argument `arg`.
fn running_with_arg(arg: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()) && running(pid) {
            out.push(pid);
        }
    }
    out
}

/// Hooks (`prepare`, `after_live`) and a `health.exec` check each start a
/// process in the background that calls setsid() (the named case, and a
/// check that does the same): none outlives its step, with cgroups and in
/// the fallback. Then a prepare hook still running when bgd gets SIGTERM,
/// with its own background process: once bgd has exited, nothing of it
/// runs, and (with cgroups) bgd's cgroup tree is gone.
#[test]
fn hooks_and_checks_leave_nothing_behind_their_step_or_bgd() {
    for (i, (mode, env)) in modes().into_iter().enumerate() {
        let mark = |n: u32| format!("{}", 31000 + 100 * i as u32 + n);
        let (prep, after, check) = (mark(1), mark(2), mark(3));
        let bg = |m: &str| format!("setsid sleep {m} >/dev/null 2>&1 &");
        let mut bgd = Bgd::start(Setup {
            bgd_env: env,
            health: format!(
                "http = \"/healthz\"\nexec = [\"/bin/sh\", \"-c\", \"{} true\"]\ntimeout = \"20s\"",
                bg(&check)
            ),
            tail: format!(
                "[hooks]\nprepare = [\"{} test ! -e stuck || {{ echo $$ > hook.pid; sleep 60; }}\"]\nafter_live = [\"{} touch after-live.ran\"]\n",
                bg(&prep),
                bg(&after)
            ),
            ..Setup::default()
        });
        bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
        let ran = bgd.root().join("blue/after-live.ran");
        wait_until(
            &format!("{mode}: after_live to run"),
            Duration::from_secs(10),
            || ran.exists().then_some(()),
        );
        for m in [&prep, &after, &check] {
            wait_until(
                &format!("{mode}: nothing left of the step that started sleep {m}"),
                Duration::from_secs(5),
                || running_with_arg(m).is_empty().then_some(()),
            );
        }
        let tree = bgd.status()["containment"]
            .as_str()
            .and_then(|c| c.strip_prefix("cgroup "))
            .map(std::path::PathBuf::from);
        // A release whose prepare hook is still running at bgd's stop.
        // The same prepare hook waits when the build has a file `stuck`.
        let stuck_build = example_build(bgd.dir.path(), "b2", "v2");
        std::fs::write(stuck_build.join("stuck"), "").unwrap();
        let client = bgd.release_in_background(&stuck_build);
        let hook = read_pid(&bgd.root().join("green/hook.pid"));
        wait_until(
            &format!("{mode}: the stuck hook's background process"),
            Duration::from_secs(10),
            || (!running_with_arg(&prep).is_empty()).then_some(()),
        );
        assert_eq!(bgd.stop(libc::SIGTERM), Some(0), "{mode}");
        let _ = client.join();
        assert!(
            running_with_arg(&prep).is_empty(),
            "{mode}: sleep {prep} outlived bgd"
        );
        assert!(!running(hook), "{mode}: the hook outlived bgd");
        if let Some(tree) = tree {
            assert!(
                !tree.exists(),
                "{mode}: {} is left after a clean exit",
                tree.display()
            );
        }
    }
}
