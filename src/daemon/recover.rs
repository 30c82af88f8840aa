//! Start-up after bgd found its state damaged and fell back on the state
//! before its last write (`store::state::load`): the colors still running
//! say what served when bgd died, and they win over the older state, so
//! that a lost last change never makes bgd stop the color that serves.

use crate::color::Color;
use crate::deploy::state::State;
use crate::store::files::Notes;

/// Makes the color that served when bgd died live (`running`: each
/// adopted color and its release), if the older state
/// names another one and the running color's release is one the state
/// knows. That color is the one adopted color, when the older state's live
/// color no longer runs; or, when both run (one was the standby), the one
/// `root/live` points at (`pointed`), as it is repointed right after each
/// swap is written. Returns whether the state changed (it must be saved).
pub(super) fn trust_what_runs(
    state: &mut State,
    running: &[(Color, u64)],
    pointed: Option<Color>,
    notes: &Notes,
) -> bool {
    let live_runs = state
        .live
        .is_some_and(|l| running.iter().any(|(c, _)| *c == l));
    let (color, release) = match running {
        [one] if !live_runs => *one,
        [_, _] => match running.iter().find(|(c, _)| Some(*c) == pointed) {
            Some(r) => *r,
            None => return false,
        },
        _ => return false,
    };
    if state.live == Some(color) {
        return false;
    }
    let build = match state.build(color) {
        Some(b) if b.release == release => Some(b.clone()),
        _ => state
            .kept(release)
            .filter(|k| !k.failed)
            .map(|k| k.build(crate::now_rfc3339())),
    };
    let Some(mut build) = build else {
        return false;
    };
    // The maintenance page never counts as a build that went live: no
    // rollback or standby goes back to it.
    let page = state
        .pause
        .as_ref()
        .is_some_and(|p| p.page_release == Some(release));
    build.went_live = !page;
    state.set_build(color, Some(build));
    state.live = Some(color);
    notes.set(
        "state.json recovered",
        format!("{color} (release {release}) was running and the older state did not name it live: it stays live"),
    );
    // A pause the older state records was ended by the change that was
    // lost (the release now serving), unless what serves is its page.
    if let Some(p) = state.pause.take_if(|p| p.page_release != Some(release)) {
        notes.set(
            "state.json pause",
            format!("the older state records a pause since {}, but release {release} serves: the pause had ended, and bgd does not pause again", p.since),
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::pause::Paused;
    use crate::deploy::state::{Build, Kept};

    fn build(release: u64) -> Build {
        Build {
            release,
            label: None,
            source: format!("/b/{release}"),
            staged_at: "t".into(),
            went_live: true,
            fingerprint: None,
        }
    }

    /// The older state: blue live with release 1, green holds release 2;
    /// both kept.
    fn older() -> State {
        let mut s = State::empty();
        s.live = Some(Color::Blue);
        s.set_build(Color::Blue, Some(build(1)));
        s.set_build(Color::Green, Some(build(2)));
        s.releases = vec![
            Kept::of(&build(1)),
            Kept::of(&build(2)),
            Kept::of(&build(3)),
        ];
        s
    }

    fn paused(page_release: Option<u64>) -> Paused {
        Paused {
            color: Color::Green,
            since: "t".into(),
            since_ms: 0,
            before: Some(1),
            max_ms: None,
            page: None,
            page_release,
        }
    }

    #[test]
    fn the_one_color_running_wins_over_an_older_state() {
        let mut s = older();
        assert!(trust_what_runs(
            &mut s,
            &[(Color::Green, 2)],
            None,
            &Notes::default()
        ));
        assert_eq!(s.live, Some(Color::Green));
        // The older state's live color still runs: it is believed.
        let mut s = older();
        assert!(!trust_what_runs(
            &mut s,
            &[(Color::Blue, 1)],
            None,
            &Notes::default()
        ));
        assert_eq!(s.live, Some(Color::Blue));
    }

    /// Both run (one was the standby): `root/live`, repointed after each
    /// swap is written, tells which one served; without it nothing changes.
    #[test]
    fn with_both_running_the_live_link_decides() {
        let both = [(Color::Blue, 1), (Color::Green, 2)];
        let mut s = older();
        assert!(trust_what_runs(
            &mut s,
            &both,
            Some(Color::Green),
            &Notes::default()
        ));
        assert_eq!(s.live, Some(Color::Green));
        let mut s = older();
        assert!(!trust_what_runs(&mut s, &both, None, &Notes::default()));
        assert!(!trust_what_runs(
            &mut s,
            &both,
            Some(Color::Blue),
            &Notes::default()
        ));
        assert_eq!(s.live, Some(Color::Blue));
    }

    /// The lost change was the swap that ended a pause: the release that
    /// serves ends it here too, unless what serves is the pause's page.
    #[test]
    fn a_pause_the_lost_change_ended_is_not_taken_up_again() {
        let mut s = older();
        s.pause = Some(paused(None));
        let notes = Notes::default();
        assert!(trust_what_runs(&mut s, &[(Color::Green, 3)], None, &notes));
        assert_eq!(s.live, Some(Color::Green));
        assert!(s.pause.is_none());
        assert!(notes
            .all()
            .iter()
            .any(|n| n.contains("the pause had ended")));
        let mut s = older();
        s.pause = Some(paused(Some(3)));
        assert!(trust_what_runs(
            &mut s,
            &[(Color::Green, 3)],
            None,
            &Notes::default()
        ));
        assert!(s.pause.is_some(), "the page serves: still paused");
        assert!(
            !s.build(Color::Green).unwrap().went_live,
            "the page never counts as a build that went live"
        );
        assert!(s.build(Color::Green).unwrap().release == 3);
    }
}
