//! Pause for database work (issue 24): what is held, stopped, started and
//! refused, and how the pause ends.

use super::kept::launch_of;
use super::*;
use crate::deploy::state::Kept;

fn pause(max_ms: Option<u64>, page: Option<&str>) -> Input<Proc> {
    Input::Pause(PauseAsk {
        client: Some(CLIENT),
        max: max_ms.map(Duration::from_millis),
        page: page.map(PathBuf::from),
    })
}

fn resume() -> Input<Proc> {
    Input::Resume {
        client: Some(CLIENT),
    }
}

/// Blue live with release 1 (kept), green holds release 2: paused, the
/// commit written, blue draining.
fn paused_with(max_ms: Option<u64>, page: Option<&str>) -> T {
    let mut s = state(
        Some(Color::Blue),
        Some(build(1, true)),
        Some(build(2, true)),
    );
    s.releases = vec![Kept::of(&build(1, true)), Kept::of(&build(2, true))];
    let mut t = T::new(s);
    t.send(Input::Boot);
    let task = t.restart_task(Color::Blue);
    t.send(ok(task, OLD));
    assert_eq!(t.says(pause(max_ms, page)), ["commit"]);
    t
}

/// Paused and the app stopped: nothing runs, connections wait on green.
fn waiting() -> T {
    let mut t = paused_with(None, None);
    t.send(Input::Committed(Ok(())));
    t.send(drained(Color::Blue, OLD));
    t
}

#[test]
fn a_pause_is_recorded_first_then_steers_to_the_dormant_socket_and_drains() {
    let mut t = paused_with(None, None);
    let p = t
        .core
        .state()
        .pause
        .clone()
        .expect("recorded before anything");
    assert_eq!((p.color, p.before), (Color::Green, Some(1)));
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
    assert_eq!(
        t.says(Input::Committed(Ok(()))),
        [
            "hold green",
            "steer green",
            "reply progress drain",
            "notify paused",
            "drain blue 100",
            "reply progress drain"
        ]
    );
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Draining { .. }));
    // The client is answered once no app process runs.
    assert_eq!(
        t.says(drained(Color::Blue, OLD)),
        ["notify pause_stopped", "reply done"]
    );
    let v = t.core.paused(t.now()).unwrap();
    assert_eq!(v.stage, "waiting");
    assert_eq!(t.status(Color::Blue).state, "stopped");
    // The live color is not restarted while paused.
    assert!(t.says(Input::RestartDue { color: Color::Blue }).is_empty());
}

#[test]
fn a_pause_that_cannot_be_recorded_changes_nothing() {
    let mut t = paused_with(None, None);
    let e = t.send(Input::Committed(Err("disk full".into())));
    assert_eq!(words(&e), ["reply error Internal"]);
    assert!(error_message(&e).contains("nothing changed"));
    assert!(t.core.state().pause.is_none());
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
}

#[test]
fn a_release_during_the_pause_goes_to_the_waiting_color_and_ends_it_in_its_swap() {
    let mut t = waiting();
    let task = t.admit();
    assert_eq!(t.core.release().unwrap().color, Color::Green);
    t.send(staged(task, 3));
    let e = t.send(ok(task, NEW));
    let c = committed_state(&e);
    assert!(c.pause.is_none(), "the swap's commit ends the pause");
    assert_eq!(c.live, Some(Color::Green));
    let effects = t.says(Input::Committed(Ok(())));
    assert!(effects.contains(&"steer green".to_string()), "{effects:?}");
    assert!(effects.contains(&"unhold".to_string()), "{effects:?}");
    assert!(
        effects.contains(&"notify pause_ended".to_string()),
        "{effects:?}"
    );
    assert!(effects.ends_with(&["ended ok".into(), "reply done".into()]));
    assert!(t.core.paused(t.now()).is_none());
    assert_eq!(t.core.state().live, Some(Color::Green));
}

#[test]
fn a_release_that_fails_during_the_pause_leaves_it_in_place_and_says_so() {
    let mut t = waiting();
    let task = t.admit();
    let e = t.send(failed(task, Step::WaitReady, None));
    let m = error_message(&e);
    assert!(m.contains("still paused since"), "{m}");
    assert!(!words(&e).contains(&"unlisten".to_string()));
    let v = t.core.paused(t.now()).expect("still paused");
    assert_eq!(v.stage, "waiting");
    assert!(v.failed.unwrap().contains("still paused"));
    // The next release goes to the waiting color again.
    t.admit();
    assert_eq!(t.core.release().unwrap().color, Color::Green);
}

