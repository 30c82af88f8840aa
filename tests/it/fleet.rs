//! The Ansible fleet example (`examples/fleet`): `release.yml` and the
//! `bgd_release` module, over real ssh, against hosts that are network
//! namespaces on this machine, each with its own sshd and bgd.
//!
//! Topology: a controller namespace `ctl` holds one end of a veth pair per
//! host (10.77.N.1); host N's namespace holds the other end (10.77.N.2),
//! with sshd on port 22 and bgd's app on port 8080. Neither side has any
//! other route, so the play's traffic can reach the hosts' addresses and
//! nothing else. The namespaces share the file system, so bgd's control
//! socket and logs are plain paths in the test's temp dir.
//!
//! Needs root, `ip`, `/usr/sbin/sshd` and `ansible-playbook` on PATH
//! (`.ci/run` installs ansible-core with pip); skips without them unless
//! `BGD_REQUIRE_ANSIBLE` is set.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    example_build, python, repo, run_with_deadline, text, wait_until, wrapped_build, BGCTL, BGD,
};

/// How long one ansible-playbook run may take before the test fails.
const PLAY_DEADLINE: Duration = Duration::from_secs(180);

/// Why the fleet cannot be set up here, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: it creates network namespaces".into());
    }
    if !Path::new("/usr/sbin/sshd").exists() {
        return Some("/usr/sbin/sshd is missing (apt-get install openssh-server)".into());
    }
    for tool in [
        "ansible-playbook",
        "ansible-doc",
        "ssh",
        "ssh-keygen",
        "ip",
        "curl",
    ] {
        if which(tool).is_none() {
            return Some(format!(
                "{tool} is not on PATH (ansible-core: pip install ansible-core; ssh: apt-get install openssh-client)"
            ));
        }
    }
    None
}

