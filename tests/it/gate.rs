//! The traffic gate: a color gets no public connection until it is ready
//! and live, so a refused release costs no request and shows no client the
//! broken build; the flip and the old color's drain lose nothing.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::*;
use crate::load::Load;

/// Answers 500 to every request, the health check included.
const ANSWERS_500: &str = r#"
import socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 6\r\nConnection: close\r\n\r\nbroken")
    c.close()
"#;

/// Dies on the first request it reads, the health check included.
const CRASHES_ON_FIRST_REQUEST: &str = r#"
import os, socket
s = socket.socket(fileno=3)
c, _ = s.accept()
c.recv(65536)
os._exit(1)
"#;

/// Never accepts.
const NEVER_READY: &str = r#"
import time
time.sleep(3600)
"#;

/// Exits while bgd waits for it.
const EXITS_DURING_THE_WAIT: &str = r#"
import sys, time
time.sleep(0.3)
print("boom: cannot open database", file=sys.stderr)
sys.exit(3)
"#;

fn gate_setup() -> Setup {
    Setup {
        health: "http = \"/healthz\"\ntimeout = \"3s\"".into(),
        ..Setup::default()
    }
}

/// Under load from 8 keep-alive and 8 new-connection clients, each broken
/// build is refused, not one request fails, and every answer comes from the
/// live release.
#[test]
fn a_refused_release_costs_no_request_and_shows_no_client_the_broken_build() {
    let bgd = Bgd::start(gate_setup());
    bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 8, 8);
    wait_until("the load to get going", Duration::from_secs(10), || {
        (load.count() > 100).then_some(())
    });
    for (name, code) in [
        ("answers-500", ANSWERS_500),
        ("crashes", CRASHES_ON_FIRST_REQUEST),
        ("never-ready", NEVER_READY),
        ("exits", EXITS_DURING_THE_WAIT),
    ] {
        let build = script_build(bgd.dir.path(), name, code);
        let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out.stderr));
        let st = bgd.status();
        assert_eq!(st["live"], "blue", "{name}: {st}");
        assert_eq!(st["receiving"], "blue", "{name}: {st}");
    }
    let samples = load.finish_clean();
    let others: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .filter(|b| release_of(b) != Some(1))
        .collect();
    assert!(
        others.is_empty(),
        "{} of {} answers came from another build, first: {:?}",
        others.len(),
        samples.len(),
        others.first()
    );
}

/// 20 alternating releases under load from 8 keep-alive and 8
/// new-connection clients: not one request fails.
#[test]
fn twenty_alternating_releases_lose_no_request() {
    let bgd = Bgd::start(Setup::default());
    let builds = [
        example_build(bgd.dir.path(), "b1", "v1"),
        example_build(bgd.dir.path(), "b2", "v2"),
    ];
    bgd.release(&builds[0]);
    let addr = bgd.addr();
    let load = Load::start(&addr, 8, 8);
    for i in 0..20 {
        let before = load.count();
        wait_until(
            "requests before the release",
            Duration::from_secs(10),
            || (load.count() > before + 20).then_some(()),
        );
        bgd.release(&builds[(i + 1) % 2]);
    }
    let samples = load.finish_clean();
    assert!(samples.len() > 400, "{} requests", samples.len());
}

