//! The shipped units under a real systemd: a private user manager in its
//! own mount namespace (`unshare -m`, a tmpfs on /run/systemd). Tests that
//! cannot start one say why and skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::harness::*;
use crate::load::Load;

/// A `systemd --user` of the test's own, with its runtime and config dirs
/// in a temp dir.
pub(crate) struct UserManager {
    pub(crate) dir: tempfile::TempDir,
    manager: Child,
    /// Held for the manager's life: user managers of one uid share cgroup
    /// paths here, so one manager's KillMode= could reach another's units.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_MANAGER: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl UserManager {
    pub(crate) fn start() -> Result<UserManager, String> {
        let guard = ONE_MANAGER.lock().unwrap_or_else(|e| e.into_inner());
        if !Path::new("/lib/systemd/systemd").exists() {
            return Err("/lib/systemd/systemd is not installed (apt-get install systemd)".into());
        }
        let dir = tempfile::Builder::new()
            .prefix("bgd-systemd-")
            .tempdir()
            .unwrap();
        let runtime = dir.path().join("run");
        std::fs::create_dir(&runtime).unwrap();
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("config/systemd/user")).unwrap();
        let log = std::fs::File::create(dir.path().join("manager.log")).unwrap();
        let manager = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && exec env --default-signal /lib/systemd/systemd --user")
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run unshare: {e}"))?;
        let mut m = UserManager {
            dir,
            manager,
            _one_at_a_time: guard,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = m.manager.try_wait() {
                let log =
                    std::fs::read_to_string(m.dir.path().join("manager.log")).unwrap_or_default();
                return Err(format!("the user manager exited ({status}); it needs root for unshare -m and mount: {}", log.trim()));
            }
            // (is-system-running says "offline" outside the manager's mount
            // namespace; the manager's own SystemState is what counts.)
            let out = m.systemctl(&["show", "-p", "SystemState", "--value"]);
            let state = text(&out.stdout);
            if state.contains("running") || state.contains("degraded") {
                return Ok(m);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "the user manager did not come up: {}",
                    state.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(50)); // poll interval of a deadline-bounded wait
        }
    }

    pub(crate) fn systemctl(&self, args: &[&str]) -> Output {
        let mut c = Command::new("systemctl");
        c.arg("--user")
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"));
        run_with_deadline(c, Duration::from_secs(120))
    }

    pub(crate) fn ok(&self, args: &[&str]) {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl --user {args:?}: {}{}\nbgd log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
    }

    pub(crate) fn show(&self, unit: &str, prop: &str) -> String {
        text(
            &self
                .systemctl(&["show", "-p", prop, "--value", unit])
                .stdout,
        )
        .trim()
        .to_string()
    }

    fn units(&self) -> PathBuf {
        self.dir.path().join("config/systemd/user")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bgd.log")).unwrap_or_default()
    }

    /// Installs the shipped units, adapted to a user manager in a temp dir:
    /// the built binary, the test's config and root, output to a file (there
    /// is no journald), and without what this sandbox cannot apply.
    fn install(&self, config: &Path, root: &Path, socket: Option<&str>, drop_in: &str) {
        let service = std::fs::read_to_string(repo().join("systemd/bgd@.service")).unwrap();
        let service = service.replace("ExecStart=/usr/bin/bgd ", &format!("ExecStart={BGD} "));
        self.install_service(&service, config, root);
        if let Some(listen) = socket {
            let unit = std::fs::read_to_string(repo().join("systemd/bgd@.socket"))
                .unwrap()
                .replace("127.0.0.1:8080", listen);
            std::fs::write(self.units().join("bgd@.socket"), unit).unwrap();
        }
        if !drop_in.is_empty() {
            let d = self.units().join("bgd@test.service.d");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("test.conf"), drop_in).unwrap();
        }
        self.ok(&["daemon-reload"]);
    }

    /// Installs `service` (the text of a bgd@.service; its ExecStart= binary
    /// is kept) for this user manager: the test's config and root for every
    /// instance, output to a file, and without what this sandbox cannot
    /// apply. The caller runs daemon-reload.
    pub(crate) fn install_service(&self, service: &str, config: &Path, root: &Path) {
        let log = self.dir.path().join("bgd.log");
        let service: String = service
            .replace("/etc/bgd/%i.toml", config.to_str().unwrap())
            .replace("/var/lib/bgd/%i", root.to_str().unwrap())
            .replace("WantedBy=multi-user.target", "WantedBy=default.target")
            .replace(
                "Environment=BGD_LOG=info",
                &format!(
                    "Environment=BGD_LOG=debug\nStandardOutput=append:{}\nStandardError=append:{}",
                    log.display(),
                    log.display()
                ),
            )
            .lines()
            // StateDirectory= means ~/.config/... for a user manager; the
            // root is in the temp dir instead. PrivateTmp= would hide that
            // temp dir, and this sandbox's user manager cannot mount the
            // kernel-tunables and kernel-log protections (226/NAMESPACE).
            .filter(|l| {
                ![
                    "StateDirectory=",
                    "PrivateTmp=",
                    "ProtectKernelTunables=",
                    "ProtectKernelLogs=",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(self.units().join("bgd@.service"), service).unwrap();
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let _ = self.systemctl(&["stop", "bgd@*.service", "bgd@*.socket"]);
        let _ = self.manager.kill();
        let _ = self.manager.wait();
        if std::thread::panicking() {
            eprintln!("--- bgd log ---\n{}", self.log());
        }
    }
}

fn config(dir: &Path, address: &str, command: &str) -> (PathBuf, PathBuf) {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let config = dir.join("test.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"test\"\nroot = \"{}\"\n[[listen]]\nname = \"http\"\naddress = \"{address}\"\n[app]\ncommand = {command}\nenv = {{ PYTHONUNBUFFERED = \"1\" }}\nallow_root = true\ndrain_timeout = \"10s\"\n[health]\nhttp = \"/healthz\"\ntimeout = \"20s\"\n",
            root.display()
        ),
    )
    .unwrap();
    (config, root)
}

fn bgctl(root: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(BGCTL);
    c.arg("--socket").arg(root.join("bgd.sock")).args(args);
    run_with_deadline(c, Duration::from_secs(120))
}

fn release(m: &UserManager, root: &Path, dir: &Path) {
    let out = bgctl(root, &["release", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), m.log());
}

fn status(root: &Path) -> serde_json::Value {
    let out = bgctl(root, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

macro_rules! manager_or_skip {
    () => {
        match UserManager::start() {
            Ok(m) => m,
            Err(why) => {
                // CI sets BGD_REQUIRE_SYSTEMD: there these tests must run.
                assert!(
                    std::env::var_os("BGD_REQUIRE_SYSTEMD").is_none(),
                    "BGD_REQUIRE_SYSTEMD is set, but: {why}"
                );
                eprintln!("skipped: cannot run a systemd user manager here: {why}");
                return;
            }
        }
    };
}

#[test]
fn shipped_units_verify_cleanly() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify wants the binaries and the units the shipped ones name, so it
    // runs against a small root that has them.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["usr/bin", "bin", "etc/systemd/system", "usr/lib/systemd"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    std::fs::copy(BGD, r.join("usr/bin/bgd")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    for u in ["bgd@.service", "bgd@.socket"] {
        std::fs::copy(
            repo().join("systemd").join(u),
            r.join("etc/systemd/system").join(u),
        )
        .unwrap();
    }
    let cp = Command::new("cp")
        .arg("-r")
        .arg("/usr/lib/systemd/system")
        .arg(r.join("usr/lib/systemd"))
        .status()
        .unwrap();
    assert!(cp.success());
    // verify also runs `man` on each Documentation= page: the ones the
    // binaries print (and the Debian package installs).
    let man1 = r.join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    for (bin, args) in [(BGD, &["--man"][..]), (BGCTL, &["man"][..])] {
        let page = Command::new(bin).args(args).output().unwrap();
        assert!(page.status.success());
        let name = Path::new(bin).file_name().unwrap().to_str().unwrap();
        std::fs::write(man1.join(format!("{name}.1")), page.stdout).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args(["bgd@hello.service", "bgd@hello.socket"])
        .env("MANPATH", r.join("man"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        text(&out.stderr)
    );
}

/// Socket activation hands bgd its named socket; a Type=notify start reaches
/// active; a release works; `systemctl restart` under load refuses nothing;
/// `systemctl reload` applies the new command and says what needs a restart.
#[test]
fn socket_activation_restart_and_reload_under_systemd() {
    let m = manager_or_skip!();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (cfg, root) = config(
        m.dir.path(),
        &addr,
        &format!("[\"{}\", \"server.py\"]", python()),
    );
    m.install(&cfg, &root, Some(&addr), "");
    m.ok(&["start", "bgd@test.socket"]);
    // Nothing served yet: connecting activates the service, which has no color.
    m.ok(&["start", "bgd@test.service"]);
    assert_eq!(m.show("bgd@test.service", "ActiveState"), "active");
    assert!(
        m.log().contains("took [[listen]] \"http\" (127.0.0.1:")
            && m.log().contains("from systemd"),
        "{}",
        m.log()
    );

    let build = example_build(m.dir.path(), "b1", "v1");
    std::fs::copy(
        repo().join("examples/hello/v2/server.py"),
        build.join("server2.py"),
    )
    .unwrap();
    release(&m, &root, &build);
    assert!(get(&addr, "/").unwrap().1.starts_with("hello from v1"));
    let status_line = m.show("bgd@test.service", "StatusText");
    assert!(
        status_line.starts_with("live blue release 1 pid "),
        "STATUS=: {status_line}"
    );

    restart_under_load(&m, &root, &addr);

    // Reload: a new command applies to the next release; a new address
    // cannot apply without a restart, and bgd says so.
    let new = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"server.py\"]", "\"server2.py\"]")
        .replace(&addr, "127.0.0.1:1");
    std::fs::write(&cfg, new).unwrap();
    m.ok(&["reload", "bgd@test.service"]);
    wait_until("the reload to be done", Duration::from_secs(20), || {
        let st = status(&root);
        st["last_result"]
            .as_str()
            .is_some_and(|r| r.contains("config reloaded"))
            .then_some(st)
    });
    let st = status(&root);
    assert!(
        st["last_result"]
            .as_str()
            .unwrap()
            .contains("[[listen]] need a restart"),
        "{st}"
    );
    assert_eq!(m.show("bgd@test.service", "ActiveState"), "active");
    release(&m, &root, &build);
    assert!(
        get(&addr, "/").unwrap().1.starts_with("hello from v2"),
        "the reloaded command runs"
    );
    // That release drained the old color: the unit lets bgd ask the kernel
    // for its connections (sock_diag needs AF_NETLINK).
    assert!(m.log().contains("draining"), "{}", m.log());
    assert!(
        !m.log().contains("cannot list the kernel's TCP connections"),
        "{}",
        m.log()
    );
}

/// Without a socket unit, bgd binds the port itself and keeps it in the fd
/// store: `systemctl restart` under load still refuses nothing.
#[test]
fn the_fd_store_keeps_the_port_across_restarts() {
    let m = manager_or_skip!();
    let (cfg, root) = config(
        m.dir.path(),
        "127.0.0.1:0",
        &format!("[\"{}\", \"server.py\"]", python()),
    );
    m.install(&cfg, &root, None, "");
    m.ok(&["start", "bgd@test.service"]);
    // A failed first release must not close the stored socket for good.
    let crash = script_build(m.dir.path(), "crash", "import sys\nsys.exit(3)\n");
    assert_eq!(
        bgctl(&root, &["release", crash.to_str().unwrap()])
            .status
            .code(),
        Some(1)
    );
    release(&m, &root, &example_build(m.dir.path(), "b1", "v1"));
    let addr = status(&root)["listen"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    restart_under_load(&m, &root, &addr);
    assert!(
        m.log().contains("took [[listen]] \"http\""),
        "the socket came back from the fd store: {}",
        m.log()
    );
    assert_eq!(status(&root)["listen"][0]["address"], addr.as_str());
}

/// `kill -9` of bgd's main pid under the real user manager, under load:
/// the app keeps serving, the unit restarts bgd, bgd adopts the app (same
/// pid, nothing started twice), and not one request fails; a release
/// afterwards works, and `systemctl stop` leaves no process of either color.
#[test]
fn kill_9_of_bgd_under_systemd_loses_no_request() {
    let m = manager_or_skip!();
    let (cfg, root) = config(
        m.dir.path(),
        "127.0.0.1:0",
        &format!("[\"{}\", \"server.py\"]", python()),
    );
    m.install(&cfg, &root, None, "");
    m.ok(&["start", "bgd@test.service"]);
    release(&m, &root, &example_build(m.dir.path(), "b1", "v1"));
    let addr = status(&root)["listen"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let app = status(&root)["blue"]["pid"].as_u64().unwrap();
    let load = Load::start(&addr, 2, 2);
    wait_until("load", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });
    let pid: i32 = m.show("bgd@test.service", "MainPID").parse().unwrap();
    // SAFETY: kill(2) on bgd's pid.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until("systemd to restart bgd", Duration::from_secs(60), || {
        let p: i32 = m.show("bgd@test.service", "MainPID").parse().unwrap_or(0);
        (p != 0 && p != pid && m.show("bgd@test.service", "ActiveState") == "active").then_some(p)
    });
    let st = wait_until("the adopted color", Duration::from_secs(20), || {
        let st = status(&root);
        (st["blue"]["state"] == "live").then_some(st)
    });
    assert_eq!(
        st["blue"]["pid"].as_u64(),
        Some(app),
        "not adopted: {st}\n{}",
        m.log()
    );
    assert!(
        m.log().contains("adopted the live color blue"),
        "{}",
        m.log()
    );
    // As root, the unit's delegated cgroup holds the colors.
    if nix::unistd::geteuid().is_root() {
        let c = st["containment"].as_str().unwrap();
        assert!(
            c.starts_with("cgroup ") && c.contains("bgd@test.service"),
            "{c}"
        );
    }
    let before = load.count();
    wait_until(
        "requests after the restart",
        Duration::from_secs(10),
        || (load.count() > before + 20).then_some(()),
    );
    release(&m, &root, &example_build(m.dir.path(), "b2", "v2"));
    load.finish_clean();
    m.ok(&["stop", "bgd@test.service"]);
    let left = crate::harness::app_processes(&root, None);
    assert!(left.is_empty(), "left after systemctl stop: {left:?}");
}

/// A wedged bgd (SIGSTOP) stops pinging; the watchdog restarts it and the
/// app comes back. `WatchdogSec=5` (the unit ships 30 s): 2 s fired on a
/// busy machine while bgd wrote its state (an fsync on its loop).
#[test]
fn the_watchdog_restarts_a_wedged_bgd() {
    let m = manager_or_skip!();
    let (cfg, root) = config(
        m.dir.path(),
        "127.0.0.1:0",
        &format!("[\"{}\", \"server.py\"]", python()),
    );
    m.install(
        &cfg,
        &root,
        None,
        "[Service]\nWatchdogSec=5\nTimeoutAbortSec=2\n",
    );
    m.ok(&["start", "bgd@test.service"]);
    release(&m, &root, &example_build(m.dir.path(), "b1", "v1"));
    let pid: i32 = m.show("bgd@test.service", "MainPID").parse().unwrap();
    // SAFETY: kill(2) on bgd's pid.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let new = wait_until("systemd to restart bgd", Duration::from_secs(60), || {
        let p: i32 = m.show("bgd@test.service", "MainPID").parse().unwrap_or(0);
        (p != 0 && p != pid && m.show("bgd@test.service", "ActiveState") == "active").then_some(p)
    });
    assert_ne!(new, pid);
    let addr = status(&root)["listen"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let body = wait_until("the app to serve again", Duration::from_secs(30), || {
        get(&addr, "/").ok().map(|r| r.1)
    });
    assert!(body.starts_with("hello from v1"), "{body}");
    assert!(
        m.show("bgd@test.service", "NRestarts")
            .parse::<u32>()
            .unwrap()
            >= 1
    );
}

