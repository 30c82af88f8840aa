//! A task that brings a color up: stage (for a new build), run the prepare
//! hooks, start, wait until ready. It runs beside the daemon's loop so the
//! daemon keeps answering while it works; it reports each step as a
//! [`Message`] and ends with [`TaskReport::Prepared`]. It never touches the
//! live color or the state: the deployment core commits the swap and drains
//! the old color. Releases, rollbacks and restarts all run through here;
//! the last two stage nothing.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::deploy::state::Build;
use crate::deploy::{Failed, Launch, Timings};
use crate::deploy::{Failure, FailureKind, Step, TaskReport};
use crate::pipeline::health;
use crate::pipeline::stage::{self, StageError};
use crate::supervise::process::AppProcess;
use crate::{Ctx, Sink};

/// What a task reports (the core's own type: the daemon passes it on).
pub type Message = TaskReport<AppProcess>;

/// How long a new color that failed its readiness check gets to finish the
/// requests it already accepted from the shared socket, before SIGKILL.
const FAILED_GRACE: Duration = Duration::from_secs(5);

/// Carries out `plan` and sends [`TaskReport::Prepared`] with a ready color
/// or why not. `cancel`, once set, stops staging before it swaps anything
/// into place. A failed color's whole process group is gone before this
/// returns.
pub async fn run(ctx: Arc<Ctx>, plan: Launch, cancel: Arc<AtomicBool>, events: Sink<Message>) {
    let result = prepare(&ctx, &plan, &cancel, &events).await;
    events(TaskReport::Prepared {
        task: plan.task,
        result,
    });
}

fn failed(kind: FailureKind, step: Step, message: impl Into<String>) -> Failed {
    Failed {
        failure: Failure::new(kind, Some(step), message),
        exit: None,
    }
}

async fn prepare(
    ctx: &Ctx,
    plan: &Launch,
    cancel: &Arc<AtomicBool>,
    events: &Sink<Message>,
) -> Result<(AppProcess, Timings), Failed> {
    let progress = |step: Step, message: String| {
        events(TaskReport::Progress {
            task: plan.task,
            step,
            message,
        });
    };
    let mut timings = Timings::default();
    let dir = crate::store::layout::color_dir(&ctx.config.fixed.root, plan.color);
    if let Some(source) = &plan.source {
        timings.stage_ms = stage_build(ctx, plan, source, cancel, events).await?;
        run_prepare_hooks(ctx, plan, &dir, &progress).await?;
    } else if let Some(build) = &plan.kept {
        timings.stage_ms = stage_kept(ctx, plan, build, cancel, events).await?;
        // The kept copy is the build as released, before its hooks ran: a
        // fresh directory needs them again.
        run_prepare_hooks(ctx, plan, &dir, &progress).await?;
    } else if !dir.is_dir() {
        let m = format!(
            "{} does not exist: nothing to start for {}",
            dir.display(),
            plan.color
        );
        return Err(failed(FailureKind::BadRequest, Step::Start, m));
    }

    progress(
        Step::Start,
        format!("starting {} (release {})", plan.color, plan.release),
    );
    let t = Instant::now();
    ctx.listeners.ensure_listening(plan.color).map_err(|e| {
        let m = format!("cannot listen on the app's sockets: {e}");
        failed(FailureKind::Internal, Step::Start, m)
    })?;
    let app = AppProcess::start(ctx, plan.color, plan.release, &dir)
        .map_err(|e| failed(FailureKind::App, Step::Start, format!("{e:#}")))?;
    timings.start_ms = t.elapsed().as_millis() as u64;

    progress(
        Step::WaitReady,
        format!("waiting for {} (pid {}) to be ready", plan.color, app.pid),
    );
    let t = Instant::now();
    let mut outcome = wait_ready(ctx, plan, &app, &dir).await;
    ctx.listeners.clear_probe(plan.color);
    if outcome.is_ok() {
        outcome = still_running(ctx, &app).await;
    }
    timings.ready_ms = t.elapsed().as_millis() as u64;
    match outcome {
        Ok(()) => Ok((app, timings)),
        Err(message) => {
            let message = message + &own_listeners(ctx, &app).await;
            // It may have accepted live connections from the shared socket:
            // let it finish them with its stop signal, briefly, then SIGKILL.
            let grace = ctx.config.app.drain_timeout.min(FAILED_GRACE);
            let (exit, _) = app.stop(ctx.config.app.stop_signal, grace).await;
            let mut f = failed(FailureKind::App, Step::WaitReady, message);
            f.failure.log_tail = app.log_tail().await;
            f.exit = Some(exit);
            Err(f)
        }
    }
}

