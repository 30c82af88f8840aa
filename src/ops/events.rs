//! Lifecycle events: what happened to releases and colors, for `bgctl
//! events` and the metrics.
//!
//! An [`Event`] (its type is in `protocol`, since `events` replies carry
//! it) is a fact with a sequence number and a time. The daemon
//! publishes each one once through the [`EventHub`]: it keeps the last
//! [`KEEP`] in memory (`bgctl events` without `-f`) and broadcasts new ones
//! to followers (`bgctl events -f`). The metrics are fed from the same
//! events, so a counter and the stream never disagree.
//!
//! This module knows nothing of the daemon or the core: it is data and a
//! channel. Who publishes what is `daemon/telemetry.rs`.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::broadcast;

pub use crate::ops::protocol::{Event, EventKind as Kind, ReleaseKind, RollbackKind, StepTook};

/// Events kept in memory for `bgctl events` (about 200 bytes each).
pub const KEEP: usize = 256;

/// New events a follower may fall behind by before it is told it missed some.
const FOLLOW_BUFFER: usize = 1024;

impl Kind {
    /// One line for people: what `bgctl events` prints after the time.
    pub fn describe(&self) -> String {
        self.describe_release()
            .unwrap_or_else(|| self.describe_other())
    }

    /// The events of a release's course; `None` for the others.
    fn describe_release(&self) -> Option<String> {
        Some(match self {
            Kind::ReleaseBegan {
                release,
                kind,
                trigger,
                color,
                label,
            } => {
                let label = label
                    .as_ref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default();
                let what = match kind.as_str() {
                    "rollback" => "rollback to release",
                    _ => "release",
                };
                format!("{what} {release}{label} began on {color} ({trigger})")
            }
            Kind::Step { release, step } => format!("release {release}: {step}"),
            Kind::Ready { release, color, ms } => {
                format!("release {release}: {color} is ready ({ms} ms)")
            }
            Kind::Swapped { release, from, to } => match from {
                Some(from) => format!("release {release}: swapped {from} -> {to}"),
                None => format!("release {release}: {to} is live (first)"),
            },
            Kind::Drained { color, pid, forced } => {
                let how = if *forced {
                    " (killed at drain_timeout)"
                } else {
                    ""
                };
                format!("{color} (pid {pid}) drained{how}")
            }
            Kind::Released {
                release, color, ms, ..
            } => format!("release {release} is live on {color} ({ms} ms)"),
            Kind::Failed {
                release,
                kind,
                color,
                step,
                message,
                ..
            } => {
                let step = step.map_or("request".to_string(), |s| s.to_string());
                format!("{kind} of release {release} on {color} failed at {step}: {message}")
            }
            Kind::RolledBack {
                release,
                color,
                kind,
                ms,
                ..
            } => format!(
                "rolled back to release {release} on {color} ({}, {ms} ms)",
                kind.as_str()
            ),
            _ => return None,
        })
    }

    /// Restarts, reloads and the canary's course.
    fn describe_other(&self) -> String {
        match self {
            Kind::Restarting {
                color,
                restarts,
                delay_ms,
                reason,
            } => format!("{color} restarting in {delay_ms} ms (restart {restarts}): {reason}"),
            Kind::Restarted { color, pid } => format!("{color} (pid {pid}) serves again"),
            Kind::Adopted { color, pid } => format!("adopted {color} (pid {pid})"),
            Kind::Reloaded { ok, message } => {
                let how = if *ok {
                    "config reloaded"
                } else {
                    "reload failed"
                };
                format!("{how}: {message}")
            }
            Kind::CanaryShare {
                color,
                share,
                canary_by,
                testers,
            } => {
                let by = match canary_by.as_str() {
                    "client" => " (by client address)",
                    "connection" => " (at random, per connection)",
                    _ => "",
                };
                let testers = match testers {
                    0 => String::new(),
                    n => format!(
                        ", and the testers ({})",
                        crate::deploy::clients::networks(*n as usize)
                    ),
                };
                format!(
                    "{color} gets {:.1}% of new connections{by}{testers}",
                    share * 100.0
                )
            }
            Kind::Preview {
                release,
                color,
                testers,
            } => format!(
                "preview: release {release} on {color}, for the testers alone ({} in traffic.testers)",
                crate::deploy::clients::networks(*testers as usize)
            ),
            Kind::Promoted { release, color } => {
                format!("release {release}: canary {color} promoted")
            }
            Kind::Aborted {
                release,
                color,
                reason,
            } => format!("release {release}: canary {color} aborted: {reason}"),
            Kind::BakePassed { release, color } => {
                format!("release {release} on {color} passed its bake")
            }
            Kind::BakeFailed {
                release,
                color,
                reason,
            } => format!("release {release} on {color} did not pass its bake: {reason}"),
            _ => self
                .describe_pause()
                .or_else(|| self.describe_release())
                .unwrap_or_default(),
        }
    }

