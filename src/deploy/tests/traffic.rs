//! Table tests of the standby, the bake window and canaries (issue 12).

use super::*;
use crate::deploy::rollout::{CanaryStep, Rollout};

const MIN: u64 = 60_000;

fn policy(standby_min: u64, bake_min: u64, steps: &[(u8, u64)]) -> Policy {
    Policy {
        rollout: Rollout {
            standby: Duration::from_millis(standby_min * MIN),
            bake: Duration::from_millis(bake_min * MIN),
            steps: steps
                .iter()
                .map(|(percent, min)| CanaryStep {
                    percent: *percent,
                    hold: Duration::from_millis(min * MIN),
                })
                .collect(),
            ..Rollout::default()
        },
        failures: 3,
        no_split: None,
        ..Policy::default()
    }
}

fn canary_release(percent: u8, wait_bake: bool) -> Input<Proc> {
    Input::Release {
        source: "/builds/new".into(),
        label: Some("new".into()),
        trigger: Trigger::Client,
        client: Some(CLIENT),
        canary: Some(percent),
        preview: false,
        wait_bake,
    }
}

fn check(color: Color, pid: i32, ok: bool) -> Input<Proc> {
    Input::Checked(Checked {
        color,
        pid: Pid::from_raw(pid),
        result: if ok {
            Ok(())
        } else {
            Err("GET /healthz answered 500".into())
        },
    })
}

/// Blue live with a 10 min standby and a 2 min bake; a release of green
/// (pid NEW) swapped.
fn swapped_with_standby() -> T {
    let mut t = T::blue_live_with(policy(10, 2, &[]));
    t.swap();
    t
}

/// Blue live; a `percent` % canary of release 3 on green (pid NEW).
fn canary(percent: u8) -> T {
    let mut t = T::blue_live();
    t.send(canary_release(percent, false));
    t.send(Input::Committed(Ok(())));
    let task = t.task();
    t.send(staged(task, 3));
    let said = t.says(ok(task, NEW));
    assert_eq!(
        said,
        [
            format!("split green {percent}"),
            "testers green".into(),
            "ended ok".into(),
            "reply done".into()
        ]
    );
    t
}

/// A `--wait-bake` release of green (pid NEW) through its swap; returns
/// what the swap's commit said.
fn swap_waiting_for_the_bake(t: &mut T) -> Vec<String> {
    t.send(Input::Release {
        source: "/builds/new".into(),
        label: None,
        trigger: Trigger::Client,
        client: Some(CLIENT),
        canary: None,
        preview: false,
        wait_bake: true,
    });
    t.send(Input::Committed(Ok(())));
    let task = t.task();
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    t.says(Input::Committed(Ok(())))
}

#[test]
fn with_a_standby_the_old_color_stays_warm_and_the_release_ends_at_its_swap() {
    let mut t = T::blue_live_with(policy(10, 0, &[]));
    let task = t.admit();
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    let said = t.says(Input::Committed(Ok(())));
    assert_eq!(
        said,
        [
            "point_live green",
            "steer green",
            "after_live green",
            "wake",
            "reply progress drain",
            "ended ok",
            "reply done"
        ]
    );
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Standby { .. }));
    assert_eq!(t.status(Color::Blue).state, "standby");
    assert_eq!(t.status(Color::Blue).pid, Some(OLD as u32));
    assert!(t.core.release().is_none());
    let (standby, bake) = t.core.deadlines(t.now());
    assert_eq!(
        standby,
        Some(t.now().wall + Duration::from_millis(10 * MIN))
    );
    assert_eq!(bake, None);
    assert_eq!(
        t.core.shares(),
        crate::deploy::Shares {
            blue: 0,
            green: 100
        }
    );
}

#[test]
fn without_a_standby_the_old_color_drains_as_before() {
    let mut t = T::blue_live_with(policy(0, 0, &[]));
    t.swap();
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Draining { .. }));
}

