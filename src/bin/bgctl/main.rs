//! `bgctl`: one request to bgd over its control socket; prints the progress
//! and the answer, and exits with a code that says what happened
//! (`bgd::ops::exit::Code`, the one table; the man page's EXIT STATUS and
//! `docs/cli.md` show it).

mod show;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use bgd::color::Color;
use bgd::ops::exit::Code;
use bgd::ops::manpage::{self, Section};
use bgd::ops::protocol::{self, Done, Reply, Request};

#[derive(Parser)]
#[command(
    name = "bgctl",
    version = bgd::VERSION,
    about = "Control a running bgd: release, preview, compare, rollback, status, history, logs, events",
    long_about = "Control a running bgd: release, preview, compare, rollback, status, history, logs, events.\n\n\
        bgctl sends one request to bgd over its control socket, prints the progress and the answer, and exits with a \
        code that says what happened (see EXIT STATUS)."
)]
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
        /// A label shown in status and history, such as a version or commit.
        #[arg(long)]
        label: Option<String>,
        /// Return once bgd has started the release; `bgctl status` shows how it goes.
        #[arg(long, conflicts_with = "wait_bake")]
        no_wait: bool,
        /// Once ready, give the new build PERCENT (1-99) of new connections beside the live
        /// one, until `bgctl promote` or `bgctl abort`.
        #[arg(long, value_name = "PERCENT", value_parser = canary_percent)]
        canary: Option<u8>,
        /// Once ready, only the clients in `traffic.testers` reach the new build; everyone else
        /// stays on the live one, until `bgctl promote [PERCENT]` or `bgctl abort`.
        #[arg(long)]
        preview: bool,
        /// Return only once the new build passed its bake window (and its canary steps):
        /// exit 8 if bgd rolled it back instead.
        #[arg(long)]
        wait_bake: bool,
    },
    /// Make a preview a canary of PERCENT, raise a canary's share to PERCENT, or make either live
    /// (no PERCENT, or 100).
    Promote {
        #[arg(value_name = "PERCENT", value_parser = promote_percent)]
        percent: Option<u8>,
    },
    /// Give the canary (or preview) no more new connections and drain it.
    Abort,
    /// Hold new connections in the kernel and stop the app, for database work; returns once no
    /// app process runs. `bgctl release DIR` or `bgctl resume` ends the pause.
    Pause {
        /// Once the pause has lasted this long (30s, 5m), start the maintenance page
        /// (--page DIR, else `[pause] page`), or warn if there is none.
        #[arg(long, value_name = "DURATION", value_parser = max_duration)]
        max: Option<std::time::Duration>,
        /// The maintenance page build (run with the app's [app] command). During a pause,
        /// `--page DIR` alone starts it at once.
        #[arg(long, value_name = "DIR")]
        page: Option<PathBuf>,
    },
    /// End a pause with the build that was live before it, started from its kept copy.
    Resume,
    /// Ask PATHs (default: `compare.paths`) of the live build and of the one beside it (a
    /// preview, canary or standby), several times each, and show the answers side by side:
    /// exit 9 if a status differs.
    Compare {
        /// Paths to GET, such as / or "/api/items?limit=5".
        #[arg(value_name = "PATH", value_parser = compare_path)]
        paths: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-execute bgd's binary from disk in place (an upgrade): same pid, the app keeps running.
    Reexec,
    /// Make an earlier build live again: the standby (a switch), else the previous good release,
    /// staged from its kept copy; `--to` names a kept release.
    Rollback {
        /// The kept release to go to, by id or label (`bgctl releases` lists them).
        #[arg(long, value_name = "ID|LABEL")]
        to: Option<String>,
        /// Return once bgd has started the rollback.
        #[arg(long)]
        no_wait: bool,
    },
    /// List the kept releases (id, label, source, fingerprint, size, when made, state) and the
    /// space they use.
    Releases {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the live color, each color's process and any release in progress.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the last releases, oldest first.
    History {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the apps' captured output (both colors, interleaved, unless --color).
    Logs {
        /// Only this color.
        #[arg(long, value_enum)]
        color: Option<ColorArg>,
        /// Lines to show before following.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show lifecycle events: releases, steps, swaps, drains, failures,
    /// rollbacks, restarts, reloads (the last 256, oldest first).
    Events {
        /// Keep printing new events as they happen, until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Pause or resume auto-release of the watched build directory.
    Watch {
        #[arg(value_enum)]
        action: WatchAction,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print bgctl's man page (roff).
    Man,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WatchAction {
    Pause,
    Resume,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ColorArg {
    Blue,
    Green,
}

/// Why bgctl stops before a good answer: the exit code and what to print.
type Fail = (Code, String);

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader goes away
    // (`bgctl logs -f | head`) instead of failing on EPIPE.
    // SAFETY: setting a signal disposition to its default, before any thread.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = Args::parse();
    match run(args) {
        Ok(code) => code.into(),
        Err((code, msg)) => {
            eprintln!("bgctl: {msg}");
            code.into()
        }
    }
}

/// How the final answer is printed.
#[derive(Clone, Copy, PartialEq)]
enum Print {
    Release,
    Status,
    Json,
    History,
    Releases,
    Logs { json: bool },
    Events { json: bool },
    Watch,
    Compare { json: bool },
}

/// One request to bgd, how its answer is printed, and whether to return as
/// soon as bgd has started it.
struct Ask {
    request: Request,
    print: Print,
    no_wait: bool,
}

impl Ask {
    /// A request whose answer is waited for.
    fn answer(request: Request, print: Print) -> Ask {
        Ask {
            request,
            print,
            no_wait: false,
        }
    }
}

fn run(args: Args) -> Result<Code, Fail> {
    let json_or = |json: bool, print: Print| if json { Print::Json } else { print };
    let ask = match args.command {
        Command::Completions { shell } => return completions(shell),
        Command::Man => return man_page(),
        Command::Release {
            dir,
            label,
            no_wait,
            canary,
            preview,
            wait_bake,
        } => release(&dir, label, no_wait, (canary, preview), wait_bake)?,
        Command::Promote { percent } => Ask::answer(Request::Promote { percent }, Print::Release),
        Command::Abort => Ask::answer(Request::Abort, Print::Release),
        Command::Pause { max, page } => pause(max, page.as_deref())?,
        Command::Resume => Ask::answer(Request::Resume, Print::Release),
        Command::Compare { paths, json } => {
            Ask::answer(Request::Compare { paths }, Print::Compare { json })
        }
        Command::Reexec => {
            let socket = socket_path(&args.socket, args.config.as_deref())?;
            let before = instance(&socket);
            let code = converse(
                connect(&socket)?,
                Ask::answer(Request::Reexec, Print::Release),
            )?;
            return wait_for_bgd(&socket, before).map(|()| code);
        }
        Command::Rollback { to, no_wait } => Ask {
            request: Request::Rollback { to },
            print: Print::Release,
            no_wait,
        },
        Command::Releases { json } => {
            Ask::answer(Request::Releases, json_or(json, Print::Releases))
        }
        Command::Status { json } => Ask::answer(Request::Status, json_or(json, Print::Status)),
        Command::History { json } => Ask::answer(Request::History, json_or(json, Print::History)),
        Command::Logs {
            color,
            lines,
            follow,
            json,
        } => logs(color, lines, follow, json),
        Command::Events { follow, json } => {
            Ask::answer(Request::Events { follow }, Print::Events { json })
        }
        Command::Watch { action } => Ask::answer(
            Request::Watch {
                pause: matches!(action, WatchAction::Pause),
            },
            Print::Watch,
        ),
    };
    let socket = socket_path(&args.socket, args.config.as_deref())?;
    converse(connect(&socket)?, ask)
}

/// bgd's status `instance` and pid, if it answers.
fn instance(socket: &Path) -> Option<(u64, u64)> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.write_all(&protocol::encode(&Request::Status)).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    match protocol::decode_reply(line.as_bytes()).ok()? {
        Reply::Done {
            result: Done::Status(s),
        } => Some((s.instance, u64::from(s.pid))),
        _ => None,
    }
}

/// After `reexec`: waits (up to 30 s) until the new program answers (a
/// status `instance` other than `before`'s).
fn wait_for_bgd(socket: &Path, before: Option<(u64, u64)>) -> Result<(), Fail> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut wait = std::time::Duration::from_millis(10);
    loop {
        if let Some((now, pid)) = instance(socket) {
            if before.is_none_or(|(b, _)| b != now) {
                println!("bgd answers again (pid {pid})");
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            return Err((
                Code::Unreachable,
                "bgd did not answer within 30 s of its reexec: see its log".into(),
            ));
        }
        std::thread::sleep(wait); // polling a restarting daemon, bounded above
        wait = (wait * 2).min(std::time::Duration::from_millis(200));
    }
}

fn completions(shell: clap_complete::Shell) -> Result<Code, Fail> {
    clap_complete::generate(shell, &mut Args::command(), "bgctl", &mut std::io::stdout());
    Ok(Code::Done)
}

/// The man page's sections after the subcommands: the exit codes from
/// their one table, then these.
fn man_sections() -> Vec<Section> {
    vec![
        Section::bgctl_exit_status(),
        Section::new(
            "ENVIRONMENT",
            "bgctl finds bgd through --socket, else BGCTL_SOCKET, else the control key of --config FILE, else of ./bgd.toml.",
            &[
                ("BGCTL_SOCKET", "bgd's control socket, when --socket is not given"),
                ("NO_COLOR", "when set, no colors even on a terminal"),
            ],
        ),
        Section::new(
            "EXAMPLES",
            "",
            &[
                ("bgctl -c /etc/bgd/hello.toml release /srv/hello/build-42 --label v42", "release a build to the app of bgd@hello.service"),
                ("bgctl -c /etc/bgd/hello.toml status", "the live color, each color's process, the last result"),
            ],
        ),
        Section::new("SEE ALSO", "bgd(1)", &[]),
    ]
}

fn man_page() -> Result<Code, Fail> {
    manpage::render(Args::command(), &man_sections(), &mut std::io::stdout())
        .map_err(|e| (Code::Internal, format!("cannot write the man page: {e}")))?;
    Ok(Code::Done)
}

/// `--canary`: 1 to 99 percent.
fn canary_percent(s: &str) -> Result<u8, String> {
    bgd::deploy::rollout::parse_percent(s, 99).map_err(|e| {
        format!("{e} (a canary shares with the live color; a plain release gives all)")
    })
}

/// `pause --max`: a number with a unit (`30s`, `5m`, `1h`).
fn max_duration(s: &str) -> Result<std::time::Duration, String> {
    if s.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "{s:?} has no unit: write a number with one, such as \"{s}s\" or \"{s}m\""
        ));
    }
    match humantime::parse_duration(s.trim()) {
        Ok(d) if d.is_zero() => Err("--max 0 would start the page at once: give a longer pause, or use `bgctl pause --page DIR` during a pause".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{s:?} is not a duration ({e}): write one such as \"30s\" or \"5m\"")),
    }
}

/// `pause [--max D] [--page DIR]`: bgd needs the page as an absolute path.
fn pause(max: Option<std::time::Duration>, page: Option<&Path>) -> Result<Ask, Fail> {
    let page = page
        .map(|p| {
            std::path::absolute(p).map_err(|e| {
                (
                    Code::BadRequest,
                    format!("cannot resolve {}: {e}", p.display()),
                )
            })
        })
        .transpose()?;
    Ok(Ask::answer(
        Request::Pause {
            max_ms: max.map(|d| d.as_millis() as u64),
            page: page.map(|p| p.display().to_string()),
        },
        Print::Release,
    ))
}

/// `promote PERCENT`: 1 to 100 percent.
fn promote_percent(s: &str) -> Result<u8, String> {
    bgd::deploy::rollout::parse_percent(s, 100)
}

/// `compare PATH`: absolute, as bgd will ask it.
fn compare_path(s: &str) -> Result<String, String> {
    bgd::deploy::compare::check_path(s).map(|()| s.to_string())
}

/// `release DIR`: bgd needs the directory as an absolute path.
fn release(
    dir: &Path,
    label: Option<String>,
    no_wait: bool,
    (canary, preview): (Option<u8>, bool),
    wait_bake: bool,
) -> Result<Ask, Fail> {
    if preview && canary.is_some() {
        return Err((Code::Usage, "--preview and --canary do not go together: --preview gives the new build to the testers alone; `bgctl promote PERCENT` then makes it a canary".into()));
    }
    let abs = std::path::absolute(dir).map_err(|e| {
        (
            Code::BadRequest,
            format!("cannot resolve {}: {e}", dir.display()),
        )
    })?;
    Ok(Ask {
        request: Request::Release {
            dir: abs.display().to_string(),
            label,
            canary,
            preview,
            wait_bake,
        },
        print: Print::Release,
        no_wait,
    })
}

fn logs(color: Option<ColorArg>, lines: usize, follow: bool, json: bool) -> Ask {
    let color = color.map(|c| match c {
        ColorArg::Blue => Color::Blue,
        ColorArg::Green => Color::Green,
    });
    Ask::answer(
        Request::Logs {
            color,
            lines,
            follow,
        },
        Print::Logs { json },
    )
}

fn connect(socket: &Path) -> Result<UnixStream, Fail> {
    UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ": is bgd running with this control socket?"
            }
            std::io::ErrorKind::PermissionDenied => ": run bgctl as bgd's user or as root",
            _ => "",
        };
        (
            Code::Unreachable,
            format!("cannot connect to {}: {e}{hint}", socket.display()),
        )
    })
}

