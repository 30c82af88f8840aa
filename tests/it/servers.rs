//! Real servers, unmodified, from `examples/servers/`: each example is
//! copied to a temp dir (its `127.0.0.1:8080` moved to a free port),
//! released once, then released 5 times under keep-alive and
//! new-connection load (with the default standby, so each release first
//! drains the standby's server). Failed requests and leftover processes
//! (of the drained color, found by environment and by cgroup) are counted
//! and compared with the figures recorded in [`SERVERS`] (and in
//! docs/servers.md). A server that is not installed is skipped with a
//! message, unless `BGD_REQUIRE_SERVERS=1` (CI sets it; `.ci/servers`
//! installs them). Python servers are looked up in `BGD_SERVERS_PATH`
//! (default `/opt/bgd-servers/bin`, the virtualenv `.ci/servers` makes)
//! before `PATH`.

use crate::harness::app_processes;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{get, repo, wait_until, Bgd};
use crate::load::Load;

/// One example: its directory under examples/servers, the programs it
/// needs, and the most failed requests it may have over its releases
/// under load (the recorded figure: a run above it is a regression).
struct Server {
    name: &'static str,
    needs: &'static [&'static str],
    max_failed: usize,
}

/// The matrix, with the figures recorded in docs/servers.md.
const SERVERS: &[Server] = &[
    Server {
        name: "gunicorn",
        needs: &["gunicorn"],
        max_failed: 0,
    },
    Server {
        name: "uvicorn",
        needs: &["uvicorn"],
        // 0 in the recorded run, 1 in another: with --fd each keep-alive
        // request takes ~40 ms, and a connection that has not drawn a
        // `connection: close` by drain_delay can lose one request.
        max_failed: 4,
    },
    Server {
        name: "hypercorn",
        needs: &["hypercorn"],
        max_failed: 0,
    },
    Server {
        name: "waitress",
        needs: &["waitress-serve"],
        // No setting ends a keep-alive connection (WSGI forbids a
        // Connection header), and SIGINT closes every connection: each of
        // the 4 keep-alive clients can lose its request in flight.
        max_failed: 4 * RELEASES,
    },
    Server {
        name: "nginx",
        needs: &["nginx"],
        max_failed: 0,
    },
    Server {
        name: "lighttpd",
        needs: &["lighttpd"],
        max_failed: 0,
    },
    Server {
        name: "node",
        needs: &["node"],
        max_failed: 0,
    },
    Server {
        name: "go",
        needs: &["go"],
        max_failed: 0,
    },
    Server {
        name: "puma",
        needs: &["puma"],
        max_failed: 0,
    },
    Server {
        name: "caddy",
        needs: &["caddy"],
        max_failed: 0,
    },
];

/// Releases under load per server.
const RELEASES: usize = 5;

/// What one server's run measured.
struct Figures {
    releases: usize,
    requests: usize,
    failed: usize,
    /// Processes of a drained color still running after its release
    /// ended, plus processes of the app still running after bgd stopped.
    leftover: usize,
    first_failures: Vec<String>,
    /// Drains whose quiesce ran out (`drain_delay`) with connections left.
    cut_drains: usize,
}

/// `BGD_SERVERS_PATH`, then `PATH`.
fn search_path() -> String {
    let venv = std::env::var("BGD_SERVERS_PATH").unwrap_or_else(|_| "/opt/bgd-servers/bin".into());
    format!("{venv}:{}", std::env::var("PATH").unwrap_or_default())
}

/// Whether `program` is on [`search_path`].
fn installed(program: &str) -> bool {
    search_path()
        .split(':')
        .any(|d| !d.is_empty() && Path::new(d).join(program).is_file())
}

