//! Nothing outside bgd breaks its steering (issue 25): another process on
//! bgd's address, and an app that changes the socket it inherited
//! (shutdown(2), its backlog, O_NONBLOCK). Under load, no request fails
//! where the live color could serve it.

use std::process::Command;
use std::time::Duration;

use crate::harness::*;
use crate::load::Load;

/// Kills a helper process when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` new-connection GETs in a row that the live release answers.
fn all_served(addr: &str, n: usize, release: u64) -> Result<(), String> {
    for i in 0..n {
        match get_within(addr, "/", Duration::from_secs(2)) {
            Ok((200, body)) if release_of(&body) == Some(release) => {}
            other => return Err(format!("request {i} of {n}: {other:?}")),
        }
    }
    Ok(())
}

/// The named case: a second bgd (a copy of the config with another root)
/// on the port the first one serves refuses to start, naming the first
/// one's pid and command; the first one's clients see nothing of it, and
/// its status has nothing to report.
#[test]
fn a_second_bgd_on_the_same_port_refuses_to_start() {
    let a = Bgd::start(Setup::default());
    a.release(&example_build(a.dir.path(), "b1", "v1"));
    a.release(&example_build(a.dir.path(), "b2", "v2"));
    let addr = a.addr();
    let load = Load::start(&addr, 4, 4);
    let other = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace("127.0.0.1:0", &addr)
        .replace(
            &a.root().display().to_string(),
            &other.path().join("root").display().to_string(),
        )
        .replace(
            "ctl.sock",
            &other.path().join("ctl.sock").display().to_string(),
        );
    let path = other.path().join("bgd.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(BGD);
    cmd.arg("--config").arg(&path);
    let out = run_with_deadline(cmd, Duration::from_secs(20));
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("address in use by another process"), "{err}");
    assert!(err.contains(&format!("pid {} (", a.pid())), "{err}");
    assert!(err.contains("bgd"), "{err}");
    all_served(&addr, 20, 2).unwrap();
    let st = a.status();
    assert!(st["socket_alerts"].is_null(), "{st}");
    let samples = load.finish_clean();
    assert!(samples
        .iter()
        .all(|s| s.result.as_ref().is_ok_and(|b| release_of(b) == Some(2))));
}

