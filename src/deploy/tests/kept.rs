//! Rollbacks to kept releases (issue 14): which release, staged how, and
//! what is refused.

use super::*;
use crate::deploy::state::Kept;

fn kept(release: u64, went_live: bool, failed: bool) -> Kept {
    Kept {
        failed,
        ..Kept::of(&build(release, went_live))
    }
}

/// Blue live with release 4; green holds release 5, which failed; kept:
/// 1, 2, 4 good, 3 and 5 failed.
fn after_a_failed_release() -> T {
    let mut s = state(
        Some(Color::Blue),
        Some(build(4, true)),
        Some(build(5, false)),
    );
    s.next_release = 6;
    s.releases = vec![
        kept(1, true, false),
        kept(2, true, false),
        kept(3, false, true),
        kept(4, true, false),
        kept(5, false, true),
    ];
    let mut t = T::new(s);
    t.send(Input::Boot);
    let task = t.restart_task(Color::Blue);
    t.send(ok(task, OLD));
    t
}

fn rollback_to(to: &str) -> Input<Proc> {
    Input::Rollback {
        client: Some(CLIENT),
        to: Some(to.into()),
    }
}

pub(super) fn launch_of(effects: &[Effect<Proc>]) -> Launch {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Launch(l) => Some(l.clone()),
            _ => None,
        })
        .expect("a launch")
}

#[test]
fn a_rollback_after_a_failed_release_stages_the_previous_good_kept_copy() {
    let mut t = after_a_failed_release();
    let effects = t.send(rollback());
    assert_eq!(
        words(&effects),
        ["commit"],
        "the dormant record is cleared first"
    );
    assert_eq!(committed_state(&effects).green, None);
    let effects = t.send(Input::Committed(Ok(())));
    let l = launch_of(&effects);
    assert_eq!(
        (l.color, l.release, l.source.as_ref()),
        (Color::Green, 2, None)
    );
    assert_eq!(
        l.kept.as_ref().map(|b| (b.release, b.went_live)),
        Some((2, true))
    );
    assert!(l.task >= FIRST_OTHER_TASK);
    t.send(Input::Task(TaskReport::Staged {
        task: l.task,
        build: build(2, true),
    }));
    t.send(ok(l.task, NEW));
    let effects = t.send(Input::Committed(Ok(())));
    assert!(words(&effects).contains(&"drain blue 100".to_string()));
    assert_eq!(t.core.state().green.as_ref().map(|b| b.release), Some(2));
}

#[test]
fn a_rollback_that_fails_before_staging_puts_the_dormant_record_back() {
    let mut t = after_a_failed_release();
    t.send(rollback_to("v1"));
    let l = launch_of(&t.send(Input::Committed(Ok(()))));
    t.send(failed(l.task, Step::Stage, None));
    assert_eq!(t.core.state().green, Some(build(5, false)));
    assert_eq!(
        t.core.state().kept(5).map(|k| k.failed),
        Some(true),
        "a rollback marks nothing failed"
    );
    assert!(t.core.state().kept(1).is_some_and(|k| !k.failed));
}

#[test]
fn rollback_to_names_a_kept_release_by_id_or_label_and_refuses_the_rest() {
    let mut t = after_a_failed_release();
    for (to, says) in [
        (
            "v9",
            "no kept release has the id or label \"v9\"; kept: 4 (v4), 2 (v2), 1 (v1)",
        ),
        ("4", "release 4 is already live on blue"),
        ("v3", "release 3 never went live (its release failed)"),
    ] {
        let effects = t.send(rollback_to(to));
        assert_eq!(words(&effects), ["reply error BadRequest"], "{to}");
        assert!(
            error_message(&effects).contains(says),
            "{to}: {}",
            error_message(&effects)
        );
    }
    assert!(t.core.release().is_none());
    t.send(rollback_to("1"));
    let l = launch_of(&t.send(Input::Committed(Ok(()))));
    assert_eq!((l.release, l.label.as_deref()), (1, Some("v1")));
}

/// A plain rollback goes to what was live before the live build, the
/// dormant color's build, even when a newer release id was live earlier
/// (here: 3 is live after a rollback to 1 and then a release; 1 was live
/// just before 3, not 2).
#[test]
fn a_rollback_goes_to_what_was_live_before_not_the_next_lower_id() {
    let mut s = state(
        Some(Color::Green),
        Some(build(1, true)),
        Some(build(3, true)),
    );
    s.next_release = 4;
    s.releases = vec![
        kept(1, true, false),
        kept(2, true, false),
        kept(3, true, false),
    ];
    let mut t = T::new(s);
    t.send(Input::Boot);
    let task = t.restart_task(Color::Green);
    t.send(ok(task, OLD));
    t.send(rollback());
    let l = launch_of(&t.send(Input::Committed(Ok(()))));
    assert_eq!((l.color, l.release), (Color::Blue, 1));
}
