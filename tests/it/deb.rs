//! The Debian package, end to end: `packaging/deb/build` makes it, its file
//! list and lintian are checked, `apt-get install` puts it on this machine,
//! the installed bgd runs the installed unit and example config under the
//! systemd user manager harness, and `apt-get remove` and `purge` take it
//! away again (the purge asking before it removes /var/lib/bgd).
//!
//! This changes the machine (/usr/bin, /etc/bgd, /var/lib/bgd), so it needs
//! root and refuses to touch a machine that has bgd installed already. It
//! skips, saying why, unless `BGD_REQUIRE_DEB` is set (CI sets it): then it
//! fails instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::*;
use crate::systemd::UserManager;

/// Every file the package installs (directories aside), and its mode.
const FILES: &[(&str, &str)] = &[
    ("./usr/bin/bgd", "-rwxr-xr-x"),
    ("./usr/bin/bgctl", "-rwxr-xr-x"),
    ("./lib/systemd/system/bgd@.service", "-rw-r--r--"),
    ("./lib/systemd/system/bgd@.socket", "-rw-r--r--"),
    ("./etc/bgd/example.toml.sample", "-rw-r--r--"),
    ("./usr/share/man/man1/bgd.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/bgctl.1.gz", "-rw-r--r--"),
    ("./usr/share/bash-completion/completions/bgd", "-rw-r--r--"),
    (
        "./usr/share/bash-completion/completions/bgctl",
        "-rw-r--r--",
    ),
    ("./usr/share/zsh/vendor-completions/_bgd", "-rw-r--r--"),
    ("./usr/share/zsh/vendor-completions/_bgctl", "-rw-r--r--"),
    (
        "./usr/share/fish/vendor_completions.d/bgd.fish",
        "-rw-r--r--",
    ),
    (
        "./usr/share/fish/vendor_completions.d/bgctl.fish",
        "-rw-r--r--",
    ),
    ("./usr/share/doc/bgd/README.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/docs/guide.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/docs/config.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/docs/cli.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/docs/operations.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/docs/metrics.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/docs/protocol.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/docs/servers.md", "-rw-r--r--"),
    ("./usr/share/doc/bgd/copyright", "-rw-r--r--"),
    ("./usr/share/doc/bgd/changelog.Debian.gz", "-rw-r--r--"),
    (
        "./usr/share/doc/bgd/examples/hello/v1/server.py",
        "-rw-r--r--",
    ),
    (
        "./usr/share/doc/bgd/examples/hello/v2/server.py",
        "-rw-r--r--",
    ),
];

/// What the package leaves on the machine, or finds there before: the test
/// refuses to run over any of it and removes it all at the end.
const STATE: &str = "/var/lib/bgd";
const CONFIG_DIR: &str = "/etc/bgd";