macro_rules! skip_without_ansible {
    () => {
        if let Some(why) = missing() {
            // CI sets BGD_REQUIRE_ANSIBLE: there these tests must run.
            assert!(
                std::env::var_os("BGD_REQUIRE_ANSIBLE").is_none(),
                "BGD_REQUIRE_ANSIBLE is set, but: {why}"
            );
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// Runs `cmd args`, panicking with its output if it fails.
fn must(cmd: &str, args: &[&str]) -> Output {
    let mut c = Command::new(cmd);
    c.args(args);
    let out = run_with_deadline(c, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// One host: a namespace with its sshd and its bgd.
struct Host {
    name: String,
    addr: String,
    dir: PathBuf,
    sshd: Child,
    bgd: Child,
}

impl Host {
    fn socket(&self) -> PathBuf {
        self.dir.join("bgd.sock")
    }

    fn stage(&self) -> PathBuf {
        self.dir.join("stage")
    }

    fn bgctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BGCTL);
        cmd.arg("--socket").arg(self.socket()).args(args);
        run_with_deadline(cmd, Duration::from_secs(60))
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.bgctl(args);
        assert!(
            out.status.success(),
            "bgctl {args:?}: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn status(&self) -> Value {
        self.json(&["status", "--json"])
    }

    fn history(&self) -> Vec<Value> {
        self.json(&["history", "--json"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// The live color's label and pid.
    fn live(&self) -> (String, u64) {
        let s = self.status();
        let color = s["live"].as_str().expect("a color is live").to_string();
        (
            s[&color]["label"].as_str().unwrap_or_default().to_string(),
            s[&color]["pid"].as_u64().unwrap_or_default(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bgd.log")).unwrap_or_default()
    }
}

/// A controller namespace and `n` hosts, torn down on drop.
struct Fleet {
    dir: tempfile::TempDir,
    ctl: String,
    hosts: Vec<Host>,
    /// Every namespace made, for the teardown.
    namespaces: Vec<String>,
}

/// Tells the fleets of one test run apart (tests run in parallel).
static FLEETS: AtomicU32 = AtomicU32::new(0);

impl Fleet {
    /// `n` hosts, each running `first` (released with bgctl, label "v1").
    fn start(n: usize, first: &dyn Fn(&Path) -> PathBuf) -> Fleet {
        Self::start_with(n, first, "")
    }

    /// [`start`](Self::start), with `tail` appended to each bgd's config
    /// (after its `[health]` keys).
    fn start_with(n: usize, first: &dyn Fn(&Path) -> PathBuf, tail: &str) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("bgd-fleet-")
            .tempdir()
            .unwrap();
        let tag = format!(
            "bgdfleet{}x{}",
            std::process::id(),
            FLEETS.fetch_add(1, Ordering::Relaxed)
        );
        let mut fleet = Fleet {
            ctl: format!("{tag}-ctl"),
            dir,
            hosts: Vec::new(),
            namespaces: Vec::new(),
        };
        fleet.add_namespace(&fleet.ctl.clone());
        let key = fleet.dir.path().join("id");
        must(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
        );
        std::fs::copy(
            key.with_extension("pub"),
            fleet.dir.path().join("authorized_keys"),
        )
        .unwrap();
        // sshd's privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        for i in 1..=n {
            let host = fleet.add_host(&tag, i, tail);
            fleet.hosts.push(host);
        }
        fleet.check_isolation();
        let build = first(fleet.dir.path());
        for h in &fleet.hosts {
            let out = h.bgctl(&["release", build.to_str().unwrap(), "--label", "v1"]);
            assert!(
                out.status.success(),
                "{}: first release: {}\n{}",
                h.name,
                text(&out.stderr),
                h.log()
            );
        }
        fleet.write_ansible_files();
        fleet
    }

    fn add_namespace(&mut self, ns: &str) {
        must("ip", &["netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        must("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }

    fn add_host(&mut self, tag: &str, i: usize, tail: &str) -> Host {
        let name = format!("h{i}");
        let ns = format!("{tag}-{name}");
        self.add_namespace(&ns);
        let veth = format!("v{name}");
        must(
            "ip",
            &[
                "link", "add", &veth, "netns", &self.ctl, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ],
        );
        let addr = format!("10.77.{i}.2");
        must(
            "ip",
            &[
                "-n",
                &self.ctl,
                "addr",
                "add",
                &format!("10.77.{i}.1/24"),
                "dev",
                &veth,
            ],
        );
        must(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ],
        );
        must("ip", &["-n", &self.ctl, "link", "set", &veth, "up"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);

        let dir = self.dir.path().join(&name);
        std::fs::create_dir(&dir).unwrap();
        let hostkey = dir.join("hostkey");
        must(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                hostkey.to_str().unwrap(),
            ],
        );
        let sshd_config = dir.join("sshd_config");
        std::fs::write(
            &sshd_config,
            format!(
                "ListenAddress {addr}\nPort 22\nHostKey {hostkey}\nPidFile {pid}\n\
                 AuthorizedKeysFile {keys}\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nSubsystem sftp internal-sftp\n",
                hostkey = hostkey.display(),
                pid = dir.join("sshd.pid").display(),
                keys = self.dir.path().join("authorized_keys").display(),
            ),
        )
        .unwrap();
        let sshd = in_namespace(&ns, "/usr/sbin/sshd", &dir.join("sshd.log"))
            .args(["-D", "-e", "-f"])
            .arg(&sshd_config)
            .spawn()
            .unwrap();

        let config = dir.join("bgd.toml");
        std::fs::write(
            &config,
            format!(
                r#"name = "{name}"
root = "root"
control = "bgd.sock"

[[listen]]
name = "http"
address = "{addr}:8080"

[app]
command = ["{python}", "server.py"]
env = {{ PYTHONUNBUFFERED = "1", FLEET_HOST = "{name}" }}
drain_delay = "1s"
drain_timeout = "10s"
allow_root = true

[health]
http = "/healthz"
timeout = "20s"
{tail}
"#,
                python = python(),
            ),
        )
        .unwrap();
        let mut bgd_cmd = in_namespace(&ns, BGD, &dir.join("bgd.log"));
        bgd_cmd.arg("--config").arg(&config).env("BGD_LOG", "debug");
        let bgd = bgd_cmd.spawn().unwrap();
        let host = Host {
            name,
            addr,
            dir,
            sshd,
            bgd,
        };
        wait_until(
            &format!("{}'s bgd and sshd", host.name),
            Duration::from_secs(20),
            || {
                let up = std::os::unix::net::UnixStream::connect(host.socket()).is_ok()
                    && host.dir.join("sshd.pid").exists();
                up.then_some(())
            },
        );
        host
    }

    /// The play's traffic can go only to the hosts: the controller's and
    /// the hosts' namespaces route their own /24s and nothing else.
    fn check_isolation(&self) {
        for ns in &self.namespaces {
            let routes = text(&must("ip", &["-n", ns, "-4", "route", "show"]).stdout);
            for route in routes.lines() {
                assert!(
                    route.starts_with("10.77."),
                    "namespace {ns} routes beyond the fleet: {route}"
                );
            }
        }
    }

    fn write_ansible_files(&self) {
        let d = self.dir.path();
        let mut hosts = String::new();
        for h in &self.hosts {
            hosts += &format!(
                "    {name}:\n      ansible_host: {addr}\n      bgd_socket: {sock}\n      \
                 bgd_stage_dir: {stage}\n      bgd_check_url: http://{addr}:8080/\n",
                name = h.name,
                addr = h.addr,
                sock = h.socket().display(),
                stage = h.stage().display(),
            );
        }
        std::fs::write(
            d.join("inventory.yml"),
            format!(
                "bgd_hosts:\n  vars:\n    ansible_user: root\n    \
                 ansible_ssh_private_key_file: {key}\n    bgd_bgctl: {bgctl}\n  hosts:\n{hosts}",
                key = d.join("id").display(),
                bgctl = BGCTL,
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("ansible.cfg"),
            format!(
                "[defaults]\nhost_key_checking = False\ninterpreter_python = /usr/bin/python3\n\
                 local_tmp = {d}/ansible-local\nremote_tmp = {d}/ansible-remote\n\
                 retry_files_enabled = False\nforks = 10\n\n\
                 [ssh_connection]\npipelining = True\ncontrol_path_dir = {d}/cp\n\
                 ssh_args = -o ControlMaster=auto -o ControlPersist=60s \
                 -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes\n",
                d = d.display()
            ),
        )
        .unwrap();
    }

    /// `ansible-playbook examples/fleet/release.yml -e build=BUILD -e label=LABEL`,
    /// from the controller's namespace; `-v` so each result is printed.
    fn play(&self, build: &Path, label: &str) -> Play {
        self.play_with(build, label, &[])
    }

    /// [`play`](Self::play) with more `-e` variables.
    fn play_with(&self, build: &Path, label: &str, vars: &[&str]) -> Play {
        let d = self.dir.path();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ctl])
            .arg(which("ansible-playbook").unwrap())
            .arg("-v")
            .arg("-i")
            .arg(d.join("inventory.yml"))
            .arg(repo().join("examples/fleet/release.yml"))
            .arg("-e")
            .arg(format!("build={}", build.display()))
            .arg("-e")
            .arg(format!("label={label}"));
        for v in vars {
            cmd.arg("-e").arg(v);
        }
        cmd.env("ANSIBLE_CONFIG", d.join("ansible.cfg"))
            .env("ANSIBLE_HOME", d.join("ansible-home"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0");
        let out = run_with_deadline(cmd, PLAY_DEADLINE);
        Play {
            code: out.status.code(),
            output: format!("{}{}", text(&out.stdout), text(&out.stderr)),
        }
    }

    /// What each host answers over HTTP, asked from the controller's namespace.
    fn answers(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| {
                let url = format!("http://{}:8080/", h.addr);
                let out = must(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &self.ctl,
                        "curl",
                        "-sS",
                        "--max-time",
                        "10",
                        &url,
                    ],
                );
                text(&out.stdout)
            })
            .collect()
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }
}

/// A command run in namespace `ns`, in its own process group, its output
/// appended to `log`.
fn in_namespace(ns: &str, program: &str, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    cmd
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for h in &self.hosts {
                eprintln!("--- {}'s bgd log ---\n{}", h.name, h.log());
            }
        }
        // Everything that runs in the fleet's namespaces was started by this
        // test: bgd and its app, sshd and its sessions, ssh's control masters.
        for ns in &self.namespaces {
            let pids = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| text(&o.stdout))
                .unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a process in a namespace this test made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for h in &mut self.hosts {
            let _ = h.bgd.wait();
            let _ = h.sshd.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One ansible-playbook run.
struct Play {
    code: Option<i32>,
    output: String,
}

impl Play {
    /// The PLAY RECAP: host -> (counter -> value), e.g. "changed" -> 1.
    fn recap(&self) -> HashMap<String, HashMap<String, u32>> {
        let recap = self
            .output
            .split("PLAY RECAP")
            .nth(1)
            .unwrap_or_else(|| panic!("no PLAY RECAP in:\n{}", self.output));
        recap
            .lines()
            .filter_map(|l| l.split_once(" : "))
            .map(|(host, counts)| {
                let counts = counts
                    .split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
                    .collect();
                (host.trim().to_string(), counts)
            })
            .collect()
    }

    fn count(&self, host: &str, what: &str) -> u32 {
        self.recap()
            .get(host)
            .and_then(|c| c.get(what))
            .copied()
            .unwrap_or(0)
    }

    fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "the play failed:\n{}", self.output);
    }
}

/// Copies the example app as version `version`, with every file's time set
/// to that of `like`'s (when given), so that size and mtime alone cannot
/// tell the two builds apart: "v1" and "v2" have the same length.
fn build_like(dir: &Path, name: &str, version: &str, like: Option<&Path>) -> PathBuf {
    let build = example_build(dir, name, version);
    if let Some(like) = like {
        must(
            "touch",
            &[
                "-r",
                like.join("server.py").to_str().unwrap(),
                build.join("server.py").to_str().unwrap(),
            ],
        );
    }
    build
}

#[test]
fn a_good_release_reaches_every_host_one_then_some_then_all() {
    skip_without_ansible!();
    let fleet = Fleet::start(3, &|d| build_like(d, "v1", "v1", None));
    fleet.play(&fleet.dir.path().join("v1"), "v1").assert_ok();
    // bgd's fingerprint (paths, sizes, modes, mtimes) is the same for both
    // builds, and the hosts hold v1 where v2 goes: the module must still
    // see that v2 differs and is not live.
    let v2 = build_like(
        fleet.dir.path(),
        "v2",
        "v2",
        Some(&fleet.dir.path().join("v1")),
    );
    let play = fleet.play(&v2, "v2");
    play.assert_ok();
    for h in &fleet.hosts {
        assert_eq!(
            play.count(&h.name, "changed"),
            1,
            "{}:\n{}",
            h.name,
            play.output
        );
        assert_eq!(h.live().0, "v2", "{}'s live label", h.name);
    }
    for (h, answer) in fleet.hosts.iter().zip(fleet.answers()) {
        assert!(
            answer.contains("hello from v2"),
            "{} answers {answer:?}",
            h.name
        );
    }
    // One, then some, then all: each host's release began after the one
    // before it had finished.
    let times: Vec<(String, String)> = fleet
        .hosts
        .iter()
        .map(|h| {
            let last = h.history().last().unwrap().clone();
            (
                last["started"].as_str().unwrap().to_string(),
                last["finished"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for pair in times.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "releases overlapped: {times:?}");
    }
    assert_eq!(play.output.matches("PLAY [").count(), 3, "{}", play.output);
}

#[test]
fn a_failure_on_host_2_stops_the_play_and_later_hosts_keep_their_build() {
    skip_without_ansible!();
    let fleet = Fleet::start(3, &|d| build_like(d, "v1", "v1", None));
    // A build that cannot start on h2 alone (its bgd sets FLEET_HOST=h2).
    let v3 = wrapped_build(
        fleet.dir.path(),
        "v3",
        "v3",
        "import os, sys\n\
         if os.environ.get('FLEET_HOST') == 'h2':\n    \
             print('boom: no database on h2', flush=True)\n    \
             sys.exit(3)",
    );
    let play = fleet.play(&v3, "v3");
    assert_ne!(play.code, Some(0), "the play should fail:\n{}", play.output);
    let answers = fleet.answers();
    assert!(
        answers[0].contains("hello from v3"),
        "h1 answers {:?}",
        answers[0]
    );
    assert!(
        answers[1].contains("hello from v1"),
        "h2 answers {:?}",
        answers[1]
    );
    assert!(
        answers[2].contains("hello from v1"),
        "h3 answers {:?}",
        answers[2]
    );
    assert_eq!(fleet.host("h1").live().0, "v3");
    assert_eq!(fleet.host("h2").live().0, "v1");
    // h2 failed with bgctl's message and exit code, and h3 was not touched:
    // no release was tried there and nothing was copied to it.
    assert!(
        play.output.contains("boom: no database on h2") && play.output.contains("\"rc\": 1"),
        "bgctl's message and exit code:\n{}",
        play.output
    );
    assert_eq!(play.count("h2", "failed"), 1, "{}", play.output);
    let h3 = fleet.host("h3");
    assert_eq!(
        h3.history().len(),
        1,
        "h3 was released to: {:?}",
        h3.history()
    );
    assert!(!h3.stage().exists(), "the build was copied to h3");
    assert!(
        !play.recap().contains_key("h3"),
        "h3 is in the recap:\n{}",
        play.output
    );
}

#[test]
fn a_build_that_fails_the_verify_step_is_rolled_back_and_stops_the_play() {
    skip_without_ansible!();
    let fleet = Fleet::start(2, &|d| build_like(d, "v1", "v1", None));
    // Ready (its /healthz answers), but its / answers 404: bgd makes it
    // live, and the play's HTTP check fails.
    let v4 = example_build(fleet.dir.path(), "v4", "v4");
    let server = std::fs::read_to_string(v4.join("server.py")).unwrap();
    let broken = server.replace("if path == \"/\":", "if path == \"/not-here\":");
    assert_ne!(server, broken, "the example app's / handler moved");
    std::fs::write(v4.join("server.py"), broken).unwrap();
    let play = fleet.play(&v4, "v4");
    assert_ne!(play.code, Some(0), "the play should fail:\n{}", play.output);
    let h1 = fleet.host("h1");
    let kinds: Vec<Value> = h1.history().iter().map(|r| r["kind"].clone()).collect();
    assert_eq!(kinds, ["release", "release", "rollback"], "h1's history");
    assert_eq!(h1.live().0, "v1");
    assert!(fleet.answers()[0].contains("hello from v1"));
    let h2 = fleet.host("h2");
    assert_eq!(h2.history().len(), 1, "h2 was released to");
    assert!(!h2.stage().exists(), "the build was copied to h2");
}

/// Checks every 300 ms once ready, 2 failures in a row are unhealthy, a
/// bake of 3 s after each swap, the old color kept warm meanwhile.
const BAKE: &str =
    "interval = \"300ms\"\nfailures = 2\n\n[traffic]\nstandby = \"30s\"\nbake = \"3s\"\n";

/// The kinds of a host's history records, oldest first.
fn kinds(h: &Host) -> Vec<String> {
    h.history()
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_canary_on_the_first_host_then_the_bake_on_every_host() {
    skip_without_ansible!();
    let fleet = Fleet::start_with(2, &|d| build_like(d, "v1", "v1", None), BAKE);
    let v2 = example_build(fleet.dir.path(), "v2", "v2");
    let play = fleet.play_with(
        &v2,
        "v2",
        &["canary=10", "bgd_wait_bake=true", "bgd_bake_poll=1"],
    );
    play.assert_ok();
    // h1: a 10% canary, verified, promoted, baked; h2: a release that
    // waited for its bake (bgctl release --wait-bake).
    let (h1, h2) = (fleet.host("h1"), fleet.host("h2"));
    assert_eq!(kinds(h1)[1..], ["canary", "promote"], "{:?}", h1.history());
    assert_eq!(kinds(h2)[1..], ["release"], "{:?}", h2.history());
    assert!(
        play.output.contains("--canary\", \"10\""),
        "{}",
        play.output
    );
    assert!(play.output.contains("--wait-bake"), "{}", play.output);
    for h in [h1, h2] {
        assert_eq!(h.live().0, "v2", "{}", h.name);
        assert!(
            h.status()["bake_until"].is_null(),
            "{}'s bake is over",
            h.name
        );
    }
    assert_eq!(
        play.count("h1", "changed"),
        2,
        "release and promote:\n{}",
        play.output
    );
}

#[test]
fn a_build_rolled_back_during_its_bake_fails_its_host_and_stops_the_play() {
    skip_without_ansible!();
    let fleet = Fleet::start_with(2, &|d| build_like(d, "v1", "v1", None), BAKE);
    // Ready, live, and unhealthy 1 s after its start (the example app's
    // unhealthy-after file): bgd switches back to v1 during the bake.
    let v3 = example_build(fleet.dir.path(), "v3", "v3");
    std::fs::write(v3.join("unhealthy-after"), "1\n").unwrap();
    let play = fleet.play_with(&v3, "v3", &["bgd_wait_bake=true"]);
    assert_ne!(play.code, Some(0), "the play should fail:\n{}", play.output);
    assert!(
        play.output.contains("\"rc\": 8") && play.output.contains("during the bake"),
        "bgctl's exit code 8 and message:\n{}",
        play.output
    );
    let h1 = fleet.host("h1");
    assert_eq!(h1.live().0, "v1", "h1 serves v1 again");
    assert!(fleet.answers()[0].contains("hello from v1"));
    // bgd rolled back by itself, and the play did not roll back again.
    let history = h1.history();
    assert_eq!(kinds(h1), ["release", "release", "rollback"], "{history:?}");
    assert_eq!(history[2]["trigger"], "automatic", "{history:?}");
    let h2 = fleet.host("h2");
    assert_eq!(h2.history().len(), 1, "h2 was released to");
}

#[test]
fn running_the_same_play_again_changes_nothing_and_a_small_change_sends_one_file() {
    skip_without_ansible!();
    let fleet = Fleet::start(3, &|d| build_like(d, "v1", "v1", None));
    let v2 = example_build(fleet.dir.path(), "v2", "v2");
    std::fs::write(v2.join("README"), "the v2 build\n").unwrap();
    fleet.play(&v2, "v2").assert_ok();
    let before: Vec<(usize, (String, u64))> = fleet
        .hosts
        .iter()
        .map(|h| (h.history().len(), h.live()))
        .collect();

    let again = fleet.play(&v2, "v2");
    again.assert_ok();
    for (h, was) in fleet.hosts.iter().zip(&before) {
        assert_eq!(
            again.count(&h.name, "changed"),
            0,
            "{}:\n{}",
            h.name,
            again.output
        );
        assert_eq!(
            (h.history().len(), h.live()),
            *was,
            "{}: a release or a restart happened",
            h.name
        );
    }
    // The module knows it from the fingerprint bgd shows in status, the
    // same one the history records for the release.
    for h in &fleet.hosts {
        let s = h.status();
        let live = &s[s["live"].as_str().unwrap()];
        let recorded = h.history().last().unwrap()["fingerprint"].clone();
        assert!(live["fingerprint"].is_string(), "no fingerprint in {s}");
        assert_eq!(live["fingerprint"], recorded);
    }
    assert_eq!(
        again.output.matches("already live").count(),
        3,
        "{}",
        again.output
    );

    // One file changed: the hosts get that file alone, and release it.
    std::fs::write(v2.join("README"), "the v2 build, again\n").unwrap();
    let small = fleet.play(&v2, "v2.1");
    small.assert_ok();
    assert_eq!(
        small.output.matches("\"sent\": 1,").count(),
        3,
        "each host gets one file:\n{}",
        small.output
    );
    for h in &fleet.hosts {
        assert_eq!(h.live().0, "v2.1");
        assert_eq!(
            std::fs::read_to_string(h.stage().join("README")).unwrap(),
            "the v2 build, again\n"
        );
    }
}

#[test]
fn the_module_documents_itself_for_ansible_doc() {
    skip_without_ansible!();
    let lib = repo().join("examples/fleet/library");
    let out = must("ansible-doc", &["-M", lib.to_str().unwrap(), "bgd_release"]);
    let doc = text(&out.stdout);
    for part in [
        "OPTIONS",
        "EXAMPLES",
        "RETURN VALUES",
        "stage_dir",
        "wait_bake",
        "canary",
    ] {
        assert!(doc.contains(part), "ansible-doc shows no {part}:\n{doc}");
    }
    let check = must(
        "ansible-playbook",
        &[
            "--syntax-check",
            "-i",
            repo()
                .join("examples/fleet/local/inventory.yml")
                .to_str()
                .unwrap(),
            repo().join("examples/fleet/release.yml").to_str().unwrap(),
        ],
    );
    assert!(text(&check.stdout).contains("release.yml"));
}
