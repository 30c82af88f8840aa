//! Terminal escapes from the app (issue 26): `bgctl logs` and the tail of
//! a failed release printed the app's `ESC]0;…BEL`, `ESC[2J`, CR and NUL
//! raw to the operator's terminal. Every path that shows app output
//! escapes them: logs, the failure's tail, a hook's lines in the progress,
//! events, status, and bgd's own log.

use crate::harness::*;

/// What a hostile app prints: a window title, a screen clear, a carriage
/// return that would overwrite the line, a NUL, a C1 CSI.
const NASTY: &str = r#"
import sys
sys.stderr.write("\x1b]0;pwned\x07\x1b[2Jclear\rover\x00nul\u009b31m\n")
sys.stderr.flush()
"#;

/// The raw control bytes a terminal acts on, if `out` holds any.
fn raw_controls(out: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(out);
    let mut found: Vec<u8> = out
        .iter()
        .copied()
        .filter(|b| matches!(b, 0x1b | 0x07 | b'\r' | 0 | 0x7f))
        .collect();
    if text.contains('\u{9b}') {
        found.push(0x9b);
    }
    found
}

#[test]
fn app_output_reaches_no_terminal_raw() {
    let bgd = Bgd::start(Setup {
        health: "http = \"/healthz\"\ntimeout = \"5s\"".into(),
        ..Setup::default()
    });
    bgd.release(&wrapped_build(bgd.dir.path(), "b1", "v1", NASTY));
    let logs = wait_until("the app's line", std::time::Duration::from_secs(20), || {
        let out = bgd.bgctl(&["logs"]);
        text(&out.stdout).contains("pwned").then_some(out)
    });
    assert_eq!(
        raw_controls(&logs.stdout),
        [] as [u8; 0],
        "{}",
        text(&logs.stdout)
    );
    assert!(
        text(&logs.stdout).contains(r"\u{1b}]0;pwned\u{7}\u{1b}[2Jclear\rover\u{0}nul\u{9b}31m"),
        "{}",
        text(&logs.stdout)
    );
    // --json keeps the exact text.
    let json = bgd.bgctl(&["logs", "--json"]);
    assert!(
        text(&json.stdout).contains(r"\u001b]0;pwned"),
        "{}",
        text(&json.stdout)
    );

    // A release that fails: its message and the tail of its output.
    let broken = script_build(bgd.dir.path(), "b2", &format!("{NASTY}\nsys.exit(3)\n"));
    let out = bgd.bgctl(&["release", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pwned"), "{}", text(&out.stderr));
    assert_eq!(
        raw_controls(&out.stderr),
        [] as [u8; 0],
        "{}",
        text(&out.stderr)
    );

    // Same kind: a prepare hook's lines, shown as the release's progress.
    let hooked = wrapped_build(bgd.dir.path(), "b3", "v3", "");
    std::fs::write(
        hooked.join("hook.sh"),
        "printf '\\033]0;hook\\007\\033[2J\\rhooked\\n'\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(&bgd.config).unwrap();
    std::fs::write(
        &bgd.config,
        format!("{config}\n[hooks]\nprepare = [\"sh hook.sh\"]\n"),
    )
    .unwrap();
    // SAFETY: kill(2) on the bgd this test started.
    unsafe { libc::kill(bgd.pid() as i32, libc::SIGHUP) };
    wait_until("the reload", std::time::Duration::from_secs(20), || {
        let st = bgd.status();
        st["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("reloaded"))
            .then_some(())
    });
    let out = bgd.release(&hooked);
    assert!(
        text(&out.stderr).contains("hooked"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        raw_controls(&out.stderr),
        [] as [u8; 0],
        "{}",
        text(&out.stderr)
    );

    // ... the events, status and history that quote the failure.
    for args in [["events"].as_slice(), &["status"], &["history"]] {
        let out = bgd.bgctl(args);
        assert!(out.status.success());
        assert_eq!(
            raw_controls(&out.stdout),
            [] as [u8; 0],
            "{args:?}: {}",
            text(&out.stdout)
        );
    }
    // ... and bgd's own log, where the app's lines go too.
    let log = bgd.log();
    assert!(log.contains("pwned"));
    assert_eq!(raw_controls(log.as_bytes()), [] as [u8; 0]);
}
