//! A real `bgd` in a temp dir, driven by the real `bgctl`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BGD: &str = env!("CARGO_BIN_EXE_bgd");
pub const BGCTL: &str = env!("CARGO_BIN_EXE_bgctl");

/// The interpreter for the example and fixture apps. Not a version
/// manager's shim: those fork, so the app's pid would differ from LISTEN_PID.
pub fn python() -> &'static str {
    for p in ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("the tests need python3 at /usr/bin/python3 (apt-get install python3)")
}

/// The repository's root, for `examples/`.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
pub fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut every = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(every); // poll interval of a deadline-bounded wait
        every = (every * 2).min(Duration::from_millis(100));
    }
}

/// `Setup::tail` for a test about the old color's drain itself: without
/// the standby that `traffic.standby` keeps by default (30 s), the old
/// color drains right after the swap, as a release with `standby = "0s"`.
pub const NO_STANDBY: &str = "\n[traffic]\nstandby = \"0s\"\n";

/// Settings a test varies; the rest of the config is fixed.
#[derive(Clone)]
pub struct Setup {
    pub command: String,
    pub health: String,
    pub drain_timeout: &'static str,
    /// `app.drain_delay`: how long the old color may keep connections
    /// after a swap before its stop signal (1 s here, to keep tests short).
    pub drain_delay: &'static str,
    pub stop_signal: &'static str,
    /// The address of the `[[listen]]` named `http`.
    pub http_address: &'static str,
    /// Extra keys of the `http` entry (`backlog = 8`, say).
    pub http_extra: &'static str,
    /// Extra `[[listen]]` tables, after the TCP one named `http`.
    pub extra_listen: String,
    /// Extra top-level keys.
    pub top: String,
    /// Extra `[app]` keys.
    pub app: String,
    /// Run bgd as this uid (through setpriv); `None` runs it as the test's user.
    pub uid: Option<u32>,
    /// bgd's root; `None` puts it in the temp dir.
    pub root: Option<PathBuf>,
    /// Appended to the config (a `[watch]` section, say).
    pub tail: String,
    /// Environment for bgd itself (`BGD_NO_CGROUP`, say).
    pub bgd_env: Vec<(String, String)>,
    /// Run this bgd binary instead of the one built (a copy, to replace).
    pub bgd_bin: Option<PathBuf>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            command: format!("[\"{}\", \"server.py\"]", python()),
            health: "http = \"/healthz\"\ntimeout = \"20s\"".into(),
            drain_timeout: "10s",
            drain_delay: "1s",
            stop_signal: "SIGTERM",
            http_address: "127.0.0.1:0",
            http_extra: "",
            extra_listen: String::new(),
            top: String::new(),
            app: "allow_root = true".into(),
            uid: None,
            root: None,
            tail: String::new(),
            bgd_env: Vec::new(),
            bgd_bin: None,
        }
    }
}

pub struct Bgd {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    uid: Option<u32>,
    root: PathBuf,
    /// The control socket.
    socket: PathBuf,
    /// bgd's own environment additions.
    env: Vec<(String, String)>,
    bin: Option<PathBuf>,
}

impl Bgd {
    /// Writes a config into a fresh temp dir and starts bgd on it.
    pub fn start(setup: Setup) -> Bgd {
        Self::start_after(setup, |_| {})
    }

