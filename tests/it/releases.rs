//! Releases under continuous load: not one failed request.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::load::Load;

/// 4 keep-alive and 4 new-connection clients run while 10 releases
/// alternate between two builds, with the default standby (30 s). No
/// request fails; every request that starts after a release returned is
/// answered by that release, or by the one before it: a keep-alive
/// connection opened before the swap stays with the standby until it
/// drains (at the next release here).
#[test]
fn ten_releases_under_load_lose_no_request() {
    ten_releases(Setup::default());
}

/// The same without a standby: every request that starts after a release
/// returned is answered by that release.
#[test]
fn ten_releases_without_a_standby_lose_no_request() {
    ten_releases(Setup {
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
}

/// The same with both colors on one socket (`traffic.mode = "shared"`).
#[test]
fn ten_releases_in_shared_mode_lose_no_request() {
    ten_releases(Setup {
        tail: "[traffic]\nmode = \"shared\"\n".into(),
        ..Setup::default()
    });
}

fn ten_releases(setup: Setup) {
    let standby = !setup.tail.contains("standby = \"0s\"") && !setup.tail.contains("shared");
    let bgd = Bgd::start(setup);
    let builds = [
        example_build(bgd.dir.path(), "b1", "v1"),
        example_build(bgd.dir.path(), "b2", "v2"),
    ];
    bgd.release(&builds[0]);
    let addr = bgd.addr();

    let load = Load::start(&addr, 4, 4);
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 50).then_some(())
    });
    // (release id, instant its bgctl was run, instant it returned)
    let mut releases: Vec<(u64, Instant, Instant)> = Vec::new();
    for i in 0..10 {
        let began = Instant::now();
        let out = bgd.release(&builds[(i + 1) % 2]);
        let id = release_id(&text(&out.stdout));
        releases.push((id, began, Instant::now()));
        let before = load.count();
        // Let traffic reach the new color before the next release.
        wait_until(
            "requests after the release",
            Duration::from_secs(10),
            || (load.count() > before + 40).then_some(()),
        );
    }
    let samples = load.finish_clean();
    // A request that began after release k returned and before release k+1
    // was run must have been answered by release k.
    let mut checked = 0;
    for (k, (id, _, returned)) in releases.iter().enumerate() {
        let next_began = releases.get(k + 1).map(|r| r.1);
        let previous = if k == 0 { 1 } else { releases[k - 1].0 };
        for s in samples
            .iter()
            .filter(|s| s.started > *returned && next_began.is_none_or(|b| s.started < b))
        {
            let body = s.result.as_ref().unwrap();
            let by = release_of(body);
            assert!(
                by == Some(*id) || (standby && by == Some(previous)),
                "after release {id} returned, a request was answered by: {body}"
            );
            checked += 1;
        }
    }
    assert!(
        checked > 400,
        "only {checked} requests fell between releases"
    );
    eprintln!("{} requests, 0 failed, 10 releases", samples.len());
}

/// The id in bgctl's "release N is live on COLOR" line.
fn release_id(stdout: &str) -> u64 {
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no release id in {stdout:?}"))
}
