//! `[metrics]`: where bgd serves `GET /metrics` (Prometheus text).

use std::net::SocketAddr;

use serde::Deserialize;

use super::parse::Spanned;
use super::{ConfigError, Source};

/// `[metrics]` as serde reads it; the parsed value is
/// [`Fixed::metrics`](super::Fixed::metrics), which only a restart changes.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    listen: Option<Spanned<String>>,
}

/// `[metrics]`: `listen` must be an IP address and a port (bound at start-up).
pub(super) fn parse(
    src: &Source,
    m: Option<RawMetrics>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(listen) = m.and_then(|m| m.listen) else {
        return Ok(None);
    };
    listen.get_ref().parse::<SocketAddr>().map(Some).map_err(|_| {
        src.fail(
            listen.span(),
            format!(
                "metrics.listen {:?} is not an IP address and port: write one such as \"127.0.0.1:9187\" (or remove [metrics])",
                listen.get_ref()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const BASE: &str = "name = \"hello\"\nroot = \"/tmp/bgd-hello\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n[app]\ncommand = [\"./server\"]\nallow_root = true\n[health]\nhttp = \"/healthz\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/bgd/hello.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn metrics_are_off_unless_listen_is_set() {
        assert_eq!(parse(BASE).unwrap().fixed.metrics, None);
        let on = parse(&format!("{BASE}[metrics]\nlisten = \"127.0.0.1:9187\"\n")).unwrap();
        assert_eq!(on.fixed.metrics, Some("127.0.0.1:9187".parse().unwrap()));
    }

    #[test]
    fn a_bad_metrics_address_names_the_key_and_its_place() {
        let e = parse(&format!("{BASE}[metrics]\nlisten = \"localhost:9187\"\n")).unwrap_err();
        assert!(
            e.starts_with("/etc/bgd/hello.toml:12:10: metrics.listen \"localhost:9187\""),
            "{e}"
        );
        let e = parse(&format!(
            "{BASE}[metrics]\nlisten = \"127.0.0.1:9187\"\nport = 1\n"
        ))
        .unwrap_err();
        assert!(e.contains("unknown field `port`"), "{e}");
    }
}
