//! Releases and rollbacks: begin (or refuse), follow the release task's
//! events, swap, drain the old color, finish or fail, record the history.

use super::*;

impl Daemon {
    /// Starts a release or rollback, or refuses it.
    pub(super) fn begin(
        &mut self,
        kind: Kind,
        source: Option<PathBuf>,
        label: Option<String>,
        trigger: Trigger,
        client: Option<Responder>,
    ) {
        let refuse = |kind: FailureKind, msg: String| {
            if let Some(c) = &client {
                let _ = c.send(Reply::Error(Failure::new(kind, None, msg)));
            }
        };
        if self.stopping > 0 {
            return refuse(
                FailureKind::Busy,
                "bgd is shutting down; nothing new is started".into(),
            );
        }
        if let Some(r) = &self.release {
            return refuse(
                FailureKind::Busy,
                format!(
                    "{} of release {} is in progress (step {}, {} since {}): releases never overlap, so run this one again when it finishes (`bgctl status` shows progress)",
                    kind_name(r.kind), r.release, r.step, r.color, crate::rfc3339(r.since)
                ),
            );
        }
        let color = self.state.live.map_or(Color::Blue, Color::other);
        let mut replaced = None;
        let (source, release) = match kind {
            Kind::Rollback => {
                let Some(live) = self.state.live else {
                    return refuse(FailureKind::BadRequest, "nothing is live, so there is nothing to roll back from: use `bgctl release DIR`".into());
                };
                match self.state.build(color) {
                    Some(b) if b.went_live => (None, b.release),
                    Some(b) => {
                        return refuse(FailureKind::BadRequest, format!(
                            "nothing to roll back to: {color} holds release {} which never went live (its release failed); {live} stays live", b.release
                        ))
                    }
                    None => return refuse(FailureKind::BadRequest, format!("nothing to roll back to: {color} holds no build that went live")),
                }
            }
            Kind::Release => {
                let src = source.expect("a release always has a source");
                if !src.is_absolute() {
                    return refuse(
                        FailureKind::BadRequest,
                        format!("build path {} must be absolute", src.display()),
                    );
                }
                // The dormant color's directory is about to be replaced: until
                // the new build is staged it records no build, so a crash
                // mid-copy can never leave a rollback target that lies. If
                // the release fails before anything is swapped in, `fail`
                // puts the record back.
                let saved = self.state.clone();
                replaced = self.state.build(color).cloned();
                let id = self.state.next_release;
                self.state.next_release += 1;
                self.state.set_build(color, None);
                if let Err(e) = self.state.save(&self.ctx.config.fixed.root) {
                    self.state = saved;
                    return refuse(
                        FailureKind::Internal,
                        format!("cannot write bgd's state: {e}"),
                    );
                }
                (Some(src), id)
            }
        };
        let label = match kind {
            Kind::Rollback => self.state.build(color).and_then(|b| b.label.clone()),
            Kind::Release => label,
        };
        let id = if kind == Kind::Rollback {
            fresh_id()
        } else {
            release
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let expect = match &trigger {
            Trigger::Watch(fp) => Some(fp.clone()),
            Trigger::Client => None,
        };
        let plan = Plan {
            id,
            color,
            source,
            label: label.clone(),
            release,
            expect,
            cancel: cancel.clone(),
        };
        tracing::info!(release, %color, "{} begins", kind_name(kind));
        let task = tokio::spawn(release::run(
            self.ctx.clone(),
            plan.clone(),
            self.events.clone(),
        ));
        self.slot(color).set(Phase::Starting, None);
        self.release = Some(InProgress {
            id,
            release,
            kind,
            trigger,
            color,
            label,
            step: if plan.source.is_some() {
                Step::Validate
            } else {
                Step::Start
            },
            since: SystemTime::now(),
            started: Instant::now(),
            client,
            timings: Timings::default(),
            swapped_at: None,
            steps: Vec::new(),
            source: plan.source.clone(),
            replaced,
            staged: false,
            cancel,
            task,
        });
    }

    pub(super) fn on_progress(&mut self, id: u64, step: Step, message: String) {
        let Some(r) = self.current(id) else { return };
        if r.steps.last().is_none_or(|t| t.step != step) {
            r.steps.push(history::StepTime {
                step,
                at_ms: r.started.elapsed().as_millis() as u64,
            });
        }
        r.step = step;
        tracing::info!("{step}: {message}");
        if let Some(c) = &r.client {
            let _ = c.send(Reply::Progress { step, message });
        }
    }

    pub(super) fn on_staged(&mut self, id: u64, color: Color, build: Build) {
        let Some(r) = self.current(id) else { return };
        r.staged = true;
        self.state.set_build(color, Some(build));
        if let Err(e) = self.state.save(&self.ctx.config.fixed.root) {
            tracing::error!("cannot write bgd's state after staging: {e}");
        }
    }

    pub(super) fn on_prepared(&mut self, id: u64, result: Result<(AppProcess, Timings), Failure>) {
        if let Some(r) = self.current(id) {
            return match result {
                Ok((app, timings)) => {
                    r.timings = timings;
                    self.swap(app)
                }
                Err(failure) => self.fail(failure),
            };
        }
        for color in Color::BOTH {
            if self
                .slot(color)
                .restart
                .as_ref()
                .is_some_and(|(rid, _)| *rid == id)
            {
                self.slot(color).restart = None;
                return match result {
                    Ok((app, _)) => self.finish_restart(color, app),
                    Err(failure) => self.restart_failed(color, failure),
                };
            }
        }
        // A task aborted at shutdown or by a swap: dropping its process kills it.
    }

    /// The new color is ready: record it as live, then drain the old one.
    pub(super) fn swap(&mut self, app: AppProcess) {
        let r = self
            .release
            .as_mut()
            .expect("swap runs for the release in progress");
        let (id, release, new) = (r.id, r.release, r.color);
        r.step = Step::Swap;
        let root = self.ctx.config.fixed.root.clone();
        let saved = self.state.clone();
        self.state.live = Some(new);
        if let Some(mut b) = self.state.build(new).cloned() {
            b.went_live = true;
            self.state.set_build(new, Some(b));
        }
        if let Err(e) = self.state.save(&root) {
            self.state = saved;
            let f = Failure::new(
                FailureKind::Internal,
                Some(Step::Swap),
                format!(
                    "cannot record the new live color in {}: {e}; the old color stays live",
                    State::path(&root).display()
                ),
            );
            self.spawn_drain(None, app);
            return self.fail(f);
        }
        if let Err(e) = state::point_live_symlink(&root, new) {
            tracing::error!("cannot repoint {}/live: {e}", root.display());
        }
        let old = new.other();
        // The old color may have been dead and restarting: that restart is moot.
        self.slot(old).abort_restart();
        let slot = self.slot(new);
        slot.restarts = 0;
        slot.streak = 0;
        self.make_live(app);
        self.run_after_live(new, release);
        let r = self.release.as_mut().expect("still in progress");
        r.swapped_at = Some(Instant::now());
        tracing::info!(release, "{new} is live");

        match self.slot(old).process.take() {
            Some(proc) => {
                let pid = proc.pid;
                self.slot(old).set(Phase::Draining, Some(pid));
                self.on_progress(
                    id,
                    Step::Drain,
                    format!("{new} is live; draining {old} (pid {pid})"),
                );
                self.spawn_drain(Some(id), proc);
            }
            None => {
                self.slot(old).set(Phase::Stopped, None);
                self.finish_release(old, None);
            }
        }
    }

    /// `hooks.after_live`, beside everything else: a failure is logged.
    pub(super) fn run_after_live(&self, color: Color, release: u64) {
        if self.ctx.config.hooks.after_live.is_empty() {
            return;
        }
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let dir = stage::color_dir(&ctx.config.fixed.root, color);
            let env = crate::process::color_env(&ctx, color, release);
            let hooks = ctx.config.hooks.after_live.clone();
            let log = |line: &str| tracing::info!(%color, hook = "after_live", "{line}");
            match crate::hooks::run(&ctx, "after_live", &hooks, &dir, &env, log).await {
                Ok(()) => tracing::info!(%color, release, "after_live hooks done"),
                Err(f) => {
                    tracing::warn!(%color, release, "{} (not fatal: release {release} stays live)", f.message)
                }
            }
        });
    }

    pub(super) fn make_live(&mut self, app: AppProcess) {
        let (color, pid) = (app.color, app.pid);
        let exit = app.wait_exit_with_tail();
        let events = self.events.clone();
        tokio::spawn(async move {
            let (exit, uptime, tail) = exit.await;
            let _ = events.send(Event::Exited {
                color,
                pid,
                exit,
                uptime,
                tail,
            });
        });
        if let Some(stale) = self.slot(color).process.take() {
            // Never drop a running color: stop it gracefully.
            self.spawn_drain(None, stale);
        }
        let slot = self.slot(color);
        slot.set(Phase::Live, Some(pid));
        slot.process = Some(app);
        self.notify_ready();
    }

    /// Stops `proc` with its stop signal and deadline; `id` is the release
    /// waiting for it, if any.
    pub(super) fn spawn_drain(&mut self, id: Option<u64>, proc: AppProcess) {
        let (sig, deadline) = (
            self.ctx.config.app.stop_signal,
            self.ctx.config.app.drain_timeout,
        );
        let events = self.events.clone();
        self.drains += 1;
        tokio::spawn(async move {
            let color = proc.color;
            let exit = proc.stop(sig, deadline).await;
            // Dropped before the event, so its pgid record is gone before the
            // daemon can start this color again.
            drop(proc);
            let _ = events.send(Event::Drained {
                id: id.unwrap_or(0),
                color,
                exit,
            });
        });
    }

    pub(super) fn on_drained(&mut self, id: u64, color: Color, exit: Exit) {
        self.drains -= 1;
        tracing::info!(%color, "stopped ({exit})");
        let slot = self.slot(color);
        if slot.phase == Phase::Draining {
            slot.set(Phase::Stopped, None);
            slot.last_exit = Some(exit);
        }
        if self.current(id).is_some() {
            self.finish_release(color, Some(exit));
        }
    }

    pub(super) fn finish_release(&mut self, old: Color, drained: Option<Exit>) {
        let r = self
            .release
            .take()
            .expect("finishing the release in progress");
        let total = r.started.elapsed();
        let drain_ms = r.swapped_at.map_or(0, |t| t.elapsed().as_millis() as u64);
        let build = self.state.build(r.color).cloned();
        let msg = match r.kind {
            Kind::Rollback => format!("rolled back to release {} on {}", r.release, r.color),
            Kind::Release => format!("release {} is live on {}", r.release, r.color),
        } + &format!(" ({} ms)", total.as_millis());
        tracing::info!("{msg}");
        self.record(&r, true, &msg, None);
        self.last_result = Some(format!("{} ok: {msg}", crate::now_rfc3339()));
        if let Some(a) = &mut self.auto {
            match (&r.trigger, r.kind) {
                (Trigger::Watch(_), _) => a.succeeded(r.release, &msg),
                // A rollback must stick: the watched tree is held back until it changes.
                (Trigger::Client, Kind::Rollback) => {
                    a.hold_current("a rollback made an older build live")
                }
                (Trigger::Client, Kind::Release) => {}
            }
        }
        if let Some(c) = r.client {
            let _ = c.send(Reply::Done {
                result: serde_json::json!({
                    "release": r.release,
                    "label": build.as_ref().and_then(|b| b.label.clone()),
                    "color": r.color,
                    "previous": old,
                    "previous_exit": drained.map(|e| e.to_string()),
                    "ms": {
                        "total": total.as_millis() as u64,
                        "stage": r.timings.stage_ms,
                        "start": r.timings.start_ms,
                        "ready": r.timings.ready_ms,
                        "drain": drain_ms,
                    }
                }),
            });
        }
        self.after_release();
    }

    pub(super) fn fail(&mut self, failure: Failure) {
        let r = self
            .release
            .take()
            .expect("failing the release in progress");
        let step = failure
            .step
            .map_or("request".to_string(), |s| s.to_string());
        tracing::error!(release = r.release, color = %r.color, "{} failed at {step}: {}", kind_name(r.kind), failure.message);
        for line in &failure.log_tail {
            tracing::error!(color = %r.color, "  | {line}");
        }
        self.last_result = Some(format!(
            "{} {} of release {} failed at {step}: {}",
            crate::now_rfc3339(),
            kind_name(r.kind),
            r.release,
            failure.message
        ));
        self.record(&r, false, &failure.message, failure.step);
        self.restore_unstaged(&r);
        self.slot(r.color).set(Phase::Stopped, None);
        if let Some(live) = self.state.live {
            tracing::info!(%live, "{live} stays live");
        }
        if let (Some(a), Trigger::Watch(fp)) = (&mut self.auto, &r.trigger) {
            a.failed(fp, r.release, &failure);
        }
        if let Some(c) = r.client {
            let _ = c.send(Reply::Error(failure));
        }
        if self.state.live.is_none() {
            // No color has been live: nobody will accept, so refuse clients
            // rather than let them wait in the queue.
            self.ctx.listeners.unlisten();
        }
        self.after_release();
    }

    /// Appends the finished release `r` to the history, off the loop.
    pub(super) fn record(&self, r: &InProgress, ok: bool, result: &str, failed_step: Option<Step>) {
        let build = self.state.build(r.color);
        let record = history::Record {
            release: r.release,
            kind: kind_name(r.kind).into(),
            trigger: match r.trigger {
                Trigger::Client => "bgctl".into(),
                Trigger::Watch(_) => "watch".into(),
            },
            label: r.label.clone(),
            source: r
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .or_else(|| build.map(|b| b.source.clone())),
            fingerprint: build
                .filter(|b| b.release == r.release)
                .and_then(|b| b.fingerprint.clone()),
            color: r.color,
            started: crate::rfc3339(r.since),
            finished: crate::now_rfc3339(),
            ok,
            result: result.into(),
            failed_step,
            steps: r.steps.clone(),
        };
        let root = self.ctx.config.fixed.root.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = history::append(&root, record) {
                tracing::warn!("cannot write the release history: {e}");
            }
        });
    }

    /// A release that ends before its build was swapped in leaves the
    /// color's directory as it was: put back the record of what it holds.
    pub(super) fn restore_unstaged(&mut self, r: &InProgress) {
        if r.kind == Kind::Release && !r.staged && r.replaced.is_some() {
            self.state.set_build(r.color, r.replaced.clone());
            if let Err(e) = self.state.save(&self.ctx.config.fixed.root) {
                tracing::error!("cannot write bgd's state: {e}");
            }
        }
    }

    pub(super) fn after_release(&mut self) {
        if self.stopping > 0 {
            return self.drain_all();
        }
        self.auto_check();
    }
}
