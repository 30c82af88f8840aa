//! Table tests of the preview and of `bgctl compare`'s choice of builds
//! (issue 23).

use super::*;
use crate::deploy::clients::{CanaryBy, Cidr};
use crate::deploy::rollout::Rollout;

/// Two testers' networks; `standby` minutes of standby.
fn with_testers(standby_min: u64) -> Policy {
    Policy {
        rollout: Rollout {
            standby: Duration::from_secs(standby_min * 60),
            testers: ["127.0.0.77", "2001:db8:1::/48"]
                .iter()
                .map(|s| Cidr::parse(s).unwrap().0)
                .collect(),
            canary_by: CanaryBy::Client,
            ..Rollout::default()
        },
        ..Policy::default()
    }
}

fn preview_release(canary: Option<u8>) -> Input<Proc> {
    Input::Release {
        source: "/builds/new".into(),
        label: Some("new".into()),
        trigger: Trigger::Client,
        client: Some(CLIENT),
        canary,
        preview: true,
        wait_bake: false,
    }
}

/// The reply to the client, if it is done.
fn outcome(effects: &[Effect<Proc>]) -> Option<Outcome> {
    effects.iter().find_map(|e| match e {
        Effect::Reply {
            answer: Answer::Done(o),
            ..
        } => Some(o.clone()),
        _ => None,
    })
}

/// Blue live (release 1, pid OLD); release 3 previewed on green (pid NEW).
fn preview() -> T {
    let mut t = T::blue_live_with(with_testers(10));
    t.send(preview_release(None));
    t.send(Input::Committed(Ok(())));
    let task = t.task();
    t.send(staged(task, 3));
    let effects = t.send(ok(task, NEW));
    assert_eq!(words(&effects), ["testers green", "ended ok", "reply done"]);
    assert_eq!(record_of(&effects).kind, "preview");
    let Some(Outcome::Preview(share)) = outcome(&effects) else {
        panic!("{:?}", outcome(&effects));
    };
    assert_eq!(share.percent, 0);
    assert!(
        share.message.starts_with("preview: release 3 on green gets the testers (2 networks in traffic.testers); everyone else stays on blue"),
        "{}",
        share.message
    );
    t
}

#[test]
fn a_preview_is_ready_beside_the_live_color_for_the_testers_alone() {
    let t = preview();
    assert!(matches!(t.phase(Color::Green), ColorPhase::Canary { .. }));
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
    let c = t.core.canary().unwrap();
    assert!(c.is_preview());
    assert_eq!(
        t.core.shares(),
        Shares {
            blue: 100,
            green: 0
        }
    );
    assert_eq!(t.core.state().live, Some(Color::Blue), "nothing swapped");
    // It is checked like a canary: it gets connections (the testers').
    assert!(t.core.slot(Color::Green).phase.checked());
}

#[test]
fn promote_makes_a_preview_a_canary_and_then_live() {
    let mut t = preview();
    let effects = t.send(Input::Promote {
        percent: Some(10),
        client: Some(CLIENT),
    });
    assert_eq!(
        words(&effects),
        ["split green 10", "ended ok", "reply done"]
    );
    let r = record_of(&effects);
    assert_eq!(r.kind, "promote");
    assert!(
        r.result.starts_with("promoted from its preview: release 3 on green gets 10% of clients (by address, canary_by = \"client\"), and the testers (2 networks in traffic.testers)"),
        "{}",
        r.result
    );
    assert_eq!(t.core.canary().unwrap().percent, 10);
    // From 10 %, promote again: another share, no longer "from its preview".
    let effects = t.send(Input::Promote {
        percent: Some(30),
        client: Some(CLIENT),
    });
    assert!(record_of(&effects)
        .result
        .starts_with("promoted: release 3"));
    assert_eq!(
        words(&t.send(Input::Promote {
            percent: None,
            client: Some(CLIENT)
        })),
        ["commit"]
    );
    let said = t.says(Input::Committed(Ok(())));
    assert!(said.contains(&"steer green".to_string()), "{said:?}");
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Standby { .. }));
}

#[test]
fn promote_makes_a_preview_live_at_once() {
    let mut t = preview();
    assert_eq!(
        words(&t.send(Input::Promote {
            percent: None,
            client: Some(CLIENT)
        })),
        ["commit"]
    );
    let said = t.says(Input::Committed(Ok(())));
    assert!(said.contains(&"steer green".to_string()), "{said:?}");
    assert_eq!(t.core.state().live, Some(Color::Green));
}

#[test]
fn abort_ends_a_preview_and_the_testers_route() {
    let mut t = preview();
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
    let effects = t.send(drained(Color::Green, NEW));
    assert_eq!(record_of(&effects).kind, "abort");
}

