//! What operators use around a release: hooks, shared data, history, logs,
//! and bgctl's conveniences.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

fn with_hooks(hooks: &str) -> Setup {
    Setup {
        tail: format!("[hooks]\n{hooks}\n"),
        ..Setup::default()
    }
}

#[test]
fn prepare_hooks_run_in_the_staged_directory_with_the_release_env() {
    let bgd = Bgd::start(with_hooks(
        "prepare = [\"echo preparing $BG_COLOR release $BG_RELEASE in $(pwd)\", \"env | grep ^BG_ | sort > hook.env\"]",
    ));
    let out = bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let err = text(&out.stderr);
    let blue = bgd.root().join("blue");
    assert!(
        err.contains(&format!(
            "[prepare] preparing blue release 1 in {}",
            blue.display()
        )),
        "the caller sees the hook's output: {err}"
    );
    assert!(
        err.contains("[stage] copied 1 files, 0.0 MB in "),
        "staging reports what it copied: {err}"
    );
    let env = std::fs::read_to_string(blue.join("hook.env")).unwrap();
    let root = bgd.root().display().to_string();
    for want in [
        "BG_COLOR=blue".to_string(),
        "BG_RELEASE=1".into(),
        format!("BG_ROOT={root}"),
        format!("BG_SHARED={root}/shared"),
        format!("BG_DIR={root}/blue"),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} missing from the hook's env:\n{env}"
        );
    }
}