/// Sends the request and prints the replies until the answer.
fn converse(mut stream: UnixStream, ask: Ask) -> Result<Code, Fail> {
    // bgd may answer (a refusal) and close before reading the request; the
    // answer is still there to read, so a failed write is reported only if
    // no answer follows.
    let sent = stream.write_all(&protocol::encode(&ask.request));
    let out = show::Out::new();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| {
            (
                Code::Unreachable,
                format!("lost the connection to bgd: {e}"),
            )
        })?;
        match protocol::decode_reply(line.as_bytes()).map_err(|e| (Code::Internal, e))? {
            Reply::Progress { step, message } => {
                out.progress(step, &message);
                if ask.no_wait {
                    println!("started; `bgctl status` shows how it goes");
                    return Ok(Code::Done);
                }
            }
            Reply::Log(l) => out.log_line(&l, matches!(ask.print, Print::Logs { json: true })),
            Reply::Lifecycle(e) => out.event(&e, matches!(ask.print, Print::Events { json: true })),
            Reply::Done { result } => return done(&out, ask.print, result),
            Reply::Error(f) => return Err((Code::of(f.kind), out.failure(&f))),
        }
    }
    let why = match sent {
        Err(e) => format!("cannot send the request to bgd: {e}"),
        Ok(()) => "bgd closed the connection without an answer; see its log".into(),
    };
    Err((Code::Unreachable, why))
}

