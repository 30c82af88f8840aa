//! A full disk (issue 26): a state that cannot be written because the
//! disk is full fails the client's request as a staging failure (exit 6,
//! as a copy that fills the disk), not as bgd's own (exit 7).

use super::*;
use crate::deploy::WriteFailed;

fn full() -> WriteFailed {
    WriteFailed {
        message: "/r/state.json: No space left on device (os error 28)".into(),
        full: true,
    }
}

#[test]
fn a_full_disk_at_admission_is_a_staging_failure() {
    let mut t = T::blue_live();
    let before = t.core.state().clone();
    t.send(release("/builds/new"));
    let effects = t.send(Input::Committed(Err(full())));
    assert_eq!(words(&effects), ["reply error Stage"]);
    assert!(error_message(&effects).contains("No space left on device"));
    assert_eq!(t.core.state(), &before);
}

#[test]
fn a_full_disk_at_the_swap_is_a_staging_failure_and_the_old_color_stays() {
    let mut t = T::blue_live();
    let task = t.admit();
    t.send(staged(task, 3));
    t.send(ok(task, 200));
    let effects = t.send(Input::Committed(Err(full())));
    assert_eq!(words(&effects).last().unwrap(), "reply error Stage");
    assert_eq!(t.core.state().live, Some(Color::Blue));
    assert!(matches!(t.phase(Color::Blue), ColorPhase::Live { .. }));
}
