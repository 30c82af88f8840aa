//! The manifest of a kept copy, `root/releases/<id>.manifest`: every entry
//! of the copy as it was made (type, mode, size and mtime of files, symlink
//! targets), so that a copy is checked before a rollback makes it live and
//! a damaged one is refused naming what differs (`rm releases/2/app.css`
//! went live unnoticed: the rollback exited 0 and status showed the
//! recorded fingerprint for a tree that no longer matched it).
//!
//! One line per entry, in the walk's order, fields separated by tabs
//! (`\`, tab and newline in a path escaped as `\\`, `\t`, `\n`), between
//! a header and a trailer that counts the entries (tabs shown as `→`):
//!
//! ```text
//! bgd-manifest 1
//! d→755→-→-→static
//! f→644→1234→1700000000.000000000→static/app.css
//! l→777→-→-→current→static
//! end→3
//! ```
//!
//! It is written whole (temp file, fsync, rename). A manifest cut short
//! is read up to the cut, and what it holds is still checked.
//! The check is as cheap as the fingerprint: a file rewritten with the
//! same size and mtime (`touch -r`) is not seen.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::pipeline::walk::{self, Kind, Meta};

const HEADER: &str = "bgd-manifest 1";

/// One entry as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    kind: char,
    perm: u32,
    /// Files only.
    size: Option<u64>,
    /// Files only: seconds and nanoseconds.
    mtime: Option<(i64, i64)>,
    target: Option<Vec<u8>>,
}

impl Rec {
    fn of(meta: &Meta, link: Option<&Path>) -> Rec {
        let file = meta.kind == Kind::File;
        Rec {
            kind: match meta.kind {
                Kind::File => 'f',
                Kind::Dir => 'd',
                Kind::Symlink => 'l',
                Kind::Special(_) => 's',
            },
            perm: meta.perm(),
            size: file.then_some(meta.size),
            mtime: file.then_some((meta.mtime, meta.mtime_nsec)),
            target: link.map(|l| l.as_os_str().as_encoded_bytes().to_vec()),
        }
    }

    fn line(&self, path: &[u8]) -> String {
        let size = self.size.map_or("-".into(), |s| s.to_string());
        let mtime = self
            .mtime
            .map_or("-".into(), |(s, n)| format!("{s}.{n:09}"));
        let mut line = format!(
            "{}\t{:o}\t{size}\t{mtime}\t{}",
            self.kind,
            self.perm,
            escape(path)
        );
        if let Some(t) = &self.target {
            line.push('\t');
            line.push_str(&escape(t));
        }
        line.push('\n');
        line
    }
}

/// `\`, tab and newline escaped; other bytes as they are (invalid UTF-8
/// as `\xNN`).
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next()? {
            '\\' => out.push(b'\\'),
            't' => out.push(b'\t'),
            'n' => out.push(b'\n'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Writes the manifest of the tree at `tree` to `to`, whole. Blocking.
pub(super) fn write(tree: &Path, to: &Path) -> io::Result<()> {
    let mut text = format!("{HEADER}\n");
    let mut count = 0u64;
    walk::walk::<io::Error>(tree, None, |e| {
        text.push_str(&Rec::of(e.meta, e.link).line(e.rel.as_os_str().as_encoded_bytes()));
        count += 1;
        Ok(true)
    })?;
    text.push_str(&format!("end\t{count}\n"));
    crate::store::state::write_atomically(to, text.as_bytes())
}

/// A manifest as read: its entries by path, and whether it was whole.
#[derive(Debug, Default)]
pub struct Read {
    entries: BTreeMap<Vec<u8>, Rec>,
    /// The trailer was there and counted every entry.
    pub whole: bool,
}

/// Parses a manifest; never fails: what cannot be read ends it (a torn
/// manifest keeps the entries before the tear).
pub fn parse(bytes: &[u8]) -> Read {
    let mut read = Read::default();
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split_inclusive('\n');
    if lines.next() != Some(&format!("{HEADER}\n")) {
        return read;
    }
    while let Some(line) = lines.next() {
        let Some(line) = line.strip_suffix('\n') else {
            break; // cut short in the middle of a line
        };
        if let Some(n) = line.strip_prefix("end\t") {
            // Whole: the count is right and nothing follows (found by the
            // own_files fuzz target: bytes after a trailer read as whole).
            read.whole = n.parse() == Ok(read.entries.len() as u64) && lines.next().is_none();
            break;
        }
        match parse_line(line) {
            Some((path, rec)) => read.entries.insert(path, rec),
            None => break,
        };
    }
    read
}

fn parse_line(line: &str) -> Option<(Vec<u8>, Rec)> {
    let f: Vec<&str> = line.split('\t').collect();
    if !(5..=6).contains(&f.len()) {
        return None;
    }
    let kind = f[0].chars().next().filter(|k| "fdls".contains(*k))?;
    let size = match f[2] {
        "-" => None,
        s => Some(s.parse().ok()?),
    };
    let mtime = match f[3] {
        "-" => None,
        m => {
            let (s, n) = m.split_once('.')?;
            Some((s.parse().ok()?, n.parse().ok()?))
        }
    };
    let rec = Rec {
        kind,
        perm: u32::from_str_radix(f[1], 8).ok()?,
        size,
        mtime,
        target: match f.get(5) {
            Some(t) => Some(unescape(t)?),
            None => None,
        },
    };
    Some((unescape(f[4])?, rec))
}

/// What a check of a kept copy against its manifest found.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Every entry as recorded.
    Whole,
    /// No manifest (a copy made by a bgd before manifests): not checked.
    Unrecorded,
    /// What differs, a phrase each (the first few), and how many
    /// differences in all.
    Differs(Vec<String>, usize),
}

/// The differences listed at most.
const SHOWN: usize = 5;

/// Checks the tree at `tree` against the manifest at `manifest`. Blocking.
pub fn check(tree: &Path, manifest: &Path) -> io::Result<Check> {
    let bytes = match std::fs::read(manifest) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Check::Unrecorded),
        Err(e) => return Err(e),
    };
    let mut want = parse(&bytes);
    if !want.whole && want.entries.is_empty() {
        tracing::warn!(
            "{} cannot be read: the copy is not checked",
            manifest.display()
        );
        return Ok(Check::Unrecorded);
    }
    let mut found = Vec::new();
    let mut count = 0;
    let mut note = |what: String| {
        count += 1;
        if found.len() < SHOWN {
            found.push(what);
        }
    };
    if !tree.is_dir() {
        return Ok(Check::Differs(
            vec![format!("{} is gone", tree.display())],
            1,
        ));
    }
    walk::walk::<io::Error>(tree, None, |e| {
        let path = e.rel.as_os_str().as_encoded_bytes();
        let now = Rec::of(e.meta, e.link);
        match want.entries.remove(path) {
            Some(was) if was != now => note(format!("{} {}", show(path), differs(&was, &now))),
            Some(_) => {}
            // A torn manifest does not know what came after its tear.
            None if want.whole => note(format!("{} was added", show(path))),
            None => {}
        }
        Ok(true)
    })?;
    for path in want.entries.keys() {
        note(format!("{} is missing", show(path)));
    }
    if !want.whole && count == 0 && !bytes.is_empty() {
        tracing::warn!(
            "{} is cut short: only the entries before the cut were checked",
            manifest.display()
        );
    }
    Ok(if count == 0 {
        Check::Whole
    } else {
        Check::Differs(found, count)
    })
}

