//! The steps that bring a color up: stage (for a new build), start, wait
//! until ready. Runs as its own task so the daemon keeps answering while it
//! works; it reports each step as an [`Event`] and ends with
//! [`Event::Prepared`]. It never touches the live color or the state: the
//! daemon commits the swap and drains the old color. Restarts of the live
//! color run through here too, with nothing to stage.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::color::Color;
use crate::daemon::Event;
use crate::process::AppProcess;
use crate::protocol::{Failure, FailureKind, Step};
use crate::stage::{self, StageError};
use crate::state::Build;
use crate::{health, Ctx};

/// What a release task does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: u64,
    /// The color that is started (the dormant one, except for a restart).
    pub color: Color,
    /// The build to copy in first; `None` starts what the color already holds.
    pub source: Option<PathBuf>,
    pub label: Option<String>,
    /// The release id the color's directory holds (for `BG_RELEASE`).
    pub release: u64,
    /// For an auto-release: the fingerprint the tree must still have.
    pub expect: Option<String>,
    /// Set by the daemon to abort staging before anything is swapped in.
    pub cancel: Arc<AtomicBool>,
}

/// Durations of the steps, in milliseconds, for the reply and benchmarks.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timings {
    pub stage_ms: u64,
    pub start_ms: u64,
    pub ready_ms: u64,
}

/// How long a new color that failed its readiness check gets to finish the
/// requests it already accepted from the shared socket, before SIGKILL.
const FAILED_GRACE: Duration = Duration::from_secs(5);

/// Runs the plan and sends [`Event::Prepared`] with a ready color or a
/// failure. A failed color's whole process group is gone before this returns.
pub async fn run(ctx: Arc<Ctx>, plan: Plan, events: UnboundedSender<Event>) {
    let result = prepare(&ctx, &plan, &events).await;
    let _ = events.send(Event::Prepared {
        id: plan.id,
        result,
    });
}