/// Ready, but is its main process still there? Looked at in /proc at this
/// moment, not only through the exit event (which may be on its way): a
/// daemonizing server's orphan answers the checks after its main process
/// exited. `Err` says so, with how many of its processes ran on.
async fn still_running(ctx: &Ctx, app: &AppProcess) -> Result<(), String> {
    if app.exit_status().is_none() && crate::supervise::process::leader_runs(app.pid) {
        return Ok(());
    }
    // A zombie is reaped at once: its status is a moment away.
    let exit = tokio::time::timeout(Duration::from_millis(500), app.exited())
        .await
        .unwrap_or(crate::deploy::Exit::Unknown);
    let strays = strays(ctx, app);
    Err(crate::deploy::daemonized(
        app.color,
        app.pid.as_raw(),
        exit,
        Some(strays),
    ))
}

/// When `app`'s processes listen on a TCP socket that is not one of bgd's,
/// the app ignored the sockets it inherited: says so, and what usually
/// causes it. Empty otherwise. Reads /proc on the blocking pool.
async fn own_listeners(ctx: &Ctx, app: &AppProcess) -> String {
    let (pgid, ours) = (app.pid.as_raw(), ctx.listeners.inodes());
    let found = tokio::task::spawn_blocking(move || {
        let table = crate::net::conns::sockets(&[crate::net::conns::TcpState::Listen]).ok()?;
        let group = crate::net::conns::group_socket_inodes(pgid).unwrap_or_default();
        Some(crate::net::conns::foreign_listeners(&table, &group, &ours))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    if found.is_empty() {
        return String::new();
    }
    let addrs: Vec<String> = found.iter().map(|a| a.to_string()).collect();
    format!(
        "; {} listens on {} itself, which is not one of bgd's sockets: the app ignored the sockets it was given (LISTEN_FDS). \
         LISTEN_PID names the pid bgd started, so a wrapper that starts the server without `exec` (or a shim that forks) hides them: \
         use `exec` in the wrapper, or make the server read LISTEN_FDS",
        app.color,
        addrs.join(", ")
    )
}

/// Validates and copies `source` into the color; returns how long the copy
/// took, in milliseconds.
async fn stage_build(
    ctx: &Ctx,
    plan: &Launch,
    source: &std::path::Path,
    cancel: &Arc<AtomicBool>,
    events: &Sink<Message>,
) -> Result<u64, Failed> {
    let progress = |message: String| {
        events(TaskReport::Progress {
            task: plan.task,
            step: Step::Stage,
            message,
        });
    };
    let root = &ctx.config.fixed.root;
    let source = stage::validate(source, root)
        .map_err(|m| failed(FailureKind::BadRequest, Step::Validate, m))?;
    let need = check_space(ctx, &source).await?;
    progress(format!(
        "copying {} into {} and keeping it as release {} (needs up to {})",
        source.display(),
        plan.color,
        plan.release,
        stage::mb(need.kept + need.color)
    ));
    let t = Instant::now();
    let copied = copy(ctx, plan, Some(&source), cancel, events).await?;
    let ms = t.elapsed().as_millis() as u64;
    events(TaskReport::Staged {
        task: plan.task,
        build: Build {
            release: plan.release,
            label: plan.label.clone(),
            source: source.display().to_string(),
            staged_at: crate::now_rfc3339(),
            went_live: false,
            fingerprint: Some(copied.fingerprint),
        },
    });
    progress(format!(
        "copied {} files, {:.1} MB in {ms} ms ({:.1} MB of it new to the kept releases)",
        copied.files,
        copied.bytes as f64 / 1e6,
        copied.kept_bytes as f64 / 1e6,
    ));
    Ok(ms)
}

/// Refuses a build the root's filesystem cannot hold, before anything is
/// copied (step validate); says what it needs.
async fn check_space(ctx: &Ctx, source: &std::path::Path) -> Result<stage::Need, Failed> {
    let (root, src, hardlink) = (
        ctx.config.fixed.root.clone(),
        source.to_path_buf(),
        ctx.config.hardlink,
    );
    tokio::task::spawn_blocking(move || stage::check_space(&root, &src, hardlink))
        .await
        .map_err(|e| {
            failed(
                FailureKind::Internal,
                Step::Validate,
                format!("sizing task failed: {e}"),
            )
        })?
        .map_err(|e| {
            let kind = match e {
                StageError::Refused(_) => FailureKind::BadRequest,
                _ => FailureKind::Stage,
            };
            failed(kind, Step::Validate, e.to_string())
        })
}

/// Stages a copy of the kept release `build` (a rollback to it); returns
/// how long it took, in milliseconds.
async fn stage_kept(
    ctx: &Ctx,
    plan: &Launch,
    build: &Build,
    cancel: &Arc<AtomicBool>,
    events: &Sink<Message>,
) -> Result<u64, Failed> {
    events(TaskReport::Progress {
        task: plan.task,
        step: Step::Stage,
        message: format!(
            "copying the kept release {} into {}",
            build.release, plan.color
        ),
    });
    let t = Instant::now();
    copy(ctx, plan, None, cancel, events).await?;
    events(TaskReport::Staged {
        task: plan.task,
        build: Build {
            staged_at: crate::now_rfc3339(),
            ..build.clone()
        },
    });
    Ok(t.elapsed().as_millis() as u64)
}

/// `hooks.prepare`, in the staged directory, before the app starts.
async fn run_prepare_hooks(
    ctx: &Ctx,
    plan: &Launch,
    dir: &std::path::Path,
    progress: &impl Fn(Step, String),
) -> Result<(), Failed> {
    let hooks = &ctx.config.hooks.prepare;
    if hooks.is_empty() {
        return Ok(());
    }
    progress(
        Step::Prepare,
        format!(
            "running {} prepare hook(s) in {}",
            hooks.len(),
            dir.display()
        ),
    );
    let env = crate::supervise::process::color_env(ctx, plan.color, plan.release);
    crate::pipeline::hooks::run(ctx, "prepare", hooks, dir, &env, |line| {
        progress(Step::Prepare, line.to_string())
    })
    .await
    .map_err(|f| {
        let mut failed = failed(FailureKind::App, Step::Prepare, f.message);
        failed.failure.log_tail = f.output;
        failed
    })
}

/// Waits until `app` passes its readiness check, exits, or runs out of
/// `health.timeout`; `Err` says which.
async fn wait_ready(
    ctx: &Ctx,
    plan: &Launch,
    app: &AppProcess,
    dir: &std::path::Path,
) -> Result<(), String> {
    let timeout = ctx.config.health.timeout;
    let last_check = Mutex::new(health::NotReady::default());
    tokio::select! {
        // An exit seen in the same poll as a passed check wins.
        biased;
        exit = app.exited() => Err(exited_early(ctx, app, exit)),
        r = health::wait_ready(ctx, app, dir, plan.release, &last_check) => r.map_err(|e| format!("{e:#}")),
        _ = tokio::time::sleep(timeout) => {
            let last = last_check.lock().expect("never held across a panic").clone();
            let limits = (timeout, ctx.config.health.attempt_timeout);
            Err(not_ready(plan, limits, &last, app.log_tail().await.last()))
        }
    }
}

/// How many processes of `app`'s color run besides its main process.
fn strays(ctx: &Ctx, app: &AppProcess) -> usize {
    let members = ctx.contain.members(app.color, app.pid);
    members.into_iter().filter(|p| *p != app.pid).count()
}

/// Why a color whose main process exited during the readiness wait
/// failed; when others of its processes run on, it daemonized.
fn exited_early(ctx: &Ctx, app: &AppProcess, exit: crate::deploy::Exit) -> String {
    let strays = strays(ctx, app);
    let m = format!("{} exited during the readiness wait ({exit})", app.color);
    match strays {
        0 => m,
        n => format!(
            "{m}; {}",
            crate::deploy::daemonized(app.color, app.pid.as_raw(), exit, Some(n))
        ),
    }
}

/// Why a color that did not become ready in time failed: what the last
/// check saw and, when the app never answered, its last line and a hint.
fn not_ready(
    plan: &Launch,
    (timeout, attempt): (Duration, Duration),
    last: &health::NotReady,
    last_line: Option<&String>,
) -> String {
    let mut m = format!(
        "{} was not ready within health.timeout ({})",
        plan.color,
        humantime::format_duration(timeout)
    );
    if *last != health::NotReady::Nothing {
        m += &format!(" (last check: {last})");
    }
    m += ": it was stopped";
    if last.unanswered() {
        if let Some(line) = last_line {
            m += &format!("; its last line was {line:?}");
        }
        m += "; if it was still starting, raise health.timeout";
    }
    if let health::NotReady::Cut {
        key: "health.attempt_timeout",
        ..
    } = last
    {
        // Each attempt was cut: a longer wait alone would only cut more.
        m += &format!(
            "; if it answers, but slower than {}, raise health.attempt_timeout (how long one attempt may take)",
            humantime::format_duration(attempt)
        );
    }
    m
}

/// Stages `source` (or, with `None`, the kept release `plan.release`) on a
/// blocking thread.
async fn copy(
    ctx: &Ctx,
    plan: &Launch,
    source: Option<&std::path::Path>,
    cancel: &Arc<AtomicBool>,
    events: &Sink<Message>,
) -> Result<stage::Copied, Failed> {
    let (events, task) = (events.clone(), plan.task);
    let watch = ctx.config.watch.as_ref();
    let opts = stage::Options {
        owner: ctx
            .config
            .app
            .identity
            .as_ref()
            .map(|i| (i.uid.as_raw(), i.gid.as_raw())),
        ignore: watch
            .map(|w| w.ignore.clone())
            .unwrap_or_else(globset::GlobSet::empty),
        marker: watch.and_then(|w| w.marker.clone()),
        expect: plan.expect.clone(),
        cancel: cancel.clone(),
        shared: ctx.config.shared.clone(),
        hardlink: ctx.config.hardlink,
        changing: false,
        progress: Some(Arc::new(move |files, bytes| {
            let message = format!("copied {files} files, {:.1} MB so far", bytes as f64 / 1e6);
            events(TaskReport::Progress {
                task,
                step: Step::Stage,
                message,
            });
        })),
    };
    let (root, src, color, id, release) = (
        ctx.config.fixed.root.clone(),
        source.map(|s| s.to_path_buf()),
        plan.color,
        plan.task,
        plan.release,
    );
    let staged = tokio::task::spawn_blocking(move || {
        let staged = match &src {
            Some(src) => stage::stage(&root, src, color, id, &opts),
            None => stage::stage_kept(&root, release, color, id, &opts),
        };
        if staged.is_ok() {
            // The color's previous tree goes away off the release's path.
            std::thread::spawn(move || stage::remove_trash(&root, id));
        }
        staged
    })
    .await
    .map_err(|e| {
        let m = format!("staging task failed: {e}");
        failed(FailureKind::Internal, Step::Stage, m)
    })?;
    staged.map_err(|e| {
        let kind = match e {
            StageError::Refused(_) => FailureKind::BadRequest,
            StageError::Io(_) | StageError::NoSpace(_) => FailureKind::Stage,
            StageError::Changed(_) => FailureKind::Changed,
            StageError::Aborted => FailureKind::Busy,
        };
        let m = match &e {
            StageError::Changed(_) => changed(&e, plan.expect.is_some()),
            _ => format!("cannot stage the build: {e}"),
        };
        failed(kind, Step::Stage, m)
    })
}

/// Why a copy of a build that changed while it was copied was thrown
/// away, and what to do: auto-release tries again once the tree settles;
/// a release by hand needs a build that holds still.
fn changed(e: &StageError, auto: bool) -> String {
    if auto {
        return format!("{e}; it is staged again after the next quiet period");
    }
    format!(
        "{e}: nothing was released (a copy of a build that is being written would mix old and new files). \
         Build into a new directory, then rename it into place (`mv build.new build`) or release that directory, and release again"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color::Color;
    use health::NotReady;

    fn said(last: NotReady) -> String {
        let plan = Launch {
            task: 1,
            color: Color::Green,
            source: None,
            kept: None,
            label: None,
            release: 2,
            expect: None,
        };
        let limits = (Duration::from_secs(30), Duration::from_secs(2));
        not_ready(&plan, limits, &last, Some(&"booting".to_string()))
    }

    /// The advice follows what the last check saw: an app that never
    /// answered may still be starting (health.timeout, with its last
    /// line); one whose answers were cut answers slower than one attempt
    /// may take (health.attempt_timeout); one that answered badly gets no
    /// advice about waiting.
    #[test]
    fn the_advice_names_the_key_that_helps() {
        let path = || "/healthz".to_string();
        let table = [
            (NotReady::Nothing, true, false),
            (NotReady::NoNotify, true, false),
            (
                NotReady::Failed {
                    path: path(),
                    error: "Connection refused".into(),
                    refused: true,
                },
                true,
                false,
            ),
            (
                NotReady::Cut {
                    path: path(),
                    limit: Duration::from_secs(2),
                    key: "health.attempt_timeout",
                },
                true,
                true,
            ),
            (
                NotReady::Answered {
                    path: path(),
                    code: 503,
                },
                false,
                false,
            ),
            (
                NotReady::Exec("health.exec \"./check\": exit code 1".into()),
                false,
                false,
            ),
        ];
        for (last, timeout, attempt) in table {
            let m = said(last.clone());
            assert!(
                m.starts_with("green was not ready within health.timeout (30s)"),
                "{m}"
            );
            assert_eq!(m.contains("raise health.timeout"), timeout, "{last:?}: {m}");
            assert_eq!(m.contains("its last line was \"booting\""), timeout, "{m}");
            assert_eq!(
                m.contains("raise health.attempt_timeout"),
                attempt,
                "{last:?}: {m}"
            );
            if last != NotReady::Nothing {
                assert!(m.contains(&format!("(last check: {last})")), "{m}");
            }
        }
    }
}