#[test]
fn a_preview_that_dies_is_aborted_by_itself() {
    let mut t = preview();
    let said = t.says(exited(Color::Green, NEW, 1));
    assert_eq!(&said[..3], ["discard 200", "split green 0", "testers none"]);
    assert!(t.core.canary().is_none());
}

/// The live color restarts during a preview: its steer would end the
/// testers' route, so the testers get it back (and no split begins).
#[test]
fn a_restart_of_the_live_color_keeps_the_testers_route() {
    let mut t = preview();
    t.send(exited(Color::Blue, OLD, 100));
    t.send(Input::RestartDue { color: Color::Blue });
    let task = t.restart_task(Color::Blue);
    let said = t.says(ok(task, 300));
    assert_eq!(said, ["steer blue", "testers green"]);
    assert!(t.core.canary().unwrap().is_preview());
}

#[test]
fn a_canary_names_its_testers_and_how_it_splits() {
    let mut t = T::blue_live_with(Policy {
        rollout: Rollout {
            canary_by: CanaryBy::Connection,
            ..with_testers(0).rollout
        },
        ..Policy::default()
    });
    t.send(Input::Release {
        source: "/builds/new".into(),
        label: None,
        trigger: Trigger::Client,
        client: Some(CLIENT),
        canary: Some(30),
        preview: false,
        wait_bake: false,
    });
    t.send(Input::Committed(Ok(())));
    let task = t.task();
    t.send(staged(task, 3));
    let effects = t.send(ok(task, NEW));
    assert_eq!(
        words(&effects),
        ["split green 30", "testers green", "ended ok", "reply done"]
    );
    let r = record_of(&effects);
    assert_eq!(r.kind, "canary");
    assert!(
        r.result.starts_with("canary: release 3 on green gets 30% of new connections (at random, canary_by = \"connection\"), and the testers (2 networks in traffic.testers)"),
        "{}",
        r.result
    );
}

#[test]
fn previews_that_cannot_be_done_are_refused_and_change_nothing() {
    check_refusals(&[
        (
            "no testers",
            T::blue_live,
            || preview_release(None),
            FailureKind::BadRequest,
            "--preview sends the clients in traffic.testers to the new build, and traffic.testers is empty: list the testers' addresses",
        ),
        (
            "with --canary",
            || T::blue_live_with(with_testers(0)),
            || preview_release(Some(10)),
            FailureKind::BadRequest,
            "--preview and --canary do not go together",
        ),
        (
            "no split",
            || {
                T::blue_live_with(Policy {
                    no_split: Some("[[listen]] \"unix\" is a Unix socket".into()),
                    ..Policy::default()
                })
            },
            || preview_release(None),
            FailureKind::BadRequest,
            "--preview needs new connections steered by client address, and [[listen]] \"unix\" is a Unix socket",
        ),
        (
            "nothing live",
            || {
                let mut t = T::with(state(None, None, None), with_testers(0));
                t.send(Input::Boot);
                t
            },
            || preview_release(None),
            FailureKind::BadRequest,
            "nothing to preview beside: release without --preview first",
        ),
        (
            "a release during a preview",
            preview,
            || release("/b"),
            FailureKind::Busy,
            "a preview of release 3 runs on green (the testers alone): promote it",
        ),
        (
            "a second preview",
            preview,
            || preview_release(None),
            FailureKind::Busy,
            "a preview of release 3 runs on green",
        ),
    ]);
}

#[test]
fn compare_asks_the_live_build_and_the_one_beside_it() {
    let t = preview();
    let (live, other) = t.core.compare_sides().unwrap();
    assert_eq!(
        (live.role.as_str(), live.color, live.release),
        ("live", Color::Blue, Some(1))
    );
    assert_eq!(
        (
            other.role.as_str(),
            other.color,
            other.release,
            other.label.as_deref()
        ),
        ("preview", Color::Green, Some(3), Some("v3"))
    );
    // A canary, and the standby after a swap (during its bake too).
    let mut t = preview();
    t.send(Input::Promote {
        percent: Some(10),
        client: None,
    });
    assert_eq!(t.core.compare_sides().unwrap().1.role, "canary");
    t.send(Input::Promote {
        percent: None,
        client: None,
    });
    t.send(Input::Committed(Ok(())));
    let (live, other) = t.core.compare_sides().unwrap();
    assert_eq!(
        (live.color, other.role.as_str(), other.color),
        (Color::Green, "standby", Color::Blue)
    );
    // Nothing beside the live color, and nothing live.
    let e = T::blue_live().core.compare_sides().unwrap_err();
    assert_eq!(e.kind, FailureKind::BadRequest);
    assert!(
        e.message.contains("nothing runs beside the live blue, so there is nothing to compare: `bgctl release DIR --preview`"),
        "{}",
        e.message
    );
    let e = T::empty().core.compare_sides().unwrap_err();
    assert!(e.message.contains("nothing is live"), "{}", e.message);
}