/// Prints the answer as `print` asks; an answer of another shape than the
/// request's is bgd speaking another protocol.
fn done(out: &show::Out, print: Print, result: Done) -> Result<Code, Fail> {
    match (print, result) {
        (Print::Json, result) => println!(
            "{}",
            serde_json::to_string_pretty(&result).expect("protocol types serialize")
        ),
        (Print::Release, Done::Outcome(o)) => out.outcome(&o),
        (Print::Status | Print::Watch, Done::Status(s)) => out.status(&s),
        (Print::History, Done::History(records)) => out.history(&records),
        (Print::Releases, Done::Releases(listing)) => out.releases(&listing),
        (Print::Compare { json }, Done::Compare(c)) => {
            match json {
                true => println!(
                    "{}",
                    serde_json::to_string_pretty(&c).expect("protocol types serialize")
                ),
                false => out.compare(&c),
            }
            if c.status_differs() {
                return Ok(Code::Differs);
            }
        }
        (Print::Logs { .. } | Print::Events { .. }, _) => {}
        (_, other) => {
            let m = format!("bgd answered with something else than was asked: {other:?}; use a bgctl of the same release");
            return Err((Code::Internal, m));
        }
    }
    Ok(Code::Done)
}

/// `--socket`, then `BGCTL_SOCKET` (both via clap), then `--config`, then `./bgd.toml`.
fn socket_path(socket: &Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf, Fail> {
    if let Some(s) = socket {
        return Ok(s.clone());
    }
    let config = config.or_else(|| {
        let default = Path::new("bgd.toml");
        default.exists().then_some(default)
    });
    match config {
        Some(c) => bgd::config::control_path(c).map_err(|e| (Code::Usage, e.to_string())),
        None => Err((
            Code::Usage,
            "which bgd? pass --socket PATH, set BGCTL_SOCKET, or pass --config FILE (bgd's config)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli_md() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md"))
            .expect("docs/cli.md")
    }

    /// docs/cli.md has a heading for every verb bgctl takes, and none for a
    /// verb it does not.
    #[test]
    fn docs_cli_md_has_every_verb() {
        let text = cli_md();
        let verbs: Vec<String> = Args::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        for verb in &verbs {
            let heading = format!("### `bgctl {verb}`");
            assert!(
                text.lines().any(|l| l.starts_with(&heading)),
                "docs/cli.md has no {heading}"
            );
        }
        for line in text.lines().filter(|l| l.starts_with("### `bgctl ")) {
            let verb = line["### `bgctl ".len()..]
                .split(['`', ' '])
                .next()
                .unwrap_or("");
            assert!(
                verbs.iter().any(|v| v == verb),
                "docs/cli.md: {line} is no verb of bgctl"
            );
        }
    }

    /// docs/cli.md's exit code table is the one table, `ops::exit::Code`,
    /// word for word, and nothing else.
    #[test]
    fn docs_cli_md_lists_the_exit_codes_as_the_enum_says() {
        let text = cli_md();
        let table: Vec<&str> = text
            .split("## Exit codes")
            .nth(1)
            .expect("docs/cli.md has no `## Exit codes`")
            .lines()
            .skip_while(|l| !l.starts_with("| 0 |"))
            .take_while(|l| l.starts_with('|'))
            .collect();
        let want: Vec<String> = Code::ALL
            .iter()
            .map(|c| format!("| {} | {} |", c.number(), c.meaning()))
            .collect();
        assert_eq!(
            table, want,
            "docs/cli.md's exit codes differ from ops::exit::Code"
        );
    }
}