#[test]
fn the_standby_drains_when_its_time_is_up_and_not_before() {
    let mut t = swapped_with_standby();
    t.wait(2 * MIN);
    assert_eq!(
        t.says(Input::Due),
        ["notify bake_passed"],
        "the bake (2 min) passed"
    );
    t.wait(8 * MIN - 1);
    assert!(t.says(Input::Due).is_empty());
    t.wait(1);
    assert_eq!(t.says(Input::Due), ["drain blue 100"]);
    assert_eq!(t.status(Color::Blue).state, "draining");
    assert_eq!(t.core.deadlines(t.now()), (None, None));
}

#[test]
fn a_rollback_within_the_standby_is_a_switch_that_starts_nothing() {
    let mut t = swapped_with_standby();
    let effects = t.send(rollback());
    assert_eq!(words(&effects), ["commit"]);
    assert_eq!(committed_state(&effects).live, Some(Color::Blue));
    let said = t.says(Input::Committed(Ok(())));
    assert_eq!(
        said,
        [
            "point_live blue",
            "steer blue",
            "after_live blue",
            "reply progress drain",
            "drain green 200"
        ]
    );
    assert!(!said.iter().any(|w| w.starts_with("launch")));
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
    assert_eq!(t.core.deadlines(t.now()), (None, None), "the bake ended");
    let effects = t.send(drained(Color::Green, NEW));
    let r = record_of(&effects);
    assert_eq!(
        (r.kind.as_str(), r.trigger.as_str(), r.release),
        ("rollback", "bgctl", 1)
    );
    assert_eq!(words(&effects), ["ended ok", "reply done"]);
}

#[test]
fn a_release_drains_the_standby_before_it_starts_anything_there() {
    let mut t = swapped_with_standby();
    // Green is live and baking; blue is the standby, and the dormant color.
    let effects = t.send(release("/builds/next"));
    assert_eq!(words(&effects), ["drain blue 100", "commit"]);
    let said = t.says(Input::Committed(Ok(())));
    assert_eq!(said, ["reply progress validate"], "nothing launched yet");
    assert!(t.says(drained(Color::Blue, 999)).is_empty());
    assert_eq!(t.says(drained(Color::Blue, OLD)), ["launch blue stage"]);
    let task = t.task();
    t.send(staged(task, 4));
    t.send(ok(task, 300));
    t.says(Input::Committed(Ok(())));
    // The baking color becomes the standby of the new release.
    assert!(matches!(t.phase(Color::Green), ColorPhase::Standby { .. }));
    assert_eq!(t.core.bake.as_ref().map(|b| b.color), Some(Color::Blue));
}

#[test]
fn failed_checks_during_the_bake_switch_back_by_themselves() {
    let mut t = swapped_with_standby();
    assert!(t.says(check(Color::Green, NEW, false)).is_empty());
    assert!(
        t.says(check(Color::Green, NEW, true)).is_empty(),
        "a pass resets the count"
    );
    t.send(check(Color::Green, NEW, false));
    t.send(check(Color::Green, NEW, false));
    assert_eq!(t.status(Color::Green).failing_checks, Some(2));
    let effects = t.send(check(Color::Green, NEW, false));
    assert_eq!(words(&effects), ["commit"]);
    t.send(Input::Committed(Ok(())));
    let effects = t.send(drained(Color::Green, NEW));
    let r = record_of(&effects);
    assert_eq!(
        (r.kind.as_str(), r.trigger.as_str()),
        ("rollback", "automatic")
    );
    assert!(
        r.result.starts_with(
            "rolled back automatically: 3 failed health checks: GET /healthz answered 500"
        ),
        "{}",
        r.result
    );
    assert_eq!(t.core.state().live, Some(Color::Blue));
}

