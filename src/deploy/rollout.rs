//! The rollout policy of `[traffic]`: how long the previous color stays
//! warm after a swap (`standby`), how long the new one is watched before it
//! counts as good (`bake`), and the canary steps a release goes through
//! (`steps`). Issue 12 names the keys; issue 23 adds who sees a new build
//! first (`testers`) and how a canary picks its share (`canary_by`).
//!
//! Parsing only: what the policy means is decided in `deploy`, and the
//! kernel split it asks for is built in `steer`.

use std::time::Duration;

use crate::deploy::clients::{CanaryBy, Cidr};

/// One canary step: `percent` % of new connections go to the new color,
/// for `hold`, while its health is checked; the next step follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanaryStep {
    /// 1 to 99.
    pub percent: u8,
    pub hold: Duration,
}

/// `[traffic] standby`, `bake` and `steps`: the part of `[traffic]` a
/// reload applies. The config's default keeps the old color as a standby
/// for [`DEFAULT_STANDBY`] in gate mode (issue 25); all zero is a plain
/// swap: the old color drains at once, and nothing watches the new one
/// after its readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Keep the previous color running, with no new connections, this long
    /// after a swap; zero drains it at once.
    pub standby: Duration,
    /// Watch the new color this long after a swap; a crash or
    /// `health.failures` failed checks in a row switch back to the standby.
    /// Never longer than `standby`.
    pub bake: Duration,
    /// Canary shares a release goes through before 100 %, increasing.
    pub steps: Vec<CanaryStep>,
    /// `testers`: clients in these networks reach a new build during its
    /// preview and its canary (issue 23).
    pub testers: Vec<Cidr>,
    /// `canary_by`: how a canary picks its share.
    pub canary_by: CanaryBy,
}

/// `traffic.standby` when the config does not set it (gate mode): the
/// previous color stays warm this long after each swap, so a new color
/// that dies within it hands the traffic back at once. Argo Rollouts keeps
/// its previous ReplicaSet 30 s by default (`scaleDownDelaySeconds`).
pub const DEFAULT_STANDBY: Duration = Duration::from_secs(30);

/// Parses one step, `"10%:1m"`. The error says what to write.
pub fn parse_step(s: &str) -> Result<CanaryStep, String> {
    let bad = |why: &str| {
        format!("bad canary step {s:?}: {why}; write a share and how long to hold it, such as \"10%:1m\"")
    };
    let (share, hold) = s.split_once(':').ok_or_else(|| bad("no ':'"))?;
    let number = share
        .trim()
        .strip_suffix('%')
        .ok_or_else(|| bad("the share needs a '%'"))?;
    let percent = number
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| (1..=99).contains(p))
        .ok_or_else(|| bad("the share must be a whole percent from 1 to 99"))?;
    let hold = humantime::parse_duration(hold.trim())
        .map_err(|e| bad(&format!("bad duration {:?} ({e})", hold.trim())))?;
    if hold.is_zero() {
        return Err(bad("a step must be held for more than 0s"));
    }
    Ok(CanaryStep { percent, hold })
}

/// Parses `steps`, which must increase. `Err` holds the index of the step
/// at fault and what to write.
pub fn parse_steps(steps: &[String]) -> Result<Vec<CanaryStep>, (usize, String)> {
    let mut out: Vec<CanaryStep> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let step = parse_step(s).map_err(|e| (i, e))?;
        if let Some(prev) = out.last().filter(|p| p.percent >= step.percent) {
            return Err((
                i,
                format!(
                    "canary steps must increase: {}% comes after {}%; order them from the smallest share, such as [\"10%:1m\", \"50%:1m\"]",
                    step.percent, prev.percent
                ),
            ));
        }
        out.push(step);
    }
    Ok(out)
}

/// Parses a canary share given on the command line (`--canary`,
/// `promote`): a whole percent from 1 to `max`.
pub fn parse_percent(s: &str, max: u8) -> Result<u8, String> {
    let n = s.trim().strip_suffix('%').unwrap_or(s.trim());
    match n.parse::<u16>() {
        Ok(p) if (1..=u16::from(max)).contains(&p) => Ok(p as u8),
        Ok(p) => Err(format!(
            "{p} is not a share of new connections from 1 to {max} percent"
        )),
        Err(_) => Err(format!(
            "{s:?} is not a whole percent: write a number from 1 to {max}, such as 10"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_or_say_what_to_write() {
        let ok = parse_steps(&["10%:1m".into(), "50%:30s".into()]).unwrap();
        assert_eq!(
            ok,
            [
                CanaryStep {
                    percent: 10,
                    hold: Duration::from_secs(60)
                },
                CanaryStep {
                    percent: 50,
                    hold: Duration::from_secs(30)
                }
            ]
        );
        for (steps, index, says) in [
            (&["10%"][..], 0, "no ':'"),
            (&["10:1m"], 0, "needs a '%'"),
            (&["0%:1m"], 0, "from 1 to 99"),
            (&["100%:1m"], 0, "from 1 to 99"),
            (&["x%:1m"], 0, "from 1 to 99"),
            (&["10%:soon"], 0, "bad duration"),
            (&["10%:0s"], 0, "more than 0s"),
            (&["10%:1m", "10%:1m"], 1, "must increase"),
            (&["50%:1m", "10%:1m"], 1, "10% comes after 50%"),
        ] {
            let steps: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
            let (i, e) = parse_steps(&steps).unwrap_err();
            assert_eq!(i, index, "{steps:?}");
            assert!(e.contains(says), "{steps:?}: {e}");
        }
    }

    #[test]
    fn percents_from_the_command_line() {
        assert_eq!(parse_percent("20", 99), Ok(20));
        assert_eq!(parse_percent("20%", 99), Ok(20));
        assert_eq!(parse_percent("100", 100), Ok(100));
        assert!(parse_percent("100", 99)
            .unwrap_err()
            .contains("from 1 to 99"));
        assert!(parse_percent("0", 99).unwrap_err().contains("from 1 to 99"));
        assert!(parse_percent("101", 100)
            .unwrap_err()
            .contains("101 is not"));
        assert!(parse_percent("abc", 99)
            .unwrap_err()
            .contains("not a whole percent"));
    }
}