    /// A pause's course (issue 24).
    fn describe_pause(&self) -> Option<String> {
        Some(match self {
            Kind::Paused { color, max_ms } => match max_ms {
                Some(ms) => format!("paused: new connections wait on {color} (--max {ms} ms)"),
                None => format!("paused: new connections wait on {color}"),
            },
            Kind::PauseStopped { color } => {
                format!("paused: no app process runs; connections wait on {color}")
            }
            Kind::PauseMax { color, page: true } => {
                format!("pause past --max: the maintenance page starts on {color}")
            }
            Kind::PauseMax { color, .. } => {
                format!("pause past --max and no maintenance page: clients keep waiting on {color}")
            }
            Kind::PauseEnded { release, color, ms } => {
                format!("pause ended after {ms} ms: release {release} on {color} serves")
            }
            _ => return None,
        })
    }
}

/// The last [`KEEP`] events and the feed of new ones. One publisher (the
/// daemon's loop); any number of readers.
pub struct EventHub {
    recent: Mutex<Recent>,
    /// Receivers are the followers (`bgctl events -f`); none is fine.
    live: broadcast::Sender<Event>,
}

struct Recent {
    next_seq: u64,
    events: VecDeque<Event>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub {
            recent: Mutex::new(Recent {
                next_seq: 1,
                events: VecDeque::with_capacity(KEEP),
            }),
            live: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

impl EventHub {
    /// Numbers, stamps, keeps and broadcasts `kind`; returns the event.
    pub fn publish(&self, kind: Kind) -> Event {
        let mut r = self
            .recent
            .lock()
            .expect("event lock is never held across a panic");
        let event = Event {
            seq: r.next_seq,
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            kind,
        };
        r.next_seq += 1;
        if r.events.len() == KEEP {
            r.events.pop_front();
        }
        r.events.push_back(event.clone());
        // Sent under the lock, so followers see events in `seq` order.
        let _ = self.live.send(event.clone());
        event
    }

    /// The events kept, oldest first, and a receiver for the ones after them.
    pub fn recent(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let r = self
            .recent
            .lock()
            .expect("event lock is never held across a panic");
        // Subscribing under the lock: no event falls between the two.
        (r.events.iter().cloned().collect(), self.live.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::color::Color;
    use crate::ops::protocol::Step;

    #[test]
    fn events_serialize_with_their_type_beside_their_fields() {
        let hub = EventHub::default();
        let e = hub.publish(Kind::Swapped {
            release: 2,
            from: Some(Color::Blue),
            to: Color::Green,
        });
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["seq"], 1);
        assert_eq!(json["type"], "swapped");
        assert_eq!(json["from"], "blue");
        assert_eq!(json["to"], "green");
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_hub_keeps_the_last_events_in_order() {
        let hub = EventHub::default();
        for i in 0..(KEEP as u64 + 3) {
            hub.publish(Kind::Step {
                release: i,
                step: Step::Stage,
            });
        }
        let (recent, _) = hub.recent();
        assert_eq!(recent.len(), KEEP);
        assert_eq!(recent[0].seq, 4);
        assert!(recent.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    }
}
