//! `[traffic]`: how new connections reach the colors (`mode`), how a
//! release hands them over (`standby`, `bake`, `steps`), who sees a new
//! build first (`testers`) and how a canary picks its share (`canary_by`).

use std::time::Duration;

use serde::Deserialize;

use super::health::HealthConfig;
use super::listen::{ListenAddr, ListenConfig};
use super::parse::{HumanDuration, Spanned};
use super::{ConfigError, Source};
use crate::deploy::clients::{self, CanaryBy, Cidr};
use crate::deploy::rollout::{self, Rollout};

/// `[traffic] mode`: how new connections reach the colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficMode {
    /// `"gate"` (the default): each color has its own listening socket, and
    /// the kernel steers each new connection to the color that is live, so
    /// a color receives public connections only once it is ready
    /// (issue 11). TCP: one `SO_REUSEPORT` group per address, steered by a
    /// classic BPF program; Unix: one socket file per color, renamed over
    /// the public path at the swap.
    Gate,
    /// `"shared"`: both colors accept from one socket; the new color takes
    /// public connections as soon as it calls `accept()`, before it is
    /// ready. For kernels or setups where the gate cannot be built.
    Shared,
}

/// `[traffic]` as serde reads it; its `mode` is fixed until a restart, the
/// rest ([`Rollout`]) is reloaded.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTraffic {
    pub(super) mode: Option<Spanned<String>>,
    standby: Option<Spanned<HumanDuration>>,
    bake: Option<Spanned<HumanDuration>>,
    steps: Option<Spanned<Vec<String>>>,
    testers: Option<Spanned<Vec<Spanned<String>>>>,
    canary_by: Option<Spanned<String>>,
}

/// `traffic.mode`.
pub(super) fn mode(
    src: &Source,
    mode: Option<&Spanned<String>>,
) -> Result<TrafficMode, ConfigError> {
    match mode {
        None => Ok(TrafficMode::Gate),
        Some(m) => match m.get_ref().as_str() {
            "gate" => Ok(TrafficMode::Gate),
            "shared" => Ok(TrafficMode::Shared),
            other => Err(src.fail(
                m.span(),
                format!("traffic.mode {other:?} is not known: write \"gate\" (each color its own socket, steered by the kernel) or \"shared\" (one socket for both colors)"),
            )),
        },
    }
}

/// `[traffic] standby`, `bake` and `steps`, checked against the mode, the
/// listeners and the health checks they rely on.
pub(super) fn rollout_policy(
    src: &Source,
    t: &RawTraffic,
    (mode, listen): (TrafficMode, &[ListenConfig]),
    health: &HealthConfig,
    warnings: &mut Vec<String>,
) -> Result<Rollout, ConfigError> {
    let duration =
        |d: &Option<Spanned<HumanDuration>>| d.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0);
    let steps = match &t.steps {
        Some(s) => rollout::parse_steps(s.get_ref())
            .map_err(|(i, e)| src.fail(s.span(), format!("traffic.steps[{i}]: {e}")))?,
        None => Vec::new(),
    };
    // Unset: the default standby in gate mode; shared mode cannot keep one.
    let standby = match (&t.standby, mode) {
        (None, TrafficMode::Gate) => rollout::DEFAULT_STANDBY,
        _ => duration(&t.standby),
    };
    let (testers, canary_by) = by_client(src, t, (mode, listen), warnings)?;
    let r = Rollout {
        standby,
        bake: duration(&t.bake),
        steps,
        testers,
        canary_by,
    };
    // The first key that needs what is missing is the one named.
    let used = [
        (
            "traffic.standby",
            &t.standby.as_ref().map(|d| d.span()),
            !r.standby.is_zero(),
        ),
        (
            "traffic.bake",
            &t.bake.as_ref().map(|d| d.span()),
            !r.bake.is_zero(),
        ),
        (
            "traffic.steps",
            &t.steps.as_ref().map(|s| s.span()),
            !r.steps.is_empty(),
        ),
    ];
    for (key, span, set) in used {
        let (Some(span), true) = (span, set) else {
            continue;
        };
        if mode == TrafficMode::Shared {
            return Err(src.fail(span.clone(), format!("{key} needs traffic.mode = \"gate\": in shared mode both colors accept from one socket, so a color cannot be kept without connections or given a share of them")));
        }
        if key == "traffic.steps" {
            if let Some(l) = listen
                .iter()
                .find(|l| !matches!(l.address, ListenAddr::Tcp(_)))
            {
                return Err(src.fail(span.clone(), format!("traffic.steps splits new TCP connections in the kernel, and [[listen]] {:?} is a Unix socket, which cannot be split: remove traffic.steps, or the Unix listener", l.name)));
            }
        }
        if key != "traffic.standby" && health.interval.is_zero() {
            return Err(src.fail(span.clone(), format!("{key} watches the new color's health checks every health.interval, which is off: set health.interval, such as \"5s\"")));
        }
    }
    if r.bake > r.standby {
        let span = t.bake.as_ref().map(|d| d.span()).unwrap_or_default();
        return Err(src.fail(span, format!(
            "traffic.bake ({}) is longer than traffic.standby ({}): the standby would be gone before the bake ends, with nothing to roll back to; make standby at least as long, such as standby = \"{}\"",
            humantime::format_duration(r.bake), humantime::format_duration(r.standby), humantime::format_duration(r.bake.max(Duration::from_secs(600)))
        )));
    }
    Ok(r)
}

