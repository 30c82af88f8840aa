//! Table tests of the deployment core: given a state and an input, these
//! effects and this next state. No runtime, no files, no processes: a
//! process is a plain pid, and time moves only when a test says so.

use super::*;
use crate::deploy::FailureKind;

mod disk;
mod kept;
mod liveness;
mod pause;
mod preview;
mod traffic;

#[derive(Debug, PartialEq)]
struct Proc(i32);

thread_local! {
    /// Pids whose leader a test has made exit (see [`Process::exited`]).
    static DEAD: std::cell::RefCell<Vec<(i32, Exit)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The process `pid` exits (as the reaper would record it) without its exit
/// event reaching the core yet.
fn dies(pid: i32, exit: Exit) {
    DEAD.with(|d| d.borrow_mut().push((pid, exit)));
}

impl Process for Proc {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0)
    }

    fn exited(&self) -> Option<Exit> {
        DEAD.with(|d| {
            d.borrow()
                .iter()
                .find(|(p, _)| *p == self.0)
                .map(|(_, e)| *e)
        })
    }
}

const OLD: i32 = 100;
const NEW: i32 = 200;
const CLIENT: ClientId = 7;

fn build(release: u64, went_live: bool) -> Build {
    Build {
        release,
        label: Some(format!("v{release}")),
        source: format!("/builds/{release}"),
        staged_at: "2026-11-29T10:00:00Z".into(),
        went_live,
        fingerprint: Some(format!("fp{release}")),
    }
}

fn state(live: Option<Color>, blue: Option<Build>, green: Option<Build>) -> State {
    State {
        version: 1,
        live,
        next_release: 3,
        blue,
        green,
        releases: vec![],
        pause: None,
    }
}

/// A core and a clock that moves only by [`T::wait`].
struct T {
    core: Core<Proc>,
    t0: Instant,
    wall0: SystemTime,
    ms: u64,
}

impl T {
    fn new(state: State) -> T {
        T::with(state, Policy::default())
    }

    fn with(state: State, policy: Policy) -> T {
        let (t0, wall0) = (Instant::now(), SystemTime::UNIX_EPOCH);
        let core = Core::new(
            state,
            policy,
            Now {
                mono: t0,
                wall: wall0,
            },
        );
        T {
            core,
            t0,
            wall0,
            ms: 0,
        }
    }

    /// Nothing live, nothing staged.
    fn empty() -> T {
        let mut t = T::new(state(None, None, None));
        t.send(Input::Boot);
        t
    }

    /// Blue live (release 1, pid OLD); green holds release 2, which went live once.
    fn blue_live() -> T {
        T::blue_live_with(Policy::default())
    }

    fn blue_live_with(policy: Policy) -> T {
        let mut t = T::with(
            state(
                Some(Color::Blue),
                Some(build(1, true)),
                Some(build(2, true)),
            ),
            policy,
        );
        t.send(Input::Boot);
        let task = t.restart_task(Color::Blue);
        t.send(ok(task, OLD));
        assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
        t
    }

    fn wait(&mut self, ms: u64) {
        self.ms += ms;
    }

    fn now(&self) -> Now {
        Now {
            mono: self.t0 + Duration::from_millis(self.ms),
            wall: self.wall0 + Duration::from_millis(self.ms),
        }
    }

    fn send(&mut self, input: Input<Proc>) -> Vec<Effect<Proc>> {
        let now = self.now();
        self.core.handle(now, input)
    }

    /// Sends `input` and returns the effects as short words, logs left out.
    fn says(&mut self, input: Input<Proc>) -> Vec<String> {
        words(&self.send(input))
    }

    fn phase(&self, color: Color) -> &ColorPhase<Proc> {
        &self.core.slot(color).phase
    }

    fn restart_task(&self, color: Color) -> TaskId {
        match self.phase(color) {
            ColorPhase::Restarting { task: Some(t), .. } => *t,
            p => panic!("{color} is not restarting with a task: {p:?}"),
        }
    }

    fn task(&self) -> TaskId {
        self.core.release().expect("a release runs").task
    }

    /// A client's release of /builds/new, admitted (its commit written).
    fn admit(&mut self) -> TaskId {
        self.send(release("/builds/new"));
        self.send(Input::Committed(Ok(())));
        self.task()
    }

    /// A release through its swap: the old color drains.
    fn swap(&mut self) -> TaskId {
        let task = self.admit();
        self.send(staged(task, 3));
        self.send(ok(task, NEW));
        self.send(Input::Committed(Ok(())));
        task
    }

    /// `color` as status shows it.
    fn status(&self, color: Color) -> View {
        let slot = self.core.slot(color);
        View {
            state: slot.phase.name(self.core.state().build(color).is_some()),
            pid: slot.pid().map(|p| p.as_raw() as u32),
            restarts: slot.restarts,
            last_exit: slot.last_exit.map(|e| e.to_string()),
            reason: slot.phase.reason().map(str::to_string),
            failing_checks: Some(slot.health.failing).filter(|n| *n > 0),
        }
    }
}

