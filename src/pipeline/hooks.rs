//! `[hooks]`: shell commands run around a release, with the release's
//! environment, in the color's directory, as the app's user.
//!
//! Each command runs as `/bin/sh -c COMMAND` in its own process group; its
//! output is passed on line by line as it comes, and the last lines are kept
//! for the failure report. A command still running at `hooks.timeout` is
//! killed with its whole group.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::mpsc;

use crate::supervise::spawn;
use crate::Ctx;

/// Lines of a failed hook's output kept for the report.
const TAIL: usize = 40;

#[derive(Debug)]
pub struct HookFailure {
    pub message: String,
    pub output: Vec<String>,
}

/// Runs `commands` in order; stops at the first that fails. `on_line` gets
/// every line any of them prints.
pub async fn run(
    ctx: &Ctx,
    which: &str,
    commands: &[String],
    dir: &Path,
    env: &[(String, String)],
    mut on_line: impl FnMut(&str),
) -> Result<(), HookFailure> {
    for command in commands {
        let mut tail = std::collections::VecDeque::with_capacity(TAIL);
        let result = run_one(ctx, command, dir, env, ctx.config.hooks.timeout, |line| {
            on_line(line);
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        })
        .await;
        if let Err(e) = result {
            return Err(HookFailure {
                message: format!("hooks.{which} `{command}` {e:#}"),
                output: tail.into(),
            });
        }
    }
    Ok(())
}

async fn run_one(
    ctx: &Ctx,
    command: &str,
    dir: &Path,
    env: &[(String, String)],
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> anyhow::Result<()> {
    let argv = ["/bin/sh".to_string(), "-c".to_string(), command.to_string()];
    // Everything the hook starts, in the background too, ends with its step.
    let step = ctx.contain.step();
    let mut env = env.to_vec();
    env.push(step.env());
    let child = spawn::spawn(&spawn::Spec {
        command: &argv,
        cwd: dir,
        env,
        fds: vec![],
        identity: ctx.config.app.identity.as_ref(),
        cgroup: step.join_fd(),
        die_with_bgd: true,
    })
    .with_context(|| format!("could not start in {}", dir.display()))?;
    let exited = ctx.reaper.watch(child.pid);
    let guard = spawn::KillGroupOnDrop(child.pid);
    let (tx, mut lines) = mpsc::unbounded_channel::<String>();
    for fd in [child.stdout, child.stderr] {
        let tx = tx.clone();
        tokio::spawn(crate::supervise::process::read_lines(fd, move |line| {
            drop(tx.send(line))
        }));
    }
    drop(tx);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    tokio::pin!(exited);
    let status = loop {
        tokio::select! {
            Some(line) = lines.recv() => on_line(&line),
            status = &mut exited => break status.context("the reaper stopped")?,
            _ = &mut deadline => anyhow::bail!("was still running after hooks.timeout ({}): killed", humantime::format_duration(timeout)),
        }
    };
    std::mem::forget(guard); // exited and reaped: its pgid may be reused now
                             // What is still in the pipes arrives at once; a background process that
                             // keeps them open is not waited for.
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_millis(100), lines.recv()).await
    {
        on_line(&line);
    }
    // What it left running in the background goes now.
    drop(step);
    if status.success() {
        Ok(())
    } else {
        anyhow::bail!("failed ({status})")
    }
}