/// A failing prepare hook aborts the release and shows its output; the old
/// color keeps serving. A hook still running at the timeout is killed with
/// its whole group, background children too. Output that is not UTF-8 does
/// not break a hook.
#[test]
fn a_failing_or_hanging_prepare_hook_aborts_the_release() {
    // Fails only for builds that hold a file named `broken`.
    let hook = "prepare = [\"printf 'caf\\\\351\\\\n'; sleep 0.2; echo migrating\", \"if [ -e broken ]; then echo 'relation users does not exist' >&2; exit 4; fi\"]";
    let bgd = Bgd::start(with_hooks(hook));
    let out = bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    assert!(
        text(&out.stderr).contains("[prepare] caf\u{fffd}"),
        "non-UTF-8 output is shown, replaced: {}",
        text(&out.stderr)
    );
    let broken = example_build(bgd.dir.path(), "b2", "v2");
    std::fs::write(broken.join("broken"), "").unwrap();
    let out = bgd.bgctl(&["release", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("failed at step prepare") && err.contains("exit code 4"),
        "{err}"
    );
    assert!(
        err.contains("| relation users does not exist"),
        "the hook's output is shown: {err}"
    );
    assert_eq!(
        bgd.status()["green"]["state"],
        "stopped",
        "the new color never started"
    );
    assert_eq!(
        release_of(&get(&bgd.addr(), "/").unwrap().1),
        Some(1),
        "the old color serves"
    );

    let bgd = Bgd::start(with_hooks("prepare = [\"sleep 60 & echo $! > child.pid; echo $$ > hook.pid; wait\"]\ntimeout = \"1s\""));
    let out = bgd.bgctl(&[
        "release",
        example_build(bgd.dir.path(), "b1", "v1").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("was still running after hooks.timeout (1s): killed"),
        "{}",
        text(&out.stderr)
    );
    for file in ["hook.pid", "child.pid"] {
        let pid: i32 = std::fs::read_to_string(bgd.root().join("blue").join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        wait_until(
            &format!("{file} to be killed"),
            Duration::from_secs(10),
            || (!exists(pid)).then_some(()),
        );
    }
}

#[test]
fn after_live_hooks_run_after_the_swap_and_do_not_fail_it() {
    let bgd = Bgd::start(with_hooks(
        "after_live = [\"echo live: $BG_COLOR > $BG_ROOT/after.txt\", \"exit 9\"]",
    ));
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    let marker = bgd.root().join("after.txt");
    // The shell creates the file before it writes the line: wait for the line.
    let text_of = wait_until("the after_live hook", Duration::from_secs(10), || {
        std::fs::read_to_string(&marker)
            .ok()
            .filter(|t| t.ends_with('\n'))
    });
    assert_eq!(text_of.trim(), "live: blue");
    wait_until("the failure to be logged", Duration::from_secs(10), || {
        bgd.log()
            .contains(
                "hooks.after_live `exit 9` failed (exit code 9) (not fatal: release 1 stays live)",
            )
            .then_some(())
    });
    assert_eq!(bgd.status()["live"], "blue");
}

/// `shared = ["data"]`: the app writes into data/, the file survives the
/// next release and both colors see the same directory; a build that ships
/// its own data/ gets it replaced by the shared one.
#[test]
fn shared_directories_survive_releases() {
    const WRITER: &str = r#"
import os
with open("data/written-by.txt", "a") as f:
    f.write(os.environ["BG_RELEASE"] + "\n")
"#;
    let setup = Setup {
        top: "shared = [\"data\"]".into(),
        ..Setup::default()
    };
    let bgd = Bgd::start(setup);
    let b1 = wrapped_build(bgd.dir.path(), "b1", "v1", WRITER);
    bgd.release(&b1);
    let b2 = wrapped_build(bgd.dir.path(), "b2", "v1", WRITER);
    std::fs::create_dir(b2.join("data")).unwrap();
    std::fs::write(b2.join("data/from-the-build.txt"), "x").unwrap();
    bgd.release(&b2);
    let shared = bgd.root().join("shared/data");
    assert_eq!(
        std::fs::read_to_string(shared.join("written-by.txt")).unwrap(),
        "1\n2\n"
    );
    for color in ["blue", "green"] {
        let link = std::fs::read_link(bgd.root().join(color).join("data")).unwrap();
        assert_eq!(link, std::path::Path::new("../shared/data"), "{color}");
    }
    assert!(
        !shared.join("from-the-build.txt").exists(),
        "the build's own data/ was replaced, not merged"
    );
    assert!(
        bgd.log().contains("replacing it with the shared directory"),
        "{}",
        bgd.log()
    );
}

#[test]
fn history_records_every_release() {
    let bgd = Bgd::start(Setup::default());
    let b1 = example_build(bgd.dir.path(), "b1", "v1");
    let out = bgd.bgctl(&["release", b1.to_str().unwrap(), "--label", "first"]);
    assert!(out.status.success());
    let crash = script_build(bgd.dir.path(), "crash", "import sys\nsys.exit(3)\n");
    assert_eq!(
        bgd.bgctl(&["release", crash.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    bgd.release(&example_build(bgd.dir.path(), "b3", "v2"));
    assert!(bgd.bgctl(&["rollback"]).status.success());

    let out = bgd.bgctl(&["history", "--json"]);
    let h: Value = serde_json::from_slice(&out.stdout).unwrap();
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 4, "{h:?}");
    let first = &h[0];
    assert_eq!(
        (
            first["release"].as_u64(),
            first["kind"].as_str(),
            first["ok"].as_bool()
        ),
        (Some(1), Some("release"), Some(true))
    );
    assert_eq!(first["label"], "first");
    assert_eq!(first["source"], b1.display().to_string());
    assert_eq!(first["trigger"], "bgctl");
    assert_eq!(first["fingerprint"].as_str().map(str::len), Some(16));
    let steps: Vec<&str> = first["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(
        steps.starts_with(&["stage", "start", "wait_ready"]),
        "{steps:?}"
    );
    assert!(first["started"].as_str().unwrap() <= first["finished"].as_str().unwrap());
    assert_eq!(
        (h[1]["ok"].as_bool(), h[1]["failed_step"].as_str()),
        (Some(false), Some("wait_ready"))
    );
    assert!(
        h[1]["result"].as_str().unwrap().contains("exit code 3"),
        "{}",
        h[1]
    );
    assert_eq!(
        (h[3]["kind"].as_str(), h[3]["release"].as_u64()),
        (Some("rollback"), Some(1))
    );

    let text_out = text(&bgd.bgctl(&["history"]).stdout);
    assert_eq!(
        text_out
            .lines()
            .filter(|l| l.contains(" release ") || l.contains(" rollback "))
            .count(),
        4,
        "{text_out}"
    );
    assert!(
        !text_out.contains('\x1b'),
        "no colors when stdout is not a terminal"
    );
}

#[test]
fn control_characters_in_a_label_are_escaped_in_human_output() {
    let bgd = Bgd::start(Setup::default());
    let b1 = example_build(bgd.dir.path(), "b1", "v1");
    let label = "v1\nhot\tfix";
    let shown = r"(v1\nhot\tfix)";
    let out = bgd.bgctl(&["release", b1.to_str().unwrap(), "--label", label]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let released = text(&out.stdout);
    assert_eq!(released.lines().count(), 1, "{released}");
    assert!(released.contains(shown), "{released}");

    let history = text(&bgd.bgctl(&["history"]).stdout);
    let entries: Vec<&str> = history
        .lines()
        .filter(|l| l.contains(" release "))
        .collect();
    assert_eq!(entries.len(), 1, "one entry, on one line: {history}");
    assert!(entries[0].contains(shown), "{history}");
    assert!(
        entries[0].contains(&b1.display().to_string()),
        "the source is on the entry's line: {history}"
    );
    assert_eq!(
        history.lines().count(),
        2,
        "the entry and its steps: {history}"
    );
    let json: Value = serde_json::from_slice(&bgd.bgctl(&["history", "--json"]).stdout).unwrap();
    assert_eq!(json[0]["label"], label, "--json keeps the exact text");

    let status = text(&bgd.bgctl(&["status"]).stdout);
    let blue: Vec<&str> = status
        .lines()
        .filter(|l| l.trim_start().starts_with("blue"))
        .collect();
    assert_eq!(blue.len(), 1, "{status}");
    assert!(blue[0].contains(shown), "{status}");
    assert!(!status.contains('\t'), "{status}");
}

#[test]
fn logs_show_and_follow_the_apps_output() {
    let bgd = Bgd::start(Setup::default());
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let out = text(&bgd.bgctl(&["logs"]).stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("blue  | hello v1 serving")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("green | hello v2 serving")),
        "{out}"
    );
    let green = text(&bgd.bgctl(&["logs", "--color", "green", "-n", "1"]).stdout);
    assert_eq!(green.lines().count(), 1, "{green}");
    assert!(green.starts_with("green | "), "{green}");
    let json = text(&bgd.bgctl(&["logs", "--json", "-n", "2"]).stdout);
    for l in json.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(
            v["color"].is_string() && v["line"].is_string() && v["pid"].as_u64() > Some(0),
            "{v}"
        );
    }

    // -f: lines printed after it started arrive.
    let mut follow = std::process::Command::new(BGCTL)
        .arg("--socket")
        .arg(bgd.socket())
        .args(["logs", "-f", "-n", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("hello v1 serving"))
    });
    bgd.release(&example_build(bgd.dir.path(), "b3", "v1"));
    wait_until("the followed line", Duration::from_secs(20), || {
        reader.is_finished().then_some(())
    });
    follow.kill().unwrap();
    follow.wait().unwrap();
    let line = reader.join().unwrap();
    assert!(line.is_some_and(|l| l.starts_with("blue  | hello v1 serving")));
}

#[test]
fn release_no_wait_returns_before_the_build_is_live() {
    const SLOW_START: &str = "import time\ntime.sleep(2)\n";
    let bgd = Bgd::start(Setup::default());
    let slow = wrapped_build(bgd.dir.path(), "slow", "v1", SLOW_START);
    let out = bgd.bgctl(&["release", slow.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("started"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !bgd.status()["release_in_progress"].is_null(),
        "it returned while the release runs"
    );
    wait_until(
        "the release to finish anyway",
        Duration::from_secs(30),
        || (bgd.status()["live"] == "blue").then_some(()),
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let run = |args: &[&str]| {
        std::process::Command::new(BGCTL)
            .args(args)
            .output()
            .unwrap()
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.status.success());
    let bash = text(&bash.stdout);
    for sub in ["release", "rollback", "status", "history", "logs", "watch"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    let man = run(&["man"]);
    let man = text(&man.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH bgctl"),
        "{}",
        &man[..man.len().min(200)]
    );
    // Every subcommand is on this one page, and so are the exit codes.
    for sub in ["release", "rollback", "status", "history", "logs", "watch"] {
        assert!(
            man.contains(&format!("\\fBbgctl {sub}\\fR")),
            "{sub}: {man}"
        );
    }
    assert!(man.contains(".SH \"EXIT STATUS\"") && !man.contains("bgctl\\-release(1)"));

    let bgd = |args: &[&str]| std::process::Command::new(BGD).args(args).output().unwrap();
    let man = bgd(&["--man"]);
    assert!(man.status.success());
    let man = text(&man.stdout);
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "\"EXIT STATUS\"",
        "SIGNALS",
        "FILES",
    ] {
        assert!(man.contains(&format!(".SH {section}")), "{section}: {man}");
    }
    assert!(man.contains(".TH bgd 1"), "{man}");
    let fish = bgd(&["--completions", "fish"]);
    assert!(fish.status.success() && text(&fish.stdout).contains("-l config"));
    // --config is required unless the output is a man page or completions.
    assert_eq!(bgd(&[]).status.code(), Some(2));
    assert_eq!(bgd(&["--man", "--check"]).status.code(), Some(2));
}

/// `--version` names the commit the binaries were built from: HEAD's, when
/// built in this git checkout without `BGD_COMMIT`.
#[test]
fn version_names_the_commit() {
    let head = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_string());
    for (bin, name) in [(BGD, "bgd"), (BGCTL, "bgctl")] {
        let out = std::process::Command::new(bin)
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success());
        let line = text(&out.stdout);
        let commit = line
            .strip_prefix(&format!("{name} {} (commit ", env!("CARGO_PKG_VERSION")))
            .and_then(|rest| rest.strip_suffix(")\n"))
            .unwrap_or_else(|| panic!("{name} --version: {line:?}"));
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
            "{line}"
        );
        if let (Some(head), None) = (&head, std::env::var_os("BGD_COMMIT")) {
            assert!(
                head.starts_with(commit),
                "{name} says {commit}, HEAD is {head}"
            );
        }
    }
}

/// Followers that hang up while nothing is logged do not leave
/// connections open in bgd.
#[test]
fn log_followers_that_leave_are_dropped() {
    let bgd = Bgd::start(Setup::default());
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", bgd.status()["pid"]))
            .unwrap()
            .count()
    };
    let before = fds();
    for _ in 0..20 {
        let mut f = std::process::Command::new(BGCTL)
            .arg("--socket")
            .arg(bgd.socket())
            .args(["logs", "-f"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the follower to connect", Duration::from_secs(10), || {
            (fds() > before).then_some(())
        });
        f.kill().unwrap();
        f.wait().unwrap();
    }
    wait_until("bgd to drop the followers", Duration::from_secs(10), || {
        (fds() <= before).then_some(())
    });
}

/// `stage = "hardlink"`: the color's files are its kept copy's files (same
/// inode), so staging copies the data once (into the kept copy), and the
/// build's own files are never shared with the running app.
#[test]
fn hardlink_staging_links_the_builds_files() {
    use std::os::unix::fs::MetadataExt;
    let bgd = Bgd::start(Setup {
        top: "stage = \"hardlink\"".into(),
        ..Setup::default()
    });
    let build = example_build(bgd.dir.path(), "b1", "v1");
    bgd.release(&build);
    let src = std::fs::metadata(build.join("server.py")).unwrap();
    let kept = std::fs::metadata(bgd.root().join("releases/1/server.py")).unwrap();
    let live = std::fs::metadata(bgd.root().join("blue/server.py")).unwrap();
    assert_eq!((kept.dev(), kept.ino()), (live.dev(), live.ino()));
    assert_ne!(src.ino(), live.ino());
    assert_eq!(release_of(&get(&bgd.addr(), "/").unwrap().1), Some(1));
}