#[test]
fn the_package_installs_runs_under_systemd_and_purges_cleanly() {
    let skip = |why: String| {
        assert!(
            std::env::var_os("BGD_REQUIRE_DEB").is_none(),
            "BGD_REQUIRE_DEB is set, but: {why}"
        );
        eprintln!("skipped: cannot test the Debian package here: {why}");
    };
    if let Err(why) = can_install() {
        return skip(why);
    }
    // Held to the end: another run of this test on the machine (another
    // clone, another CI job) would install and purge the same package.
    let _one_at_a_time = MachineLock::take();
    if let Err(why) = machine_is_clean() {
        return skip(why);
    }
    let deb = build();
    check_contents(&deb);
    lintian(&deb);

    let stub = SystemctlStub::new();
    // Purges whatever the test installed when dropped, even when an
    // assertion fails half way (by then run_under_systemd's user manager
    // has stopped bgd@hello and exited).
    let _installed = Installed;
    let out = stub.apt(&["install", "-y", deb.to_str().unwrap()], "");
    assert!(out.status.success(), "apt-get install: {}", both(&out));
    assert_eq!(
        stub.calls(),
        "--system daemon-reload\n",
        "postinst reloads systemd and enables or starts nothing"
    );
    check_installed();
    // An upgrade (a reinstall, here) stops no instance; systemd reloads.
    let out = stub.apt(&["install", "--reinstall", "-y", deb.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "apt-get install --reinstall: {}",
        both(&out)
    );
    assert_eq!(stub.calls(), "--system daemon-reload\n");
    run_under_systemd();

    // remove: the instances are stopped, systemd reloaded; the conffile and
    // the state stay.
    std::fs::create_dir_all(Path::new(STATE).join("hello")).unwrap();
    std::fs::write(Path::new(STATE).join("hello/state.json"), "{}").unwrap();
    let out = stub.apt(&["remove", "-y", "bgd"], "");
    assert!(out.status.success(), "apt-get remove: {}", both(&out));
    assert_eq!(
        stub.calls(),
        "stop bgd@*.socket bgd@*.service\n--system daemon-reload\n",
        "prerm stops the instances, postrm reloads systemd"
    );
    for (file, _) in FILES.iter().filter(|(f, _)| !f.starts_with("./etc/")) {
        assert!(
            !Path::new(&file[1..]).exists(),
            "{file} is left after remove"
        );
    }
    assert!(Path::new("/etc/bgd/example.toml.sample").exists());
    assert_eq!(status(), "deinstall ok config-files");

    // purge, not interactive: the question's default keeps the state.
    let out = stub.apt(&["purge", "-y", "bgd"], "");
    assert!(out.status.success(), "apt-get purge: {}", both(&out));
    assert!(!Path::new(CONFIG_DIR).exists(), "purge removes /etc/bgd");
    assert!(Path::new(STATE).join("hello/state.json").exists());
    assert_eq!(status(), "");

    // purge, answered: the question is asked, and "yes" removes the state.
    let out = stub.apt(&["install", "-y", deb.to_str().unwrap()], "");
    assert!(out.status.success(), "apt-get install: {}", both(&out));
    let out = stub.apt(&["purge", "-y", "bgd"], "yes\n");
    assert!(out.status.success(), "apt-get purge: {}", both(&out));
    assert!(
        text(&out.stdout).contains("Remove all of bgd's state in /var/lib/bgd? [yes/no]"),
        "{}",
        both(&out)
    );
    assert!(!Path::new(STATE).exists(), "{}", both(&out));
    assert_eq!(status(), "");
}

/// The changelog the package ships names the version it is built as.
#[test]
fn the_package_changelog_names_this_version() {
    let changelog = std::fs::read_to_string(repo().join("packaging/deb/changelog")).unwrap();
    let first = changelog.lines().next().unwrap_or_default();
    let want = format!("bgd ({}-1) ", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&want),
        "packaging/deb/changelog begins {first:?}; add an entry for {want}"
    );
}

/// Why this machine cannot run the test, if it cannot.
fn can_install() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: it installs the package with apt-get".into());
    }
    let runs = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs("cargo", &["deb", "--version"]) {
        return Err("cargo-deb is missing (cargo install --locked cargo-deb)".into());
    }
    for tool in ["apt-get", "dpkg-deb", "lintian", "man", "unshare"] {
        if !runs(tool, &["--version"]) {
            return Err(format!("{tool} is missing"));
        }
    }
    Ok(())
}

/// Why the test would destroy something of this machine's, if it would.
fn machine_is_clean() -> Result<(), String> {
    if !status().is_empty() {
        return Err(format!("package bgd is on this machine ({})", status()));
    }
    for path in ["/usr/bin/bgd", "/usr/bin/bgctl", STATE, CONFIG_DIR] {
        if Path::new(path).exists() {
            return Err(format!(
                "{path} exists, and the test would replace or remove it"
            ));
        }
    }
    Ok(())
}

/// dpkg's status of package bgd: empty when it is not on the machine.
fn status() -> String {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "bgd"])
        .output()
        .unwrap();
    text(&out.stdout).trim().to_string()
}

fn build() -> PathBuf {
    let mut c = Command::new(repo().join("packaging/deb/build"));
    c.current_dir(repo());
    let out = run_with_deadline(c, Duration::from_secs(900));
    assert!(out.status.success(), "packaging/deb/build: {}", both(&out));
    let deb = text(&out.stdout)
        .lines()
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no .deb named in: {}", both(&out)));
    assert!(deb.is_file(), "{}", deb.display());
    deb
}

