//! Status, rollback, and bgd's own start, restart and stop.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn rollback_and_status_json() {
    let bgd = Bgd::start(Setup::default());
    let st = bgd.status();
    assert_eq!(st["live"], serde_json::Value::Null);
    assert_eq!(st["blue"]["state"], "empty");
    // Nothing is live yet: clients are refused, not left waiting in a queue.
    assert!(
        get(&bgd.addr(), "/").is_err(),
        "connecting before any release must be refused"
    );
    let out = bgd.bgctl(&["rollback"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));

    let b1 = example_build(bgd.dir.path(), "b1", "v1");
    let out = bgd.bgctl(&["release", b1.to_str().unwrap(), "--label", "first"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let addr = bgd.addr();
    assert_eq!(release_of(&get(&addr, "/").unwrap().1), Some(2));

    let st = bgd.status();
    assert_eq!(st["name"], "test");
    assert_eq!(st["live"], "green");
    assert_eq!(st["green"]["state"], "live");
    assert_eq!(st["green"]["release"], 2);
    assert!(st["green"]["pid"].as_u64().unwrap() > 1);
    // The previous color is kept warm (traffic.standby, 30 s by default):
    // the rollback below is a switch back to it.
    assert_eq!(st["blue"]["state"], "standby");
    assert_eq!(st["blue"]["label"], "first");
    assert_eq!(st["blue"]["source"], b1.display().to_string());
    assert!(st["blue"]["pid"].as_u64().is_some(), "{st}");
    assert!(st["standby_until"].is_string(), "{st}");
    assert_eq!(st["release_in_progress"], serde_json::Value::Null);

    let out = bgd.bgctl(&["rollback"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (code, body) = get(&addr, "/").unwrap();
    assert_eq!((code, release_of(&body)), (200, Some(1)), "{body}");
    assert!(body.starts_with("hello from v1"), "{body}");
    let st = bgd.status();
    assert_eq!(st["live"], "blue");
    assert_eq!(st["green"]["state"], "stopped");
    assert_eq!(
        std::fs::read_link(bgd.root().join("live")).unwrap(),
        std::path::Path::new("blue")
    );

    let text_status = text(&bgd.bgctl(&["status"]).stdout);
    assert!(
        text_status.contains("live blue") && text_status.contains("release 1 (first)"),
        "{text_status}"
    );
}

#[test]
fn restarting_bgd_brings_the_live_color_back() {
    let mut bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let addr = bgd.addr();
    let old_pid = bgd.status()["green"]["pid"].as_u64().unwrap() as i32;

    // SIGTERM drains the live color and exits 0, leaving no app process.
    assert_eq!(bgd.stop(libc::SIGTERM), Some(0));
    assert!(!exists(old_pid), "the app outlived bgd");
    assert!(get(&addr, "/").is_err());

    // The config binds port 0; pin the port bgd got so clients find it again.
    bgd.respawn_on(&addr);
    let body = wait_until(
        "the live color to serve again",
        Duration::from_secs(20),
        || get(&addr, "/").ok().map(|r| r.1),
    );
    assert_eq!(release_of(&body), Some(2), "{body}");
    assert!(body.starts_with("hello from v2"), "{body}");
    // The app may answer a client before bgd's own readiness probe: wait
    // for bgd to have seen it ready.
    let st = wait_until("status to show green live", Duration::from_secs(20), || {
        let st = bgd.status();
        (st["green"]["state"] == "live").then_some(st)
    });
    assert_eq!(st["live"], "green");
}

/// SIGKILL of bgd under load (issue 13): the app keeps serving (not one
/// request fails), a new bgd adopts it (same pids, nothing started twice),
/// `bgctl logs` still gets its output, and a release afterwards works.
#[test]
fn sigkill_of_bgd_leaves_the_app_serving_and_a_new_bgd_adopts_it() {
    for env in [vec![], vec![("BGD_NO_CGROUP".to_string(), "1".to_string())]] {
        let mut bgd = Bgd::start(Setup {
            bgd_env: env.clone(),
            ..Setup::default()
        });
        bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
        let addr = bgd.addr();
        let app = bgd.status()["blue"]["pid"].as_u64().unwrap();
        let load = crate::load::Load::start(&addr, 4, 4);
        wait_until("requests", Duration::from_secs(10), || {
            (load.count() > 50).then_some(())
        });
        bgd.stop(libc::SIGKILL);
        let before = load.count();
        wait_until(
            "requests while bgd is gone",
            Duration::from_secs(10),
            || (load.count() > before + 100).then_some(()),
        );
        assert!(running(app as i32), "{env:?}: the app died with bgd");
        bgd.respawn_on(&addr);
        let st = bgd.status();
        assert_eq!(
            st["blue"]["pid"].as_u64(),
            Some(app),
            "{env:?}: not adopted: {st}"
        );
        assert_eq!(st["blue"]["state"], "live", "{env:?}: {st}");
        assert!(bgd.log().contains("adopted the live color blue"), "{env:?}");
        assert_eq!(
            bgd.log().matches("started ").count(),
            1,
            "{env:?}: started twice:\n{}",
            bgd.log()
        );
        let (code, body) = get(&addr, "/").unwrap();
        assert!(code == 200 && body.contains("release=1"), "{body}");
        bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
        // The adopted process is the previous color now: kept warm as the
        // standby (traffic.standby), and no longer receiving.
        let st = bgd.status();
        assert_eq!(st["blue"]["state"], "standby", "{env:?}: {st}");
        assert_eq!(st["blue"]["pid"].as_u64(), Some(app), "{env:?}: {st}");
        assert_eq!(st["receiving"], "green", "{env:?}: {st}");
        load.finish_clean();
    }
}

/// A recorded pid that now belongs to another process is never adopted
/// (nor killed): bgd checks the start time, starts the live color afresh,
/// and says why.
#[test]
fn a_recycled_pid_is_not_adopted() {
    // A worker keeps the output pipes open, so the relay stays up after the
    // main process dies: only the start time tells the pid was reused.
    let worker = "import os, time\nif os.fork() == 0:\n    time.sleep(3600)";
    for env in [vec![("BGD_NO_CGROUP".to_string(), "1".to_string())], vec![]] {
        let mut bgd = Bgd::start(Setup {
            bgd_env: env.clone(),
            ..Setup::default()
        });
        bgd.release(&wrapped_build(bgd.dir.path(), "b1", "v1", worker));
        let addr = bgd.addr();
        let app = bgd.status()["blue"]["pid"].as_u64().unwrap() as i32;
        bgd.stop(libc::SIGKILL);
        // Its relay is slow to notice the end of the app (stopped here): bgd
        // must end it before it binds new sockets, or the relay's copies
        // would keep the places the steering program points at.
        for relay in relays(&bgd.root()) {
            // SAFETY: kill(2) on a relay of this test's bgd.
            unsafe { libc::kill(relay, libc::SIGSTOP) };
        }
        // The app's main process dies, and its pid is "reused" by an
        // unrelated process.
        // SAFETY: kill(2) on the app's pid, which this test started through bgd.
        unsafe { libc::kill(app, libc::SIGKILL) };
        let mut other = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let record = bgd.root().join("run/blue.json");
        let mut r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
        r["pid"] = other.id().into();
        std::fs::write(&record, r.to_string()).unwrap();
        bgd.respawn_on(&addr);
        let st = wait_until("blue to serve again", Duration::from_secs(20), || {
            let st = bgd.status();
            (st["blue"]["state"] == "live").then_some(st)
        });
        assert_ne!(
            st["blue"]["pid"].as_u64(),
            Some(other.id() as u64),
            "{env:?}: {st}"
        );
        let why = format!(
            "not adopting blue: pid {} is another process now",
            other.id()
        );
        assert!(bgd.log().contains(&why), "{env:?}: {}", bgd.log());
        assert!(
            bgd.log().contains("ending 1 relay(s) of blue"),
            "{env:?}: {}",
            bgd.log()
        );
        assert!(
            running(other.id() as i32),
            "{env:?}: bgd killed an unrelated process"
        );
        other.kill().unwrap();
        other.wait().unwrap();
        bgd.stop(libc::SIGTERM);
        assert!(
            app_processes(&bgd.root(), None).is_empty(),
            "{env:?}: the old worker was left"
        );
    }
}

/// `bgctl reexec` under load: bgd runs the binary now on disk in place;
/// its pid and the app's stay, not one request fails, and a release
/// afterwards works. A binary that cannot start is refused first, and the
/// old bgd runs on and says why.
#[test]
fn reexec_replaces_bgd_in_place_and_refuses_a_broken_binary() {
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("bgd");
    std::fs::copy(BGD, &bin).unwrap();
    let mut bgd = Bgd::start(Setup {
        bgd_bin: Some(bin.clone()),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let addr = bgd.addr();
    let (pid, app) = (bgd.pid(), bgd.status()["blue"]["pid"].as_u64());
    let load = crate::load::Load::start(&addr, 4, 4);

    // A broken upgrade: refused, and nothing changes.
    std::fs::remove_file(&bin).unwrap();
    std::fs::write(
        &bin,
        "#!/bin/sh\necho 'cannot load libfoo.so' >&2\nexit 127\n",
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = bgd.bgctl(&["reexec"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("failed its check")
            && text(&out.stderr).contains("cannot load libfoo.so"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(bgd.status()["pid"].as_u64(), Some(pid as u64));

    // The real upgrade.
    std::fs::remove_file(&bin).unwrap();
    std::fs::copy(BGD, &bin).unwrap();
    let out = bgd.bgctl(&["reexec"]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), bgd.log());
    assert!(
        text(&out.stdout).contains(&format!("bgd answers again (pid {pid})")),
        "{}",
        text(&out.stdout)
    );
    let st = bgd.status();
    assert_eq!(st["pid"].as_u64(), Some(pid as u64), "{st}");
    assert_eq!(
        st["blue"]["pid"].as_u64(),
        app,
        "the app was restarted: {st}"
    );
    assert_eq!(st["blue"]["state"], "live", "{st}");
    let before = load.count();
    wait_until("requests after the reexec", Duration::from_secs(10), || {
        (load.count() > before + 50).then_some(())
    });
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    load.finish_clean();
    assert_eq!(bgd.stop(libc::SIGTERM), Some(0));
    assert!(app_processes(&bgd.root(), None).is_empty());
}

/// `--check` refuses `health.timeout = "0s"` (no release could pass), and
/// accepts `drain_timeout = "0s"` with a warning on stderr; neither creates
/// anything.
#[test]
fn check_refuses_a_zero_health_timeout_and_warns_of_a_zero_drain() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bgd.toml");
    let check = |drain: &str, timeout: &str| {
        std::fs::write(
            &config,
            format!("name = \"x\"\nroot = \"r\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[app]\ncommand = [\"./s\"]\nallow_root = true\ndrain_timeout = \"{drain}\"\n[health]\nhttp = \"/\"\ntimeout = \"{timeout}\"\n"),
        )
        .unwrap();
        let mut c = Command::new(BGD);
        c.arg("--config").arg(&config).arg("--check");
        let out = run_with_deadline(c, Duration::from_secs(30));
        assert!(
            !dir.path().join("r").exists(),
            "--check must not create anything"
        );
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let file = config.display();

    let (code, _, err) = check("5s", "0s");
    assert_eq!(code, Some(2), "{err}");
    let want = format!("bgd: {file}:12:11: health.timeout must be more than 0s");
    assert!(err.starts_with(&want), "want {want}..., got:\n{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let (code, out, err) = check("0s", "5s");
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("{file}: ok\n"));
    let want = format!(
        "warning: {file}:9:17: app.drain_timeout is 0s: in-flight requests are cut at once"
    );
    assert!(err.starts_with(&want), "want {want}..., got:\n{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let (code, _, err) = check("5s", "5s");
    assert_eq!(
        (code, err.as_str()),
        (Some(0), ""),
        "a good config: no warning"
    );
}

/// Each bad config stops bgd with one line that names file:line:col and
/// what to change, before anything is bound or created.
#[test]
fn config_errors_name_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let good = |listen: &str, app: &str, health: &str| {
        format!("name = \"x\"\nroot = \"r\"\n[[listen]]\nname = \"http\"\n{listen}\n[app]\n{app}\nallow_root = true\n[health]\n{health}\n")
    };
    let addr = "address = \"127.0.0.1:0\"";
    let cmd = "command = [\"./s\"]";
    let http = "http = \"/\"";
    let cases = [
        (
            good(addr, &format!("{cmd}\ncomand = 1"), http),
            2,
            "8:1",
            "unknown field `comand`",
        ),
        (
            good(addr, "command = \"./s\"", http),
            2,
            "7:11",
            "invalid type: string \"./s\", expected a sequence",
        ),
        (
            good(addr, &format!("{cmd}\ndrain_timeout = \"5\""), http),
            2,
            "8:17",
            "bad duration \"5\"",
        ),
        (
            good("address = \"localhost\"", cmd, http),
            2,
            "5:11",
            "bad address \"localhost\"",
        ),
        (
            good(addr, "command = []", http),
            2,
            "7:11",
            "app.command is empty",
        ),
        (
            good(addr, cmd, "timeout = \"1s\""),
            2,
            "",
            "[health] checks nothing",
        ),
        (
            good(&format!("address = \"{busy_addr}\""), cmd, http),
            1,
            "5:11",
            "another process holds this address",
        ),
        (
            good("address = \"unix:no/such/dir/app.sock\"", cmd, http),
            1,
            "5:11",
            "the socket's directory does not exist",
        ),
    ];
    for (toml, code, at, want) in cases {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, &toml).unwrap();
        let out = run_with_deadline(
            {
                let mut c = Command::new(BGD);
                c.arg("--config").arg(&config);
                c
            },
            Duration::from_secs(30),
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{toml}\n{err}");
        let prefix = if at.is_empty() {
            format!("bgd: {}: ", config.display())
        } else {
            format!("bgd: {}:{at}: ", config.display())
        };
        assert!(
            err.starts_with(&prefix) && err.contains(want),
            "want {prefix}...{want}, got:\n{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(
            !dir.path().join("r").exists() || code == 1,
            "a bad config must not create anything"
        );
    }
    drop(busy);
}