#[test]
fn resume_starts_the_build_live_before_from_its_kept_copy_in_the_waiting_color() {
    let mut t = waiting();
    assert_eq!(t.says(resume()), ["commit"]);
    let l = launch_of(&t.send(Input::Committed(Ok(()))));
    assert_eq!((l.color, l.release), (Color::Green, 1));
    assert_eq!(l.kept.map(|k| k.release), Some(1));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    // Resume when not paused.
    let mut t = T::blue_live();
    let e = t.send(resume());
    assert!(
        error_message(&e).starts_with("not paused"),
        "{e:?}",
        e = words(&e)
    );
    // --page without --max when not paused.
    let e = t.send(pause(None, Some("/page")));
    assert!(error_message(&e).contains("--max"));
    // During a release.
    let mut r = releasing();
    let e = r.send(pause(None, None));
    assert_eq!(words(&e), ["reply error Busy"]);
    // Already paused.
    let mut p = waiting();
    let e = p.send(pause(None, None));
    assert!(error_message(&e).starts_with("already paused"));
    // A release while the pause still stops the app.
    let mut s = paused_with(None, None);
    s.send(Input::Committed(Ok(())));
    let e = s.send(release("/builds/new"));
    assert_eq!(words(&e), ["reply error Busy"]);
    assert!(error_message(&e).contains("still stopping blue"));
    // A canary during a pause.
    let mut c = waiting();
    let mut ask = release("/builds/new");
    if let Input::Release { canary, .. } = &mut ask {
        *canary = Some(10);
    }
    let e = c.send(ask);
    assert!(error_message(&e).contains("paused since"));
    // A preview during a pause: there is no live build for the others.
    let mut v = waiting();
    let mut ask = release("/builds/new");
    if let Input::Release { preview, .. } = &mut ask {
        *preview = true;
    }
    let e = v.send(ask);
    assert!(
        error_message(&e).contains("paused since") && error_message(&e).contains("--preview"),
        "{}",
        error_message(&e)
    );
    // Nothing live.
    let mut n = T::empty();
    let e = n.send(pause(None, None));
    assert!(error_message(&e).contains("nothing is live"));
}

#[test]
fn past_max_the_page_is_released_into_the_waiting_color_and_the_pause_goes_on() {
    let mut t = paused_with(Some(2_000), Some("/page"));
    let e = t.says(Input::Committed(Ok(())));
    assert!(e.contains(&"wake".to_string()), "{e:?}");
    t.send(drained(Color::Blue, OLD));
    t.wait(1_000);
    assert!(t.says(Input::Due).is_empty(), "not yet");
    t.wait(1_000);
    let e = t.says(Input::Due);
    assert_eq!(e, ["notify pause_max", "commit"]);
    let task = t.admit_committed();
    assert_eq!(
        t.core.release().unwrap().label.as_deref(),
        Some("maintenance page")
    );
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    let e = t.says(Input::Committed(Ok(())));
    assert!(
        !e.contains(&"unhold".to_string()),
        "the page keeps the pause: {e:?}"
    );
    let v = t.core.paused(t.now()).expect("still paused");
    assert_eq!(v.stage, "page");
    assert!(
        !t.core.state().green.as_ref().unwrap().went_live,
        "the page is never a rollback target"
    );
    // Resume replaces the page by a swap into blue.
    t.send(resume());
    let l = launch_of(&t.send(Input::Committed(Ok(()))));
    assert_eq!((l.color, l.release), (Color::Blue, 1));
    let task = t.task();
    t.send(ok(task, 300));
    let e = t.says(Input::Committed(Ok(())));
    assert!(e.contains(&"unhold".to_string()), "{e:?}");
    assert!(e.contains(&"drain green 200".to_string()), "{e:?}");
    assert!(t.core.paused(t.now()).is_none());
}

#[test]
fn past_max_without_a_page_bgd_warns_and_the_clients_keep_waiting() {
    let mut t = paused_with(Some(1_000), None);
    t.send(Input::Committed(Ok(())));
    t.send(drained(Color::Blue, OLD));
    t.wait(1_000);
    assert_eq!(t.says(Input::Due), ["notify pause_max"]);
    let v = t.core.paused(t.now()).unwrap();
    assert!(v.overdue.unwrap().contains("no maintenance page"));
    assert_eq!(v.stage, "waiting");
}