/// What `bgctl status` shows of one color (`daemon/status.rs` renders it).
struct View {
    state: &'static str,
    pid: Option<u32>,
    restarts: u32,
    last_exit: Option<String>,
    reason: Option<String>,
    failing_checks: Option<u32>,
}

fn release(dir: &str) -> Input<Proc> {
    Input::Release {
        source: dir.into(),
        label: Some("new".into()),
        trigger: Trigger::Client,
        client: Some(CLIENT),
        canary: None,
        preview: false,
        wait_bake: false,
    }
}

fn rollback() -> Input<Proc> {
    Input::Rollback {
        client: Some(CLIENT),
        to: None,
    }
}

fn staged(task: TaskId, release: u64) -> Input<Proc> {
    Input::Task(TaskReport::Staged {
        task,
        build: build(release, false),
    })
}

fn ok(task: TaskId, pid: i32) -> Input<Proc> {
    Input::Task(TaskReport::Prepared {
        task,
        result: Ok((Proc(pid), Timings::default())),
    })
}

fn failed(task: TaskId, step: Step, exit: Option<Exit>) -> Input<Proc> {
    Input::Task(TaskReport::Prepared {
        task,
        result: Err(Failed {
            failure: Failure::new(FailureKind::App, Some(step), format!("{step} went wrong")),
            exit,
        }),
    })
}

fn drained(color: Color, pid: i32) -> Input<Proc> {
    Input::Drained(Drained {
        color,
        pid: Pid::from_raw(pid),
        exit: Exit::Code(0),
        forced: None,
    })
}

fn exited(color: Color, pid: i32, uptime_s: u64) -> Input<Proc> {
    Input::Exited(Exited {
        color,
        pid: Pid::from_raw(pid),
        exit: Exit::Code(3),
        uptime: Duration::from_secs(uptime_s),
        tail: vec!["boom".into()],
        strays: 0,
    })
}

/// One short word (plus what tells it apart) per effect; logs and the
/// repeated checks' start and stop are left out (see [`monitors`]).
fn words(effects: &[Effect<Proc>]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| {
            Some(match e {
                Effect::Save(_) => "save".into(),
                Effect::Commit(_) => "commit".into(),
                Effect::PointLive(c) => format!("point_live {c}"),
                Effect::Steer(c) => format!("steer {c}"),
                Effect::Launch(l) => format!(
                    "launch {} {}",
                    l.color,
                    if l.source.is_some() { "stage" } else { "start" }
                ),
                Effect::Abort(_) => "abort".into(),
                Effect::Forget(ids) => format!("forget {ids:?}"),
                Effect::Drain { color, process } => format!("drain {color} {}", process.0),
                Effect::Discard(p) => format!("discard {}", p.0),
                Effect::Reclaim { color, pid } => format!("reclaim {color} {pid}"),
                Effect::Kill { pid, .. } => format!("kill {pid}"),
                Effect::RestartAfter { color, delay } => {
                    format!("restart {color} after {}ms", delay.as_millis())
                }
                Effect::AfterLive { color, .. } => format!("after_live {color}"),
                Effect::Reply { answer, .. } => match answer {
                    Answer::Progress { step, .. } => format!("reply progress {step}"),
                    Answer::Done(_) => "reply done".into(),
                    Answer::Failed(f) => format!("reply error {:?}", f.kind),
                },
                Effect::Ended(e) => format!(
                    "ended {}",
                    if e.failure.is_none() { "ok" } else { "failed" }
                ),
                Effect::Unlisten => "unlisten".into(),
                Effect::Hold(Some(c)) => format!("hold {c}"),
                Effect::Hold(None) => "unhold".into(),
                Effect::Ready => "ready".into(),
                Effect::Stopping => "stopping".into(),
                Effect::Split { canary, percent } => format!("split {canary} {percent}"),
                Effect::Testers(Some(c)) => format!("testers {c}"),
                Effect::Testers(None) => "testers none".into(),
                Effect::WakeAt(_) => "wake".into(),
                Effect::Rescue(c) => format!("rescue {c}"),
                Effect::Notify(n) => format!("notify {}", n.name()),
                Effect::Log(..) | Effect::Monitor { .. } | Effect::Unmonitor(_) => return None,
            })
        })
        .collect()
}

/// The history record of the release that `effects` ended.
fn record_of(effects: &[Effect<Proc>]) -> crate::deploy::record::Record {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Ended(e) => Some(e.record.clone()),
            _ => None,
        })
        .expect("a record")
}

