//! Kept releases as rules: which copies in `root/releases` stay, which
//! release a rollback goes to, and how each is named. Plain functions of
//! the state, no IO (the copies are `pipeline::stage`'s, the listing with
//! sizes `pipeline::releases`').
//!
//! A release is **good** once it went live and did not fail. bgd keeps the
//! newest `keep` good ones, plus whatever is live, on standby or being
//! released; of the failed ones it keeps only the record (their copy is
//! removed when they fail), the newest `keep` of them.

use std::collections::HashSet;

use crate::deploy::state::Kept;

/// How many good releases bgd keeps a copy of unless `keep` says otherwise.
pub const DEFAULT_KEEP: usize = 5;

/// The releases whose copies go, given `keep` and the ones in use
/// (`protect`); their records are dropped from `list`, except failed ones,
/// which keep a record (without a copy) until `keep` newer ones failed.
/// `prefer` (what a plain rollback goes to: the build live before the live
/// one) is one of the `keep` good ones, however old. Returns the ids whose
/// copies to remove.
pub fn prune(list: &mut Vec<Kept>, keep: usize, protect: &[u64], prefer: Option<u64>) -> Vec<u64> {
    let newest_first = |pred: &dyn Fn(&Kept) -> bool, n: usize| -> HashSet<u64> {
        let mut ids: Vec<u64> = list.iter().filter(|k| pred(k)).map(|k| k.release).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter().take(n).collect()
    };
    let prefer = prefer.filter(|p| {
        keep > 0 && !protect.contains(p) && list.iter().any(|k| k.release == *p && is_good(k))
    });
    let others = keep - usize::from(prefer.is_some());
    let mut good = newest_first(
        &|k: &Kept| is_good(k) && !protect.contains(&k.release) && Some(k.release) != prefer,
        others,
    );
    good.extend(prefer);
    let failed = newest_first(&|k: &Kept| k.failed, keep);
    let stays = |k: &Kept| {
        protect.contains(&k.release) || good.contains(&k.release) || failed.contains(&k.release)
    };
    let gone: Vec<u64> = list
        .iter()
        .filter(|k| !stays(k) || k.failed)
        .map(|k| k.release)
        .collect();
    list.retain(stays);
    gone
}

/// Went live and did not fail: a rollback may go there.
pub fn is_good(k: &Kept) -> bool {
    k.went_live && !k.failed
}

/// The release `bgctl rollback` goes to when not told: the newest good one
/// older than the live one `live`, else the newest good one other than it.
pub fn previous(list: &[Kept], live: Option<u64>) -> Option<&Kept> {
    let others = || {
        list.iter()
            .filter(|k| is_good(k) && Some(k.release) != live)
    };
    others()
        .filter(|k| live.is_none_or(|l| k.release < l))
        .max_by_key(|k| k.release)
        .or_else(|| others().max_by_key(|k| k.release))
}

/// The kept release `to` names: an id, else the newest with that label.
/// `Err` says which ones are kept.
pub fn find<'a>(list: &'a [Kept], to: &str) -> Result<&'a Kept, String> {
    let by_id = to
        .parse::<u64>()
        .ok()
        .and_then(|id| list.iter().find(|k| k.release == id));
    let by_label = || {
        list.iter()
            .filter(|k| k.label.as_deref() == Some(to))
            .max_by_key(|k| k.release)
    };
    by_id.or_else(by_label).ok_or_else(|| {
        format!(
            "no kept release has the id or label {to:?}; {}",
            kept_list(list)
        )
    })
}

/// `kept: 7 (v7), 6 (v6)`, newest first, or that none is kept.
pub fn kept_list(list: &[Kept]) -> String {
    let mut good: Vec<&Kept> = list.iter().filter(|k| is_good(k)).collect();
    good.sort_by_key(|k| std::cmp::Reverse(k.release));
    if good.is_empty() {
        return "no release that went live is kept".into();
    }
    let names: Vec<String> = good
        .iter()
        .map(|k| match &k.label {
            Some(l) => format!("{} ({l})", k.release),
            None => k.release.to_string(),
        })
        .collect();
    format!("kept: {} (`bgctl releases` lists them)", names.join(", "))
}

