//! A preview (issue 23, `bgctl release DIR --preview`): the new build
//! starts and becomes ready beside the live one, and only the clients in
//! `[traffic] testers` reach it. It is a canary with no share
//! ([`Canary::percent`](super::Canary) 0): `promote PERCENT` makes it a
//! canary, `promote` makes it live, `abort` drains it, and its crash or
//! failed checks abort it, all as for a canary (`traffic.rs`). The testers
//! reach the new build during its canary too.
//!
//! This file holds what differs: whether one may begin, and the words the
//! log, the replies and the history use for who gets the new build.

use super::{ColorPhase, Core, Process};
use crate::color::Color;
use crate::deploy::clients::{networks, CanaryBy};

impl<P: Process> Core<P> {
    /// Whether a release with `--canary` (`canary`) or `--preview` may
    /// begin now; `Err` says why not and what to do.
    pub(super) fn share_possible(&self, canary: Option<u8>, preview: bool) -> Result<(), String> {
        match (canary, preview) {
            (None, false) => Ok(()),
            (Some(_), true) => Err("--preview and --canary do not go together: --preview gives the new build to the testers alone; `bgctl promote PERCENT` then makes it a canary".into()),
            (Some(p), false) => self.canary_possible(p),
            (None, true) => self.preview_possible(),
        }
    }

    fn preview_possible(&self) -> Result<(), String> {
        if let Some(p) = &self.state.pause {
            return Err(format!("paused since {}: a preview needs a live build for everyone but the testers, and during a pause none serves (at most the maintenance page); release without --preview to end the pause", p.since));
        }
        if let Some(why) = &self.policy.no_split {
            return Err(format!(
                "--preview needs new connections steered by client address, and {why}"
            ));
        }
        if self.policy.rollout.testers.is_empty() {
            return Err("--preview sends the clients in traffic.testers to the new build, and traffic.testers is empty: list the testers' addresses in the config, such as [traffic] testers = [\"203.0.113.7\", \"2001:db8:1::/48\"], and reload bgd (SIGHUP)".into());
        }
        match self.state.live {
            Some(live) if matches!(self.slot(live).phase, ColorPhase::Live { .. }) => Ok(()),
            Some(live) => Err(format!("{live} is live but not serving (it is restarting): a preview needs it to take everyone but the testers; try again once it serves")),
            None => Err("nothing is live yet, so there is nothing to preview beside: release without --preview first".into()),
        }
    }

    /// Who gets the new build at `percent` % (0: a preview), in words:
    /// `the testers (3 networks in traffic.testers)`, or `30% of clients
    /// (by address, ...), and the testers (...)`.
    pub(super) fn who_gets(&self, percent: u8) -> String {
        let n = self.policy.rollout.testers.len();
        let testers = match n {
            0 => String::new(),
            n => format!("the testers ({} in traffic.testers)", networks(n)),
        };
        if percent == 0 {
            return testers;
        }
        let share = match self.policy.rollout.canary_by {
            CanaryBy::Client => {
                format!("{percent}% of clients (by address, canary_by = \"client\")")
            }
            CanaryBy::Connection => {
                format!("{percent}% of new connections (at random, canary_by = \"connection\")")
            }
        };
        match n {
            0 => share,
            _ => format!("{share}, and {testers}"),
        }
    }

    /// What the log, the reply and the history say when release `id` on
    /// `color` becomes a preview (`percent` 0) or a canary.
    pub(super) fn canary_message(&self, id: u64, color: Color, percent: u8, steps: bool) -> String {
        let who = self.who_gets(percent);
        if percent == 0 {
            return format!(
                "preview: release {id} on {color} gets {who}; everyone else stays on {}. `bgctl compare` asks both builds, `bgctl promote PERCENT` makes it a canary, `bgctl promote` makes it live, `bgctl abort` drains it",
                color.other()
            );
        }
        let how = match steps {
            true => format!(
                "; the shares follow traffic.steps ({} steps)",
                self.policy.rollout.steps.len()
            ),
            false => "; `bgctl promote` makes it live, `bgctl abort` drains it".into(),
        };
        format!("canary: release {id} on {color} gets {who}{how}")
    }
}
