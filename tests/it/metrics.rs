//! `[metrics] listen` and `bgctl events`: after a known history, a real
//! Prometheus parser reads exact values from `/metrics`, and a follower of
//! `bgctl events -f` saw the same history in order. Scrapers that stall or
//! send garbage do not get in the way of releases.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const EXITS_AT_ONCE: &str = "import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n";

/// Reads the exposition with the Python client library's parser (the
/// reference parser of the text format) and prints every sample as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value, fam.type])
print(json.dumps(out))
"#;

fn metrics_setup() -> Setup {
    Setup {
        tail: "[metrics]\nlisten = \"127.0.0.1:0\"\n".into(),
        ..Setup::default()
    }
}

/// `name{k="v",...}` -> value, as the parser read them.
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (code, body) = get(addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let mut py = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{body}",
        text(&out.stderr)
    );
    // promtool's lint too, where it is installed (CI installs it).
    if let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let lint = promtool.wait_with_output().unwrap();
        let said = text(&lint.stdout) + &text(&lint.stderr);
        assert!(lint.status.success() && said.is_empty(), "promtool: {said}");
    }
    let samples: Vec<(String, BTreeMap<String, String>, f64, String)> =
        serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|(name, labels, value, _)| {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            (format!("{name}{{{}}}", labels.join(",")), value)
        })
        .collect()
}

