//! The steps that bring a color up: stage (for a new build), start, wait
//! until ready. Runs as its own task so the daemon keeps answering while it
//! works; it reports each step as an [`Event`] and ends with
//! [`Event::Prepared`]. It never touches the live color or the state: the
//! daemon commits the swap and drains the old color.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::color::Color;
use crate::daemon::Event;
use crate::process::AppProcess;
use crate::protocol::{Failure, FailureKind, Step};
use crate::stage;
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
}

/// Durations of the steps, in milliseconds, for the reply and benchmarks.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Timings {
    pub stage_ms: u64,
    pub start_ms: u64,
    pub ready_ms: u64,
}

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
    let root = &ctx.config.root;
    let dir = stage::color_dir(root, plan.color);

    if let Some(source) = &plan.source {
        let source = stage::validate(source)
            .map_err(|m| Failure::new(FailureKind::BadRequest, Some(Step::Validate), m))?;
        progress(
            Step::Stage,
            format!("copying {} into {}", source.display(), plan.color),
        );
        let t = Instant::now();
        let (root2, src2, color, id) = (root.clone(), source.clone(), plan.color, plan.id);
        let owner = ctx
            .config
            .app
            .identity
            .as_ref()
            .map(|i| (i.uid.as_raw(), i.gid.as_raw()));
        let copied =
            tokio::task::spawn_blocking(move || stage::stage(&root2, &src2, color, id, owner))
                .await
                .map_err(|e| {
                    Failure::new(
                        FailureKind::Internal,
                        Some(Step::Stage),
                        format!("staging task failed: {e}"),
                    )
                })?
                .map_err(|e| {
                    let kind = if e.kind() == std::io::ErrorKind::InvalidInput {
                        FailureKind::BadRequest
                    } else {
                        FailureKind::Stage
                    };
                    Failure::new(
                        kind,
                        Some(Step::Stage),
                        format!("cannot stage the build: {e}"),
                    )
                })?;
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
            },
        });
        tracing::info!(color = %plan.color, "staged {} files, {} bytes in {} ms", copied.files, copied.bytes, timings.stage_ms);
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
    let outcome = tokio::select! {
        r = health::wait_ready(ctx, &app, &dir, plan.release) => r.map_err(|e| format!("{e:#}")),
        exit = app.exited() => Err(format!("{} exited during the readiness wait ({exit})", plan.color)),
        _ = tokio::time::sleep(timeout) => Err(format!(
            "{} was not ready within health.timeout ({}): its process group was killed",
            plan.color, humantime::format_duration(timeout)
        )),
    };
    timings.ready_ms = t.elapsed().as_millis() as u64;
    match outcome {
        Ok(()) => Ok((app, timings)),
        Err(message) => {
            app.kill().await;
            let mut f = Failure::new(FailureKind::App, Some(Step::WaitReady), message);
            f.log_tail = app.log_tail().await;
            Err(f)
        }
    }
}
