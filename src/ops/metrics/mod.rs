//! Prometheus metrics: the registry, how lifecycle events move it, and the
//! `[metrics] listen` endpoint (`http.rs`) that serves `GET /metrics`.
//!
//! Nothing here ticks. Counters and histograms move when an event is
//! published ([`Metrics::observe`]); `bgd_live` and the traffic shares are
//! set when the deployment changes; the per-color process figures are read
//! from /proc when a scraper asks (`procs.rs`). An idle bgd that nobody
//! scrapes does no work for its metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::color::Color;
use crate::ops::events::{Event, Kind, StepTook};
use crate::ops::protocol::Step;

mod http;
mod procs;

pub use http::{bind, serve};

/// `result` of a release: `ok` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    result: &'static str,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ColorLabel {
    color: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Upper bounds (seconds) of a whole release: a few hundred milliseconds for
/// a small app up to minutes with prepare hooks and a long drain.
const RELEASE_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Upper bounds (seconds) of one step: milliseconds (validate, swap) up to
/// minutes (stage a large build, prepare, drain).
const STEP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

const STEPS: [Step; 7] = [
    Step::Validate,
    Step::Stage,
    Step::Prepare,
    Step::Start,
    Step::WaitReady,
    Step::Swap,
    Step::Drain,
];

/// Every metric bgd exports. Built once at start-up; shared with the HTTP
/// endpoint, which only reads it.
pub struct Metrics {
    registry: Registry,
    releases: Family<ReleaseLabels, Counter>,
    duration: Family<ResultLabel, Histogram>,
    step_duration: Family<StepLabel, Histogram>,
    rollbacks: Family<KindLabel, Counter>,
    restarts: Family<ColorLabel, Counter>,
    live: Family<ColorLabel, Gauge>,
    share: Family<ColorLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 while a pause lasts (`bgctl pause`).
    paused: Gauge,
    pauses: Counter,
    pause_duration: Histogram,
    /// 1 for the color in a preview (only the testers reach it).
    preview: Family<ColorLabel, Gauge>,
    /// The networks in `traffic.testers`.
    testers: Gauge,
    /// 1 for the `traffic.canary_by` in force.
    canary_by: Family<ByLabel, Gauge>,
    /// The process groups the per-color figures are read from.
    groups: Arc<procs::ColorGroups>,
}

