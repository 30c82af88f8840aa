//! The README's first command, `examples/hello/demo.sh`, as a newcomer
//! runs it: the shipped example released twice under a curl loop, then
//! auto-released, with not one failed request. It broke once without a
//! test noticing (the example's `[pause] page` is relative to the config,
//! and the demo copies the config into a temp dir).

use std::process::Command;
use std::time::Duration;

use crate::harness::*;

#[test]
fn the_readme_demo_runs_and_loses_no_request() {
    // The demo serves on the example's own address, 127.0.0.1:8080.
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        eprintln!("skipped: 127.0.0.1:8080 is in use, and the demo needs it");
        return;
    }
    let demos = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("bgd-demo."))
            .map(|e| e.path())
            .collect()
    };
    let before = demos();
    let bin = std::path::Path::new(BGD).parent().unwrap().to_path_buf();
    let mut cmd = Command::new(repo().join("examples/hello/demo.sh"));
    cmd.env("BGD_DEMO_BIN", &bin);
    let out = run_with_deadline(cmd, Duration::from_secs(120));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for want in [
        "release 1 (v1) is live",
        "hello from v2",
        "hello from v1",
        " 0 failed",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}\n{stderr}");
    }
    // It leaves nothing behind: its temp dir is gone.
    let left: Vec<_> = demos()
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