/// Blue was live with release 1, green holds release 2, and a pause on
/// green (since the epoch, `--max` of `max_ms`) is recorded.
fn paused_state(max_ms: Option<u64>) -> State {
    let mut s = state(
        Some(Color::Blue),
        Some(build(1, true)),
        Some(build(2, true)),
    );
    s.pause = Some(Paused {
        color: Color::Green,
        since: "1970-01-01T00:00:00Z".into(),
        since_ms: 0,
        before: Some(1),
        max_ms,
        page: None,
        page_release: None,
    });
    s
}

#[test]
fn a_bgd_started_while_a_pause_is_recorded_stays_paused() {
    let mut t = T::new(paused_state(Some(5_000)));
    // The live color left running mid-stop: nothing is steered to it, and
    // once boot has seen every adopted color it drains.
    let e = t.says(Input::Adopt {
        color: Color::Blue,
        process: Proc(OLD),
    });
    assert!(e.is_empty(), "{e:?}");
    let e = t.says(Input::Boot);
    assert_eq!(
        e,
        [
            "hold green",
            "steer green",
            "drain blue 100",
            "wake",
            "ready"
        ]
    );
    assert!(t.core.paused(t.now()).is_some());
}

/// The previous bgd died before the pause held anything: the standby (or
/// a release's process) still ran in the waiting color. It drains first
/// while the adopted live color serves on; only then do connections wait
/// there and the live color stop.
#[test]
fn a_bgd_started_before_the_pause_held_drains_the_waiting_color_first() {
    let mut t = T::new(paused_state(None));
    let adopt = |color, pid| Input::Adopt {
        color,
        process: Proc(pid),
    };
    assert_eq!(t.says(adopt(Color::Green, NEW)), ["drain green 200"]);
    assert!(t.says(adopt(Color::Blue, OLD)).is_empty());
    assert_eq!(t.says(Input::Boot), ["steer blue", "ready"]);
    assert_eq!(t.core.paused(t.now()).unwrap().stage, "stopping");
    assert_eq!(
        t.says(drained(Color::Green, NEW)),
        [
            "hold green",
            "steer green",
            "notify paused",
            "drain blue 100"
        ]
    );
    // Nobody waits for an answer: the `bgctl pause` client left with the
    // previous bgd.
    assert!(t.says(drained(Color::Blue, OLD)).is_empty());
    assert_eq!(t.core.paused(t.now()).unwrap().stage, "waiting");
}

/// A rollback while a pause drains the standby is refused: taking the
/// standby back would leave the pause waiting for a drain that never ends.
#[test]
fn a_rollback_while_a_pause_drains_the_standby_is_refused() {
    let mut t = T::blue_live_with(Policy {
        rollout: crate::deploy::rollout::Rollout {
            standby: Duration::from_secs(30),
            ..Default::default()
        },
        ..Policy::default()
    });
    t.swap();
    t.send(pause(None, None));
    t.send(Input::Committed(Ok(())));
    assert_eq!(t.says(rollback()), ["reply error Busy"]);
    let e = t.says(drained(Color::Blue, OLD));
    assert_eq!(&e[..2], ["hold blue", "steer blue"]);
}

/// A pause while the live color is down and waits to restart: what queued
/// on its socket meanwhile is relayed to the pause's queue (rescued), not
/// left for its next build.
#[test]
fn a_pause_while_the_live_color_restarts_rescues_its_queue() {
    let mut t = T::blue_live_with(Policy::default());
    t.send(exited(Color::Blue, OLD, 1));
    assert!(matches!(
        t.phase(Color::Blue),
        ColorPhase::Restarting { .. }
    ));
    assert_eq!(t.says(pause(None, None)), ["commit"]);
    let e = t.says(Input::Committed(Ok(())));
    let at = |w: &str| e.iter().position(|x| x == w);
    assert!(at("steer green") < at("rescue blue"), "{e:?}");
    assert!(at("rescue blue").is_some(), "{e:?}");
    assert_eq!(t.status(Color::Blue).state, "stopped");
}

impl T {
    /// The page's (or any automatic) release just admitted: its commit
    /// written; returns its task.
    fn admit_committed(&mut self) -> TaskId {
        self.send(Input::Committed(Ok(())));
        self.task()
    }
}