impl Metrics {
    /// The registry with every series at zero; `version` labels `bgd_build_info`.
    pub fn new(version: &'static str) -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            releases: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(RELEASE_BUCKETS)),
            step_duration: Family::new_with_constructor(|| Histogram::new(STEP_BUCKETS)),
            rollbacks: Family::default(),
            restarts: Family::default(),
            live: Family::default(),
            share: Family::default(),
            paused: Gauge::default(),
            pauses: Counter::default(),
            pause_duration: Histogram::new(RELEASE_BUCKETS),
            preview: Family::default(),
            testers: Gauge::default(),
            canary_by: Family::default(),
            groups: Arc::default(),
        };
        let mut registry = Registry::default();
        m.register(&mut registry, version);
        m.registry = registry;
        m.zero();
        m
    }

    fn register(&self, registry: &mut Registry, version: &'static str) {
        registry.register(
            "bgd_releases",
            "Releases that ended, by result (ok, failed) and trigger (bgctl, watch); rollbacks are in bgd_rollbacks_total",
            self.releases.clone(),
        );
        registry.register(
            "bgd_release_duration_seconds",
            "Seconds from a release's start to its end (the old color stopped, or the failure), by result",
            self.duration.clone(),
        );
        registry.register(
            "bgd_release_step_duration_seconds",
            "Seconds each step of a release or rollback took, ok or failed (a failed step until the failure)",
            self.step_duration.clone(),
        );
        registry.register(
            "bgd_rollbacks",
            "Rollbacks that made an older build live: manual (bgctl rollback) or automatic (by bgd)",
            self.rollbacks.clone(),
        );
        registry.register(
            "bgd_app_restarts",
            "Restarts of the live color after its process died or its restart failed (each one scheduled)",
            self.restarts.clone(),
        );
        registry.register(
            "bgd_live",
            "1 for the color recorded live, 0 for the other",
            self.live.clone(),
        );
        registry.register(
            "bgd_traffic_share",
            "Share (0..1) of new connections steered to the color",
            self.share.clone(),
        );
        registry.register(
            "bgd_paused",
            "1 while a pause (bgctl pause) holds new connections or shows the maintenance page, else 0",
            self.paused.clone(),
        );
        registry.register(
            "bgd_pauses",
            "Pauses begun (bgctl pause)",
            self.pauses.clone(),
        );
        registry.register(
            "bgd_pause_duration_seconds",
            "Seconds from a pause's start to the swap that ended it",
            self.pause_duration.clone(),
        );
        registry.register(
            "bgd_preview",
            "1 for the color in a preview (bgctl release --preview: only the testers reach it), 0 otherwise",
            self.preview.clone(),
        );
        registry.register(
            "bgd_traffic_testers",
            "Networks in traffic.testers: their clients reach a new build during its preview and its canary",
            self.testers.clone(),
        );
        registry.register(
            "bgd_traffic_canary_by",
            "1 for how a canary picks its share (traffic.canary_by: client or connection), 0 for the other",
            self.canary_by.clone(),
        );
        registry.register(
            "bgd_build",
            "The running bgd's version (the value is always 1)",
            Info::new(VersionLabel { version }),
        );
        registry.register_collector(Box::new(self.groups.clone()));
    }

    /// Every series exists from the start, at zero.
    fn zero(&self) {
        for result in ["ok", "failed"] {
            for trigger in ["bgctl", "watch"] {
                let _ = self
                    .releases
                    .get_or_create(&ReleaseLabels { result, trigger });
            }
            let _ = self.duration.get_or_create(&ResultLabel { result });
        }
        for step in STEPS {
            let step = step.to_string();
            let _ = self.step_duration.get_or_create(&StepLabel { step });
        }
        for kind in ["manual", "automatic"] {
            let _ = self.rollbacks.get_or_create(&KindLabel { kind });
        }
        for color in Color::BOTH {
            let _ = self.restarts.get_or_create(&color_label(color));
            let _ = self.live.get_or_create(&color_label(color));
            let _ = self.share.get_or_create(&color_label(color));
            let _ = self.preview.get_or_create(&color_label(color));
        }
        self.set_canary_by("client");
    }

    /// Moves the counters and histograms an event stands for.
    pub fn observe(&self, event: &Event) {
        match &event.kind {
            Kind::Released {
                trigger, ms, steps, ..
            } => self.release_ended("ok", trigger, *ms, steps),
            Kind::Failed {
                kind,
                trigger,
                ms,
                steps,
                ..
            } => {
                if kind == "release" {
                    self.release_ended("failed", trigger, *ms, steps);
                } else {
                    self.steps(steps);
                }
            }
            Kind::RolledBack { kind, steps, .. } => {
                self.rollbacks
                    .get_or_create(&KindLabel {
                        kind: kind.as_str(),
                    })
                    .inc();
                self.steps(steps);
            }
            Kind::Restarting { color, .. } => {
                self.restarts.get_or_create(&color_label(*color)).inc();
            }
            Kind::CanaryShare { color, share, .. } => {
                self.set_traffic_share(*color, share.clamp(0.0, 1.0));
                self.set_preview(None);
            }
            Kind::Preview { color, .. } => {
                self.set_traffic_share(*color, 0.0);
                self.set_preview(Some(*color));
            }
            Kind::Promoted { color, .. } => {
                self.set_traffic_share(*color, 1.0);
                self.set_preview(None);
            }
            Kind::Aborted { color, .. } => {
                self.set_traffic_share(*color, 0.0);
                self.set_preview(None);
            }
            Kind::Paused { .. } => {
                self.pauses.inc();
            }
            Kind::PauseEnded { ms, .. } => self.pause_duration.observe(*ms as f64 / 1000.0),
            _ => {}
        }
    }

    fn release_ended(&self, result: &'static str, trigger: &str, ms: u64, steps: &[StepTook]) {
        let trigger = if trigger == "watch" { "watch" } else { "bgctl" };
        self.releases
            .get_or_create(&ReleaseLabels { result, trigger })
            .inc();
        self.duration
            .get_or_create(&ResultLabel { result })
            .observe(ms as f64 / 1000.0);
        self.steps(steps);
    }

    fn steps(&self, steps: &[StepTook]) {
        for s in steps {
            self.step_duration
                .get_or_create(&StepLabel {
                    step: s.step.to_string(),
                })
                .observe(s.ms as f64 / 1000.0);
        }
    }

    /// `color` gets `share` of new connections, the other color the rest.
    pub fn set_traffic_share(&self, color: Color, share: f64) {
        self.share.get_or_create(&color_label(color)).set(share);
        self.share
            .get_or_create(&color_label(color.other()))
            .set(1.0 - share);
    }

    /// `color` is in a preview (`None`: no color is).
    fn set_preview(&self, color: Option<Color>) {
        for c in Color::BOTH {
            let on = color == Some(c);
            self.preview.get_or_create(&color_label(c)).set(on as i64);
        }
    }

    /// `traffic.testers` (how many networks) and `traffic.canary_by`, as
    /// loaded at start and by each reload.
    pub fn set_traffic_policy(&self, testers: usize, canary_by: &'static str) {
        self.testers.set(testers as i64);
        self.set_canary_by(canary_by);
    }

    fn set_canary_by(&self, by: &'static str) {
        for b in ["client", "connection"] {
            let on = b == by;
            self.canary_by
                .get_or_create(&ByLabel { by: b })
                .set(on as i64);
        }
    }

    /// Reads the colors' processes through `c` (their cgroups) from now on.
    pub(crate) fn contain_with(&self, c: Arc<crate::supervise::contain::Containment>) {
        self.groups.contain_with(c);
    }

    /// What the deployment looks like now: the color recorded live, and the
    /// process group (leader pid) each color runs, if it runs one that bgd
    /// holds (live or draining).
    pub fn track(&self, live: Option<Color>, paused: bool, groups: [Option<i32>; 2]) {
        self.paused.set(paused as i64);
        for color in Color::BOTH {
            let is_live = live == Some(color);
            self.live
                .get_or_create(&color_label(color))
                .set(is_live as i64);
        }
        self.groups.set(groups);
    }

    /// The exposition text: Prometheus text format 0.0.4. Reads /proc, so
    /// call it off the event loop's thread.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn color_label(color: Color) -> ColorLabel {
    ColorLabel {
        color: color.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: Kind) -> Event {
        Event {
            seq: 1,
            at: String::new(),
            kind,
        }
    }

    #[test]
    fn events_move_the_counters_they_stand_for() {
        let m = Metrics::new("test");
        let steps = vec![
            StepTook {
                step: Step::Stage,
                ms: 20,
            },
            StepTook {
                step: Step::WaitReady,
                ms: 300,
            },
        ];
        m.observe(&event(Kind::Released {
            release: 1,
            trigger: "bgctl".into(),
            color: Color::Blue,
            ms: 400,
            steps: steps.clone(),
        }));
        m.observe(&event(Kind::RolledBack {
            release: 1,
            color: Color::Blue,
            kind: crate::ops::events::RollbackKind::Automatic,
            ms: 100,
            steps: vec![],
        }));
        m.observe(&event(Kind::Paused {
            color: Color::Green,
            max_ms: None,
        }));
        m.observe(&event(Kind::PauseEnded {
            release: 2,
            color: Color::Green,
            ms: 8_000,
        }));
        m.set_traffic_share(Color::Green, 0.25);
        m.track(Some(Color::Blue), true, [None, None]);
        let text = m.encode();
        for line in [
            "bgd_releases_total{result=\"ok\",trigger=\"bgctl\"} 1",
            "bgd_releases_total{result=\"failed\",trigger=\"watch\"} 0",
            "bgd_release_duration_seconds_count{result=\"ok\"} 1",
            "bgd_release_step_duration_seconds_count{step=\"wait_ready\"} 1",
            "bgd_rollbacks_total{kind=\"automatic\"} 1",
            "bgd_rollbacks_total{kind=\"manual\"} 0",
            "bgd_traffic_share{color=\"green\"} 0.25",
            "bgd_traffic_share{color=\"blue\"} 0.75",
            "bgd_live{color=\"blue\"} 1",
            "bgd_build_info{version=\"test\"} 1",
            "bgd_color_processes{color=\"green\"} 0",
            "bgd_paused 1",
            "bgd_pauses_total 1",
            "bgd_pause_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
