//! A color whose main process has exited is never made live (issue 25):
//! checked when the task reports it ready and again once its swap is
//! written, not only when its exit event arrives; and within the standby
//! window a new color that dies hands the traffic back by itself.

use super::*;
use crate::deploy::rollout::Rollout;

/// Blue live (pid OLD); a release to green reported ready, but green's
/// main process (NEW) exited already (it daemonized): refused, what is
/// left of green killed, blue stays live and receiving.
#[test]
fn a_ready_color_whose_main_process_exited_is_refused() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.send(staged(task, 3));
    dies(NEW, Exit::Code(0));
    let effects = t.send(ok(task, NEW));
    let said = words(&effects);
    assert!(said.contains(&"discard 200".to_string()), "{said:?}");
    assert!(said.contains(&"reply error App".to_string()), "{said:?}");
    assert!(
        !said
            .iter()
            .any(|w| w.starts_with("commit") || w.starts_with("steer")),
        "{said:?}"
    );
    let m = error_message(&effects);
    assert!(m.contains("daemonized") && m.contains("exit code 0"), "{m}");
    assert_eq!(t.core.state().live, Some(Color::Blue));
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
    assert!(matches!(t.phase(Color::Green), ColorPhase::Stopped));
}

/// The main process exits while the swap is being written: the swap is
/// undone (the state written back naming blue), nothing was steered, and
/// the release is refused.
#[test]
fn a_color_that_exits_while_its_swap_is_written_is_not_made_live() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.send(staged(task, 3));
    let said = t.says(ok(task, NEW));
    assert_eq!(said, ["commit"]);
    dies(NEW, Exit::Code(0));
    let effects = t.send(Input::Committed(Ok(())));
    let said = words(&effects);
    assert_eq!(said.first().map(String::as_str), Some("save"), "{said:?}");
    assert!(said.contains(&"discard 200".to_string()), "{said:?}");
    assert!(said.contains(&"reply error App".to_string()), "{said:?}");
    for w in ["point_live", "steer", "after_live", "drain"] {
        assert!(!said.iter().any(|s| s.starts_with(w)), "{w}: {said:?}");
    }
    assert_eq!(t.core.state().live, Some(Color::Blue));
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
    // Its exit event, arriving late, changes nothing.
    assert!(t.says(exited(Color::Green, NEW, 0)).is_empty());
}

/// A restart whose new main process exited by the time it was ready is a
/// failed restart (with backoff), never a live color with a dead leader.
#[test]
fn a_restart_whose_main_process_exited_failed() {
    let mut t = T::blue_live();
    t.send(exited(Color::Blue, OLD, 60));
    t.send(Input::RestartDue { color: Color::Blue });
    let task = t.restart_task(Color::Blue);
    dies(201, Exit::Code(0));
    let said = t.says(ok(task, 201));
    assert!(said.contains(&"discard 201".to_string()), "{said:?}");
    assert!(
        said.iter().any(|w| w.starts_with("restart blue after")),
        "{said:?}"
    );
    assert_eq!(t.status(Color::Blue).state, "restarting");
}

fn standby_only(min: u64) -> Policy {
    Policy {
        rollout: Rollout {
            standby: Duration::from_secs(min * 60),
            ..Rollout::default()
        },
        ..Policy::default()
    }
}

/// With a standby and no bake (the default), a new color that crashes
/// within the standby window hands the traffic back to the standby at
/// once: no restart loop of the dead build.
#[test]
fn a_crash_within_the_standby_window_switches_back_without_a_bake() {
    let mut t = T::blue_live_with(standby_only(1));
    t.swap();
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Standby { .. }));
    let said = t.says(exited(Color::Green, NEW, 2));
    assert_eq!(
        said.first().map(String::as_str),
        Some("discard 200"),
        "{said:?}"
    );
    assert!(said.contains(&"commit".to_string()), "{said:?}");
    let said = t.says(Input::Committed(Ok(())));
    assert!(said.contains(&"steer blue".to_string()), "{said:?}");
    assert!(said.contains(&"rescue green".to_string()), "{said:?}");
    assert!(!said.iter().any(|w| w.starts_with("restart")), "{said:?}");
    assert_eq!(t.core.state().live, Some(Color::Blue));
}