fn error_message(effects: &[Effect<Proc>]) -> String {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Reply {
                answer: Answer::Failed(f),
                ..
            } => Some(f.message.clone()),
            _ => None,
        })
        .expect("an error reply")
}

fn committed_state(effects: &[Effect<Proc>]) -> State {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Commit(s) => Some(s.clone()),
            _ => None,
        })
        .expect("a commit")
}

// ---- admission ----

/// Blue live, a release to green admitted.
fn releasing() -> T {
    let mut t = T::blue_live();
    t.admit();
    t
}

/// Blue live, the first stop signal received.
fn stopping() -> T {
    let mut t = T::blue_live();
    t.send(Input::Stop);
    t
}

/// Blue live; green holds release 2, which failed and never went live.
fn green_never_live() -> T {
    let mut t = T::new(state(
        Some(Color::Blue),
        Some(build(1, true)),
        Some(build(2, false)),
    ));
    t.send(Input::Boot);
    t
}

/// Blue live; green holds nothing.
fn green_empty() -> T {
    let mut t = T::new(state(Some(Color::Blue), Some(build(1, true)), None));
    t.send(Input::Boot);
    t
}

type Case = (
    &'static str,
    fn() -> T,
    fn() -> Input<Proc>,
    FailureKind,
    &'static str,
);

/// Each case: the refusal is the only effect, its message says why, and
/// the release in progress (if any) is untouched.
fn check_refusals(cases: &[Case]) {
    for (name, setup, input, kind, text) in cases {
        let mut t = setup();
        let before = t.core.release().map(|r| r.task);
        let effects = t.send(input());
        assert_eq!(words(&effects), [format!("reply error {kind:?}")], "{name}");
        let m = error_message(&effects);
        assert!(m.contains(text), "{name}: {m}");
        assert_eq!(t.core.release().map(|r| r.task), before, "{name}");
    }
}

#[test]
fn nothing_begins_while_bgd_stops_or_another_release_runs() {
    let release_b = || release("/b");
    check_refusals(&[
        (
            "stopping",
            stopping,
            release_b,
            FailureKind::Busy,
            "shutting down",
        ),
        (
            "stopping rollback",
            stopping,
            rollback,
            FailureKind::Busy,
            "shutting down",
        ),
        (
            "overlap",
            releasing,
            release_b,
            FailureKind::Busy,
            "releases never overlap",
        ),
        (
            "rollback overlap",
            releasing,
            rollback,
            FailureKind::Busy,
            "release of release 3 is in progress",
        ),
    ]);
}

#[test]
fn a_release_needs_an_absolute_path_and_a_rollback_a_good_build() {
    let relative = || release("b");
    check_refusals(&[
        (
            "relative path",
            T::blue_live,
            relative,
            FailureKind::BadRequest,
            "must be absolute",
        ),
        (
            "nothing live",
            T::empty,
            rollback,
            FailureKind::BadRequest,
            "nothing is live",
        ),
        (
            "never went live",
            green_never_live,
            rollback,
            FailureKind::BadRequest,
            "holds release 2 which never went live",
        ),
        (
            "no build",
            green_empty,
            rollback,
            FailureKind::BadRequest,
            "green holds no build that went live",
        ),
    ]);
}

#[test]
fn a_release_waits_for_the_dormant_color_to_finish_draining() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    // The swap cannot be written: green drains, blue stays live.
    t.send(Input::Committed(Err("disk full".into())));
    assert!(matches!(t.phase(Color::Green), ColorPhase::Draining { .. }));
    assert!(t.core.busy(), "auto-release waits too");
    let effects = t.send(release("/builds/next"));
    assert_eq!(words(&effects), ["reply error Busy"]);
    assert!(error_message(&effects).contains("green (pid 200) is draining"));
    t.send(drained(Color::Green, NEW));
    assert_eq!(t.says(release("/builds/next")), ["commit"]);
}

#[test]
fn the_first_release_goes_to_blue_and_the_next_to_the_dormant_color() {
    let mut t = T::empty();
    t.admit();
    assert_eq!(t.core.release().unwrap().color, Color::Blue);
    let mut t = T::blue_live();
    t.admit();
    assert_eq!(t.core.release().unwrap().color, Color::Green);
}

#[test]
fn admission_clears_the_dormant_record_and_launches_only_once_that_is_written() {
    let mut t = T::blue_live();
    let effects = t.send(release("/builds/new"));
    assert_eq!(words(&effects), ["commit"]);
    let s = committed_state(&effects);
    assert_eq!(s.green, None, "the dormant color's record is cleared first");
    assert_eq!(s.next_release, 4);
    assert!(matches!(t.phase(Color::Green), ColorPhase::Stopped));
    assert_eq!(t.says(Input::Committed(Ok(()))), ["launch green stage"]);
    assert!(matches!(t.phase(Color::Green), ColorPhase::Starting));
    assert_eq!(t.task(), 3, "a release's task id is its release id");
}

