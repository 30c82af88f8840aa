//! Configs an operator edits by hand (issue 26): a NUL byte in a value, a
//! reload that names a program that is not there, a health endpoint slower
//! than 2 s. `bgd --check` and SIGHUP refuse what a start would fail on,
//! and a refused reload keeps the running config: the live color's next
//! restart still works.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

/// `bgd --check` on `bgd`'s config: (exit code, stderr).
fn check(bgd: &Bgd) -> (Option<i32>, String) {
    let mut cmd = Command::new(BGD);
    cmd.arg("--check").arg("--config").arg(&bgd.config);
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    (out.status.code(), text(&out.stderr))
}

/// Replaces `from` with `to` in bgd's config file.
fn edit(bgd: &Bgd, from: &str, to: &str) {
    let c = std::fs::read_to_string(&bgd.config).unwrap();
    assert!(c.contains(from), "{c}");
    std::fs::write(&bgd.config, c.replacen(from, to, 1)).unwrap();
}

/// SIGHUP, then waits for the reload's result in status.
fn reload(bgd: &Bgd) -> String {
    let before = bgd.status()["last_result"].clone();
    // SAFETY: kill(2) on the bgd this test started.
    unsafe { libc::kill(bgd.pid() as i32, libc::SIGHUP) };
    wait_until("the reload's result", Duration::from_secs(20), || {
        let st = bgd.status();
        let r = &st["last_result"];
        (r != &before && r.as_str().is_some_and(|r| r.contains("reload")))
            .then(|| r.as_str().unwrap().to_string())
    })
}

/// SIGKILLs the live color's process and waits until it serves again:
/// the restart runs with the config that is in force.
fn crash_and_serve(bgd: &Bgd) {
    let pid = bgd.status()["blue"]["pid"].as_i64().unwrap();
    // SAFETY: kill(2) on the app process bgd started for this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until("a restart", Duration::from_secs(30), || {
        let st = bgd.status();
        (st["blue"]["pid"].as_i64().is_some_and(|p| p != pid) && st["blue"]["state"] == "live")
            .then_some(())
    });
    let answered = (0..10)
        .filter(|_| get(&bgd.addr(), "/").is_ok_and(|(c, _)| c == 200))
        .count();
    assert_eq!(answered, 10, "10 of 10 requests answered after the restart");
}

/// An `app.env` value with a NUL byte: `--check` and SIGHUP accepted it,
/// and after the reload a crash of the live app left it restarting
/// forever (0 of 10 requests answered). Both refuse it now with
/// file:line:col, and the restart runs with the old config.
#[test]
fn a_nul_byte_in_an_env_value_is_refused_by_check_and_reload() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    edit(
        &bgd,
        "PYTHONUNBUFFERED = \"1\"",
        "PYTHONUNBUFFERED = \"1\\u0000\"",
    );
    let (code, err) = check(&bgd);
    assert_eq!(code, Some(2), "{err}");
    let at = format!("{}:", bgd.config.display());
    assert!(err.contains(&at), "{err}");
    assert!(
        err.contains("app.env.PYTHONUNBUFFERED: the value holds a NUL byte"),
        "{err}"
    );
    let result = reload(&bgd);
    assert!(
        result.contains("reload failed") && result.contains("NUL"),
        "{result}"
    );
    crash_and_serve(&bgd);
    // Same kind: a NUL in a command's argument.
    edit(
        &bgd,
        "PYTHONUNBUFFERED = \"1\\u0000\"",
        "PYTHONUNBUFFERED = \"1\"",
    );
    edit(&bgd, "\"server.py\"]", "\"server.py\", \"x\\u0000\"]");
    let (code, err) = check(&bgd);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("app.command[2]: the value holds a NUL byte"),
        "{err}"
    );
}

/// A reload that names a program that is not in the build said "config
/// reloaded", and every restart of the live color failed after its next
/// crash. Now the reload is refused (the old config stays) and so is
/// `--check`; the same for a program that may not be executed, and for
/// `health.exec`.
#[test]
fn a_reload_naming_a_program_that_is_not_there_is_refused() {
    let bgd = Bgd::start(Setup::default());
    let build = example_build(bgd.dir.path(), "b1", "v1");
    std::fs::write(build.join("check.sh"), "#!/bin/sh\nexit 0\n").unwrap();
    bgd.release(&build);
    let python = format!("[\"{}\", \"server.py\"]", python());
    edit(&bgd, &python, "[\"./no-such-server\", \"server.py\"]");
    let (code, err) = check(&bgd);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "app.command: the program \"./no-such-server\" cannot be found in the live build"
        ),
        "{err}"
    );
    let result = reload(&bgd);
    assert!(result.contains("reload failed"), "{result}");
    assert!(result.contains("./no-such-server"), "{result}");
    crash_and_serve(&bgd);

    // Same kind: there, but not executable.
    edit(
        &bgd,
        "[\"./no-such-server\", \"server.py\"]",
        "[\"./server.py\"]",
    );
    let result = reload(&bgd);
    assert!(
        result.contains("may not execute the program \"./server.py\""),
        "{result}"
    );
    // ... a health check command that is not in the build.
    edit(&bgd, "[\"./server.py\"]", &python);
    edit(
        &bgd,
        "[health]\n",
        "[health]\nexec = [\"./no-such-check\"]\n",
    );
    let result = reload(&bgd);
    assert!(
        result.contains("health.exec: the program \"./no-such-check\""),
        "{result}"
    );
    // ... a user that does not exist.
    edit(&bgd, "[\"./no-such-check\"]", "[\"./check.sh\"]");
    std::fs::set_permissions(
        bgd.root().join("blue/check.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    edit(&bgd, "allow_root = true", "user = \"no-such-user-26\"");
    let result = reload(&bgd);
    assert!(result.contains("no-such-user-26"), "{result}");
    crash_and_serve(&bgd);
    // And a good reload still applies.
    edit(&bgd, "user = \"no-such-user-26\"", "allow_root = true");
    let result = reload(&bgd);
    assert!(result.contains("config reloaded"), "{result}");
}

/// An endpoint that answers in 2.5 s was refused with "raise
/// health.timeout", and raising it from 6 s to 16 s changed nothing: each
/// attempt was cut at a fixed 2 s. The advice now names
/// `health.attempt_timeout`, and setting it lets the release pass.
#[test]
fn a_health_endpoint_slower_than_two_seconds_passes_with_attempt_timeout() {
    let bgd = Bgd::start(Setup {
        health: "http = \"/slow?ms=2500\"\ntimeout = \"16s\"".into(),
        ..Setup::default()
    });
    let build = example_build(bgd.dir.path(), "b1", "v1");
    let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("got no answer within health.attempt_timeout (2s)"),
        "{err}"
    );
    assert!(err.contains("raise health.attempt_timeout"), "{err}");
    edit(
        &bgd,
        "timeout = \"16s\"",
        "timeout = \"16s\"\nattempt_timeout = \"5s\"",
    );
    let result = reload(&bgd);
    assert!(result.contains("config reloaded"), "{result}");
    bgd.release(&build);
}
