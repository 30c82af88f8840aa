//! One `[[listen]]` entry: its sockets, bound by bgd or taken from what
//! systemd passed.

use std::os::fd::OwnedFd;

use super::bind::remove_stale_unix_socket;
use super::unix::public_path;
use super::{adopt, Entry, Socket, UnixSide};
use crate::color::Color;
use crate::config::{ListenAddr, ListenConfig, TrafficMode};

impl Entry {
    pub(super) fn build(
        c: &ListenConfig,
        mode: TrafficMode,
        inherited: &mut Option<Vec<Option<(OwnedFd, String)>>>,
        recorded: &super::order::Orders,
    ) -> anyhow::Result<Entry> {
        let tcp = matches!(c.address, ListenAddr::Tcp(_));
        let Some(inherited) = inherited else {
            return Ok(match (mode, tcp) {
                (TrafficMode::Shared, _) => Entry::Shared(Socket::bound(c, false)?),
                (TrafficMode::Gate, true) => {
                    super::guard::refuse_taken(c)?;
                    let blue = Socket::bound(c, true)?;
                    // Green takes blue's port: a configured port 0 is now known.
                    let green = Socket::bound(&blue.config, true)?;
                    Entry::Group {
                        blue,
                        green,
                        order: Vec::new(),
                    }
                }
                (TrafficMode::Gate, false) => {
                    let public = public_path(c).expect("a Unix entry");
                    remove_stale_unix_socket(public).map_err(|e| {
                        anyhow::anyhow!(
                            "{}: cannot use [[listen]] {:?} at {}: {e}",
                            c.location,
                            c.name,
                            public.display()
                        )
                    })?;
                    Entry::Files {
                        blue: UnixSide::bind(c, Color::Blue)?,
                        green: UnixSide::bind(c, Color::Green)?,
                    }
                }
            });
        };
        adopt_entry(c, mode, tcp, inherited, recorded.get(&c.name))
    }

    pub(super) fn sockets(&self) -> Vec<&Socket> {
        match self {
            Entry::Shared(s) => vec![s],
            Entry::Group { blue, green, .. } => vec![blue, green],
            Entry::Files { blue, green } => vec![&blue.socket, &green.socket],
        }
    }

    pub(super) fn socket(&self, color: Color) -> &Socket {
        match (self, color) {
            (Entry::Shared(s), _) => s,
            (Entry::Group { blue, .. }, Color::Blue) => blue,
            (Entry::Group { green, .. }, Color::Green) => green,
            (Entry::Files { blue, .. }, Color::Blue) => &blue.socket,
            (Entry::Files { green, .. }, Color::Green) => &green.socket,
        }
    }

    pub(super) fn config(&self) -> &ListenConfig {
        &self.sockets()[0].config
    }
}

/// An entry from the sockets systemd passed: the colors' own sockets from
/// the fd store (`NAME@blue`, `NAME@green`), else the socket unit's socket
/// (`NAME`) as blue's, and a new one for green.
fn adopt_entry(
    c: &ListenConfig,
    mode: TrafficMode,
    tcp: bool,
    inherited: &mut [Option<(OwnedFd, String)>],
    recorded: Option<&Vec<Color>>,
) -> anyhow::Result<Entry> {
    if mode == TrafficMode::Shared {
        let a = adopt::take(c, &c.name, true, inherited)?
            .ok_or_else(|| adopt::missing(c, inherited))?;
        return Ok(Entry::Shared(Socket::adopted(c, a)?));
    }
    let blue = adopt::take(c, &format!("{}@blue", c.name), false, inherited)?;
    let green = adopt::take(c, &format!("{}@green", c.name), false, inherited)?;
    // The socket unit's socket: blue's, unless the fd store had blue's
    // already (then it is the same socket, and bgd drops its own copy).
    let unit = adopt::take(c, &c.name, true, inherited)?;
    let blue = match (blue, unit) {
        (Some(b), _) => b,
        (None, Some(u)) => {
            if tcp && !nix::sys::socket::getsockopt(&u.fd, nix::sys::socket::sockopt::ReusePort)? {
                anyhow::bail!(
                    "{}: the socket systemd passed for [[listen]] {:?} has no SO_REUSEPORT, which the traffic gate needs for the other color's socket: \
                     add ReusePort=yes to the socket unit, or set traffic.mode = \"shared\"",
                    c.location, c.name
                );
            }
            u
        }
        (None, None) => return Err(adopt::missing(c, inherited)),
    };
    if tcp {
        let blue = Socket::adopted(c, blue)?;
        let green = match green {
            Some(g) => Socket::adopted(c, g)?,
            None => Socket::bound(&blue.config, true)?,
        };
        // Sockets taken back listen already, in the order the last bgd
        // recorded (or blue first, for systemd's new sockets).
        let listening: Vec<Color> = [(&blue, Color::Blue), (&green, Color::Green)]
            .into_iter()
            .filter(|(s, _)| s.state == super::SocketState::Listening)
            .map(|(_, c)| c)
            .collect();
        let order = super::order::adopted(recorded, &listening);
        return Ok(Entry::Group { blue, green, order });
    }
    let blue = UnixSide::adopted(c, Color::Blue, blue)?;
    let green = match green {
        Some(g) => UnixSide::adopted(c, Color::Green, g)?,
        None => UnixSide::bind(c, Color::Green)?,
    };
    Ok(Entry::Files { blue, green })
}