fn events(bgd: &Bgd) -> Vec<Value> {
    let out = bgd.bgctl(&["events", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The events without the steps, as `type` or `type:color`.
fn course(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] != "step")
        .map(|e| {
            let color = e.get("to").or(e.get("color")).and_then(|c| c.as_str());
            match color {
                Some(c) => format!("{}:{c}", e["type"].as_str().unwrap()),
                None => e["type"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

#[test]
fn metrics_and_events_tell_the_same_exact_history() {
    // The exact history of plain swaps (each old color drains at once).
    let bgd = Bgd::start(Setup {
        tail: format!("{}{NO_STANDBY}", metrics_setup().tail),
        ..Setup::default()
    });
    let maddr = bgd.status()["metrics"].as_str().unwrap().to_string();
    // Scrapers that never finish a request, open through everything below.
    let mut stalled = TcpStream::connect(&maddr).unwrap();
    let mut garbage = TcpStream::connect(&maddr).unwrap();
    garbage
        .write_all(b"\x16\x03\x01\x00\xa5\x01garbage\r\n")
        .unwrap();
    let opened = Instant::now();
    let mut follower = Command::new(BGCTL)
        .arg("--socket")
        .arg(bgd.socket())
        .args(["events", "-f", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let followed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines = std::io::BufReader::new(follower.stdout.take().unwrap());
    let sink = followed.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in lines.lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });

    let dir = bgd.dir.path();
    bgd.release(&example_build(dir, "b1", "v1"));
    bgd.release(&example_build(dir, "b2", "v2"));
    let back = bgd.bgctl(&["rollback"]);
    assert!(back.status.success(), "{}", text(&back.stderr));
    let bad = bgd.bgctl(&[
        "release",
        script_build(dir, "crash", EXITS_AT_ONCE).to_str().unwrap(),
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad.stderr));
    let pid = bgd.status()["blue"]["pid"].as_i64().unwrap();
    // SAFETY: kill(2) of the live app's pid, which bgd started for this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_until("blue to serve again", Duration::from_secs(20), || {
        let s = bgd.status();
        let blue = &s["blue"];
        (blue["state"] == "live" && blue["pid"].as_i64() != Some(pid)).then_some(())
    });
    let (code, body) = get(&bgd.addr(), "/").unwrap();
    assert_eq!((code, release_of(&body)), (200, Some(1)), "{body}");

    // The stream, kept and followed.
    let kept = events(&bgd);
    let want = [
        "release_began:blue",
        "ready:blue",
        "swapped:blue",
        "released:blue",
        "release_began:green",
        "ready:green",
        "swapped:green",
        "drained:blue",
        "released:green",
        "release_began:blue",
        "ready:blue",
        "swapped:blue",
        "drained:green",
        "rolled_back:blue",
        "release_began:green",
        "failed:green",
        "restarting:blue",
        "restarted:blue",
    ];
    assert_eq!(course(&kept), want, "{kept:#?}");
    let swapped: Vec<&Value> = kept.iter().filter(|e| e["type"] == "swapped").collect();
    let swaps: Vec<_> = swapped
        .iter()
        .map(|e| (e["release"].as_u64().unwrap(), e["from"].as_str()))
        .collect();
    assert_eq!(swaps, [(1, None), (2, Some("blue")), (1, Some("green"))]);
    let steps = |release: u64, kind: &str| -> Vec<String> {
        let begin = kept
            .iter()
            .position(|e| {
                e["type"] == "release_began" && e["release"] == release && e["kind"] == kind
            })
            .unwrap();
        kept[begin + 1..]
            .iter()
            .take_while(|e| {
                !["released", "failed", "rolled_back"].contains(&e["type"].as_str().unwrap())
            })
            .filter(|e| e["type"] == "step")
            .map(|e| e["step"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(steps(1, "release"), ["stage", "start", "wait_ready"]);
    assert_eq!(
        steps(2, "release"),
        ["stage", "start", "wait_ready", "drain"]
    );
    assert_eq!(steps(3, "release"), ["stage", "start", "wait_ready"]);
    // The rollback stages release 1 again from its kept copy.
    assert_eq!(
        steps(1, "rollback"),
        ["stage", "start", "wait_ready", "drain"]
    );
    let failed = kept.iter().find(|e| e["type"] == "failed").unwrap();
    assert_eq!(failed["step"], "wait_ready", "{failed}");
    assert!(
        kept.windows(2)
            .all(|w| w[0]["seq"].as_u64().unwrap() + 1 == w[1]["seq"].as_u64().unwrap()),
        "seq has a gap: {kept:#?}"
    );
    // The follower saw the same events, in the same order.
    wait_until(
        "the follower to print every event",
        Duration::from_secs(10),
        || (followed.lock().unwrap().len() >= kept.len()).then_some(()),
    );
    let _ = follower.kill();
    let _ = follower.wait();
    let followed: Vec<Value> = followed
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(followed, kept, "bgctl events -f saw another sequence");

    // Exact values, read by a real parser.
    let m = scrape(&maddr);
    let exact = [
        ("bgd_releases_total{result=\"ok\",trigger=\"bgctl\"}", 2.0),
        (
            "bgd_releases_total{result=\"failed\",trigger=\"bgctl\"}",
            1.0,
        ),
        ("bgd_releases_total{result=\"ok\",trigger=\"watch\"}", 0.0),
        (
            "bgd_releases_total{result=\"failed\",trigger=\"watch\"}",
            0.0,
        ),
        ("bgd_release_duration_seconds_count{result=\"ok\"}", 2.0),
        ("bgd_release_duration_seconds_count{result=\"failed\"}", 1.0),
        ("bgd_rollbacks_total{kind=\"manual\"}", 1.0),
        ("bgd_rollbacks_total{kind=\"automatic\"}", 0.0),
        ("bgd_app_restarts_total{color=\"blue\"}", 1.0),
        ("bgd_app_restarts_total{color=\"green\"}", 0.0),
        ("bgd_live{color=\"blue\"}", 1.0),
        ("bgd_live{color=\"green\"}", 0.0),
        ("bgd_traffic_share{color=\"blue\"}", 1.0),
        ("bgd_traffic_share{color=\"green\"}", 0.0),
        ("bgd_color_processes{color=\"blue\"}", 1.0),
        ("bgd_color_processes{color=\"green\"}", 0.0),
        ("bgd_color_memory_bytes{color=\"green\"}", 0.0),
        ("bgd_color_cpu_seconds_total{color=\"green\"}", 0.0),
    ];
    for (name, value) in exact {
        assert_eq!(m.get(name), Some(&value), "{name} in {m:#?}");
    }
    let version = m.keys().find(|k| k.starts_with("bgd_build_info{")).unwrap();
    assert!(version.contains("version=\"0.1.0 (commit "), "{version}");
    assert!(
        m["bgd_color_memory_bytes{color=\"blue\"}"] > 1_000_000.0,
        "{m:#?}"
    );
    assert!(m["bgd_color_cpu_seconds_total{color=\"blue\"}"] >= 0.0);
    // Each step's histogram counts the steps the ended events report, and
    // its sum is their time.
    let ended: Vec<&Value> = kept
        .iter()
        .filter(|e| ["released", "failed", "rolled_back"].contains(&e["type"].as_str().unwrap()))
        .collect();
    for step in [
        "validate",
        "stage",
        "prepare",
        "start",
        "wait_ready",
        "swap",
        "drain",
    ] {
        let took: Vec<f64> = ended
            .iter()
            .flat_map(|e| e["steps"].as_array().unwrap())
            .filter(|s| s["step"] == step)
            .map(|s| s["ms"].as_f64().unwrap() / 1000.0)
            .collect();
        let label = format!("{{step=\"{step}\"}}");
        assert_eq!(
            m[&format!("bgd_release_step_duration_seconds_count{label}")],
            took.len() as f64,
            "{step}"
        );
        let sum = m[&format!("bgd_release_step_duration_seconds_sum{label}")];
        assert!(
            (sum - took.iter().sum::<f64>()).abs() < 1e-9,
            "{step}: {sum} vs {took:?}"
        );
    }

    // The stalled scraper is cut at its deadline; the garbage one was answered.
    stalled
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert_eq!(
        stalled.read(&mut buf).unwrap(),
        0,
        "stalled scraper not closed"
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(9),
        "closed before its deadline"
    );
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
}

/// A scrape that is not `GET /metrics` gets a clear answer.
#[test]
fn other_paths_and_methods_are_refused() {
    let bgd = Bgd::start(metrics_setup());
    let maddr = bgd.status()["metrics"].as_str().unwrap().to_string();
    let (code, body) = get(&maddr, "/").unwrap();
    assert_eq!((code, body.as_str()), (404, "bgd serves GET /metrics\n"));
    let mut s = TcpStream::connect(&maddr).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    // Without [metrics], status names no address.
    let plain = Bgd::start(Setup::default());
    assert!(plain.status().get("metrics").is_none());
}

/// A bad `metrics.listen`, or one in use, stops bgd at start-up and the
/// message names the key.
#[test]
fn a_bad_or_busy_metrics_address_stops_bgd_at_start() {
    let mut bgd = Bgd::start(Setup::default());
    bgd.stop(libc::SIGTERM);
    let good = std::fs::read_to_string(&bgd.config).unwrap();
    let run = |listen: &str| {
        std::fs::write(
            &bgd.config,
            format!("{good}\n[metrics]\nlisten = \"{listen}\"\n"),
        )
        .unwrap();
        let mut cmd = Command::new(BGD);
        cmd.arg("--config").arg(&bgd.config);
        run_with_deadline(cmd, Duration::from_secs(20))
    };
    let out = run("localhost:9187");
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("bgd.toml:")
            && err.contains("metrics.listen \"localhost:9187\" is not an IP address and port"),
        "{err}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run(&addr);
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("metrics.listen = \"{addr}\": cannot listen there")),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
}