/// `dpkg-deb -c` lists exactly FILES (with their modes, owned by root),
/// and the packaged unit runs /usr/bin/bgd.
fn check_contents(deb: &Path) {
    let out = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success());
    let listing = text(&out.stdout);
    let mut files: Vec<(String, String)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(cols[1], "0/0", "owned by root: {l}");
            (cols[5].to_string(), cols[0].to_string())
        })
        .collect();
    files.sort();
    let mut want: Vec<(String, String)> = FILES
        .iter()
        .map(|(f, m)| (f.to_string(), m.to_string()))
        .collect();
    want.sort();
    assert_eq!(files, want, "dpkg-deb -c:\n{listing}");
    let control = Command::new("dpkg-deb")
        .arg("-I")
        .arg(deb)
        .output()
        .unwrap();
    let control = text(&control.stdout);
    assert!(
        control.contains("debconf (>= 0.5) | debconf-2.0"),
        "{control}"
    );
    for script in ["config", "postinst", "prerm", "postrm", "templates"] {
        assert!(
            control.contains(&format!(" {script} ")),
            "{script}: {control}"
        );
    }
}

/// lintian finds no error; its warnings are printed.
fn lintian(deb: &Path) {
    let out = Command::new("lintian").arg(deb).output().unwrap();
    let report = text(&out.stdout);
    eprintln!("lintian:\n{report}");
    assert!(
        !report.lines().any(|l| l.starts_with("E: ")) && out.status.success(),
        "lintian: {}",
        both(&out)
    );
}

/// What apt-get put where: binaries that name their commit, the man pages
/// rendered without a warning, completions that load, the state directory.
fn check_installed() {
    for bin in ["bgd", "bgctl"] {
        let out = Command::new(format!("/usr/bin/{bin}"))
            .arg("--version")
            .output()
            .unwrap();
        let v = text(&out.stdout);
        assert!(
            v.starts_with(&format!("{bin} {} (commit ", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
        let page = format!("/usr/share/man/man1/{bin}.1.gz");
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", &page])
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let rendered = text(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "man -l {page}: {}",
            both(&out)
        );
        for section in ["NAME", "SYNOPSIS", "EXIT STATUS", "SEE ALSO"] {
            assert!(
                rendered.contains(section),
                "{section} in {page}:\n{rendered}"
            );
        }
        let script = format!(". /usr/share/bash-completion/completions/{bin} && complete -p {bin}");
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        assert!(
            text(&out.stdout).contains(&format!("_{bin} ")),
            "bash completion for {bin}: {}",
            both(&out)
        );
    }
    let state = std::fs::metadata(STATE).unwrap();
    assert!(state.is_dir());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&state.permissions()) & 0o7777,
        0o755
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/bgd@.service").unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/bgd --config /etc/bgd/%i.toml\n"),
        "{unit}"
    );
}