/// A port nobody listens on now (bound to 0, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Copies examples/servers/NAME into a temp dir with its address moved to
/// `port`; as root, `allow_root = true` goes under `[app]` (the examples run
/// as the user who starts bgd).
fn copy_example(name: &str, port: u16) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("bgd-{name}-"))
        .tempdir()
        .unwrap();
    let src = repo().join("examples/servers").join(name);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(ok.success(), "cp {}", src.display());
    let to = format!("127.0.0.1:{port}");
    for file in walk(dir.path()) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if text.contains("127.0.0.1:8080") {
                std::fs::write(&file, text.replace("127.0.0.1:8080", &to)).unwrap();
            }
        }
    }
    if nix::unistd::geteuid().is_root() {
        let config = dir.path().join("bgd.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replacen("[app]\n", "[app]\nallow_root = true\n", 1),
        )
        .unwrap();
    }
    dir
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files.extend(walk(&e.path()));
        } else if t.is_file() {
            files.push(e.path());
        }
    }
    files
}

/// Runs one example: release v1, then [`RELEASES`] releases under 4
/// keep-alive and 4 new-connection clients.
fn run(name: &str) -> Figures {
    let port = free_port();
    let dir = copy_example(name, port);
    let root = dir.path().join("state");
    let config = dir.path().join("bgd.toml");
    let builds = [dir.path().join("v1"), dir.path().join("v2")];
    let bgd = Bgd::start_config(dir, config, root.clone(), |c| {
        c.env("PATH", search_path());
    });
    let addr = format!("127.0.0.1:{port}");
    bgd.release(&builds[0]);
    let (status, body) = get(&addr, "/").unwrap();
    assert!(
        status == 200 && body.contains("hello from v1"),
        "{status} {body}"
    );

    let load = Load::start(&addr, 4, 4);
    let mut leftover = 0;
    for i in 0..RELEASES {
        let before = load.count();
        wait_until("requests between releases", Duration::from_secs(30), || {
            (load.count() > before + 100).then_some(())
        });
        // The release goes to the color that is not live: with the default
        // standby that color still runs the build before the last one, and
        // the release drains it first. None of its processes may survive
        // into the new build's color.
        let st = bgd.status();
        let target = match st["live"].as_str() {
            Some("blue") => "green",
            _ => "blue",
        };
        let earlier = color_processes(&st, &root, target);
        bgd.release(&builds[(i + 1) % 2]);
        let now = color_processes(&bgd.status(), &root, target);
        let left: Vec<i32> = earlier.into_iter().filter(|p| now.contains(p)).collect();
        if !left.is_empty() {
            eprintln!(
                "{name}: {target} left over from before release {}: {left:?}",
                i + 1
            );
        }
        leftover += left.len();
    }
    let before = load.count();
    wait_until(
        "requests after the last release",
        Duration::from_secs(30),
        || (load.count() > before + 100).then_some(()),
    );
    let samples = load.finish();
    let failures: Vec<String> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err().cloned())
        .collect();
    let cgroup = cgroup_of(&bgd.status());
    let mut bgd = bgd;
    assert_eq!(
        bgd.stop(libc::SIGTERM),
        Some(0),
        "bgd's exit:\n{}",
        bgd.log()
    );
    let log = bgd.log();
    let cut: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("after app.drain_delay"))
        .collect();
    for l in &cut {
        eprintln!("{name}: {l}");
    }
    let end = Instant::now() + Duration::from_secs(5);
    let everyone = || {
        let mut all = app_processes(&root, None);
        all.extend(cgroup_processes(&cgroup, "blue"));
        all.extend(cgroup_processes(&cgroup, "green"));
        all
    };
    let mut after = everyone();
    while !after.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50)); // deadline-bounded poll
        after = everyone();
    }
    leftover += after.len();
    Figures {
        releases: RELEASES,
        requests: samples.len(),
        failed: failures.len(),
        leftover,
        first_failures: failures.into_iter().take(5).collect(),
        cut_drains: cut.len(),
    }
}

/// The cgroup bgd puts the colors under, from status's `containment`
/// (`cgroup PATH`); `None` in process-group mode.
fn cgroup_of(status: &serde_json::Value) -> Option<PathBuf> {
    status["containment"]
        .as_str()
        .and_then(|c| c.strip_prefix("cgroup "))
        .map(PathBuf::from)
}

