use super::*;

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