#[test]
fn admission_that_cannot_write_the_state_is_refused_and_changes_nothing() {
    let mut t = T::blue_live();
    let before = t.core.state().clone();
    t.send(release("/builds/new"));
    let effects = t.send(Input::Committed(Err("/r/state.json: read-only".into())));
    assert_eq!(words(&effects), ["reply error Internal"]);
    assert!(error_message(&effects).contains("cannot write bgd's state: /r/state.json: read-only"));
    assert_eq!(t.core.state(), &before);
    assert!(t.core.release().is_none());
    assert!(matches!(t.phase(Color::Green), ColorPhase::Stopped));
}

#[test]
fn a_rollback_starts_the_dormant_build_without_staging() {
    let mut t = T::blue_live();
    let effects = t.send(rollback());
    assert_eq!(words(&effects), ["launch green start"]);
    let Effect::Launch(l) = effects
        .iter()
        .find(|e| matches!(e, Effect::Launch(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        (l.release, l.label.as_deref(), l.source.as_ref()),
        (2, Some("v2"), None)
    );
    let r = t.core.release().unwrap();
    assert_eq!(
        r.kind,
        Kind::Rollback {
            automatic: None,
            replaced: None
        }
    );
    assert_eq!(r.step(), Step::Start);
    assert!(l.task >= FIRST_OTHER_TASK);
}

#[test]
fn an_auto_release_asks_the_task_to_check_the_fingerprint() {
    let mut t = T::blue_live();
    t.send(Input::Release {
        source: "/watched".into(),
        label: Some("auto".into()),
        trigger: Trigger::Watch("abc".into()),
        client: None,
        canary: None,
        preview: false,
        wait_bake: false,
    });
    let effects = t.send(Input::Committed(Ok(())));
    let Some(Effect::Launch(l)) = effects.iter().find(|e| matches!(e, Effect::Launch(_))) else {
        panic!("no launch")
    };
    assert_eq!(l.expect.as_deref(), Some("abc"));
}

// ---- progress ----

#[test]
fn progress_reaches_the_client_and_each_step_is_recorded_once() {
    let mut t = T::blue_live();
    let task = t.admit();
    assert_eq!(t.core.release().unwrap().step(), Step::Validate);
    for (ms, step) in [(5, Step::Stage), (10, Step::Stage), (30, Step::Start)] {
        t.wait(ms);
        let said = t.says(Input::Task(TaskReport::Progress {
            task,
            step,
            message: "m".into(),
        }));
        assert_eq!(said, [format!("reply progress {step}")]);
    }
    let r = t.core.release().unwrap();
    let steps: Vec<_> = r.steps.iter().map(|s| (s.step, s.at_ms)).collect();
    assert_eq!(steps, [(Step::Stage, 5), (Step::Start, 45)]);
    assert_eq!(t.core.release().unwrap().step(), Step::Start);
}

#[test]
fn reports_of_an_older_task_are_ignored() {
    let mut t = T::blue_live();
    t.admit();
    let stale = 2;
    let said = t.says(Input::Task(TaskReport::Progress {
        task: stale,
        step: Step::Stage,
        message: "m".into(),
    }));
    assert!(said.is_empty());
    assert!(t.says(staged(stale, 2)).is_empty());
    assert_eq!(
        t.says(ok(stale, 999)),
        ["discard 999"],
        "its process is not kept"
    );
    assert!(matches!(
        t.core.release().unwrap().phase,
        ReleasePhase::Preparing { .. }
    ));
}

// ---- failure at each step ----

#[test]
fn a_failure_before_staging_swapped_puts_the_old_record_back() {
    for step in [Step::Validate, Step::Stage] {
        let mut t = T::blue_live();
        let task = t.admit();
        let effects = t.send(failed(task, step, None));
        assert_eq!(
            words(&effects),
            ["ended failed", "save", "forget [3]", "reply error App"],
            "{step}"
        );
        assert!(t.core.state().kept(3).unwrap().failed, "{step}");
        assert_eq!(
            t.core.state().green,
            Some(build(2, true)),
            "{step}: rollback target kept"
        );
        assert_eq!(t.core.state().live, Some(Color::Blue));
        assert!(t.core.release().is_none());
    }
}

#[test]
fn a_failure_after_staging_keeps_the_new_record_which_never_went_live() {
    for step in [Step::Prepare, Step::Start, Step::WaitReady] {
        let mut t = T::blue_live();
        let task = t.admit();
        assert_eq!(t.says(staged(task, 3)), ["save"]);
        let effects = t.send(failed(task, step, Some(Exit::Code(1))));
        assert_eq!(
            words(&effects),
            ["ended failed", "save", "forget [3]", "reply error App"],
            "{step}: its kept copy goes, its record says it failed"
        );
        assert!(t.core.state().kept(3).unwrap().failed, "{step}");
        let green = t.core.state().green.clone().unwrap();
        assert_eq!((green.release, green.went_live), (3, false), "{step}");
        assert!(matches!(
            t.core.slot(Color::Blue).phase,
            ColorPhase::Live { .. }
        ));
    }
}

#[test]
fn status_shows_how_the_failed_start_ended_not_an_older_exit() {
    let mut t = T::blue_live();
    t.core.green.last_exit = Some(Exit::Signal(9));
    let task = t.admit();
    t.send(staged(task, 3));
    t.send(failed(task, Step::WaitReady, Some(Exit::Code(4))));
    assert_eq!(
        t.status(Color::Green).last_exit.as_deref(),
        Some("exit code 4")
    );
    assert_eq!(t.status(Color::Green).state, "stopped");
    // A failure before anything started keeps the exit it had.
    let task = t.admit();
    t.send(failed(task, Step::Validate, None));
    assert_eq!(
        t.status(Color::Green).last_exit.as_deref(),
        Some("exit code 4")
    );
}

#[test]
fn a_failed_first_release_stops_listening() {
    let mut t = T::empty();
    let task = t.admit();
    let said = t.says(failed(task, Step::Start, None));
    assert_eq!(
        said,
        [
            "ended failed",
            "save",
            "forget [3]",
            "reply error App",
            "unlisten"
        ]
    );
}

#[test]
fn a_failed_release_is_recorded_with_its_step_and_source() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.wait(40);
    let effects = t.send(failed(task, Step::Stage, None));
    let Some(Effect::Ended(e)) = effects.iter().find(|e| matches!(e, Effect::Ended(_))) else {
        panic!("no record")
    };
    assert_eq!(e.record.failed_step, Some(Step::Stage));
    assert_eq!(e.record.source.as_deref(), Some("/builds/new"));
    assert_eq!(
        (e.record.kind.as_str(), e.record.trigger.as_str()),
        ("release", "bgctl")
    );
    assert!(!e.record.ok);
    assert_eq!(e.record.finished, "1970-01-01T00:00:00Z");
}

#[test]
fn a_swap_that_cannot_be_written_drains_the_new_color_and_keeps_the_old() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.send(staged(task, 3));
    let effects = t.send(ok(task, NEW));
    assert_eq!(words(&effects), ["commit"]);
    assert_eq!(committed_state(&effects).live, Some(Color::Green));
    let effects = t.send(Input::Committed(Err("disk full".into())));
    assert_eq!(
        words(&effects),
        [
            "drain green 200",
            "ended failed",
            "save",
            "forget [3]",
            "reply error Internal"
        ]
    );
    assert!(error_message(&effects)
        .contains("cannot record the new live color: disk full; the old color stays live"));
    assert_eq!(t.core.state().live, Some(Color::Blue));
    assert!(!t.core.state().green.as_ref().unwrap().went_live);
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
}