/// The pids in `cgroup/color/cgroup.procs` (none if it is gone).
fn cgroup_processes(cgroup: &Option<PathBuf>, color: &str) -> Vec<i32> {
    cgroup
        .as_ref()
        .and_then(|c| std::fs::read_to_string(c.join(color).join("cgroup.procs")).ok())
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// The processes of `color`: those carrying its `BG_ROOT`/`BG_COLOR` and,
/// with cgroups, those in its cgroup (nginx rewrites its environment for
/// its process titles, so only the cgroup finds its master and workers).
fn color_processes(status: &serde_json::Value, root: &Path, color: &str) -> Vec<i32> {
    let mut pids = app_processes(root, Some(color));
    for p in cgroup_processes(&cgroup_of(status), color) {
        if !pids.contains(&p) {
            pids.push(p);
        }
    }
    pids
}

/// Runs the example `name` if its server is installed, prints its figures
/// and checks them against the recorded ones.
fn check(name: &str) {
    let server = SERVERS.iter().find(|s| s.name == name).unwrap();
    let missing: Vec<&str> = server
        .needs
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("BGD_REQUIRE_SERVERS").is_none(),
            "BGD_REQUIRE_SERVERS is set but {missing:?} is missing (bash .ci/servers installs them)"
        );
        eprintln!("skipped: {name} needs {missing:?} (bash .ci/servers installs them)");
        return;
    }
    let f = run(name);
    println!(
        "servers: {name}: releases={} requests={} failed={} leftover={} drains cut at drain_delay={} first failures: {:?}",
        f.releases, f.requests, f.failed, f.leftover, f.cut_drains, f.first_failures
    );
    assert_eq!(f.leftover, 0, "{name}: processes left over");
    assert!(
        f.failed <= server.max_failed,
        "{name}: {} of {} requests failed, {} recorded; first: {:?}",
        f.failed,
        f.requests,
        server.max_failed,
        f.first_failures
    );
}

#[test]
fn gunicorn() {
    check("gunicorn");
}

#[test]
fn uvicorn() {
    check("uvicorn");
}

#[test]
fn hypercorn() {
    check("hypercorn");
}

#[test]
fn waitress() {
    check("waitress");
}

#[test]
fn nginx() {
    check("nginx");
}

#[test]
fn lighttpd() {
    check("lighttpd");
}

#[test]
fn node() {
    check("node");
}

#[test]
fn go() {
    check("go");
}

#[test]
fn puma() {
    check("puma");
}

#[test]
fn caddy() {
    check("caddy");
}

/// docs/servers.md shows each example's `bgd.toml`, and each file of its
/// `v1/` that it names, word for word: every recipe there is one this
/// matrix runs.
#[test]
fn docs_show_the_tested_examples() {
    let docs = std::fs::read_to_string(repo().join("docs/servers.md")).unwrap();
    for server in SERVERS {
        let dir = repo().join("examples/servers").join(server.name);
        let config = std::fs::read_to_string(dir.join("bgd.toml")).unwrap();
        assert!(
            docs.contains(&format!("```toml\n{config}```")),
            "docs/servers.md does not show examples/servers/{}/bgd.toml as it is",
            server.name
        );
        for file in walk(&dir.join("v1")) {
            let rel = file.strip_prefix(repo()).unwrap().display().to_string();
            if docs.contains(&format!("`{rel}`:")) {
                let text = std::fs::read_to_string(&file).unwrap();
                assert!(
                    docs.contains(&text),
                    "docs/servers.md shows {rel}, but not as it is"
                );
            }
        }
    }
    let examples = std::fs::read_dir(repo().join("examples/servers"))
        .unwrap()
        .count();
    assert_eq!(
        examples,
        SERVERS.len(),
        "an example in examples/servers/ that the matrix does not run"
    );
}