/// `[traffic] testers` and `canary_by`: networks that parse and fit in the
/// steering program, and a split the sockets can make. Bits set past a
/// prefix are cleared, with a warning.
fn by_client(
    src: &Source,
    t: &RawTraffic,
    (mode, listen): (TrafficMode, &[ListenConfig]),
    warnings: &mut Vec<String>,
) -> Result<(Vec<Cidr>, CanaryBy), ConfigError> {
    let canary_by = match &t.canary_by {
        Some(c) => CanaryBy::parse(c.get_ref()).map_err(|e| src.fail(c.span(), e))?,
        None => CanaryBy::default(),
    };
    let mut testers = Vec::new();
    if let Some(list) = &t.testers {
        for (i, entry) in list.get_ref().iter().enumerate() {
            let (cidr, dirty) = Cidr::parse(entry.get_ref())
                .map_err(|e| src.fail(entry.span(), format!("traffic.testers[{i}]: {e}")))?;
            if dirty {
                warnings.push(src.locate(
                    entry.span(),
                    &format!(
                        "traffic.testers[{i}]: {:?} has bits set past its /{} prefix, so it means {cidr}: write \"{cidr}\" (or a longer prefix, if one address was meant)",
                        entry.get_ref(),
                        cidr.prefix
                    ),
                ));
            }
            testers.push(cidr);
        }
        clients::check_fits(&testers)
            .map_err(|e| src.fail(list.span(), format!("traffic.testers is too long: {e}")))?;
    }
    // A split by client, or testers, where the sockets cannot be split.
    let unix = listen
        .iter()
        .find(|l| !matches!(l.address, ListenAddr::Tcp(_)));
    let uses = [
        (
            "traffic.testers",
            t.testers
                .as_ref()
                .filter(|_| !testers.is_empty())
                .map(|l| l.span()),
            "send the testers' connections to the new build",
        ),
        (
            "traffic.canary_by = \"client\"",
            t.canary_by
                .as_ref()
                .filter(|_| canary_by == CanaryBy::Client)
                .map(|c| c.span()),
            "give a canary its share by client address",
        ),
    ];
    for (key, span, what) in uses {
        let Some(span) = span else { continue };
        if mode == TrafficMode::Shared {
            return Err(src.fail(span, format!("{key} needs traffic.mode = \"gate\": in shared mode both colors accept from one socket, so bgd cannot {what}; remove {key}, or use the gate")));
        }
        if let Some(l) = unix {
            return Err(src.fail(span, format!("{key} steers new TCP connections in the kernel, and [[listen]] {:?} is a Unix socket, whose connections carry no client address and cannot be steered: remove {key}, or the Unix listener", l.name)));
        }
    }
    Ok((testers, canary_by))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::tests::{parse, GOOD};
    use crate::config::{TrafficMode, DEFAULT_DRAIN_DELAY};
    use crate::deploy::rollout::Rollout;

    /// `[traffic] standby/bake/steps` and `health.interval/failures`
    /// (issue 12): what each needs, and what it says when it is missing.
    #[test]
    fn the_rollout_keys_say_what_they_need() {
        let c = parse(GOOD).unwrap();
        let standby = crate::deploy::rollout::DEFAULT_STANDBY;
        assert_eq!(
            c.rollout,
            Rollout {
                standby,
                ..Rollout::default()
            }
        );
        assert_eq!((c.health.interval, c.health.failures), (Duration::ZERO, 3));
        let with =
            |health: &str, traffic: &str| parse(&format!("{GOOD}{health}\n[traffic]\n{traffic}\n"));
        let ok = with(
            "interval = \"5s\"\nfailures = 2",
            "standby = \"10m\"\nbake = \"2m\"\nsteps = [\"10%:1m\", \"50%:30s\"]",
        )
        .unwrap();
        assert_eq!(ok.rollout.standby, Duration::from_secs(600));
        assert_eq!(ok.rollout.bake, Duration::from_secs(120));
        assert_eq!(ok.rollout.steps.len(), 2);
        assert_eq!(
            (ok.health.interval, ok.health.failures),
            (Duration::from_secs(5), 2)
        );
        for (health, traffic, says) in [
            ("interval = \"5s\"", "standby = \"1m\"\nbake = \"2m\"", "traffic.bake (2m) is longer than traffic.standby (1m)"),
            ("interval = \"5s\"", "bake = \"2m\"", "longer than traffic.standby (30s)"),
            ("interval = \"5s\"", "standby = \"0s\"\nbake = \"2m\"", "longer than traffic.standby (0s)"),
            ("", "standby = \"10m\"\nbake = \"2m\"", "traffic.bake watches the new color's health checks every health.interval, which is off"),
            ("interval = \"5s\"", "steps = [\"50%:1m\", \"10%:1m\"]", "traffic.steps[1]: canary steps must increase"),
            ("interval = \"5s\"", "steps = [\"half\"]", "traffic.steps[0]: bad canary step \"half\""),
            ("interval = \"5s\"", "mode = \"shared\"\nstandby = \"1m\"", "traffic.standby needs traffic.mode = \"gate\""),
            ("failures = 0", "", "health.failures must be at least 1"),
        ] {
            let e = with(health, traffic).unwrap_err();
            assert!(e.contains(says), "{health} {traffic}: {e}");
            assert!(e.starts_with("/etc/bgd/app.toml:"), "{e}");
        }
        let notify = GOOD.replace("http = \"/healthz\"", "notify = true\ninterval = \"5s\"");
        let e = parse(&notify).unwrap_err();
        assert!(
            e.contains("health.interval repeats health.http or health.exec"),
            "{e}"
        );
        let unix = GOOD.replace("127.0.0.1:8080", "unix:app.sock");
        let e = parse(&format!(
            "{unix}interval = \"5s\"\n[traffic]\nstandby = \"10m\"\nsteps = [\"10%:1m\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("is a Unix socket, which cannot be split"), "{e}");
    }

    /// `testers` and `canary_by` (issue 23): networks that parse, a warning
    /// for bits past a prefix, the program's limit, and refusals where the
    /// kernel cannot steer by client.
    #[test]
    fn testers_and_canary_by_say_what_is_wrong() {
        use crate::deploy::clients::CanaryBy;
        let with = |traffic: &str| parse(&format!("{GOOD}\n[traffic]\n{traffic}\n"));
        let c = parse(GOOD).unwrap();
        assert_eq!(
            (c.rollout.testers.len(), c.rollout.canary_by),
            (0, CanaryBy::Client)
        );
        let c = with("testers = [\"203.0.113.0/24\", \"2001:db8:1::/48\", \"127.0.0.77\"]\ncanary_by = \"connection\"").unwrap();
        let shown: Vec<String> = c.rollout.testers.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            shown,
            ["203.0.113.0/24", "2001:db8:1::/48", "127.0.0.77/32"]
        );
        assert_eq!(c.rollout.canary_by, CanaryBy::Connection);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = with("testers = [\"10.0.0.1\", \"10.1.2.3/16\"]").unwrap();
        assert_eq!(c.rollout.testers[1].to_string(), "10.1.0.0/16");
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("app.toml:18:24: traffic.testers[1]: \"10.1.2.3/16\" has bits set past its /16 prefix, so it means 10.1.0.0/16"),
            "{}",
            c.warnings[0]
        );
        let many: Vec<String> = (0..4000)
            .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
            .collect();
        for (traffic, says) in [
            ("testers = [\"10.0.0.0/33\"]", "app.toml:18:12: traffic.testers[0]: \"10.0.0.0/33\": an IPv4 prefix is at most 32 bits, not 33"),
            ("testers = [\"::/129\"]", "an IPv6 prefix is at most 128 bits"),
            ("testers = [\"10.0.0.1\", \"tester.example\"]", "traffic.testers[1]: \"tester.example\" is not an address or network"),
            (&format!("testers = [{}]", many.join(", ")), "traffic.testers is too long: its 4000 networks take 4034 instructions of the kernel's steering program, which has room for 3900"),
            ("canary_by = \"cookie\"", "traffic.canary_by \"cookie\" is not known"),
            ("mode = \"shared\"\ntesters = [\"10.0.0.1\"]", "traffic.testers needs traffic.mode = \"gate\""),
            ("mode = \"shared\"\ncanary_by = \"client\"", "traffic.canary_by = \"client\" needs traffic.mode = \"gate\""),
        ] {
            let e = with(traffic).unwrap_err();
            assert!(e.contains(says), "{traffic}: {e}");
        }
        // Not said, the default applies where it can: no refusal.
        assert!(with("mode = \"shared\"\ncanary_by = \"connection\"").is_ok());
        assert!(with("mode = \"shared\"\ntesters = []").is_ok());
        let unix = GOOD.replace("127.0.0.1:8080", "unix:app.sock");
        for traffic in ["testers = [\"10.0.0.1\"]", "canary_by = \"client\""] {
            let e = parse(&format!("{unix}\n[traffic]\n{traffic}\n")).unwrap_err();
            assert!(
                e.contains("is a Unix socket, whose connections carry no client address"),
                "{e}"
            );
        }
    }

    /// The gate unless the config says "shared"; anything else is refused
    /// with what to write. `drain_delay` defaults to 5 s.
    #[test]
    fn traffic_mode_is_the_gate_unless_shared() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.fixed.traffic, TrafficMode::Gate);
        assert_eq!(c.app.drain_delay, DEFAULT_DRAIN_DELAY);
        let shared = parse(&format!("{GOOD}\n[traffic]\nmode = \"shared\"\n")).unwrap();
        assert_eq!(shared.fixed.traffic, TrafficMode::Shared);
        assert_eq!(c.fixed.changed_keys(&shared.fixed), ["traffic.mode"]);
        let e = parse(&format!("{GOOD}\n[traffic]\nmode = \"proxy\"\n")).unwrap_err();
        assert!(e.contains("traffic.mode \"proxy\" is not known"), "{e}");
        assert!(e.contains("write \"gate\""), "{e}");
        let d = parse(&GOOD.replace(
            "drain_timeout = \"5s\"",
            "drain_timeout = \"5s\"\ndrain_delay = \"250ms\"",
        ))
        .unwrap();
        assert_eq!(d.app.drain_delay, Duration::from_millis(250));
    }
}