fn show(path: &[u8]) -> String {
    escape(path).escape_debug().to_string()
}

/// How `now` differs from what `was` recorded.
fn differs(was: &Rec, now: &Rec) -> String {
    let kind = |k: char| match k {
        'f' => "a file",
        'd' => "a directory",
        'l' => "a symlink",
        _ => "a special file",
    };
    if was.kind != now.kind {
        return format!("is {} (it was {})", kind(now.kind), kind(was.kind));
    }
    if was.size != now.size {
        return format!(
            "changed size ({} bytes, it was {})",
            now.size.unwrap_or(0),
            was.size.unwrap_or(0)
        );
    }
    if was.target != now.target {
        return "points elsewhere".into();
    }
    if was.perm != now.perm {
        return format!("changed mode ({:o}, it was {:o})", now.perm, was.perm);
    }
    "was modified (its mtime changed)".into()
}

/// A sentence for a kept copy that differs from its manifest.
pub fn describe(found: &[String], count: usize) -> String {
    let more = count.saturating_sub(found.len());
    let mut s = found.join(", ");
    if more > 0 {
        s += &format!(", and {more} more");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(dir: &Path) -> std::path::PathBuf {
        let t = dir.join("t");
        fs::create_dir_all(t.join("static")).unwrap();
        fs::write(t.join("static/app.css"), "body{}").unwrap();
        fs::write(t.join("odd\tname\n\\"), "x").unwrap();
        std::os::unix::fs::symlink("static", t.join("current")).unwrap();
        t
    }

    #[test]
    fn a_copy_matches_its_manifest_until_it_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let (t, m) = (tree(dir.path()), dir.path().join("m"));
        write(&t, &m).unwrap();
        assert_eq!(check(&t, &m).unwrap(), Check::Whole);
        fs::remove_file(t.join("static/app.css")).unwrap();
        fs::write(t.join("new"), "").unwrap();
        let Check::Differs(found, 2) = check(&t, &m).unwrap() else {
            panic!("{:?}", check(&t, &m))
        };
        assert_eq!(found, ["new was added", "static/app.css is missing"]);
        assert_eq!(
            check(&t, &dir.path().join("none")).unwrap(),
            Check::Unrecorded
        );
    }

    #[test]
    fn changes_are_named_by_kind() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (t, m) = (tree(dir.path()), dir.path().join("m"));
        write(&t, &m).unwrap();
        fs::write(t.join("static/app.css"), "body{color:red}").unwrap();
        fs::set_permissions(t.join("odd\tname\n\\"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(t.join("current")).unwrap();
        std::os::unix::fs::symlink("/etc", t.join("current")).unwrap();
        let Check::Differs(found, 3) = check(&t, &m).unwrap() else {
            panic!()
        };
        assert_eq!(found[0], "current points elsewhere");
        assert!(
            found[1].starts_with("odd\\\\tname\\\\n\\\\\\\\ changed mode (600"),
            "{}",
            found[1]
        );
        assert_eq!(found[2], "static/app.css changed size (15 bytes, it was 6)");
    }

    /// A manifest cut anywhere still checks what it holds, and says
    /// nothing of what it lost.
    #[test]
    fn a_torn_manifest_checks_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (t, m) = (tree(dir.path()), dir.path().join("m"));
        write(&t, &m).unwrap();
        let whole = fs::read(&m).unwrap();
        for cut in 0..whole.len() {
            let read = parse(&whole[..cut]);
            assert!(!read.whole, "cut at {cut}");
            fs::write(&m, &whole[..cut]).unwrap();
            let checked = check(&t, &m).unwrap();
            assert!(
                matches!(checked, Check::Whole | Check::Unrecorded),
                "cut at {cut}: {checked:?}"
            );
        }
        assert!(parse(&whole).whole);
        assert_eq!(parse(&whole).entries.len(), 4);
        let mut more = whole.clone();
        more.extend_from_slice(b"ff\nend\t4\n");
        assert!(!parse(&more).whole, "nothing may follow the trailer");
    }
}