/// The installed bgd@.service (with /usr/bin/bgd) and the installed example
/// config, adapted to the user manager (a temp root, a free port, a watched
/// directory in the temp dir), run the installed example app: a release
/// with the installed bgctl, then an auto-release from the watched directory.
fn run_under_systemd() {
    let m = match UserManager::start() {
        Ok(m) => m,
        Err(why) => panic!("the installed unit needs the systemd user manager: {why}"),
    };
    let dir = m.dir.path();
    // The app runs as nobody (the sample's app.user): it must reach its
    // color directory inside the temp dir.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap(); // the unit's ReadWritePaths=
    let watched = dir.join("build");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let sample = std::fs::read_to_string("/etc/bgd/example.toml.sample").unwrap();
    let config = dir.join("hello.toml");
    std::fs::write(
        &config,
        sample
            .replace("\"/var/lib/bgd/hello\"", &format!("{root:?}"))
            .replace("127.0.0.1:8080", &addr)
            .replace("\"/srv/hello/build\"", &format!("{watched:?}")),
    )
    .unwrap();
    let check = Command::new("/usr/bin/bgd")
        .args(["--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "bgd --check: {}", both(&check));

    let unit = std::fs::read_to_string("/lib/systemd/system/bgd@.service").unwrap();
    m.install_service(&unit, &config, &root);
    m.ok(&["daemon-reload"]);
    m.ok(&["start", "bgd@hello.service"]);
    assert_eq!(m.show("bgd@hello.service", "ActiveState"), "active");
    let pid = m.show("bgd@hello.service", "MainPID");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        Path::new("/usr/bin/bgd"),
        "the installed binary runs"
    );

    let examples = Path::new("/usr/share/doc/bgd/examples/hello");
    let mut release = Command::new("/usr/bin/bgctl");
    release
        .arg("-c")
        .arg(&config)
        .arg("release")
        .arg(examples.join("v1"));
    let out = run_with_deadline(release, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "bgctl release: {}\n{}",
        both(&out),
        m.log()
    );
    let body = get(&addr, "/").unwrap().1;
    assert!(body.starts_with("hello from v1"), "{body}");

    std::fs::create_dir_all(&watched).unwrap();
    std::fs::copy(examples.join("v2/server.py"), watched.join("server.py")).unwrap();
    let body = wait_until(
        "the watched build to go live",
        Duration::from_secs(30),
        || {
            get(&addr, "/")
                .ok()
                .map(|r| r.1)
                .filter(|b| b.starts_with("hello from v2"))
        },
    );
    assert!(body.contains("release=2"), "{body}");
    m.ok(&["stop", "bgd@hello.service"]);
}

/// apt-get in a mount namespace of its own where systemd looks like it
/// runs (a /run/systemd/system) and `systemctl` is a stub that records its
/// arguments, so the maintainer scripts' calls can be checked without a
/// system manager; policy-rc.d allows them there.
struct SystemctlStub {
    dir: tempfile::TempDir,
}

impl SystemctlStub {
    fn new() -> SystemctlStub {
        let dir = tempfile::Builder::new()
            .prefix("bgd-deb-")
            .tempdir()
            .unwrap();
        let write = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        let calls = dir.path().join("calls");
        write(
            "systemctl",
            &format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display()),
        );
        write("policy-rc.d", "#!/bin/sh\nexit 0\n");
        SystemctlStub { dir }
    }

    /// The calls since the last look.
    fn calls(&self) -> String {
        let path = self.dir.path().join("calls");
        let calls = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(path);
        calls
    }

    /// `apt-get ARGS` with `answers` on stdin: non-interactive when there
    /// are none, else debconf's teletype frontend reads them.
    fn apt(&self, args: &[&str], answers: &str) -> Output {
        let d = self.dir.path().display();
        let mut setup = format!(
            "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && mount --bind {d}/systemctl /usr/bin/systemctl"
        );
        if Path::new("/usr/sbin/policy-rc.d").exists() {
            setup += &format!(" && mount --bind {d}/policy-rc.d /usr/sbin/policy-rc.d");
        }
        std::fs::write(self.dir.path().join("answers"), answers).unwrap();
        let mut c = Command::new("unshare");
        // Other apt-get runs on the machine may hold dpkg's lock a while.
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "{setup} && exec apt-get -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300 \"$@\" < {d}/answers"
            ))
            .arg("sh")
            .args(args)
            .env(
                "DEBIAN_FRONTEND",
                if answers.is_empty() {
                    "noninteractive"
                } else {
                    "teletype"
                },
            );
        run_with_deadline(c, Duration::from_secs(300))
    }
}

/// An exclusive lock on a file in /run/lock, for one run of the package
/// test per machine; the kernel drops it when the file closes, so a killed
/// test cannot leave it held.
struct MachineLock {
    /// Open for the lock's life: closing it releases the lock.
    _file: std::fs::File,
}

impl MachineLock {
    fn take() -> MachineLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/lock/bgd-deb-test.lock")
            .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        wait_until(
            "another run of the package test on this machine to finish",
            Duration::from_secs(900),
            // SAFETY: flock(2) on an fd this function owns.
            || (unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0).then_some(()),
        );
        MachineLock { _file: file }
    }
}

/// Purges the package and removes /var/lib/bgd when dropped (the test
/// checked that neither was there before it began).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if !status().is_empty() {
            let out = Command::new("apt-get")
                .args(["-o", "DPkg::Lock::Timeout=300", "purge", "-y", "bgd"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .output();
            if let Ok(out) = out {
                if !out.status.success() {
                    eprintln!("cleanup: apt-get purge bgd: {}", both(&out));
                }
            }
        }
        let _ = std::fs::remove_dir_all(STATE);
        let _ = std::fs::remove_dir_all(CONFIG_DIR);
    }
}

fn both(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