#[test]
fn the_page_is_never_kept_as_a_standby() {
    let policy = Policy {
        rollout: crate::deploy::rollout::Rollout {
            standby: Duration::from_secs(60),
            ..Default::default()
        },
        ..Policy::default()
    };
    let mut s = state(
        Some(Color::Blue),
        Some(build(1, true)),
        Some(build(2, true)),
    );
    s.releases = vec![Kept::of(&build(1, true))];
    let mut t = T::with(s, policy);
    t.send(Input::Boot);
    let task = t.restart_task(Color::Blue);
    t.send(ok(task, OLD));
    t.send(pause(None, None));
    t.send(Input::Committed(Ok(())));
    t.send(drained(Color::Blue, OLD));
    // The page, by hand.
    t.send(pause(None, Some("/page")));
    let task = t.admit_committed();
    t.send(ok(task, NEW));
    t.send(Input::Committed(Ok(())));
    assert_eq!(t.core.paused(t.now()).unwrap().stage, "page");
    // A release replaces it: the page drains, no standby.
    t.admit();
    let task = t.task();
    t.send(ok(task, 300));
    let e = t.says(Input::Committed(Ok(())));
    assert!(e.contains(&"drain green 200".to_string()), "{e:?}");
    assert!(!matches!(t.phase(Color::Green), ColorPhase::Standby { .. }));
    assert!(t.core.paused(t.now()).is_none());
}

/// A release during the pause whose main process exited while its swap
/// was written is undone, and the pause holds on: the maintenance page
/// released later does not end it (a stale end was consumed there).
#[test]
fn an_undone_swap_leaves_the_pause_as_it_was() {
    let mut t = paused_with(Some(2_000), Some("/page"));
    t.send(Input::Committed(Ok(())));
    t.send(drained(Color::Blue, OLD));
    let task = t.admit();
    t.send(staged(task, 3));
    assert_eq!(t.says(ok(task, NEW)), ["commit"]);
    dies(NEW, Exit::Code(0));
    let e = t.says(Input::Committed(Ok(())));
    assert!(e.contains(&"reply error App".to_string()), "{e:?}");
    assert!(t.core.state().pause.is_some(), "still paused");
    t.wait(2_000);
    assert_eq!(t.says(Input::Due), ["notify pause_max", "commit"]);
    let task = t.admit_committed();
    t.send(staged(task, 4));
    t.send(ok(task, 300));
    let e = t.says(Input::Committed(Ok(())));
    assert!(
        !e.contains(&"notify pause_ended".to_string()) && !e.contains(&"unhold".to_string()),
        "the page does not end the pause: {e:?}"
    );
    assert_eq!(t.core.paused(t.now()).unwrap().stage, "page");
}

/// With `traffic.steps`, the release that replaces the maintenance page
/// is still a plain swap, never a canary beside the page.
#[test]
fn no_canary_steps_during_a_pause() {
    let mut t = paused_with(Some(1_000), Some("/page"));
    t.send(Input::Committed(Ok(())));
    t.send(drained(Color::Blue, OLD));
    t.wait(1_000);
    t.send(Input::Due);
    let task = t.admit_committed();
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    t.send(Input::Committed(Ok(())));
    assert_eq!(t.core.paused(t.now()).unwrap().stage, "page");
    t.core.set_policy(Policy {
        rollout: crate::deploy::rollout::Rollout {
            steps: crate::deploy::rollout::parse_steps(&["10%:1m".to_string()]).unwrap(),
            ..Default::default()
        },
        ..Policy::default()
    });
    let task = t.admit();
    t.send(staged(task, 4));
    let e = t.says(ok(task, 300));
    assert_eq!(e, ["commit"], "a swap, not a split");
}

/// A pause within the standby window (30 s after a release by default):
/// the standby runs in the color whose socket will hold the connections.
/// It drains first, and only once it has stopped are new connections
/// steered there (it would accept them, and could shut the socket down
/// under them in its drain); then the live color stops.
#[test]
fn a_pause_right_after_a_release_drains_the_standby_before_it_holds() {
    let mut t = T::blue_live_with(Policy {
        rollout: crate::deploy::rollout::Rollout {
            standby: Duration::from_secs(30),
            ..Default::default()
        },
        ..Policy::default()
    });
    t.swap();
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Standby { .. }));
    assert_eq!(t.says(pause(None, None)), ["commit"]);
    let e = t.says(Input::Committed(Ok(())));
    assert_eq!(e, ["drain blue 100", "reply progress drain"]);
    assert_eq!(t.core.state().pause.as_ref().unwrap().color, Color::Blue);
    let e = t.says(drained(Color::Blue, OLD));
    assert_eq!(
        e,
        [
            "hold blue",
            "steer blue",
            "reply progress drain",
            "notify paused",
            "drain green 200",
            "reply progress drain"
        ]
    );
    assert_eq!(
        t.says(drained(Color::Green, NEW)),
        ["notify pause_stopped", "reply done"]
    );
}