/// `systemctl restart` of bgd while 2 keep-alive and 2 new-connection
/// clients run: a new bgd serves the live color again, and not one request
/// failed, before, during or after.
fn restart_under_load(m: &UserManager, root: &Path, addr: &str) {
    let load = Load::start(addr, 2, 2);
    wait_until("load", Duration::from_secs(10), || {
        (load.count() > 20).then_some(())
    });
    let pid = m.show("bgd@test.service", "MainPID");
    m.ok(&["restart", "bgd@test.service"]);
    wait_until("the new bgd to serve", Duration::from_secs(30), || {
        (m.show("bgd@test.service", "ActiveState") == "active"
            && status(root)["blue"]["state"] == "live")
            .then_some(())
    });
    assert_ne!(m.show("bgd@test.service", "MainPID"), pid);
    let before = load.count();
    wait_until(
        "requests after the restart",
        Duration::from_secs(10),
        || (load.count() > before + 20).then_some(()),
    );
    load.finish_clean();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// In gate mode bgd binds the other color's socket beside the socket
/// unit's, which needs `ReusePort=yes` there: without it, bgd refuses to
/// start and says what to change, rather than run without the gate.
#[test]
fn a_socket_unit_without_reuseport_is_refused_in_gate_mode() {
    let m = manager_or_skip!();
    let addr = format!("127.0.0.1:{}", free_port());
    let (cfg, root) = config(
        m.dir.path(),
        &addr,
        &format!("[\"{}\", \"server.py\"]", python()),
    );
    m.install(&cfg, &root, Some(&addr), "");
    let unit = m.units().join("bgd@.socket");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("ReusePort=yes"), "the shipped unit sets it");
    std::fs::write(&unit, text.replace("ReusePort=yes", "")).unwrap();
    m.ok(&["daemon-reload"]);
    m.ok(&["start", "bgd@test.socket"]);
    let out = m.systemctl(&["start", "bgd@test.service"]);
    assert!(!out.status.success(), "bgd started without the gate");
    let log = m.log();
    assert!(
        log.contains("has no SO_REUSEPORT") && log.contains("add ReusePort=yes to the socket unit"),
        "{log}"
    );
}