// ---- swap and drain ----

#[test]
fn a_ready_color_is_committed_then_made_live_and_the_old_one_drains() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.send(staged(task, 3));
    let effects = t.send(ok(task, NEW));
    let s = committed_state(&effects);
    assert_eq!(s.live, Some(Color::Green));
    assert!(s.green.as_ref().unwrap().went_live);
    let said = t.says(Input::Committed(Ok(())));
    assert_eq!(
        said,
        [
            "point_live green",
            "steer green",
            "after_live green",
            "reply progress drain",
            "drain blue 100"
        ]
    );
    assert_eq!(t.status(Color::Green).state, "live");
    assert_eq!(t.status(Color::Blue).state, "draining");
    assert_eq!(t.status(Color::Blue).pid, Some(100));
    assert_eq!(t.core.release().unwrap().step(), Step::Drain);
    assert!(
        t.core.release().is_some(),
        "a release lasts until the old color has drained"
    );
}

#[test]
fn the_release_ends_when_the_old_color_has_drained() {
    let mut t = T::blue_live();
    t.swap();
    t.wait(250);
    assert!(
        t.says(drained(Color::Blue, 999)).is_empty(),
        "another process's drain"
    );
    assert!(t.core.release().is_some());
    let effects = t.send(drained(Color::Blue, OLD));
    assert_eq!(words(&effects), ["ended ok", "reply done"]);
    let Some(Effect::Reply {
        answer: Answer::Done(Outcome::Released(s)),
        ..
    }) = effects.iter().find(|e| matches!(e, Effect::Reply { .. }))
    else {
        unreachable!()
    };
    assert_eq!(s.release, 3);
    assert_eq!(s.color.other(), Color::Blue);
    assert_eq!(s.previous_exit, Some(Exit::Code(0)));
    assert_eq!(s.drain_ms, 250);
    assert_eq!(t.status(Color::Blue).state, "stopped");
    assert!(t.core.release().is_none());
}