/// Each release's state word, given the live release and the standby's.
pub fn state_word(k: &Kept, live: Option<u64>, standby: Option<u64>) -> &'static str {
    if Some(k.release) == live {
        "live"
    } else if Some(k.release) == standby {
        "standby"
    } else if k.failed {
        "failed"
    } else {
        "kept"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(release: u64, went_live: bool, failed: bool) -> Kept {
        Kept {
            release,
            label: Some(format!("v{release}")),
            source: format!("/b/{release}"),
            fingerprint: None,
            made: "t".into(),
            went_live,
            failed,
        }
    }

    fn ids(list: &[Kept]) -> Vec<u64> {
        list.iter().map(|k| k.release).collect()
    }

    #[test]
    fn prune_keeps_the_newest_good_ones_plus_those_in_use() {
        let mut list: Vec<Kept> = (1..=8).map(|i| kept(i, true, false)).collect();
        // 1 is live (after a rollback), 8 is being released.
        let gone = prune(&mut list, 3, &[1, 8], None);
        assert_eq!(ids(&list), [1, 5, 6, 7, 8]);
        assert_eq!(gone, [2, 3, 4]);
    }

    /// What a plain rollback goes to (the build live before the live one) is
    /// one of the `keep`, however old.
    #[test]
    fn prune_keeps_the_rollback_target_within_keep() {
        let mut list: Vec<Kept> = (1..=8).map(|i| kept(i, true, false)).collect();
        // 8 is live; 2 was live before it (rolled back to, then 8 released).
        let gone = prune(&mut list, 3, &[8], Some(2));
        assert_eq!(ids(&list), [2, 6, 7, 8]);
        assert_eq!(gone, [1, 3, 4, 5]);
    }

    #[test]
    fn a_failed_release_keeps_its_record_but_not_its_copy() {
        let mut list = vec![
            kept(1, true, false),
            kept(2, false, true),
            kept(3, false, false),
        ];
        let gone = prune(&mut list, 5, &[], None);
        assert_eq!(
            ids(&list),
            [1, 2],
            "a build that never went live and is not in use goes"
        );
        assert_eq!(
            gone,
            [2, 3],
            "the failed one's copy is removed, its record stays"
        );
        let mut many: Vec<Kept> = (1..=4).map(|i| kept(i, false, true)).collect();
        prune(&mut many, 2, &[], None);
        assert_eq!(ids(&many), [3, 4]);
    }

    #[test]
    fn rollback_goes_to_the_newest_good_release_older_than_the_live_one() {
        let list = vec![
            kept(1, true, false),
            kept(2, true, false),
            kept(3, false, true),
            kept(4, true, false),
        ];
        assert_eq!(previous(&list, Some(4)).unwrap().release, 2, "3 failed");
        assert_eq!(previous(&list, Some(2)).unwrap().release, 1);
        assert_eq!(
            previous(&list, Some(1)).unwrap().release,
            4,
            "none older: the newest other"
        );
        assert!(previous(&[kept(1, true, false)], Some(1)).is_none());
    }

    #[test]
    fn find_takes_an_id_or_the_newest_label_and_lists_the_kept_ones_otherwise() {
        let mut list = vec![
            kept(1, true, false),
            kept(2, true, false),
            kept(3, false, true),
        ];
        list[0].label = Some("prod".into());
        list[1].label = Some("prod".into());
        assert_eq!(find(&list, "1").unwrap().release, 1);
        assert_eq!(find(&list, "prod").unwrap().release, 2);
        let e = find(&list, "v9").unwrap_err();
        assert!(
            e.contains("\"v9\"") && e.contains("kept: 2 (prod), 1 (prod)"),
            "{e}"
        );
    }
}