/// A reload that lowers `health.failures` below a running streak makes
/// the next failed check act (once), not only the next streak.
#[test]
fn a_reload_below_a_running_streak_acts_at_the_next_failure() {
    let mut t = T::blue_live_with(Policy {
        failures: 5,
        ..policy(10, 2, &[])
    });
    t.swap();
    for _ in 0..3 {
        assert!(t.says(check(Color::Green, NEW, false)).is_empty());
    }
    t.core.set_policy(Policy {
        failures: 2,
        ..policy(10, 2, &[])
    });
    let said = t.says(check(Color::Green, NEW, false));
    assert_eq!(said, ["commit"]);
}

#[test]
fn a_crash_during_the_bake_switches_back_instead_of_restarting() {
    let mut t = swapped_with_standby();
    let said = t.says(exited(Color::Green, NEW, 5));
    assert_eq!(said, ["discard 200", "commit"]);
    let said = t.says(Input::Committed(Ok(())));
    // Green's queue is rescued once the switch is recorded and steered.
    let steer = said.iter().position(|w| w == "steer blue");
    let rescue = said.iter().position(|w| w == "rescue green");
    assert!(steer.is_some() && steer < rescue, "{said:?}");
    // Nothing to drain: the rollback ends at once.
    assert!(said.ends_with(&["ended ok".to_string()]), "{said:?}");
    assert_eq!(t.core.state().live, Some(Color::Blue));
}

/// If that switch cannot be recorded, the crashed color is still the live
/// one: it starts again (nothing is rescued into its own queue).
#[test]
fn a_crash_during_the_bake_whose_switch_cannot_be_recorded_restarts() {
    let mut t = swapped_with_standby();
    t.send(exited(Color::Green, NEW, 5));
    let said = t.says(Input::Committed(Err("disk full".into())));
    assert!(
        said.iter().any(|w| w.starts_with("restart green after")),
        "{said:?}"
    );
    assert!(!said.iter().any(|w| w.starts_with("rescue")), "{said:?}");
    assert_eq!(t.core.state().live, Some(Color::Green));
}

/// A `--wait-bake` client whose release an operator rolls back during its
/// bake hears that it was rolled back, not that it was superseded.
#[test]
fn a_rollback_during_the_bake_fails_its_waiter() {
    let mut t = T::blue_live_with(policy(10, 2, &[]));
    let said = swap_waiting_for_the_bake(&mut t);
    assert!(!said.contains(&"reply done".to_string()), "{said:?}");
    let said = t.says(rollback());
    assert!(
        said.contains(&"reply error RolledBack".to_string()),
        "{said:?}"
    );
}

#[test]
fn after_the_bake_failed_checks_are_reported_not_acted_on() {
    let mut t = swapped_with_standby();
    t.wait(2 * MIN);
    t.send(Input::Due);
    for _ in 0..5 {
        assert!(t.says(check(Color::Green, NEW, false)).is_empty());
    }
    assert_eq!(t.status(Color::Green).failing_checks, Some(5));
    assert_eq!(t.core.state().live, Some(Color::Green));
}

#[test]
fn a_wait_bake_client_hears_once_the_bake_passed_or_failed() {
    for fails in [false, true] {
        let mut t = T::blue_live_with(policy(10, 2, &[]));
        let said = swap_waiting_for_the_bake(&mut t);
        assert!(!said.contains(&"reply done".to_string()), "{said:?}");
        let said = if fails {
            t.send(check(Color::Green, NEW, false));
            t.send(check(Color::Green, NEW, false));
            t.says(check(Color::Green, NEW, false))
        } else {
            t.wait(2 * MIN);
            t.says(Input::Due)
        };
        let answer = if fails {
            "reply error RolledBack"
        } else {
            "reply done"
        };
        assert!(said.contains(&answer.to_string()), "{said:?}");
    }
}