#[test]
fn the_first_release_ends_at_its_swap() {
    let mut t = T::empty();
    let task = t.admit();
    t.send(staged(task, 3));
    t.send(ok(task, NEW));
    let said = t.says(Input::Committed(Ok(())));
    // READY=1 went out at boot, when nothing was live.
    assert_eq!(
        said,
        [
            "point_live blue",
            "steer blue",
            "after_live blue",
            "ended ok",
            "reply done"
        ]
    );
    assert!(t.core.release().is_none());
}

#[test]
fn a_swap_makes_the_restart_of_a_dead_old_color_moot() {
    let mut t = T::blue_live();
    t.send(exited(Color::Blue, OLD, 60));
    t.send(Input::RestartDue { color: Color::Blue });
    let restart = t.restart_task(Color::Blue);
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
            "abort",
            "ended ok",
            "reply done"
        ]
    );
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Stopped));
    assert_eq!(
        t.says(ok(restart, 300)),
        ["discard 300"],
        "its late report is dropped"
    );
}

#[test]
fn going_live_resets_the_restart_counters() {
    let mut t = T::blue_live();
    t.core.green.restarts = 4;
    t.core.green.streak = 3;
    t.swap();
    assert_eq!((t.core.green.restarts, t.core.green.streak), (0, 0));
}

#[test]
fn a_rollback_swaps_back_and_says_so() {
    let mut t = T::blue_live();
    assert_eq!(t.says(rollback()), ["launch green start"]);
    let task = t.task();
    t.send(ok(task, NEW));
    t.send(Input::Committed(Ok(())));
    let effects = t.send(drained(Color::Blue, OLD));
    let Some(Effect::Ended(e)) = effects.iter().find(|e| matches!(e, Effect::Ended(_))) else {
        panic!("no record")
    };
    assert!(
        e.record
            .result
            .starts_with("rolled back to release 2 on green"),
        "{}",
        e.record.result
    );
    assert_eq!(e.record.source.as_deref(), Some("/builds/2"));
    assert_eq!(e.record.kind, "rollback");
    assert_eq!(t.core.state().live, Some(Color::Green));
}

#[test]
fn every_step_of_a_release_lands_in_its_record() {
    let mut t = T::blue_live();
    let task = t.admit();
    for step in [Step::Stage, Step::Start, Step::WaitReady] {
        t.wait(10);
        t.send(Input::Task(TaskReport::Progress {
            task,
            step,
            message: String::new(),
        }));
    }
    t.send(ok(task, NEW));
    t.send(Input::Committed(Ok(())));
    let effects = t.send(drained(Color::Blue, OLD));
    let Some(Effect::Ended(e)) = effects.iter().find(|e| matches!(e, Effect::Ended(_))) else {
        panic!("no record")
    };
    let steps: Vec<Step> = e.record.steps.iter().map(|s| s.step).collect();
    // The swap is one commit, not a step a client waits on.
    assert_eq!(
        steps,
        [Step::Stage, Step::Start, Step::WaitReady, Step::Drain]
    );
}

// ---- restarts ----

#[test]
fn boot_starts_the_live_color_or_says_ready_at_once() {
    let mut t = T::new(state(Some(Color::Green), None, Some(build(2, true))));
    assert_eq!(t.says(Input::Boot), ["launch green start"]);
    assert_eq!(t.status(Color::Green).state, "restarting");
    let task = t.restart_task(Color::Green);
    assert_eq!(t.says(ok(task, NEW)), ["steer green", "ready"]);
    assert_eq!(t.status(Color::Green).state, "live");

    let mut t = T::new(state(None, None, None));
    assert_eq!(t.says(Input::Boot), ["ready"]);
    assert_eq!(t.status(Color::Blue).state, "empty");
}

#[test]
fn a_live_color_without_a_build_record_is_not_started() {
    let mut t = T::new(state(Some(Color::Blue), None, None));
    assert_eq!(t.says(Input::Boot), ["ready"]);
    assert_eq!(t.core.state().live, None);
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Stopped));
}

#[test]
fn a_dead_live_color_restarts_with_a_backoff_that_grows_while_it_dies_young() {
    let mut t = T::blue_live();
    let cases = [
        // (uptime s, expected delay ms)
        (60, 0),
        (1, 100),
        (1, 200),
        (1, 400),
        (45, 0),
    ];
    let mut pid = OLD;
    for (n, (uptime, delay)) in cases.into_iter().enumerate() {
        let said = t.says(exited(Color::Blue, pid, uptime));
        assert_eq!(
            said,
            [
                format!("discard {pid}"),
                format!("restart blue after {delay}ms")
            ],
            "case {n}"
        );
        assert_eq!(t.status(Color::Blue).state, "restarting");
        assert_eq!(
            t.status(Color::Blue).last_exit.as_deref(),
            Some("exit code 3")
        );
        assert_eq!(
            t.says(Input::RestartDue { color: Color::Blue }),
            ["launch blue start"]
        );
        pid += 1;
        let task = t.restart_task(Color::Blue);
        assert_eq!(t.says(ok(task, pid)), ["steer blue"]);
    }
    assert_eq!(t.status(Color::Blue).restarts, 5);
}