/// A pause (issue 24) survives `systemctl restart`: the fd store keeps the
/// sockets and the connection waiting in one, the new bgd is still paused,
/// and the release serves the client that waited across the restart.
#[test]
fn a_pause_survives_systemctl_restart() {
    let m = manager_or_skip!();
    let (cfg, root) = config(
        m.dir.path(),
        "127.0.0.1:0",
        &format!("[\"{}\", \"server.py\"]", python()),
    );
    m.install(&cfg, &root, None, "");
    m.ok(&["start", "bgd@test.service"]);
    release(&m, &root, &example_build(m.dir.path(), "b1", "v1"));
    let addr = status(&root)["listen"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let out = bgctl(&root, &["pause"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let waiting = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).map(|_| resp)
    });
    wait_until("a client waiting", Duration::from_secs(20), || {
        (status(&root)["paused"]["waiting"] == 1).then_some(())
    });
    m.ok(&["restart", "bgd@test.service"]);
    let p = wait_until("the restarted bgd, paused", Duration::from_secs(30), || {
        let p = status(&root)["paused"].clone();
        (!p.is_null()).then_some(p)
    });
    assert_eq!(p["waiting"], 1, "{p}\n{}", m.log());
    let line = wait_until("STATUS= to say so", Duration::from_secs(20), || {
        let s = m.show("bgd@test.service", "StatusText");
        s.contains("paused since").then_some(s)
    });
    assert!(line.contains("1 waiting on green"), "{line}");
    release(&m, &root, &example_build(m.dir.path(), "b2", "v2"));
    let resp = waiting
        .join()
        .unwrap()
        .expect("the waiting client is answered");
    assert_eq!(release_of(&resp), Some(2), "{resp}");
}
