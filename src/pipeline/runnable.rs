//! Whether a config's programs can run: checked by `bgd --check` and by a
//! reload (SIGHUP) before it is applied, as a start of a color would find
//! them.
//!
//! A reload that named a program that does not exist was accepted ("config
//! reloaded"); nothing ran the new command until the live color crashed,
//! and then every restart failed. So `app.command[0]` and
//! `health.exec[0]` must resolve now: a name with a `/` inside the build
//! where it will run (the live color's directory, the one a restart uses;
//! with no build yet it is not checked), an absolute path as it is, a bare
//! name in the `PATH` the app gets (`app.env.PATH`, else bgd's). The file
//! must be a regular file (after symlinks) that the app's user may
//! execute. `app.user` and `app.group` are looked up by the config's own
//! parse. A program bgd cannot judge (a `{fd:NAME}` template, a hook's
//! shell command) is left to the start.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::identity::Identity;
use crate::config::Config;

/// Checks `config`'s programs; `build` is the directory a start of the
/// app would run in now (the live color's), if any. `Err` is one line,
/// `file:line:col: key: what is wrong and what to do`.
pub fn check(config: &Config, build: Option<&Path>) -> Result<(), String> {
    let who = config.app.identity.as_ref();
    let path = config
        .app
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    let programs = [
        Some(("app.command", &config.app.command, &config.app.command_at)),
        config
            .health
            .exec
            .as_ref()
            .zip(config.health.exec_at.as_ref())
            .map(|(c, at)| ("health.exec", c, at)),
    ];
    for (key, command, at) in programs.into_iter().flatten() {
        program(&command[0], build, &path, who).map_err(|why| format!("{at}: {key}: {why}"))?;
    }
    Ok(())
}

/// The live color's directory under `root`, from the `root/live` symlink
/// (for `bgd --check`, which has no daemon to ask).
pub fn live_build(root: &Path) -> Option<PathBuf> {
    let live = crate::store::layout::live_link(root);
    std::fs::canonicalize(live).ok().filter(|d| d.is_dir())
}

fn program(
    name: &str,
    build: Option<&Path>,
    path: &str,
    who: Option<&Identity>,
) -> Result<(), String> {
    if name.contains('{') {
        return Ok(());
    }
    let file = if name.starts_with('/') {
        PathBuf::from(name)
    } else if name.contains('/') {
        match build {
            Some(dir) => dir.join(name),
            None => return Ok(()),
        }
    } else {
        let found = std::env::split_paths(path)
            .map(|d| d.join(name))
            .find(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file()));
        match found {
            Some(f) => f,
            None => {
                return Err(format!(
                    "the program {name:?} is not in the PATH the app gets ({path}): install it, name it by its full path, or set app.env.PATH"
                ))
            }
        }
    };
    let where_ = match build.filter(|_| !name.starts_with('/') && name.contains('/')) {
        Some(dir) => format!(" in the live build ({})", dir.display()),
        None => String::new(),
    };
    let meta = std::fs::metadata(&file).map_err(|e| {
        format!(
            "the program {name:?} cannot be found{where_}: {} ({e}); fix the command, or release a build that holds it",
            file.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "the program {name:?} is not a file{where_}: {}; name the program to run",
            file.display()
        ));
    }
    if !may_execute(&meta, who) {
        let user = who.map_or("bgd's user".to_string(), |i| format!("user {:?}", i.user));
        return Err(format!(
            "{user} may not execute the program {name:?}{where_}: {} has mode {:o} and owner {}:{}; make it executable for that user (chmod +x)",
            file.display(),
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        ));
    }
    Ok(())
}

/// Whether `who` (bgd's own user when `None`) may execute a file with
/// `meta`, by its mode bits (root: any execute bit).
fn may_execute(meta: &std::fs::Metadata, who: Option<&Identity>) -> bool {
    let mode = meta.mode();
    let (uid, groups) = match who {
        Some(i) => (
            i.uid.as_raw(),
            i.groups.iter().map(|g| g.as_raw()).collect(),
        ),
        None => (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getgroups()
                .map(|g| g.iter().map(|g| g.as_raw()).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain([nix::unistd::getegid().as_raw()])
                .collect::<Vec<_>>(),
        ),
    };
    if uid == 0 {
        return mode & 0o111 != 0;
    }
    if meta.uid() == uid {
        mode & 0o100 != 0
    } else if groups.contains(&meta.gid()) {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(command: &str, extra: &str) -> Config {
        let text = format!(
            "name = \"t\"\nroot = \"r\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[app]\ncommand = [{command}]\nallow_root = true\n{extra}\n[health]\nhttp = \"/\"\n"
        );
        Config::parse(Path::new("/etc/bgd/t.toml"), &text).unwrap()
    }

    #[test]
    fn a_program_must_resolve_where_it_will_run() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path();
        std::fs::write(build.join("server"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(build.join("server"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(build.join("data"), "").unwrap();
        std::fs::set_permissions(build.join("data"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        check(&config("\"./server\"", ""), Some(build)).unwrap();
        check(&config("\"./gone\"", ""), None).unwrap();
        let e = check(&config("\"./gone\"", ""), Some(build)).unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/t.toml:7:11: app.command: the program \"./gone\" cannot be found in the live build"),
            "{e}"
        );
        let e = check(&config("\"./data\"", ""), Some(build)).unwrap_err();
        assert!(e.contains("may not execute the program \"./data\""), "{e}");
        check(&config("\"sh\"", ""), Some(build)).unwrap();
        let e = check(&config("\"no-such-program-bgd\"", ""), None).unwrap_err();
        assert!(e.contains("is not in the PATH the app gets"), "{e}");
        let e = check(&config("\"sh\"", "env = { PATH = \"/nowhere\" }"), None).unwrap_err();
        assert!(e.contains("(/nowhere)"), "{e}");
        let e = check(&config("\"/no/such/bin\"", ""), None).unwrap_err();
        assert!(e.contains("\"/no/such/bin\" cannot be found"), "{e}");
    }

    #[test]
    fn the_health_check_program_too() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server"), "").unwrap();
        std::fs::set_permissions(
            dir.path().join("server"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let text = "name = \"t\"\nroot = \"r\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[app]\ncommand = [\"./server\"]\nallow_root = true\n[health]\nexec = [\"./check\"]\n";
        let c = Config::parse(Path::new("/etc/bgd/t.toml"), text).unwrap();
        let e = check(&c, Some(dir.path())).unwrap_err();
        assert!(
            e.starts_with(
                "/etc/bgd/t.toml:10:8: health.exec: the program \"./check\" cannot be found"
            ),
            "{e}"
        );
    }
}
