//! `bgd --config FILE`: the daemon, in the foreground, logging to stderr.
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT; 1 failed while running (cannot
//! bind, cannot write root, ...); 2 bad arguments or bad config.
//! `--check` exits 0 on a good config, printing its warnings on stderr.
//! `--man` and `--completions SHELL` print the man page and a completion
//! script (the Debian package is built with them).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use bgd::config::Config;
use bgd::ops::manpage::{self, Section};
use bgd::supervise::spawn;

#[derive(Parser)]
#[command(
    version = bgd::VERSION,
    about = "Blue-green process supervisor: holds the sockets, runs blue and green, swaps them without a failed request",
    long_about = "Blue-green process supervisor: holds the sockets, runs blue and green, swaps them without a failed request.\n\n\
        bgd binds the app's listening sockets once and holds them for its whole life, and runs the app from one of two \
        directories, blue and green. `bgctl release DIR` copies a build into the color that is not live, starts it, waits \
        until its health checks pass, steers new connections to it and drains the old color; a release that fails at any \
        step leaves the old color serving. Under systemd, bgd@NAME.service runs bgd with /etc/bgd/NAME.toml."
)]
struct Args {
    /// The config file (TOML).
    #[arg(
        short,
        long,
        value_name = "FILE",
        required_unless_present_any = ["man", "completions"]
    )]
    config: Option<PathBuf>,
    /// Only validate the config, then exit.
    #[arg(long)]
    check: bool,
    /// Print this man page (roff), then exit.
    #[arg(long, exclusive = true)]
    man: bool,
    /// Print a completion script for SHELL, then exit.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<clap_complete::Shell>,
}

/// The man page's sections after the options.
fn man_sections() -> Vec<Section> {
    vec![
    Section::new(
        "EXIT STATUS",
        "",
        &[
            ("0", "stopped by SIGTERM or SIGINT after draining the app; with --check, the config is valid"),
            ("1", "bgd cannot run: a port in use, another bgd on the same root, an unwritable root"),
            ("2", "bad arguments or a bad config; the message says where (file:line:col) and what to change"),
        ],
    ),
    Section::new(
        "SIGNALS",
        "",
        &[
            ("SIGTERM, SIGINT", "drain the live color (its stop_signal, then SIGKILL at drain_timeout) and exit 0; a second signal kills the app's process groups at once"),
            ("SIGUSR2", "re-execute the bgd binary now on disk in place (as `bgctl reexec`): it is checked with --check first; the pid and the app stay"),
            ("SIGHUP", "reload the config: the app's command, env, stop signal, drain, health checks and [watch] apply to the next start of a color; changes to [[listen]], root, control and name need a restart"),
        ],
    ),
    Section::new(
        "ENVIRONMENT",
        "",
        &[
            ("BGD_LOG", "what to log, as a tracing filter (default info; debug for more)"),
            ("NOTIFY_SOCKET, LISTEN_FDS, LISTEN_FDNAMES, WATCHDOG_USEC", "set by systemd: bgd reports READY=1, STATUS= and WATCHDOG=1, keeps its sockets in the fd store, and takes socket-activated sockets by name"),
        ],
    ),
    Section::new(
        "FILES",
        "",
        &[
            ("/etc/bgd/NAME.toml", "the config of bgd@NAME.service; /etc/bgd/example.toml.sample is an example"),
            ("/var/lib/bgd/NAME", "the root of bgd@NAME.service: blue/ and green/, live, state.json, history.json, the control socket bgd.sock"),
            ("/usr/share/doc/bgd/docs/", "the guide (how releases, auto-release, canaries, hooks and the traffic gate work), every config key (config.md), bgctl and its exit codes (cli.md), operations, metrics, the control protocol"),
        ],
    ),
    Section::new(
        "SEE ALSO",
        "bgctl(1), systemctl(1), systemd.socket(5)",
        &[],
    ),
    ]
}

fn main() -> ExitCode {
    // The exec trampoline must run before anything starts a thread.
    let mut argv = std::env::args_os();
    match argv.nth(1) {
        Some(a) if a == spawn::TRAMPOLINE_ARG => {
            return ExitCode::from(spawn::trampoline(argv) as u8)
        }
        // A color's relay (see relay.rs): it keeps its fds 3.. as they came.
        Some(a) if a == bgd::supervise::relay::RELAY_ARG => {
            return ExitCode::from(bgd::supervise::relay::main() as u8)
        }
        // A pause's holder (see hold.rs): it keeps its fds 3.. as they came.
        Some(a) if a == bgd::supervise::hold::HOLD_ARG => {
            return ExitCode::from(bgd::supervise::hold::main() as u8)
        }
        _ => {}
    }
    // SAFETY: no other thread exists yet.
    let inherited = unsafe { bgd::net::fdstore::take_listen_fds() };
    spawn::cloexec_inherited_fds();
    let args = Args::parse();
    if args.man {
        return print_man_page();
    }
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut Args::command(), "bgd", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let file = args
        .config
        .expect("clap requires --config unless --man or --completions is given");
    init_logging();
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bgd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        // The programs, as a start of the live color would find them.
        let build = bgd::pipeline::runnable::live_build(&config.fixed.root);
        if let Err(e) = bgd::pipeline::runnable::check(&config, build.as_deref()) {
            eprintln!("bgd: {e}");
            return ExitCode::from(2);
        }
        for w in &config.warnings {
            eprintln!("warning: {w}");
        }
        println!("{}: ok", config.file.display());
        return ExitCode::SUCCESS;
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // One runtime thread: every child is spawned from it, so PDEATHSIG (tied
    // to the spawning thread) fires exactly when bgd exits. Blocking work
    // such as copying a build runs on tokio's blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bgd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bgd::daemon::run(config, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bgd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_man_page() -> ExitCode {
    match manpage::render(Args::command(), &man_sections(), &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bgd: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `BGD_LOG` takes a tracing filter (default `info`). When
/// stderr is the journal (`JOURNAL_STREAM` names it), log to journald
/// directly, so fields such as the app's `color` stay structured; failing
/// that, log without timestamps, since the journal adds its own.
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BGD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            registry
                .with(journald.with_syslog_identifier("bgd".into()))
                .init();
            return;
        }
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false)
            .without_time();
        registry.with(fmt).init();
        return;
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    registry.with(fmt).init();
}

/// `JOURNAL_STREAM` is "DEV:INODE" of the journal's stream; it counts only
/// if stderr is still that stream (not redirected since).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let stderr = std::fs::metadata("/proc/self/fd/2");
    stderr.is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}
