//! Build script: records the commit bgd is built from, for `bgd --version`
//! and `bgctl --version` (`bgd::VERSION`).
//!
//! The commit is, in order: `BGD_COMMIT` from the environment (a packager
//! building from an export sets it); the `HEAD` of the git repository whose
//! top is this package's directory; the `sha1` that `cargo package` records
//! in `.cargo_vcs_info.json`; else `unknown` (a tarball without git).
//!
//! Cargo reruns this script only when what it read changes: `BGD_COMMIT`,
//! git's `HEAD` (a checkout), the branch's ref or `packed-refs` (a commit).
//! Editing sources does not rerun it, so it adds no rebuild of its own; a new
//! commit rebuilds the package's crates once, since the string changed.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BGD_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let commit = std::env::var("BGD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git_head(&dir))
        .or_else(|| vcs_info(&dir))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BGD_COMMIT={}", commit.trim());
}

/// The short hash of `HEAD`, if `dir` is the top of a git work tree (not a
/// tarball unpacked inside some other repository).
fn git_head(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    // `--git-path` finds these in a linked worktree too (HEAD in the
    // worktree's own git dir, refs in the common one).
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(dir, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        let Some(path) = git(dir, &["rev-parse", "--git-path", &name]) else {
            continue;
        };
        let path = dir.join(path);
        // A path that does not exist would make cargo rerun this every time.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(dir, &["rev-parse", "--short=12", "HEAD"])
}

/// The commit `cargo package` recorded, for a build from a packaged crate.
fn vcs_info(dir: &Path) -> Option<String> {
    let path = dir.join(".cargo_vcs_info.json");
    let text = std::fs::read_to_string(&path).ok()?;
    println!("cargo:rerun-if-changed={}", path.display());
    let after = text.split("\"sha1\"").nth(1)?;
    let sha: String = after
        .chars()
        .skip_while(|c| !c.is_ascii_hexdigit())
        .take_while(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    (sha.len() == 12).then_some(sha)
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