/// The standby dies during the bake, then the baking color fails: with
/// nothing to switch back to it keeps serving, and the bake does not pass.
#[test]
fn a_failure_without_a_standby_to_switch_back_to_fails_the_bake() {
    let mut t = T::blue_live_with(policy(10, 2, &[]));
    swap_waiting_for_the_bake(&mut t);
    t.send(exited(Color::Blue, OLD, 60));
    for _ in 0..3 {
        t.send(check(Color::Green, NEW, false));
    }
    assert_eq!(t.core.state().live, Some(Color::Green));
    t.wait(2 * MIN);
    let said = t.says(Input::Due);
    assert!(said.contains(&"reply error App".to_string()), "{said:?}");
    assert!(said.contains(&"notify bake_failed".to_string()), "{said:?}");
    assert!(
        !said.contains(&"notify bake_passed".to_string()),
        "{said:?}"
    );
}

#[test]
fn a_canary_gets_its_share_beside_the_live_color() {
    let t = canary(20);
    assert_eq!(
        t.core.shares(),
        crate::deploy::Shares {
            blue: 80,
            green: 20
        }
    );
    assert_eq!(t.status(Color::Green).state, "canary");
    assert_eq!(t.core.state().live, Some(Color::Blue));
    assert!(t.core.release().is_none());
    let c = t.core.canary().unwrap();
    assert_eq!(
        (c.color, c.release, c.percent, c.step),
        (Color::Green, 3, 20, None)
    );
}

#[test]
fn promote_raises_the_share_or_makes_the_canary_live() {
    let mut t = canary(20);
    let effects = t.send(Input::Promote {
        percent: Some(50),
        client: Some(CLIENT),
    });
    assert_eq!(
        words(&effects),
        ["split green 50", "ended ok", "reply done"]
    );
    assert_eq!(record_of(&effects).kind, "promote");
    let effects = t.send(Input::Promote {
        percent: None,
        client: Some(CLIENT),
    });
    assert_eq!(words(&effects), ["commit"]);
    let said = t.says(Input::Committed(Ok(())));
    assert!(
        said.starts_with(&["point_live green".into(), "steer green".into()]),
        "{said:?}"
    );
    assert!(said.contains(&"drain blue 100".to_string()), "{said:?}");
    assert_eq!(
        t.core.shares(),
        crate::deploy::Shares {
            blue: 0,
            green: 100
        }
    );
    let r = record_of(&t.send(drained(Color::Blue, OLD)));
    assert_eq!(r.kind, "promote");
}

#[test]
fn abort_ends_the_split_and_drains_the_canary() {
    let mut t = canary(20);
    let said = t.says(Input::Abort {
        client: Some(CLIENT),
    });
    assert_eq!(
        said,
        [
            "split green 0",
            "testers none",
            "drain green 200",
            "reply progress drain"
        ]
    );
    assert_eq!(
        t.core.shares(),
        crate::deploy::Shares {
            blue: 100,
            green: 0
        }
    );
    let effects = t.send(drained(Color::Green, NEW));
    assert_eq!(
        words(&effects),
        ["ended ok", "save", "forget [3]", "reply done"],
        "the aborted canary's kept copy goes"
    );
    assert_eq!(record_of(&effects).kind, "abort");
}

#[test]
fn a_canary_that_crashes_or_fails_its_checks_is_aborted_by_itself() {
    let mut t = canary(20);
    let effects = t.send(exited(Color::Green, NEW, 1));
    assert_eq!(
        words(&effects),
        [
            "discard 200",
            "split green 0",
            "testers none",
            "ended ok",
            "save",
            "forget [3]",
            "rescue green"
        ]
    );
    let r = record_of(&effects);
    assert_eq!(
        (r.kind.as_str(), r.trigger.as_str()),
        ("abort", "automatic")
    );
    let mut t = canary(20);
    t.send(check(Color::Green, NEW, false));
    t.send(check(Color::Green, NEW, false));
    let said = t.says(check(Color::Green, NEW, false));
    assert_eq!(said, ["split green 0", "testers none", "drain green 200"]);
}