    /// Like [`start`](Self::start), running `prepare` on the temp dir first.
    pub fn start_after(setup: Setup, prepare: impl FnOnce(&Path)) -> Bgd {
        let dir = tempfile::Builder::new()
            .prefix("bgd-test-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("bgd.toml");
        std::fs::write(
            &config,
            format!(
                r#"
name = "test"
root = "{root}"
control = "ctl.sock"
{top}

[[listen]]
name = "http"
address = "{http_address}"
{http_extra}
{extra}
[app]
command = {command}
stop_signal = "{sig}"
drain_timeout = "{drain}"
drain_delay = "{delay}"
env = {{ PYTHONUNBUFFERED = "1" }}
{app}

[health]
{health}
{tail}
"#,
                root = setup
                    .root
                    .clone()
                    .unwrap_or_else(|| dir.path().join("root"))
                    .display(),
                top = setup.top,
                app = setup.app,
                extra = setup.extra_listen,
                http_address = setup.http_address,
                http_extra = setup.http_extra,
                command = setup.command,
                sig = setup.stop_signal,
                drain = setup.drain_timeout,
                delay = setup.drain_delay,
                health = setup.health,
                tail = setup.tail,
            ),
        )
        .unwrap();
        let mut bgd = Bgd {
            root: setup.root.unwrap_or_else(|| dir.path().join("root")),
            log: dir.path().join("bgd.log"),
            dir,
            config,
            child: None,
            uid: setup.uid,
            socket: PathBuf::new(),
            env: setup.bgd_env,
            bin: setup.bgd_bin,
        };
        bgd.socket = bgd.dir.path().join("ctl.sock");
        if let Some(uid) = setup.uid {
            // bgd must be able to create its root and log in the temp dir.
            std::os::unix::fs::chown(bgd.dir.path(), Some(uid), None).unwrap();
            std::os::unix::fs::chown(&bgd.log, Some(uid), None).ok();
        }
        prepare(bgd.dir.path());
        bgd.spawn(|_| {});
        bgd
    }

    /// Starts bgd on a config already in `dir` whose root and control
    /// socket are the defaults (`root`, `root/bgd.sock`); `tweak` adjusts
    /// the command.
    pub fn start_config(
        dir: tempfile::TempDir,
        config: PathBuf,
        root: PathBuf,
        tweak: impl FnOnce(&mut Command),
    ) -> Bgd {
        let mut bgd = Bgd {
            log: dir.path().join("bgd.log"),
            socket: root.join("bgd.sock"),
            dir,
            config,
            child: None,
            uid: None,
            root,
            env: Vec::new(),
            bin: None,
        };
        bgd.spawn(tweak);
        bgd
    }

    /// Starts bgd (again) on the same config; `tweak` adjusts the command.
    pub fn spawn(&mut self, tweak: impl FnOnce(&mut Command)) {
        assert!(self.child.is_none(), "bgd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match self.uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(BGD);
                c
            }
            None => Command::new(self.bin.as_deref().unwrap_or(Path::new(BGD))),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .env("BGD_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        tweak(&mut cmd);
        self.child = Some(cmd.spawn().unwrap());
        wait_until("bgd's control socket", Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("bgd exited at start ({status}):\n{}", self.log());
            }
            std::os::unix::net::UnixStream::connect(self.socket()).ok()
        });
    }

    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }

    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs bgctl against this bgd; panics if it takes over two minutes.
    pub fn bgctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BGCTL);
        cmd.arg("--socket").arg(self.socket()).args(args);
        run_with_deadline(cmd, Duration::from_secs(120))
    }

    /// `bgctl release DIR`, asserting success.
    pub fn release(&self, dir: &Path) -> Output {
        let out = self.bgctl(&["release", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "release of {} failed: {}\n{}\nbgd log:\n{}",
            dir.display(),
            text(&out.stderr),
            text(&out.stdout),
            self.log()
        );
        out
    }

    /// `bgctl release DIR` on a thread, for a release that overlaps with
    /// what the test does next.
    pub fn release_in_background(&self, dir: &Path) -> std::thread::JoinHandle<Output> {
        let mut cmd = Command::new(BGCTL);
        cmd.arg("--socket")
            .arg(self.socket())
            .arg("release")
            .arg(dir);
        std::thread::spawn(move || run_with_deadline(cmd, Duration::from_secs(60)))
    }

    /// Waits until the release in progress has reached `step`.
    pub fn wait_step(&self, step: &str) {
        wait_until(
            &format!("the release to reach {step}"),
            Duration::from_secs(20),
            || (self.status()["release_in_progress"]["step"] == step).then_some(()),
        );
    }

    /// Starts bgd again on the port it had (the config binds port 0).
    pub fn respawn_on(&mut self, addr: &str) {
        let config = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace("127.0.0.1:0", addr);
        std::fs::write(&self.config, config).unwrap();
        self.spawn(|_| {});
    }

    pub fn status(&self) -> Value {
        let out = self.bgctl(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The TCP address of the `http` socket (configured as port 0).
    pub fn addr(&self) -> String {
        self.status()["listen"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Sends `sig` to bgd and waits for it to exit; returns its exit code.
    /// bgd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("bgd runs").id()
    }

    pub fn stop(&mut self, sig: i32) -> Option<i32> {
        let mut child = self.child.take().expect("bgd runs");
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = wait_until("bgd to exit", Duration::from_secs(30), || {
            child.try_wait().unwrap()
        });
        status.code()
    }
}

impl Drop for Bgd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the process group of a child we spawned.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        // The app outlives bgd (issue 13), and so does its relay once the
        // app holds its pipes: stop both, so no test leaves them running.
        for pid in app_processes(&self.root, None)
            .into_iter()
            .chain(relays(&self.root))
        {
            // SAFETY: kill(2) on a process that carries this test's root.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if std::thread::panicking() {
            eprintln!("--- bgd log ({}) ---\n{}", self.log.display(), self.log());
        }
    }
}

/// Runs `cmd` to completion, killing it and panicking at the deadline.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + deadline;
    let status = wait_until(
        &format!("{cmd:?} to finish"),
        deadline + Duration::from_secs(1),
        || {
            if Instant::now() > end {
                let _ = child.kill();
            }
            child.try_wait().unwrap()
        },
    );
    let read = |mut f: std::fs::File| {
        use std::io::Seek;
        let mut v = Vec::new();
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output {
        status,
        stdout: read(out),
        stderr: read(err),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One GET over a new connection; returns (status, body).
pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    get_within(addr, path, Duration::from_secs(10))
}

/// One GET over a new connection that gives up (and closes it, as a client
/// that stops waiting does) after `wait` to connect and again to answer.
pub fn get_within(addr: &str, path: &str, wait: Duration) -> std::io::Result<(u16, String)> {
    let mut s = match addr.parse::<std::net::SocketAddr>() {
        Ok(to) => TcpStream::connect_timeout(&to, wait)?,
        Err(_) => TcpStream::connect(addr)?, // a host name
    };
    s.set_read_timeout(Some(wait))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The `release=N` the example app puts in its body.
pub fn release_of(body: &str) -> Option<u64> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("release="))
        .and_then(|r| r.parse().ok())
}

/// Copies the example app into `dir/name` with its version set to `version`.
pub fn example_build(dir: &Path, name: &str, version: &str) -> PathBuf {
    let build = dir.join(name);
    std::fs::create_dir_all(&build).unwrap();
    let src = std::fs::read_to_string(repo().join("examples/hello/v1/server.py")).unwrap();
    let src = src.replace("VERSION = \"v1\"", &format!("VERSION = \"{version}\""));
    std::fs::write(build.join("server.py"), src).unwrap();
    build
}

/// A build whose `server.py` runs `prelude` (Python) and then the example
/// server, in the same process: a slow start, a writer thread, a crash timer.
pub fn wrapped_build(dir: &Path, name: &str, version: &str, prelude: &str) -> PathBuf {
    let build = example_build(dir, name, version);
    std::fs::rename(build.join("server.py"), build.join("real_server.py")).unwrap();
    std::fs::write(
        build.join("server.py"),
        format!("{prelude}\nexec(open(\"real_server.py\").read())\n"),
    )
    .unwrap();
    build
}

/// A build holding one Python file `server.py` with `code`.
pub fn script_build(dir: &Path, name: &str, code: &str) -> PathBuf {
    let build = dir.join(name);
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(build.join("server.py"), code).unwrap();
    build
}

/// Whether a process exists (zombies count: they are not reaped yet).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids of the relays of `root`'s colors (`bgd __bgd_relay`, with its
/// `BGD_RELAY_SOCKET` under `root/run`).
pub fn relays(root: &Path) -> Vec<i32> {
    let want = format!("BGD_RELAY_SOCKET={}/", root.join("run").display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if env
            .split(|b| *b == 0)
            .any(|v| v.starts_with(want.as_bytes()))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of processes whose environment has `BG_ROOT=root` (and
/// `BG_COLOR=color`, if given): the app's, however they forked.
pub fn app_processes(root: &Path, color: Option<&str>) -> Vec<i32> {
    let want_root = format!("BG_ROOT={}", root.display());
    let want_color = color.map(|c| format!("BG_COLOR={c}"));
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
        let has = |v: &str| vars.contains(&v.as_bytes());
        if has(&want_root) && want_color.as_deref().is_none_or(has) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether a process runs: it exists and is not a zombie (an adopted
/// process's zombie waits for whoever inherited it, maybe forever).
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Whether the tests run as root (tmpfs mounts, files of other users).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts a tmpfs of `size` at `dir`; `None` (and why, printed) if this
/// host cannot. Unmounted when the guard drops.
pub fn tmpfs(dir: &Path, size: &str) -> Option<impl Drop> {
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs here");
        return None;
    }
    Some(Unmount(dir.to_path_buf()))
}
