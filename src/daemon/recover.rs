//! Start-up after bgd found its state damaged and fell back on the state
//! before its last write (`store::state::load`): the colors still running
//! say what served when bgd died, and they win over the older state, so
//! that a lost last change never makes bgd stop the color that serves.

use crate::deploy::state::State;
use crate::store::files::Notes;
use crate::supervise::adoption::Found;

/// Makes the color that served when bgd died live, if the older state
/// names another one and the running color's release is one the state
/// knows. That color is the one adopted color, when the older state's live
/// color no longer runs; or, when both run (one was the standby), the one
/// `root/live` points at (`pointed`), as it is repointed right after each
/// swap is written. Returns whether the state changed (it must be saved).
pub(super) fn trust_what_runs(
    state: &mut State,
    found: &[Found],
    pointed: Option<crate::color::Color>,
    notes: &Notes,
) -> bool {
    let live_runs = state
        .live
        .is_some_and(|l| found.iter().any(|f| f.color == l));
    let running = match found {
        [one] if !live_runs => one,
        [_, _] => match found.iter().find(|f| Some(f.color) == pointed) {
            Some(f) => f,
            None => return false,
        },
        _ => return false,
    };
    let color = running.color;
    if state.live == Some(color) {
        return false;
    }
    let release = running.record.release;
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
    build.went_live = true;
    state.set_build(color, Some(build));
    state.live = Some(color);
    notes.set(
        "state.json recovered",
        format!("{color} (release {release}) was running and the older state did not name it live: it stays live"),
    );
    true
}
