//! `bgd --config FILE`: the daemon, in the foreground, logging to stderr.
//!
//! Exit codes: 0 stopped by SIGTERM/SIGINT; 1 failed while running (cannot
//! bind, cannot write root, ...); 2 bad arguments or bad config.
//! `--check` exits 0 on a good config, printing its warnings on stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use bgd::config::Config;
use bgd::spawn;

#[derive(Parser)]
#[command(
    version = bgd::VERSION,
    about = "Blue-green process supervisor: holds the sockets, runs blue and green, swaps them without a failed request"
)]
struct Args {
    /// The config file (TOML).
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
    /// Only validate the config, then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    // The exec trampoline must run before anything starts a thread.
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|a| a == spawn::TRAMPOLINE_ARG) {
        return ExitCode::from(spawn::trampoline(argv) as u8);
    }
    // SAFETY: no other thread exists yet.
    let inherited = unsafe { bgd::systemd::take_listen_fds() };
    spawn::cloexec_inherited_fds();
    let args = Args::parse();
    init_logging();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bgd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
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
