//! What a color inherits: the systemd socket-activation protocol, exactly.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

/// Writes what the process inherited to the file named by argv[1], then
/// execs the example server (same pid, so LISTEN_PID still matches).
const REPORT: &str = r#"
import json, os, socket, sys
fds = {}
for fd in range(64):
    try:
        os.fstat(fd)
    except OSError:
        continue
    info = {"link": os.readlink(f"/proc/self/fd/{fd}")}
    if os.path.exists(f"/proc/self/fd/{fd}") and os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
        s = socket.socket(fileno=os.dup(fd))
        info.update(family=s.family.name, type=s.type.name, addr=str(s.getsockname()),
                    listening=bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)))
        s.close()
    fds[fd] = info
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
report = {
    "pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(), "fds": fds,
    "env": {k: v for k, v in os.environ.items() if k.startswith(("LISTEN_", "BG_", "NOTIFY_", "WATCHDOG_"))},
    "sig_ignored": status["SigIgn"].strip(), "sig_blocked": status["SigBlk"].strip(),
}
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump(report, f)
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
os.execv(sys.executable, [sys.executable, "server.py"])
"#;

/// Gate mode (the default): one socket per `[[listen]]`, the color's own;
/// the Unix one is bound at the color's private name beside the public path.
#[test]
fn child_gets_listen_fds_its_own_pid_and_clean_signals() {
    check_inheritance(false);
}

/// Shared mode: the same sockets for both colors, plus the private probe
/// socket for `health.http`.
#[test]
fn in_shared_mode_the_child_also_gets_the_probe_socket() {
    check_inheritance(true);
}

fn check_inheritance(shared: bool) {
    let report =
        std::env::temp_dir().join(format!("bgd-inherit-{}-{shared}.json", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let mut bgd = Bgd::start(Setup {
        command: format!(
            "[\"{}\", \"report.py\", \"{}\"]",
            python(),
            report.display()
        ),
        extra_listen: "[[listen]]\nname = \"unix\"\naddress = \"unix:app.sock\"\n".into(),
        tail: if shared {
            "[traffic]\nmode = \"shared\"\n".into()
        } else {
            String::new()
        },
        ..Setup::default()
    });
    // Restart bgd the way a shell starts a background job: SIGINT and SIGQUIT
    // ignored, and with systemd variables of its own that must not leak.
    bgd.stop(libc::SIGTERM);
    bgd.spawn(|cmd| {
        cmd.env("NOTIFY_SOCKET", "/run/nowhere")
            .env("WATCHDOG_USEC", "1000000")
            .env("WATCHDOG_PID", "1");
        // SAFETY: signal(2) between fork and exec is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    let build = example_build(bgd.dir.path(), "b1", "v1");
    std::fs::write(build.join("report.py"), REPORT).unwrap();
    bgd.release(&build);

    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    let pid = r["pid"].as_u64().unwrap();
    let env = &r["env"];
    assert_eq!(
        env["LISTEN_PID"],
        pid.to_string(),
        "LISTEN_PID must be the app's own pid: {r}"
    );
    let (count, names) = if shared {
        ("3", "http:unix:probe")
    } else {
        ("2", "http:unix")
    };
    assert_eq!(env["LISTEN_FDS"], count, "{r}");
    assert_eq!(env["LISTEN_FDNAMES"], names, "{r}");
    assert_eq!(env["BG_COLOR"], "blue", "{r}");
    assert_eq!(env["BG_RELEASE"], "1", "{r}");
    for leaked in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(
            env.get(leaked).is_none(),
            "{leaked} leaked into the app: {r}"
        );
    }
    assert_eq!(
        r["pgid"], r["pid"],
        "the app leads its own process group: {r}"
    );
    // Python ignores SIGPIPE and SIGXFSZ itself; SIGINT (bit 1) and SIGQUIT
    // (bit 2) are ignored only if inherited so, and then Python keeps them.
    let ignored = u64::from_str_radix(r["sig_ignored"].as_str().unwrap(), 16).unwrap();
    assert_eq!(ignored & 0b110, 0, "SIGINT/SIGQUIT ignored in the app: {r}");
    assert_eq!(
        r["sig_blocked"], "0000000000000000",
        "blocked signals leaked into the app: {r}"
    );
    assert_eq!(r["cwd"], bgd.root().join("blue").display().to_string());

    // Exactly stdin, stdout, stderr and the sockets, in order.
    let fds: Vec<&String> = r["fds"].as_object().unwrap().keys().collect();
    let sockets: &[&str] = if shared {
        &["3", "4", "5"]
    } else {
        &["3", "4"]
    };
    assert_eq!(fds[..3], ["0", "1", "2"], "{r}");
    assert_eq!(fds[3..], *sockets, "{r}");
    let fd = |n: &str| &r["fds"][n];
    let http = bgd.addr();
    let (host, port) = http.rsplit_once(':').unwrap();
    assert_eq!(fd("3")["addr"], format!("('{host}', {port})"), "{r}");
    assert_eq!(fd("4")["family"], "AF_UNIX");
    let unix_name = if shared { "app.sock" } else { ".app.sock.blue" };
    assert_eq!(
        fd("4")["addr"],
        bgd.dir.path().join(unix_name).display().to_string()
    );
    if shared {
        let probe = env["BG_PROBE_ADDR"].as_str().unwrap();
        let (phost, pport) = probe.rsplit_once(':').unwrap();
        assert_eq!(fd("5")["addr"], format!("('{phost}', {pport})"), "{r}");
    } else {
        assert!(env.get("BG_PROBE_ADDR").is_none(), "{r}");
    }
    for n in sockets {
        assert_eq!(fd(n)["type"], "SOCK_STREAM", "{r}");
        assert_eq!(fd(n)["listening"], true, "{r}");
    }

    // The app serves both public sockets.
    assert!(get(&http, "/").unwrap().1.starts_with("hello from v1"));
    let mut unix =
        std::os::unix::net::UnixStream::connect(bgd.dir.path().join("app.sock")).unwrap();
    unix.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    unix.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    unix.read_to_string(&mut resp).unwrap();
    assert!(resp.contains("hello from v1"), "{resp}");
}
