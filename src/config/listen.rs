//! `[[listen]]`: the sockets bgd holds and passes to the app, in the
//! file's order (the first is fd 3).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::parse::{check_unix_path, parse_mode, Spanned};
use super::{ConfigError, Source};

/// One `[[listen]]` table: a socket bgd binds (or adopts from systemd) and
/// passes to each color.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Its `LISTEN_FDNAMES` entry.
    pub name: String,
    /// `address`: TCP, or a Unix socket path resolved against the config
    /// file's directory.
    pub address: ListenAddr,
    /// File mode of a Unix socket (0666 unless set).
    pub mode: u32,
    /// `backlog`: the `listen(2)` queue length, in connections; `SOMAXCONN`
    /// (from libc) unless set, at most `i32::MAX`.
    pub backlog: i32,
    /// `nonblocking = true`: bgd sets `O_NONBLOCK` on the socket when it
    /// binds (or adopts) it, before any app holds it, for servers that
    /// never set it on inherited sockets themselves (nginx). In gate mode
    /// each color's socket gets it; in shared mode the one shared socket.
    pub nonblocking: bool,
    /// `file:line:col` of its address, for errors found when binding.
    pub location: String,
}

/// A `[[listen]]` address as written: `"host:port"` or `"unix:PATH"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// An IP address and port, such as `127.0.0.1:8080` or `[::1]:8080`.
    Tcp(SocketAddr),
    /// An absolute Unix socket path (at most 107 bytes).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The extra named fd bgd passes to each color for health probes.
pub const PROBE_FD_NAME: &str = "probe";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    name: Spanned<String>,
    address: Spanned<String>,
    mode: Option<Spanned<String>>,
    backlog: Option<u32>,
    #[serde(default)]
    nonblocking: bool,
}

/// `[[listen]]`: at least one, with unique names and addresses.
pub(super) fn parse(src: &Source, raw: &[RawListen]) -> Result<Vec<ListenConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(src.fail_whole(
            "no [[listen]] socket: add at least one, such as [[listen]] name = \"http\" address = \"127.0.0.1:8080\"",
        ));
    }
    let mut listen = Vec::new();
    for l in raw {
        let entry = listen_entry(src, l, &listen)?;
        listen.push(entry);
    }
    Ok(listen)
}

/// One `[[listen]]` table; `before` are the tables above it.
fn listen_entry(
    src: &Source,
    l: &RawListen,
    before: &[ListenConfig],
) -> Result<ListenConfig, ConfigError> {
    let name = l.name.get_ref();
    if !valid_fd_name(name) {
        return Err(src.fail(l.name.span(), format!(
            "listen name {name:?} is not a valid LISTEN_FDNAMES entry: use 1 to 255 characters of letters, digits, '-', '_' or '.'"
        )));
    }
    if name == PROBE_FD_NAME {
        return Err(src.fail(l.name.span(), format!(
            "listen name {PROBE_FD_NAME:?} is reserved for bgd's private health-probe socket: pick another name"
        )));
    }
    if before.iter().any(|x| &x.name == name) {
        return Err(src.fail(
            l.name.span(),
            format!("listen name {name:?} is used twice: names must be unique"),
        ));
    }
    let address =
        parse_address(l.address.get_ref(), &src.dir).map_err(|m| src.fail(l.address.span(), m))?;
    if let ListenAddr::Unix(p) = &address {
        check_unix_path(p).map_err(|m| src.fail(l.address.span(), m))?;
    }
    if before.iter().any(|x| x.address == address) {
        return Err(src.fail(
            l.address.span(),
            format!("address {address} is listed twice"),
        ));
    }
    let mode = match &l.mode {
        Some(m) => parse_mode(m.get_ref()).map_err(|e| src.fail(m.span(), e))?,
        None => 0o666,
    };
    Ok(ListenConfig {
        location: src.location(l.address.span().start),
        name: name.clone(),
        address,
        mode,
        nonblocking: l.nonblocking,
        backlog: l
            .backlog
            .unwrap_or(libc::SOMAXCONN as u32)
            .min(i32::MAX as u32) as i32,
    })
}

/// `"unix:PATH"` (relative to `dir`) or an IP address and port.
fn parse_address(s: &str, dir: &Path) -> Result<ListenAddr, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: address has no path: write \"unix:/run/app.sock\"".into());
        }
        return Ok(ListenAddr::Unix(dir.join(path)));
    }
    s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
        format!("bad address {s:?}: write \"host:port\" with an IP address (\"127.0.0.1:8080\"), \"[::1]:8080\" or \"unix:/path/to.sock\"")
    })
}

/// 1 to 255 letters, digits, '-', '_' or '.': what `LISTEN_FDNAMES` allows.
fn valid_fd_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{parse, GOOD};

    /// `nonblocking` is off unless set, and a change of it is a change of
    /// `[[listen]]`, which a reload keeps.
    #[test]
    fn listen_nonblocking_is_off_unless_set() {
        let c = parse(GOOD).unwrap();
        assert!(!c.fixed.listen[0].nonblocking);
        let n = parse(&GOOD.replace("8080\"", "8080\"\nnonblocking = true")).unwrap();
        assert!(n.fixed.listen[0].nonblocking);
        assert_eq!(c.fixed.changed_keys(&n.fixed), ["[[listen]]"]);
        let e = parse(&GOOD.replace("8080\"", "8080\"\nnonblocking = \"yes\"")).unwrap_err();
        assert!(e.starts_with("/etc/bgd/app.toml:8:15: "), "{e}");
    }
}