/// The same for `health.failures` failed checks in a row (with
/// `health.interval`): switched back without a bake.
#[test]
fn failed_checks_within_the_standby_window_switch_back_without_a_bake() {
    let mut t = T::blue_live_with(standby_only(1));
    t.swap();
    let bad = || {
        Input::Checked(Checked {
            color: Color::Green,
            pid: Pid::from_raw(NEW),
            result: Err("GET /healthz answered 500".into()),
        })
    };
    t.send(bad());
    t.send(bad());
    let said = t.says(bad());
    assert!(said.contains(&"commit".to_string()), "{said:?}");
    t.send(Input::Committed(Ok(())));
    assert_eq!(t.core.state().live, Some(Color::Blue));
}

/// After the standby window the old color is gone: a crash is a restart,
/// as before.
#[test]
fn after_the_standby_window_a_crash_restarts() {
    let mut t = T::blue_live_with(standby_only(1));
    t.swap();
    t.wait(61_000);
    let said = t.says(Input::Due);
    assert_eq!(said, ["drain blue 100"]);
    let said = t.says(exited(Color::Green, NEW, 61));
    assert!(
        said.iter().any(|w| w.starts_with("restart green after")),
        "{said:?}"
    );
}

// ---- rollback while the old color drains ----

/// Blue live (OLD), a release to green (NEW) swapped: blue drains (no
/// standby), the release is in its drain.
fn draining() -> T {
    let mut t = T::blue_live();
    t.swap();
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Draining { .. }));
    t
}

/// Before its stop signal the draining color is taken back: the release
/// ends, and the rollback switches to blue at once, starting nothing.
#[test]
fn a_rollback_before_the_stop_signal_takes_the_draining_color_back() {
    let mut t = draining();
    let said = t.says(rollback());
    assert_eq!(said, ["reclaim blue 100", "reply progress swap"]);
    let said = t.says(Input::Reclaimed {
        color: Color::Blue,
        process: Some(Proc(OLD)),
    });
    assert!(said.contains(&"reply done".to_string()), "{said:?}");
    assert!(said.contains(&"commit".to_string()), "{said:?}");
    assert!(!said.iter().any(|w| w.starts_with("launch")), "{said:?}");
    let said = t.says(Input::Committed(Ok(())));
    assert!(said.contains(&"steer blue".to_string()), "{said:?}");
    assert!(said.contains(&"drain green 200".to_string()), "{said:?}");
    assert_eq!(t.core.state().live, Some(Color::Blue));
}

/// Once signalled, it is going away: the rollback is refused with how long
/// the drain can still take; so is a release. A drain that was signalled
/// while the reclaim was asked for answers `None`: refused the same way.
#[test]
fn after_the_stop_signal_a_rollback_is_refused_with_the_time_left() {
    let mut t = draining();
    t.send(Input::Signalled {
        color: Color::Blue,
        pid: Pid::from_raw(OLD),
    });
    let effects = t.send(rollback());
    assert_eq!(words(&effects), ["reply error Busy"]);
    let m = error_message(&effects);
    assert!(
        m.contains("got its stop signal") && m.contains("at the latest"),
        "{m}"
    );
    let effects = t.send(release("/builds/fix"));
    let m = error_message(&effects);
    assert!(m.contains("got its stop signal"), "{m}");

    let mut t = draining();
    assert_eq!(
        t.says(rollback()),
        ["reclaim blue 100", "reply progress swap"]
    );
    let effects = t.send(Input::Reclaimed {
        color: Color::Blue,
        process: None,
    });
    assert_eq!(words(&effects), ["reply error Busy"]);
    assert!(error_message(&effects).contains("is draining"));
}