/// The same over IPv6.
#[test]
fn releases_over_ipv6_lose_no_request() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this machine");
        return;
    }
    let bgd = Bgd::start(Setup {
        http_address: "[::1]:0",
        ..Setup::default()
    });
    let builds = [
        example_build(bgd.dir.path(), "b1", "v1"),
        example_build(bgd.dir.path(), "b2", "v2"),
    ];
    bgd.release(&builds[0]);
    let addr = bgd.addr();
    assert!(addr.starts_with("[::1]:"), "{addr}");
    let load = Load::start(&addr, 4, 4);
    for i in 0..4 {
        let before = load.count();
        wait_until("requests", Duration::from_secs(10), || {
            (load.count() > before + 20).then_some(())
        });
        bgd.release(&builds[(i + 1) % 2]);
    }
    let bad = script_build(bgd.dir.path(), "bad", ANSWERS_500);
    let out = bgd.bgctl(&["release", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let samples = load.finish_clean();
    assert!(samples
        .iter()
        .all(|s| !s.result.as_ref().unwrap().contains("broken")));
}

/// Serves one request at a time, slowly, with its release in the body: its
/// accept queue fills up.
const SLOW: &str = r#"
import os, socket, time
s = socket.socket(fileno=3)
release = os.environ["BG_RELEASE"]
while True:
    c, _ = s.accept()
    data = c.recv(65536)
    if b"/healthz" not in data:
        time.sleep(0.3)
    body = f"slow release={release}".encode()
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    c.close()
"#;

/// The old color's accept queue is full when the new color goes live: the
/// old color still serves every connection in it before its stop signal,
/// and none is reset.
#[test]
fn the_flip_with_a_full_old_queue_loses_no_connection() {
    let bgd = Bgd::start(Setup {
        http_extra: "backlog = 8\n",
        drain_delay: "30s",
        ..Setup::default()
    });
    bgd.release(&script_build(bgd.dir.path(), "slow", SLOW));
    let addr = bgd.addr();
    // 20 clients at once: one served at a time, 300 ms each (6 s in all);
    // the queue (backlog 8) fills and the rest wait for the kernel to take
    // their SYN.
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .map_err(|e| e.to_string())?;
                let mut resp = String::new();
                s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
                Ok::<String, String>(resp)
            })
        })
        .collect();
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    wait_until("the old queue to fill", Duration::from_secs(30), || {
        (listen_queue(port) >= 8).then_some(())
    });
    bgd.release(&example_build(bgd.dir.path(), "new", "v2"));
    for c in clients {
        let resp = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("a client failed: {e}"));
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let (_, body) = get(&addr, "/").unwrap();
    assert_eq!(release_of(&body), Some(2), "{body}");
}