async fn prepare(
    ctx: &Ctx,
    plan: &Plan,
    events: &UnboundedSender<Event>,
) -> Result<(AppProcess, Timings), Failure> {
    let progress = |step: Step, message: String| {
        let _ = events.send(Event::Progress {
            id: plan.id,
            step,
            message,
        });
    };
    let mut timings = Timings::default();
    let dir = stage::color_dir(&ctx.config.fixed.root, plan.color);

    if let Some(source) = &plan.source {
        let source = stage::validate(source)
            .map_err(|m| Failure::new(FailureKind::BadRequest, Some(Step::Validate), m))?;
        progress(
            Step::Stage,
            format!("copying {} into {}", source.display(), plan.color),
        );
        let t = Instant::now();
        let copied = copy(ctx, plan, &source, events).await?;
        timings.stage_ms = t.elapsed().as_millis() as u64;
        let _ = events.send(Event::Staged {
            id: plan.id,
            color: plan.color,
            build: Build {
                release: plan.release,
                label: plan.label.clone(),
                source: source.display().to_string(),
                staged_at: crate::now_rfc3339(),
                went_live: false,
                fingerprint: Some(copied.fingerprint),
            },
        });
        progress(
            Step::Stage,
            format!(
                "copied {} files, {:.1} MB in {} ms",
                copied.files,
                copied.bytes as f64 / 1e6,
                timings.stage_ms
            ),
        );
    } else if !dir.is_dir() {
        return Err(Failure::new(
            FailureKind::BadRequest,
            Some(Step::Start),
            format!(
                "{} does not exist: nothing to start for {}",
                dir.display(),
                plan.color
            ),
        ));
    }

    if plan.source.is_some() && !ctx.config.hooks.prepare.is_empty() {
        let n = ctx.config.hooks.prepare.len();
        progress(
            Step::Prepare,
            format!("running {n} prepare hook(s) in {}", dir.display()),
        );
        let env = crate::process::color_env(ctx, plan.color, plan.release);
        crate::hooks::run(
            ctx,
            "prepare",
            &ctx.config.hooks.prepare,
            &dir,
            &env,
            |line| progress(Step::Prepare, line.to_string()),
        )
        .await
        .map_err(|f| {
            let mut failure = Failure::new(FailureKind::App, Some(Step::Prepare), f.message);
            failure.log_tail = f.output;
            failure
        })?;
    }

    progress(
        Step::Start,
        format!("starting {} (release {})", plan.color, plan.release),
    );
    let t = Instant::now();
    ctx.listeners.ensure_listening().map_err(|e| {
        Failure::new(
            FailureKind::Internal,
            Some(Step::Start),
            format!("cannot listen on the app's sockets: {e}"),
        )
    })?;
    let app = AppProcess::start(ctx, plan.color, plan.release, &dir)
        .map_err(|e| Failure::new(FailureKind::App, Some(Step::Start), format!("{e:#}")))?;
    timings.start_ms = t.elapsed().as_millis() as u64;

    progress(
        Step::WaitReady,
        format!("waiting for {} (pid {}) to be ready", plan.color, app.pid),
    );
    let t = Instant::now();
    let timeout = ctx.config.health.timeout;
    let last_check = Mutex::new(String::new());
    let outcome = tokio::select! {
        r = health::wait_ready(ctx, &app, &dir, plan.release, &last_check) => r.map_err(|e| format!("{e:#}")),
        exit = app.exited() => Err(format!("{} exited during the readiness wait ({exit})", plan.color)),
        _ = tokio::time::sleep(timeout) => {
            let last = last_check.lock().expect("never held across a panic").clone();
            let last = if last.is_empty() { String::new() } else { format!(" (last check: {last})") };
            Err(format!(
                "{} was not ready within health.timeout ({}){last}: it was stopped",
                plan.color,
                humantime::format_duration(timeout)
            ))
        }
    };
    timings.ready_ms = t.elapsed().as_millis() as u64;
    match outcome {
        Ok(()) => Ok((app, timings)),
        Err(message) => {
            // It may have accepted live connections from the shared socket:
            // let it finish them with its stop signal, briefly, then SIGKILL.
            let grace = ctx.config.app.drain_timeout.min(FAILED_GRACE);
            app.stop(ctx.config.app.stop_signal, grace).await;
            let mut f = Failure::new(FailureKind::App, Some(Step::WaitReady), message);
            f.log_tail = app.log_tail().await;
            Err(f)
        }
    }
}

/// Stages `source` on a blocking thread.
async fn copy(
    ctx: &Ctx,
    plan: &Plan,
    source: &std::path::Path,
    events: &UnboundedSender<Event>,
) -> Result<stage::Copied, Failure> {
    let (events, id) = (events.clone(), plan.id);
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
        cancel: plan.cancel.clone(),
        shared: ctx.config.shared.clone(),
        hardlink: ctx.config.hardlink,
        progress: Some(Arc::new(move |files, bytes| {
            let message = format!("copied {files} files, {:.1} MB so far", bytes as f64 / 1e6);
            let _ = events.send(Event::Progress {
                id,
                step: Step::Stage,
                message,
            });
        })),
    };
    let (root, src, color, id) = (
        ctx.config.fixed.root.clone(),
        source.to_path_buf(),
        plan.color,
        plan.id,
    );
    let staged = tokio::task::spawn_blocking(move || {
        let staged = stage::stage(&root, &src, color, id, &opts);
        if staged.is_ok() {
            // The color's previous tree goes away off the release's path.
            std::thread::spawn(move || stage::remove_trash(&root, id));
        }
        staged
    })
    .await
    .map_err(|e| {
        Failure::new(
            FailureKind::Internal,
            Some(Step::Stage),
            format!("staging task failed: {e}"),
        )
    })?;
    staged.map_err(|e| {
        let kind = match e {
            StageError::Refused(_) => FailureKind::BadRequest,
            StageError::Io(_) => FailureKind::Stage,
            StageError::Changed => FailureKind::Changed,
            StageError::Aborted => FailureKind::Busy,
        };
        Failure::new(
            kind,
            Some(Step::Stage),
            format!("cannot stage the build: {e}"),
        )
    })
}