#[test]
fn a_restart_is_due_only_for_a_live_color_still_waiting() {
    let mut t = T::blue_live();
    assert!(
        t.says(Input::RestartDue { color: Color::Blue }).is_empty(),
        "it is live"
    );
    assert!(
        t.says(Input::RestartDue {
            color: Color::Green
        })
        .is_empty(),
        "not live"
    );
    t.send(exited(Color::Blue, OLD, 1));
    t.send(Input::RestartDue { color: Color::Blue });
    assert!(
        t.says(Input::RestartDue { color: Color::Blue }).is_empty(),
        "already running"
    );
}

#[test]
fn a_failed_restart_shows_why_and_tries_again() {
    let mut t = T::blue_live();
    t.send(exited(Color::Blue, OLD, 1));
    t.send(Input::RestartDue { color: Color::Blue });
    let task = t.restart_task(Color::Blue);
    let said = t.says(Input::Task(TaskReport::Prepared {
        task,
        result: Err(Failed {
            failure: Failure::new(
                FailureKind::BadRequest,
                Some(Step::Start),
                "/r/blue does not exist: nothing to start for blue",
            ),
            exit: None,
        }),
    }));
    assert_eq!(said, ["restart blue after 200ms"]);
    let st = t.status(Color::Blue);
    assert_eq!(st.state, "restarting");
    assert_eq!(
        st.reason.as_deref(),
        Some("/r/blue does not exist: nothing to start for blue")
    );
    assert_eq!(st.restarts, 2);
    assert_eq!(
        st.last_exit.as_deref(),
        Some("exit code 3"),
        "no new process, the old exit stays"
    );
    // The reason stays while the next try runs, and goes once it is live.
    t.send(Input::RestartDue { color: Color::Blue });
    assert!(t.status(Color::Blue).reason.is_some());
    let task = t.restart_task(Color::Blue);
    t.send(ok(task, 300));
    assert_eq!(t.status(Color::Blue).reason, None);
}

#[test]
fn only_the_live_process_exiting_counts_as_a_death() {
    let mut t = T::blue_live();
    assert!(
        t.says(exited(Color::Blue, 999, 1)).is_empty(),
        "another pid"
    );
    assert!(
        t.says(exited(Color::Green, OLD, 1)).is_empty(),
        "the other color"
    );
    t.swap();
    assert!(
        t.says(exited(Color::Blue, OLD, 1)).is_empty(),
        "a draining color"
    );
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Draining { .. }));
}

#[test]
fn a_live_color_dying_during_a_release_restarts_beside_it() {
    let mut t = T::blue_live();
    let task = t.admit();
    let said = t.says(exited(Color::Blue, OLD, 1));
    assert_eq!(said, ["discard 100", "restart blue after 100ms"]);
    assert_eq!(
        t.says(Input::RestartDue { color: Color::Blue }),
        ["launch blue start"]
    );
    assert_eq!(t.task(), task, "the release goes on");
}

#[test]
fn a_restart_that_comes_up_after_its_color_stopped_being_live_is_drained() {
    let mut t = T::blue_live();
    t.send(exited(Color::Blue, OLD, 1));
    t.send(Input::RestartDue { color: Color::Blue });
    let restart = t.restart_task(Color::Blue);
    t.core.state.live = None;
    assert_eq!(t.says(ok(restart, 300)), ["drain blue 300"]);
    assert_eq!(t.status(Color::Blue).state, "draining");
}

#[test]
fn a_restart_failing_for_a_color_no_longer_live_stops_it() {
    let mut t = T::blue_live();
    t.send(exited(Color::Blue, OLD, 1));
    t.send(Input::RestartDue { color: Color::Blue });
    let restart = t.restart_task(Color::Blue);
    t.core.state.live = None;
    assert!(t.says(failed(restart, Step::Start, None)).is_empty());
    assert_eq!(t.status(Color::Blue).state, "stopped");
}

// ---- shutdown ----

#[test]
fn stopping_with_nothing_running_is_finished_at_once() {
    let mut t = T::empty();
    assert_eq!(t.says(Input::Stop), ["stopping"]);
    assert!(t.core.finished());
}

