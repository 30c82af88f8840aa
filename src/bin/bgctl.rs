//! `bgctl`: one request to bgd over its control socket; prints the progress
//! and the answer, and exits with a code that says what happened.
//!
//! Exit codes (also in the README):
//!   0 done: the requested build is live (or status was printed)
//!   1 the new color failed to start or become ready; the old one still serves
//!   2 bad arguments
//!   3 cannot reach bgd (no socket, permission denied, bgd not running)
//!   4 refused: another release is in progress, or bgd is stopping
//!   5 refused: bad request (no such build directory, nothing to roll back to)
//!   6 staging the build failed (copy error, disk full); the old color still serves
//!   7 bgd failed internally (could not write its state); see its log

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bgd::protocol::{self, Failure, Reply, Request, Status};

#[derive(Parser)]
#[command(version, about = "Control a running bgd: release, rollback, status")]
struct Args {
    /// bgd's control socket.
    #[arg(long, global = true, env = "BGCTL_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// bgd's config file; its `control` key names the socket.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stage DIR into the dormant color, start it, wait until ready, swap, drain the old color.
    Release {
        /// The build directory.
        dir: PathBuf,
        /// A label shown in status, such as a version or commit.
        #[arg(long)]
        label: Option<String>,
    },
    /// Make the previous color live again from its directory.
    Rollback,
    /// Pause or resume auto-release of the watched build directory.
    Watch {
        #[arg(value_enum)]
        action: WatchAction,
    },
    /// Show the live color, each color's process and any release in progress.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WatchAction {
    Pause,
    Resume,
}

const EXIT_UNREACHABLE: u8 = 3;
const EXIT_PROTOCOL: u8 = 7;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err((code, msg)) => {
            eprintln!("bgctl: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(args: Args) -> Result<u8, (u8, String)> {
    let socket = socket_path(&args)?;
    let (request, json) = match args.command {
        Command::Release { dir, label } => {
            let abs = std::path::absolute(&dir)
                .map_err(|e| (5, format!("cannot resolve {}: {e}", dir.display())))?;
            (
                Request::Release {
                    dir: abs.display().to_string(),
                    label,
                },
                false,
            )
        }
        Command::Rollback => (Request::Rollback, false),
        Command::Status { json } => (Request::Status, json),
        Command::Watch { action } => (
            Request::Watch {
                pause: matches!(action, WatchAction::Pause),
            },
            false,
        ),
    };
    let is_status = matches!(request, Request::Status | Request::Watch { .. });
    let mut stream = UnixStream::connect(&socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ": is bgd running with this control socket?"
            }
            std::io::ErrorKind::PermissionDenied => ": run bgctl as bgd's user or as root",
            _ => "",
        };
        (
            EXIT_UNREACHABLE,
            format!("cannot connect to {}: {e}{hint}", socket.display()),
        )
    })?;
    // bgd may answer (a refusal) and close before reading the request; the
    // answer is still there to read, so a failed write is reported only if
    // no answer follows.
    let sent = stream.write_all(&protocol::encode(&request));
    for line in BufReader::new(stream).lines() {
        let line =
            line.map_err(|e| (EXIT_UNREACHABLE, format!("lost the connection to bgd: {e}")))?;
        match protocol::decode_reply(line.as_bytes()).map_err(|e| (EXIT_PROTOCOL, e))? {
            Reply::Progress { step, message } => eprintln!("bgctl: [{step}] {message}"),
            Reply::Done { result } if is_status => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&result).expect("a JSON value prints")
                    );
                } else {
                    let status: Status = serde_json::from_value(result)
                        .map_err(|e| (EXIT_PROTOCOL, format!("bad status from bgd: {e}")))?;
                    print_status(&status);
                }
                return Ok(0);
            }
            Reply::Done { result } => {
                print_done(&result);
                return Ok(0);
            }
            Reply::Error(f) => return Err((f.kind.exit_code(), failure_text(&f))),
        }
    }
    let why = match sent {
        Err(e) => format!("cannot send the request to bgd: {e}"),
        Ok(()) => "bgd closed the connection without an answer; see its log".into(),
    };
    Err((EXIT_UNREACHABLE, why))
}

/// `--socket`, then `BGCTL_SOCKET` (both via clap), then `--config`.
fn socket_path(args: &Args) -> Result<PathBuf, (u8, String)> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    let config = args.config.as_deref().or_else(|| {
        let default = Path::new("bgd.toml");
        default.exists().then_some(default)
    });
    match config {
        Some(c) => bgd::config::Config::load(c)
            .map(|c| c.control)
            .map_err(|e| (2, e.to_string())),
        None => Err((
            2,
            "which bgd? pass --socket PATH, set BGCTL_SOCKET, or pass --config FILE (bgd's config)"
                .into(),
        )),
    }
}

fn failure_text(f: &Failure) -> String {
    let mut s = match f.step {
        Some(step) => format!("failed at step {step}: {}", f.message),
        None => f.message.clone(),
    };
    if !f.log_tail.is_empty() {
        s.push_str("\nlast output of the new color:");
        for l in &f.log_tail {
            s.push_str("\n  | ");
            s.push_str(l);
        }
    }
    s
}

fn print_done(result: &serde_json::Value) {
    let get = |k: &str| result.get(k).filter(|v| !v.is_null());
    let color = get("color").and_then(|v| v.as_str()).unwrap_or("?");
    let release = get("release")
        .map(|v| v.to_string())
        .unwrap_or_else(|| "?".into());
    let label = get("label")
        .and_then(|v| v.as_str())
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    let ms = result
        .pointer("/ms/total")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    println!("release {release}{label} is live on {color} ({ms} ms)");
}

fn print_status(s: &Status) {
    println!(
        "{}: live {}",
        s.name,
        s.live.map_or("none".to_string(), |c| c.to_string())
    );
    for (name, c) in [("blue", &s.blue), ("green", &s.green)] {
        let mut line = format!("  {name:<5} {:<10}", c.state);
        if let Some(pid) = c.pid {
            line += &format!(" pid {pid}");
        }
        if let Some(r) = c.release {
            line += &format!(" release {r}");
        }
        if let Some(l) = &c.label {
            line += &format!(" ({l})");
        }
        if let Some(since) = &c.since {
            line += &format!(" since {since}");
        }
        if c.restarts > 0 {
            line += &format!(" restarts {}", c.restarts);
        }
        if let Some(e) = &c.last_exit {
            line += &format!(" last exit: {e}");
        }
        println!("{line}");
    }
    if let Some(r) = &s.release_in_progress {
        println!(
            "  release {} to {} in progress: step {} since {}",
            r.id, r.color, r.step, r.since
        );
    }
    if let Some(r) = &s.last_result {
        println!("  last result: {r}");
    }
    if let Some(w) = &s.watch {
        println!("watch {} ({}): {}", w.path, w.mode, w.state);
        if let Some(t) = &w.last_event {
            println!("  last change: {t}");
        }
        if let Some(r) = &w.last_release {
            let outcome = if r.ok {
                "ok".to_string()
            } else {
                format!("failed at {}", r.step.map_or("?".into(), |s| s.to_string()))
            };
            println!(
                "  last auto-release: {} release {} {outcome}: {}",
                r.at, r.release, r.message
            );
        }
        if let Some(h) = &w.holding {
            println!("  holding: {h}");
        }
    }
}
