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

#[test]
fn disk_usage_counts_hard_linked_files_once() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(a.join("big"), vec![1u8; 1 << 20]).unwrap();
    fs::hard_link(a.join("big"), b.join("big")).unwrap();
    let mut seen = HashSet::new();
    let first = disk_usage(&a, &mut seen);
    let second = disk_usage(&b, &mut seen);
    assert!(first >= 1 << 20, "{first}");
    assert!(
        second < 64 << 10,
        "the shared file counts with the first: {second}"
    );
}