/// Joins `ADDR`'s SO_REUSEPORT group and attaches a program that sends
/// every new connection to index 0 (what another bgd's program would
/// do), then waits until the file `STOP` exists.
const INTRUDER: &str = r#"
import ctypes, os, socket, struct, sys, time
host, port = sys.argv[1].rsplit(":", 1)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind((host, int(port)))
s.listen(16)
insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K 0
fprog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(insn))
s.setsockopt(socket.SOL_SOCKET, 51, fprog)  # SO_ATTACH_REUSEPORT_CBPF
open(sys.argv[2] + ".ready", "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
"#;

/// Another process (not a bgd) joins bgd's group on the live address and
/// attaches its own program. bgd reports it in status (its pid) and the
/// log, and attaches its own program again: requests are served by the
/// live color within seconds. Once it has gone, the alert goes and every
/// request is served.
#[test]
fn a_process_that_joins_bgds_group_is_reported_and_the_steering_repaired() {
    let bgd = Bgd::start(Setup {
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    bgd.release(&example_build(bgd.dir.path(), "b1", "v1"));
    bgd.release(&example_build(bgd.dir.path(), "b2", "v2"));
    let addr = bgd.addr();
    all_served(&addr, 10, 2).unwrap();
    let stop = bgd.dir.path().join("intruder-stop");
    let mut intruder = KillOnDrop(
        Command::new(python())
            .args(["-c", INTRUDER, &addr, stop.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    let ready = stop.with_extension("ready");
    wait_until("the intruder to attach", Duration::from_secs(10), || {
        ready.exists().then_some(())
    });
    let st = wait_until(
        "status to name the intruder",
        Duration::from_secs(10),
        || {
            let st = bgd.status();
            let alerts = st["socket_alerts"].to_string();
            alerts
                .contains(&format!("pid {}", intruder.0.id()))
                .then_some(st)
        },
    );
    assert!(
        st["socket_alerts"]
            .to_string()
            .contains("another process listens"),
        "{st}"
    );
    let text_status = text(&bgd.bgctl(&["status"]).stdout);
    assert!(text_status.contains("ALERT"), "{text_status}");
    // bgd's program is attached again: every new connection reaches green.
    wait_until(
        "the steering to be repaired",
        Duration::from_secs(10),
        || all_served(&addr, 20, 2).ok(),
    );
    std::fs::write(&stop, "").unwrap();
    intruder.0.wait().unwrap();
    wait_until("the alert to go", Duration::from_secs(10), || {
        bgd.status()["socket_alerts"].is_null().then_some(())
    });
    all_served(&addr, 20, 2).unwrap();
    assert!(
        bgd.log().contains("another process listens"),
        "{}",
        bgd.log()
    );
    // A release after all this steers as it should.
    bgd.release(&example_build(bgd.dir.path(), "b3", "v3"));
    all_served(&addr, 20, 3).unwrap();
}

/// Wraps the example's own SIGTERM handler so that the draining app first
/// shuts down the listener it inherited (fd 3): `shutdown(SHUT_RDWR)`.
const SHUTS_DOWN_ITS_SOCKET: &str = r#"
import os, signal, socket
_set = signal.signal
def _hook(sig, handler):
    if sig == signal.SIGTERM and callable(handler):
        def both(s, f):
            try:
                socket.socket(fileno=os.dup(3)).shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            handler(s, f)
        return _set(sig, both)
    return _set(sig, handler)
signal.signal = _hook
"#;

/// The named case: a build whose drain shuts down its listener. The next
/// release into that color gets a fresh socket (no "cannot listen"), goes
/// live and serves; so does the one after it, and after a restart of bgd.
/// Under load, not one request fails.
#[test]
fn an_app_that_shuts_down_its_socket_does_not_break_its_color() {
    let mut bgd = Bgd::start(Setup {
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    let dir = bgd.dir.path().to_path_buf();
    let closer = |name: &str, v: &str| wrapped_build(&dir, name, v, SHUTS_DOWN_ITS_SOCKET);
    bgd.release(&closer("c1", "v1"));
    let addr = bgd.addr();
    let load = Load::start(&addr, 4, 4);
    bgd.release(&closer("c2", "v2")); // blue drains: it shuts its socket down
    bgd.release(&closer("c3", "v3")); // into blue again
    all_served(&addr, 10, 3).unwrap();
    bgd.release(&closer("c4", "v4")); // green's socket was shut down too
    all_served(&addr, 10, 4).unwrap();
    assert!(bgd.log().contains("no longer listened"), "{}", bgd.log());
    load.finish_clean();
    // A restart of bgd: green (live) is adopted; blue's socket, shut down
    // by its last app, is the one the next release gets a fresh copy of.
    bgd.stop(libc::SIGKILL);
    bgd.respawn_on(&addr);
    let load = Load::start(&addr, 4, 4);
    bgd.release(&example_build(&dir, "b5", "v5"));
    all_served(&addr, 30, 5).unwrap();
    load.finish_clean();
}

/// Writes how fd 3 looks to the new app before anything touches it:
/// blocking or not, and its backlog (`tcpi_sacked` of TCP_INFO), into
/// `inherited.txt`; then sets the backlog to 16 (listen() again), as an
/// app may. The example server then makes the socket non-blocking.
const REPORTS_AND_CHANGES_ITS_SOCKET: &str = r#"
import os, socket, struct
s = socket.socket(fileno=os.dup(3))
info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
backlog = struct.unpack_from("I", info, 28)[0]
open("inherited.txt", "w").write(f"blocking={os.get_blocking(3)} backlog={backlog}\n")
s.listen(16)
"#;

/// Another change to the inherited socket: its backlog (listen() again)
/// and O_NONBLOCK (the example server sets it, as many do). Before the
/// color starts again bgd puts back what the config says (backlog = 64,
/// blocking); the app that changed them never saw bgd touch them.
#[test]
fn a_changed_backlog_and_o_nonblock_are_put_back_before_the_color_starts() {
    let bgd = Bgd::start(Setup {
        tail: NO_STANDBY.into(),
        http_extra: "backlog = 64",
        ..Setup::default()
    });
    let dir = bgd.dir.path().to_path_buf();
    let build = |name: &str, v: &str| wrapped_build(&dir, name, v, REPORTS_AND_CHANGES_ITS_SOCKET);
    bgd.release(&build("b1", "v1"));
    let addr = bgd.addr();
    // New connections only: a backlog of 2 under keep-alive load is not
    // what this test is about.
    let load = Load::start(&addr, 0, 8);
    let seen = |color: &str| {
        std::fs::read_to_string(bgd.root().join(color).join("inherited.txt")).unwrap()
    };
    assert_eq!(seen("blue"), "blocking=True backlog=64\n");
    bgd.release(&build("b2", "v2"));
    assert_eq!(seen("green"), "blocking=True backlog=64\n");
    bgd.release(&build("b3", "v3")); // blue again: b1 had changed both
    assert_eq!(seen("blue"), "blocking=True backlog=64\n");
    all_served(&addr, 10, 3).unwrap();
    load.finish_clean();
    assert!(bgd.log().contains("bgd put back 64"), "{}", bgd.log());
}

/// Same kind, across a pause and bgd's death: the live app shuts its
/// socket down as the pause stops it; bgd replaces that socket and gives
/// the pause's holder the fresh one (the holder kept the dead one before,
/// and a bgd started later took it back: a release into that color then
/// went nowhere). bgd is SIGKILLed, started again (still paused), the
/// release that ends the pause goes live, and so does the one after it,
/// into the color whose socket was shut down.
#[test]
fn a_socket_shut_down_during_a_pause_is_renewed_in_the_holder_too() {
    let mut bgd = Bgd::start(Setup {
        tail: NO_STANDBY.into(),
        ..Setup::default()
    });
    let dir = bgd.dir.path().to_path_buf();
    bgd.release(&wrapped_build(&dir, "c1", "v1", SHUTS_DOWN_ITS_SOCKET));
    let addr = bgd.addr();
    let out = bgd.bgctl(&["pause"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let record = bgd.root().join("run/hold.json");
    let holder = || std::fs::read_to_string(&record).unwrap_or_default();
    let first = holder();
    assert!(!first.is_empty(), "no holder record");
    wait_until(
        "the renewed socket in a new holder",
        Duration::from_secs(20),
        || (bgd.log().contains("no longer listened") && holder() != first).then_some(()),
    );
    bgd.stop(libc::SIGKILL);
    bgd.respawn_on(&addr);
    wait_until("the restarted bgd, paused", Duration::from_secs(20), || {
        (!bgd.status()["paused"].is_null()).then_some(())
    });
    bgd.release(&example_build(&dir, "b2", "v2"));
    all_served(&addr, 10, 2).unwrap();
    bgd.release(&example_build(&dir, "b3", "v3")); // into blue
    all_served(&addr, 10, 3).unwrap();
}