#[test]
fn steps_advance_on_their_own_then_promote() {
    let mut t = T::blue_live_with(policy(10, 2, &[(10, 1), (50, 1)]));
    t.admit();
    let task = t.task();
    t.send(staged(task, 3));
    assert_eq!(
        t.says(ok(task, NEW)),
        [
            "split green 10",
            "testers green",
            "wake",
            "ended ok",
            "reply done"
        ]
    );
    t.wait(MIN - 1);
    assert!(t.says(Input::Due).is_empty());
    t.wait(1);
    assert_eq!(t.says(Input::Due), ["split green 50", "wake", "ended ok"]);
    assert_eq!(t.core.canary().unwrap().step.map(|(i, _)| i + 1), Some(2));
    t.wait(MIN);
    assert_eq!(t.says(Input::Due), ["commit"]);
    let said = t.says(Input::Committed(Ok(())));
    assert!(said.contains(&"steer green".to_string()), "{said:?}");
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Standby { .. }));
    assert_eq!(t.core.bake.as_ref().map(|b| b.color), Some(Color::Green));
}

#[test]
fn an_unhealthy_step_stops_the_steps() {
    let mut t = T::blue_live_with(policy(10, 2, &[(10, 1), (50, 1)]));
    t.admit();
    let task = t.task();
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    for _ in 0..3 {
        t.send(check(Color::Green, NEW, false));
    }
    assert!(t.core.canary().is_none());
    t.wait(MIN);
    assert!(t.says(Input::Due).is_empty(), "no step after the abort");
}

#[test]
fn canary_requests_that_cannot_be_done_are_refused_and_change_nothing() {
    check_refusals(&[
        (
            "promote without a canary",
            T::blue_live,
            || Input::Promote {
                percent: None,
                client: Some(CLIENT),
            },
            FailureKind::BadRequest,
            "no canary runs",
        ),
        (
            "abort without a canary",
            T::blue_live,
            || Input::Abort {
                client: Some(CLIENT),
            },
            FailureKind::BadRequest,
            "nothing to abort",
        ),
        (
            "canary 0",
            T::blue_live,
            || canary_release(0, false),
            FailureKind::BadRequest,
            "1 to 99 percent",
        ),
        (
            "canary 100",
            T::blue_live,
            || canary_release(100, false),
            FailureKind::BadRequest,
            "1 to 99 percent",
        ),
        (
            "nothing live",
            T::empty,
            || canary_release(10, false),
            FailureKind::BadRequest,
            "nothing is live yet",
        ),
        (
            "a release during a canary",
            || canary(20),
            || release("/b"),
            FailureKind::Busy,
            "a canary of release 3 runs on green (20%",
        ),
        (
            "a rollback during a canary",
            || canary(20),
            rollback,
            FailureKind::Busy,
            "bgctl abort",
        ),
        (
            "no split",
            || {
                T::blue_live_with(Policy {
                    no_split: Some("[[listen]] \"sock\" is a Unix socket".into()),
                    ..Policy::default()
                })
            },
            || canary_release(10, false),
            FailureKind::BadRequest,
            "is a Unix socket",
        ),
    ]);
}

#[test]
fn checks_start_when_a_color_gets_connections_and_stop_when_it_does_not() {
    let mut t = T::blue_live_with(policy(10, 0, &[]));
    let task = t.admit();
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    let effects = t.send(Input::Committed(Ok(())));
    let monitors: Vec<String> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Monitor { color, pid } => Some(format!("monitor {color} {pid}")),
            Effect::Unmonitor(c) => Some(format!("unmonitor {c}")),
            _ => None,
        })
        .collect();
    assert_eq!(monitors, ["monitor green 200", "unmonitor blue"]);
    // The standby is not checked: its reports are ignored.
    assert!(t.says(check(Color::Blue, OLD, false)).is_empty());
    assert_eq!(t.status(Color::Blue).failing_checks, None);
}