/// Over a Unix socket: the public path always names the live color's
/// socket; a refused build is never reached through it.
#[test]
fn unix_socket_releases_keep_the_public_path_on_the_live_color() {
    let bgd = Bgd::start(Setup {
        extra_listen: "[[listen]]\nname = \"unix\"\naddress = \"unix:app.sock\"\n".into(),
        ..Setup::default()
    });
    let public = bgd.dir.path().join("app.sock");
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    assert_eq!(release_of(&unix_get(&public)), Some(1));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    assert_eq!(release_of(&unix_get(&public)), Some(2));
    let bad = wrapped_build(bgd.dir.path(), "bad", "v3", "import sys; sys.exit(3)");
    let out = bgd.bgctl(&["release", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(release_of(&unix_get(&public)), Some(2));
}

/// Connections waiting in the accept queues of the listeners on `port`:
/// the Recv-Q of their rows in `ss -Hltn` (a listener's accept queue; ss(8)
/// asks the kernel by netlink for the listeners alone). /proc/net/tcp would
/// list every socket of the machine: with the TIME_WAIT sockets the load
/// tests leave, one read took seconds, and the queue filled and drained
/// between two reads.
fn listen_queue(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
        .sum()
}

fn unix_get(path: &std::path::Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

/// Answers 503 to every request.
const ANSWERS_503: &str = r#"
import socket
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy")
    c.close()
"#;

/// Prints that it is starting, then never accepts.
const STILL_STARTING: &str = r#"
import sys, time
print("loading the model, this takes a minute", file=sys.stderr, flush=True)
time.sleep(3600)
"#;

/// A readiness failure says what the last check saw, and when the app
/// never answered, its last line and what to do.
#[test]
fn a_readiness_failure_names_what_the_last_check_saw() {
    let bgd = Bgd::start(gate_setup());
    bgd.release(&example_build(bgd.dir.path(), "good", "v1"));
    let release = |name: &str, code: &str| {
        let build = script_build(bgd.dir.path(), name, code);
        let out = bgd.bgctl(&["release", build.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        text(&out.stderr)
    };
    let err = release("busy", ANSWERS_503);
    assert!(
        err.contains("last check: GET /healthz answered 503"),
        "{err}"
    );
    let err = release("slow", STILL_STARTING);
    assert!(
        err.contains("GET /healthz got no answer within health.attempt_timeout (2s)"),
        "{err}"
    );
    assert!(err.contains("loading the model"), "its last line: {err}");
    assert!(err.contains("raise health.timeout"), "{err}");
    assert!(err.contains("raise health.attempt_timeout"), "{err}");
}

/// A wrapper that starts the server without `exec`: LISTEN_PID is not the
/// server's pid, so it ignores its sockets and binds a port itself. The
/// failure says so.
#[test]
fn an_app_that_binds_its_own_port_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bgd = Bgd::start(Setup {
        command: format!(
            "[\"/bin/sh\", \"-c\", \"PORT={port} {} server.py; exit $?\"]",
            python()
        ),
        ..gate_setup()
    });
    let out = bgd.bgctl(&[
        "release",
        example_build(bgd.dir.path(), "b1", "v1").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("listens on 127.0.0.1:{port} itself")),
        "{err}"
    );
    assert!(err.contains("use `exec` in the wrapper"), "{err}");
}

/// The old color ignores its stop signal and is killed at drain_timeout:
/// bgctl, the history and the log say so.
#[test]
fn a_forced_drain_is_reported() {
    let bgd = Bgd::start(Setup {
        drain_timeout: "1s",
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    let stubborn = wrapped_build(
        bgd.dir.path(),
        "stubborn",
        "v1",
        // The example installs its own SIGTERM handler: make it ignore it.
        "import signal\n_set = signal.signal\nsignal.signal = lambda s, h: _set(s, signal.SIG_IGN if s == signal.SIGTERM else h)",
    );
    bgd.release(&stubborn);
    let out = bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let said = "blue was killed after drain_timeout (1s): requests still in flight were cut";
    let err = text(&out.stderr);
    assert!(err.contains(said), "bgctl: {err}");
    let history = text(&bgd.bgctl(&["history", "--json"]).stdout);
    assert!(history.contains(said), "history: {history}");
    assert!(bgd.log().contains(said), "log: {}", bgd.log());
    // A drain that ended by itself says nothing of the kind.
    let out = bgd.release(&example_build(bgd.dir.path(), "b3", "v1"));
    assert!(
        !text(&out.stderr).contains("was killed"),
        "{}",
        text(&out.stderr)
    );
}

/// An app that unlinks its Unix socket path when it exits: bgd puts the
/// public path back on the live color's socket and says so.
#[test]
fn the_public_unix_path_is_kept_when_an_exiting_app_removes_it() {
    let bgd = Bgd::start(Setup {
        extra_listen: "[[listen]]\nname = \"unix\"\naddress = \"unix:app.sock\"\n".into(),
        // The old app must exit (and unlink the path) right after the swap.
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    let public = bgd.dir.path().join("app.sock");
    let prelude = format!(
        "import atexit, os\natexit.register(lambda: os.path.exists({p:?}) and os.unlink({p:?}))",
        p = public.display().to_string()
    );
    bgd.release(&wrapped_build(bgd.dir.path(), "b1", "v1", &prelude));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    assert_eq!(release_of(&unix_get(&public)), Some(2));
    assert!(
        bgd.log().contains("was removed or replaced"),
        "{}",
        bgd.log()
    );
}

/// nginx, whose config serves `release=N` and ends each keep-alive
/// connection after 200 requests; it gets the socket bgd passes through
/// its own inheritance protocol (`NGINX="3;"`).
fn nginx_build(dir: &std::path::Path, name: &str, addr: &str) -> std::path::PathBuf {
    let build = dir.join(name);
    std::fs::create_dir_all(&build).unwrap();
    std::fs::write(
        build.join("nginx.conf.in"),
        format!(
            r#"worker_processes 1;
pid @PREFIX@/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path @PREFIX@/tmp/body;
    proxy_temp_path @PREFIX@/tmp/proxy;
    fastcgi_temp_path @PREFIX@/tmp/fastcgi;
    uwsgi_temp_path @PREFIX@/tmp/uwsgi;
    scgi_temp_path @PREFIX@/tmp/scgi;
    keepalive_requests 200;
    server {{
        listen {addr};
        location /healthz {{ return 200 "ok\n"; }}
        location / {{ default_type text/plain; return 200 "hello from nginx release=@RELEASE@\n"; }}
    }}
}}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        build.join("run.sh"),
        r#"#!/bin/sh
set -e
mkdir -p tmp logs
sed "s/@RELEASE@/$BG_RELEASE/g; s|@PREFIX@|$PWD|g" nginx.conf.in > nginx.conf
export NGINX="3;"
exec /usr/sbin/nginx -e stderr -p "$PWD" -c "$PWD/nginx.conf" -g "daemon off;"
"#,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(build.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    build
}

/// nginx closes idle keep-alive connections at its stop signal: a client
/// that just sent a request on one sees it reset. With the gate the old
/// color gets no new connection after the swap, its connections end on
/// their own (after 200 requests each), and only then does it get SIGQUIT:
/// 10 releases under keep-alive load lose nothing.
#[test]
fn nginx_loses_no_keepalive_request_thanks_to_the_quiesce() {
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        assert!(
            std::env::var_os("BGD_REQUIRE_NGINX").is_none(),
            "BGD_REQUIRE_NGINX is set but /usr/sbin/nginx is missing"
        );
        eprintln!("skipped: nginx is not installed (apt-get install nginx-light)");
        return;
    }
    let bgd = Bgd::start(Setup {
        command: "[\"./run.sh\"]".into(),
        stop_signal: "SIGQUIT",
        drain_delay: "10s",
        ..Setup::default()
    });
    let addr = bgd.addr();
    let builds = [
        nginx_build(bgd.dir.path(), "n1", &addr),
        nginx_build(bgd.dir.path(), "n2", &addr),
    ];
    bgd.release(&builds[0]);
    let load = Load::start(&addr, 8, 2);
    for i in 0..10 {
        let before = load.count();
        wait_until("requests", Duration::from_secs(10), || {
            (load.count() > before + 200).then_some(())
        });
        bgd.release(&builds[(i + 1) % 2]);
    }
    let samples = load.finish_clean();
    assert!(samples.len() > 2000, "{} requests", samples.len());
    // Stop bgd gracefully: SIGKILL would leave nginx's workers behind (its
    // master dies with bgd, its workers are not in bgd's reach once bgd is
    // gone).
    let mut bgd = bgd;
    assert_eq!(bgd.stop(libc::SIGTERM), Some(0));
}

/// Serves its TCP socket (fd 3: the health check) at once and its Unix
/// socket (fd 4) one request at a time, slowly.
const SLOW_UNIX: &str = r#"
import os, socket, threading, time
release = os.environ["BG_RELEASE"]
def serve(fd, delay):
    s = socket.socket(fileno=fd)
    while True:
        c, _ = s.accept()
        c.recv(65536)
        time.sleep(delay)
        body = f"slow release={release}".encode()
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        c.close()
threading.Thread(target=serve, args=(3, 0), daemon=True).start()
serve(4, 0.1)
"#;

/// Unix sockets: connections queued on the old color's socket when the
/// public path moves to the new color are all served by the old color.
#[test]
fn the_flip_keeps_what_is_queued_on_the_old_unix_socket() {
    let bgd = Bgd::start(Setup {
        extra_listen: "[[listen]]\nname = \"unix\"\naddress = \"unix:app.sock\"\n".into(),
        drain_delay: "30s",
        ..Setup::default()
    });
    let public = bgd.dir.path().join("app.sock");
    bgd.release(&script_build(bgd.dir.path(), "slow", SLOW_UNIX));
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let s = std::os::unix::net::UnixStream::connect(&public).unwrap();
            std::thread::spawn(move || {
                let mut s = s;
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .map_err(|e| e.to_string())?;
                let mut resp = String::new();
                s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
                Ok::<String, String>(resp)
            })
        })
        .collect();
    // All ten are connected (queued or being served) before the flip.
    bgd.release(&example_build(bgd.dir.path(), "new", "v2"));
    for c in clients {
        let resp = c
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("a client failed: {e}"));
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert_eq!(release_of(&resp), Some(1), "{resp}");
    }
    assert_eq!(release_of(&unix_get(&public)), Some(2));
}