#[test]
fn stopping_drains_the_live_color_and_finishes_when_it_has_stopped() {
    let mut t = T::blue_live();
    assert_eq!(t.says(Input::Stop), ["stopping", "drain blue 100"]);
    assert!(!t.core.finished());
    t.send(drained(Color::Blue, OLD));
    assert!(t.core.finished());
    assert_eq!(
        t.core.state().live,
        Some(Color::Blue),
        "blue stays recorded as live"
    );
}

#[test]
fn a_stop_aborts_a_release_that_has_not_swapped() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.send(staged(task, 3));
    let effects = t.send(Input::Stop);
    assert_eq!(
        words(&effects),
        ["stopping", "abort", "reply error Busy", "drain blue 100"]
    );
    assert!(error_message(&effects).contains("the release was aborted"));
    assert!(t.core.release().is_none());
    assert!(matches!(t.phase(Color::Green), ColorPhase::Stopped));
    assert_eq!(
        t.says(ok(task, NEW)),
        ["discard 200"],
        "its late report is dropped"
    );
    t.send(drained(Color::Blue, OLD));
    assert!(t.core.finished());
}

#[test]
fn a_stop_after_the_swap_lets_the_old_color_drain_then_drains_the_new() {
    let mut t = T::blue_live();
    t.swap();
    assert_eq!(t.says(Input::Stop), ["stopping"]);
    let said = t.says(drained(Color::Blue, OLD));
    assert_eq!(said, ["ended ok", "reply done", "drain green 200"]);
    assert!(!t.core.finished());
    t.send(drained(Color::Green, NEW));
    assert!(t.core.finished());
}

#[test]
fn a_stop_cancels_restarts() {
    let mut t = T::blue_live();
    t.send(exited(Color::Blue, OLD, 1));
    t.send(Input::RestartDue { color: Color::Blue });
    let restart = t.restart_task(Color::Blue);
    assert_eq!(t.says(Input::Stop), ["stopping", "abort"]);
    assert!(t.core.finished());
    assert_eq!(t.says(ok(restart, 300)), ["discard 300"]);
    // A restart whose backoff was still running is cancelled too.
    let mut t = T::blue_live();
    t.send(exited(Color::Blue, OLD, 1));
    assert_eq!(t.says(Input::Stop), ["stopping"]);
    assert!(t.says(Input::RestartDue { color: Color::Blue }).is_empty());
    assert!(t.core.finished());
}

#[test]
fn a_live_color_dying_while_bgd_stops_is_not_restarted() {
    let mut t = T::blue_live();
    t.send(Input::Stop);
    // Draining: its exit is the drain's business.
    assert!(t.says(exited(Color::Blue, OLD, 1)).is_empty());
    let mut t = T::blue_live();
    t.swap();
    t.send(Input::Stop);
    assert_eq!(t.says(exited(Color::Green, NEW, 1)), ["discard 200"]);
    assert!(matches!(t.phase(Color::Green), ColorPhase::Stopped));
}

#[test]
fn the_second_stop_kills_every_running_color() {
    let mut t = T::blue_live();
    t.swap();
    t.send(Input::Stop);
    assert_eq!(t.says(Input::Stop), ["kill 100", "kill 200"]);
    assert_eq!(t.core.shutdown(), Shutdown::Killing);
}

// ---- readiness and status ----

#[test]
fn ready_is_sent_once() {
    let mut t = T::blue_live();
    assert!(t.core.ready_sent());
    t.send(exited(Color::Blue, OLD, 1));
    t.send(Input::RestartDue { color: Color::Blue });
    let task = t.restart_task(Color::Blue);
    assert_eq!(t.says(ok(task, 300)), ["steer blue"], "no second READY=1");
}

#[test]
fn a_failed_restart_at_boot_still_says_ready() {
    let mut t = T::new(state(Some(Color::Blue), Some(build(1, true)), None));
    t.send(Input::Boot);
    let task = t.restart_task(Color::Blue);
    assert_eq!(
        t.says(failed(task, Step::WaitReady, None)),
        ["ready", "restart blue after 0ms"]
    );
}

#[test]
fn status_names_each_phase() {
    let mut t = T::blue_live();
    let cases: Vec<(&str, &str, &str)> = vec![("live", "stopped", "blue live")];
    for (blue, green, what) in cases {
        assert_eq!(
            (t.status(Color::Blue).state, t.status(Color::Green).state),
            (blue, green),
            "{what}"
        );
    }
    t.send(release("/builds/new"));
    t.send(Input::Committed(Ok(())));
    assert_eq!(t.status(Color::Green).state, "starting");
    assert_eq!(t.status(Color::Green).pid, None);
    assert_eq!(t.core.live_pid(), Some(Pid::from_raw(OLD)));
    let p = t.core.release().unwrap();
    assert_eq!(
        (p.id, p.color, p.label.as_deref()),
        (3, Color::Green, Some("new"))
    );
}
